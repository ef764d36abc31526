"""The kernel's blocking notifier chain and its return-value encoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

NOTIFY_DONE = 0x0000
NOTIFY_OK = 0x0001
NOTIFY_STOP_MASK = 0x8000
NOTIFY_BAD = NOTIFY_STOP_MASK | 0x0002
NOTIFY_STOP = NOTIFY_OK | NOTIFY_STOP_MASK


def notifier_from_errno(err: int) -> int:
    """Encode a negative errno as a notifier result (the chain stops on it)."""
    return NOTIFY_STOP_MASK | (NOTIFY_OK - err) if err else NOTIFY_OK


def notifier_to_errno(ret: int) -> int:
    """Decode a chain result into 0 or a negative errno; a plain NOTIFY_BAD gives -1."""
    ret &= ~NOTIFY_STOP_MASK
    return NOTIFY_OK - ret if ret > NOTIFY_OK else 0


class NotifierBlock(Protocol):
    """Anything with a ``notifier_call(event, data) -> int`` method."""

    def notifier_call(self, event: int, data: Any) -> int: ...


class BlockingNotifierHead:
    """Callbacks in registration order; the first result carrying NOTIFY_STOP_MASK ends
    the walk, and that result is what the caller sees."""

    def __init__(self) -> None:
        self.chain: list[NotifierBlock] = []

    def register(self, nb: NotifierBlock) -> None:
        self.chain.append(nb)

    def unregister(self, nb: NotifierBlock) -> None:
        self.chain.remove(nb)

    def call_chain(
        self,
        event: int,
        data: Any,
        on_error: Callable[[NotifierBlock, BaseException], int] | None = None,
    ) -> int:
        ret = NOTIFY_DONE
        for nb in list(self.chain):
            try:
                ret = nb.notifier_call(event, data)
            except Exception as exc:  # an emulated driver bug must not escape as a crash
                if on_error is None:
                    raise
                ret = on_error(nb, exc)
            if ret & NOTIFY_STOP_MASK:
                break
        return ret
