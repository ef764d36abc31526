"""Tests of the mainline oracles against every concrete vector of kho-mainline.md.

These check the oracles, not the model: each test pins an oracle to a fact stated by the spec
(section numbers "§x.y") or read from the kernel source (cited where used), so that tests of
the model built on the oracles start from something verified.
"""

from __future__ import annotations

import errno
import struct
import subprocess
from pathlib import Path

import libfdt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from .mainline import (
    BITMAP_BYTES,
    CHUNK_MAX_ENTRIES,
    DEBUGFS_FILES,
    ERAS,
    ERAS_WITH_FINALIZE,
    FINALIZE_ERRNOS,
    FINALIZE_READ,
    KHO_TEST_MAGIC,
    KHO_TEST_MAX_MEM,
    MALFORMED_KHO_SCRATCH,
    MEMBLOCK_REFERENCE,
    OUT_CREATION_ORDER,
    PAGE_SIZE,
    RELEASES,
    ROOT_COMPATIBLE,
    DebugfsEntry,
    apply_kho_scratch,
    blocks_to_ranges,
    bzimage_release,
    debugfs_attr_value,
    debugfs_expected,
    decode_preserved_memory_map,
    decode_root_fdt,
    encode_preserved_memory_map,
    finalize_write_oracle,
    inet_csum32,
    kho_scratch_setting,
    kho_test_csum,
    kho_test_folios_info_6_16,
    kho_test_sub_fdt,
    kho_test_sub_fdt_check,
    kho_vmalloc_descriptor,
    linux_version_prefix,
    make_bzimage,
    memblock_sub_fdt,
    memblock_sub_fdt_page,
    memparse,
    parse_bzimage_version,
    parse_kho_scratch_oracle,
    preserved_map_layout,
    release_for_version,
    reserve_mem_param_line,
    reserve_mem_param_size,
    root_fdt,
    root_fdt_6_19,
    root_fdt_6_19_page,
    root_fdt_page,
    scratch_file_text,
    scratch_lines_expected,
    scratch_sizes,
    split_range_to_blocks,
    stringlist_contains,
    walk_chunks,
)

MiB = 1 << 20
GiB = 1 << 30



def header(blob: bytes) -> dict[str, int]:
    """The ten big-endian u32 fields of an FDT header."""
    names = (
        "magic",
        "totalsize",
        "off_dt_struct",
        "off_dt_strings",
        "off_mem_rsvmap",
        "version",
        "last_comp_version",
        "boot_cpuid_phys",
        "size_dt_strings",
        "size_dt_struct",
    )
    return dict(zip(names, struct.unpack(">10I", blob[:40]), strict=True))


def strings_block(blob: bytes) -> bytes:
    h = header(blob)
    return blob[h["off_dt_strings"] : h["off_dt_strings"] + h["size_dt_strings"]]


class FakeRam:
    """Sparse byte-addressed memory with a bump page allocator, for the map codec."""

    def __init__(self, base: int = 0x1_0000_0000) -> None:
        self.pages: dict[int, bytearray] = {}
        self.next_page = base
        self.allocated: list[int] = []

    def alloc_page(self) -> int:
        addr = self.next_page
        self.next_page += PAGE_SIZE
        self.allocated.append(addr)
        return addr

    def write(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            base, off = addr & ~(PAGE_SIZE - 1), addr % PAGE_SIZE
            take = min(len(data) - pos, PAGE_SIZE - off)
            page = self.pages.setdefault(base, bytearray(PAGE_SIZE))
            page[off : off + take] = data[pos : pos + take]
            addr, pos = addr + take, pos + take

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while size:
            base, off = addr & ~(PAGE_SIZE - 1), addr % PAGE_SIZE
            take = min(size, PAGE_SIZE - off)
            out += self.pages.get(base, bytes(PAGE_SIZE))[off : off + take]
            addr, size = addr + take, size - take
        return bytes(out)


# ---------------------------------------------------------------------------------------------
# §7.1 memblock sub-FDT
# ---------------------------------------------------------------------------------------------


def test_memblock_sub_fdt_matches_reference_bytes() -> None:
    blob = memblock_sub_fdt([("oops", 0x23FE00000, 16 * MiB)])
    assert len(MEMBLOCK_REFERENCE) == 210
    assert blob == MEMBLOCK_REFERENCE
    h = header(blob)
    assert h["totalsize"] == 210 and h["off_mem_rsvmap"] == 0x30
    assert strings_block(blob) == b"size\0start\0compatible\0"


def test_memblock_sub_fdt_page_keeps_stale_strings_at_page_end() -> None:
    page = memblock_sub_fdt_page([("oops", 0x23FE00000, 16 * MiB)])
    assert len(page) == PAGE_SIZE
    assert page[:210] == MEMBLOCK_REFERENCE
    tail = b"size\0start\0compatible\0"
    assert page.endswith(tail)
    assert not any(page[210 : PAGE_SIZE - len(tail)])


def test_memblock_sub_fdt_several_regions_in_table_order() -> None:
    regions = [("trace", 0x1_0000_0000, 64 * MiB), ("oops", 0x23FE00000, 16 * MiB)]
    fdt = libfdt.Fdt(memblock_sub_fdt(regions))
    assert fdt.getprop(0, "compatible") == b"memblock-v1\0"
    names = []
    node = fdt.first_subnode(0)
    while node >= 0:
        names.append(fdt.get_name(node))
        assert fdt.getprop(node, "compatible") == b"reserve-mem-v1\0"
        node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    assert names == ["trace", "oops"]
    trace = fdt.path_offset("/trace")
    assert struct.unpack("<Q", fdt.getprop(trace, "start"))[0] == 0x1_0000_0000
    assert struct.unpack("<Q", fdt.getprop(trace, "size"))[0] == 64 * MiB


# ---------------------------------------------------------------------------------------------
# §5.1 root FDT
# ---------------------------------------------------------------------------------------------


def test_root_fdt_sequential_layout() -> None:
    blob = root_fdt("kho-v1", 0x12345000, [("memblock", 0x1000), ("kho_test", 0x200000)])
    fdt = libfdt.Fdt(blob)
    assert fdt.getprop(0, "compatible") == b"kho-v1\0"  # 7 bytes, with the NUL
    assert fdt.getprop(0, "preserved-memory-map") == struct.pack("<Q", 0x12345000)
    assert decode_root_fdt(blob)["children"] == [("memblock", 0x1000), ("kho_test", 0x200000)]
    assert strings_block(blob) == b"fdt\0preserved-memory-map\0compatible\0"
    assert header(blob)["totalsize"] == len(blob) < PAGE_SIZE
    # the root's properties precede every child (§2.4 step 1)
    assert fdt.first_property_offset(0) < fdt.first_subnode(0)
    assert len(root_fdt_page("kho-v1", 0, [])) == PAGE_SIZE


def test_root_fdt_6_19_lists_children_newest_first_and_differs_from_sequential() -> None:
    added = [("memblock", 0x1000), ("kho_test", 0x200000), ("LUO", 0x300000)]
    blob = root_fdt_6_19("kho-v1", 0xABC000, added)
    decoded = decode_root_fdt(blob)
    assert decoded["children"] == list(reversed(added))
    assert decoded["compatible"] == ["kho-v1"]
    assert decoded["preserved_memory_map"] == 0xABC000
    # Same tree, different bytes: strings appended by the read-write calls, and fdt_pack
    # moves the reservation block to 0x28.
    sequential = root_fdt("kho-v1", 0xABC000, list(reversed(added)))
    assert blob != sequential
    assert strings_block(blob) == b"preserved-memory-map\0compatible\0fdt\0"
    assert header(blob)["off_mem_rsvmap"] == 0x28
    assert header(sequential)["off_mem_rsvmap"] == 0x30
    assert len(blob) == len(sequential) - 8


def test_root_fdt_6_19_initial_tree_is_the_sequential_one() -> None:
    # kho_out_fdt_setup uses the sequential writer; out/fdt keeps this first size (§2.1).
    initial = root_fdt_6_19("kho-v1", 0, [])
    assert initial == root_fdt("kho-v1", 0, [])
    assert len(initial) == 152
    assert struct.unpack("<Q", libfdt.Fdt(initial).getprop(0, "preserved-memory-map"))[0] == 0


def test_root_fdt_6_19_map_update_is_in_place() -> None:
    before = root_fdt_6_19("kho-v1", 0, [("memblock", 0x1000)])
    after = root_fdt_6_19("kho-v1", 0xFEDC_B000, [("memblock", 0x1000)])
    assert len(before) == len(after)
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff and max(diff) - min(diff) < 8
    assert len(root_fdt_6_19_page("kho-v1", 0, [("memblock", 0x1000)])) == PAGE_SIZE


def test_root_fdt_6_19_duplicate_name_is_eexist() -> None:
    with pytest.raises(OSError) as info:
        root_fdt_6_19("kho-v1", 0, [("memblock", 0x1000), ("memblock", 0x2000)])
    assert info.value.errno == errno.EEXIST


def test_root_fdts_parse_with_dtc(tmp_path: Path) -> None:
    for name, blob in {
        "seq": root_fdt("kho-v1", 0x1000, [("memblock", 0x2000)]),
        "rw": root_fdt_6_19("kho-v1", 0x1000, [("memblock", 0x2000), ("kho_test", 0x3000)]),
        "memblock": MEMBLOCK_REFERENCE,
    }.items():
        path = tmp_path / f"{name}.dtb"
        path.write_bytes(blob)
        result = subprocess.run(
            ["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True, text=True, check=True
        )
        assert "compatible" in result.stdout


def test_root_compatible_by_era() -> None:
    assert {ROOT_COMPATIBLE[e] for e in ERAS_WITH_FINALIZE} == {"kho-v1"}
    assert ROOT_COMPATIBLE["stateless"] == "kho-v2"


def test_stringlist_contains_is_exact() -> None:
    assert stringlist_contains(b"kho-v1\0", "kho-v1")
    assert stringlist_contains(b"foo\0kho-v1\0", "kho-v1")
    assert not stringlist_contains(b"kho-v10\0", "kho-v1")
    assert not stringlist_contains(b"kho-v1", "kho-v1")  # unterminated


# ---------------------------------------------------------------------------------------------
# §6 preserved-memory map
# ---------------------------------------------------------------------------------------------


def test_split_range_examples() -> None:
    # pfns 1..7: 1 (order 0), 2-3 (order 1), 4-7 (order 2)
    assert split_range_to_blocks(0x1000, 0x7000) == [(0x1000, 0), (0x2000, 1), (0x4000, 2)]
    # a 16 MiB region at 0x23fe00000 (2 MiB aligned): orders 9, 12 (16 MiB would need
    # 16 MiB alignment; 0x23fe00000 is 2 MiB aligned only)
    blocks = split_range_to_blocks(0x23FE00000, 16 * MiB)
    assert blocks[0] == (0x23FE00000, 9)
    assert blocks_to_ranges(blocks) == [(0x23FE00000, 16 * MiB)]
    assert split_range_to_blocks(0x4000_0000, 0) == []
    with pytest.raises(ValueError):
        split_range_to_blocks(0x1000, 0x1800)
    with pytest.raises(ValueError):
        split_range_to_blocks(0x1800, 0x1000)


@given(st.integers(1, 1 << 30), st.integers(0, 1 << 20))
def test_split_range_blocks_are_maximal_and_exact(start_pfn: int, pages: int) -> None:
    start, size = start_pfn * PAGE_SIZE, pages * PAGE_SIZE
    blocks = split_range_to_blocks(start, size)
    pos = start
    for phys, order in blocks:
        assert phys == pos
        block = PAGE_SIZE << order
        assert phys % block == 0
        # maximal: order + 1 is either misaligned or runs past the end
        assert phys % (block * 2) != 0 or phys + block * 2 > start + size
        pos += block
    assert pos == start + size


def test_decoder_on_a_hand_made_chunk() -> None:
    ram = FakeRam()
    chunk, bitmap = 0x5000, 0x9000
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<QII", page, 0, 0, 2, 1)  # last chunk, order 2, one entry
    struct.pack_into("<QQ", page, 16, 0x4000_0000, bitmap)
    ram.write(chunk, bytes(page))
    bits = bytearray(512)
    bits[0] = 0b0000_0001  # bit 0
    bits[1] = 0b0000_0010  # bit 9
    bits[511] = 0x80  # bit 4095, the last one
    ram.write(bitmap, bytes(bits))
    order_bytes = PAGE_SIZE << 2
    assert decode_preserved_memory_map(ram.read, chunk, 512) == [
        (0x4000_0000, 2),
        (0x4000_0000 + 9 * order_bytes, 2),
        (0x4000_0000 + 4095 * order_bytes, 2),
    ]


def _blocks_strategy() -> st.SearchStrategy[set[tuple[int, int]]]:
    block = st.tuples(st.integers(0, 11), st.integers(0, (1 << 30) - 1)).map(
        lambda t: ((t[1] >> t[0]) << (t[0] + 12), t[0])
    )
    return st.sets(block, max_size=60)


@pytest.mark.parametrize("bitmap_bytes", [512, 4096])
@settings(max_examples=60, deadline=None)
@given(blocks=_blocks_strategy())
def test_encode_decode_round_trip_mixed_orders(
    bitmap_bytes: int, blocks: set[tuple[int, int]]
) -> None:
    ram = FakeRam()
    first = encode_preserved_memory_map(blocks, bitmap_bytes, ram.alloc_page, ram.write)
    assert (first == 0) == (not blocks)
    assert decode_preserved_memory_map(ram.read, first, bitmap_bytes) == sorted(blocks)
    chunks = walk_chunks(ram.read, first)
    orders = [c.order for c in chunks]
    assert orders == sorted(orders)
    assert {c.order for c in chunks} == {o for _, o in blocks}
    for chunk in chunks:
        assert 1 <= len(chunk.entries) <= CHUNK_MAX_ENTRIES
        starts = [s for s, _ in chunk.entries]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        span = (bitmap_bytes * 8) << (chunk.order + 12)
        assert all(s % span == 0 for s in starts)


@settings(max_examples=40, deadline=None)
@given(
    ranges=st.lists(
        st.tuples(st.integers(1, 1 << 24), st.integers(1, 5000)), min_size=1, max_size=8
    ),
    bitmap_bytes=st.sampled_from([512, 4096]),
)
def test_round_trip_of_non_power_of_two_ranges(
    ranges: list[tuple[int, int]], bitmap_bytes: int
) -> None:
    blocks: set[tuple[int, int]] = set()
    covered: list[tuple[int, int]] = []
    for start_pfn, pages in ranges:
        covered.append((start_pfn * PAGE_SIZE, pages * PAGE_SIZE))
        blocks.update(split_range_to_blocks(start_pfn * PAGE_SIZE, pages * PAGE_SIZE))
    ram = FakeRam(base=1 << 40)  # far above every range
    first = encode_preserved_memory_map(blocks, bitmap_bytes, ram.alloc_page, ram.write)
    decoded = decode_preserved_memory_map(ram.read, first, bitmap_bytes)
    merged: list[tuple[int, int]] = []  # the union of the input ranges, computed directly
    for start, size in sorted(covered):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            last_start, last_size = merged[-1]
            merged[-1] = (last_start, max(last_size, start + size - last_start))
        else:
            merged.append((start, size))
    assert blocks_to_ranges(decoded) == merged


def test_chunk_overflow_continues_in_a_new_chunk_of_the_same_order() -> None:
    span0 = (4096 * 8) << 12  # order-0 coverage of one 4096-byte bitmap: 128 MiB
    blocks = [(n * span0, 0) for n in range(300)] + [(0x40_0000_0000, 3)]
    ram = FakeRam(base=1 << 45)
    first = encode_preserved_memory_map(blocks, 4096, ram.alloc_page, ram.write)
    chunks = walk_chunks(ram.read, first)
    assert [(c.order, len(c.entries)) for c in chunks] == [(0, 255), (0, 45), (3, 1)]
    assert [c.next for c in chunks] == [chunks[1].addr, chunks[2].addr, 0]
    assert [s for c in chunks[:2] for s, _ in c.entries] == [n * span0 for n in range(300)]
    assert decode_preserved_memory_map(ram.read, first, 4096) == sorted(blocks)


@pytest.mark.parametrize(("count", "shape"), [(255, [255]), (256, [255, 1]), (510, [255, 255])])
def test_chunk_boundaries(count: int, shape: list[int]) -> None:
    span0 = (512 * 8) << 12
    ram = FakeRam(base=1 << 45)
    first = encode_preserved_memory_map(
        [(n * span0, 0) for n in range(count)], 512, ram.alloc_page, ram.write
    )
    assert [len(c.entries) for c in walk_chunks(ram.read, first)] == shape


def test_each_order_starts_a_new_chunk_and_chunk_pages_are_whole() -> None:
    ram = FakeRam()
    first = encode_preserved_memory_map([(0, 0), (0x200000, 9)], 4096, ram.alloc_page, ram.write)
    chunks = walk_chunks(ram.read, first)
    assert [(c.order, len(c.entries)) for c in chunks] == [(0, 1), (9, 1)]
    page = ram.read(chunks[0].addr, PAGE_SIZE)
    assert not any(page[32:])  # unused entries are zero


def test_512_byte_bitmaps_are_packed_and_4096_byte_ones_are_pages() -> None:
    span = (512 * 8) << 12
    ram = FakeRam()
    first = encode_preserved_memory_map(
        [(n * span, 0) for n in range(10)], 512, ram.alloc_page, ram.write
    )
    addrs = [a for _, a in walk_chunks(ram.read, first)[0].entries]
    assert addrs[1] - addrs[0] == 512 and len({a // PAGE_SIZE for a in addrs}) == 2
    ram = FakeRam()
    first = encode_preserved_memory_map([(0, 0), (span * 8, 0)], 4096, ram.alloc_page, ram.write)
    assert all(a % PAGE_SIZE == 0 for _, a in walk_chunks(ram.read, first)[0].entries)


def test_layout_phys_start_formula() -> None:
    # entry start = (bitmap number × B) << (order + 12), B = 8 × bitmap bytes (§6.2)
    layout = preserved_map_layout([(0x3_0000_0000, 2)], 512)
    ((order, [(start, bitmap)]),) = layout
    pfn_high = (0x3_0000_0000 >> 12) >> 2
    number, bit = divmod(pfn_high, 4096)
    assert order == 2 and start == (number * 4096) << 14
    assert int.from_bytes(bitmap, "little") == 1 << bit


def test_empty_map() -> None:
    ram = FakeRam()
    assert encode_preserved_memory_map([], 4096, ram.alloc_page, ram.write) == 0
    assert not ram.allocated
    assert decode_preserved_memory_map(ram.read, 0, 4096) == []


def test_decoder_rejects_loops_and_impossible_counts() -> None:
    ram = FakeRam()
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<QII", page, 0, 0x5000, 0, 0)  # points to itself
    ram.write(0x5000, bytes(page))
    with pytest.raises(ValueError, match="loops"):
        decode_preserved_memory_map(ram.read, 0x5000, 4096)
    struct.pack_into("<QII", page, 0, 0x7000, 0, 0)
    ram.write(0x6000, bytes(page))
    struct.pack_into("<QII", page, 0, 0x6000, 0, 0)
    ram.write(0x7000, bytes(page))
    with pytest.raises(ValueError, match="loops"):
        decode_preserved_memory_map(ram.read, 0x6000, 4096)
    struct.pack_into("<QII", page, 0, 0, 0, 256)
    ram.write(0x8000, bytes(page))
    with pytest.raises(ValueError, match="256 entries"):
        decode_preserved_memory_map(ram.read, 0x8000, 4096)


def test_empty_chunks_and_empty_bitmaps_decode_to_nothing() -> None:
    # The kernel can emit an order whose bitmaps were all cleared by unpreserve.
    ram = FakeRam()
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<QII", page, 0, 0x6000, 0, 0)
    ram.write(0x5000, bytes(page))
    struct.pack_into("<QII", page, 0, 0, 1, 1)
    struct.pack_into("<QQ", page, 16, 0, 0x9000)
    ram.write(0x6000, bytes(page))
    assert decode_preserved_memory_map(ram.read, 0x5000, 4096) == []


def test_encoder_rejects_bad_input() -> None:
    ram = FakeRam()
    with pytest.raises(ValueError, match="aligned"):
        encode_preserved_memory_map([(0x1000, 1)], 4096, ram.alloc_page, ram.write)
    with pytest.raises(ValueError, match="unusable"):
        encode_preserved_memory_map([(0, 0)], 4096, lambda: 0x1234, ram.write)


def test_bitmap_size_mismatch_misparses_silently() -> None:
    # §13: 6.16/6.17 (512) and 6.18 (4096) disagree without any compatible change.
    assert BITMAP_BYTES["6.16"] == BITMAP_BYTES["6.16-fix"] == 512
    assert BITMAP_BYTES["6.18"] == BITMAP_BYTES["6.19"] == 4096
    blocks = [(0x1000_0000 + n * PAGE_SIZE, 0) for n in range(5)] + [(0x5000_0000, 0)]
    ram = FakeRam()
    first = encode_preserved_memory_map(blocks, 512, ram.alloc_page, ram.write)
    misread = decode_preserved_memory_map(ram.read, first, 4096)
    assert misread != sorted(blocks)


def test_blocks_to_ranges_merges_adjacent_and_overlapping() -> None:
    assert blocks_to_ranges([(0x2000, 1), (0x1000, 0), (0x8000, 0)]) == [
        (0x1000, 0x3000),
        (0x8000, 0x1000),
    ]
    assert blocks_to_ranges([(0, 2), (0x1000, 0)]) == [(0, 0x4000)]
    assert blocks_to_ranges([]) == []


# ---------------------------------------------------------------------------------------------
# §10 test_kho sub-FDT and checksum
# ---------------------------------------------------------------------------------------------


def test_kho_test_sub_fdt_6_16_layout_round_trip() -> None:
    folios = [(0x1_0000_0000, 3), (0x1_0080_0000, 10), (0x2000_0000, 0)]
    blob = kho_test_sub_fdt(3, kho_test_folios_info_6_16(folios), 0xDEADBEEF)
    fdt = libfdt.Fdt(blob)
    assert fdt.getprop(0, "compatible") == b"kho-test-v1\0"
    assert fdt.getprop(0, "magic") == bytes.fromhex("214f484b")
    assert strings_block(blob) == b"csum\0folios_info\0nr_folios\0magic\0compatible\0"
    result = kho_test_sub_fdt_check(blob, "6.16")
    assert result["valid"], result["problems"]
    assert result["magic"] == KHO_TEST_MAGIC
    assert result["nr_folios"] == 3 and result["csum"] == 0xDEADBEEF
    assert result["layout"] == "array" and result["folios"] == folios
    assert kho_test_sub_fdt_check(blob)["folios"] == folios  # inferred


def test_kho_test_sub_fdt_6_18_layout_round_trip() -> None:
    desc = kho_vmalloc_descriptor(0x7000_0000, 1, 0x1, 0)
    assert len(desc) == 16
    blob = kho_test_sub_fdt(700, desc, 0x12345678)
    result = kho_test_sub_fdt_check(blob, "6.18")
    assert result["valid"], result["problems"]
    assert result["vmalloc"] == {"first": 0x7000_0000, "total_pages": 1, "flags": 1, "order": 0}
    # the same FDT read by a 6.16 kernel fails the length check (§13)
    old = kho_test_sub_fdt_check(blob, "6.16")
    assert not old["valid"] and "expected 5600" in old["problems"][0]


def test_kho_test_sub_fdt_two_folios_is_ambiguous_without_era() -> None:
    blob = kho_test_sub_fdt(2, kho_test_folios_info_6_16([(0x1000, 0), (0x2000, 0)]), 1)
    with pytest.raises(ValueError, match="both"):
        kho_test_sub_fdt_check(blob)
    assert kho_test_sub_fdt_check(blob, "6.16-fix")["layout"] == "array"
    assert kho_test_sub_fdt_check(blob, "6.19")["layout"] == "vmalloc"


def test_kho_test_sub_fdt_check_reports_problems() -> None:
    assert not kho_test_sub_fdt_check(b"\0" * 64)["valid"]
    blob = bytearray(kho_test_sub_fdt(1, kho_test_folios_info_6_16([(0x1000, 0)]), 0))
    blob[blob.index(bytes.fromhex("214f484b"))] = 0x22
    result = kho_test_sub_fdt_check(bytes(blob), "6.16")
    assert result["problems"] == ["wrong magic 0x4b484f22"]


def test_kho_test_max_mem_default() -> None:
    max_mem = KHO_TEST_MAX_MEM  # 2 × (4096 << 10)
    assert max_mem == 8 * MiB


def csum_partial_x86_64_reference(data: bytes, csum: int) -> int:
    """Literal transliteration of arch/x86/lib/csum-partial_64.c (newest), register by register."""
    mask = (1 << 64) - 1

    def adc_chain(acc: int, words: list[int]) -> tuple[int, int]:
        carry = 0
        for word in words:
            total = acc + word + carry
            acc, carry = total & mask, total >> 64
        return acc, carry

    def words(buf: bytes) -> list[int]:
        return list(struct.unpack(f"<{len(buf) // 8}Q", buf))

    temp64, pos, length = csum, 0, len(data)
    if length == 40:
        temp64, carry = adc_chain(temp64, words(data))
        temp64 = (temp64 + carry) & mask
    else:
        if length >= 64:
            tmp_accum, tmp_carries = 0, 0
            while length >= 64:  # "subl $64, len ... jge 1b"
                block = words(data[pos : pos + 64])
                temp64, carry = adc_chain(temp64, block[:4])
                tmp_carries += carry
                tmp_accum, carry = adc_chain(tmp_accum, block[4:])
                tmp_carries += carry
                pos += 64
                length -= 64
            temp64, carry = adc_chain(temp64, [tmp_accum])
            total = temp64 + tmp_carries + carry
            temp64, carry = total & mask, total >> 64
            temp64 = (temp64 + carry) & mask
        for step in (32, 16, 8):
            if length & step:
                temp64, carry = adc_chain(temp64, words(data[pos : pos + step]))
                temp64 = (temp64 + carry) & mask
                pos += step
        if length & 7:
            trail = int.from_bytes(data[pos : pos + (length & 7)], "little")
            temp64, carry = adc_chain(temp64, [trail])
            temp64 = (temp64 + carry) & mask
    rotated = ((temp64 >> 32) | (temp64 << 32)) & mask
    return ((temp64 + rotated) & mask) >> 32


@settings(max_examples=300)
@given(st.binary(max_size=600), st.integers(0, 0xFFFFFFFF))
@example(b"\xff" * 40, 0xFFFFFFFF)  # the len == 40 fast path
@example(bytes(range(256)) * 2 + b"\x01\x02\x03", 12345)  # 64-byte loop, then 32/16/8/7
@example(b"\xff" * 4096, 0)
def test_inet_csum32_matches_the_x86_64_code(data: bytes, csum: int) -> None:
    assert inet_csum32(data, csum) == csum_partial_x86_64_reference(data, csum)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\0" * 4096, 0),
        (b"\xff" * 8, 0xFFFFFFFF),
        (b"\x01" + b"\0" * 7, 1),
        (b"\0" * 4 + b"\x01" + b"\0" * 3, 1),  # the high half folds onto the low one
    ],
)
def test_inet_csum32_vectors(data: bytes, expected: int) -> None:
    assert inet_csum32(data) == expected


def test_inet_csum32_rfc1071_example() -> None:
    # RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 have the 16-bit one's complement sum ddf2.
    # A little-endian machine computes it byte-swapped: folding the 32-bit value gives f2dd.
    value = inet_csum32(bytes.fromhex("0001f203f4f5f6f7"))
    folded = (value & 0xFFFF) + (value >> 16)
    folded = (folded & 0xFFFF) + (folded >> 16)
    assert folded == 0xF2DD


def test_kho_test_csum_chains_over_folios() -> None:
    folios = [bytes(range(256)) * 16, b"\xa5" * 8192, bytes(reversed(range(256))) * 16]
    assert kho_test_csum(folios) == inet_csum32(b"".join(folios))
    assert kho_test_csum([]) == 0


# ---------------------------------------------------------------------------------------------
# §9 reserve_mem_param
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (100, "100 B"),
        (5, "5.00 B"),
        (64 * MiB, "64.0 MiB"),
        (16 * MiB, "16.0 MiB"),
        (12 * MiB, "12.0 MiB"),
        (100 * MiB, "100 MiB"),
        (1 * GiB, "1.00 GiB"),
        (3 * GiB // 2, "1.50 GiB"),
        (4096, "4.00 KiB"),
        (1000, "1000 B"),
        (1 * MiB - 1, "1024 KiB"),  # "a value just under a unit boundary"
        (0, "0 B"),
        ((1 << 64) - 1, "16.0 EiB"),
        (5 << 40, "5.00 TiB"),
    ],
)
def test_reserve_mem_param_size(size: int, text: str) -> None:
    assert reserve_mem_param_size(size) == text


def test_reserve_mem_param_lines() -> None:
    assert reserve_mem_param_line("trace", 64 * MiB) == "trace\t\t(64.0 MiB)\n"
    assert reserve_mem_param_line("oops", 16 * MiB) == "oops\t\t(16.0 MiB)\n"  # §14 item 9, §16


# ---------------------------------------------------------------------------------------------
# §3 kho_scratch= and §2.5 scratch files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
def test_kho_scratch_spec_examples(era: str) -> None:
    assert (
        parse_kho_scratch_oracle("16M,512M,256M", era)
        == "KHO: scratch areas: lowmem: 16MiB global: 512MiB pernode: 256MiB"
    )
    assert parse_kho_scratch_oracle("512M,256M", era) == MALFORMED_KHO_SCRATCH
    assert parse_kho_scratch_oracle("150%", era) == "KHO: scratch scale is 150%"
    assert parse_kho_scratch_oracle("200%", era) == "KHO: scratch scale is 200%"


@pytest.mark.parametrize(
    ("value", "old", "new"),
    [
        ("0,512M,256M", None, "KHO: scratch areas: lowmem: 0MiB global: 512MiB pernode: 256MiB"),
        ("0,0,0", None, None),
        ("16M,512M,256M,junk", "lowmem: 16MiB", None),
        ("16M,512M,256Mx", "lowmem: 16MiB", None),
        ("K,1M,1M", None, "lowmem: 0MiB global: 1MiB"),  # "K" consumes one character
        ("8E,8E,0", None, None),  # the u64 sum wraps to 0
        ("16E,1M,1M", None, "lowmem: 0MiB global: 1MiB"),  # 16E wraps to 0
        ("0x10M,010M,1m", "lowmem: 16MiB global: 8MiB pernode: 1MiB", "lowmem: 16MiB"),
        (",1M,1M", None, None),
        ("1M,,1M", None, None),
        (" 1M,1M,1M", None, None),
        ("1M;1M;1M", None, None),
    ],
)
def test_kho_scratch_explicit_form_by_era(value: str, old: str | None, new: str | None) -> None:
    for era, expected in (("6.16", old), ("6.16-fix", old), ("6.18", new), ("6.19", new)):
        message = parse_kho_scratch_oracle(value, era)
        if expected is None:
            assert message == MALFORMED_KHO_SCRATCH, (era, value)
        else:
            assert expected in message and message.startswith("KHO: scratch areas:"), (era, value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1234567890%", "KHO: scratch scale is 1234567890%"),  # 11 characters: the maximum
        ("12345678901%", MALFORMED_KHO_SCRATCH),  # 12 characters
        ("4294967296%", MALFORMED_KHO_SCRATCH),  # does not fit an unsigned int: ERANGE
        ("4294967295%", "KHO: scratch scale is -1%"),  # printed with %d
        ("+5%", "KHO: scratch scale is 5%"),
        ("5\n%", "KHO: scratch scale is 5%"),
        ("0%", "KHO: scratch scale is 0%"),
        ("0x10%", MALFORMED_KHO_SCRATCH),
        ("-1%", MALFORMED_KHO_SCRATCH),
        ("%", MALFORMED_KHO_SCRATCH),
        ("", MALFORMED_KHO_SCRATCH),
        (None, MALFORMED_KHO_SCRATCH),
    ],
)
def test_kho_scratch_percent_form(value: str | None, message: str) -> None:
    for era in ERAS:
        assert parse_kho_scratch_oracle(value, era) == message


def test_kho_scratch_setting_and_sequences() -> None:
    setting = kho_scratch_setting("16M,512M,256M", "6.19")
    assert setting is not None and setting.sizes == (16 * MiB, 512 * MiB, 256 * MiB)
    assert apply_kho_scratch([], "6.19") == (200, 0, 0, 0)
    assert apply_kho_scratch(["16M,512M,256M", "150%"], "6.19") == (
        150,
        16 * MiB,
        512 * MiB,
        256 * MiB,
    )
    assert apply_kho_scratch(["150%", "bad"], "6.16") == (150, 0, 0, 0)
    assert apply_kho_scratch(["512M,256M"], "6.18") == (200, 0, 0, 0)


def test_memparse() -> None:
    assert memparse("16M") == (16 * MiB, 3)
    assert memparse("0x10k,") == (16 << 10, 5)
    assert memparse("0x") == (0, 1)  # "0x" without a hex digit: octal "0", stops at "x"
    assert memparse("017") == (15, 3)
    assert memparse("2T") == (2 << 40, 2)
    assert memparse("") == (0, 0)
    assert memparse("18446744073709551617") == (1, 20)  # wraps


@pytest.mark.parametrize("era", ["6.16", "6.16-fix", "6.18", "6.19"])
def test_scratch_len_checklist_item_1(era: str) -> None:
    # §14 item 1: kho_scratch=16M,512M,256M on one node
    assert (
        scratch_lines_expected(era, 16 * MiB, 512 * MiB, 256 * MiB, 1)
        == "0x1000000\n0x20000000\n0x10000000\n"
    )


def test_scratch_lines_rounding_and_node_count() -> None:
    text = scratch_lines_expected("6.18", 3 * MiB, 5 * MiB + 1, 3 * MiB, 2)
    assert text == "0x300000\n0x500001\n0x400000\n0x400000\n"  # only P is rounded
    assert len(text.splitlines()) == 2 + 2
    assert scratch_lines_expected("6.19", 0, 0, 1, 1) == "0x0\n0x0\n0x200000\n"
    with pytest.raises(ValueError):
        scratch_lines_expected("6.16", 0, 512 * MiB, 256 * MiB, 1)
    with pytest.raises(ValueError):
        scratch_lines_expected("6.18", 0, 0, 0, 1)


def test_scratch_sizes_scale_mode() -> None:
    # Consistent with §16 (a 2 GiB VM: 0x8400000, 0x0, 0x6000000) when all RSRV_KERN memory
    # lies below 4 GiB: the global subtraction is ≤ 0 and wraps to a size of 0 (§3.2).
    sizes = scratch_sizes(scale=200, k_low=0x4200000, k_all=0x4200000, k_nodes=[0x3000000])
    assert scratch_file_text(sizes) == "0x8400000\n0x0\n0x6000000\n"
    sizes = scratch_sizes(scale=200, k_low=0x4200001, k_all=0x4200001, k_nodes=[1])
    assert sizes == [0x8600000, 0, 0x200000]
    sizes = scratch_sizes(scale=100, k_low=1 * GiB, k_all=3 * GiB, k_nodes=[1 * GiB, 2 * GiB])
    assert sizes == [1 * GiB, 2 * GiB, 1 * GiB, 2 * GiB]
    explicit = scratch_sizes(scale=0, lowmem=1, global_size=2, pernode=3, k_nodes=[9, 9])
    assert explicit == [1, 2, 0x200000, 0x200000]


# ---------------------------------------------------------------------------------------------
# §2.1 debugfs files, §2.3 finalize
# ---------------------------------------------------------------------------------------------


def test_debugfs_table_shape_and_modes() -> None:
    assert set(DEBUGFS_FILES) == set(ERAS)
    for era, states in DEBUGFS_FILES.items():
        expected_states = {"boot", "handover_boot"}
        if era in ERAS_WITH_FINALIZE:
            expected_states |= {"finalized", "handover_finalized"}
        assert set(states) == expected_states
        for state, table in states.items():
            assert ("kho/in/fdt" in table) == state.startswith("handover")
            assert table["kho"] == DebugfsEntry("dir", 0o755)
            assert table["kho/out/scratch_phys"] == table["kho/out/scratch_len"]
            assert table["kho/out/scratch_len"] == DebugfsEntry("seq", 0o400)
            assert ("kho/out/finalize" in table) == (era in ERAS_WITH_FINALIZE)
            for path, entry in table.items():
                if entry.kind == "dir":
                    assert entry.mode == 0o755, path
                elif entry.kind == "attribute":
                    assert (path, entry.mode) == ("kho/out/finalize", 0o600)
                else:
                    assert entry.mode == 0o400, path
    assert OUT_CREATION_ORDER == ("sub_fdts", "scratch_phys", "scratch_len", "finalize")


@pytest.mark.parametrize("era", ["6.16", "6.16-fix", "6.18"])
def test_debugfs_out_blobs_only_while_finalized_before_6_19(era: str) -> None:
    boot = debugfs_expected(era, "boot", ["memblock"])
    assert "kho/out/fdt" not in boot and "kho/out/sub_fdts/memblock" not in boot
    fin = debugfs_expected(era, "finalized", ["memblock", "kho_test"])
    assert {"kho/out/fdt", "kho/out/sub_fdts/memblock", "kho/out/sub_fdts/kho_test"} <= set(fin)
    hand = debugfs_expected(era, "handover_boot", in_subtrees=["memblock"])
    assert {"kho/in", "kho/in/fdt", "kho/in/sub_fdts", "kho/in/sub_fdts/memblock"} <= set(hand)
    assert "kho/out/finalize" in hand and "kho/out/fdt" not in hand


@pytest.mark.parametrize("era", ["6.19", "stateless", "blob"])
def test_debugfs_6_19_out_fdt_from_init_but_not_on_handover(era: str) -> None:
    boot = debugfs_expected(era, "boot", ["memblock"])
    assert {"kho/out/fdt", "kho/out/sub_fdts/memblock"} <= set(boot)
    hand = debugfs_expected(era, "handover_boot", ["memblock"], ["memblock", "LUO"])
    assert "kho/out/fdt" not in hand
    assert {"kho/out/sub_fdts/memblock", "kho/in/sub_fdts/LUO", "kho/in/fdt"} <= set(hand)
    assert not any("<name>" in p for p in hand)


def test_finalize_errnos_checklist_items_3_and_4() -> None:
    e616 = FINALIZE_ERRNOS["6.16"]
    assert e616[("nonzero", "not_finalized")] == 0
    assert e616[("nonzero", "finalized")] == errno.EEXIST
    assert e616[("zero", "finalized")] == 0
    assert e616[("zero", "not_finalized")] == errno.ENOENT
    e619 = FINALIZE_ERRNOS["6.19"]
    assert e619[("nonzero", "finalized")] == 0
    assert e619[("zero", "not_finalized")] == e619[("zero", "finalized")] == errno.EINVAL
    assert FINALIZE_ERRNOS["6.18"][("nonzero", "kho_disabled")] == errno.EOPNOTSUPP
    for era in ("stateless", "blob"):
        assert FINALIZE_ERRNOS[era] == {("open", "any"): errno.ENOENT}
    assert FINALIZE_READ == {False: "0\n", True: "1\n"}


@pytest.mark.parametrize("era", ["6.16", "6.16-fix", "6.18", "6.19"])
def test_finalize_writes_section_11(era: str) -> None:
    # the selftest writes the two bytes "1\0" and expects 2
    assert finalize_write_oracle(era, b"1\0", finalized=False) == 2
    for bad in (b"abc", b" 1", b"-1", b""):
        assert finalize_write_oracle(era, bad, finalized=False) == -errno.EINVAL
    assert finalize_write_oracle(era, b"0x1", finalized=False) == 3
    assert finalize_write_oracle(era, b"1\n", finalized=False) == 2
    assert finalize_write_oracle(era, b"99999999999999999999", finalized=False) == -errno.ERANGE
    again = finalize_write_oracle(era, b"1", finalized=True)
    assert again == (1 if era == "6.19" else -errno.EEXIST)
    zero = finalize_write_oracle(era, b"0", finalized=False)
    assert zero == (-errno.EINVAL if era == "6.19" else -errno.ENOENT)


def test_debugfs_attr_value_parsing() -> None:
    assert debugfs_attr_value(b"1" + b"\0garbage") == 1
    assert debugfs_attr_value(b"+0x10") == 16
    assert debugfs_attr_value(b"010") == 8
    assert debugfs_attr_value(b"0" * 22 + b"1" + b"junk") == 1  # only 23 bytes are read
    with pytest.raises(OSError) as info:
        debugfs_attr_value(b"1" + b" " * 30)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        finalize_write_oracle("stateless", b"1", finalized=False)


# ---------------------------------------------------------------------------------------------
# §15 releases and images
# ---------------------------------------------------------------------------------------------


def test_linux_version_prefixes() -> None:
    assert {r: linux_version_prefix(r) for r in RELEASES} == {
        "6.12": "6.12.0",
        "v4": "6.14.0-rc1",
        "6.16": "6.16.0",
        "6.17": "6.17.0",
        "6.18": "6.18.0",
        "6.19": "6.19.0",
        "7.0": "7.0.0",
        "7.2": "7.2.13",
    }
    assert RELEASES["6.17"][0] == "6.16-fix" and RELEASES["7.0"][0] == "6.19"
    assert RELEASES["7.2"][0] == "blob"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("6.14.0-rc1-kho-v4 (kho-fs) #1 SMP", ("v4", False)),
        ("6.14.0-rc1", ("6.12", False)),
        ("6.15.2", ("6.12", False)),
        ("5.10.0-32-amd64", ("6.12", False)),
        ("6.16.0", ("6.16", False)),
        ("6.17.3-arch1-1", ("6.17", False)),
        ("6.19.0-1-amd64 (debian-kernel@lists.debian.org) #1", ("6.19", False)),
        ("7.0.0", ("7.0", False)),
        ("7.2.13", ("7.2", False)),
        ("7.2.13-amd64 (debian-kernel@lists.debian.org) #1", ("7.2", False)),
        ("7.1.0", ("7.2", True)),
        ("7.3.0-rc1", ("7.2", True)),
        ("garbage", None),
        ("", None),
    ],
)
def test_release_for_version(version: str, expected: tuple[str, bool] | None) -> None:
    assert release_for_version(version) == expected


DEBIAN_VERSION = (
    "6.19.0-1-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC "
    "Debian 6.19.3-1 (2026-02-20)"
)


def test_make_bzimage_round_trip() -> None:
    image = make_bzimage(DEBIAN_VERSION, 256 * 1024)
    assert len(image) == 256 * 1024
    assert parse_bzimage_version(image) == DEBIAN_VERSION
    assert bzimage_release(image) == "6.19.0-1-amd64"
    # kho-fs's kernel segment rule (docs/decisions.md): protocol ≥ 2.10, non-zero init_size
    assert struct.unpack_from("<H", image, 0x206)[0] >= 0x020A
    assert struct.unpack_from("<I", image, 0x260)[0] > 0


def test_file_recognises_make_bzimage(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(DEBIAN_VERSION, 64 * 1024))
    out = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(
        f"Linux kernel x86 boot executable bzImage, version {DEBIAN_VERSION},"
    ), out.stdout


def test_parse_bzimage_version_rejections() -> None:
    good = bytearray(make_bzimage("6.16.0 (x) #1", 8192))
    assert parse_bzimage_version(bytes(good)) == "6.16.0 (x) #1"
    assert parse_bzimage_version(b"\x8f" * 8192) is None  # random bytes: no header
    assert parse_bzimage_version(bytes(good[:0x100])) is None
    for offset, value in ((0x1FE, 0), (0x202, ord("X"))):
        bad = bytearray(good)
        bad[offset] = value
        assert parse_bzimage_version(bytes(bad)) is None
    bad = bytearray(good)
    struct.pack_into("<H", bad, 0x20E, 0)  # no version pointer
    assert parse_bzimage_version(bytes(bad)) is None
    bad = bytearray(good)
    struct.pack_into("<H", bad, 0x20E, 0x800)  # not below 0x200 × setup_sects (4)
    assert parse_bzimage_version(bytes(bad)) is None
    bad = bytearray(good)
    bad[0x1F1] = 0  # 0 means 4: same image still parses
    assert parse_bzimage_version(bytes(bad)) == "6.16.0 (x) #1"
    bad[0x1F1] = 1  # setup code ends at 0x400: the pointer (0x200) is no longer below it
    assert parse_bzimage_version(bytes(bad)) is None
    bad = bytearray(good)
    bad[0x400:0xA00] = b"A" * 0x600  # no NUL inside the setup code
    assert parse_bzimage_version(bytes(bad)) is None
    with pytest.raises(ValueError):
        make_bzimage("x" * 0x700, 8192)
    with pytest.raises(ValueError):
        make_bzimage("6.16.0", 0xA00)


# ---------------------------------------------------------------------------------------------
# Blob era (Linux 7.2): the oracles against the bytes a real 7.2.13 kernel showed
# ---------------------------------------------------------------------------------------------

# a copy of shared/spec/transcripts
TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts"
TRANSCRIPT_7_2 = TRANSCRIPTS / "linux-7.2.13-kho-luo.txt"


def _transcript_hex(marker: str, nth: int = 0) -> bytes:
    lines = TRANSCRIPT_7_2.read_text().splitlines()
    hits = [i for i, line in enumerate(lines) if line == f"=== HEX {marker}"]
    i = hits[nth] + 1
    while not all(c in "0123456789abcdef" for c in lines[i]):  # a console line in between
        i += 1
    return bytes.fromhex(lines[i])


def test_blob_root_oracle_rebuilds_the_real_root() -> None:
    from .mainline import decode_blob_root, root_fdt_blob

    real = _transcript_hex("/sys/kernel/debug/kho/in/fdt")
    decoded = decode_blob_root(real)
    assert decoded["compatible"] == ["kho-v4"]
    assert [c[0] for c in decoded["children"]] == ["memblock", "LUO", "kho_test", "kexec-metadata"]
    assert root_fdt_blob(decoded["preserved_memory_map"], decoded["children"][::-1]) == real
    # stage 1's out/fdt: the file kept the 233 bytes of root + kexec-metadata (§2.1, §16)
    out = _transcript_hex("/sys/kernel/debug/kho/out/fdt")
    assert len(out) == 233 == len(root_fdt_blob(1, decoded["children"][-1:]))
    assert out == real[:233]


def test_kexec_metadata_oracle_is_the_real_record() -> None:
    from .mainline import kexec_metadata

    assert _transcript_hex("/sys/kernel/debug/kho/out/sub_fdts/kexec-metadata") == kexec_metadata(
        "7.2.13", 1
    )
    assert _transcript_hex("/sys/kernel/debug/kho/out/sub_fdts/kexec-metadata", 1) == (
        kexec_metadata("7.2.13", 2)
    )
    assert len(kexec_metadata("x" * 80, 1)) == 73


def test_radix_oracle_round_trip() -> None:
    from .mainline import decode_radix_tree, encode_radix_tree, radix_key, radix_unkey

    assert radix_key(0, 0) == 1 << 52 and radix_unkey(1 << 52) == (0, 0)
    assert radix_unkey(radix_key(0x7C600000, 3)) == (0x7C600000, 3)
    ram: dict[int, bytearray] = {}

    def alloc() -> int:
        addr = 0x1000 * (len(ram) + 1)
        ram[addr] = bytearray(PAGE_SIZE)
        return addr

    def write(addr: int, data: bytes) -> None:
        base = addr & ~0xFFF
        ram[base][addr - base : addr - base + len(data)] = data

    blocks = [(0x100000, 0), (0x101000, 0), (0x200000, 9), (1 << 45, 2)]
    root = encode_radix_tree(blocks, alloc, write)
    got = decode_radix_tree(lambda a, n: bytes(ram[a][:n]), root)
    # walk order: higher orders (smaller keys) first, then ascending addresses
    assert got == [(0x200000, 9), (1 << 45, 2), (0x100000, 0), (0x101000, 0)]
    # root; order 0 (level-5 slot 2): 4 tables + leaf; orders 9 and 2 share level-5 slot 0
    # and its level-4 node, then 3 tables + leaf each
    assert len(ram) == 1 + 5 + 1 + 4 + 4


def test_blob_scratch_sizes_oracle() -> None:
    from .mainline import scratch_sizes_blob

    # explicit sizes are rounded to 4 MiB too; scale mode subtracts before rounding
    assert scratch_sizes_blob(scale=0, lowmem=1, global_size=0, pernode=5 << 20, k_nodes=[0]) == [
        4 << 20,
        0,
        8 << 20,
    ]
    assert scratch_sizes_blob(scale=200, k_low=33 << 20, k_all=33 << 20, k_nodes=[33 << 20]) == [
        68 << 20,
        0,
        68 << 20,
    ]
