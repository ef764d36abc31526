"""memblock model: the kernel's basic-API expectations, allocation, debugfs text, and a
property test against a page-map reference model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kho_fs.model.memblock import (
    MEMBLOCK_ALLOC_ACCESSIBLE,
    MEMBLOCK_ALLOC_ANYWHERE,
    MEMBLOCK_HOTPLUG,
    MEMBLOCK_KHO_SCRATCH,
    MEMBLOCK_NONE,
    MEMBLOCK_RSRV_KERN,
    MEMBLOCK_RSRV_NOINIT,
    NUMA_NO_NODE,
    SMP_CACHE_BYTES,
    Memblock,
    MemblockRegion,
    MemblockType,
    memblock_debug_show,
)
from kho_fs.model.units import (
    PAGE_SIZE,
    PHYS_ADDR_MAX,
    SZ_1G,
    SZ_1M,
    SZ_2M,
    SZ_4K,
    SZ_16M,
    round_down,
    round_up,
)

SZ_2K = 2 << 10
SZ_8K = 8 << 10
SZ_16K = 16 << 10
SZ_64K = 64 << 10
SZ_128K = 128 << 10
SZ_4M = 4 << 20
SZ_8M = 8 << 20
SZ_32M = 32 << 20
SZ_64M = 64 << 20
SZ_128M = 128 << 20
SZ_256M = 256 << 20
SZ_512M = 512 << 20
SZ_2G = 2 << 30

Row = tuple[int, int, int, int]


def spans(type_: MemblockType) -> list[tuple[int, int]]:
    return [(r.base, r.size) for r in type_]


def rows(type_: MemblockType) -> list[Row]:
    return [(r.base, r.size, r.flags, r.nid) for r in type_]


# --- spec 8.3: the kernel's basic-API test expectations ----------------------------------------


def test_case_02_add_simple() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_1G, SZ_4M)
    assert rows(mb.memory) == [(0x40000000, 0x400000, MEMBLOCK_NONE, NUMA_NO_NODE)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x400000


def test_case_03_add_node() -> None:
    mb = Memblock()
    mb.memblock_add_node(SZ_1M, SZ_16M, 1, MEMBLOCK_HOTPLUG)
    assert rows(mb.memory) == [(0x100000, 0x1000000, 0x1, 1)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x1000000


def test_case_04_add_disjoint() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_1G, SZ_8K)
    mb.memblock_add(SZ_1G + SZ_16K, SZ_8K)
    assert spans(mb.memory) == [(0x40000000, 0x2000), (0x40004000, 0x2000)]
    assert len(mb.memory) == 2
    assert mb.memory.total_size == 0x4000


def test_case_05_add_overlap_top() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_512M, SZ_1G)
    mb.memblock_add(SZ_256M, SZ_512M)
    assert spans(mb.memory) == [(0x10000000, 0x50000000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x50000000


def test_case_06_add_overlap_bottom() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_128M, SZ_512M)
    mb.memblock_add(SZ_256M, SZ_1G)
    assert spans(mb.memory) == [(0x8000000, 0x48000000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x48000000


def test_case_07_add_within() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_8M, SZ_32M)
    mb.memblock_add(SZ_16M, SZ_1M)
    assert spans(mb.memory) == [(0x800000, 0x2000000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x2000000


def test_case_08_add_twice() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_16K, SZ_2M)
    mb.memblock_add(SZ_16K, SZ_2M)
    assert spans(mb.memory) == [(0x4000, 0x200000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x200000


def test_case_09_reserve_simple() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_2G, SZ_128M)
    assert rows(mb.reserved) == [(0x80000000, 0x8000000, MEMBLOCK_NONE, NUMA_NO_NODE)]
    assert len(mb.reserved) == 1
    assert mb.reserved.total_size == 0x8000000
    assert len(mb.memory) == 0


def test_case_10_reserve_disjoint() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_256M, SZ_16M)
    mb.memblock_reserve(SZ_512M, SZ_512M)
    assert spans(mb.reserved) == [(0x10000000, 0x1000000), (0x20000000, 0x20000000)]
    assert len(mb.reserved) == 2
    assert mb.reserved.total_size == 0x21000000


def test_case_11_reserve_overlap_top() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_1G, SZ_1G)
    mb.memblock_reserve(SZ_128M, SZ_1G)
    assert spans(mb.reserved) == [(0x8000000, 0x78000000)]
    assert len(mb.reserved) == 1
    assert mb.reserved.total_size == 0x78000000


def test_case_12_reserve_overlap_bottom() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_2K, SZ_128K)
    mb.memblock_reserve(SZ_128K, SZ_128K)
    assert spans(mb.reserved) == [(0x800, 0x3F800)]
    assert len(mb.reserved) == 1
    assert mb.reserved.total_size == 0x3F800


def test_case_13_reserve_within() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_1M, SZ_8M)
    mb.memblock_reserve(SZ_2M, SZ_64K)
    assert spans(mb.reserved) == [(0x100000, 0x800000)]
    assert len(mb.reserved) == 1
    assert mb.reserved.total_size == 0x800000


def test_case_14_remove_simple() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_2K, SZ_4K)
    mb.memblock_add(SZ_128K, SZ_4M)
    mb.memblock_remove(SZ_2K, SZ_4K)
    assert spans(mb.memory) == [(0x20000, 0x400000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x400000


def test_case_15_remove_absent() -> None:
    mb = Memblock()
    mb.memblock_add(512 << 10, SZ_4M)
    mb.memblock_remove(SZ_64M, SZ_1G)
    assert spans(mb.memory) == [(0x80000, 0x400000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x400000


def test_case_16_remove_overlap_top() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_32M, SZ_32M)
    mb.memblock_remove(SZ_16M, SZ_32M)
    assert spans(mb.memory) == [(0x3000000, 0x1000000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x1000000


def test_case_17_remove_overlap_bottom() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_2M, SZ_64M)
    mb.memblock_remove(SZ_32M, SZ_256M)
    assert spans(mb.memory) == [(0x200000, 0x1E00000)]
    assert len(mb.memory) == 1
    assert mb.memory.total_size == 0x1E00000


def test_case_18_remove_within() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_1M, SZ_32M)
    mb.memblock_remove(SZ_16M, SZ_1M)
    assert spans(mb.memory) == [(0x100000, 0xF00000), (0x1100000, 0x1000000)]
    assert len(mb.memory) == 2
    assert mb.memory.total_size == 0x1F00000


def test_case_19_free_simple() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_4M, SZ_1M)
    mb.memblock_reserve(SZ_8M, SZ_1M)
    mb.memblock_phys_free(SZ_4M, SZ_1M)
    assert spans(mb.reserved) == [(0x800000, 0x100000)]
    assert len(mb.reserved) == 1
    assert mb.reserved.total_size == 0x100000


def test_case_20_free_overlap_top() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_8M, SZ_32M)
    mb.memblock_phys_free(SZ_1M, SZ_8M)
    assert spans(mb.reserved) == [(0x900000, 0x1F00000)]
    assert len(mb.reserved) == 1
    assert mb.reserved.total_size == 0x1F00000


def test_case_21_free_within() -> None:
    mb = Memblock()
    mb.memblock_reserve(SZ_1M, SZ_8M)
    mb.memblock_phys_free(SZ_4M, SZ_1M)
    assert spans(mb.reserved) == [(0x100000, 0x300000), (0x500000, 0x400000)]
    assert len(mb.reserved) == 2
    assert mb.reserved.total_size == 0x700000


# --- list rules beyond the kernel's table ------------------------------------------------------


def test_size_zero_is_a_no_op() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_1M, 0)
    mb.memblock_reserve(SZ_1M, 0)
    assert len(mb.memory) == 0
    assert len(mb.reserved) == 0
    mb.memblock_add(SZ_1M, SZ_1M)
    mb.memblock_remove(SZ_1M + SZ_4K, 0)
    mb.memblock_mark_kho_scratch(SZ_1M + SZ_4K, 0)
    assert spans(mb.memory) == [(SZ_1M, SZ_1M)]


def test_size_is_capped_at_phys_addr_max() -> None:
    mb = Memblock()
    mb.memblock_add(PHYS_ADDR_MAX - 0x1000, 0x2000)
    assert spans(mb.memory) == [(PHYS_ADDR_MAX - 0x1000, 0x1000)]
    mb.memblock_remove(PHYS_ADDR_MAX - 0x800, PHYS_ADDR_MAX)
    assert spans(mb.memory) == [(PHYS_ADDR_MAX - 0x1000, 0x800)]
    mb.check_invariants()


def test_overlap_keeps_existing_flags_and_node() -> None:
    mb = Memblock()
    mb.memblock_reserve_range(SZ_2M, SZ_1M, 3, MEMBLOCK_RSRV_KERN)
    mb.memblock_reserve(SZ_1M, SZ_4M)
    assert rows(mb.reserved) == [
        (SZ_1M, SZ_1M, MEMBLOCK_NONE, NUMA_NO_NODE),
        (SZ_2M, SZ_1M, MEMBLOCK_RSRV_KERN, 3),
        (3 * SZ_1M, 2 * SZ_1M, MEMBLOCK_NONE, NUMA_NO_NODE),
    ]
    mb.check_invariants()


def test_merge_bridges_a_gap_on_both_sides() -> None:
    mb = Memblock()
    mb.memblock_reserve(0x1000, 0x1000)
    mb.memblock_reserve(0x3000, 0x1000)
    mb.memblock_reserve(0x5000, 0x1000)
    mb.memblock_reserve(0x1000, 0x5000)
    assert spans(mb.reserved) == [(0x1000, 0x5000)]


def test_touching_entries_with_other_node_stay_separate() -> None:
    mb = Memblock()
    mb.memblock_add_node(0, SZ_1M, 0, MEMBLOCK_NONE)
    mb.memblock_add_node(SZ_1M, SZ_1M, 1, MEMBLOCK_NONE)
    assert rows(mb.memory) == [(0, SZ_1M, 0, 0), (SZ_1M, SZ_1M, 0, 1)]
    mb.memblock_set_node(0, SZ_2M, mb.memory, 0)
    assert rows(mb.memory) == [(0, SZ_2M, 0, 0)]


def test_mark_and_clear_kho_scratch_split_and_remerge() -> None:
    mb = Memblock()
    mb.memblock_add_node(0, SZ_16M, 0, MEMBLOCK_NONE)
    mb.memblock_mark_kho_scratch(SZ_4M, SZ_2M)
    assert rows(mb.memory) == [
        (0, SZ_4M, 0, 0),
        (SZ_4M, SZ_2M, MEMBLOCK_KHO_SCRATCH, 0),
        (SZ_4M + SZ_2M, SZ_16M - SZ_4M - SZ_2M, 0, 0),
    ]
    mb.memblock_mark_kho_scratch(SZ_4M + SZ_2M, SZ_2M)  # grows the scratch entry
    assert rows(mb.memory)[1] == (SZ_4M, SZ_4M, MEMBLOCK_KHO_SCRATCH, 0)
    mb.memblock_clear_kho_scratch(0, SZ_16M)
    assert rows(mb.memory) == [(0, SZ_16M, 0, 0)]
    mb.check_invariants()


def test_setclr_flag_on_reserved() -> None:
    mb = Memblock()
    mb.memblock_reserve_kern(SZ_1M, SZ_1M)
    mb.memblock_setclr_flag(mb.reserved, SZ_1M, SZ_4K, True, MEMBLOCK_RSRV_NOINIT)
    assert rows(mb.reserved) == [
        (SZ_1M, SZ_4K, MEMBLOCK_RSRV_KERN | MEMBLOCK_RSRV_NOINIT, NUMA_NO_NODE),
        (SZ_1M + SZ_4K, SZ_1M - SZ_4K, MEMBLOCK_RSRV_KERN, NUMA_NO_NODE),
    ]


def test_memmap_init_reserved_pages_tags_reserved_with_ram_node() -> None:
    mb = Memblock()
    mb.memblock_add_node(0, SZ_16M, 0, MEMBLOCK_NONE)
    mb.memblock_add_node(SZ_16M, SZ_16M, 1, MEMBLOCK_NONE)
    mb.memblock_reserve_kern(SZ_8M, SZ_16M)  # straddles the node boundary
    mb.memblock_reserve(SZ_64M, SZ_1M)  # outside RAM
    mb.memmap_init_reserved_pages()
    assert rows(mb.reserved) == [
        (SZ_8M, SZ_8M, MEMBLOCK_RSRV_KERN, 0),
        (SZ_16M, SZ_8M, MEMBLOCK_RSRV_KERN, 1),
        (SZ_64M, SZ_1M, MEMBLOCK_NONE, NUMA_NO_NODE),
    ]
    mb.check_invariants()


def test_region_queries() -> None:
    mb = Memblock()
    mb.memblock_add_node(0, SZ_1M, 0, MEMBLOCK_NONE)
    mb.memblock_add_node(SZ_1M, SZ_1M, 1, MEMBLOCK_NONE)
    mb.memblock_reserve(0x10000, 0x1000)
    assert mb.memblock_is_region_memory(0, SZ_1M)
    # one entry must hold the whole range: touching entries of other nodes do not count
    assert not mb.memblock_is_region_memory(SZ_1M - SZ_4K, 2 * SZ_4K)
    assert not mb.memblock_is_region_memory(SZ_2M, SZ_4K)
    assert mb.memblock_is_region_reserved(0xF000, 0x1001)
    assert not mb.memblock_is_region_reserved(0xF000, 0x1000)
    assert not mb.memblock_is_region_reserved(0x11000, 0x1000)
    # the kernel's overlap test: a zero-size probe strictly inside an entry still hits it
    assert mb.memblock_is_region_reserved(0x10800, 0)
    assert not mb.memblock_is_region_reserved(0x10000, 0)
    assert mb.memblock_overlaps_region(mb.memory, SZ_2M - 1, 1)
    assert mb.memblock_is_memory(SZ_1M) and not mb.memblock_is_memory(SZ_2M)
    assert mb.memblock_is_reserved(0x10FFF) and not mb.memblock_is_reserved(0x11000)
    assert mb.memblock_start_of_DRAM() == 0 and mb.memblock_end_of_DRAM() == SZ_2M
    assert mb.memblock_phys_mem_size() == SZ_2M and mb.memblock_reserved_size() == 0x1000


def test_free_ranges_both_directions() -> None:
    mb = Memblock()
    mb.memblock_add_node(0, SZ_1M, 0, MEMBLOCK_NONE)
    mb.memblock_add_node(SZ_2M, SZ_1M, 1, MEMBLOCK_NONE)
    mb.memblock_reserve(0x10000, 0x10000)
    mb.memblock_reserve(SZ_1M - 0x1000, 0x2000)  # crosses the end of node 0's RAM
    expected = [(0, 0x10000, 0), (0x20000, SZ_1M - 0x1000, 0), (SZ_2M, 3 * SZ_1M, 1)]
    assert list(mb.for_each_free_mem_range()) == expected
    assert list(mb.for_each_free_mem_range_reverse()) == expected[::-1]
    assert list(mb.for_each_free_mem_range(nid=1)) == [(SZ_2M, 3 * SZ_1M, 1)]
    assert list(mb.for_each_free_mem_range_reverse(nid=0)) == expected[1::-1]


def test_free_ranges_yield_empty_range_where_reservations_touch() -> None:
    """The kernel's hole walk reports a zero-length hole between touching reservations."""
    mb = Memblock()
    mb.memblock_add(0, SZ_1M)
    mb.memblock_reserve(0x10000, 0x1000)
    mb.memblock_reserve_kern(0x11000, 0x1000)  # touches, different flags: two entries
    assert list(mb.for_each_free_mem_range()) == [
        (0, 0x10000, NUMA_NO_NODE),
        (0x11000, 0x11000, NUMA_NO_NODE),
        (0x12000, SZ_1M, NUMA_NO_NODE),
    ]
    assert list(mb.for_each_free_mem_range_reverse()) == [
        (0x12000, SZ_1M, NUMA_NO_NODE),
        (0x11000, 0x11000, NUMA_NO_NODE),
        (0, 0x10000, NUMA_NO_NODE),
    ]


def test_rejects_values_outside_u64() -> None:
    mb = Memblock()
    with pytest.raises(ValueError):
        mb.memblock_add(-1, SZ_4K)
    with pytest.raises(ValueError):
        mb.memblock_reserve(0, 1 << 64)
    with pytest.raises(ValueError):
        mb.memblock_phys_alloc(-SZ_4K, SZ_4K)


def test_check_invariants_catches_broken_lists() -> None:
    bad_lists = [
        [MemblockRegion(0x1000, 0)],
        [MemblockRegion(0x2000, 0x1000), MemblockRegion(0x1000, 0x1000)],
        [MemblockRegion(0x1000, 0x2000), MemblockRegion(0x2000, 0x1000, MEMBLOCK_RSRV_KERN)],
        [MemblockRegion(0x1000, 0x1000), MemblockRegion(0x2000, 0x1000)],
    ]
    for regions in bad_lists:
        mb = Memblock()
        mb.reserved.regions.extend(regions)
        with pytest.raises(AssertionError):
            mb.check_invariants()
    mb = Memblock()
    mb.reserved.regions.extend(
        [MemblockRegion(0x1000, 0x1000), MemblockRegion(0x2000, 0x1000, MEMBLOCK_RSRV_KERN)]
    )
    mb.check_invariants()


def test_copy_is_deep() -> None:
    mb = Memblock(bottom_up=True, kho_scratch_only=True, current_limit=SZ_1G)
    mb.memblock_add(0, SZ_16M)
    mb.memblock_reserve(SZ_1M, SZ_1M)
    snap = mb.copy()
    assert snap == mb
    mb.memblock_reserve(SZ_4M, SZ_1M)
    mb.memblock_remove(0, SZ_1M)
    mb.bottom_up = False
    assert spans(snap.memory) == [(0, SZ_16M)]
    assert spans(snap.reserved) == [(SZ_1M, SZ_1M)]
    assert snap.bottom_up and snap.kho_scratch_only and snap.current_limit == SZ_1G
    assert snap != mb


# --- allocation -----------------------------------------------------------------------------


def one_bank(size: int = SZ_16M, base: int = SZ_1M) -> Memblock:
    mb = Memblock()
    mb.memblock_add(base, size)
    return mb


def test_alloc_top_down_takes_the_highest_fit() -> None:
    mb = one_bank()
    end = SZ_1M + SZ_16M
    assert mb.memblock_phys_alloc(SZ_4K, SZ_4K) == end - SZ_4K
    assert mb.memblock_phys_alloc(SZ_8K, SZ_4K) == end - 3 * SZ_4K
    # consecutive allocations merge into one RSRV_KERN entry
    assert rows(mb.reserved) == [(end - 3 * SZ_4K, 3 * SZ_4K, MEMBLOCK_RSRV_KERN, NUMA_NO_NODE)]


def test_alloc_top_down_skips_a_hole_too_small() -> None:
    mb = one_bank()
    end = SZ_1M + SZ_16M
    mb.memblock_reserve(end - SZ_64K, SZ_64K)
    mb.memblock_reserve(end - SZ_1M, SZ_1M - 2 * SZ_64K)  # leaves a 64 KiB hole below the top
    assert mb.memblock_phys_alloc(SZ_128K, SZ_4K) == end - SZ_1M - SZ_128K
    assert mb.memblock_phys_alloc(SZ_64K, SZ_4K) == end - 2 * SZ_64K


def test_alloc_bottom_up_takes_the_lowest_fit() -> None:
    mb = one_bank()
    mb.bottom_up = True
    mb.memblock_reserve(SZ_1M, 0x1800)
    assert mb.memblock_phys_alloc(SZ_4K, SZ_4K) == SZ_1M + 0x2000
    # a small block fits in the 2 KiB left below the page just taken
    assert mb.memblock_phys_alloc(0x100, SMP_CACHE_BYTES) == SZ_1M + 0x1800


def test_alloc_alignment_power_of_two() -> None:
    mb = one_bank(size=0x123000, base=SZ_1M)
    end = SZ_1M + 0x123000
    assert mb.memblock_phys_alloc(SZ_4K, SZ_64K) == round_down(end - SZ_4K, SZ_64K) == 0x220000
    mb.bottom_up = True
    mb.memblock_reserve(SZ_1M, 0x1000)
    assert mb.memblock_phys_alloc(SZ_4K, SZ_64K) == 0x110000


def test_alloc_alignment_not_a_power_of_two_uses_the_mask_formula() -> None:
    """align 0x3000: the kernel masks with ~0x2fff, which is not "a multiple of 12 KiB"."""
    mb = Memblock()
    mb.memblock_add(0, 0x10000)
    found = mb.memblock_phys_alloc(SZ_4K, 0x3000)
    assert found == round_down(0x10000 - SZ_4K, 0x3000) == 0xF000 & ~0x2FFF == 0xD000
    assert 0xF000 % 0x3000 == 0  # a true multiple existed higher up
    mb = Memblock(bottom_up=True)
    mb.memblock_add(0, 0x10000)
    # round_up(0x1000, 0x3000) under the mask formula is 0x1000 itself
    assert mb.memblock_phys_alloc(SZ_4K, 0x3000) == round_up(0x1000, 0x3000) == 0x1000


def test_alloc_align_zero_means_cache_line() -> None:
    mb = Memblock()
    mb.memblock_add(SZ_1M, SZ_1M)
    assert mb.memblock_phys_alloc(100, 0) == round_down(SZ_2M - 100, SMP_CACHE_BYTES)


def test_alloc_respects_start_and_end() -> None:
    mb = one_bank()
    assert mb.memblock_phys_alloc_range(SZ_4K, SZ_4K, SZ_2M, SZ_4M) == SZ_4M - SZ_4K
    mb.bottom_up = True
    assert mb.memblock_phys_alloc_range(SZ_4K, SZ_4K, SZ_2M, SZ_4M) == SZ_2M
    # no room inside the window
    assert mb.memblock_phys_alloc_range(SZ_2M + SZ_4K, SZ_4K, SZ_2M, SZ_4M) == 0
    # a window below RAM
    assert mb.memblock_phys_alloc_range(SZ_4K, SZ_4K, 0, SZ_1M) == 0


def test_alloc_accessible_end_means_current_limit() -> None:
    mb = one_bank()
    mb.memblock_set_current_limit(SZ_8M)
    assert mb.memblock_phys_alloc(SZ_4K, SZ_4K) == SZ_8M - SZ_4K
    assert (
        mb.memblock_phys_alloc_range(SZ_4K, SZ_4K, 0, MEMBLOCK_ALLOC_ANYWHERE)
        == SZ_1M + SZ_16M - SZ_4K
    )
    assert (
        mb.memblock_find_in_range_node(
            SZ_4K, SZ_4K, 0, MEMBLOCK_ALLOC_ACCESSIBLE, NUMA_NO_NODE, MEMBLOCK_NONE
        )
        == SZ_8M - 2 * SZ_4K
    )


def two_nodes() -> Memblock:
    mb = Memblock()
    mb.memblock_add_node(SZ_1M, SZ_1M, 0, MEMBLOCK_NONE)
    mb.memblock_add_node(SZ_2M, SZ_1M, 1, MEMBLOCK_NONE)
    return mb


def test_alloc_on_node_reserves_with_that_node() -> None:
    mb = two_nodes()
    found = mb.memblock_phys_alloc_try_nid(SZ_4K, SZ_4K, 0)
    assert found == SZ_2M - SZ_4K
    assert rows(mb.reserved) == [(found, SZ_4K, MEMBLOCK_RSRV_KERN, 0)]


def test_alloc_exact_node_fails_when_node_full() -> None:
    mb = two_nodes()
    mb.memblock_reserve(SZ_2M, SZ_1M)
    assert mb.memblock_alloc_range_nid(SZ_4K, SZ_4K, 0, MEMBLOCK_ALLOC_ACCESSIBLE, 1, True) == 0
    assert rows(mb.reserved) == [(SZ_2M, SZ_1M, MEMBLOCK_NONE, NUMA_NO_NODE)]


def test_alloc_node_fallback_reserves_without_node() -> None:
    """Fallback to any node goes through memblock_reserve_kern: RSRV_KERN, no node."""
    mb = two_nodes()
    mb.memblock_reserve(SZ_2M, SZ_1M)
    found = mb.memblock_alloc_range_nid(SZ_4K, SZ_4K, 0, MEMBLOCK_ALLOC_ACCESSIBLE, 1, False)
    assert found == SZ_2M - SZ_4K
    assert (found, SZ_4K, MEMBLOCK_RSRV_KERN, NUMA_NO_NODE) in rows(mb.reserved)
    assert mb.memblock_reserved_kern_size(nid=1) == 0


def test_scratch_only_allocates_only_from_kho_scratch() -> None:
    mb = Memblock()
    mb.memblock_add_node(SZ_1M, SZ_64M, 0, MEMBLOCK_NONE)
    mb.memblock_mark_kho_scratch(SZ_8M, SZ_8M)
    mb.kho_scratch_only = True
    assert mb.choose_memblock_flags() == MEMBLOCK_KHO_SCRATCH
    assert mb.memblock_phys_alloc(SZ_1M, SZ_1M) == SZ_16M - SZ_1M
    mb.bottom_up = True
    assert mb.memblock_phys_alloc(SZ_1M, SZ_1M) == SZ_8M
    # no fallback to ordinary memory
    assert mb.memblock_phys_alloc(SZ_8M, SZ_4K) == 0
    assert mb.memblock_phys_alloc_try_nid(SZ_8M, SZ_4K, 0) == 0
    mb.memblock_clear_kho_scratch_only()
    assert mb.choose_memblock_flags() == MEMBLOCK_NONE
    # [1 MiB, 8 MiB) is too small now; the first fit is above the scratch area
    assert mb.memblock_phys_alloc(SZ_8M, SZ_4K) == SZ_16M


def test_alloc_exhaustion_returns_zero() -> None:
    mb = one_bank(size=SZ_64K)
    for _ in range(16):
        assert mb.memblock_phys_alloc(SZ_4K, SZ_4K)
    assert mb.memblock_phys_alloc(SZ_4K, SZ_4K) == 0
    assert mb.memblock_phys_alloc(1, 1) == 0
    assert rows(mb.reserved) == [(SZ_1M, SZ_64K, MEMBLOCK_RSRV_KERN, NUMA_NO_NODE)]


def test_alloc_never_returns_the_first_page() -> None:
    mb = Memblock()
    mb.memblock_add(0, 2 * PAGE_SIZE)
    mb.bottom_up = True
    assert mb.memblock_phys_alloc(PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE
    assert mb.memblock_phys_alloc(PAGE_SIZE, PAGE_SIZE) == 0
    mb = Memblock()
    mb.memblock_add(0, PAGE_SIZE)
    assert mb.memblock_phys_alloc(16, 16) == 0
    assert list(mb.for_each_free_mem_range()) == [(0, PAGE_SIZE, NUMA_NO_NODE)]


def test_alloc_zero_size() -> None:
    """A zero-byte request succeeds, reserves nothing, and returns the (rounded) top of the
    highest free range top-down, or the aligned bottom of the lowest bottom-up."""
    mb = Memblock()
    mb.memblock_add(SZ_1M, SZ_16M + 0x1000)
    assert mb.memblock_phys_alloc(0, SZ_2M) == SZ_16M
    assert mb.memblock_phys_alloc(0, SZ_4K) == SZ_16M + SZ_1M + 0x1000
    assert len(mb.reserved) == 0
    mb.bottom_up = True
    assert mb.memblock_phys_alloc(0, SZ_2M) == SZ_2M
    assert len(mb.reserved) == 0


def test_alloc_zero_size_can_land_between_touching_reservations() -> None:
    mb = Memblock()
    mb.memblock_add(0, SZ_1M)
    mb.memblock_reserve(0x80000, 0x10000)
    mb.memblock_reserve_kern(0x90000, 0x71000)  # leaves [0xf1000, 0x100000) free
    assert mb.memblock_phys_alloc(0, 0x10000) == 0x90000


def test_plain_reserve_next_to_rsrv_kern_allocation_stays_separate() -> None:
    mb = one_bank()
    end = SZ_1M + SZ_16M
    found = mb.memblock_phys_alloc(SZ_4K, SZ_4K)
    mb.memblock_reserve(found - SZ_4K, SZ_4K)
    assert rows(mb.reserved) == [
        (found - SZ_4K, SZ_4K, MEMBLOCK_NONE, NUMA_NO_NODE),
        (end - SZ_4K, SZ_4K, MEMBLOCK_RSRV_KERN, NUMA_NO_NODE),
    ]
    assert mb.memblock_phys_alloc(SZ_4K, SZ_4K) == end - 3 * SZ_4K
    assert len(mb.reserved) == 3
    assert mb.memblock_reserved_kern_size() == 2 * SZ_4K


def test_find_does_not_reserve() -> None:
    mb = one_bank()
    a = mb.memblock_find_in_range_node(SZ_4K, SZ_4K, 0, MEMBLOCK_ALLOC_ANYWHERE, NUMA_NO_NODE, 0)
    b = mb.memblock_find_in_range_node(SZ_4K, SZ_4K, 0, MEMBLOCK_ALLOC_ANYWHERE, NUMA_NO_NODE, 0)
    assert a == b == SZ_1M + SZ_16M - SZ_4K
    assert len(mb.reserved) == 0


# --- memblock_reserved_kern_size ----------------------------------------------------------------


def test_reserved_kern_size_by_node_and_limit() -> None:
    mb = Memblock()
    mb.memblock_reserve_kern(0x100000, 0x10000)  # no node
    mb.memblock_reserve_range(0x200000, 0x20000, 0, MEMBLOCK_RSRV_KERN)
    mb.memblock_reserve_range(0x300000, 0x40000, 1, MEMBLOCK_RSRV_KERN)
    mb.memblock_reserve_range(0x400000, 0x80000, 1, MEMBLOCK_RSRV_KERN | MEMBLOCK_RSRV_NOINIT)
    mb.memblock_reserve(0x500000, 0x100000)  # not RSRV_KERN
    mb.memblock_reserve_range(0x600000, 0x1000, 0, MEMBLOCK_NONE)
    assert mb.memblock_reserved_kern_size() == 0x10000 + 0x20000 + 0x40000 + 0x80000
    assert mb.memblock_reserved_kern_size(PHYS_ADDR_MAX, 0) == 0x20000
    assert mb.memblock_reserved_kern_size(nid=1) == 0xC0000
    assert mb.memblock_reserved_kern_size(nid=2) == 0
    # limit: an entry straddling it is clipped, entries above it stop the walk
    assert mb.memblock_reserved_kern_size(0x310000) == 0x10000 + 0x20000 + 0x10000
    assert mb.memblock_reserved_kern_size(0x310000, 1) == 0x10000
    assert mb.memblock_reserved_kern_size(0x300000) == 0x30000  # base == limit adds nothing
    assert mb.memblock_reserved_kern_size(0xFFFFF) == 0


def test_reserved_kern_size_counts_allocations() -> None:
    mb = two_nodes()
    mb.memblock_phys_alloc_try_nid(0x3000, SZ_4K, 1)
    mb.memblock_phys_alloc(0x5000, SZ_4K)
    # only the node-1 request is tagged; the anywhere allocation carries no node
    assert mb.memblock_reserved_kern_size(nid=1) == 0x3000
    assert mb.memblock_reserved_kern_size() == 0x8000
    mb.memblock_reserve_kern(SZ_1M, 0x1000)
    assert mb.memblock_reserved_kern_size(nid=0) == 0
    assert mb.memblock_reserved_kern_size() == 0x9000


# --- debugfs ------------------------------------------------------------------------------------


def test_debug_show_worked_example() -> None:
    mb = Memblock()
    for i in range(5):
        mb.memblock_reserve(0x100000 * (i + 1), 0x1000)
    mb.memblock_reserve_range(0x23FE00000, 0x1000000, 0, MEMBLOCK_RSRV_KERN)
    text = memblock_debug_show(mb.reserved)
    lines = text.splitlines(keepends=True)
    assert len(lines) == 6
    assert lines[5] == "   5: 0x000000023fe00000..0x0000000240dfffff    0 RSV_KERN\n"
    assert lines[0] == "   0: 0x0000000000100000..0x0000000000100fff    x NONE\n"


def test_debug_show_flag_names() -> None:
    t = MemblockType(
        "reserved",
        [
            MemblockRegion(0x1000, 0x1000, MEMBLOCK_NONE, NUMA_NO_NODE),
            MemblockRegion(0x3000, 0x1000, 0x80, 0),
            MemblockRegion(0x5000, 0x1000, MEMBLOCK_RSRV_NOINIT | MEMBLOCK_RSRV_KERN, 12),
            MemblockRegion(0x7000, 0x1000, MEMBLOCK_KHO_SCRATCH, 1),
            MemblockRegion(0x9000, 0x1000, MEMBLOCK_HOTPLUG | MEMBLOCK_KHO_SCRATCH, 1023),
            MemblockRegion(0xB000, 0x1000, 0x88, 1024),
        ],
    )
    assert memblock_debug_show(t) == (
        "   0: 0x0000000000001000..0x0000000000001fff    x NONE\n"
        "   1: 0x0000000000003000..0x0000000000003fff    0 UNKNOWN\n"
        "   2: 0x0000000000005000..0x0000000000005fff   12 RSV_NIT\n"
        "   3: 0x0000000000007000..0x0000000000007fff    1 KHO_SCRATCH\n"
        "   4: 0x0000000000009000..0x0000000000009fff 1023 HOTPLUG\n"
        "   5: 0x000000000000b000..0x000000000000bfff    x DRV_MNG\n"
    )


def test_debug_show_empty_list_prints_nothing() -> None:
    assert memblock_debug_show(MemblockType("memory")) == ""


def test_debug_show_handover_style_lists() -> None:
    mb = Memblock()
    mb.memblock_add_node(0, SZ_1G, 0, MEMBLOCK_NONE)
    mb.memblock_mark_kho_scratch(SZ_16M, SZ_16M)
    assert memblock_debug_show(mb.memory) == (
        "   0: 0x0000000000000000..0x0000000000ffffff    0 NONE\n"
        "   1: 0x0000000001000000..0x0000000001ffffff    0 KHO_SCRATCH\n"
        "   2: 0x0000000002000000..0x000000003fffffff    0 NONE\n"
    )


# --- property test: the model against a page-map reference ---------------------------------------

Attr = tuple[int, int]  # (flags, nid)

NIDS = (NUMA_NO_NODE, 0, 1, 2)
MEMORY_FLAGS = (MEMBLOCK_NONE, MEMBLOCK_HOTPLUG, MEMBLOCK_KHO_SCRATCH)
RESERVED_FLAGS = (MEMBLOCK_NONE, MEMBLOCK_RSRV_NOINIT, MEMBLOCK_RSRV_KERN, 0x30)


class Reference:
    """Every unit of a small address space with its (flags, nid) in each list, or None.

    Because the model keeps lists minimal, its entries must be exactly the maximal runs of
    equal units here; free ranges are runs of unreserved units inside one memory entry.
    """

    def __init__(self, base: int, unit: int, units: int) -> None:
        self.base = base
        self.unit = unit
        self.units = units
        self.memory: list[Attr | None] = [None] * units
        self.reserved: list[Attr | None] = [None] * units

    def addr(self, u: int) -> int:
        return self.base + u * self.unit

    def fill(self, lst: list[Attr | None], u: int, n: int, attr: Attr) -> None:
        for i in range(u, u + n):
            if lst[i] is None:
                lst[i] = attr

    def cut(self, lst: list[Attr | None], u: int, n: int) -> None:
        lst[u : u + n] = [None] * n

    def retag(self, lst: list[Attr | None], u: int, n: int, set_: int, clear: int, nid: int | None):
        for i in range(u, u + n):
            a = lst[i]
            if a is not None:
                lst[i] = ((a[0] | set_) & ~clear, a[1] if nid is None else nid)

    def runs(self, lst: list[Attr | None], lo: int = 0, hi: int | None = None) -> list[Row]:
        hi = self.units if hi is None else hi
        out: list[Row] = []
        i = lo
        while i < hi:
            a = lst[i]
            if a is None:
                i += 1
                continue
            j = i
            while j < hi and lst[j] == a:
                j += 1
            out.append((self.addr(i), (j - i) * self.unit, a[0], a[1]))
            i = j
        return out

    def free_ranges(self, nid: int, flags: int) -> list[tuple[int, int, int]]:
        out = []
        for base, size, mflags, mnid in self.runs(self.memory):
            if nid >= 0 and nid != mnid:
                continue
            if flags & MEMBLOCK_KHO_SCRATCH and not mflags & MEMBLOCK_KHO_SCRATCH:
                continue
            lo = (base - self.base) // self.unit
            hi = lo + size // self.unit
            i = lo
            while i < hi:
                rsv = self.reserved[i]
                if rsv is not None:
                    # the kernel reports an empty hole where two reserved entries touch
                    prev = self.reserved[i - 1] if i > lo else None
                    if prev is not None and prev != rsv:
                        out.append((self.addr(i), self.addr(i), mnid))
                    i += 1
                    continue
                j = i
                while j < hi and self.reserved[j] is None:
                    j += 1
                out.append((self.addr(i), self.addr(j), mnid))
                i = j
        return out

    def find(self, mb: Memblock, size: int, align: int, start: int, end: int, nid: int) -> int:
        flags = MEMBLOCK_KHO_SCRATCH if mb.kho_scratch_only else MEMBLOCK_NONE
        if end in (0, 1):
            end = mb.current_limit
        start = max(start, PAGE_SIZE)
        end = max(start, end)
        ranges = self.free_ranges(nid, flags)
        for s, e, _ in ranges if mb.bottom_up else reversed(ranges):
            s, e = min(max(s, start), end), min(max(e, start), end)
            if mb.bottom_up:
                cand = round_up(s, align)
                if cand < e and e - cand >= size:
                    return cand
            elif e >= size and round_down(e - size, align) >= s:
                return round_down(e - size, align)
        return 0

    def alloc(
        self, mb: Memblock, size: int, align: int, start: int, end: int, nid: int, exact: bool
    ) -> int:
        align = align or SMP_CACHE_BYTES
        found = self.find(mb, size, align, start, end, nid)
        tag = nid
        if not found and nid >= 0 and not exact:
            found = self.find(mb, size, align, start, end, NUMA_NO_NODE)
            tag = NUMA_NO_NODE
        if found:
            u, rem = divmod(found - self.base, self.unit)
            assert rem == 0 and size % self.unit == 0
            self.fill(self.reserved, u, size // self.unit, (MEMBLOCK_RSRV_KERN, tag))
        return found

    def kern_size(self, limit: int, nid: int) -> int:
        total = 0
        for u, a in enumerate(self.reserved):
            if a is None or not a[0] & MEMBLOCK_RSRV_KERN or (nid >= 0 and a[1] != nid):
                continue
            total += max(0, min(self.unit, limit - self.addr(u)))
        return total

    def is_region_memory(self, u: int, n: int) -> bool:
        first = self.memory[u] if u < self.units else None
        return first is not None and all(self.memory[i] == first for i in range(u, u + n))


class MemblockMachine(RuleBasedStateMachine):
    """Random operations on a small address space, checked unit by unit."""

    BASE = 0
    UNIT = SZ_4K
    UNITS = 256  # 0..1 MiB
    ALIGNS: tuple[int, ...] = (0, SMP_CACHE_BYTES, SZ_4K, 0x2000, 0x3000, 0x5000, SZ_64K)
    SIZES = st.integers(0, 24)

    def __init__(self) -> None:
        super().__init__()
        self.mb = Memblock()
        self.ref = Reference(self.BASE, self.UNIT, self.UNITS)

    def span(self, data: st.DataObject) -> tuple[int, int]:
        u = data.draw(st.integers(0, self.UNITS), label="unit")
        n = data.draw(st.integers(0, self.UNITS - u), label="count")
        return u, n

    def addr(self, u: int) -> int:
        return self.ref.addr(u)

    @rule(data=st.data(), nid=st.sampled_from(NIDS), flags=st.sampled_from(MEMORY_FLAGS))
    def add_node(self, data: st.DataObject, nid: int, flags: int) -> None:
        u, n = self.span(data)
        self.mb.memblock_add_node(self.addr(u), n * self.UNIT, nid, flags)
        self.ref.fill(self.ref.memory, u, n, (flags, nid))

    @rule(data=st.data())
    def add(self, data: st.DataObject) -> None:
        u, n = self.span(data)
        self.mb.memblock_add(self.addr(u), n * self.UNIT)
        self.ref.fill(self.ref.memory, u, n, (MEMBLOCK_NONE, NUMA_NO_NODE))

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        u, n = self.span(data)
        self.mb.memblock_remove(self.addr(u), n * self.UNIT)
        self.ref.cut(self.ref.memory, u, n)

    @rule(data=st.data(), kind=st.sampled_from(["plain", "kern"]))
    def reserve(self, data: st.DataObject, kind: str) -> None:
        u, n = self.span(data)
        if kind == "plain":
            self.mb.memblock_reserve(self.addr(u), n * self.UNIT)
            attr = (MEMBLOCK_NONE, NUMA_NO_NODE)
        else:
            self.mb.memblock_reserve_kern(self.addr(u), n * self.UNIT)
            attr = (MEMBLOCK_RSRV_KERN, NUMA_NO_NODE)
        self.ref.fill(self.ref.reserved, u, n, attr)

    @rule(data=st.data(), nid=st.sampled_from(NIDS), flags=st.sampled_from(RESERVED_FLAGS))
    def reserve_range(self, data: st.DataObject, nid: int, flags: int) -> None:
        u, n = self.span(data)
        self.mb.memblock_reserve_range(self.addr(u), n * self.UNIT, nid, flags)
        self.ref.fill(self.ref.reserved, u, n, (flags, nid))

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        u, n = self.span(data)
        self.mb.memblock_phys_free(self.addr(u), n * self.UNIT)
        self.ref.cut(self.ref.reserved, u, n)

    @rule(data=st.data(), set_=st.booleans())
    def mark_scratch(self, data: st.DataObject, set_: bool) -> None:
        u, n = self.span(data)
        if set_:
            self.mb.memblock_mark_kho_scratch(self.addr(u), n * self.UNIT)
            self.ref.retag(self.ref.memory, u, n, MEMBLOCK_KHO_SCRATCH, 0, None)
        else:
            self.mb.memblock_clear_kho_scratch(self.addr(u), n * self.UNIT)
            self.ref.retag(self.ref.memory, u, n, 0, MEMBLOCK_KHO_SCRATCH, None)

    @rule(data=st.data(), set_=st.booleans())
    def mark_noinit(self, data: st.DataObject, set_: bool) -> None:
        u, n = self.span(data)
        self.mb.memblock_setclr_flag(
            self.mb.reserved, self.addr(u), n * self.UNIT, set_, MEMBLOCK_RSRV_NOINIT
        )
        if set_:
            self.ref.retag(self.ref.reserved, u, n, MEMBLOCK_RSRV_NOINIT, 0, None)
        else:
            self.ref.retag(self.ref.reserved, u, n, 0, MEMBLOCK_RSRV_NOINIT, None)

    @rule(data=st.data(), nid=st.sampled_from(NIDS), on_memory=st.booleans())
    def set_node(self, data: st.DataObject, nid: int, on_memory: bool) -> None:
        u, n = self.span(data)
        type_ = self.mb.memory if on_memory else self.mb.reserved
        self.mb.memblock_set_node(self.addr(u), n * self.UNIT, type_, nid)
        self.ref.retag(self.ref.memory if on_memory else self.ref.reserved, u, n, 0, 0, nid)

    @rule()
    def memmap_init_reserved_pages(self) -> None:
        self.mb.memmap_init_reserved_pages()
        for i, m in enumerate(self.ref.memory):
            r = self.ref.reserved[i]
            if m is not None and r is not None:
                self.ref.reserved[i] = (r[0], m[1])

    @rule(bottom_up=st.booleans(), scratch_only=st.booleans())
    def modes(self, bottom_up: bool, scratch_only: bool) -> None:
        self.mb.memblock_set_bottom_up(bottom_up)
        self.mb.kho_scratch_only = scratch_only

    @rule(data=st.data())
    def current_limit(self, data: st.DataObject) -> None:
        u = data.draw(st.integers(0, self.UNITS) | st.just(-1), label="limit unit")
        self.mb.memblock_set_current_limit(MEMBLOCK_ALLOC_ANYWHERE if u < 0 else self.addr(u))

    @rule(
        data=st.data(),
        nid=st.sampled_from(NIDS),
        exact=st.booleans(),
        window=st.booleans(),
    )
    def alloc(self, data: st.DataObject, nid: int, exact: bool, window: bool) -> None:
        size = data.draw(self.SIZES, label="size units") * self.UNIT
        align = data.draw(st.sampled_from(self.ALIGNS), label="align")
        start, end = 0, MEMBLOCK_ALLOC_ACCESSIBLE
        if window:
            lo, n = self.span(data)
            start, end = self.addr(lo), self.addr(lo + n)
        expected = self.ref.alloc(self.mb, size, align, start, end, nid, exact)
        got = self.mb.memblock_alloc_range_nid(size, align, start, end, nid, exact)
        assert got == expected
        event("alloc succeeded" if got else "alloc failed")

    @rule(data=st.data(), nid=st.sampled_from(NIDS))
    def queries(self, data: st.DataObject, nid: int) -> None:
        u, n = self.span(data)
        base, size = self.addr(u), n * self.UNIT
        assert self.mb.memblock_is_region_memory(base, size) == self.ref.is_region_memory(u, n)
        if n:
            assert self.mb.memblock_is_region_reserved(base, size) == any(
                a is not None for a in self.ref.reserved[u : u + n]
            )
        limit = data.draw(st.integers(0, self.addr(self.UNITS) + 1) | st.just(PHYS_ADDR_MAX))
        assert self.mb.memblock_reserved_kern_size(limit, nid) == self.ref.kern_size(limit, nid)
        flags = data.draw(st.sampled_from([MEMBLOCK_NONE, MEMBLOCK_KHO_SCRATCH]))
        forward = list(self.mb.for_each_free_mem_range(nid, flags))
        reverse = list(self.mb.for_each_free_mem_range_reverse(nid, flags))
        assert forward == self.ref.free_ranges(nid, flags)
        if any(s == e for s, e, _ in forward):
            event("empty free range seen")
        assert reverse == forward[::-1]

    @rule()
    def copy_round_trip(self) -> None:
        snap = self.mb.copy()
        assert snap == self.mb
        before = rows(self.mb.memory)
        snap.memblock_remove(0, PHYS_ADDR_MAX)
        snap.memblock_reserve(0, SZ_1G)
        assert rows(self.mb.memory) == before

    @invariant()
    def lists_match_reference(self) -> None:
        self.mb.check_invariants()
        assert rows(self.mb.memory) == self.ref.runs(self.ref.memory)
        assert rows(self.mb.reserved) == self.ref.runs(self.ref.reserved)
        assert self.mb.memory.total_size == sum(self.UNIT for a in self.ref.memory if a is not None)


class ByteMemblockMachine(MemblockMachine):
    """The same at byte granularity, above page 0 so that allocations can succeed."""

    BASE = 0x10000
    UNIT = 1
    UNITS = 96
    ALIGNS = (0, 1, 2, 3, 4, 6, 8, 16, 24)
    SIZES = st.integers(0, 12)


_settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMemblockPages = MemblockMachine.TestCase
TestMemblockPages.settings = _settings
TestMemblockBytes = ByteMemblockMachine.TestCase
TestMemblockBytes.settings = _settings


def test_reserve_noinit_many_equals_one_by_one() -> None:
    """The bulk form used by KHO deserialization leaves the same list as the calls
    ``memblock_reserve`` + ``memblock_reserved_mark_noinit`` one range at a time."""
    import random

    from kho_fs.model.memblock import MEMBLOCK_RSRV_KERN

    rng = random.Random(7)
    for _ in range(300):
        one, many = Memblock(), Memblock()
        for _ in range(rng.randrange(6)):
            b, sz = rng.randrange(0, 1 << 20, 4096), rng.randrange(1, 1 << 16)
            flags = rng.choice([0, MEMBLOCK_RSRV_KERN])
            nid = rng.choice([-1, 0, 1])
            for mb in (one, many):
                mb.memblock_reserve_range(b, sz, nid, flags)
        ranges = [
            (rng.randrange(0, 1 << 20, 4096), 4096 << rng.randrange(4))
            for _ in range(rng.randrange(1, 40))
        ]
        for b, sz in ranges:
            one.memblock_reserve(b, sz)
            one.memblock_reserved_mark_noinit(b, sz)
        many.memblock_reserve_noinit_many(ranges)
        assert [(r.base, r.size, r.flags, r.nid) for r in many.reserved] == [
            (r.base, r.size, r.flags, r.nid) for r in one.reserved
        ]
