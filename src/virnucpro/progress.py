"""Progress for long work: a bar on a terminal, periodic done/total, rate and ETA lines in logs."""

from __future__ import annotations

import logging
import math
import sys
import time

from tqdm import tqdm

log = logging.getLogger("virnucpro")


def _amount(value: float, unit: str) -> str:
    """Bytes in MB, anything else as a count with thousands separators."""
    return f"{value / 1e6:,.1f}" if unit == "B" else f"{value:,.0f}"


def _units(unit: str) -> str:
    return "MB" if unit == "B" else f"{unit}s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Track a task measured in `unit` (bytes read, frames embedded, ...) towards `total`
    (None when unknown), with counts of named items: a bar on a terminal, a line every
    `log_every_s` seconds in rule logs (done/total, rate, ETA, the counts), and a last line
    saying done or stopped (`quiet`: the bar only, for a step's small side tasks)."""

    def __init__(self, label: str, total: int | None, unit: str = "B",
                 log_every_s: float = 10.0, quiet: bool = False) -> None:
        self.label = label
        self.unit = unit
        self.start = time.monotonic()
        self._last_log = self.start
        self._log_every = math.inf if quiet else log_every_s
        self._quiet = quiet
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
            log.info("%s: %s", self.label, self.line(**counts))

    def line(self, **counts: int) -> str:
        """'D of T units (P%), R units/s, ETA E; n name (r/s), ...' from the counts so far."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self._done / elapsed
        units = _units(self.unit)
        done = _amount(self._done, self.unit)
        parts = [f"{done} of {_amount(self._total, self.unit)} {units} "
                 f"({self._done / self._total:.0%})" if self._total else f"{done} {units}",
                 f"{_amount(rate, self.unit)} {units}/s"]
        if self._total and rate > 0 and self._done < self._total:
            parts.append(f"ETA {_duration((self._total - self._done) / rate)}")
        text = ", ".join(parts)
        if counts:
            text += "; " + ", ".join(f"{n:,} {name} ({n / elapsed:,.0f}/s)"
                                     for name, n in counts.items())
        return text

    def close(self, **counts: int) -> None:
        self._bar.close()
        if self._quiet:
            return
        state = "done" if self._total is None or self._done >= self._total else "stopped"
        log.info("%s %s after %.1f s: %s", self.label, state, time.monotonic() - self.start,
                 self.line(**counts))
