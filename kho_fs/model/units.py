"""Sizes and the kernel's alignment arithmetic, kept literal (bit masks, 64-bit wrap)."""

from __future__ import annotations

SZ_4K = 1 << 12
SZ_64K = 1 << 16
SZ_1M = 1 << 20
SZ_2M = 1 << 21
SZ_16M = 1 << 24
SZ_1G = 1 << 30
SZ_4G = 1 << 32
PAGE_SIZE = SZ_4K
PAGEBLOCK_SIZE = SZ_2M  # pageblock_order 9 on x86-64
U64_MASK = (1 << 64) - 1
PHYS_ADDR_MAX = U64_MASK


def round_down(x: int, align: int) -> int:
    """The kernel's ``round_down``: clear the bits set in ``align - 1`` (odd aligns too)."""
    return x & ~((align - 1) & U64_MASK) & U64_MASK


def round_up(x: int, align: int) -> int:
    """The kernel's ``round_up``: add ``align - 1`` and clear those bits, wrapping at 2^64."""
    mask = (align - 1) & U64_MASK
    return ((x + mask) & U64_MASK) & ~mask & U64_MASK


def page_align(x: int) -> int:
    return round_up(x, PAGE_SIZE)


def hex_(x: int) -> str:
    """``0x`` + unpadded lower-case hex, the kernel's ``%#llx`` for non-zero and ``0x0`` for 0."""
    return f"0x{x:x}"
