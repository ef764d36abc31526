"""How the daemon's ``/dev/liveupdate`` tells a memfd from other files (docs/luo.md): the
memfd handler's ``can_preserve`` (a link-less shmem file), found without ever asking a
FUSE file system, on the fast path (``F_GET_SEALS`` + ``fstat``) and the slow one."""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kho_fs.luo_server import FdSource, _classify_sealable, _classify_slow, classify
from kho_fs.model.luo import FILE_KIND_MEMFD, FILE_KIND_OTHER
from kho_fs.testing import mounted

MEMFD = (FILE_KIND_MEMFD, True)
OTHER = (FILE_KIND_OTHER, True)


@pytest.fixture
def fds() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def keep(fds: list[int], fd: int) -> int:
    fds.append(fd)
    return fd


def test_memfds_and_unlinked_tmpfs_files(fds: list[int]) -> None:
    memfd = keep(fds, os.memfd_create("m", os.MFD_CLOEXEC))
    os.ftruncate(memfd, 12345)
    sealable = keep(fds, os.memfd_create("s", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING))
    write_only = keep(fds, os.open(f"/proc/self/fd/{memfd}", os.O_WRONLY))  # the same file
    tmpfile = keep(fds, os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR))
    for fd in (memfd, sealable, write_only, tmpfile):
        assert classify(fd) == MEMFD
        assert _classify_slow(fd) == MEMFD  # both paths agree
    fast = _classify_sealable(memfd)
    assert fast is not None and fast[1].st_size == 12345


def test_shmem_files_with_links_and_other_files(fds: list[int], tmp_path: Path) -> None:
    with open("/dev/shm/kho-fs-classify", "w"):
        pass
    try:
        linked = keep(fds, os.open("/dev/shm/kho-fs-classify", os.O_RDWR))
        assert classify(linked) == OTHER  # i_nlink != 0
    finally:
        os.unlink("/dev/shm/kho-fs-classify")
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    cases = [
        keep(fds, os.open("/dev/null", os.O_RDWR)),
        keep(fds, os.open("/", os.O_RDONLY | os.O_DIRECTORY)),
        keep(fds, os.open(plain, os.O_RDONLY)),
        *(keep(fds, end) for end in os.pipe()),
    ]
    a, b = socket.socketpair()
    cases += [keep(fds, a.detach()), keep(fds, b.detach())]
    for fd in cases:
        assert classify(fd)[0] == FILE_KIND_OTHER


def test_o_path_descriptors_are_not_files(fds: list[int]) -> None:
    memfd = keep(fds, os.memfd_create("m", os.MFD_CLOEXEC))
    path = keep(fds, os.open(f"/proc/self/fd/{memfd}", os.O_PATH))
    assert _classify_sealable(path) is None  # F_GET_SEALS refuses O_PATH: the slow path
    assert classify(path)[0] is None  # the kernel's fget fails: EBADF
    assert classify(keep(fds, os.open("/", os.O_PATH)))[0] is None


def test_hugetlb_memfds_are_not_shmem(fds: list[int]) -> None:
    try:
        fd = keep(fds, os.memfd_create("h", os.MFD_CLOEXEC | os.MFD_HUGETLB))
    except OSError:
        pytest.skip("no hugetlbfs")
    assert classify(fd) == OTHER  # memfd_luo's can_preserve: shmem_file() only


def test_shared_anonymous_memory_is_a_linkless_shmem_file(fds: list[int]) -> None:
    """``mmap(MAP_SHARED | MAP_ANONYMOUS)`` is a shmem file without links (``/dev/zero
    (deleted)``): the kernel's memfd handler would take it, and so does the daemon."""
    area = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    try:
        start = next(
            line.split()[0]
            for line in Path("/proc/self/maps").read_text().splitlines()
            if line.endswith("/dev/zero (deleted)")
        )
        try:
            fd = keep(fds, os.open(f"/proc/self/map_files/{start}", os.O_RDWR))
        except OSError:
            pytest.skip("/proc/self/map_files needs CAP_SYS_ADMIN")
        assert classify(fd) == MEMFD
    finally:
        area.close()


def test_the_stat_of_the_request_answers_size_until_dropped(fds: list[int]) -> None:
    memfd = keep(fds, os.memfd_create("m", os.MFD_CLOEXEC))
    fast = _classify_sealable(memfd)
    assert fast is not None
    source = FdSource(os.dup(memfd), *fast)
    try:
        os.ftruncate(memfd, 8192)
        assert source.size() == 0  # the size when the request came
        source.st = None  # what the server does once the request is answered
        assert source.size() == 8192
    finally:
        source.release()


def test_files_of_a_fuse_mount_are_never_asked(tmp_path: Path, fds: list[int]) -> None:
    """A file of the mount: F_GET_SEALS fails without a FUSE request, the slow path
    finds a FUSE mount and does not touch the file (not safe to close in the loop)."""
    with mounted(tmp_path, memory="1G") as m:
        fd = keep(fds, os.open(m.mountpoint / "machine" / "status", os.O_RDONLY))
        assert _classify_sealable(fd) is None
        assert classify(fd) == (FILE_KIND_OTHER, False)
        os.close(fds.pop())
