"""Concurrency through the mount: parallel clients while activate/kexec cycles run.

The campaign (``kho_fs.stress.concurrency``) runs 8 threads of real ``pread``/``pwrite``/
``open`` calls against region and sysfs files during 100 cycles and checks every region's
sha256 after every cycle.  The focused tests pin the documented semantics one by one:
descriptors held across an exec, a write() that straddles an exec (made deterministic
with userfaultfd: the kernel blocks fetching the second MiB of the caller's buffer while
the exec runs), and directory listings opened before a change.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest

from kho_fs.daemon import read_pid_file
from kho_fs.stress.concurrency import CMDLINE, MEMORY, NODES, REGIONS, run_concurrency
from kho_fs.testing import MountedMachine, mounted

SZ_1M = 1 << 20
KHO = "sys/kernel/kho"
CYCLES = 100
LIVENESS_BOUND = 600.0  # seconds: a hang guard for CI, not a performance target


def machine(tmp_path: Path):
    return mounted(tmp_path, memory=MEMORY, nodes=NODES, cmdline=CMDLINE)


def expect_errno(code: int, call: Callable[[], object]) -> None:
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno == code, info.value


def load_next_kernel(m: MountedMachine) -> None:
    """Activate and load with KHO data, as ``kho-fs kexec -l IMAGE -s`` does."""
    m.write(f"{KHO}/active", b"1\n")
    m.path("machine/kexec/kernel").write_bytes(b"\x90" * 65536)
    m.path("machine/kexec/cmdline").write_bytes(CMDLINE.encode() + b"\n")
    m.write("machine/kexec/control", b"kexec_file_load\n")
    assert m.read_bytes("sys/kernel/kexec_loaded") == b"1\n"


def exec_next_kernel(m: MountedMachine) -> None:
    m.write("machine/kexec/control", b"exec\n")


def region_start(m: MountedMachine, name: str) -> str:
    line = next(x for x in m.read_text("machine/status").splitlines() if f" {name} " in x)
    return line.split()[2]


# -- the campaign ---------------------------------------------------------------------------


def test_campaign_8_workers_100_cycles_loses_and_tears_nothing(tmp_path):
    with machine(tmp_path) as m:
        report = run_concurrency(
            m.mountpoint, cycles=CYCLES, workers=8, seed=0, timeout=LIVENESS_BOUND
        )
        assert report.ok, report.summary()
        assert report.cycles == CYCLES
        # Verified before the first cycle and after every one, each region entirely.
        assert report.regions_verified == (CYCLES + 1) * len(REGIONS)
        assert report.bytes_verified == (CYCLES + 1) * sum(size for _, size in REGIONS)
        assert report.bytes_written > 0 and report.bytes_read > 0
        for kind in (
            "region.write",
            "dev_mem.write",
            "region.read_back",
            "region.read",
            "active",
            "dt",
            "dt_fw",
            "dt_max.write",
            "dmesg",
            "memblock.memory",
            "listdir.kho",
        ):
            assert report.operations[kind] > 0, (kind, report.summary())
        assert set(report.errnos) <= {"ENODEV", "EIO", "ENOENT", "EBUSY"}, report.errnos
        assert report.errnos["ENODEV"] > 0, report.summary()  # stale descriptors were used
        assert read_pid_file(str(m.mountpoint)) == m.pid
        assert m.pid is not None
        os.kill(m.pid, 0)  # the same daemon served the whole campaign
        assert "Traceback" not in m.log(), m.log()


# -- descriptors held across an exec --------------------------------------------------------


def test_descriptor_held_across_exec_gets_enodev_and_its_data_survives(tmp_path):
    with machine(tmp_path) as m:
        name, size = REGIONS[0]
        region = f"machine/reserve_mem/{name}"
        start = region_start(m, name)
        data = os.urandom(3 * SZ_1M)
        fds: dict[str, int] = {}
        try:
            for path, flags in (
                (region, os.O_RDWR),
                ("dev/mem", os.O_RDWR),
                (f"{KHO}/active", os.O_RDONLY),
                ("machine/dmesg", os.O_RDONLY),
                ("sys/kernel/debug/memblock/reserved", os.O_RDONLY),
            ):
                fds[path] = os.open(m.path(path), flags)
            assert os.pwrite(fds[region], data, 4096) == len(data)
            load_next_kernel(m)
            exec_next_kernel(m)

            # The old kernel's files are gone: sysfs and region files answer ENODEV,
            # debugfs-like files EIO; nothing more reaches the region through them.
            for path in (region, "dev/mem", f"{KHO}/active"):
                expect_errno(errno.ENODEV, lambda p=path: os.pread(fds[p], 4096, 0))
            expect_errno(errno.ENODEV, lambda: os.pwrite(fds[region], b"late", 0))
            expect_errno(errno.ENODEV, lambda: os.pwrite(fds["dev/mem"], b"late", int(start, 16)))
            for path in ("machine/dmesg", "sys/kernel/debug/memblock/reserved"):
                expect_errno(errno.EIO, lambda p=path: os.pread(fds[p], 4096, 0))
            assert os.fstat(fds[region]).st_size == size  # the last size of the old file
        finally:
            for fd in fds.values():
                os.close(fd)

        # The new kernel revived the region at the same address with the same bytes.
        assert f"Revived memory reservation '{name}' from KHO" in m.read_text("machine/dmesg")
        assert region_start(m, name) == start
        content = m.read_bytes(region)
        assert content == bytes(4096) + data + bytes(size - 4096 - len(data))
        assert m.read_bytes(f"{KHO}/active") == b"0\n"


# -- a write() straddling an exec -----------------------------------------------------------


class _UserFaults:
    """A buffer whose upper part is filled only on demand, through userfaultfd."""

    UFFD_API = 0xAA
    UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
    UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
    UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy)
    USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0x00) on /dev/userfaultfd
    UFFD_EVENT_PAGEFAULT = 0x12
    SYS_USERFAULTFD: ClassVar[dict[str, int]] = {"x86_64": 323, "aarch64": 282}

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        self.fd = self._open()
        self._ioctl(self.UFFDIO_API, (ctypes.c_uint64 * 3)(self.UFFD_API, 0, 0))

    def _open(self) -> int:
        flags = os.O_CLOEXEC | os.O_NONBLOCK
        number = self.SYS_USERFAULTFD.get(os.uname().machine)
        fd = self.libc.syscall(number, flags) if number is not None else -1
        if fd >= 0:
            return fd
        # Where the syscall is filtered, the device (Linux 6.1+) may still be there.
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
        try:
            fd = self.libc.ioctl(dev, self.USERFAULTFD_IOC_NEW, flags)
        finally:
            os.close(dev)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"userfaultfd: {os.strerror(code)}")
        return fd

    def _ioctl(self, request: int, arg: ctypes.Array[ctypes.c_uint64]) -> None:
        if self.libc.ioctl(self.fd, request, ctypes.addressof(arg)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def register_missing(self, address: int, length: int) -> None:
        self._ioctl(self.UFFDIO_REGISTER, (ctypes.c_uint64 * 4)(address, length, 1, 0))

    def wait_fault(self, timeout: float) -> int:
        readable, _, _ = select.select([self.fd], [], [], timeout)
        assert readable, "the kernel never touched the missing part of the buffer"
        message = os.read(self.fd, 32)
        assert message[0] == self.UFFD_EVENT_PAGEFAULT
        return struct.unpack_from("<Q", message, 16)[0]

    def fill(self, address: int, source: int, length: int) -> None:
        self._ioctl(self.UFFDIO_COPY, (ctypes.c_uint64 * 5)(address, source, length, 0, 0))

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def half_missing_buffer(size: int) -> Iterator[tuple[mmap.mmap, _UserFaults, int]]:
    """A page-aligned buffer of ``size`` bytes whose second half faults to userfaultfd."""
    buf = mmap.mmap(-1, size)
    faults = _UserFaults()
    try:
        address = address_of(buf)
        faults.register_missing(address + size // 2, size // 2)
        yield buf, faults, address
    finally:
        faults.close()
        buf.close()


def address_of(buf: mmap.mmap) -> int:
    """Where an mmap lives (valid while it stays open)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def test_write_straddling_an_exec_returns_the_bytes_applied_before_it(tmp_path):
    """A 2 MiB pwrite is two FUSE requests of 1 MiB.  The kernel fetches the second MiB of
    the caller's buffer only after the first request was answered; userfaultfd holds it
    there while the exec runs.  The second request then reaches a stale file (ENODEV), so
    write() returns 1 MiB -- exactly what was applied -- and the revived region shows it."""
    name, size = REGIONS[0]
    region = f"machine/reserve_mem/{name}"
    first, second = b"\xa1" * SZ_1M, b"\xb2" * SZ_1M
    with machine(tmp_path) as m:
        old = os.urandom(2 * SZ_1M)
        m.path(region).write_bytes(old)  # 2 MiB of known bytes before
        load_next_kernel(m)
        fd = os.open(m.path(region), os.O_RDWR)
        source = mmap.mmap(-1, SZ_1M)
        source[:] = second
        try:
            with half_missing_buffer(2 * SZ_1M) as (buf, faults, address):
                buf[:SZ_1M] = first  # present; the second half is still missing
                faulted: list[int] = []
                problems: list[BaseException] = []

                def exec_on_fault() -> None:
                    try:
                        faulted.append(faults.wait_fault(timeout=30) - address)
                        exec_next_kernel(m)
                        faults.fill(address + SZ_1M, address_of(source), SZ_1M)
                    except BaseException as exc:  # reported by the main thread
                        problems.append(exc)

                handler = threading.Thread(target=exec_on_fault)
                handler.start()
                with memoryview(buf) as view:
                    written = os.pwrite(fd, view, 0)
                handler.join(60)
                assert not problems, problems
                assert faulted == [SZ_1M]
                assert written == SZ_1M
            expect_errno(errno.ENODEV, lambda: os.pwrite(fd, second, SZ_1M))
        finally:
            os.close(fd)
            source.close()
        assert f"Revived memory reservation '{name}' from KHO" in m.read_text("machine/dmesg")
        content = m.read_bytes(region)
        assert len(content) == size
        assert content[:SZ_1M] == first
        assert content[SZ_1M : 2 * SZ_1M] == old[SZ_1M:]  # the unacknowledged MiB: untouched


# -- directory listings opened before a change ---------------------------------------------


def test_listing_opened_before_a_change_never_caches_a_removed_file(tmp_path):
    """readdir answers from the listing taken at opendir, and the kernel caches every
    entry of the reply; an entry removed in between must not come back as a stale
    dentry (it made ``dt`` answer ENODEV after the next activation, and after an exec
    the whole ``sys/kernel/kho`` directory ENOENT)."""
    with machine(tmp_path) as m:
        m.write(f"{KHO}/active", b"1\n")
        with os.scandir(m.path(KHO)) as listing:  # opendir: the listing includes dt
            m.write(f"{KHO}/active", b"0\n")
            names = sorted(entry.name for entry in listing)
        assert names == ["active", "dt_max", "scratch_len", "scratch_phys"]
        m.write(f"{KHO}/active", b"1\n")
        dt = m.read_bytes(f"{KHO}/dt")
        assert dt[:4] == b"\xd0\x0d\xfe\xed"

        load_next_kernel(m)
        with os.scandir(m.path("sys/kernel")) as listing:  # lists the old kernel's kho/
            exec_next_kernel(m)
            names = sorted(entry.name for entry in listing)
        assert "kho" in names
        assert m.read_bytes(f"{KHO}/active") == b"0\n"
        assert m.read_bytes("sys/firmware/kho/dt_fw") == dt
