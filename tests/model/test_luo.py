"""The Live Update Orchestrator model (6.19, 7.0): spec kho-mainline.md §12, docs/luo.md.

Everything in-process: a machine, its kernel's ``luo``, files described by a small
in-memory source. The socket transport, the Python API and the preload library are
tested in tests/mount/test_luo_*.py.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest
from luo_model_helpers import (
    BusyHandler,
    Source,
    contents,
    create,
    errno_of,
    finish,
    luo_of,
    preserve,
    retrieve,
    retrieve_fd,
)

from kho_fs.model.bzimage import make_bzimage
from kho_fs.model.fdt import Fdt
from kho_fs.model.luo import (
    FD_ARG,
    FILE_KIND_OTHER,
    FINISH_ARG,
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
    LUO_FILE_MAX,
    LUO_SESSION_MAX,
    SESSION_ARG,
    TAIL_FAULT,
    TAIL_NONZERO,
    LuoSession,
    RestoredFile,
    UserArg,
)
from kho_fs.model.machine import Machine
from kho_fs.model.releases import RELEASES

CMDLINE = "console=ttyS0 kho=on liveupdate=on"


def boot(release: str = "6.19", cmdline: str = CMDLINE, memory: int = 1 << 30) -> Machine:
    return Machine.create(memory=memory, cmdline=cmdline, release=release)


def kexec(m: Machine, release: str) -> None:
    m.kernel.kexec.kexec_file_load(make_bzimage(RELEASES[release]), None, m.kernel.cmdline)
    m.kexec_exec()


# -- boot parameters and releases ---------------------------------------------------------
def test_liveupdate_is_off_by_default_and_needs_kho() -> None:
    with boot(cmdline="console=ttyS0 kho=on") as m:
        assert errno_of(luo_of(m).open_device) == errno.ENOENT
        assert "liveupdate:  disabled" in m.status()
    with boot(cmdline="console=ttyS0 liveupdate=on") as m:
        assert "luo: Disabling liveupdate because KHO is disabled" in m.kernel.log.render()
        assert errno_of(luo_of(m).open_device) == errno.ENOENT
    with boot(cmdline="console=ttyS0 kho=on liveupdate=maybe") as m:
        assert "Malformed early option 'liveupdate'" in m.kernel.log.render()
    with boot(cmdline="console=ttyS0 kho=on liveupdate=1") as m:
        luo_of(m).open_device()


@pytest.mark.parametrize("release", ["6.12", "v4", "6.16", "6.17", "6.18"])
def test_releases_before_6_19_have_no_luo(release: str) -> None:
    with boot(release, memory=1 << 30) as m:
        assert m.kernel.luo is None


@pytest.mark.parametrize("release", ["6.19", "7.0"])
def test_outgoing_luo_subtree(release: str) -> None:
    with boot(release) as m:
        kho = m.kernel.kho
        blob = next(b for b in kho.out_sub_fdts if b.name == "LUO")  # type: ignore[union-attr]
        fdt = Fdt(m.mem.read(blob.phys, blob.size))
        assert fdt.getprop(0, "compatible") == b"luo-v1\0"
        assert struct.unpack("<Q", fdt.getprop(0, "liveupdate-number") or b"") == (1,)
        nodes = {fdt.get_name(n): n for n in fdt.subnodes(0)}
        assert fdt.getprop(nodes["luo-session"], "compatible") == b"luo-session-v2\0"
        header = struct.unpack(
            "<Q", fdt.getprop(nodes["luo-session"], "luo-session-header") or b""
        )[0]
        assert (header, 4) in set(kho.preserved_blocks())  # 16 pages, one folio
        assert ("luo-flb" in nodes) == (release == "7.0")


# -- the device and its ioctl dispatch ------------------------------------------------------
def test_device_is_exclusive() -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        assert errno_of(luo.open_device) == errno.EBUSY
        luo.release_device(dev)
        luo.release_device(luo.open_device())


def test_dispatch_errnos() -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        good = UserArg.from_buffer(SESSION_ARG.pack(72, 0, b"x"))
        # command number outside the table, then the number itself
        assert errno_of(luo.ioctl, dev, 0xBA02, good) == errno.EINVAL
        assert errno_of(luo.ioctl, dev, 0xBA40, good) == errno.EINVAL
        assert errno_of(luo.ioctl, dev, 0xC048BA00, good) == errno.ENOTTY  # _IOWR bits
        assert errno_of(luo.ioctl, dev, 0x5401, good) == errno.ENOTTY  # TCGETS: nr 1
        assert errno_of(luo.ioctl, dev, 0x5402, good) == errno.EINVAL  # nr 2
        # the size field
        assert (
            errno_of(luo.ioctl, dev, LIVEUPDATE_IOCTL_CREATE_SESSION, UserArg(None)) == errno.EFAULT
        )
        small = UserArg.from_buffer(SESSION_ARG.pack(71, 0, b"x"))
        assert errno_of(luo.ioctl, dev, LIVEUPDATE_IOCTL_CREATE_SESSION, small) == errno.EINVAL
        tail = SESSION_ARG.pack(80, 0, b"x") + b"\0" * 7 + b"\1"
        arg = UserArg.from_buffer(tail)
        assert errno_of(luo.ioctl, dev, LIVEUPDATE_IOCTL_CREATE_SESSION, arg) == errno.E2BIG
        zeros = UserArg.from_buffer(SESSION_ARG.pack(80, 0, b"big") + bytes(8))
        create_reply = luo.ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, zeros)
        assert len(create_reply.data) == 72
        short = UserArg.from_buffer(SESSION_ARG.pack(100, 0, b"x"))  # memory ends at 72
        assert errno_of(luo.ioctl, dev, LIVEUPDATE_IOCTL_CREATE_SESSION, short) == errno.EFAULT
        far = UserArg(1 << 20, SESSION_ARG.pack(1 << 20, 0, b"y") + bytes(4096 - 72), TAIL_NONZERO)
        assert errno_of(luo.ioctl, dev, LIVEUPDATE_IOCTL_CREATE_SESSION, far) == errno.E2BIG
        far = UserArg(1 << 20, SESSION_ARG.pack(1 << 20, 0, b"y") + bytes(4096 - 72), TAIL_FAULT)
        assert errno_of(luo.ioctl, dev, LIVEUPDATE_IOCTL_CREATE_SESSION, far) == errno.EFAULT
        s = create_reply.obj
        assert isinstance(s, LuoSession)
        fd_arg = UserArg.from_buffer(FD_ARG.pack(16, 0, 1))
        assert errno_of(luo.ioctl, s, LIVEUPDATE_IOCTL_CREATE_SESSION, good) == errno.EINVAL
        assert errno_of(luo.ioctl, s, LIVEUPDATE_SESSION_GET_NAME, fd_arg) == errno.EINVAL
        assert errno_of(luo.ioctl, s, 0xBB40, fd_arg) == errno.ENOTTY
        small_fd = UserArg.from_buffer(FD_ARG.pack(15, 0, 1))
        assert (
            errno_of(luo.ioctl, s, LIVEUPDATE_SESSION_PRESERVE_FD, small_fd, Source())
            == errno.EINVAL
        )
        # incoming-only commands on an outgoing session (the stable fix, docs/luo.md)
        assert errno_of(luo.ioctl, s, LIVEUPDATE_SESSION_RETRIEVE_FD, fd_arg) == errno.EINVAL
        finish_arg = UserArg.from_buffer(FINISH_ARG.pack(8, 0))
        assert errno_of(luo.ioctl, s, LIVEUPDATE_SESSION_FINISH, finish_arg) == errno.EINVAL


def test_session_errnos() -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        create(luo, dev, b"a")
        assert errno_of(create, luo, dev, b"a") == errno.EEXIST
        # names are C strings of at most 63 bytes: 64 bytes are cut to the same 63
        create(luo, dev, b"n" * 64)
        assert errno_of(create, luo, dev, b"n" * 63 + b"x") == errno.EEXIST
        assert errno_of(retrieve, luo, dev, b"a") == errno.ENOENT  # nothing incoming
        for i in range(LUO_SESSION_MAX - 2):
            create(luo, dev, b"s%d" % i)
        assert len(luo.outgoing) == LUO_SESSION_MAX == 819
        assert errno_of(create, luo, dev, b"one-more") == errno.ENOMEM
        luo.release_session(luo.outgoing[-1])
        create(luo, dev, b"one-more")


def test_file_errnos() -> None:
    with boot() as m:
        luo = luo_of(m)
        s = create(luo, luo.open_device(), b"files")
        preserve(luo, s, 1, Source(b"x"))
        assert errno_of(preserve, luo, s, 1, Source(b"y")) == errno.EEXIST
        assert errno_of(preserve, luo, s, 2, None) == errno.EBADF
        other = Source(kind=FILE_KIND_OTHER)
        assert errno_of(preserve, luo, s, 2, other) == errno.ENOENT
        assert other.released == 0  # the caller keeps what the model refused
        for token in range(2, LUO_FILE_MAX + 1):
            preserve(luo, s, token, Source())
        assert errno_of(preserve, luo, s, 999, Source()) == errno.ENOSPC
        assert errno_of(preserve, luo, s, 1, Source()) == errno.EEXIST  # checked first


def test_closing_an_outgoing_session_unpreserves_its_files() -> None:
    with boot() as m:
        luo = luo_of(m)
        kho = m.kernel.kho
        before = set(kho.preserved_blocks())  # type: ignore[union-attr]
        s = create(luo, luo.open_device(), b"gone")
        src = Source(os.urandom(5 << 20))
        preserve(luo, s, 7, src)
        assert len(set(kho.preserved_blocks()) - before) > 3  # type: ignore[union-attr]
        luo.release_session(s)
        assert set(kho.preserved_blocks()) == before  # type: ignore[union-attr]
        assert src.released == 1 and not luo.outgoing


# -- across a kexec --------------------------------------------------------------------------
def stage1(m: Machine, files: dict[int, Source], name: bytes = b"vm") -> LuoSession:
    luo = luo_of(m)
    dev = luo.open_device()
    s = create(luo, dev, name)
    for token, src in files.items():
        preserve(luo, s, token, src)
    luo.release_device(dev)  # the device may close; the session descriptor stays open
    return s


@pytest.mark.parametrize("release", ["6.19", "7.0"])
def test_memfds_survive_a_kexec_into_the_same_release(release: str) -> None:
    big = os.urandom(1 << 20) * 64  # 64 MiB
    hole = bytearray(3 << 20)
    hole[: 1 << 20] = os.urandom(1 << 20)
    hole[-5:] = b"tail!"
    files = {
        1: Source(big, pos=12345),
        2: Source(b""),
        3: Source(bytes(hole)),
        4: Source(b"short", pos=5),
    }
    with boot(release, memory=2 << 30) as m:
        stage1(m, files)
        files[4].data[0:1] = b"S"  # written after preserve: the folio holds it at the reboot
        kexec(m, release)
        assert "luo: Retrieved live update data, liveupdate number: 1" in m.kernel.log.render()
        luo = luo_of(m)
        dev = luo.open_device()
        s = retrieve(luo, dev, b"vm")
        assert errno_of(retrieve, luo, dev, b"vm") == errno.EINVAL
        got = {token: retrieve_fd(luo, s, token) for token in files}
        assert contents(m, got[1]) == big and got[1].pos == 12345
        assert got[2].size == 0 and got[2].extents == []
        assert contents(m, got[3]) == bytes(hole)
        assert contents(m, got[4]) == b"Short" and got[4].pos == 5
        assert retrieve_fd(luo, s, 1) is got[1]  # the same file again
        assert errno_of(retrieve_fd, luo, s, 99) == errno.ENOENT
        # the folios are reserved in the new kernel and hold the bytes at their addresses
        reserved = m.kernel.memblock.reserved
        for _offset, phys, length in got[1].extents:
            assert any(r.base <= phys and phys + length <= r.end for r in reserved)
        finish(luo, s)
        finish(luo, s)  # nothing left: success again
        assert errno_of(retrieve_fd, luo, s, 1) == errno.ENOENT
        # the next kexec counts on
        kexec(m, release)
        assert "liveupdate number: 2" in m.kernel.log.render()


def test_sessions_not_retrieved_are_lost_at_the_next_kexec() -> None:
    with boot() as m:
        stage1(m, {1: Source(b"a")}, b"kept")
        stage1(m, {1: Source(b"b")}, b"dropped")
        kexec(m, "6.19")
        luo = luo_of(m)
        dev = luo.open_device()
        s = retrieve(luo, dev, b"kept")
        assert contents(m, retrieve_fd(luo, s, 1)) == b"a"
        kexec(m, "6.19")  # "kept" is retrieved but open, "dropped" never was: both gone
        luo = luo_of(m)
        dev = luo.open_device()
        assert errno_of(retrieve, luo, dev, b"kept") == errno.ENOENT
        assert errno_of(retrieve, luo, dev, b"dropped") == errno.ENOENT


def test_closing_a_retrieved_session_finishes_it() -> None:
    with boot() as m:
        stage1(m, {1: Source(b"a"), 2: Source(b"b")}, b"s")
        kexec(m, "6.19")
        luo = luo_of(m)
        dev = luo.open_device()
        s = retrieve(luo, dev, b"s")
        f = retrieve_fd(luo, s, 1)
        released: list[RestoredFile] = []
        f.on_release = released.append
        luo.release_session(s)  # file 2 never retrieved: its folios are dropped
        assert released == [f] and not luo.incoming
        assert errno_of(retrieve, luo, dev, b"s") == errno.ENOENT


def test_finish_refused_by_a_file_is_ebusy_and_finishes_nothing() -> None:
    with boot() as m:
        luo_of(m).handlers.append(BusyHandler())
        stage1(m, {1: Source(b"a"), 2: Source(kind="busy")}, b"s")
        kexec(m, "6.19")
        luo = luo_of(m)
        luo.handlers.append(BusyHandler())  # registered in the new kernel too
        s = retrieve(luo, luo.open_device(), b"s")
        assert errno_of(finish, luo, s) == errno.EBUSY
        assert len(s.files) == 2
        luo.release_session(s)  # release tries to finish, fails, keeps the session
        assert "luo: Unable to finish session [s] on release" in m.kernel.log.render()
        assert luo.incoming == [s]


def test_unknown_handler_in_the_next_kernel() -> None:
    with boot() as m:
        luo_of(m).handlers.append(BusyHandler())
        stage1(m, {1: Source(b"a"), 2: Source(kind="busy")}, b"s")
        kexec(m, "6.19")  # the new kernel has no test-busy-v1 handler
        luo = luo_of(m)
        s = retrieve(luo, luo.open_device(), b"s")
        assert "luo: No registered handler for compatible 'test-busy-v1'" in m.kernel.log.render()
        assert [f.token for f in s.files] == [1]


def test_reboot_fails_with_eagain_when_kho_finalize_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    with boot() as m:
        stage1(m, {1: Source(b"a")})
        m.kernel.kexec.kexec_file_load(make_bzimage(RELEASES["6.19"]), None, m.kernel.cmdline)
        monkeypatch.setattr(m.kernel.kho, "kho_finalize", lambda: -errno.ENOMEM)
        assert errno_of(m.kexec_exec) == errno.EAGAIN
        assert "luo: kho_finalize failed -12" in m.kernel.log.render()
        assert m.generation == 0  # still the first kernel
        monkeypatch.undo()
        m.kexec_exec()
        assert m.generation == 1


def test_freeze_failure_fails_the_reboot() -> None:
    class Broken(Source):
        def readinto(self, offset: int, buf: memoryview) -> int:
            raise OSError(errno.EIO, "gone")

    with boot() as m:
        stage1(m, {0x10: Broken(b"abc")})
        m.kernel.kexec.kexec_file_load(make_bzimage(RELEASES["6.19"]), None, m.kernel.cmdline)
        assert errno_of(m.kexec_exec) == errno.EIO
        assert (
            "luo: Freeze failed for token[0x10] handler[memfd-v1] err[-EIO]"
            in m.kernel.log.render()
        )


# -- between releases --------------------------------------------------------------------------
@pytest.mark.parametrize("receiver", ["6.18", "v4", "6.12"])
@pytest.mark.parametrize("sender", ["6.19", "7.0"])
def test_sessions_are_lost_in_a_release_without_luo(sender: str, receiver: str) -> None:
    with boot(sender) as m:
        src = Source(b"precious")
        stage1(m, {1: src})
        kexec(m, receiver)
        assert m.kernel.luo is None and m.kernel.panic is None
        assert src.released == 1  # the old kernel is gone and with it its references


def test_7_0_into_6_19_keeps_sessions() -> None:
    with boot("7.0") as m:
        stage1(m, {1: Source(b"forward")})
        kexec(m, "6.19")
        luo = luo_of(m)
        s = retrieve(luo, luo.open_device(), b"vm")
        assert contents(m, retrieve_fd(luo, s, 1)) == b"forward"


def test_6_19_into_7_0_panics_for_lack_of_the_flb_node() -> None:
    with boot("6.19") as m:
        stage1(m, {1: Source(b"x")})
        kexec(m, "7.0")
        log = m.kernel.log.render()
        assert "luo: Unable to get FLB node [luo-flb]" in log
        assert m.kernel.panic == (
            "Kernel panic - not syncing: The incoming tree failed to initialize properly "
            "[-ENOENT], disabling live update"
        )


def test_6_19_into_7_0_panics_even_without_liveupdate() -> None:
    """luo_early_startup reads the incoming LUO subtree whenever KHO is enabled, whether
    or not ``liveupdate=`` is on (luo_core.c)."""
    with boot("6.19") as m:
        stage1(m, {1: Source(b"x")})
        m.kernel.kexec.kexec_file_load(make_bzimage(RELEASES["7.0"]), None, "console=ttyS0 kho=on")
        m.kexec_exec()
        assert m.kernel.panic is not None and "[-ENOENT]" in m.kernel.panic


def test_6_19_into_7_0_with_kho_off_boots() -> None:
    with boot("6.19") as m:
        stage1(m, {1: Source(b"x")})
        m.kernel.kexec.kexec_file_load(make_bzimage(RELEASES["7.0"]), None, "console=ttyS0")
        m.kexec_exec()
        assert m.kernel.panic is None


def test_descriptors_of_a_previous_boot_are_dead() -> None:
    with boot() as m:
        old = luo_of(m)
        s = stage1(m, {1: Source(b"x")})
        kexec(m, "6.19")
        arg = UserArg.from_buffer(FD_ARG.pack(16, 0, 2))
        assert errno_of(old.ioctl, s, LIVEUPDATE_SESSION_PRESERVE_FD, arg, Source()) == errno.ENODEV
        assert errno_of(old.open_device) == errno.ENODEV
