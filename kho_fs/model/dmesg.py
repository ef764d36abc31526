"""The emulated kernel log: what ``dmesg`` shows, with monotonic timestamps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple


class LogRecord(NamedTuple):
    usec: int  # microseconds since this kernel booted
    text: str

    def format(self) -> str:
        """The console form ``[    1.234567] text`` that ``dmesg -F`` reads back."""
        return f"[{self.usec // 1_000_000:5d}.{self.usec % 1_000_000:06d}] {self.text}"


class KernelLog:
    """One boot's log. Timestamps follow the host's monotonic clock from the boot on and
    never repeat, so records keep their order even when emitted within a microsecond."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self._last = -1
        self.records: list[LogRecord] = []

    def printk(self, text: str) -> None:
        """Log one message; every message is one complete line (spec Decision)."""
        usec = max(int((self._clock() - self._t0) * 1_000_000), self._last + 1)
        self._last = usec
        for line in text.split("\n") or [""]:
            self.records.append(LogRecord(usec, line))

    def resume(self) -> None:
        """Continue a restored log: new records follow the last restored timestamp."""
        if self.records:
            self._last = self.records[-1].usec
            self._t0 = self._clock() - self._last / 1_000_000

    def lines(self) -> list[str]:
        return [r.text for r in self.records]

    def render(self) -> str:
        return "".join(r.format() + "\n" for r in self.records)

    def __contains__(self, text: str) -> bool:
        return any(r.text == text for r in self.records)
