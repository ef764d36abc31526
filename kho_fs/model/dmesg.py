"""The emulated kernel log: what ``dmesg`` shows, with monotonic timestamps.

Every record carries the console log level the kernel prints its message at (``pr_err``
is KERN_ERR, ...; the choice for each message is in docs/decisions.md).  The log renders
in two forms: the console form ``[    1.234567] text`` (``machine/dmesg``, for ``cat`` and
``grep``) and the raw syslog(2) form ``<3>[    1.234567] text`` (``machine/dmesg.raw``),
which is what util-linux ``dmesg -F FILE`` parses: it splits records at a newline followed
by ``<`` and reads the level (and facility, 0 = kern) from the ``<N>`` prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

# Console log levels (include/linux/kern_levels.h): what pr_err, pr_warn, pr_info print at.
KERN_EMERG = 0
KERN_ALERT = 1
KERN_CRIT = 2
KERN_ERR = 3
KERN_WARNING = 4
KERN_NOTICE = 5
KERN_INFO = 6
KERN_DEBUG = 7


class LogRecord(NamedTuple):
    usec: int  # microseconds since this kernel booted
    text: str
    level: int = KERN_INFO

    def format(self) -> str:
        """The console form ``[    1.234567] text`` (what ``dmesg`` prints)."""
        return f"[{self.usec // 1_000_000:5d}.{self.usec % 1_000_000:06d}] {self.text}"

    def format_raw(self) -> str:
        """The syslog(2) form ``<level>[    1.234567] text`` (facility kern = 0), the
        format util-linux ``dmesg -F`` reads: ``<%d>[%5ld.%06ld] `` in its raw printer."""
        return f"<{self.level}>{self.format()}"


class KernelLog:
    """One boot's log. Timestamps follow the host's monotonic clock from the boot on and
    never repeat, so records keep their order even when emitted within a microsecond."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self._last = -1
        self.records: list[LogRecord] = []

    def printk(self, text: str, level: int = KERN_INFO) -> None:
        """Log one message at ``level``; every message is one complete line (spec Decision)."""
        if not KERN_EMERG <= level <= KERN_DEBUG:
            raise ValueError(f"log level {level} is not a console log level (0-7)")
        usec = max(int((self._clock() - self._t0) * 1_000_000), self._last + 1)
        self._last = usec
        for line in text.split("\n") or [""]:
            self.records.append(LogRecord(usec, line, level))

    def resume(self) -> None:
        """Continue a restored log: new records follow the last restored timestamp."""
        if self.records:
            self._last = self.records[-1].usec
            self._t0 = self._clock() - self._last / 1_000_000

    def lines(self) -> list[str]:
        return [r.text for r in self.records]

    def render(self) -> str:
        """The console form, one line per record (``machine/dmesg``)."""
        return "".join(r.format() + "\n" for r in self.records)

    def render_raw(self) -> str:
        """The raw syslog(2) form, one line per record (``machine/dmesg.raw``)."""
        return "".join(r.format_raw() + "\n" for r in self.records)

    def __contains__(self, text: str) -> bool:
        return any(r.text == text for r in self.records)
