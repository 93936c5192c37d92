#!/usr/bin/env bash
# What `make test-browser` needs: a headless Chromium (Debian's chromium) and Graphviz's
# dot, with a font. Installed with apt when missing and this runs as root on
# Debian/Ubuntu; otherwise one line saying what to install, and a non-zero exit.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || need+=(chromium)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
[ -n "$(find /usr/share/fonts -name '*.ttf' -print -quit 2>/dev/null)" ] || need+=(fonts-dejavu-core)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "make test-browser: missing ${need[*]}: install them (apt-get install ${need[*]}) and run it again, as root to let it install them" >&2
  exit 1
fi
echo "make test-browser: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
