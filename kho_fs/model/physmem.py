"""Physical memory: an x86-like RAM map over a sparse, byte-addressable store.

The store is one anonymous private mapping as large as the physical address space,
reserved without commit (MAP_NORESERVE): untouched pages cost nothing and read as
zeros, a 4 TiB machine costs only the pages actually written, and a read or write of
any length is one memcpy instead of a per-page Python loop.
"""

from __future__ import annotations

import errno
import mmap
from collections.abc import Callable, Iterator
from typing import NamedTuple

from kho_fs.model.errors import KernelError
from kho_fs.model.units import SZ_1M, SZ_2M, SZ_4G

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Python < 3.13 lacks the name
# QEMU q35: below this much RAM everything sits under 4 GiB, above it the low part is 2 GiB.
Q35_LOWMEM_THRESHOLD = 0xB0000000
Q35_LOWMEM = 0x80000000
LEGACY_LOW_END = 0x9F000  # usable RAM below the VGA/BIOS hole, page-trimmed as memblock does
MEMORY_SECTION = 128 * SZ_1M
MIN_MEMORY = 256 * SZ_1M
MAX_MEMORY = 64 << 40
MAX_NODES = 8
DIRTY_CHUNK_SHIFT = 21  # written-data tracking granule: 2 MiB
SMALL_ZERO = 16 << 10  # zero() writes ranges this small instead of giving pages back


class RamRange(NamedTuple):
    """One range of System RAM and the NUMA node that owns it (end is exclusive)."""

    start: int
    end: int
    nid: int

    @property
    def size(self) -> int:
        return self.end - self.start


def x86_ram_map(size: int, nodes: int) -> list[RamRange]:
    """Lay ``size`` bytes of RAM out like QEMU's q35 machine and split it into nodes.

    RAM below 4 GiB is ``[0, 0x9f000)`` plus ``[1 MiB, lowmem)``; the rest starts at 4 GiB.
    Nodes get equal shares in address order (128 MiB multiples; the last takes the rest).
    """
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ValueError(f"memory size must be between 256M and 64T, not {size:#x}")
    if size % SZ_2M:
        raise ValueError("memory size must be a multiple of 2M")
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"NUMA node count must be 1..{MAX_NODES}, not {nodes}")
    if size // nodes < MEMORY_SECTION * 2:
        raise ValueError("each NUMA node needs at least 256M of RAM")
    lowmem = Q35_LOWMEM if size >= Q35_LOWMEM_THRESHOLD else size
    spans = [(0, LEGACY_LOW_END), (SZ_1M, lowmem)]
    if size > lowmem:
        spans.append((SZ_4G, SZ_4G + size - lowmem))
    share = (size // nodes) // MEMORY_SECTION * MEMORY_SECTION
    # Node boundaries measured in installed bytes (the legacy hole belongs to node 0).
    bounds = [share * (n + 1) for n in range(nodes - 1)]
    out: list[RamRange] = []
    for start, end in spans:
        # installed-bytes offset of `start`: low spans count from 0, the high one from lowmem
        base_off = 0 if start < SZ_4G else lowmem
        cur = start
        while cur < end:
            off = base_off + (cur - start if start >= SZ_4G else cur)
            nid = sum(1 for b in bounds if off >= b)
            nxt_off = bounds[nid] if nid < len(bounds) else None
            stop = end
            if nxt_off is not None:
                stop = min(end, start + (nxt_off - base_off) if start >= SZ_4G else nxt_off)
            out.append(RamRange(cur, stop, nid))
            cur = stop
    return out


def _merge_touching(ranges: list[RamRange]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for r in ranges:
        if spans and spans[-1][1] == r.start:
            spans[-1] = (spans[-1][0], r.end)
        else:
            spans.append((r.start, r.end))
    return spans


class PhysicalMemory:
    """The machine's RAM contents and map; survives kexec, is cleared by a cold reboot."""

    def __init__(self, size: int, nodes: int) -> None:
        self.installed = size
        self.nr_nodes = nodes
        self.ram = x86_ram_map(size, nodes)
        self.end = self.ram[-1].end
        # Contiguous RAM: node boundaries split ``ram`` but not the bus.
        self._spans = _merge_touching(self.ram)
        self._store = mmap.mmap(
            -1, self.end, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        )
        self._dirty: set[int] = set()

    # -- layout ---------------------------------------------------------------------
    def node_ranges(self, nid: int) -> list[RamRange]:
        return [r for r in self.ram if r.nid == nid]

    def node_size(self, nid: int) -> int:
        return sum(r.size for r in self.node_ranges(nid))

    def is_ram(self, addr: int, size: int) -> bool:
        """True when every byte of ``[addr, addr + size)`` is RAM (it may cross a node
        boundary, never a hole)."""
        end = addr + size
        for start, stop in self._spans:  # noqa: SIM110 - a plain loop: runs for every write
            if start <= addr and end <= stop:
                return True
        return False

    # -- contents -------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        """Bytes at ``addr``; holes and addresses past the end read as zeros, as unbacked
        physical addresses do on the emulated bus."""
        if size <= 0:
            return b""
        if addr >= self.end or addr < 0:
            return bytes(size)
        stop = min(addr + size, self.end)
        data = self._store[addr:stop]
        if stop - addr < size:
            data += bytes(size - (stop - addr))
        return data

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``addr``; it must lie inside RAM (EFAULT otherwise)."""
        n = len(data)
        if n == 0:
            return
        if not self.is_ram(addr, n):
            raise KernelError(errno.EFAULT, f"[{addr:#x}, {addr + n:#x}) is not RAM")
        self._store[addr : addr + n] = data
        self._dirty.update(
            range(addr >> DIRTY_CHUNK_SHIFT, ((addr + n - 1) >> DIRTY_CHUNK_SHIFT) + 1)
        )

    def fill(self, addr: int, size: int, reader: Callable[[memoryview], int]) -> int:
        """Let ``reader`` write straight into ``[addr, addr + size)`` of RAM (no copy in
        between, e.g. ``os.preadv`` from a file) and return the count it reports.
        EFAULT unless the range is RAM."""
        if size <= 0:
            return 0
        if not self.is_ram(addr, size):
            raise KernelError(errno.EFAULT, f"[{addr:#x}, {addr + size:#x}) is not RAM")
        with memoryview(self._store) as whole, whole[addr : addr + size] as view:
            done = reader(view)
        self._dirty.update(
            range(addr >> DIRTY_CHUNK_SHIFT, ((addr + size - 1) >> DIRTY_CHUNK_SHIFT) + 1)
        )
        return done

    def export(self, addr: int, size: int, writer: Callable[[memoryview], object]) -> None:
        """Hand ``writer`` a read-only view of ``[addr, addr + size)`` of RAM (no copy,
        e.g. for ``os.pwrite`` into a file); the view is valid during the call only."""
        if size <= 0:
            return
        if not self.is_ram(addr, size):
            raise KernelError(errno.EFAULT, f"[{addr:#x}, {addr + size:#x}) is not RAM")
        with (
            memoryview(self._store) as whole,
            whole[addr : addr + size] as view,
            view.toreadonly() as readonly,
        ):
            writer(readonly)

    def zero(self, addr: int, size: int) -> None:
        """Zero ``[addr, addr + size)`` inside RAM; whole pages go back to the host."""
        if size <= 0:
            return
        if not self.is_ram(addr, size):
            raise KernelError(errno.EFAULT, f"[{addr:#x}, {addr + size:#x}) is not RAM")
        first = -(-addr // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (addr + size) // mmap.PAGESIZE * mmap.PAGESIZE
        if last - first < mmap.PAGESIZE or size <= SMALL_ZERO:  # a write beats madvise
            self._store[addr : addr + size] = bytes(size)
            return
        self._store[addr:first] = bytes(first - addr)
        self._store.madvise(mmap.MADV_DONTNEED, first, last - first)
        self._store[last : addr + size] = bytes(addr + size - last)

    def dirty_chunks(self) -> Iterator[tuple[int, int]]:
        """(address, length) of every 2 MiB chunk that was ever written since the last clear."""
        for c in sorted(self._dirty):
            start = c << DIRTY_CHUNK_SHIFT
            yield start, min(1 << DIRTY_CHUNK_SHIFT, self.end - start)

    def clear(self) -> None:
        """Forget all contents (cold reboot): the pages go back to the host."""
        self._store.madvise(mmap.MADV_DONTNEED)
        self._dirty.clear()

    def close(self) -> None:
        self._store.close()
