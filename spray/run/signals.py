"""SIGTERM/SIGINT during a run: turned into :class:`RunInterrupted` so the run cleans up.

Finished chunks stay in the store and a rerun resumes; a signal that arrives while the local
Dask cluster starts is held until the cluster can be closed cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during a run: finished chunks stay in the store, a rerun resumes."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + int(signum)


_SIGNALS = {"defer": False, "pending": None}


@contextlib.contextmanager
def interrupt_on_signals():
    """Turn SIGTERM (and SIGINT) into :class:`RunInterrupted` so the run cleans up.

    The Dask cluster is closed, the run lock released and finished chunks kept; a second
    signal during that clean-up is ignored (SIGKILL still works). Inside
    :func:`signals_deferred` a signal is held and raised by :func:`raise_pending`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        if _SIGNALS["defer"]:
            _SIGNALS["pending"] = signum
            return
        raise RunInterrupted(signum)

    _SIGNALS["pending"] = None
    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _SIGNALS["pending"] = None


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGTERM/SIGINT while a local cluster starts: an interrupt in the middle of its
    start leaves worker processes that nobody can close cleanly (distributed's exit hook then
    fails on them). Call :func:`raise_pending` once the cluster is in a ``with`` block."""
    before = _SIGNALS["defer"]
    _SIGNALS["defer"] = True
    try:
        yield
    finally:
        _SIGNALS["defer"] = before


def raise_pending() -> None:
    """Raise the :class:`RunInterrupted` of a signal held by :func:`signals_deferred`."""
    signum, _SIGNALS["pending"] = _SIGNALS["pending"], None
    if signum is not None:
        raise RunInterrupted(signum)
