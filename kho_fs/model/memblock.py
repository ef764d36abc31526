"""memblock: the early-boot memory allocator of Linux v6.14 (mm/memblock.c) with the KHO v4 patches.

Two sorted region lists, ``memory`` (RAM the kernel may use) and ``reserved`` (ranges already
taken), and an allocator that searches memory minus reserved. The model reproduces the kernel's
observable results exactly: which entries exist after each operation (splits, merges, the
flags and node of every entry), which address an allocation returns, and the debugfs text.

Deliberate simplifications, each invisible to the emulator's callers:

- Region arrays never need doubling (lists are Python lists), so the kernel's
  ``memblock_double_array`` and the reservation it makes for the new array are not modelled.
- The kernel has two "no node" values, ``MAX_NUMNODES`` (``memblock_add``) and ``NUMA_NO_NODE``
  (every reservation, since v4 patch 02). They live in different lists, so one value,
  :data:`NUMA_NO_NODE`, stands for both.
- Mirror, hotplug, no-map and driver-managed filters are not modelled (kho-fs never sets those
  flags); the node filter and the v4 KHO_SCRATCH filter are.
- Kernel WARN_ONs (mismatched flags on overlap) have no effect here, as in the kernel.

Addresses are ``phys_addr_t`` (u64): arguments outside ``[0, 2**64)`` raise ValueError instead of
wrapping silently, because in Python they can only come from an emulator bug.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kho_fs.model.units import PAGE_SIZE, PHYS_ADDR_MAX, U64_MASK, round_down, round_up

__all__ = [
    "MAX_NUMNODES",
    "MEMBLOCK_ALLOC_ACCESSIBLE",
    "MEMBLOCK_ALLOC_ANYWHERE",
    "MEMBLOCK_ALLOC_NOLEAKTRACE",
    "MEMBLOCK_DRIVER_MANAGED",
    "MEMBLOCK_HOTPLUG",
    "MEMBLOCK_KHO_SCRATCH",
    "MEMBLOCK_MIRROR",
    "MEMBLOCK_NOMAP",
    "MEMBLOCK_NONE",
    "MEMBLOCK_RSRV_KERN",
    "MEMBLOCK_RSRV_NOINIT",
    "NUMA_NO_NODE",
    "SMP_CACHE_BYTES",
    "Memblock",
    "MemblockRegion",
    "MemblockType",
    "memblock_debug_show",
    "numa_valid_node",
]

MEMBLOCK_NONE = 0x0
MEMBLOCK_HOTPLUG = 0x1
MEMBLOCK_MIRROR = 0x2
MEMBLOCK_NOMAP = 0x4
MEMBLOCK_DRIVER_MANAGED = 0x8
MEMBLOCK_RSRV_NOINIT = 0x10
MEMBLOCK_RSRV_KERN = 0x20  # v4 patch 02
MEMBLOCK_KHO_SCRATCH = 0x40  # v4 patch 03

NODES_SHIFT = 10  # x86-64 CONFIG_NODES_SHIFT as distributions build it
MAX_NUMNODES = 1 << NODES_SHIFT
NUMA_NO_NODE = -1

MEMBLOCK_ALLOC_ANYWHERE = PHYS_ADDR_MAX
MEMBLOCK_ALLOC_ACCESSIBLE = 0
MEMBLOCK_ALLOC_NOLEAKTRACE = 1  # like ACCESSIBLE, only hides the block from kmemleak
SMP_CACHE_BYTES = 64  # L1_CACHE_BYTES on x86-64

# debugfs names, indexed by flag bit (the kernel's flagname[] table).
_FLAG_NAMES = ("HOTPLUG", "MIRROR", "NOMAP", "DRV_MNG", "RSV_NIT", "RSV_KERN", "KHO_SCRATCH")


def numa_valid_node(nid: int) -> bool:
    """True for a real node number; "no node" markers (-1, MAX_NUMNODES) are not."""
    return 0 <= nid < MAX_NUMNODES


def _u64(name: str, value: int) -> int:
    if not 0 <= value <= U64_MASK:
        raise ValueError(f"{name} {value:#x} is not a 64-bit physical address quantity")
    return value


def _cap_size(base: int, size: int) -> int:
    """The kernel's memblock_cap_size: shrink ``size`` so that ``base + size`` cannot wrap."""
    return min(size, PHYS_ADDR_MAX - base)


@dataclass(slots=True)
class MemblockRegion:
    """One entry of a list: ``[base, base + size)`` with its flags and NUMA node.

    The model never mutates a region once it is in a list (splits and merges put new
    objects in place), so a region a caller kept stays a faithful snapshot.
    """

    base: int
    size: int
    flags: int = MEMBLOCK_NONE
    nid: int = NUMA_NO_NODE

    @property
    def end(self) -> int:
        """Exclusive end, ``base + size``."""
        return self.base + self.size


@dataclass(slots=True)
class MemblockType:
    """One region list (``memory`` or ``reserved``), sorted by base, never overlapping."""

    name: str
    regions: list[MemblockRegion] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.regions)

    @property
    def cnt(self) -> int:
        """Number of entries (the kernel's ``cnt``; v6.14 has no empty dummy entry)."""
        return len(self.regions)

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[MemblockRegion]:
        return iter(self.regions)

    def copy(self) -> MemblockType:
        return MemblockType(
            self.name, [MemblockRegion(r.base, r.size, r.flags, r.nid) for r in self.regions]
        )


# --- list primitives (memblock_add_range, memblock_isolate_range, ...) -------------------------


def _merge_regions(type_: MemblockType, start_rgn: int, end_rgn: int) -> None:
    """Merge touching neighbours with equal node and flags in ``[start_rgn - 1, end_rgn]``.

    Like the kernel, only the window around the entries just changed is scanned; the rest of
    the list is already minimal. The window is rebuilt in one pass, so this is O(n).
    """
    regions = type_.regions
    lo = start_rgn - 1 if start_rgn else 0
    hi = min(end_rgn, len(regions) - 1)
    if lo >= hi:
        return
    merged = [regions[lo]]
    for nxt in regions[lo + 1 : hi + 1]:
        this = merged[-1]
        if this.end == nxt.base and this.nid == nxt.nid and this.flags == nxt.flags:
            merged[-1] = MemblockRegion(this.base, this.size + nxt.size, this.flags, this.nid)
        else:
            merged.append(nxt)
    regions[lo : hi + 1] = merged


def _add_range(type_: MemblockType, base: int, size: int, nid: int, flags: int) -> None:
    """Insert the parts of ``[base, base + size)`` no entry covers yet, then merge.

    Covered parts keep the existing entry untouched (its flags and node win), which is why
    a plain reservation over an RSRV_KERN one does not clear RSRV_KERN.
    """
    size = _cap_size(base, size)
    if not size:
        return
    end = base + size
    regions = type_.regions
    out: list[MemblockRegion] = []
    start_rgn = -1
    end_rgn = 0
    idx = 0
    while idx < len(regions) and regions[idx].end <= base:
        out.append(regions[idx])
        idx += 1
    pending = base  # start of the part of the new range not dealt with yet
    while idx < len(regions) and regions[idx].base < end:
        rgn = regions[idx]
        if rgn.base > pending:
            if start_rgn < 0:
                start_rgn = len(out)
            out.append(MemblockRegion(pending, rgn.base - pending, flags, nid))
            end_rgn = len(out)
        out.append(rgn)
        pending = min(rgn.end, end)
        idx += 1
    if pending < end:
        if start_rgn < 0:
            start_rgn = len(out)
        out.append(MemblockRegion(pending, end - pending, flags, nid))
        end_rgn = len(out)
    if start_rgn < 0:
        return  # fully covered already: nothing inserted, nothing to merge
    out.extend(regions[idx:])
    regions[:] = out
    _merge_regions(type_, start_rgn, end_rgn)


def _isolate_range(type_: MemblockType, base: int, size: int) -> tuple[int, int]:
    """Split entries crossing the edges of ``[base, base + size)``.

    Returns ``(start_rgn, end_rgn)``: the index range of the entries now lying inside, or
    ``(0, 0)`` when none does.
    """
    size = _cap_size(base, size)
    if not size:
        return 0, 0
    end = base + size
    out: list[MemblockRegion] = []
    start_rgn = end_rgn = 0
    for rgn in type_.regions:
        if rgn.end <= base or rgn.base >= end:
            out.append(rgn)
            continue
        if rgn.base < base:
            out.append(MemblockRegion(rgn.base, base - rgn.base, rgn.flags, rgn.nid))
        inner_base = max(rgn.base, base)
        inner_end = min(rgn.end, end)
        if not end_rgn:
            start_rgn = len(out)
        if inner_base == rgn.base and inner_end == rgn.end:
            out.append(rgn)
        else:
            out.append(MemblockRegion(inner_base, inner_end - inner_base, rgn.flags, rgn.nid))
        end_rgn = len(out)
        if rgn.end > end:
            out.append(MemblockRegion(end, rgn.end - end, rgn.flags, rgn.nid))
    type_.regions[:] = out
    return start_rgn, end_rgn


def _remove_range(type_: MemblockType, base: int, size: int) -> None:
    start_rgn, end_rgn = _isolate_range(type_, base, size)
    del type_.regions[start_rgn:end_rgn]


def _overlaps(type_: MemblockType, base: int, size: int) -> bool:
    """memblock_overlaps_region; note a zero size still hits an entry strictly around ``base``."""
    size = _cap_size(base, size)
    return any(base < r.base + r.size and r.base < base + size for r in type_.regions)


def _search(type_: MemblockType, addr: int) -> MemblockRegion | None:
    """memblock_search: binary search for the entry containing ``addr``."""
    regions = type_.regions
    left, right = 0, len(regions)
    while left < right:
        mid = (left + right) // 2
        rgn = regions[mid]
        if addr < rgn.base:
            right = mid
        elif addr >= rgn.end:
            left = mid + 1
        else:
            return rgn
    return None


# --- the allocator state ------------------------------------------------------------------------


@dataclass
class Memblock:
    """The global ``struct memblock`` plus the v4 ``kho_scratch_only`` switch."""

    memory: MemblockType = field(default_factory=lambda: MemblockType("memory"))
    reserved: MemblockType = field(default_factory=lambda: MemblockType("reserved"))
    bottom_up: bool = False
    current_limit: int = MEMBLOCK_ALLOC_ANYWHERE
    kho_scratch_only: bool = False

    # -- adding and removing --------------------------------------------------------------------

    def memblock_add_node(self, base: int, size: int, nid: int, flags: int) -> None:
        """Add RAM ``[base, base + size)`` on node ``nid`` with ``flags``."""
        _add_range(self.memory, _u64("base", base), _u64("size", size), nid, flags)

    def memblock_add(self, base: int, size: int) -> None:
        """Add RAM without a node; NUMA init assigns nodes later with memblock_set_node."""
        self.memblock_add_node(base, size, NUMA_NO_NODE, MEMBLOCK_NONE)

    def memblock_remove(self, base: int, size: int) -> None:
        """Cut ``[base, base + size)`` out of ``memory``."""
        _remove_range(self.memory, _u64("base", base), _u64("size", size))

    def memblock_reserve_range(self, base: int, size: int, nid: int, flags: int) -> None:
        """The kernel's ``__memblock_reserve`` (v4 patch 02): reserve with a node and flags."""
        _add_range(self.reserved, _u64("base", base), _u64("size", size), nid, flags)

    def memblock_reserve(self, base: int, size: int) -> None:
        """Plain reservation (firmware ranges, handed-over data): flags NONE, no node."""
        self.memblock_reserve_range(base, size, NUMA_NO_NODE, MEMBLOCK_NONE)

    def memblock_reserve_kern(self, base: int, size: int) -> None:
        """Reservation for the kernel's own use (v4 patch 02); counted for scratch sizing."""
        self.memblock_reserve_range(base, size, NUMA_NO_NODE, MEMBLOCK_RSRV_KERN)

    def memblock_phys_free(self, base: int, size: int) -> None:
        """Cut ``[base, base + size)`` out of ``reserved``, whatever reserved it."""
        _remove_range(self.reserved, _u64("base", base), _u64("size", size))

    # -- flags and nodes ------------------------------------------------------------------------

    def memblock_setclr_flag(
        self, type_: MemblockType, base: int, size: int, set_: bool, flag: int
    ) -> None:
        """Set or clear ``flag`` on the part of ``type_`` inside the range, then re-merge."""
        start_rgn, end_rgn = _isolate_range(type_, _u64("base", base), _u64("size", size))
        regions = type_.regions
        for i in range(start_rgn, end_rgn):
            r = regions[i]
            flags = r.flags | flag if set_ else r.flags & ~flag
            regions[i] = MemblockRegion(r.base, r.size, flags, r.nid)
        _merge_regions(type_, start_rgn, end_rgn)

    def memblock_mark_kho_scratch(self, base: int, size: int) -> None:
        """Flag inherited scratch RAM (handover boot) as the only place early allocations go."""
        self.memblock_setclr_flag(self.memory, base, size, True, MEMBLOCK_KHO_SCRATCH)

    def memblock_clear_kho_scratch(self, base: int, size: int) -> None:
        self.memblock_setclr_flag(self.memory, base, size, False, MEMBLOCK_KHO_SCRATCH)

    def memblock_reserved_mark_noinit(self, base: int, size: int) -> None:
        self.memblock_setclr_flag(self.reserved, base, size, True, MEMBLOCK_RSRV_NOINIT)

    def memblock_reserve_noinit_many(self, ranges: Iterable[tuple[int, int]]) -> None:
        """``memblock_reserve`` then ``memblock_reserved_mark_noinit`` for every range, in
        one pass: the same list as the calls one by one (KHO's deserialization makes one
        pair per preserved block; a misread map can make tens of thousands)."""
        wanted = sorted(
            (b, b + _cap_size(b, sz)) for b, sz in ranges if _cap_size(_u64("base", b), sz)
        )
        union: list[list[int]] = []
        for b, e in wanted:
            if union and b <= union[-1][1]:
                union[-1][1] = max(union[-1][1], e)
            else:
                union.append([b, e])
        if not union:
            return
        regions = self.reserved.regions
        points = sorted(
            {p for r in regions for p in (r.base, r.end)} | {p for u in union for p in u}
        )
        pieces: list[MemblockRegion] = []
        ri = ui = 0
        for lo, hi in itertools.pairwise(points):
            while ri < len(regions) and regions[ri].end <= lo:
                ri += 1
            while ui < len(union) and union[ui][1] <= lo:
                ui += 1
            covered = ri < len(regions) and regions[ri].base <= lo
            inside = ui < len(union) and union[ui][0] <= lo
            if covered:
                r = regions[ri]
                flags = r.flags | (MEMBLOCK_RSRV_NOINIT if inside else 0)
                piece = MemblockRegion(lo, hi - lo, flags, r.nid)
            elif inside:
                piece = MemblockRegion(lo, hi - lo, MEMBLOCK_RSRV_NOINIT, NUMA_NO_NODE)
            else:
                continue
            last = pieces[-1] if pieces else None
            if last and last.end == lo and last.flags == piece.flags and last.nid == piece.nid:
                pieces[-1] = MemblockRegion(last.base, last.size + piece.size, last.flags, last.nid)
            else:
                pieces.append(piece)
        regions[:] = pieces

    def memblock_set_node(self, base: int, size: int, type_: MemblockType, nid: int) -> None:
        """Tag the part of ``type_`` inside the range with node ``nid``, then re-merge."""
        start_rgn, end_rgn = _isolate_range(type_, _u64("base", base), _u64("size", size))
        regions = type_.regions
        for i in range(start_rgn, end_rgn):
            r = regions[i]
            regions[i] = MemblockRegion(r.base, r.size, r.flags, nid)
        _merge_regions(type_, start_rgn, end_rgn)

    def memmap_init_reserved_pages(self) -> None:
        """Give every reserved range lying in RAM the node of that RAM (end of boot).

        Reserved ranges outside RAM keep the node they had ("no node" as a rule).
        """
        for rgn in list(self.memory.regions):
            self.memblock_set_node(rgn.base, rgn.size, self.reserved, rgn.nid)

    # -- free ranges ----------------------------------------------------------------------------

    def _should_skip_region(self, rgn: MemblockRegion, nid: int, flags: int) -> bool:
        if numa_valid_node(nid) and nid != rgn.nid:
            return True
        # v4 patch 03: in scratch-only mode nothing but KHO_SCRATCH memory qualifies.
        return bool(flags & MEMBLOCK_KHO_SCRATCH) and not rgn.flags & MEMBLOCK_KHO_SCRATCH

    def _gap(self, reserved: tuple[MemblockRegion, ...], idx: int) -> tuple[int, int]:
        """The hole before reserved entry ``idx`` (``idx == len`` is the hole after the last)."""
        start = reserved[idx - 1].end if idx else 0
        end = reserved[idx].base if idx < len(reserved) else PHYS_ADDR_MAX
        return start, end

    def for_each_free_mem_range(
        self, nid: int = NUMA_NO_NODE, flags: int = MEMBLOCK_NONE
    ) -> Iterator[tuple[int, int, int]]:
        """Yield ``(start, end, nid)`` of memory not reserved, ascending (``__next_mem_range``).

        Ranges never cross a memory entry boundary, and ``nid`` is that entry's node. Like the
        kernel, an empty range ``(a, a)`` is yielded where two reserved entries touch at ``a``
        inside a memory entry; it matters only to zero-size searches.
        """
        memory = tuple(self.memory.regions)
        reserved = tuple(self.reserved.regions)
        idx_b = 0
        for m in memory:
            if self._should_skip_region(m, nid, flags):
                continue
            while idx_b <= len(reserved):
                r_start, r_end = self._gap(reserved, idx_b)
                if r_start >= m.end:
                    break
                if m.base < r_end:
                    yield max(m.base, r_start), min(m.end, r_end), m.nid
                    if m.end <= r_end:
                        break  # this hole may still cover the next memory entry
                idx_b += 1

    def for_each_free_mem_range_reverse(
        self, nid: int = NUMA_NO_NODE, flags: int = MEMBLOCK_NONE
    ) -> Iterator[tuple[int, int, int]]:
        """The same ranges as :meth:`for_each_free_mem_range`, descending (top-down search)."""
        memory = tuple(self.memory.regions)
        reserved = tuple(self.reserved.regions)
        idx_b = len(reserved)
        for m in reversed(memory):
            if self._should_skip_region(m, nid, flags):
                continue
            while idx_b >= 0:
                r_start, r_end = self._gap(reserved, idx_b)
                if r_end <= m.base:
                    break
                if m.end > r_start:
                    yield max(m.base, r_start), min(m.end, r_end), m.nid
                    if m.base >= r_start:
                        break  # this hole may still cover the previous memory entry
                idx_b -= 1

    # -- allocation -----------------------------------------------------------------------------

    def choose_memblock_flags(self) -> int:
        """Search filter for allocations: KHO_SCRATCH in scratch-only mode (v4 patch 03)."""
        return MEMBLOCK_KHO_SCRATCH if self.kho_scratch_only else MEMBLOCK_NONE

    def memblock_set_kho_scratch_only(self) -> None:
        self.kho_scratch_only = True

    def memblock_clear_kho_scratch_only(self) -> None:
        self.kho_scratch_only = False

    def memblock_set_bottom_up(self, enable: bool) -> None:
        self.bottom_up = enable

    def memblock_set_current_limit(self, limit: int) -> None:
        self.current_limit = _u64("limit", limit)

    def _find_range_bottom_up(
        self, start: int, end: int, size: int, align: int, nid: int, flags: int
    ) -> int:
        for this_start, this_end, _ in self.for_each_free_mem_range(nid, flags):
            this_start = min(max(this_start, start), end)
            this_end = min(max(this_end, start), end)
            cand = round_up(this_start, align)
            if cand < this_end and this_end - cand >= size:
                return cand
        return 0

    def _find_range_top_down(
        self, start: int, end: int, size: int, align: int, nid: int, flags: int
    ) -> int:
        for this_start, this_end, _ in self.for_each_free_mem_range_reverse(nid, flags):
            this_start = min(max(this_start, start), end)
            this_end = min(max(this_end, start), end)
            if this_end < size:
                continue
            cand = round_down(this_end - size, align)
            if cand >= this_start:
                return cand
        return 0

    def memblock_find_in_range_node(
        self, size: int, align: int, start: int, end: int, nid: int, flags: int
    ) -> int:
        """Find (do not reserve) ``size`` free bytes aligned to ``align``; 0 when none fit.

        ``align`` goes through the kernel's bit-mask rounding, so a non-power-of-two value
        gives the kernel's (odd) result rather than a true multiple. Page 0 is never returned.
        """
        for name, value in (("size", size), ("align", align), ("start", start), ("end", end)):
            _u64(name, value)
        if end in (MEMBLOCK_ALLOC_ACCESSIBLE, MEMBLOCK_ALLOC_NOLEAKTRACE):
            end = self.current_limit
        start = max(start, PAGE_SIZE)
        end = max(start, end)
        if self.bottom_up:
            return self._find_range_bottom_up(start, end, size, align, nid, flags)
        return self._find_range_top_down(start, end, size, align, nid, flags)

    def memblock_alloc_range_nid(
        self, size: int, align: int, start: int, end: int, nid: int, exact_nid: bool
    ) -> int:
        """Find and reserve (RSRV_KERN) a block; return its address, or 0 on failure.

        A block found on the requested node is reserved with that node. When that fails and
        ``exact_nid`` is false, any node is tried and the block is reserved with no node
        (the kernel's ``memblock_reserve_kern`` fallback).
        """
        flags = self.choose_memblock_flags()
        if not align:
            align = SMP_CACHE_BYTES  # the kernel dumps a stack and carries on
        found = self.memblock_find_in_range_node(size, align, start, end, nid, flags)
        if found:
            self.memblock_reserve_range(found, size, nid, MEMBLOCK_RSRV_KERN)
            return found
        if numa_valid_node(nid) and not exact_nid:
            found = self.memblock_find_in_range_node(size, align, start, end, NUMA_NO_NODE, flags)
            if found:
                self.memblock_reserve_kern(found, size)
                return found
        return 0

    def memblock_phys_alloc_range(self, size: int, align: int, start: int, end: int) -> int:
        return self.memblock_alloc_range_nid(size, align, start, end, NUMA_NO_NODE, False)

    def memblock_phys_alloc_try_nid(self, size: int, align: int, nid: int) -> int:
        return self.memblock_alloc_range_nid(size, align, 0, MEMBLOCK_ALLOC_ACCESSIBLE, nid, False)

    def memblock_phys_alloc(self, size: int, align: int) -> int:
        return self.memblock_phys_alloc_range(size, align, 0, MEMBLOCK_ALLOC_ACCESSIBLE)

    # -- queries --------------------------------------------------------------------------------

    def memblock_reserved_kern_size(
        self, limit: int = PHYS_ADDR_MAX, nid: int = NUMA_NO_NODE
    ) -> int:
        """Bytes of RSRV_KERN reservations below ``limit`` on node ``nid`` (any node for none).

        This is the S of the scratch sizing rule (spec 7.2).
        """
        total = 0
        for r in self.reserved.regions:
            if r.base > limit:
                break
            size = limit - r.base if r.end > limit else r.size
            if (nid == r.nid or not numa_valid_node(nid)) and r.flags & MEMBLOCK_RSRV_KERN:
                total += size
        return total

    def memblock_phys_mem_size(self) -> int:
        return self.memory.total_size

    def memblock_reserved_size(self) -> int:
        return self.reserved.total_size

    def memblock_start_of_DRAM(self) -> int:
        return self.memory.regions[0].base

    def memblock_end_of_DRAM(self) -> int:
        return self.memory.regions[-1].end

    def memblock_is_memory(self, addr: int) -> bool:
        return _search(self.memory, addr) is not None

    def memblock_is_reserved(self, addr: int) -> bool:
        return _search(self.reserved, addr) is not None

    def memblock_is_region_memory(self, base: int, size: int) -> bool:
        """True when a single memory entry holds the whole range.

        A range spanning two touching entries (different node or flags) is refused, as in
        the kernel.
        """
        rgn = _search(self.memory, base)
        return rgn is not None and rgn.end >= base + _cap_size(base, size)

    def memblock_is_region_reserved(self, base: int, size: int) -> bool:
        """True when any reserved entry intersects the range."""
        return _overlaps(self.reserved, base, size)

    def memblock_overlaps_region(self, type_: MemblockType, base: int, size: int) -> bool:
        return _overlaps(type_, base, size)

    # -- model housekeeping ---------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError unless both lists are sorted, disjoint and minimal."""
        for type_ in (self.memory, self.reserved):
            prev: MemblockRegion | None = None
            for i, r in enumerate(type_.regions):
                where = f"{type_.name}[{i}] {r}"
                if r.size <= 0:
                    raise AssertionError(f"{where}: empty entry")
                if r.base < 0 or r.end > PHYS_ADDR_MAX:
                    raise AssertionError(f"{where}: outside the physical address space")
                if prev is not None:
                    if prev.end > r.base:
                        raise AssertionError(f"{where}: overlaps or is out of order after {prev}")
                    if prev.end == r.base and prev.nid == r.nid and prev.flags == r.flags:
                        raise AssertionError(f"{where}: should have merged with {prev}")
                prev = r

    def copy(self) -> Memblock:
        """An independent deep copy (snapshots for persistence and what-if searches)."""
        return Memblock(
            memory=self.memory.copy(),
            reserved=self.reserved.copy(),
            bottom_up=self.bottom_up,
            current_limit=self.current_limit,
            kho_scratch_only=self.kho_scratch_only,
        )


def _flag_name(flags: int) -> str:
    if not flags:
        return "NONE"
    for bit, name in enumerate(_FLAG_NAMES):
        if flags & (1 << bit):
            return name
    return "UNKNOWN"


def memblock_debug_show(type_: MemblockType) -> str:
    """The text of ``/sys/kernel/debug/memblock/<type>`` (spec 3.9).

    One line per entry: index, inclusive range, node (``x`` for none), lowest flag name.
    An empty list prints nothing (v6.14 has no dummy entry).
    """
    lines = []
    for i, r in enumerate(type_.regions):
        last = (r.base + r.size - 1) & U64_MASK
        node = f"{r.nid:4d}" if numa_valid_node(r.nid) else "   x"
        lines.append(f"{i:4d}: 0x{r.base:016x}..0x{last:016x} {node} {_flag_name(r.flags)}\n")
    return "".join(lines)
