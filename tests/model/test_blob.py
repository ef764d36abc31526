"""Release 7.2 (the blob era) in-process: spec kho-mainline.md §0, §5.1, §5.2, §6.3, §8, §9,
§16 and the real Linux 7.2.13 recording (shared/spec/transcripts/linux-7.2.13-kho-luo.txt).

Expected values come from the spec, the recording (quoted bytes and lines) and the
independent oracles in tests/oracles/mainline.py — never from the model's own output.
"""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles.mainline import (
    BLOB_SCRATCH_ALIGN,
    RESERVE_MEM_ALLOC_FAILED,
    RESERVE_MEM_MALFORMED,
    RESERVE_MEM_NO_ROOM,
    decode_blob_root,
    decode_radix_tree,
    encode_radix_tree,
    kexec_metadata,
    kexec_metadata_line,
    memblock_sub_fdt,
    radix_key,
    radix_unkey,
    reserve_mem_duplicate,
    reserve_mem_param_line,
    reserve_mem_param_size,
    root_fdt_blob,
    scratch_sizes_blob,
)

from kho_fs.model.builtin_drivers import DRIVERS
from kho_fs.model.bzimage import make_bzimage
from kho_fs.model.errors import KernelError
from kho_fs.model.kho_blob import KhoBlobEra
from kho_fs.model.kho_radix import kho_radix_decode_key, kho_radix_encode_key, walk_radix_runs
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import MEMBLOCK_RSRV_NOINIT
from kho_fs.model.releases import RELEASES
from kho_fs.model.string_helpers import string_get_size

CMD = "console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1"
#: the 73-byte record the real 7.2.13 wrote on its first boot (transcript, stage 1)
REAL_METADATA_1 = bytes.fromhex("01000000372e322e3133" + "00" * 59 + "01000000")


def machine(
    cmdline: str = CMD, memory: int = 2 << 30, nodes: int = 1, test_kho: bool = False
) -> Machine:
    drivers = [DRIVERS["test_kho"]] if test_kho else []
    return Machine.create(
        memory=memory, nodes=nodes, cmdline=cmdline, release="7.2", drivers=drivers
    )


def kho(m: Machine) -> KhoBlobEra:
    assert isinstance(m.kernel.kho, KhoBlobEra)
    return m.kernel.kho


def kexec(m: Machine, release: str = "7.2") -> None:
    k = m.kernel
    k.kexec.kexec_file_load(make_bzimage(RELEASES[release], 64 << 10), None, k.cmdline)
    m.kexec_exec()


def blob_bytes(m: Machine, name: str, incoming: bool = False) -> bytes:
    x = kho(m)
    blobs = x.in_sub_fdts if incoming else x.out_sub_fdts
    b = next(b for b in blobs if b.name == name)
    return x.blob_read(b, 0, b.size)


def root_bytes(m: Machine) -> bytes:
    x = kho(m)
    page = m.kernel.mem.read(x.fdt_page, 4096)
    return page[: struct.unpack(">I", page[4:8])[0]]


# -- release, banner, image mapping (§15) ------------------------------------------------------
def test_release_7_2_boots_7_2_13() -> None:
    m = machine()
    assert m.kernel.log.lines()[0].startswith("Linux version 7.2.13 ")
    assert m.kernel.release.era == "blob"


def test_images_map_to_7_2() -> None:
    from kho_fs.model.bzimage import release_for_version

    assert release_for_version("7.2.13 (root@vm) #2 SMP").release.name == "7.2"  # type: ignore[union-attr]
    hit = release_for_version("7.2.13-amd64")
    assert hit is not None and hit.release.name == "7.2" and hit.note is None
    newer = release_for_version("7.3.1")
    assert newer is not None and newer.release.name == "7.2"
    assert newer.note == "kho-fs: kernel 7.3.1 is newer than the releases modelled; booting 7.2"
    between = release_for_version("7.1.4-arch1")
    assert between is not None and between.release.name == "7.2"
    assert between.note == "kho-fs: kernel 7.1.4-arch1 is not modelled; booting 7.2"


# -- init: root FDT, kexec-metadata, debugfs (§2.1, §5, §16) -----------------------------------
def test_root_fdt_is_built_at_init_newest_first_with_sized_children() -> None:
    m = machine(test_kho=True)
    x = kho(m)
    root = root_bytes(m)
    decoded = decode_blob_root(root)
    assert decoded["compatible"] == ["kho-v4"]
    assert [c[0] for c in decoded["children"]] == ["memblock", "kho_test", "kexec-metadata"]
    sizes = {name: size for name, _, size in decoded["children"]}
    assert sizes == {"memblock": 210, "kho_test": 240, "kexec-metadata": 73}
    # byte for byte what libfdt builds from the same additions (oracle)
    added = list(reversed(decoded["children"]))
    assert root == root_fdt_blob(decoded["preserved_memory_map"], added)
    # out/fdt keeps the size it had when created: root + kexec-metadata = 233 bytes (§16)
    assert x.out_fdt is not None and x.out_fdt.size == 233
    assert x.blob_read(x.out_fdt, 0, 4096) == root[:233]
    assert not x.release.has_finalize


def test_kexec_metadata_record_is_the_real_kernels() -> None:
    m = machine()
    assert blob_bytes(m, "kexec-metadata") == REAL_METADATA_1 == kexec_metadata("7.2.13", 1)


def test_memblock_sub_blob_and_reserve_mem_param() -> None:
    m = machine()
    region = m.region("oops")
    assert region is not None
    assert blob_bytes(m, "memblock") == memblock_sub_fdt([("oops", region.start, 16 << 20)])
    assert m.kernel.reserve_mem.reserve_mem_param_show() == "oops\t\t(16.0 MiB)\n"


def test_debugfs_tree_follows_the_real_7_2() -> None:
    from kho_fs.tree.profile_v4 import V4Profile

    m = machine(test_kho=True)
    paths = {e.path for e in V4Profile(m).entries()}
    kho_paths = sorted(p for p in paths if p.startswith("sys/kernel/debug/"))
    assert kho_paths == [
        "sys/kernel/debug/kho",
        "sys/kernel/debug/kho/out",
        "sys/kernel/debug/kho/out/fdt",
        "sys/kernel/debug/kho/out/scratch_len",
        "sys/kernel/debug/kho/out/scratch_phys",
        "sys/kernel/debug/kho/out/sub_fdts",
        "sys/kernel/debug/kho/out/sub_fdts/kexec-metadata",
        "sys/kernel/debug/kho/out/sub_fdts/kho_test",
        "sys/kernel/debug/kho/out/sub_fdts/memblock",
        "sys/kernel/debug/memblock/reserve_mem_param",
    ]
    kexec(m)
    paths = {e.path for e in V4Profile(m).entries()}
    assert "sys/kernel/debug/kho/out/fdt" not in paths  # a handover boot has none (§16)
    assert {
        "sys/kernel/debug/kho/in/fdt",
        "sys/kernel/debug/kho/in/sub_fdts/kexec-metadata",
        "sys/kernel/debug/kho/in/sub_fdts/kho_test",
        "sys/kernel/debug/kho/in/sub_fdts/memblock",
        "sys/kernel/debug/kho/out/sub_fdts/kexec-metadata",
        "sys/kernel/debug/kho/out/sub_fdts/memblock",
    } <= paths
    assert "sys/kernel/debug/kho/out/sub_fdts/kho_test" not in paths  # restored, not saved


def test_no_reserve_mem_no_memblock_dir() -> None:
    from kho_fs.tree.profile_v4 import V4Profile

    m = machine("console=ttyS0 kho=on")
    paths = {e.path for e in V4Profile(m).entries()}
    assert not any(p.startswith("sys/kernel/debug/memblock") for p in paths)
    assert [b.name for b in kho(m).out_sub_fdts] == ["kexec-metadata"]


def test_kho_off_has_no_kho_dir_but_reserve_mem_param() -> None:
    m = machine("console=ttyS0 reserve_mem=12M:4096:trace")
    assert not kho(m).debugfs
    assert m.kernel.reserve_mem.reserve_mem_param_show() == "trace\t\t(12.0 MiB)\n"


# -- the radix tree (§6.3) ---------------------------------------------------------------------
@given(st.integers(0, (1 << 40) - 1), st.integers(0, 20))
def test_radix_key_matches_the_oracle(pfn: int, order: int) -> None:
    phys = (pfn >> order << order) << 12
    assert kho_radix_encode_key(phys, order) == radix_key(phys, order)
    assert (
        kho_radix_decode_key(radix_key(phys, order))
        == radix_unkey(radix_key(phys, order))
        == (
            phys,
            order,
        )
    )


def test_preserved_map_in_ram_decodes_to_every_preservation() -> None:
    m = machine(test_kho=True)
    x = kho(m)
    root = decode_blob_root(root_bytes(m))["preserved_memory_map"]
    decoded = decode_radix_tree(m.kernel.mem.read, root)
    assert sorted(decoded) == sorted(x.preserved_blocks())
    starts = {p for p, _ in decoded}
    region = m.region("oops")
    assert region is not None and region.start in starts
    assert x.fdt_page in starts and x.metadata_phys in starts
    # the region's 4096 pages as maximal aligned blocks cover it exactly
    covered = sum(4096 << o for p, o in decoded if region.start <= p < region.end)
    assert covered == region.size


def test_radix_walk_reads_an_oracle_built_tree() -> None:
    ram: dict[int, bytearray] = {}
    nxt = [0x100000]

    def alloc() -> int:
        nxt[0] += 4096
        ram[nxt[0]] = bytearray(4096)
        return nxt[0]

    def write(addr: int, data: bytes) -> None:
        page = addr & ~0xFFF
        ram[page][addr - page : addr - page + len(data)] = data

    def read(addr: int, size: int) -> bytes:
        return bytes(ram.get(addr, bytes(4096))[:size])

    blocks = [(0x7C600000 + i * 4096, 0) for i in range(5)] + [(1 << 40, 9), (0x2000000, 3)]
    root = encode_radix_tree(blocks, alloc, write)
    got = [
        (p + i * (4096 << o), o)
        for p, size, o in walk_radix_runs(read, root)
        for i in range(size // (4096 << o))
    ]
    assert got == decode_radix_tree(read, root)
    assert sorted(got) == sorted(blocks)


def test_preservations_after_the_load_reach_the_next_kernel() -> None:
    """No finalize: the tree is live until exec (§6.3)."""
    m = machine()
    k = m.kernel
    k.kexec.kexec_file_load(make_bzimage(RELEASES["7.2"], 64 << 10), None, k.cmdline)
    page = k.pages.alloc_pages(2)
    k.mem.write(page, b"late" * 4096)
    kho(m).kho_preserve_folio(page, 2)
    m.kexec_exec()
    k = m.kernel
    assert k.memblock.memblock_is_region_reserved(page, 4096 << 2)
    assert k.mem.read(page, 16) == b"late" * 4
    assert kho(m).kho_restore_folio(page) == 2


def test_unpreserve_before_exec_frees_the_block_for_the_next_kernel() -> None:
    m = machine()
    k = m.kernel
    page = k.pages.alloc_pages(0)
    kho(m).kho_preserve_folio(page, 0)
    kho(m).kho_unpreserve_folio(page, 0)
    kexec(m)
    assert not m.kernel.memblock.memblock_is_reserved(page)


def test_preserving_scratch_is_refused() -> None:
    m = machine()
    area = kho(m).scratch[0]
    with pytest.raises(KernelError) as exc:
        kho(m).kho_preserve_pages(area.addr, 1)
    assert exc.value.errno == errno.EINVAL


# -- handover (§4.3, §4.4, §7.2, §16) ----------------------------------------------------------
def test_handover_revives_reserves_and_logs_the_real_lines() -> None:
    m = machine(test_kho=True)
    region = m.region("oops")
    assert region is not None
    m.kernel.mem.write(region.start, b"known bytes" * 100)
    kexec(m)
    k = m.kernel
    lines = k.log.lines()
    relevant = [
        line
        for line in lines
        if line.startswith(("KHO", "Revived", "test_kho", "reserve_mem", "luo"))
    ]
    # the order of the real 7.2.13's second boot (transcript, minus LUO's line)
    assert relevant == [
        "KHO: found kexec handover data.",
        "Revived memory reservation 'oops' from KHO",
        kexec_metadata_line("7.2.13", 1),
        "test_kho: KHO restore succeeded",
    ]
    after = m.region("oops")
    assert after is not None and after.start == region.start
    assert k.mem.read(region.start, 1100) == b"known bytes" * 100
    assert k.memblock.memblock_is_region_reserved(region.start, region.size)
    flags = {r.flags for r in k.memblock.reserved if r.base <= region.start < r.end}
    assert flags and all(f & MEMBLOCK_RSRV_NOINIT for f in flags)
    # the next kernel counts on: record count 2 (transcript, stage 2)
    assert blob_bytes(m, "kexec-metadata") == kexec_metadata("7.2.13", 2)
    assert blob_bytes(m, "kexec-metadata", incoming=True) == REAL_METADATA_1
    kexec(m)
    assert kexec_metadata_line("7.2.13", 2) in m.kernel.log.lines()


def test_incoming_blobs_have_their_blob_size() -> None:
    m = machine(test_kho=True)
    kexec(m)
    x = kho(m)
    assert x.in_fdt is not None
    assert {b.name: b.size for b in x.in_sub_fdts} == {
        "memblock": 210,
        "kho_test": 240,
        "kexec-metadata": 73,
    }


@pytest.mark.parametrize("sender", ["6.19", "7.0", "6.16", "v4"])
def test_kho_v1_senders_are_refused_as_incompatible(sender: str) -> None:
    with Machine.create(memory=1 << 30, cmdline=CMD, release=sender) as m:
        x = m.kernel.kho
        if sender == "v4":
            x.active_store(b"1")  # type: ignore[union-attr]
        else:
            x.finalize_store(1)  # type: ignore[union-attr]
        kexec(m, "7.2")
        lines = m.kernel.log.lines()
        bad = [line for line in lines if "incompatible with 'kho-v4': 1" in line]
        assert len(bad) == 1 and bad[0].startswith("KHO: setup: handover FDT (0x")
        assert lines[lines.index(bad[0]) + 1] == "KHO: disabling KHO revival"
        assert not m.kernel.handover


@pytest.mark.parametrize("receiver", ["6.16", "6.18", "7.0"])
def test_7_2_is_refused_by_kho_v1_receivers(receiver: str) -> None:
    m = machine()
    kexec(m, receiver)
    lines = m.kernel.log.lines()
    assert any("is incompatible with 'kho-v1': 1" in line for line in lines)
    assert "KHO: disabling KHO revival: -22" in lines


def test_zero_map_or_missing_blob_size_is_handled_like_7_2() -> None:
    m = machine()
    x = kho(m)
    root = bytearray(root_bytes(m))
    at = root.index(struct.pack("<Q", x.radix.root))  # type: ignore[union-attr]
    root[at : at + 8] = bytes(8)
    m.kernel.mem.write(x.fdt_page, bytes(root))
    kexec(m)
    lines = m.kernel.log.lines()
    assert "KHO: disabling KHO revival" in lines  # no number in 7.2
    assert not m.kernel.handover


# -- command line: kho_scratch (4 MiB) and reserve_mem's 7.1 messages (§3, §8) -----------------
@pytest.mark.parametrize(
    ("value", "given", "sizes"),
    [
        ("16M,512M,256M", (16, 512, 256), (16, 512, 256)),
        ("1M,1M,1M", (1, 1, 1), (4, 4, 4)),
        ("6M,0,10M", (6, 0, 10), (8, 0, 12)),
    ],
)
def test_explicit_scratch_sizes_round_to_4_mib(
    value: str, given: tuple[int, int, int], sizes: tuple[int, int, int]
) -> None:
    m = machine(f"console=ttyS0 kho=on kho_scratch={value}")
    low, glob, node = given
    message = f"KHO: scratch areas: lowmem: {low}MiB global: {glob}MiB pernode: {node}MiB"
    assert message in m.kernel.log.lines()
    want = scratch_sizes_blob(
        scale=0, lowmem=low << 20, global_size=glob << 20, pernode=node << 20, k_nodes=[0]
    )
    assert want == [s << 20 for s in sizes]
    assert kho(m).scratch_len_show() == "".join(f"{s:#x}\n" for s in want)
    assert all(a.addr % BLOB_SCRATCH_ALIGN == 0 for a in kho(m).scratch)


@pytest.mark.parametrize("value", ["512M,256M", "0,0,0", "1M,2M,3Mx", "", "abc%"])
def test_malformed_scratch(value: str) -> None:
    m = machine(f"console=ttyS0 kho=on kho_scratch={value}")
    assert "Malformed early option 'kho_scratch'" in m.kernel.log.lines()


def test_default_scratch_on_2_gib_has_an_empty_global_area() -> None:
    m = machine()
    lines = kho(m).scratch_len_show().splitlines()
    assert len(lines) == 3 and lines[1] == "0x0"  # as on the real 2 GiB VM (§16)
    assert all(int(v, 16) % BLOB_SCRATCH_ALIGN == 0 for v in lines)


def test_reserve_mem_failures_are_logged() -> None:
    regions = " ".join(f"reserve_mem=1M:4096:r{i}" for i in range(8))
    cmd = (
        "console=ttyS0 kho=on reserve_mem=4M:oops reserve_mem=1M:4096:r0 "
        f"{regions} reserve_mem=1M:4096:late reserve_mem=1M:4096: reserve_mem=64G:4096:huge"
    )
    lines = machine(cmd).kernel.log.lines()
    # the room check comes first: once 8 regions exist even a malformed option is "no room"
    assert lines.count(RESERVE_MEM_MALFORMED) == 1
    assert reserve_mem_duplicate("r0") in lines
    assert lines.count(RESERVE_MEM_NO_ROOM) == 3
    m = machine("console=ttyS0 kho=on reserve_mem=64G:4096:huge")
    assert RESERVE_MEM_ALLOC_FAILED in m.kernel.log.lines()


def test_older_releases_stay_silent_about_reserve_mem() -> None:
    with Machine.create(memory=1 << 30, cmdline="kho=on reserve_mem=4M:oops", release="7.0") as m:
        assert RESERVE_MEM_MALFORMED not in m.kernel.log.lines()


# -- §9 size formatter -------------------------------------------------------------------------
@settings(max_examples=300)
@given(st.integers(1, (1 << 64) - 1))
def test_string_get_size_matches_the_oracle(n: int) -> None:
    assert string_get_size(n) == reserve_mem_param_size(n)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (100, "100 B"),
        (5, "5.00 B"),
        (64 << 20, "64.0 MiB"),
        (16 << 20, "16.0 MiB"),
        (100 << 20, "100 MiB"),
        (1 << 30, "1.00 GiB"),
        (3 << 29, "1.50 GiB"),
        (4096, "4.00 KiB"),
        (1000, "1000 B"),
    ],
)
def test_spec_size_examples(size: int, text: str) -> None:
    assert string_get_size(size) == text


def test_reserve_mem_param_lines() -> None:
    cmd = (
        "console=ttyS0 kho=on reserve_mem=1000:64:a reserve_mem=5M:4096:b reserve_mem=1536M:4096:c"
    )
    m = machine(cmd, memory=4 << 30)
    assert m.kernel.reserve_mem.reserve_mem_param_show() == (
        reserve_mem_param_line("a", 1000)
        + reserve_mem_param_line("b", 5 << 20)
        + reserve_mem_param_line("c", 1536 << 20)
    )


# -- test_kho and NUMA -------------------------------------------------------------------------
def test_test_kho_round_trip_twice() -> None:
    m = machine("console=ttyS0 kho=on panic=-1 test_kho.max_mem=2M", test_kho=True)
    kexec(m)
    assert "test_kho: KHO restore succeeded" in m.kernel.log.lines()
    kexec(m)  # restored, not saved: the third kernel finds no kho_test and saves afresh
    assert "test_kho: KHO restore succeeded" not in m.kernel.log.lines()
    assert any(b.name == "kho_test" for b in kho(m).out_sub_fdts)


def test_two_nodes_regions_and_scratch() -> None:
    m = machine("console=ttyS0 kho=on reserve_mem=64M:2M:big", memory=4 << 30, nodes=2)
    assert len(kho(m).scratch_phys_show().splitlines()) == 4
    region = m.region("big")
    assert region is not None
    kexec(m)
    after = m.region("big")
    assert after is not None and after.start == region.start
