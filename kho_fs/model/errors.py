"""Errors the model raises: each carries the errno the kernel would return."""

from __future__ import annotations

import errno as _errno
import logging
import os
from typing import Any

from kho_fs.model.dmesg import KERN_ERR

_log = logging.getLogger("kho_fs.drivers")
_pending: list[tuple[str, BaseException]] = []  # crashes reported before logging was set up
_PENDING_MAX = 100


class KernelError(Exception):
    """A failed kernel operation; ``errno`` is the positive errno user space would see."""

    def __init__(self, errno: int, detail: str = "") -> None:
        self.errno = errno
        self.detail = detail
        text = os.strerror(errno)
        super().__init__(f"{text}: {detail}" if detail else text)

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


def report_crash(kernel: Any, who: object, hook: str, exc: BaseException) -> None:
    """A KHO participant or driver raised in ``hook``: what a kernel shows of a buggy
    built-in (one ``KERN_ERR`` line in dmesg, ``kho-fs: driver 'NAME': HOOK raised …``),
    plus the traceback in the daemon log. The caller carries on as the kernel would with
    a participant that failed."""
    name = getattr(who, "name", None)
    what = f"driver {name!r}" if isinstance(name, str) else type(who).__name__
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    if logging.getLogger().handlers or len(_pending) >= _PENDING_MAX:
        _log.error("%s: %s raised", what, hook, exc_info=exc)
    else:  # the cold boot runs in `kho-fs mount` itself, before the daemon logs anywhere
        _pending.append((f"{what}: {hook} raised", exc))
    kernel.printk(
        f"kho-fs: {what}: {hook} raised {type(exc).__name__}" + (f": {text}" if text else ""),
        KERN_ERR,
    )


def log_pending_crashes() -> None:
    """Log the crashes :func:`report_crash` saw before logging was configured (the
    daemon calls this once its log is open, so the first boot's tracebacks land there)."""
    while _pending:
        message, exc = _pending.pop(0)
        _log.error("%s", message, exc_info=exc)
