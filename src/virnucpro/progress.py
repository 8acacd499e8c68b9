"""Progress for long work: a bar on a terminal, periodic count/rate lines in logs."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("virnucpro")


class Progress:
    """Track a byte-measured task; report counts and rates of named items."""

    def __init__(self, label: str, total_bytes: int, log_every_s: float = 10.0) -> None:
        self.label = label
        self.start = time.monotonic()
        self._last_log = self.start
        self._log_every = log_every_s
        self._done = 0
        self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label,
                         disable=not sys.stderr.isatty(), leave=False)

    def update(self, bytes_done: int, **counts: int) -> None:
        self._bar.update(bytes_done - self._done)
        self._done = bytes_done
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            log.info("%s: %s", self.label, self.rates(**counts))

    def rates(self, **counts: int) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return ", ".join(f"{n:,} {name} ({n / elapsed:,.0f}/s)" for name, n in counts.items())

    def close(self, **counts: int) -> None:
        self._bar.close()
        log.info("%s done in %.1f s: %s", self.label, time.monotonic() - self.start, self.rates(**counts))
