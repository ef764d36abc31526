"""Mainline releases (6.16 – 7.0) and 6.12 in-process: spec kho-mainline.md §2–§8, §14, §15.

Expected values are the spec's (quoted strings, the §7.1 reference bytes, the §6.2 chunk
layout decoded by a decoder written here), never the model's own output.
"""

from __future__ import annotations

import errno
import struct

import libfdt
import pytest
from oracles.mainline import MEMBLOCK_REFERENCE

from kho_fs.model.errors import KernelError
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import MEMBLOCK_RSRV_NOINIT

MAINLINE = ["6.16", "6.17", "6.18", "6.19", "7.0"]
TOGGLE = ["6.16", "6.17", "6.18"]  # finalize 0/1 with abort
REPEATABLE = ["6.19", "7.0"]
BITMAP_BYTES = {"6.16": 512, "6.17": 512, "6.18": 4096, "6.19": 4096, "7.0": 4096}
CMD = "console=ttyS0 kho=on reserve_mem=16M:4096:oops"

MEMBLOCK_REF = MEMBLOCK_REFERENCE  # spec §7.1: `oops` at 0x23fe00000, 16 MiB
REF_START = 0x23FE00000


def machine(release: str, cmdline: str = CMD, memory: int = 2 << 30, nodes: int = 1) -> Machine:
    return Machine.create(memory=memory, nodes=nodes, cmdline=cmdline, release=release)


def finalize(m: Machine) -> None:
    m.kernel.kho.finalize_store(1)


def kexec(m: Machine) -> None:
    k = m.kernel
    k.kexec.kexec_file_load(b"\x90" * 64 * 1024, None, k.cmdline)
    m.kexec_exec()


def decode_chunks(read, first: int, bitmap_bytes: int) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Spec §6.2, written from the table: chunk pages of (next, order, count, entries)."""
    blocks = set()
    chunk = first
    while chunk:
        page = read(chunk, 4096)
        nxt, order, count = struct.unpack_from("<QII", page, 0)
        for i in range(count):
            start, bitmap = struct.unpack_from("<QQ", page, 16 + 16 * i)
            bits = read(bitmap, bitmap_bytes)
            for b in range(bitmap_bytes * 8):
                if bits[b // 8] >> (b % 8) & 1:
                    blocks.add((start + (b << (order + 12)), order))
        chunk = nxt
    return blocks


def test_release_names_and_banner() -> None:
    valid = r"valid: 6\.12, v4, 6\.16, 6\.17, 6\.18, 6\.19, 7\.0, 7\.2"
    with pytest.raises(ValueError, match=valid):
        machine("6.15")
    for name, prefix in [
        ("6.12", "6.12.0"),
        ("6.16", "6.16.0"),
        ("7.0", "7.0.0"),
        ("v4", "6.14.0-rc1"),
    ]:
        lines = machine(name).kernel.log.lines()
        assert lines[0].startswith(f"Linux version {prefix}"), lines[0]


def test_6_12_has_no_kho_and_reports_unknown_parameters() -> None:
    m = machine("6.12", "console=ttyS0 kho=on kho_scratch=1G foo reserve_mem=16M:4096:oops x.y=1")
    lines = m.kernel.log.lines()
    assert (
        'Unknown kernel command line parameters "foo kho=on kho_scratch=1G", '
        "will be passed to user space."
    ) in lines
    assert not any(line.startswith("KHO") for line in lines)
    assert m.region("oops") is not None  # reserve_mem= exists since 6.11


@pytest.mark.parametrize("release", MAINLINE)
def test_item_1_scratch_lines_and_explicit_sizes(release: str) -> None:
    m = machine(release, "console=ttyS0 kho=on kho_scratch=16M,512M,256M", memory=4 << 30)
    kho = m.kernel.kho
    assert kho.scratch_len_show() == "0x1000000\n0x20000000\n0x10000000\n"
    assert (
        "KHO: scratch areas: lowmem: 16MiB global: 512MiB pernode: 256MiB" in m.kernel.log.lines()
    )
    phys = kho.scratch_phys_show().splitlines()
    assert len(phys) == 3 and all(p.startswith("0x") and p == p.lower() for p in phys)
    assert int(phys[0], 16) + (16 << 20) <= 1 << 32  # the low-memory area lies below 4 GiB
    two = machine(release, "console=ttyS0 kho=on", memory=4 << 30, nodes=2)
    assert len(two.kernel.kho.scratch_phys_show().splitlines()) == 4


@pytest.mark.parametrize("release", MAINLINE)
def test_item_2_malformed_and_scale(release: str) -> None:
    bad = machine(release, "console=ttyS0 kho=on kho_scratch=512M,256M").kernel.log.lines()
    assert "Malformed early option 'kho_scratch'" in bad
    scale = machine(release, "console=ttyS0 kho=on kho_scratch=150%").kernel.log.lines()
    assert "KHO: scratch scale is 150%" in scale


def test_scratch_zero_and_trailing_text_by_era() -> None:
    zero = "console=ttyS0 kho=on kho_scratch=0,512M,256M"
    trailing = "console=ttyS0 kho=on kho_scratch=16M,512M,256Mjunk"
    malformed = "Malformed early option 'kho_scratch'"
    assert malformed in machine("6.16", zero).kernel.log.lines()
    assert malformed not in machine("6.18", zero).kernel.log.lines()
    assert malformed not in machine("6.16", trailing).kernel.log.lines()
    assert malformed in machine("6.18", trailing).kernel.log.lines()
    assert malformed in machine("6.19", "console=ttyS0 kho=on kho_scratch=0,0,0").kernel.log.lines()


@pytest.mark.parametrize("release", TOGGLE)
def test_item_3_finalize_toggle(release: str) -> None:
    kho = machine(release).kernel.kho
    assert kho.finalize_show() == "0\n" and kho.out_fdt is None
    kho.finalize_store(1)
    assert kho.finalize_show() == "1\n" and kho.out_fdt is not None
    assert [b.name for b in kho.out_sub_fdts] == ["memblock"]
    with pytest.raises(KernelError) as exc:
        kho.finalize_store(1)
    assert exc.value.errno == errno.EEXIST
    kho.finalize_store(0)
    assert kho.out_fdt is None and kho.out_sub_fdts == [] and kho.finalize_show() == "0\n"
    with pytest.raises(KernelError) as exc:
        kho.finalize_store(0)
    assert exc.value.errno == errno.ENOENT


@pytest.mark.parametrize("release", REPEATABLE)
def test_item_4_finalize_repeatable(release: str) -> None:
    kho = machine(release).kernel.kho
    assert kho.out_fdt is not None  # created at init
    assert [b.name for b in kho.out_sub_fdts] == ["memblock"]  # since boot
    for _ in range(3):
        kho.finalize_store(1)
    assert kho.finalize_show() == "1\n"
    with pytest.raises(KernelError) as exc:
        kho.finalize_store(0)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("release", ["6.18", "6.19"])
def test_finalize_with_kho_disabled_is_eopnotsupp(release: str) -> None:
    kho = machine(release, "console=ttyS0 kho=on").kernel.kho
    kho.kho_enable = False
    with pytest.raises(KernelError) as exc:
        kho.finalize_store(1)
    assert exc.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("release", MAINLINE)
def test_item_5_and_6_root_and_memblock_bytes(release: str) -> None:
    m = machine(release)
    finalize(m)
    kho, mem = m.kernel.kho, m.kernel.mem
    root = libfdt.Fdt(mem.read(kho.fdt_page, 4096))
    assert root.getprop(0, "compatible") == b"kho-v1\0"
    assert len(root.getprop(0, "preserved-memory-map")) == 8
    child = root.subnode_offset(0, "memblock")
    sub = struct.unpack("<Q", root.getprop(child, "fdt"))[0]
    region = m.region("oops")
    assert region is not None
    expected = bytearray(MEMBLOCK_REF)
    at = expected.find(struct.pack("<Q", REF_START))
    expected[at : at + 8] = struct.pack("<Q", region.start)
    assert mem.read(sub, 210) == bytes(expected)
    assert [b.size for b in kho.out_sub_fdts] == [210]


@pytest.mark.parametrize("release", MAINLINE)
def test_memory_map_decodes_to_the_preserved_blocks(release: str) -> None:
    m = machine(release)
    kho = m.kernel.kho
    base = m.region("oops")
    assert base is not None
    # folios of mixed orders inside the region, and a range that is not a power of two
    a = (base.start + (2 << 20) - 1) & ~((2 << 20) - 1)
    folios = [(a, 9), (a + 0x200000, 3), (a + 0x208000, 0)]
    kho.kho_preserve_pages(0x60000000, 5)  # 4 + 1 pages: orders 2 and 0 (spec §6.1)
    folios += [(0x60000000, 2), (0x60004000, 0)]
    for phys, order in folios[:3]:
        kho.kho_preserve_folio(phys, order)
    finalize(m)
    root = libfdt.Fdt(m.kernel.mem.read(kho.fdt_page, 4096))
    first = struct.unpack("<Q", root.getprop(0, "preserved-memory-map"))[0]
    blocks = decode_chunks(m.kernel.mem.read, first, BITMAP_BYTES[release])
    assert set(folios) <= blocks
    covered = sum(4096 << o for p, o in blocks if base.start <= p < base.end)
    # the region itself is preserved whole (16 MiB); the folios lie inside it
    assert covered >= 16 << 20


@pytest.mark.parametrize("release", MAINLINE)
def test_item_7_handover_revives_region_and_reserves_it(release: str) -> None:
    m = machine(release)
    region = m.region("oops")
    assert region is not None
    m.kernel.mem.write(region.start, b"kept across kexec")
    finalize(m)
    kexec(m)
    k = m.kernel
    assert "Revived memory reservation 'oops' from KHO" in k.log.lines()
    found = "KHO: found kexec handover data." + (
        " Will skip init for some devices" if release in TOGGLE else ""
    )
    assert found in k.log.lines()
    again = m.region("oops")
    assert again is not None and again.start == region.start
    assert k.mem.read(region.start, 17) == b"kept across kexec"
    reserved = [r for r in k.memblock.reserved if r.base <= region.start < r.end]
    assert reserved and reserved[0].flags & MEMBLOCK_RSRV_NOINIT
    assert k.kho.in_fdt is not None
    assert [b.name for b in k.kho.in_sub_fdts] == ["memblock"]
    assert k.kho.out_fdt is None or release in TOGGLE  # 6.19: no out/fdt on a handover boot


@pytest.mark.parametrize("release", REPEATABLE)
def test_6_19_without_finalize_refuses_the_map(release: str) -> None:
    m = machine(release)
    kexec(m)
    lines = m.kernel.log.lines()
    assert "KHO: disabling KHO revival: -2" in lines
    assert "Revived memory reservation 'oops' from KHO" not in lines


def test_6_16_unfinalized_kexec_hands_over_an_uninitialised_page() -> None:
    m = machine("6.16")
    kexec(m)
    lines = m.kernel.log.lines()
    assert any(
        line.startswith("KHO: setup: handover FDT (0x") and line.endswith(") is invalid: -9")
        for line in lines
    ), lines
    assert "KHO: disabling KHO revival: -22" in lines


@pytest.mark.parametrize("release", ["6.17", "6.18"])
def test_6_16_fix_attaches_nothing_unless_finalized(release: str) -> None:
    m = machine(release)
    kexec(m)
    assert not any(
        line.startswith("KHO: setup") or "revival" in line for line in m.kernel.log.lines()
    )
    assert not m.kernel.kho.handover


@pytest.mark.parametrize("release", TOGGLE)
def test_abort_drops_preservations(release: str) -> None:
    m = machine(release)
    kho = m.kernel.kho
    finalize(m)
    assert kho.preserved_blocks()
    kho.finalize_store(0)
    assert kho.preserved_blocks() == []


@pytest.mark.parametrize("release", TOGGLE)
def test_preserve_while_finalized_is_ebusy(release: str) -> None:
    m = machine(release)
    finalize(m)
    with pytest.raises(KernelError) as exc:
        m.kernel.kho.kho_preserve_folio(0x100000000, 0)
    assert exc.value.errno == errno.EBUSY


@pytest.mark.parametrize("release", MAINLINE)
def test_segments_land_in_scratch(release: str) -> None:
    m = machine(release)
    finalize(m)
    k = m.kernel
    k.kexec.kexec_file_load(b"\x90" * 64 * 1024, None, k.cmdline)
    image = k.kexec.kexec_image
    assert image is not None
    areas = k.kho.scratch
    for seg in image.segments:
        assert any(a.addr <= seg.mem and seg.mem + seg.memsz <= a.addr + a.size for a in areas)


def test_blob_write_patches_ram() -> None:
    m = machine("6.19")
    kho = m.kernel.kho
    blob = kho.out_sub_fdts[0]
    assert kho.blob_write(blob, 0, b"\x00") == 1
    assert m.kernel.mem.read(blob.phys, 1) == b"\x00"
    assert kho.blob_write(blob, blob.size, b"x") == 0
    assert kho.blob_write(blob, blob.size - 1, b"xy") == 1


# -- test_kho and the kernel's selftest flow (spec §10, §11) ------------------------------


def selftest_machine(release: str) -> Machine:
    from kho_fs.model.test_kho import TestKhoDriver

    return Machine.create(
        memory=1 << 30,
        cmdline="console=ttyS0 kho=on panic=-1",
        release=release,
        drivers=[TestKhoDriver],
    )


@pytest.mark.parametrize("release", MAINLINE)
def test_selftest_flow_restores(release: str) -> None:
    m = selftest_machine(release)
    kho = m.kernel.kho
    assert (
        len(kho.scratch_len_show().splitlines()) == len(kho.scratch_phys_show().splitlines()) == 3
    )
    if release in REPEATABLE:
        assert [b.name for b in kho.out_sub_fdts] == ["kho_test"]  # since boot
    finalize(m)
    assert "kho_test" in [b.name for b in kho.out_sub_fdts]
    m.kernel.kexec.kexec_file_load(b"\x90" * 4096, None, m.kernel.cmdline, 0x4)
    m.kexec_exec()
    assert "test_kho: KHO restore succeeded" in m.kernel.log.lines()
    assert [b.name for b in m.kernel.kho.in_sub_fdts] == ["kho_test"]


@pytest.mark.parametrize("release", TOGGLE)
def test_abort_then_refinalize_loses_test_kho_data(release: str) -> None:
    m = selftest_machine(release)
    finalize(m)
    m.kernel.kho.finalize_store(0)
    finalize(m)
    m.kernel.kexec.kexec_file_load(b"\x90" * 4096, None, m.kernel.cmdline, 0x4)
    m.kexec_exec()
    lines = m.kernel.log.lines()
    assert "test_kho: KHO restore succeeded" not in lines
    assert "test_kho: KHO restore failed" not in lines  # silent before 6.19


@pytest.mark.parametrize("release", REPEATABLE)
def test_6_19_without_finalize_test_kho_saves_again(release: str) -> None:
    m = selftest_machine(release)
    m.kernel.kexec.kexec_file_load(b"\x90" * 4096, None, m.kernel.cmdline, 0x4)
    m.kexec_exec()
    lines = m.kernel.log.lines()
    assert "KHO: disabling KHO revival: -2" in lines
    assert "test_kho: KHO restore succeeded" not in lines
    assert [b.name for b in m.kernel.kho.out_sub_fdts] == ["kho_test"]  # saved again


def test_6_19_children_newest_first_with_memblock() -> None:
    from kho_fs.model.test_kho import TestKhoDriver

    m = Machine.create(memory=1 << 30, cmdline=CMD, release="6.19", drivers=[TestKhoDriver])
    root = libfdt.Fdt(m.kernel.mem.read(m.kernel.kho.fdt_page, 4096))
    names = []
    node = root.first_subnode(0, quiet=[libfdt.NOTFOUND])
    while node >= 0:
        names.append(root.get_name(node))
        node = root.next_subnode(node, quiet=[libfdt.NOTFOUND])
    # test_kho (device initcall) registers before memblock (late initcall); each new child
    # is inserted first (spec §5.1)
    assert names == ["memblock", "kho_test"]


# -- byte-exact FDTs against the independent oracles (tests/oracles/mainline.py) ----------


@pytest.mark.parametrize("release", TOGGLE)
def test_root_fdt_bytes_6_16_era(release: str) -> None:
    from oracles.mainline import root_fdt

    from kho_fs.model.test_kho import TestKhoDriver

    m = Machine.create(memory=1 << 30, cmdline=CMD, release=release, drivers=[TestKhoDriver])
    finalize(m)
    kho = m.kernel.kho
    blob = m.kernel.mem.read(kho.fdt_page, kho.out_fdt.size)
    info = libfdt.Fdt(blob)
    mem_map = struct.unpack("<Q", info.getprop(0, "preserved-memory-map"))[0]
    children = [(b.name, b.phys) for b in kho.out_sub_fdts]
    # notifier registration order: test_kho (device initcall) before memblock (late)
    assert [c[0] for c in children] == ["kho_test", "memblock"]
    assert blob == root_fdt("kho-v1", mem_map, children)


@pytest.mark.parametrize("release", REPEATABLE)
def test_root_fdt_bytes_6_19_era(release: str) -> None:
    from oracles.mainline import root_fdt_6_19

    from kho_fs.model.test_kho import TestKhoDriver

    m = Machine.create(memory=1 << 30, cmdline=CMD, release=release, drivers=[TestKhoDriver])
    finalize(m)
    kho = m.kernel.kho
    page = m.kernel.mem.read(kho.fdt_page, 4096)
    size = struct.unpack(">I", page[4:8])[0]
    mem_map = struct.unpack("<Q", libfdt.Fdt(page).getprop(0, "preserved-memory-map"))[0]
    added = [(b.name, b.phys) for b in kho.out_sub_fdts]
    assert page[:size] == root_fdt_6_19("kho-v1", mem_map, added)
    assert kho.out_fdt.size == 152  # first size, kept (spec §2.1)


@pytest.mark.parametrize("release", MAINLINE)
def test_memory_map_against_oracle_decoder(release: str) -> None:
    from oracles.mainline import decode_preserved_memory_map

    m = machine(release)
    kho = m.kernel.kho
    kho.kho_preserve_pages(0x60000000, 5)
    kho.kho_preserve_folio(0x61000000, 7)
    finalize(m)
    page = m.kernel.mem.read(kho.fdt_page, 4096)
    first = struct.unpack("<Q", libfdt.Fdt(page).getprop(0, "preserved-memory-map"))[0]
    got = decode_preserved_memory_map(m.kernel.mem.read, first, BITMAP_BYTES[release])
    assert set(kho.preserved_blocks()) == set(got)
    assert {(0x60000000, 2), (0x60004000, 0), (0x61000000, 7)} <= set(got)
