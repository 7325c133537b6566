"""Progress of a long loop, shown where it runs: a tqdm bar on a terminal, log lines elsewhere.

tqdm disables itself without a terminal, and inside a Ray task (the sweep's shared work) or a
redirected run there is none: there a loop says how far it is in an INFO line of its caller's
logger at most every ``LOG_EVERY_S`` seconds, which Ray forwards to the driver's terminal:

    pretrain encoder: 600/2000 steps (30%), 21.4 steps/s, ETA 1m05s

A loop shows no progress when its logger is quiet (below INFO). ``update`` costs a clock read.
"""

from __future__ import annotations

import logging
import sys
import time

LOG_EVERY_S = 10.0  # a two-minute loop says where it is a dozen times, a short one not at all
BAR_DELAY_S = 3.0  # a terminal's bar appears only once a loop has run this long


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``update(n)`` as a loop advances through ``total`` units; a context manager that closes the bar."""

    def __init__(self, total: int, desc: str, logger: logging.Logger, unit: str = "steps", initial: int = 0,
                 every: float | None = None):
        self.total, self.desc, self.log, self.unit = total, desc, logger, unit
        self.every = LOG_EVERY_S if every is None else every
        self.done = self.start = initial
        self.note = ""
        self.t0 = self.last = time.monotonic()
        self.enabled = logger.isEnabledFor(logging.INFO)
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, delay=BAR_DELAY_S, leave=False)

    def update(self, n: int = 1) -> None:
        """``n`` more units done. ``note`` (e.g. the last loss; set it any time) is shown with them."""
        self.done += n
        if self.bar is not None:
            if self.note:
                self.bar.set_postfix_str(self.note, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """Where the loop is: done/total, the rate since this ``Progress`` began, the time left at that rate."""
        seconds = (time.monotonic() if now is None else now) - self.t0
        rate = (self.done - self.start) / seconds if seconds > 0 else 0.0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        note = f", {self.note}" if self.note else ""
        speed = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        return f"{self.desc}: {self.done}/{self.total} {self.unit}{pct}, {speed} {self.unit}/s, ETA {eta}{note}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
