"""The page allocator of a booted kernel, reduced to what KHO users need.

After boot the kernel allocates pages that memblock never sees: the root FDT page, the
sub-FDT pages of KHO users, preservation bitmaps, serialized chunks, test_kho's folios.
Those pages must be real addresses in emulated RAM (only bytes cross a kexec), so this
allocator hands out naturally aligned blocks of ``PAGE_SIZE << order`` from the memory
that memblock left free at the end of boot, top-down, and never from KHO scratch (scratch
is CMA: movable allocations only, never kernel pages). Its allocations do not appear in
``memblock/reserved``, as in the kernel.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from kho_fs.model.memblock import MEMBLOCK_KHO_SCRATCH
from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.memblock import Memblock
    from kho_fs.model.physmem import PhysicalMemory

MAX_PAGE_ORDER = 10


class PageAllocator:
    """Free ranges as sorted ``[start, end)`` pairs; blocks come from the top."""

    def __init__(self, mem: PhysicalMemory, memblock: Memblock) -> None:
        self.mem = mem
        self._free: list[tuple[int, int]] = _free_ranges(memblock)
        self.allocated: dict[int, int] = {}  # phys -> order

    def alloc_pages(self, order: int = 0, *, zero: bool = True) -> int:
        """A block of ``PAGE_SIZE << order`` bytes aligned to its size, or 0 (no memory).

        ``zero=False`` is ``alloc_page`` without ``__GFP_ZERO``: the block keeps whatever
        RAM held (a kernel that hands such a page over unwritten hands over garbage).
        """
        size = PAGE_SIZE << order
        for i in range(len(self._free) - 1, -1, -1):
            start, end = self._free[i]
            addr = (end - size) & ~(size - 1)
            if addr < start:
                continue
            pieces = [(s, e) for s, e in ((start, addr), (addr + size, end)) if e > s]
            self._free[i : i + 1] = pieces
            self.allocated[addr] = order
            if zero:
                self.mem.zero(addr, size)
            return addr
        return 0

    def free_pages(self, addr: int, order: int | None = None) -> None:
        """Give a block back; unknown addresses are ignored (a double free is a bug the
        kernel would warn about, not something to crash the emulator for)."""
        got = self.allocated.pop(addr, None)
        if got is None:
            return
        end = addr + (PAGE_SIZE << got)
        i = bisect.bisect_left(self._free, (addr, end))
        if i > 0 and self._free[i - 1][1] == addr:
            i -= 1
            addr = self._free[i][0]
            del self._free[i]
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free[i][1]
            del self._free[i]
        self._free.insert(i, (addr, end))

    def free_restored(self, addr: int, order: int) -> None:
        """Take in a block the previous kernel preserved and this one restored
        (``kho_restore_free``: ``kho_restore_folio`` then ``folio_put``). It was never
        this allocator's -- memblock reserved it at boot (``RSRV_NOINIT``) and keeps
        listing it, as the kernel's memblock does -- and from now on it is free memory.
        A block the allocator already holds or that overlaps its free memory is ignored
        (a double free)."""
        end = addr + (PAGE_SIZE << order)
        if addr in self.allocated:
            return
        i = bisect.bisect_left(self._free, (addr, end))
        for s, e in self._free[max(i - 1, 0) : i + 1]:
            if s < end and addr < e:
                return
        self.allocated[addr] = order
        self.free_pages(addr)

    def free_bytes(self) -> int:
        return sum(e - s for s, e in self._free)


def _free_ranges(memblock: Memblock) -> list[tuple[int, int]]:
    """``memory`` minus ``reserved`` minus KHO scratch, page-aligned."""
    reserved = sorted((r.base, r.end) for r in memblock.reserved)
    free: list[tuple[int, int]] = []
    for region in memblock.memory:
        if region.flags & MEMBLOCK_KHO_SCRATCH:
            continue
        cursor = region.base
        for rs, re_ in reserved:
            if re_ <= cursor or rs >= region.end:
                continue
            if rs > cursor:
                free.append((cursor, rs))
            cursor = max(cursor, re_)
        if cursor < region.end:
            free.append((cursor, region.end))
    aligned = []
    for s, e in free:
        s2 = -(-s // PAGE_SIZE) * PAGE_SIZE
        e2 = e // PAGE_SIZE * PAGE_SIZE
        if e2 > s2:
            aligned.append((s2, e2))
    return aligned
