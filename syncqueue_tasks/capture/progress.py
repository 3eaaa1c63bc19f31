"""Backfill progress: rows done / total, rate, ETA; and a printer for a terminal or a log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Progress:
    """Where a backfill stands. ``done`` counts rows of earlier runs too; the rate is this
    run's (``run_rows`` in ``seconds``)."""

    model: str
    done: int
    total: int
    run_rows: int
    seconds: float

    @property
    def rate(self) -> float:
        """Rows per second in this run."""
        return self.run_rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at this run's rate (None before there is a rate)."""
        if self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def line(self) -> str:
        """``Request: 42,000/100,000 rows (42%), 8,310 rows/s, ETA 00:00:07``."""
        percent = 100 * self.done / self.total if self.total else 100.0
        eta = self.eta_seconds
        left = "?" if eta is None else time.strftime("%H:%M:%S", time.gmtime(round(eta)))
        return (
            f"{self.model}: {self.done:,}/{self.total:,} rows ({percent:.0f}%), "
            f"{self.rate:,.0f} rows/s, ETA {left}"
        )


class ProgressPrinter:
    """Prints progress lines on ``stream`` (stderr): rewritten in place on a terminal at most
    every ``tty_every`` seconds, else one line every ``log_every`` seconds; ``finish`` prints
    the latest one if it was skipped, and ends the line."""

    def __init__(
        self, stream: TextIO | None = None, *, tty_every: float = 0.2, log_every: float = 5.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = tty_every if self.tty else log_every
        self.last = float("-inf")
        self.latest: Progress | None = None
        self.shown: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        """Show ``progress`` if it is time to."""
        self.latest = progress
        if time.monotonic() - self.last >= self.every:
            self._show(progress, "" if self.tty else "\n")

    def finish(self) -> None:
        """Show the latest progress if it was not shown, and end the line."""
        if self.latest is not None and self.latest is not self.shown:
            self._show(self.latest, "\n")
        elif self.tty and self.shown is not None:
            self.stream.write("\n")

    def _show(self, progress: Progress, end: str) -> None:
        self.last = time.monotonic()
        self.shown = progress
        self.stream.write(f"{chr(13) if self.tty else ''}{progress.line()}{end}")
        self.stream.flush()
