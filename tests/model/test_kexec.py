"""kexec on the machine model: segment placement (spec 9.1), unload, snapshot semantics
(9.4), exec (9.5), the type-10 setup_data node (6.1) and the bzImage init_size rule."""

from __future__ import annotations

import errno
import itertools
import struct

import pytest
from kho_model_helpers import (
    PAGE,
    PLAIN_KERNEL,
    SZ_1M,
    SZ_2M,
    SZ_64K,
    bzimage,
    expect_errno,
    inside_any,
    round_down,
    round_up,
)

from kho_fs.model.kexec import KEXEC_FILE_NO_INITRAMFS, KEXEC_FILE_UNLOAD

ORDER = ["kho-fdt", "kho-scratch", "purgatory", "boot_params", "kernel", "initrd"]
FILL_LINE = "KHO: ===> kho_fill_kimage: kexec_add_buffer"


def reference_place(areas, requests):
    """Spec 9.1 step 4, literally: areas in table order, top-down, one page lower on overlap.

    ``requests`` are (memsz, align, buf_min); returns the addresses, None where nothing fits.
    """
    placed: list[tuple[int, int]] = []
    out = []
    for memsz, align, buf_min in requests:
        memsz, align = round_up(memsz, PAGE), max(align, PAGE)
        where = None
        for a in areas:
            if a.size < memsz:
                continue
            t = round_down(a.addr + a.size - 1 - (memsz - 1), align)
            while t >= a.addr and t >= buf_min:
                if not any(p < t + memsz and t < p + s for p, s in placed):
                    where = t
                    break
                t = round_down(t - PAGE, align)
            if where is not None:
                break
        out.append(where)
        if where is None:
            break
        placed.append((where, memsz))
    return out


def requests_for(fdt_len: int, n_areas: int, kernel_memsz: int, initrd_len: int | None):
    reqs = [
        (fdt_len, SZ_64K, 0),
        (16 * n_areas, SZ_64K, 0),
        (16 << 10, PAGE, 0),
        (8 << 10, PAGE, 0),
        (kernel_memsz, SZ_2M, 0),
    ]
    if initrd_len:
        reqs.append((initrd_len, PAGE, 0))
    return reqs


def load_active(m, kernel=PLAIN_KERNEL, initrd=None, cmdline=None):
    k = m.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(kernel, initrd, k.cmdline if cmdline is None else cmdline)
    return k.kexec.kexec_image


# -- placement while active (9.1) ----------------------------------------------------------------


def test_segment_order_sizes_alignments(seed):
    initrd = b"I" * 10000
    img = load_active(seed, initrd=initrd)
    k = seed.kernel
    segs = img.segments
    assert [s.name for s in segs] == ORDER
    by = {s.name: s for s in segs}
    fdt = k.kho.fdt
    assert by["kho-fdt"].buffer == fdt and by["kho-fdt"].memsz == round_up(len(fdt), PAGE)
    table = b"".join(struct.pack("<QQ", a.addr, a.size) for a in k.kho.scratch)
    assert by["kho-scratch"].buffer == table and len(table) == 32
    assert by["kho-scratch"].memsz == PAGE
    assert by["purgatory"].memsz == 16 << 10
    assert by["boot_params"].memsz == 8 << 10
    assert by["kernel"].memsz == round_up(len(PLAIN_KERNEL), PAGE)
    assert by["initrd"].memsz == round_up(len(initrd), PAGE) and by["initrd"].buffer == initrd
    for name, align in (
        ("kho-fdt", SZ_64K),
        ("kho-scratch", SZ_64K),
        ("purgatory", PAGE),
        ("boot_params", PAGE),
        ("kernel", SZ_2M),
        ("initrd", PAGE),
    ):
        assert by[name].mem % align == 0, name
    for s in segs:
        assert inside_any(k.kho.scratch, s.mem, s.memsz), s.name
    ends = sorted((s.mem, s.mem + s.memsz) for s in segs)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends)), "segments overlap"


@pytest.mark.parametrize(
    ("cmdline", "nodes", "kernel", "initrd"),
    [
        ("reserve_mem=64M:4096:trace kho=on kho_scratch=512M,256M", 1, PLAIN_KERNEL, b"x" * 10000),
        ("kho=on kho_scratch=4M,64M", 1, bzimage(8 << 20), None),  # kernel skips the global area
        ("kho=on kho_scratch=4M,64M", 1, bzimage(3 << 20), b"y" * (3 << 20)),
        ("kho=on kho_scratch=6M,6M", 2, bzimage(2 << 20), b"z" * (5 << 20)),
        ("kho=on", 2, bzimage(40 << 20), b"w" * (1 << 20)),
        ("kho=on kho_scratch=2M,2M", 1, PLAIN_KERNEL, b"v" * 5000),
    ],
)
def test_placement_matches_reference(machine, cmdline, nodes, kernel, initrd):
    m = machine(cmdline, nodes=nodes)
    img = load_active(m, kernel=kernel, initrd=initrd)
    k = m.kernel
    got = [s.mem for s in img.segments]
    want = reference_place(
        k.kho.scratch,
        requests_for(len(k.kho.fdt), len(k.kho.scratch), img.kernel.memsz, initrd and len(initrd)),
    )
    assert None not in want
    assert got == want


def test_big_kernel_eaddrnotavail(machine):
    k = machine("kho=on kho_scratch=2M,2M").kernel
    k.kho.active_store(b"1")
    n = len(k.log.lines())
    expect_errno(errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, bzimage(8 << 20), None, "x")
    assert k.kexec.kexec_loaded_show() == "0\n" and k.kexec.kexec_image is None
    assert FILL_LINE not in k.log.lines()[n:]  # only an FDT placement failure logs it


def test_failed_load_keeps_previous_image(machine):
    m = machine("kho=on kho_scratch=2M,2M")
    k = m.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, "the first image")
    first = k.kexec.kexec_image
    k.kho.active_store(b"1")
    expect_errno(
        errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, bzimage(8 << 20), None, "the second image"
    )
    assert k.kexec.kexec_loaded_show() == "1\n" and k.kexec.kexec_image is first
    k2 = m.kexec_exec()
    assert k2.cmdline == "the first image"


def test_fdt_placement_failure_logs_fill_line(machine):
    k = machine("kho=on kho_scratch=0%").kernel
    assert k.kho.scratch_len_show() == "0x0\n0x0\n"
    k.kho.active_store(b"1")
    n = len(k.log.lines())
    expect_errno(errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, PLAIN_KERNEL, None, "x")
    assert k.log.lines()[n:] == [FILL_LINE]
    assert k.kexec.kexec_loaded_show() == "0\n"


def test_inactive_load_ignores_scratch(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    img = k.kexec.kexec_image
    assert [s.name for s in img.segments] == ["purgatory", "boot_params", "kernel"]
    assert img.kho_fdt is None and img.kho_scratch is None
    assert all(seed.mem.is_ram(s.mem, s.memsz) for s in img.segments)


def test_no_initramfs_flag_drops_initrd(seed):
    img = None
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, b"initrd", k.cmdline, KEXEC_FILE_NO_INITRAMFS)
    img = k.kexec.kexec_image
    assert [s.name for s in img.segments] == ORDER[:-1]


# -- the boot parameters (6.1) ------------------------------------------------------------------


def setup_data_chain(bp_seg):
    """(type, payload) of each node of the setup_data chain inside the boot_params segment."""
    buf = bp_seg.buffer
    addr = struct.unpack_from("<Q", buf, 0x250)[0]
    nodes = []
    while addr:
        off = addr - bp_seg.mem
        assert 0 <= off < len(buf)
        nxt, type_, length = struct.unpack_from("<QII", buf, off)
        nodes.append((type_, buf[off + 16 : off + 16 + length]))
        addr = nxt
    return nodes


def test_type10_setup_data_node(seed):
    img = load_active(seed)
    k = seed.kernel
    (node,) = setup_data_chain(img.boot_params)
    assert node[0] == 10 and len(node[1]) == 32
    dt_addr, dt_size, scratch_addr, scratch_size = struct.unpack("<QQQQ", node[1])
    assert (dt_addr, dt_size) == (img.kho_fdt.mem, len(k.kho.fdt))
    assert (scratch_addr, scratch_size) == (img.kho_scratch.mem, 16 * len(k.kho.scratch))


def test_no_type10_node_when_inactive(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    assert setup_data_chain(k.kexec.kexec_image.boot_params) == []


def test_exec_writes_segments_to_ram(seed):
    img = load_active(seed, initrd=b"R" * 5000)
    seed.kexec_exec()
    for seg in img.segments:
        assert seed.mem.read(seg.mem, len(seg.buffer)) == seg.buffer, seg.name
        assert seed.mem.read(seg.mem + len(seg.buffer), seg.memsz - len(seg.buffer)) == bytes(
            seg.memsz - len(seg.buffer)
        )


def test_next_kernel_reserves_its_image_and_initrd(seed):
    img = load_active(seed, initrd=b"R" * 5000)
    k2 = seed.kexec_exec()
    assert k2.boot.image == (img.kernel.mem, img.kernel.memsz)
    for seg in (img.kernel, img.initrd):
        assert any(
            r.base <= seg.mem and seg.mem + seg.memsz <= r.end and r.flags & 0x20
            for r in k2.memblock.reserved
        ), seg.name


# -- unload, exec, snapshot ------------------------------------------------------------------------


def test_unload(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, "x")
    k.kexec.kexec_unload()
    assert k.kexec.kexec_loaded_show() == "0\n"
    expect_errno(errno.EINVAL, seed.kexec_exec)


def test_unload_flag(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, "x")
    k.kexec.kexec_file_load(b"", None, "", KEXEC_FILE_UNLOAD)
    assert k.kexec.kexec_loaded_show() == "0\n"


@pytest.mark.parametrize("unload", ["syscall", "flag"])
def test_unload_bumps_machine_version(seed, unload):
    """Machine.version must move whenever kexec_loaded can change (machine.py contract)."""
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, "x")
    v = seed.version
    if unload == "syscall":
        k.kexec.kexec_unload()
    else:
        k.kexec.kexec_file_load(b"", None, "", KEXEC_FILE_UNLOAD)
    assert k.kexec.kexec_loaded_show() == "0\n"
    assert seed.version > v


def test_unknown_flags_einval(seed):
    k = seed.kernel
    expect_errno(errno.EINVAL, k.kexec.kexec_file_load, PLAIN_KERNEL, None, "x", 0x100)
    assert k.kexec.kexec_loaded_show() == "0\n"


def test_exec_without_image(seed):
    k = seed.kernel
    expect_errno(errno.EINVAL, seed.kexec_exec)
    assert seed.kernel is k and seed.generation == 0


def test_cmdline_limits(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, "a" * 2047)
    expect_errno(errno.EINVAL, k.kexec.kexec_file_load, PLAIN_KERNEL, None, "a" * 2048)
    assert k.kexec.kexec_image.cmdline == "a" * 2047
    assert seed.kexec_exec().cmdline == "a" * 2047


def test_empty_kernel_enoexec(seed):
    expect_errno(errno.ENOEXEC, seed.kernel.kexec.kexec_file_load, b"", None, "x")


def test_snapshot_activate_after_load(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    img = k.kexec.kexec_image
    k.kho.active_store(b"1")
    assert k.kexec.kexec_image is img and img.kho_fdt is None
    assert setup_data_chain(img.boot_params) == []
    assert seed.kexec_exec().handover is False


def test_snapshot_abort_after_load(seed):
    img = load_active(seed)
    k = seed.kernel
    fdt = k.kho.fdt
    k.kho.active_store(b"0")
    assert k.kexec.kexec_image is img and img.kho_fdt.buffer == fdt
    k2 = seed.kexec_exec()
    assert k2.handover and k2.kho.dt_fw == fdt


def test_snapshot_fdt_is_load_time_copy(machine):
    """Abort and re-activate with a different participant state: the loaded copy wins."""
    m = machine("kho=on kho_example.size=4M")
    img = load_active(m)
    k = m.kernel
    at_load = img.kho_fdt.buffer
    k.kho.active_store(b"0")
    k.kho.dt_max_store(b"0x100000")
    k.kho.active_store(b"1")
    assert m.kexec_exec().kho.dt_fw == at_load


# -- the bzImage init_size rule --------------------------------------------------------------------


@pytest.mark.parametrize("version", [0x020A, 0x020C, 0x020F])
def test_bzimage_init_size(seed, version):
    image = bzimage(24 << 20, version=version)
    k = seed.kernel
    k.kexec.kexec_file_load(image, None, "x")
    kernel = k.kexec.kexec_image.kernel
    assert kernel.memsz == 24 << 20
    assert kernel.buffer == image[5 * 512 :]  # the protected-mode part after the setup sectors
    assert kernel.mem % SZ_2M == 0


def test_bzimage_init_size_rounded_to_page(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(bzimage((5 << 20) + 1), None, "x")
    assert k.kexec.kexec_image.kernel.memsz == (5 << 20) + PAGE


@pytest.mark.parametrize("version", [0x0209, 0x0200])
def test_old_protocol_loaded_whole(seed, version):
    image = bzimage(24 << 20, version=version)
    k = seed.kernel
    k.kexec.kexec_file_load(image, None, "x")
    kernel = k.kexec.kexec_image.kernel
    assert kernel.memsz == round_up(len(image), PAGE)
    assert kernel.buffer == image


def test_no_hdrs_loaded_whole(seed):
    image = bytearray(bzimage(24 << 20))
    image[0x202:0x206] = b"HdrX"
    k = seed.kernel
    k.kexec.kexec_file_load(bytes(image), None, "x")
    assert k.kexec.kexec_image.kernel.memsz == round_up(len(image), PAGE)


def test_bzimage_size_decides_scratch_fit(machine):
    """A small file declaring a big init_size needs the big size inside scratch."""
    k = machine("kho=on kho_scratch=4M,4M").kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(bzimage(2 << 20, body=64 << 10), None, "x")
    expect_errno(
        errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, bzimage(6 << 20, body=64 << 10), None, "y"
    )
    assert k.kexec.kexec_image.cmdline == "x"


def test_kexec_load_places_without_scratch(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_load(PLAIN_KERNEL, b"i" * 100, "x")
    img = k.kexec.kexec_image
    assert [s.name for s in img.segments] == ["purgatory", "boot_params", "kernel", "initrd"]
    assert img.kho_fdt is None
    assert setup_data_chain(img.boot_params) == []
    assert all(s.mem >= SZ_1M and seed.mem.is_ram(s.mem, s.memsz) for s in img.segments)
