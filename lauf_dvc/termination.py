"""SIGTERM and SIGHUP: what ``timeout``, a CI cancel, SLURM's ``scancel`` and preemption
send first, and a closed terminal. They unwind a lauf-dvc process the way Ctrl-C does
(an exception, so every ``finally`` runs: the stage's command is stopped, locks are
released), and the process exits with 128 + the signal's number.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """A termination signal arrived; raised in the main thread by the handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def install() -> None:
    """From now on SIGTERM/SIGHUP raise :class:`Terminated` (once: a second one while
    the first is handled is ignored, so the clean-up itself is not cut short; a batch
    system sends SIGKILL if it takes too long)."""
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def _handler(signum: int, frame: FrameType | None) -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)
