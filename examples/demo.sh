#!/usr/bin/env bash
# `make demo`: run the example pipeline in parallel in a fresh git + DVC repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)/lauf-demo"
cp -r "$here/dvc_project" "$work"
cd "$work"
export DVC_NO_ANALYTICS=1
git init -q && git config user.email demo@example.com && git config user.name "lauf demo"
dvc init -q && dvc config core.analytics false
git add -A && git commit -qm "example pipeline"
echo "demo repository: $work"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step lauf-dvc repro -P -j 4
step dvc status
echo; echo "# change one parameter: only train, evaluate and the report are affected"
sed -i 's/lr: 0.1/lr: 0.05/' params.yaml
step lauf-dvc status
step lauf-dvc repro -P -j 4
step dvc status
