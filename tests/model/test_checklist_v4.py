"""Spec kho-v4.md section 10 (acceptance checklist), item by item, at model level.

Items about file modes, ownership and open() checks (8, 9, 11, 19) are tested only as far
as the model can show them; the mount tests cover the rest.
"""

from __future__ import annotations

import errno
import re
import struct
import subprocess

import libfdt
import pytest
from kho_model_helpers import (
    FOUND_LINE,
    PLAIN_KERNEL,
    SZ_2M,
    SZ_16M,
    VECTORS,
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
    round_up,
)

from kho_fs.model.kho import KEXEC_KHO_ABORT, KEXEC_KHO_DUMP
from kho_fs.model.memblock import MEMBLOCK_RSRV_KERN

HEX_LINE = re.compile(r"^0x[0-9a-f]+$")
BOOT_LINES = 2  # "Linux version ..." and "Command line: ..."

# memory size and option that put one 16 MiB region `oops` at 0x23fe00000 (spec 5.6 inputs)
REF_MEMORY = 0x1C8600000
REF_OOPS = "reserve_mem=16M:2M:oops"


def extra_log(k) -> list[str]:
    """dmesg after the two boot banner lines."""
    lines = k.log.lines()
    assert lines[0].startswith("Linux version ")
    assert lines[1] == f"Command line: {k.cmdline}"
    return lines[BOOT_LINES:]


def dtc_decode(blob: bytes) -> str:
    proc = subprocess.run(
        ["/usr/bin/dtc", "-I", "dtb", "-O", "dts", "-"], input=blob, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def dtc_cells(payload: bytes) -> str:
    """How dtc prints a raw 16-byte `mem` value: four BE cells, ``0x%02x`` each (spec 5.4)."""
    return " ".join(f"0x{c:02x}" for c in struct.unpack(">4I", payload))


def kernel_sizes(k) -> list[int]:
    return [a.size for a in k.kho.scratch]


# -- 1..7: boot options and the fresh sysfs directory ----------------------------------------


@pytest.mark.parametrize(
    "cmdline", ["", "console=ttyS0", "kho=off", "kho=0", "kho=n", "kho=on kho=off"]
)
def test_item_01_no_kho_dir_without_kho_true(machine, cmdline):
    k = machine(cmdline).kernel
    assert k.kho.sysfs is False
    assert k.kho.scratch == []
    assert k.kho.fdt is None and k.kho.dt_fw is None
    assert k.panic is None


@pytest.mark.parametrize("value", ["maybe", "e", "enable", "", None, "2", " 1"])
def test_item_02_malformed_kho_rejected(machine, value):
    opt = "kho" if value is None else f"kho={value}"
    k = machine(f"console=ttyS0 {opt}").kernel
    assert "Malformed early option 'kho'" in k.log.lines()
    assert k.kho.sysfs is False


@pytest.mark.parametrize("value", ["on", "1", "yes", "true", "On", "y", "T"])
def test_item_02_kho_true_values_enable(machine, value):
    k = machine(f"kho={value}").kernel
    assert k.kho.sysfs is True
    assert "Malformed early option 'kho'" not in k.log.lines()
    assert len(k.kho.scratch) == 2


def test_item_02_malformed_kho_keeps_previous_value(machine):
    k = machine("kho=on kho=maybe").kernel
    assert "Malformed early option 'kho'" in k.log.lines()
    assert k.kho.sysfs is True


def test_item_03_single_scratch_size_malformed_keeps_default(machine):
    k = machine("kho=on kho_scratch=512M").kernel
    base = machine("kho=on").kernel
    assert extra_log(k) == ["Malformed early option 'kho_scratch'"]
    assert k.kho.sysfs
    assert kernel_sizes(k) == kernel_sizes(base)  # the 200 % default is kept
    assert kernel_sizes(k)[0] != 512 << 20


def test_item_04_explicit_scratch_sizes(machine):
    k = machine("kho=on kho_scratch=512M,256M").kernel
    assert extra_log(k) == ["KHO: scratch areas: global: 512MB pernode: 256MB"]
    assert k.kho.scratch_len_show() == "0x20000000\n0x10000000\n"


def rsrv_kern_total(k) -> int:
    return sum(r.size for r in k.memblock.reserved if r.flags & MEMBLOCK_RSRV_KERN)


def test_item_05_scratch_scale_percent(machine):
    k = machine("kho=on kho_scratch=150%").kernel
    base = machine("kho=on").kernel
    assert extra_log(k) == ["KHO: scratch scale is 150 percent"]
    # Same kernel footprint S in both machines: S = all RSRV_KERN minus the areas themselves.
    s = rsrv_kern_total(base) - sum(kernel_sizes(base))
    assert rsrv_kern_total(k) - sum(kernel_sizes(k)) == s
    assert kernel_sizes(k)[0] == round_up(s * 150 // 100, SZ_2M)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_item_06_scratch_files_one_line_per_area(machine, nodes):
    k = machine("kho=on", nodes=nodes).kernel
    phys = k.kho.scratch_phys_show()
    length = k.kho.scratch_len_show()
    for text in (phys, length):
        assert text.endswith("\n")
        lines = text.split("\n")[:-1]
        assert len(lines) == nodes + 1
        assert all(HEX_LINE.match(line) for line in lines), text
    assert [int(x, 16) for x in phys.split()] == [a.addr for a in k.kho.scratch]
    assert [int(x, 16) for x in length.split()] == [a.size for a in k.kho.scratch]


def test_item_06_node_areas_lie_in_their_node(machine):
    m = machine("kho=on", nodes=2)
    k = m.kernel
    for nid, area in enumerate(k.kho.scratch[1:]):
        assert any(
            r.nid == nid and r.start <= area.addr and area.addr + area.size <= r.end
            for r in m.mem.ram
        )


def test_item_07_fresh_boot_state(machine):
    k = machine("kho=on").kernel
    assert k.kho.active_show() == "0\n"
    assert k.kho.dt_max_show() == "0xa00000\n"
    assert k.kho.fdt is None


# -- 8..20: the sysfs handlers ---------------------------------------------------------------------


def test_item_08_attribute_handlers(machine):
    """Model side of item 8: the four attribute files have show handlers; only the two
    0600 files (active, dt_max) have store handlers, the 0400 scratch files none."""
    k = machine("kho=on").kernel
    for name in ("active", "dt_max", "scratch_phys", "scratch_len"):
        text = getattr(k.kho, f"{name}_show")()
        assert isinstance(text, str) and text.endswith("\n") and len(text.encode()) <= 4096
    assert callable(k.kho.active_store) and callable(k.kho.dt_max_store)
    assert not hasattr(k.kho, "scratch_phys_store")
    assert not hasattr(k.kho, "scratch_len_store")


def test_item_09_read_only_files_have_no_writer(machine):
    """Model side of item 9: scratch files and `dt` cannot be written through the model."""
    k = machine("kho=on").kernel
    k.kho.active_store(b"1")
    assert isinstance(k.kho.fdt, bytes)  # immutable
    assert not hasattr(k.kho, "dt_store") and not hasattr(k.kho, "scratch_phys_store")


@pytest.mark.parametrize("buf", [b"2", b"enable", b"\n", b"", b" 1", b"o", b"e", b"d", b"\x001"])
def test_item_10_active_rejects(machine, buf):
    k = machine("kho=on").kernel
    expect_errno(errno.EINVAL, k.kho.active_store, buf)
    assert k.kho.active_show() == "0\n"
    assert k.kho.fdt is None


@pytest.mark.parametrize("buf", [b"1\n", b"yes", b"on", b"1", b"true", b"Y", b"1abc"])
def test_item_10_active_accepts(machine, buf):
    k = machine("kho=on").kernel
    k.kho.active_store(buf)
    assert k.kho.active_show() == "1\n"
    assert k.kho.fdt is not None
    k.kho.active_store(b"0\n")
    assert k.kho.active_show() == "0\n"


@pytest.mark.parametrize(
    ("cmdline", "size"), [("kho=on", 111), ("kho=on reserve_mem=16M:4096:oops", 239)]
)
def test_item_11_dt_size_and_dtc_decodes(machine, cmdline, size):
    k = machine(cmdline).kernel
    k.kho.active_store(b"1")
    fdt = k.kho.fdt
    assert fdt is not None and len(fdt) == size
    assert struct.unpack(">I", fdt[4:8])[0] == size
    dts = dtc_decode(fdt)
    assert 'compatible = "kho-v1";' in dts
    region = k.reserve_mem.table[0] if k.reserve_mem.table else None
    if region is None:
        assert "reserve_mem" not in dts
    else:
        assert 'compatible = "reserve_mem-v1";' in dts
        assert "oops {" in dts
        assert 'compatible = "reserve_mem_map-v1";' in dts
        assert f"mem = <{dtc_cells(kmem((region.start, region.size)))}>;" in dts


def test_item_12_dt_equals_reference_no_regions(machine):
    k = machine("kho=on").kernel
    k.kho.active_store(b"1")
    assert k.kho.fdt == (VECTORS / "v4-no-regions.dtb").read_bytes()


def test_item_12_dt_equals_reference_oops(machine):
    k = machine(f"kho=on {REF_OOPS}", memory=REF_MEMORY).kernel
    region = k.reserve_mem.table[0]
    assert (region.name, region.start, region.size) == ("oops", 0x23FE00000, SZ_16M)
    k.kho.active_store(b"1")
    ref = (VECTORS / "v4-oops-16M-at-0x23fe00000.dtb").read_bytes()
    assert len(ref) == 239
    assert k.kho.fdt == ref
    assert "mem = <0xe03f 0x2000000 0x01 0x00>;" in dtc_decode(k.kho.fdt)


def test_item_12_reference_layout_any_address(machine):
    """The oops blob differs from the reference only in the 16 `mem` payload bytes (5.7)."""
    k = machine("kho=on reserve_mem=16M:4096:oops").kernel
    k.kho.active_store(b"1")
    ref = bytearray((VECTORS / "v4-oops-16M-at-0x23fe00000.dtb").read_bytes())
    region = k.reserve_mem.table[0]
    ref[0xB4 + 12 : 0xB4 + 28] = kmem((region.start, region.size))
    assert k.kho.fdt == bytes(ref)


def test_item_13_idempotent_active_writes(machine):
    m = machine("kho=on", drivers=[Recorder])
    k = m.kernel
    rec = driver(k, Recorder)
    k.kho.active_store(b"0")  # inactive -> 0: silent no-op
    assert rec.events == [] and k.kho.fdt is None and k.kho.active_show() == "0\n"
    log_before = list(k.log.lines())
    k.kho.active_store(b"1")
    assert rec.events == [KEXEC_KHO_DUMP]
    fdt, serial = k.kho.fdt, k.kho.fdt_serial
    k.kho.active_store(b"1")
    k.kho.active_store(b"yes\n")
    assert rec.events == [KEXEC_KHO_DUMP]
    assert k.kho.fdt is fdt and k.kho.fdt_serial == serial
    assert k.kho.active_show() == "1\n"
    assert k.log.lines() == log_before


def test_item_14_dt_max_busy_while_active(machine):
    k = machine("kho=on").kernel
    k.kho.active_store(b"1")
    for buf in (b"0xa00000", b"0xa00000\n", b"4096", b"10485760"):
        expect_errno(errno.EBUSY, k.kho.dt_max_store, buf)
    assert k.kho.dt_max_show() == "0xa00000\n"
    k.kho.active_store(b"0")
    k.kho.dt_max_store(b"4096")
    assert k.kho.dt_max_show() == "0x1000\n"


@pytest.mark.parametrize(
    "buf", [b"0x", b"08", b"-1", b" 1", b"4K", b"4096 ", b"4096\n\n", b"", b"++1"]
)
def test_item_15_dt_max_rejects(machine, buf):
    k = machine("kho=on").kernel
    expect_errno(errno.EINVAL, k.kho.dt_max_store, buf)
    assert k.kho.dt_max_show() == "0xa00000\n"


@pytest.mark.parametrize("buf", [b"0x100\n", b"+256", b"0400", b"256", b"0X100"])
def test_item_15_dt_max_accepts(machine, buf):
    k = machine("kho=on").kernel
    k.kho.dt_max_store(buf)
    assert k.kho.dt_max_show() == "0x100\n"


def test_item_15_dt_max_overflow_is_einval(machine):
    k = machine("kho=on").kernel
    expect_errno(errno.EINVAL, k.kho.dt_max_store, b"18446744073709551616")
    k.kho.dt_max_store(b"18446744073709551615")
    assert k.kho.dt_max_show() == "0xffffffffffffffff\n"


def test_item_16_dt_max_110_fails_111_works(machine):
    k = machine("kho=on").kernel
    k.kho.dt_max_store(b"110")
    expect_errno(errno.EINVAL, k.kho.active_store, b"1")
    assert extra_log(k)[-1] == "KHO: failed to serialize state: -3"
    assert k.kho.fdt is None and k.kho.active_show() == "0\n"
    k.kho.dt_max_store(b"111")
    k.kho.active_store(b"1")
    assert k.kho.active_show() == "1\n" and len(k.kho.fdt) == 111


@pytest.mark.parametrize(
    ("dt_max", "err"),
    [
        (200, -1),
        (235, -3),
        (40, -22),
        (2147483648, -12),
        (0, -22),
        (47, -22),
        (48, -3),
        (102, -3),
        (103, -1),
        (230, -1),
        (231, -3),
        (238, -3),
        ((1 << 64) - 1, -12),
    ],
)
def test_item_17_dt_max_outcomes_with_oops(machine, dt_max, err):
    k = machine("kho=on reserve_mem=16M:4096:oops").kernel
    k.kho.dt_max_store(str(dt_max).encode())
    n = len(k.log.lines())
    expect_errno(errno.EINVAL, k.kho.active_store, b"1")
    assert k.log.lines()[n:] == [f"KHO: failed to serialize state: {err}"]
    assert k.kho.fdt is None and k.kho.active_show() == "0\n"


def test_item_17_dt_max_239_works_with_oops(machine):
    k = machine("kho=on reserve_mem=16M:4096:oops").kernel
    k.kho.dt_max_store(b"239")
    k.kho.active_store(b"1")
    assert len(k.kho.fdt) == 239


@pytest.mark.parametrize("dt_max", [b"110", b"40"])
def test_item_18_failed_activation_sends_no_abort(machine, dt_max):
    m = machine("kho=on", drivers=[Recorder])
    k = m.kernel
    rec = driver(k, Recorder)
    k.kho.dt_max_store(dt_max)
    expect_errno(errno.EINVAL, k.kho.active_store, b"1")
    assert KEXEC_KHO_ABORT not in rec.events
    assert rec.events in ([], [KEXEC_KHO_DUMP])


def test_item_18_abort_sends_exactly_one(machine):
    m = machine("kho=on", drivers=[Recorder])
    k = m.kernel
    rec = driver(k, Recorder)
    k.kho.active_store(b"1")
    k.kho.active_store(b"0")
    assert rec.events == [KEXEC_KHO_DUMP, KEXEC_KHO_ABORT]
    k.kho.active_store(b"0")
    assert rec.events == [KEXEC_KHO_DUMP, KEXEC_KHO_ABORT]


def test_item_19_abort_removes_dt_and_reactivation_is_new_instance(machine):
    """Model side of item 19: after an abort `dt` is gone; a re-created `dt` is a new
    instance (a different serial), so old descriptors cannot reach it."""
    k = machine("kho=on").kernel
    k.kho.active_store(b"1")
    first = k.kho.fdt_serial
    blob = k.kho.fdt
    k.kho.active_store(b"0")
    assert k.kho.fdt is None
    k.kho.active_store(b"1")
    assert k.kho.fdt_serial != first
    assert k.kho.fdt == blob  # v4: re-activation rebuilds the same bytes (4.5)


def test_item_20_long_nul_padded_dt_max_write(machine):
    k = machine("kho=on").kernel
    buf = b"0x1000" + b"\0" * 4994
    assert len(buf) == 5000
    k.kho.dt_max_store(buf[:4096])  # the store sees the first 4096 bytes
    assert k.kho.dt_max_show() == "0x1000\n"
    k.kho.dt_max_store(b"0x10")
    k.kho.dt_max_store(buf)  # parsing stops at the first NUL either way
    assert k.kho.dt_max_show() == "0x1000\n"


# -- 21..23: reserve_mem and scratch sizing --------------------------------------------------------


def test_item_21_reserve_mem_region_and_fdt_node(machine):
    k = machine("kho=on reserve_mem=16M:4096:oops").kernel
    (region,) = k.reserve_mem.table
    assert region.name == "oops" and region.size == SZ_16M and region.start % 4096 == 0
    assert flags_covering(k.memblock.reserved, region.start, region.size) == {"RSV_KERN"}
    k.kho.active_store(b"1")
    fdt = libfdt.Fdt(k.kho.fdt)
    node = fdt.path_offset("/reserve_mem/oops")
    assert fdt.getprop(node, "compatible").as_str() == "reserve_mem_map-v1"
    mem = bytes(fdt.getprop(node, "mem"))
    assert mem == struct.pack("<QQ", region.start, 0x1000000)


def test_item_22_nine_options_keep_eight(machine):
    opts = " ".join(f"reserve_mem=1M:4096:r{i}" for i in range(1, 10))
    k = machine(f"kho=on {opts}").kernel
    assert [r.name for r in k.reserve_mem.table] == [f"r{i}" for i in range(1, 9)]
    assert extra_log(k) == []


def test_item_22_invalid_options_ignored_silently(machine):
    k = machine(
        "kho=on reserve_mem=1M:4096:abcdefghijklmnop reserve_mem=1M:4096:dup "
        "reserve_mem=2M:4096:dup reserve_mem=0:4096:x reserve_mem=1M:4096:abcdefghijklmno"
    ).kernel
    table = [(r.name, r.size) for r in k.reserve_mem.table]
    assert table == [("dup", 1 << 20), ("abcdefghijklmno", 1 << 20)]
    assert extra_log(k) == []


def test_item_23_default_scratch_size_formula(machine):
    k = machine("kho=on").kernel
    # S for the global area: every RSRV_KERN byte except the areas themselves.
    s = rsrv_kern_total(k) - sum(kernel_sizes(k))
    assert kernel_sizes(k)[0] == round_up(2 * s, SZ_2M)
    # per node: 2 x the node's memory map (1/64 of its RAM, Decision in 7.2)
    node_ram = sum(r.size for r in k.memblock.memory if r.nid == 0)
    assert kernel_sizes(k)[1] == round_up(2 * (node_ram // 64), SZ_2M)


@pytest.mark.parametrize("sizes", [[64 << 20], [64 << 20, 16 << 20], [3 << 20]])
def test_item_23_each_region_adds_twice_its_size(machine, sizes):
    base = kernel_sizes(machine("kho=on").kernel)
    opts = " ".join(f"reserve_mem={s}:4096:r{i}" for i, s in enumerate(sizes))
    k = machine(f"kho=on {opts}").kernel
    assert [r.size for r in k.reserve_mem.table] == sizes
    assert kernel_sizes(k)[0] == base[0] + 2 * sum(sizes)
    assert kernel_sizes(k)[1:] == base[1:]  # regions carry no node: node areas unchanged


# -- 24..27: kexec ---------------------------------------------------------------------------------


def test_item_24_segments_inside_scratch(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, b"initrd" * 1000, k.cmdline)
    segs = k.kexec.kexec_image.segments
    assert [s.name for s in segs] == [
        "kho-fdt",
        "kho-scratch",
        "purgatory",
        "boot_params",
        "kernel",
        "initrd",
    ]
    for s in segs:
        assert inside_any(k.kho.scratch, s.mem, s.memsz), s


@pytest.mark.parametrize("preloaded", [False, True])
def test_item_24_too_small_scratch_eaddrnotavail(machine, preloaded):
    from kho_model_helpers import bzimage

    k = machine("kho=on kho_scratch=2M,2M").kernel
    if preloaded:
        k.kexec.kexec_file_load(PLAIN_KERNEL, None, "first image")  # inactive: anywhere in RAM
    before = k.kexec.kexec_loaded_show()
    image = k.kexec.kexec_image
    k.kho.active_store(b"1")
    expect_errno(errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, bzimage(8 << 20), None, "x")
    assert k.kexec.kexec_loaded_show() == before == ("1\n" if preloaded else "0\n")
    assert k.kexec.kexec_image is image


def test_item_25_kexec_loaded(seed):
    k = seed.kernel
    assert k.kexec.kexec_loaded_show() == "0\n"
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    assert k.kexec.kexec_loaded_show() == "1\n"
    k2 = seed.kexec_exec()
    assert k2 is not k and k2.kexec.kexec_loaded_show() == "0\n"


def _no_handover(k) -> None:
    assert k.handover is False
    assert k.kho.dt_fw is None
    assert FOUND_LINE not in k.log.lines()
    assert not any(line.startswith("Revived memory reservation") for line in k.log.lines())


def test_item_26_inactive_file_load_no_handover(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    assert k.kexec.kexec_image.kho_fdt is None
    _no_handover(seed.kexec_exec())


def test_item_26_kexec_load_no_handover(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_load(PLAIN_KERNEL, None, k.cmdline)
    assert [s.name for s in k.kexec.kexec_image.segments] == ["purgatory", "boot_params", "kernel"]
    _no_handover(seed.kexec_exec())


def test_item_27_activate_after_load_adds_nothing(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    k.kho.active_store(b"1")
    _no_handover(seed.kexec_exec())


def test_item_27_abort_after_load_keeps_handover(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    fdt = k.kho.fdt
    start = seed.region("trace").start
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    k.kho.active_store(b"0")
    assert k.kho.fdt is None
    k2 = seed.kexec_exec()
    assert k2.handover and k2.kho.dt_fw == fdt
    assert seed.region("trace").start == start
    assert "Revived memory reservation 'trace' from KHO" in k2.log.lines()


# -- 28..36: the receiving side


def test_item_28_handover_log_line(seed):
    k2 = kho_cycle(seed)
    assert FOUND_LINE in k2.log.lines()
    assert k2.panic is None


def test_item_29_dt_fw_equals_loaded_copy(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    copy = k.kexec.kexec_image.kho_fdt.buffer
    assert copy == k.kho.fdt
    k2 = seed.kexec_exec()
    assert k2.kho.sysfs and k2.kho.dt_fw == copy
    assert seed.mem.read(k.kexec.kexec_image.kho_fdt.mem, len(copy)) == copy
    assert k2.kho.fdt is None  # the new kernel's own `dt` only appears when it activates


def test_item_30_scratch_inherited_and_kho_scratch_ignored(seed):
    k = seed.kernel
    phys, length = k.kho.scratch_phys_show(), k.kho.scratch_len_show()
    k2 = kho_cycle(seed, "reserve_mem=64M:4096:trace kho=on kho_scratch=1G,1G")
    assert k2.kho.scratch_phys_show() == phys
    assert k2.kho.scratch_len_show() == length
    assert (
        "KHO: scratch areas: global: 1024MB pernode: 1024MB" in k2.log.lines()
    )  # still parsed (2.3)


def test_item_30_default_scaling_not_reapplied(seed):
    k = seed.kernel
    table = list(k.kho.scratch)
    k2 = kho_cycle(seed, "reserve_mem=64M:4096:trace kho=on")
    assert k2.kho.scratch == table


def test_item_31_revival_same_address(machine):
    m = machine("kho=on reserve_mem=16M:4096:oops")
    start = m.region("oops").start
    k2 = kho_cycle(m)
    assert "Revived memory reservation 'oops' from KHO" in k2.log.lines()
    assert m.region("oops").start == start
    assert m.region("oops").size == SZ_16M


def test_item_32_wrong_size_allocates_in_scratch(machine):
    m = machine("kho=on reserve_mem=16M:4096:oops")
    old = m.region("oops")
    k2 = kho_cycle(m, "kho=on reserve_mem=32M:4096:oops")
    assert "KHO reserved_mem 'oops' has wrong size (0x1000000 != 0x2000000)" in k2.log.lines()
    new = m.region("oops")
    assert new.size == 32 << 20
    assert new.start != old.start
    assert inside_any(k2.kho.scratch, new.start, new.size)
    assert not any(line.startswith("Revived") for line in k2.log.lines())
    assert is_reserved(k2, old.start, old.size)  # the old preserved range stays reserved


def test_item_33_handover_memblock_lines(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    img = k.kexec.kexec_image
    region = seed.region("trace")
    k2 = seed.kexec_exec()
    for area in k2.kho.scratch:
        assert flags_covering(k2.memblock.memory, area.addr, area.size) == {"KHO_SCRATCH"}
    # ... and nothing else is: KHO_SCRATCH lines add up to exactly the inherited areas
    # (adjacent areas of one node merge into one line, spec 3.9 / 8.2)
    scratch_lines = [ln for ln in debugfs_lines(k2.memblock.memory) if ln.flag == "KHO_SCRATCH"]
    assert sum(ln.last - ln.base + 1 for ln in scratch_lines) == sum(a.size for a in k2.kho.scratch)
    fdt_len = len(img.kho_fdt.buffer)
    assert flags_covering(k2.memblock.reserved, img.kho_fdt.mem, fdt_len) == {"NONE"}
    assert flags_covering(k2.memblock.reserved, img.kho_scratch.mem, 16 * len(k.kho.scratch)) == {
        "NONE"
    }
    assert flags_covering(k2.memblock.reserved, region.start, region.size) == {"NONE"}


def test_item_33_distinct_areas_each_a_line(machine):
    """Two nodes: the node-0 area is not adjacent to the others, so it is its own line."""
    m = machine("kho=on reserve_mem=64M:4096:trace", nodes=2)
    k2 = kho_cycle(m)
    lines = [ln for ln in debugfs_lines(k2.memblock.memory) if ln.flag == "KHO_SCRATCH"]
    node0 = k2.kho.scratch[1]
    assert any(ln.base == node0.addr and ln.last == node0.addr + node0.size - 1 for ln in lines)


def test_item_34_handover_with_kho_off(seed):
    start = seed.region("trace").start
    k2 = kho_cycle(seed, "reserve_mem=64M:4096:trace kho=off")
    assert k2.kho.sysfs is False
    assert k2.kho.dt_fw is None
    assert "Revived memory reservation 'trace' from KHO" in k2.log.lines()
    assert seed.region("trace").start == start
    assert flags_covering(k2.memblock.reserved, start, 64 << 20) == {"NONE"}
    assert FOUND_LINE in k2.log.lines()  # populate still happens (6.7)


def test_item_35_corrupt_fdt_header(seed):
    k = seed.kernel
    old_scratch = list(k.kho.scratch)
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    seg = k.kexec.kexec_image.kho_fdt
    seg.buffer = b"\xde\xad\xbe\xef" + seg.buffer[4:]
    k2 = seed.kexec_exec()
    assert f"KHO: setup: kexec handover FDT is invalid (0x{seg.mem:x})" in k2.log.lines()
    assert k2.panic is None
    _no_handover(k2)
    # cold-boot behaviour: fresh scratch areas, reserved RSRV_KERN, no KHO_SCRATCH memory
    assert k2.kho.sysfs and len(k2.kho.scratch) == 2
    assert k2.kho.scratch != old_scratch
    assert not any(ln.flag == "KHO_SCRATCH" for ln in debugfs_lines(k2.memblock.memory))
    for area in k2.kho.scratch:
        assert flags_covering(k2.memblock.reserved, area.addr, area.size) == {"RSV_KERN"}
    assert k2.kho.scratch_len_show() == "0x20000000\n0x10000000\n"


def test_item_36_multi_entry_mem_reserves_first_only(machine):
    first, second = (0x40000000, 2 << 20), (0x50000000, 2 << 20)
    m = machine("kho=on", drivers=[mem_writer("two", kmem(first, second))])
    k = m.kernel
    k.kho.active_store(b"1")
    assert bytes(
        libfdt.Fdt(k.kho.fdt).getprop(libfdt.Fdt(k.kho.fdt).path_offset("/two"), "mem")
    ) == kmem(first, second)
    k2 = kho_cycle(m)
    line = "kho-fs: /two: mem property has 2 entries; only the first is reserved (v4 behaviour)"
    assert line in k2.log.lines()
    assert flags_covering(k2.memblock.reserved, *first) == {"NONE"}
    assert not is_reserved(k2, *second)
