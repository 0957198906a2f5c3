"""Stage-wise progress of a run: LRP (maps, rate, ETA), analyses (classes), report (pages).

On a terminal each stage is a ``tqdm`` bar on stderr; elsewhere (CI logs, batch jobs) a stage
logs one plain line (``spray: LRP 1200/5000 maps (24 %), 85 maps/s, ETA 45 s``) every
``every`` seconds and at each tenth of the work, so a log file shows the time without carriage
returns or escape codes.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (bars) rather than a log (plain lines)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class StageProgress:
    """Progress of one stage with a known amount of work.

    Parameters
    ----------
    name : str
        Stage name shown first (``LRP``, ``analyses``, ``report``).
    total : int
        Work units of the stage.
    unit : str
        What a unit is (``maps``, ``classes``, ``pages``).
    enabled : bool
        False: show nothing (``--quiet``, ``cluster.progress: false``).
    bar : bool or None
        True: a ``tqdm`` bar; False: plain lines; None: a bar on a terminal only.
    every : float
        Seconds between plain lines at most.
    position : int
        Row of the bar when several stages run at once.
    """

    def __init__(self, name: str, total: int, unit: str, enabled: bool = True,
                 bar: bool | None = None, every: float = 15.0, position: int = 0):
        self.name, self.total, self.unit = name, int(total), unit
        self.enabled = enabled and self.total > 0
        self.done, self.every = 0, every
        self.t0 = self.last = time.monotonic()
        self.next_tenth = 1
        self._bar = None
        if self.enabled and (on_terminal() if bar is None else bar):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=name, unit=f" {unit}", position=position,
                             file=sys.stderr, leave=True, dynamic_ncols=True)

    def rate(self) -> float | None:
        """Units per second so far (None before the first unit)."""
        elapsed = time.monotonic() - self.t0
        return self.done / elapsed if self.done and elapsed > 0 else None

    def line(self) -> str:
        """The plain progress line of this stage."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.name} {self.done}/{self.total} {self.unit} ({pct:.0f} %)"
        rate = self.rate()
        if rate:
            text += f", {rate:.3g} {self.unit}/s"
            if self.done < self.total:
                text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text + f", {_duration(time.monotonic() - self.t0)} elapsed"

    def add_total(self, n: int) -> None:
        """Correct the amount of work by ``n`` units (known only as the work finishes)."""
        self.total = max(self.done, self.total + int(n))
        if self._bar is not None and n:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more finished units; ``note`` (e.g. a loss) is shown with the count."""
        if not self.enabled:
            return
        self.done = min(self.total, self.done + int(n))
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(int(n))
            return
        now = time.monotonic()
        tenth = self.done * 10 // self.total
        if self.done == self.total or tenth >= self.next_tenth or now - self.last >= self.every:
            self.next_tenth, self.last = tenth + 1, now
            log.info("%s", self.line() + (f"; {note}" if note else ""))

    def close(self) -> None:
        """End the bar (a finished stage keeps its last line on the terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
