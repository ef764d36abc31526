"""KHO v4 details beyond the checklist: crafted handovers (6.3, 3.3), revival rules (6.5),
the `mem` walk (6.6), scratch sizing edge cases (2.3, 7.1, 7.4), FDT sizes (4.3, 5.5) and
the participant contract (4.2)."""

from __future__ import annotations

import errno
import struct

import pytest
from kho_model_helpers import (
    FOUND_LINE,
    PLAIN_KERNEL,
    SZ_2M,
    Recorder,
    debugfs_lines,
    driver,
    expect_errno,
    flags_covering,
    inside_any,
    is_reserved,
    kho_cycle,
    kmem,
    mem_writer,
    round_down,
)

from kho_fs.model.drivers import KhoDriver
from kho_fs.model.fdt import FdtSw, fdt_check_full
from kho_fs.model.kho import KEXEC_KHO_DUMP
from kho_fs.model.memblock import memblock_debug_show
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE, NOTIFY_OK, notifier_from_errno

LOW = 0x40000000  # 1 GiB: free RAM far from every allocation of the emulated kernels
KHO_NODE = 0x1800  # where the model's boot_params segment keeps the type-10 node (kexec.py)


def load(m, cmdline=None):
    k = m.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline if cmdline is None else cmdline)
    return k.kexec.kexec_image


def craft_fdt(build) -> bytes:
    """An FDT written with libfdt's sequential writer: ``build(sw)`` fills the root node."""
    sw = FdtSw(4096)
    assert sw.finish_reservemap() == 0 and sw.begin_node("") == 0
    assert sw.property_string("compatible", "kho-v1") == 0
    build(sw)
    assert sw.end_node() == 0 and sw.finish() == 0
    blob = sw.blob()
    assert fdt_check_full(blob) == 0
    return blob


def reserve_mem_tree(children, top_compat="reserve_mem-v1"):
    """``children``: (name, compatible, mem payload or None)."""

    def build(sw):
        sw.begin_node("reserve_mem")
        sw.property_string("compatible", top_compat)
        for name, compat, mem in children:
            sw.begin_node(name)
            sw.property_string("compatible", compat)
            if mem is not None:
                sw.property("mem", mem)
            sw.end_node()
        sw.end_node()

    return craft_fdt(build)


def exec_with_fdt(m, blob, cmdline):
    img = load(m, cmdline)
    assert len(blob) <= img.kho_fdt.memsz
    img.kho_fdt.buffer = blob
    return m.kexec_exec()


def set_kho_node(img, **fields):
    """Patch fields of the type-10 node inside the boot_params segment buffer."""
    names = ["dt_addr", "dt_size", "scratch_addr", "scratch_size"]
    buf = bytearray(img.boot_params.buffer)
    off = KHO_NODE
    assert struct.unpack_from("<QII", buf, off)[1:] == (10, 32)
    assert struct.unpack_from("<Q", buf, 0x250)[0] == img.boot_params.mem + off
    for name, value in fields.items():
        struct.pack_into("<Q", buf, off + 16 + 8 * names.index(name), value)
    img.boot_params.buffer = bytes(buf)


# -- crafted handovers (6.3) -----------------------------------------------------------------------


def test_fdt_outside_ram_is_invalid(seed):
    img = load(seed)
    set_kho_node(img, dt_addr=0xFFFFF0000000)
    k2 = seed.kexec_exec()
    assert "KHO: setup: kexec handover FDT is invalid (0xfffff0000000)" in k2.log.lines()
    assert not k2.handover and FOUND_LINE not in k2.log.lines()
    assert k2.kho.sysfs and k2.kho.scratch_len_show() == "0x20000000\n0x10000000\n"


def test_empty_scratch_table(seed):
    img = load(seed)
    start = seed.region("trace").start
    set_kho_node(img, scratch_size=0)
    k2 = seed.kexec_exec()
    lines = k2.log.lines()
    assert f"KHO: setup: failed to memremap kexec scratch (0x{img.kho_scratch.mem:x})" in lines
    assert FOUND_LINE not in lines
    # the FDT stays recorded: dt_fw, revival and the mem walk still happen
    assert k2.kho.dt_fw == img.kho_fdt.buffer
    assert "Revived memory reservation 'trace' from KHO" in lines
    assert seed.region("trace").start == start
    assert is_reserved(k2, start, 64 << 20)
    assert not any(ln.flag == "KHO_SCRATCH" for ln in debugfs_lines(k2.memblock.memory))
    assert k2.kho.scratch_phys_show() == "" and k2.kho.scratch_len_show() == ""
    # 3.3 check 3: no scratch area -> ENOMEM, before the "same value" check; EINVAL first
    expect_errno(errno.ENOMEM, k2.kho.active_store, b"1")
    expect_errno(errno.ENOMEM, k2.kho.active_store, b"0")
    expect_errno(errno.EINVAL, k2.kho.active_store, b"2")
    assert k2.kho.active_show() == "0\n"


def test_handover_reserves_fdt_table_and_setup_data(seed):
    img = load(seed)
    k2 = seed.kexec_exec()
    assert k2.kho.fdt_in_phys == img.kho_fdt.mem
    assert flags_covering(k2.memblock.reserved, img.kho_fdt.mem, len(img.kho_fdt.buffer)) == {
        "NONE"
    }
    # exact sizes: the FDT's total size and 16 bytes per area, nothing more
    assert not is_reserved(k2, img.kho_fdt.mem + len(img.kho_fdt.buffer), 1)
    assert not is_reserved(k2, img.kho_scratch.mem + 32, 1)
    node = img.boot_params.mem + KHO_NODE
    assert flags_covering(k2.memblock.reserved, node, 48) == {"RSV_KERN"}


# -- revival rules (6.5) ---------------------------------------------------------------------------


def test_revival_follows_the_fdt(seed):
    blob = reserve_mem_tree([("trace", "reserve_mem_map-v1", kmem((LOW, 64 << 20)))])
    k2 = exec_with_fdt(seed, blob, seed.kernel.cmdline)
    assert "Revived memory reservation 'trace' from KHO" in k2.log.lines()
    assert seed.region("trace").start == LOW
    assert flags_covering(k2.memblock.reserved, LOW, 64 << 20) == {"NONE"}


def test_unknown_top_compatible(seed):
    blob = reserve_mem_tree(
        [("trace", "reserve_mem_map-v1", kmem((LOW, 64 << 20)))], top_compat="other-v1"
    )
    k2 = exec_with_fdt(seed, blob, seed.kernel.cmdline)
    assert "Node '/reserve_mem' has unknown compatible" in k2.log.lines()
    assert seed.region("trace").start != LOW
    assert inside_any(k2.kho.scratch, seed.region("trace").start, 64 << 20)
    assert flags_covering(k2.memblock.reserved, LOW, 64 << 20) == {
        "NONE"
    }  # mem walk still reserves


def test_unknown_child_compatible_skips_to_next_child(seed):
    blob = reserve_mem_tree(
        [
            ("trace", "bogus-v1", kmem((LOW, 64 << 20))),
            ("trace", "reserve_mem_map-v1", kmem((LOW + (128 << 20), 64 << 20))),
        ]
    )
    k2 = exec_with_fdt(seed, blob, seed.kernel.cmdline)
    assert "Node '/reserve_mem/trace' has unknown compatible" in k2.log.lines()
    assert "Revived memory reservation 'trace' from KHO" in k2.log.lines()
    assert seed.region("trace").start == LOW + (128 << 20)


def test_multi_entry_mem_never_revives(seed):
    blob = reserve_mem_tree(
        [("trace", "reserve_mem_map-v1", kmem((LOW, 64 << 20), (LOW + (256 << 20), 1 << 20)))]
    )
    k2 = exec_with_fdt(seed, blob, seed.kernel.cmdline)
    lines = k2.log.lines()
    assert not any(line.startswith(("Revived", "KHO reserved_mem")) for line in lines)
    assert inside_any(k2.kho.scratch, seed.region("trace").start, 64 << 20)
    assert (
        "kho-fs: /reserve_mem/trace: mem property has 2 entries; "
        "only the first is reserved (v4 behaviour)" in lines
    )
    assert is_reserved(k2, LOW, 64 << 20) and not is_reserved(k2, LOW + (256 << 20), 1 << 20)


def test_wrong_alignment(seed):
    start = seed.region("trace").start
    assert start % (1 << 30)
    k2 = kho_cycle(seed, "reserve_mem=64M:1G:trace kho=on")
    assert (
        f"KHO reserved_mem 'trace' has wrong alignment (0x40000000, 0x{start:x})" in k2.log.lines()
    )
    new = seed.region("trace")
    assert new.start % (1 << 30) == 0 and inside_any(k2.kho.scratch, new.start, new.size)


def test_label_gone_range_stays_reserved(seed):
    start = seed.region("trace").start
    k2 = kho_cycle(seed, "kho=on")
    assert k2.reserve_mem.table == []
    assert flags_covering(k2.memblock.reserved, start, 64 << 20) == {"NONE"}


def test_latin1_name_revives(machine):
    m = machine("kho=on reserve_mem=4M:4096:tr\xe2ce\xff")
    start = m.region("tr\xe2ce\xff").start
    k2 = kho_cycle(m)
    assert "Revived memory reservation 'tr\xe2ce\xff' from KHO" in k2.log.lines()
    assert m.region("tr\xe2ce\xff").start == start


def test_revived_and_fresh_regions_keep_table_order(seed):
    k2 = kho_cycle(seed, "reserve_mem=1M:4096:first reserve_mem=64M:4096:trace kho=on")
    assert [r.name for r in k2.reserve_mem.table] == ["first", "trace"]


def test_region_too_big_for_scratch_is_dropped_silently(seed):
    k2 = kho_cycle(seed, "reserve_mem=64M:4096:trace reserve_mem=1G:4096:huge kho=on")
    assert seed.region("huge") is None
    assert not any("huge" in line for line in k2.log.lines()[2:])
    assert k2.panic is None


# -- the mem walk (6.6)


def test_root_mem_property_reserved(machine):
    m = machine("kho=on", drivers=[mem_writer("", kmem((LOW, 2 << 20)))])
    k2 = kho_cycle(m)
    assert flags_covering(k2.memblock.reserved, LOW, 2 << 20) == {"NONE"}


@pytest.mark.parametrize("length", [8, 24, 17])
def test_mem_not_multiple_of_16_skipped_silently(machine, length):
    payload = kmem((LOW, 2 << 20), (LOW + (8 << 20), 2 << 20))[:length]
    m = machine("kho=on", drivers=[mem_writer("odd", payload)])
    k2 = kho_cycle(m)
    assert not is_reserved(k2, LOW, 16 << 20)
    assert not any(line.startswith("kho-fs:") for line in k2.log.lines())


def test_three_entry_message(machine):
    payload = kmem((LOW, 1 << 20), (LOW + (4 << 20), 1 << 20), (LOW + (8 << 20), 1 << 20))
    m = machine("kho=on", drivers=[mem_writer("three", payload)])
    k2 = kho_cycle(m)
    assert (
        "kho-fs: /three: mem property has 3 entries; only the first is reserved (v4 behaviour)"
        in k2.log.lines()
    )
    assert is_reserved(k2, LOW, 1 << 20)
    assert not is_reserved(k2, LOW + (4 << 20), 1 << 20) and not is_reserved(
        k2, LOW + (8 << 20), 1 << 20
    )


# -- scratch sizing edge cases (2.3, 7.1, 7.4)


@pytest.mark.parametrize(
    ("opt", "line", "lengths"),
    [
        ("1536K,1M", "KHO: scratch areas: global: 1MB pernode: 1MB", "0x200000\n0x200000\n"),
        (
            "16M,512M,256M",
            "KHO: scratch areas: global: 16MB pernode: 512MB",
            "0x1000000\n0x20000000\n",
        ),
        ("3M,5M", "KHO: scratch areas: global: 3MB pernode: 5MB", "0x400000\n0x600000\n"),
    ],
)
def test_explicit_sizes_round_to_pageblock(machine, opt, line, lengths):
    k = machine(f"kho=on kho_scratch={opt}").kernel
    assert line in k.log.lines()
    assert k.kho.scratch_len_show() == lengths


def test_hex_percent(machine):
    k = machine("kho=on kho_scratch=0x10%").kernel
    assert "KHO: scratch scale is 16 percent" in k.log.lines()


@pytest.mark.parametrize("opt", ["100G,1G", "1G,100G", "9000%"])
def test_scratch_failure_disables_kho_silently(machine, opt):
    k = machine(f"kho=on kho_scratch={opt}").kernel
    off = machine("kho=off").kernel
    assert k.kho.sysfs is False and k.kho.scratch == []
    assert k.log.lines()[2:] == [ln for ln in k.log.lines()[2:] if ln.startswith("KHO: scratch")]
    # everything allocated so far (table, global area) was freed again
    assert memblock_debug_show(k.memblock.reserved) == memblock_debug_show(off.memblock.reserved)


def test_zero_percent_zero_size_areas(machine):
    m = machine("kho=on kho_scratch=0%")
    k = m.kernel
    off = machine("kho=off").kernel
    assert k.kho.scratch_len_show() == "0x0\n0x0\n"
    # nothing reserved for the areas: only the 32-byte table differs from a KHO-less boot
    assert k.memblock.reserved.total_size == off.memblock.reserved.total_size + 32
    # address: end of the highest free range, rounded down to 2 MiB (7.4 Decision)
    free = []
    for mem in k.memblock.memory:
        pos = mem.base
        for r in k.memblock.reserved:
            if r.end <= pos or r.base >= mem.end:
                continue
            if r.base > pos:
                free.append((pos, r.base))
            pos = max(pos, r.end)
        if pos < mem.end:
            free.append((pos, mem.end))
    want = next(
        round_down(end, SZ_2M) for start, end in reversed(free) if round_down(end, SZ_2M) >= start
    )
    assert [a.addr for a in k.kho.scratch] == [want, want]


@pytest.mark.parametrize("nodes", [2, 3])
def test_default_node_sizes(machine, nodes):
    m = machine("kho=on", nodes=nodes)
    k = m.kernel
    for nid, area in enumerate(k.kho.scratch[1:]):
        node_ram = sum(r.size for r in k.memblock.memory if r.nid == nid)
        assert area.size == -(-2 * (node_ram // 64) // SZ_2M) * SZ_2M
        assert flags_covering(k.memblock.reserved, area.addr, area.size) == {"RSV_KERN"}


# -- FDT sizes (4.3, 5.5)


def fdt_total(names):
    return 111 if not names else 163 + sum(68 + 4 * -(-(len(n) + 1) // 4) for n in names)


@pytest.mark.parametrize(
    "names",
    [
        [],
        ["oops"],
        ["oops", "trace"],
        ["a"],
        ["abc"],
        ["abcd"],
        ["abcdefgh"],
        ["abcdefghijkl"],
        [f"name{i:02d}-xxxxxxx" for i in range(8)],
    ],
)
def test_fdt_size_formula(machine, names):
    opts = " ".join(f"reserve_mem=1M:4096:{n}" for n in names)
    k = machine(f"kho=on {opts}").kernel
    assert [r.name for r in k.reserve_mem.table] == names
    k.kho.active_store(b"1")
    total = fdt_total(names)
    assert len(k.kho.fdt) == total
    assert fdt_check_full(k.kho.fdt) == 0
    assert {(): 111, ("oops",): 239, ("oops", "trace"): 315}.get(tuple(names), total) == total
    if len(names) == 8:
        assert total == 835


@pytest.mark.parametrize("names", [["oops", "trace"], ["abcdefghijklmno"]])
def test_dt_max_boundaries_general(machine, names):
    opts = " ".join(f"reserve_mem=1M:4096:{n}" for n in names)
    k = machine(f"kho=on {opts}").kernel
    t = fdt_total(names)
    for dt_max, err in ((102, -3), (103, -1), (t - 9, -1), (t - 8, -3), (t - 1, -3)):
        k.kho.dt_max_store(str(dt_max).encode())
        expect_errno(errno.EINVAL, k.kho.active_store, b"1")
        assert k.log.lines()[-1] == f"KHO: failed to serialize state: {err}", dt_max
    k.kho.dt_max_store(str(t).encode())
    k.kho.active_store(b"1")
    assert len(k.kho.fdt) == t


# -- participants (4.2) ----------------------------------------------------------------------------


def returning(code):
    class Fixed(KhoDriver):
        name = f"fixed-{code:#x}"

        def kho_dump(self, fdt):
            return code

    return Fixed


class Raising(KhoDriver):
    name = "raising"

    def kho_dump(self, fdt):
        raise RuntimeError("participant bug")


@pytest.mark.parametrize(
    ("drv", "err"),
    [
        (returning(NOTIFY_BAD), -1),
        (returning(notifier_from_errno(-errno.ENOMEM)), -12),
        (returning(notifier_from_errno(-errno.EBUSY)), -16),
        (Raising, -1),
    ],
)
def test_participant_failure_errno(machine, drv, err):
    m = machine("kho=on", drivers=[drv, Recorder])
    k = m.kernel
    expect_errno(errno.EINVAL, k.kho.active_store, b"1")
    assert k.log.lines()[-1] == f"KHO: failed to serialize state: {err}"
    assert driver(k, Recorder).events == []  # the chain stopped before the next participant
    assert k.kho.fdt is None and k.kho.active_show() == "0\n"


@pytest.mark.parametrize("code", [NOTIFY_DONE, NOTIFY_OK])
def test_participant_success_codes(machine, code):
    m = machine("kho=on", drivers=[returning(code), Recorder])
    k = m.kernel
    k.kho.active_store(b"1")
    assert driver(k, Recorder).events == [KEXEC_KHO_DUMP]


def test_reserve_mem_participant_runs_first(machine):
    m = machine("kho=on reserve_mem=1M:4096:oops", drivers=[mem_writer("zzz", kmem((LOW, 4096)))])
    k = m.kernel
    k.kho.active_store(b"1")
    blob = k.kho.fdt
    assert fdt_check_full(blob) == 0
    assert 0 < blob.index(b"reserve_mem\0") < blob.index(b"zzz\0")


def test_reserve_mem_failure_stops_chain(machine):
    m = machine("kho=on reserve_mem=16M:4096:oops", drivers=[Recorder])
    k = m.kernel
    k.kho.dt_max_store(b"200")
    expect_errno(errno.EINVAL, k.kho.active_store, b"1")
    assert k.log.lines()[-1] == "KHO: failed to serialize state: -1"
    assert driver(k, Recorder).events == []
