"""Totality of the model's user-facing entry points (hypothesis).

Whatever bytes user space writes and whatever command line a machine boots with, the model
answers with success or a KernelError carrying an errno the spec allows, never with a
Python exception, and it never builds a broken memblock or FDT.
"""

from __future__ import annotations

import errno
import os
import re
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kho_model_helpers import PLAIN_KERNEL, inside_any

from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import fdt_check_full
from kho_fs.model.machine import Machine

# KHO_MODEL_EXAMPLES=5000 for a long local hunt; the default keeps the suite fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("KHO_MODEL_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HEX = re.compile(r"^0x[0-9a-f]+\n$")
LATIN1 = st.characters(max_codepoint=0xFF)
PRINTABLE_LATIN1 = st.characters(
    min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"
) | st.sampled_from("\t\n\r\x0b\x0c")

INTERESTING_BUFS = [
    b"1",
    b"0",
    b"1\n",
    b"0\n",
    b"yes",
    b"on",
    b"off",
    b"2",
    b"\n",
    b"",
    b"0x100",
    b"+256",
    b"111",
    b"110",
    b"239",
    b"40",
    b"2147483648",
    b"0x",
    b"08",
    b"-1",
    b"1\0garbage",
    b"0x1000" + b"\0" * 4994,
]
BUFS = st.one_of(
    st.binary(max_size=8192),
    st.sampled_from(INTERESTING_BUFS),
    st.text(alphabet="0123456789abcdefxX+-\n onOFyYtT", max_size=24).map(str.encode),
)


def check_kho(k) -> None:
    """Invariants of the sysfs state after every operation."""
    assert k.kho.active_show() in ("0\n", "1\n")
    assert HEX.match(k.kho.dt_max_show())
    active = k.kho.active_show() == "1\n"
    assert (k.kho.fdt is not None) == active
    if active:
        assert fdt_check_full(k.kho.fdt) == 0
        assert len(k.kho.fdt) <= k.kho.dt_max


# -- sysfs stores


@SETTINGS
@given(
    regions=st.sampled_from(
        ["", "reserve_mem=16M:4096:oops", "reserve_mem=1M:64:a reserve_mem=2M:4096:b"]
    ),
    dt_max=st.sampled_from(
        [None, b"0", b"47", b"110", b"111", b"200", b"239", b"4096", b"2147483648"]
    ),
    bufs=st.lists(BUFS, max_size=8),
)
def test_active_store_total(regions, dt_max, bufs):
    with Machine.create(cmdline=f"kho=on {regions}") as m:
        k = m.kernel
        if dt_max is not None:
            k.kho.dt_max_store(dt_max)
        for buf in bufs:
            was = k.kho.active_show()
            try:
                k.kho.active_store(buf)
            except KernelError as exc:
                assert exc.errno in (errno.EINVAL, errno.EBUSY, errno.ENOMEM)
                assert exc.errno == errno.EINVAL  # scratch exists, so never ENOMEM here
                assert k.kho.active_show() == was
            check_kho(k)


@SETTINGS
@given(activate=st.booleans(), bufs=st.lists(BUFS, min_size=1, max_size=8))
def test_dt_max_store_total(activate, bufs):
    with Machine.create(cmdline="kho=on reserve_mem=1M:4096:oops") as m:
        k = m.kernel
        if activate:
            k.kho.active_store(b"1")
        for buf in bufs:
            before = k.kho.dt_max_show()
            try:
                k.kho.dt_max_store(buf)
            except KernelError as exc:
                assert exc.errno in (errno.EINVAL, errno.EBUSY)
                assert exc.errno != errno.EBUSY or activate
                assert k.kho.dt_max_show() == before
            else:
                assert not activate  # every valid write while active is EBUSY
            check_kho(k)


# -- booting arbitrary command lines

TOKENS = [
    "kho",
    "kho_scratch",
    "kho-scratch",
    "reserve_mem",
    "reserve-mem",
    "kho_example.size",
    "console",
    "--",
]
VALUES = st.one_of(
    st.text(LATIN1, max_size=16),
    st.sampled_from(
        [
            "on",
            "off",
            "1",
            "0",
            "maybe",
            "512M,256M",
            "150%",
            "0%",
            "0x10%",
            "1536K,1M",
            "16M:4096:oops",
            "64M:4096:trace",
            "0:4096:x",
            "1E:64:huge",
            "8M",
            "1G,1G",
            "16E,1",
            "4M:3000:odd",
            "1M:0x1e:hex",
            '"1M:64:a b"',
        ]
    ),
    st.builds(
        lambda s, a, n: f"{s}:{a}:{n}",
        st.sampled_from(["1M", "4K", "0x1000", "1e", "16M", "7"]),
        st.sampled_from(["", "64", "4096", "1G", "3"]),
        st.text(PRINTABLE_LATIN1, max_size=17),
    ),
)
TOKEN = st.one_of(
    st.builds(lambda t, v: f"{t}={v}", st.sampled_from(TOKENS), VALUES),
    st.sampled_from(TOKENS),
    st.text(PRINTABLE_LATIN1, max_size=20),
)
CMDLINES = st.one_of(
    st.text(PRINTABLE_LATIN1, max_size=300), st.lists(TOKEN, max_size=12).map(" ".join)
)


def check_kernel(k) -> None:
    k.memblock.check_invariants()
    for r in k.reserve_mem.table:
        assert 1 <= len(r.name) <= 15 and r.size > 0
    if k.kho.sysfs:
        assert len(k.kho.scratch) == k.mem.nr_nodes + 1
        try:
            k.kho.active_store(b"1")
        except KernelError as exc:
            assert exc.errno == errno.EINVAL
        check_kho(k)
    else:
        assert k.kho.active is False


@SETTINGS
@given(
    cmdline=CMDLINES,
    layout=st.sampled_from(
        [(16 << 30, 1), (16 << 30, 2), (1 << 30, 1), (6 << 30, 3), (100 << 20, 1), (16 << 30, 9)]
    ),
)
def test_cold_boot_any_cmdline(cmdline, layout):
    memory, nodes = layout
    try:
        m = Machine.create(memory=memory, nodes=nodes, cmdline=cmdline[:300])
    except ValueError:
        return
    with m:
        k = m.kernel
        assert k.cmdline == cmdline[:300]
        assert k.panic is None  # all early allocations precede every option-driven one
        check_kernel(k)


@SETTINGS
@given(cmdline=CMDLINES, activate=st.booleans())
def test_kexec_into_any_cmdline(cmdline, activate):
    """kexec_file_load then exec with an arbitrary next command line."""
    with Machine.create(cmdline="kho=on reserve_mem=16M:4096:oops kho_example.size=1M") as m:
        k = m.kernel
        if activate:
            k.kho.active_store(b"1")
        try:
            k.kexec.kexec_file_load(PLAIN_KERNEL, None, cmdline)
        except KernelError as exc:
            assert exc.errno == errno.EINVAL and ("\0" in cmdline or len(cmdline) >= 2048)
            return
        k2 = m.kexec_exec()
        assert k2.cmdline == cmdline
        assert k2.handover is activate
        check_kernel(k2)


# -- kexec_file_load with arbitrary images


@st.composite
def kernel_images(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    setup_sects = draw(st.integers(0, 255))
    body = draw(st.integers(0, 64 << 10))
    img = bytearray((max(setup_sects, 1) + 1) * 512 if draw(st.booleans()) else 0x264)
    img += bytes(body)
    img[0x1F1] = setup_sects
    img[0x202:0x206] = draw(st.sampled_from([b"HdrS", b"HdrS", b"Hdrs"]))
    struct.pack_into(
        "<H", img, 0x206, draw(st.sampled_from([0x0200, 0x0209, 0x020A, 0x020F, 0xFFFF]))
    )
    struct.pack_into(
        "<I",
        img,
        0x260,
        draw(st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, 8 << 20]))),
    )
    return bytes(img)


@SETTINGS
@given(
    kernel=kernel_images(),
    initrd=st.one_of(st.none(), st.binary(max_size=8192)),
    cmdline=st.text(LATIN1, max_size=2100),
    flags=st.one_of(st.sampled_from([0, 0, 1, 2, 4, 6, 8]), st.integers(0, 0xFFFF)),
    scratch=st.sampled_from(["kho_scratch=512M,256M", "kho_scratch=2M,2M", "kho_scratch=0%", ""]),
    activate=st.booleans(),
)
def test_kexec_file_load_total(kernel, initrd, cmdline, flags, scratch, activate):
    with Machine.create(cmdline=f"kho=on {scratch}") as m:
        k = m.kernel
        if activate:
            k.kho.active_store(b"1")
        try:
            k.kexec.kexec_file_load(kernel, initrd, cmdline, flags)
        except KernelError as exc:
            assert exc.errno in (
                errno.EINVAL,
                errno.ENOEXEC,
                errno.EADDRNOTAVAIL,
                errno.EOPNOTSUPP,
                errno.EPERM,
            )
            assert k.kexec.kexec_loaded_show() == "0\n"
            return
        img = k.kexec.kexec_image
        if flags & 1:
            assert img is None
            return
        assert img is not None and k.kexec.kexec_loaded_show() == "1\n"
        for seg in img.segments:
            assert seg.memsz % 4096 == 0 and len(seg.buffer) <= seg.memsz
            assert m.mem.is_ram(seg.mem, seg.memsz)
            if activate:
                assert inside_any(k.kho.scratch, seg.mem, seg.memsz)
        k2 = m.kexec_exec()
        assert k2.cmdline == cmdline
        k2.memblock.check_invariants()


def test_kexec_file_load_non_latin1_cmdline_is_kernel_error(seed):
    """A command line is bytes to the kernel; text the model cannot encode must be refused
    with a KernelError like every other bad argument, not escape as UnicodeEncodeError."""
    k = seed.kernel
    for load in (
        lambda: k.kexec.kexec_file_load(PLAIN_KERNEL, None, "console=\u20ac"),
        lambda: k.kexec.kexec_load(PLAIN_KERNEL, None, "console=\u20ac"),
    ):
        try:
            load()
        except KernelError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError("a non-latin-1 command line was accepted")
        assert k.kexec.kexec_loaded_show() == "0\n"
