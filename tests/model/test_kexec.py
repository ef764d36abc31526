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

from kho_fs.model.kexec import (
    KEXEC_FILE_DEBUG,
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
)

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


# -- a kernel that stopped at boot runs no syscalls (issue 8, item 5) --------------------------


def panicked(machine):
    """A handover boot whose 4 MiB of page tables cannot fit 2 MiB scratch areas
    (decisions.md, boot step 6): the kernel stops, generation 1."""
    m = machine("kho=on kho_scratch=2M,2M")
    load_active(m)
    k = m.kexec_exec()
    assert k.panic == "kho-fs: early allocation failed in scratch-only mode"
    return m


@pytest.mark.parametrize(
    "call",
    [
        lambda kx, m: kx.kexec_file_load(PLAIN_KERNEL, None, "x"),
        lambda kx, m: kx.kexec_file_load(b"", None, "", KEXEC_FILE_UNLOAD),
        lambda kx, m: kx.kexec_load(PLAIN_KERNEL, None, "x"),
        lambda kx, m: kx.kexec_unload(),
        lambda kx, m: m.kexec_exec(),
    ],
    ids=["kexec_file_load", "file-unload", "kexec_load", "unload", "exec"],
)
def test_stopped_kernel_refuses_kexec_syscalls(machine, call):
    m = panicked(machine)
    k, version = m.kernel, m.version
    expect_errno(errno.EHOSTDOWN, call, k.kexec, m)
    assert m.kernel is k and m.generation == 1 and k.kexec.kexec_image is None
    assert m.version == version
    assert "state:       PANICKED: " in m.status()
    m.reboot()  # only a cold reboot leaves the state
    assert m.kernel.panic is None
    m.kernel.kexec.kexec_file_load(PLAIN_KERNEL, None, "x")


# -- kexec_file_load flags (item 7) --------------------------------------------------------------


def test_crash_unload_keeps_the_normal_image(seed):
    """KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH unloads the crash image (kernel/kexec_file.c:
    dest_image = &kexec_crash_image), never the normal one; there is no crash image to drop."""
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, "x")
    img = k.kexec.kexec_image
    k.kexec.kexec_file_load(b"", None, "", KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH)
    assert k.kexec.kexec_image is img and k.kexec.kexec_loaded_show() == "1\n"
    for flags in (KEXEC_FILE_ON_CRASH, KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS):
        expect_errno(errno.EOPNOTSUPP, k.kexec.kexec_file_load, PLAIN_KERNEL, None, "y", flags)
        assert k.kexec.kexec_image is img


def test_unknown_flag_past_debug_einval(seed):
    k = seed.kernel
    expect_errno(errno.EINVAL, k.kexec.kexec_file_load, PLAIN_KERNEL, None, "x", 0x10)
    assert k.kexec.kexec_loaded_show() == "0\n"


HEX_PTR = r"[0-9a-f]{16}"  # %p: a hashed pointer, 16 hex digits


def test_debug_flag_logs_kexec_dprintk_lines(seed):
    """KEXEC_FILE_DEBUG (0x8, v6.7+): kexec_dprintk lines of kernel/kexec_file.c and
    arch/x86/kernel/kexec-bzimage64.c, in the order the kernel prints them."""
    import re

    k = seed.kernel
    n = len(k.log.lines())
    initrd = b"I" * 100_000
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)  # without the flag: silent
    assert k.log.lines()[n:] == []
    k.kexec.kexec_file_load(PLAIN_KERNEL, initrd, "console=ttyS0 x=1", KEXEC_FILE_DEBUG)
    img = k.kexec.kexec_image
    # 16 GiB: RAM [0, 0x9f000), [1 MiB, 2 GiB), [4 GiB, 18 GiB) (decisions.md, RAM map);
    # inactive, so the segments go top-down in System RAM (spec 9.2).
    top = 18 << 30
    want = [
        rf"kexec_file: kernel: {HEX_PTR} kernel_size: 0x2000",
        rf"kexec-bzImage64: Loaded purgatory at {top - 0x4000:#x}",
        "kexec-bzImage64: Loaded boot_param, command line and misc at "
        rf"{top - 0x6000:#x} bufsz=0x2000 memsz=0x2000",
        rf"kexec-bzImage64: Loaded 64bit kernel at {top - SZ_2M:#x} bufsz=0x2000 memsz=0x2000",
        # 0x19000 bytes: one step below purgatory, one below boot_params (spec 9.1 step 4)
        rf"kexec-bzImage64: Loaded initrd at {top - 0x1F000:#x} bufsz=0x186a0 memsz=0x186a0",
        "kexec-bzImage64: Final command line is: console=ttyS0 x=1",
        "kexec-bzImage64: E820 memmap:",
        r"kexec-bzImage64: 0000000000000000-000000000009efff \(1\)",
        r"kexec-bzImage64: 0000000000100000-000000007fffffff \(1\)",
        r"kexec-bzImage64: 0000000100000000-000000047fffffff \(1\)",
        "kexec_file: nr_segments = 4",
    ]
    for i, s in enumerate(img.segments):
        want.append(
            rf"kexec_file: segment\[{i}\]: buf=0x{HEX_PTR} bufsz={len(s.buffer):#x} "
            rf"mem={s.mem:#x} memsz={s.memsz:#x}"
        )
    want.append(rf"kexec_file: kexec_file_load: type:0, start:{top - 0x4000:#x} head:0x0 flags:0x8")
    got = k.log.lines()[n:]
    assert len(got) == len(want), got
    for line, pattern in zip(got, want, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert [s.name for s in img.segments] == ["purgatory", "boot_params", "kernel", "initrd"]


def test_debug_flag_logs_until_the_failure(machine):
    """A placement failure stops the load where the kernel stops: the lines printed
    before it stay in the log, nothing after it is printed."""
    k = machine("kho=on kho_scratch=2M,2M").kernel
    k.kho.active_store(b"1")
    n = len(k.log.lines())
    expect_errno(
        errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, bzimage(8 << 20), None, "x", KEXEC_FILE_DEBUG
    )
    got = k.log.lines()[n:]
    assert [line.split(" at ")[0] for line in got[1:]] == [
        "kexec-bzImage64: Loaded purgatory",
        "kexec-bzImage64: Loaded boot_param, command line and misc",
    ]
    assert got[0].startswith("kexec_file: kernel: ")
    assert k.kexec.kexec_loaded_show() == "0\n"


# -- placement over contiguous RAM (item 9) --------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("syscall", ["kexec_file_load", "kexec_load"])
def test_segments_cross_node_boundaries(machine, nodes, syscall):
    """System RAM resources are contiguous e820 ranges, not per node: a 300 MiB image fits
    a 512 MiB machine ([1 MiB, 512 MiB) is one range) whatever its node count."""
    m = machine("console=ttyS0 kho=on", memory=512 << 20, nodes=nodes)
    big = bzimage(300 << 20, body=4096)
    getattr(m.kernel.kexec, syscall)(big, None, "x")
    kernel = m.kernel.kexec.kexec_image.kernel
    assert kernel.memsz == 300 << 20
    assert kernel.mem >= SZ_1M and kernel.mem + kernel.memsz <= 512 << 20
    if syscall == "kexec_file_load":  # top-down: just below purgatory and boot_params
        assert kernel.mem == round_down((512 << 20) - 0x6000 - (300 << 20), SZ_2M)
    else:  # bottom-up from 16 MiB: purgatory, boot_params, then the next 2 MiB boundary
        assert kernel.mem == 18 << 20
