"""How a run reports its progress: log lines per cell and epoch, and a bar over a cell's epochs on a terminal.

The protocol calls a :class:`Progress`; the default one only logs (``--verbose`` shows the
per-epoch lines), the command line adds a tqdm bar when its output is a terminal.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

log = logging.getLogger("harmonia.progress")


class Progress:
    """Receives a run's events; this base class logs them through ``logging``."""

    def cell_started(self, label: str, epochs: int) -> None:
        log.debug("%s: training for %d epochs", label, epochs)

    def epoch_finished(self, epoch: int, train_loss: float, val_score: float | None) -> None:
        score = "" if val_score is None else f", validation score {val_score:.4f}"
        log.debug("  epoch %d: training loss %.4f%s", epoch, train_loss, score)

    def cell_finished(self, line: str) -> None:
        log.info("%s", line)


class TerminalProgress(Progress):
    """:class:`Progress` plus a bar over each cell's epochs, drawn on stderr (only when it is a terminal)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def cell_started(self, label: str, epochs: int) -> None:
        from tqdm import tqdm

        super().cell_started(label, epochs)
        self._bar = tqdm(total=epochs, desc=label, unit="epoch", leave=False, file=sys.stderr, dynamic_ncols=True)

    def epoch_finished(self, epoch: int, train_loss: float, val_score: float | None) -> None:
        super().epoch_finished(epoch, train_loss, val_score)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{train_loss:.3f}")
            self._bar.update(1)

    def cell_finished(self, line: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        super().cell_finished(line)


class RunClock:
    """Elapsed time and the time left of a run, from the cells finished so far (any number at once)."""

    def __init__(self, total: int):
        self.total, self.finished, self.started = total, 0, time.monotonic()

    def tick(self) -> None:
        self.finished += 1

    def status(self) -> str:
        elapsed = time.monotonic() - self.started
        left = elapsed / self.finished * (self.total - self.finished) if self.finished else math.nan
        eta = "done" if self.finished >= self.total else f"about {_duration(left)} left"
        return f"run {_duration(elapsed)}, {eta}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
