"""A real headless Chromium driven over the DevTools protocol, through a pipe
(``--remote-debugging-pipe``: JSON messages ended by NUL on file descriptors 3 and 4),
so nothing but the standard library and Debian's ``chromium`` is needed, and no port
or network. Records what a person would see go wrong: console errors and warnings,
uncaught exceptions, the browser's own error log (a resource that failed to load), and
every request the page made.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Message = dict[str, Any]


class Chromium:
    """``with Chromium(executable, flags) as browser: page = browser.open(url)``."""

    def __init__(self, executable: str, flags: list[str], timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.events: list[Message] = []
        self._buffer = b""
        self._next_id = 0
        self._profile = tempfile.TemporaryDirectory(prefix="lauf-cdp-")
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def pipes() -> None:  # in the child: the protocol's descriptors 3 and 4
            # (through copies above 9 first: either pipe end may itself be 3 or 4)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)  # dup2's copies are inherited; every other descriptor
            os.dup2(high[1], 4)  # Python opened is close-on-exec (PEP 446)

        args = [executable, *flags, "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, close_fds=False, preexec_fn=pipes, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, TimeoutError, EOFError, RuntimeError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        self._profile.cleanup()

    def send(self, method: str, params: Message | None = None, session: str | None = None) -> Any:
        """Call ``method``; its result (a protocol error raises ``RuntimeError``)."""
        self._next_id += 1
        ident = self._next_id
        message: Message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m: m.get("id") == ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, match: Callable[[Message], bool]) -> Message:
        """The next message ``match`` accepts; the others are kept in :attr:`events`."""
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if match(message):
                    return message
                self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium exited ({self.proc.poll()})")
            self._buffer += chunk

    def open(self, url: str) -> Page:
        """A new tab showing ``url``, loaded (its ``load`` event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"])
        for domain in ("Runtime", "Log", "Page", "Network"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", {"url": url})
        self.wait_for(lambda m: m.get("method") == "Page.loadEventFired"
                      and m.get("sessionId") == page.session)  # fmt: skip
        return page


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: Message | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (an exception in it raises)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _mine(self) -> list[Message]:
        return [m for m in self.browser.events if m.get("sessionId") == self.session]

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, the browser's error log."""
        out = []
        for m in self._mine():
            method, params = m.get("method"), m.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "warning",
                "assert",
            ):
                out.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url')}")
        return out

    def requests(self) -> list[str]:
        """Every URL the page asked for, in order."""
        return [m["params"]["request"]["url"] for m in self._mine()
                if m.get("method") == "Network.requestWillBeSent"]  # fmt: skip

    def screenshot(self, path: Path) -> tuple[int, int]:
        """The whole page (not only the window) as a PNG at ``path``; its CSS size."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        width, height = int(size["width"]), int(size["height"])
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
        shot = self.call("Page.captureScreenshot", options)
        path.write_bytes(base64.b64decode(shot["data"]))
        return width, height
