"""Progress for long work: a bar on a terminal, periodic count/rate lines in logs."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("virnucpro")


class Progress:
    """Track a task measured in `unit` (bytes read, frames embedded, ...) and report
    counts and rates of named items: a bar on a terminal, a log line every
    `log_every_s` seconds in rule logs, and a last line saying done or stopped."""

    def __init__(self, label: str, total: int, unit: str = "B", log_every_s: float = 10.0) -> None:
        self.label = label
        self.start = time.monotonic()
        self._last_log = self.start
        self._log_every = log_every_s
        self._total = total
        self._done = 0
        self._bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=label,
                         disable=not sys.stderr.isatty(), leave=False)

    def update(self, position: int, **counts: int) -> None:
        self._bar.update(position - self._done)
        self._done = position
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            log.info("%s: %s", self.label, self.rates(**counts))

    def rates(self, **counts: int) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return ", ".join(f"{n:,} {name} ({n / elapsed:,.0f}/s)" for name, n in counts.items())

    def close(self, **counts: int) -> None:
        self._bar.close()
        state = "done" if self._done >= self._total else "stopped"
        log.info("%s %s after %.1f s: %s", self.label, state, time.monotonic() - self.start,
                 self.rates(**counts))
