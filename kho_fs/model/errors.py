"""Errors the model raises: each carries the errno the kernel would return."""

from __future__ import annotations

import errno as _errno
import os


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
