"""Concurrency campaign: parallel clients on a live mount while activate/kexec cycles run.

Threads are real parallel clients: ``os.pread``/``os.pwrite``/``os.open`` release the GIL,
so their FUSE requests overlap with each other and with the controller's.  Half of the
workers write, the other half read:

- **Writers** own disjoint, page-aligned slices of every ``reserve_mem`` region, so the
  expected content is well defined: each write stores a versioned pattern of 4 KiB blocks
  (every block names its region, writer, index and version) and, once ``write()`` returned
  ``n``, the first ``n`` bytes become expected content.  They write through the region
  files and through ``dev/mem``, on descriptors held across cycles or opened per operation,
  and read their own slices back (which must equal the expected bytes exactly).  Buffers
  are page-aligned mmaps, so the kernel cuts multi-request writes on block boundaries.
- **Readers** read every sysfs/debugfs/emulator file of interest and check that each read
  is one whole, valid value; region reads check that every block is whole and carries a
  version between the one acknowledged before the read and the newest one issued.

The controller runs the cycles (activate, sometimes abort and re-activate, stage the
kexec files, ``kexec_file_load``, ``exec``) and after each exec parks the workers on a
barrier and compares the sha256 of every region, read through the mount, with the
expected content.  Each control step bumps a timeline the workers sample around every
operation, so an errno is *documented* only in the window where the semantics allow it
(see ``docs/decisions.md``, "Concurrency through the mount"):

- I/O through a descriptor of a kernel-owned file that an exec (for ``dt``: an abort or
  exec) replaced since it was opened: ENODEV (sysfs attributes, region files,
  ``dev/mem``) or EIO (debugfs files, ``machine/dmesg``, ``proc/cmdline``).  Success
  there after the replacement completed is a bug.
- ``open()`` or ``listdir()`` overlapping an exec: ENOENT, ENODEV or EIO (the old
  kernel's file or directory is gone, the new one not yet reached through the cached path).
- ``dt``: ENOENT unless KHO is active for the whole call; ``dt_fw``: ENOENT before the
  first handover boot; ``dt_max`` writes: EBUSY unless KHO is inactive for the whole call.
- A ``write()`` the kernel splits into several FUSE requests may straddle an exec: it
  returns the short count of bytes applied before it (the rest got ENODEV).

Anything else, and any mismatch, is listed in :attr:`ConcurrencyReport.unexpected`.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import re
import struct
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

__all__ = [
    "CMDLINE",
    "MEMORY",
    "NODES",
    "REGIONS",
    "ConcurrencyReport",
    "run_concurrency",
]

PAGE = 4096
SZ_1M = 1 << 20
#: ``reserve_mem`` regions the campaign expects: (name, size).  Larger than one FUSE
#: request (1 MiB) per writer slice, so multi-request writes happen.
REGIONS: tuple[tuple[str, int], ...] = (("r0", 8 * SZ_1M), ("r1", 8 * SZ_1M), ("r2", 4 * SZ_1M))
#: What to mount: ``mounted(dir, memory=MEMORY, nodes=NODES, cmdline=CMDLINE)``.  The
#: scratch areas hold the handover kernel's page tables and 64 MiB memory map.
MEMORY = "4G"
NODES = 1
CMDLINE = (
    "console=ttyS0 "
    + " ".join(f"reserve_mem={size >> 20}M:4096:{name}" for name, size in REGIONS)
    + " kho=on kho_scratch=128M,64M"
)
KERNEL_IMAGE_SIZE = 64 * 1024  # what the controller stages as the next kernel
MAX_WRITE = 2 * SZ_1M  # largest single write(): two FUSE requests of 1 MiB
WRITE_SIZES = (PAGE, 16 * 1024, 128 * 1024, SZ_1M, MAX_WRITE)
ABORT_EVERY = 4  # every 4th cycle aborts and re-activates before loading
BARRIER_TIMEOUT = 60.0
UNEXPECTED_LIMIT = 200  # keep the report readable if something goes badly wrong

KHO = "sys/kernel/kho"
DT = f"{KHO}/dt"
DT_FW = "sys/firmware/kho/dt_fw"
DT_MAX_VALUE = b"0xa00000\n"
FDT_MAGIC = b"\xd0\x0d\xfe\xed"
HEX_LINE = re.compile(rb"0x[0-9a-f]+")
MEMBLOCK_LINE = re.compile(rb" {0,3}\d+: 0x[0-9a-f]{16}\.\.0x[0-9a-f]{16} +(\d+|x) [A-Z_]+")
DMESG_LINE = re.compile(rb"\[ *\d+\.\d{6}\] [^\n]*")
STATUS_REGION = re.compile(r"^reserve_mem: (\S+) +0x([0-9a-f]+) \+ 0x([0-9a-f]+)$", re.M)

_MAGIC = b"KHOCONC1"
_HEADER = struct.Struct("<8sHHIQQ")  # magic, region, writer, block index, version, word
_WORD = struct.Struct("<Q")
_MASK64 = (1 << 64) - 1
_ZERO_BLOCK = bytes(PAGE)
_STALE_OPEN = {errno.ENOENT, errno.ENODEV, errno.EIO}
_T = TypeVar("_T")


# -- report ---------------------------------------------------------------------------------


@dataclass
class ConcurrencyReport:
    """What a campaign did and everything that contradicted the documented semantics."""

    cycles: int = 0  # completed activate/load/exec cycles
    workers: int = 0
    seconds: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)  # per kind
    bytes_written: int = 0  # acknowledged by write() (short writes count what they returned)
    bytes_read: int = 0  # by workers
    bytes_verified: int = 0  # compared by sha256 at the barriers
    regions_verified: int = 0  # region checks at the barriers, (cycles + 1) × regions
    short_writes: Counter[str] = field(default_factory=Counter)  # "returned/requested"
    errnos: Counter[str] = field(default_factory=Counter)  # documented errnos, by name
    errnos_by_kind: Counter[str] = field(default_factory=Counter)  # "kind ERRNO"
    unexpected: list[str] = field(default_factory=list)
    unexpected_dropped: int = 0

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.unexpected_dropped

    def summary(self) -> str:
        ops = sum(self.operations.values())
        lines = [
            f"{self.cycles} cycles, {self.workers} workers, {self.seconds:.1f} s, {ops} operations",
            f"written {self.bytes_written} B, read {self.bytes_read} B, "
            f"verified {self.bytes_verified} B in {self.regions_verified} region checks",
            "operations: " + ", ".join(f"{k}={v}" for k, v in sorted(self.operations.items())),
            "documented errnos: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errnos.items())),
            "short writes: " + ", ".join(f"{k}×{v}" for k, v in sorted(self.short_writes.items())),
            f"unexpected: {len(self.unexpected) + self.unexpected_dropped}",
        ]
        lines += [f"  {u}" for u in self.unexpected[:20]]
        return "\n".join(lines)


@dataclass
class _Stats:
    """One worker's counters, merged into the report while the workers are parked."""

    operations: Counter[str] = field(default_factory=Counter)
    errnos: Counter[str] = field(default_factory=Counter)
    errnos_by_kind: Counter[str] = field(default_factory=Counter)
    short_writes: Counter[str] = field(default_factory=Counter)
    bytes_written: int = 0
    bytes_read: int = 0
    unexpected: list[str] = field(default_factory=list)

    def merge_into(self, report: ConcurrencyReport) -> None:
        report.operations += self.operations
        report.errnos += self.errnos
        report.errnos_by_kind += self.errnos_by_kind
        report.short_writes += self.short_writes
        report.bytes_written += self.bytes_written
        report.bytes_read += self.bytes_read
        for message in self.unexpected:
            _add_unexpected(report, message)


def _add_unexpected(report: ConcurrencyReport, message: str) -> None:
    if len(report.unexpected) < UNEXPECTED_LIMIT:
        report.unexpected.append(message)
    else:
        report.unexpected_dropped += 1


# -- the controller's timeline ----------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    """What the files must show between two control steps."""

    active: bool
    loaded: bool
    dt: bytes | None  # what `dt` shows (None: absent)
    dt_fw: bytes | None  # what `dt_fw` shows (None: absent)


@dataclass(frozen=True)
class _Sample:
    completed: int
    started: int
    execs_completed: int
    execs_started: int
    dt_kills_completed: int
    dt_kills_started: int


class _Timeline:
    """Control steps as counters the workers sample without locks.

    The controller bumps ``started`` before a step and ``completed`` (after appending the
    new state) once it returned; single-writer ints are safe to read under the GIL.  An
    operation that saw ``completed == started`` at its start and the same ``started`` at
    its end overlapped no step, so the files must show ``states[completed]`` exactly.
    """

    def __init__(self, initial: _State) -> None:
        self.states = [initial]
        self.started = self.completed = 0
        self.execs_started = self.execs_completed = 0
        self.dt_kills_started = self.dt_kills_completed = 0  # aborts and execs remove `dt`

    def sample(self) -> _Sample:
        # Completion counters first: a step that ends between the reads looks in progress.
        completed, execs, kills = self.completed, self.execs_completed, self.dt_kills_completed
        return _Sample(
            completed, self.started, execs, self.execs_started, kills, self.dt_kills_started
        )

    def stable(self, before: _Sample, after: _Sample) -> _State | None:
        """The state an operation saw, or None when a step overlapped it."""
        if before.completed != before.started or after.started != before.started:
            return None
        return self.states[before.completed]

    @contextmanager
    def step(
        self, new_state: Callable[[], _State], *, execs: bool, kills_dt: bool
    ) -> Iterator[None]:
        self.started += 1
        if execs:
            self.execs_started += 1
        if kills_dt:
            self.dt_kills_started += 1
        yield
        self.states.append(new_state())
        if execs:
            self.execs_completed += 1
        if kills_dt:
            self.dt_kills_completed += 1
        self.completed += 1

    @property
    def state(self) -> _State:
        return self.states[-1]


class _Gate:
    """The barrier: workers park between operations while the controller verifies."""

    def __init__(self, workers: int) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._parked = 0
        self.alive = workers
        self.stop = False

    def checkpoint(self) -> None:
        if not self._paused:
            return
        with self._cond:
            self._parked += 1
            self._cond.notify_all()
            while self._paused and not self.stop:
                self._cond.wait()
            self._parked -= 1

    def exited(self) -> None:
        with self._cond:
            self.alive -= 1
            self._cond.notify_all()

    def pause(self, timeout: float) -> bool:
        with self._cond:
            self._paused = True
            return self._cond.wait_for(lambda: self._parked >= self.alive, timeout)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.stop = True
            self._paused = False
            self._cond.notify_all()


# -- regions and the block pattern --------------------------------------------------------------


@dataclass
class _Region:
    index: int
    name: str
    start: int  # physical address
    size: int
    slices: list[tuple[int, int]]  # writer -> [begin, end) in region offsets
    expected: bytearray

    @property
    def path(self) -> str:
        return f"machine/reserve_mem/{self.name}"

    def owner(self, offset: int) -> int:
        return next(w for w, (lo, hi) in enumerate(self.slices) if lo <= offset < hi)


def _slices(size: int, writers: int) -> list[tuple[int, int]]:
    share = size // writers // PAGE * PAGE
    bounds = [w * share for w in range(writers)] + [size]
    return [(bounds[w], bounds[w + 1]) for w in range(writers)]


def _block(region: int, writer: int, index: int, version: int) -> bytes:
    """One 4 KiB block of the pattern: entirely determined by its header."""
    word = (
        (version * 0x9E3779B97F4A7C15)
        ^ (index * 0xC2B2AE3D27D4EB4F)
        ^ (region << 56 | writer << 48)
    ) & _MASK64
    return _HEADER.pack(_MAGIC, region, writer, index, version, word) + _WORD.pack(word) * 508


def _block_version(block: bytes | memoryview, region: _Region, index: int) -> int | None:
    """The version a block carries (0 for never written), None if it is torn or foreign."""
    if block == _ZERO_BLOCK:
        return 0
    magic, r, w, i, version, _ = _HEADER.unpack_from(block)
    if magic != _MAGIC or r != region.index or i != index or w != region.owner(index * PAGE):
        return None
    return version if block == _block(r, w, i, version) else None


def _aligned(size: int) -> mmap.mmap:
    """A page-aligned buffer: the kernel pins at most 256 user pages per FUSE request,
    so aligned buffers make request boundaries fall on 4 KiB blocks."""
    return mmap.mmap(-1, size)


def _pread_aligned(fd: int, buf: mmap.mmap, size: int, offset: int) -> bytes:
    with memoryview(buf) as view:
        n = os.preadv(fd, [view[:size]], offset)
        return bytes(view[:n])


# -- workers ------------------------------------------------------------------------------------


class _HeldFd:
    """A descriptor and the timeline samples around its open()."""

    def __init__(self, fd: int, before: _Sample, after: _Sample) -> None:
        self.fd = fd
        self.before = before
        self.after = after


class _Worker:
    """One client thread: runs :meth:`step` until the campaign stops, parking at barriers."""

    def __init__(self, campaign: _Campaign, index: int, seed: int) -> None:
        self.c = campaign
        self.index = index
        self.rng = random.Random(seed * 1_000_003 + index)
        self.stats = _Stats()
        self.held: dict[str, _HeldFd] = {}  # path -> descriptor kept across operations
        self.op = 0

    def run(self) -> None:
        try:
            while not self.c.gate.stop:
                self.c.gate.checkpoint()
                if self.c.gate.stop:
                    break
                try:
                    self.step()
                except Exception:
                    self.unexpected(f"checker crashed: {traceback.format_exc(limit=4)}")
                self.op += 1
        finally:
            for held in self.held.values():
                os.close(held.fd)
            self.held.clear()
            self.c.gate.exited()

    def step(self) -> None:
        raise NotImplementedError

    # -- bookkeeping -----------------------------------------------------------------------
    def unexpected(self, message: str) -> None:
        cycle = self.c.timeline.execs_completed
        self.stats.unexpected.append(f"cycle {cycle} worker {self.index} op {self.op}: {message}")

    def documented(self, kind: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.stats.errnos[name] += 1
        self.stats.errnos_by_kind[f"{kind} {name}"] += 1

    def classify_open(self, kind: str, exc: OSError, before: _Sample) -> None:
        """An open()/listdir() failed: documented only while an exec overlapped it."""
        after = self.c.timeline.sample()
        if exc.errno in _STALE_OPEN and after.execs_started > before.execs_completed:
            self.documented(f"{kind}.open", exc)
        else:
            self.unexpected(f"{kind}: open failed outside an exec: {exc!r}")

    def classify_stale(
        self, kind: str, exc: OSError, fd: _HeldFd, stale_errno: int, *, kills_dt: bool = False
    ) -> None:
        """I/O through a descriptor failed: documented once its file may have been replaced."""
        now = self.c.timeline.sample()
        replaced = now.execs_started > fd.before.execs_completed
        if kills_dt:
            replaced = replaced or now.dt_kills_started > fd.before.dt_kills_completed
        if replaced and exc.errno == stale_errno:
            self.documented(f"{kind}.stale", exc)
        else:
            self.unexpected(f"{kind}: I/O through a descriptor failed: {exc!r}")

    def check_not_stale(self, kind: str, fd: _HeldFd, before: _Sample) -> None:
        """Success through a descriptor whose file an exec replaced before the call: a bug."""
        if before.execs_completed > fd.after.execs_started:
            self.unexpected(f"{kind}: a descriptor from before an exec still works")

    # -- descriptors ------------------------------------------------------------------------
    def open_fd(self, kind: str, path: str, flags: int) -> _HeldFd | None:
        before = self.c.timeline.sample()
        try:
            fd = os.open(self.c.root / path, flags)
        except OSError as exc:
            self.classify_open(kind, exc, before)
            return None
        return _HeldFd(fd, before, self.c.timeline.sample())

    def call(
        self,
        kind: str,
        path: str,
        flags: int,
        io: Callable[[int], _T],
        stale_errno: int,
        *,
        hold: bool,
    ) -> _T | None:
        """``io(fd)`` on the held descriptor of ``path`` (opened if needed) or on a fresh
        one; every error is classified and None returned.  A stale held descriptor is
        closed, so the next call opens the new kernel's file."""
        fd = self.held.get(path) if hold else None
        if fd is None:
            fd = self.open_fd(kind, path, flags)
            if fd is None:
                return None
            if hold:
                self.held[path] = fd
        before = self.c.timeline.sample()
        try:
            result = io(fd.fd)
        except OSError as exc:
            self.classify_stale(kind, exc, fd, stale_errno)
            hold = False
            return None
        finally:
            if not hold:
                if self.held.get(path) is fd:
                    del self.held[path]
                os.close(fd.fd)
        self.check_not_stale(kind, fd, before)
        return result


class _Writer(_Worker):
    """Writes versioned blocks into its own slices and reads them back."""

    def __init__(self, campaign: _Campaign, index: int, seed: int) -> None:
        super().__init__(campaign, index, seed)
        self.buf = _aligned(MAX_WRITE)

    def step(self) -> None:
        region = self.rng.choice(self.c.regions)
        lo, hi = region.slices[self.index]
        size = min(self.rng.choice(WRITE_SIZES), hi - lo)
        offset = lo + self.rng.randrange(0, (hi - lo - size) // PAGE + 1) * PAGE
        roll = self.rng.random()
        if roll < 0.2:
            self.read_back(region, offset, size)
        else:
            self.write(region, offset, size, via_dev_mem=roll < 0.3)

    def target(self, region: _Region, offset: int, via_dev_mem: bool) -> tuple[str, str, int]:
        if via_dev_mem:
            return "dev_mem", "dev/mem", region.start + offset
        return "region", region.path, offset

    def write(self, region: _Region, offset: int, size: int, via_dev_mem: bool) -> None:
        kind, path, file_offset = self.target(region, offset, via_dev_mem)
        versions = self.c.versions
        versions[self.index] += 1
        version = versions[self.index]
        first = offset // PAGE
        data = b"".join(
            _block(region.index, self.index, first + i, version) for i in range(size // PAGE)
        )
        self.buf[:size] = data
        self.stats.operations[f"{kind}.write"] += 1

        def pwrite(fd: int) -> int:
            with memoryview(self.buf) as view:
                return os.pwrite(fd, view[:size], file_offset)

        hold = self.rng.random() < 0.6
        written = self.call(kind, path, os.O_RDWR, pwrite, errno.ENODEV, hold=hold)
        if written is None:
            return
        if written != size:
            self.stats.short_writes[f"{written}/{size}"] += 1
            if written % PAGE or not 0 < written < size:
                self.unexpected(f"{kind}: write of {size} at {offset:#x} returned {written}")
        region.expected[offset : offset + written] = data[:written]
        self.stats.bytes_written += written

    def read_back(self, region: _Region, offset: int, size: int) -> None:
        kind, path, file_offset = self.target(region, offset, self.rng.random() < 0.2)
        self.stats.operations[f"{kind}.read_back"] += 1
        data = self.call(
            kind,
            path,
            os.O_RDWR,
            lambda fd: _pread_aligned(fd, self.buf, size, file_offset),
            errno.ENODEV,
            hold=self.rng.random() < 0.6,
        )
        if data is None:
            return
        self.stats.bytes_read += len(data)
        if len(data) % PAGE or len(data) > size or not data:
            self.unexpected(f"{kind}: read of {size} at {offset:#x} returned {len(data)} bytes")
        if data != region.expected[offset : offset + len(data)]:
            self.unexpected(
                f"{kind}: own slice of {region.name} at {offset:#x} differs from what was "
                "acknowledged"
            )


class _Reader(_Worker):
    """Reads every file of interest and checks each read is one whole, valid value."""

    def __init__(self, campaign: _Campaign, index: int, seed: int) -> None:
        super().__init__(campaign, index, seed)
        self.buf = _aligned(MAX_WRITE)

    def step(self) -> None:
        self.rng.choice(self.CHECKS)(self)

    # -- helpers -----------------------------------------------------------------------------
    def read_file(
        self, kind: str, path: str, stale_errno: int, *, hold: bool = False, whole: bool = False
    ) -> tuple[bytes, _State | None] | None:
        """Read ``path`` from offset 0: one 4 KiB read (a sysfs attribute), or up to EOF
        with ``whole``.  Returns the bytes and the state if no control step overlapped."""
        self.stats.operations[kind] += 1

        def read(fd: int) -> bytes:
            if not whole:
                return os.pread(fd, PAGE, 0)
            parts, offset = [], 0
            while chunk := os.pread(fd, 65536, offset):
                parts.append(chunk)
                offset += len(chunk)
            return b"".join(parts)

        before = self.c.timeline.sample()
        data = self.call(kind, path, os.O_RDONLY, read, stale_errno, hold=hold)
        if data is None:
            return None
        self.stats.bytes_read += len(data)
        return data, self.c.timeline.stable(before, self.c.timeline.sample())

    def expect(self, kind: str, ok: bool, data: bytes) -> None:
        if not ok:
            self.unexpected(f"{kind}: invalid content {data[:200]!r}")

    # -- checks --------------------------------------------------------------------------------
    def check_active(self) -> None:
        hold = self.rng.random() < 0.5
        self._check_flag("active", f"{KHO}/active", "active", hold=hold)

    def check_kexec_loaded(self) -> None:
        self._check_flag("kexec_loaded", "sys/kernel/kexec_loaded", "loaded")

    def _check_flag(self, kind: str, path: str, attr: str, *, hold: bool = False) -> None:
        """A ``0\n``/``1\n`` file that must agree with the controller's state ``attr``."""
        got = self.read_file(kind, path, errno.ENODEV, hold=hold)
        if got is None:
            return
        data, state = got
        self.expect(kind, data in (b"0\n", b"1\n"), data)
        if state is not None:
            want = getattr(state, attr)
            if data != (b"1\n" if want else b"0\n"):
                self.unexpected(f"{kind}: read {data!r} while {attr}={want}")

    def check_dt_max(self) -> None:
        got = self.read_file("dt_max", f"{KHO}/dt_max", errno.ENODEV)
        if got is not None:
            self.expect("dt_max", got[0] == DT_MAX_VALUE, got[0])

    def check_scratch(self) -> None:
        for name in ("scratch_phys", "scratch_len"):
            got = self.read_file(name, f"{KHO}/{name}", errno.ENODEV)
            if got is None:
                continue
            data = got[0]
            lines = data.split(b"\n")
            valid = data.endswith(b"\n") and all(HEX_LINE.fullmatch(x) for x in lines[:-1])
            self.expect(name, valid and data == self.c.scratch[name], data)

    def check_blob(self, kind: str, path: str) -> None:
        """``dt`` or ``dt_fw``: present exactly when the state says, a whole FDT whose
        totalsize is its st_size, equal to the FDT the controller read."""
        self.stats.operations[kind] += 1
        timeline = self.c.timeline
        before = timeline.sample()
        try:
            fd = os.open(self.c.root / path, os.O_RDONLY)
        except OSError as exc:
            state = timeline.stable(before, timeline.sample())
            expected = None if state is None else (state.dt if kind == "dt" else state.dt_fw)
            if exc.errno == errno.ENOENT and expected is None:
                self.documented(f"{kind}.absent", exc)
            elif exc.errno in _STALE_OPEN and state is None:
                self.documented(f"{kind}.open", exc)
            else:
                self.unexpected(f"{kind}: open failed while it must exist: {exc!r}")
            return
        held = _HeldFd(fd, before, timeline.sample())
        try:
            try:
                size = os.fstat(fd).st_size
                data = os.pread(fd, size + PAGE, 0)
            except OSError as exc:
                self.classify_stale(kind, exc, held, errno.ENODEV, kills_dt=kind == "dt")
                return
        finally:
            os.close(fd)
        self.stats.bytes_read += len(data)
        total = int.from_bytes(data[4:8], "big") if len(data) >= 8 else -1
        if data[:4] != FDT_MAGIC or total != size or len(data) != size:
            self.unexpected(f"{kind}: {len(data)} bytes, st_size {size}, header {data[:8]!r}")
        state = timeline.stable(before, timeline.sample())
        if state is not None and data != (state.dt if kind == "dt" else state.dt_fw):
            self.unexpected(f"{kind}: differs from the FDT the controller read (or must be absent)")

    def check_dt(self) -> None:
        self.check_blob("dt", DT)

    def check_dt_fw(self) -> None:
        self.check_blob("dt_fw", DT_FW)

    def check_dmesg(self) -> None:
        hold = self.rng.random() < 0.5
        got = self.read_file("dmesg", "machine/dmesg", errno.EIO, hold=hold, whole=True)
        if got is None:
            return
        data = got[0]
        lines = data.split(b"\n")
        valid = (
            data.endswith(b"\n")
            and all(DMESG_LINE.fullmatch(x) for x in lines[:-1])
            and b"] Linux version " in lines[0]
        )
        self.expect("dmesg", valid, data)

    def check_memblock(self) -> None:
        name = self.rng.choice(("memory", "reserved"))
        kind = f"memblock.{name}"
        got = self.read_file(kind, f"sys/kernel/debug/memblock/{name}", errno.EIO, whole=True)
        if got is None:
            return
        data = got[0]
        lines = data.split(b"\n")
        valid = data.endswith(b"\n") and all(MEMBLOCK_LINE.fullmatch(x) for x in lines[:-1])
        self.expect(kind, valid, data)

    def check_cmdline(self) -> None:
        got = self.read_file("cmdline", "proc/cmdline", errno.EIO)
        if got is not None:
            self.expect("cmdline", got[0] == CMDLINE.encode() + b"\n", got[0])

    def check_dt_max_write(self) -> None:
        """Rewrite dt_max's value: success while inactive, EBUSY while active."""
        kind = "dt_max.write"
        self.stats.operations[kind] += 1
        timeline = self.c.timeline
        before = timeline.sample()
        fd = self.open_fd(kind, f"{KHO}/dt_max", os.O_WRONLY)
        if fd is None:
            return
        failure: OSError | None = None
        try:
            n = os.write(fd.fd, DT_MAX_VALUE)
        except OSError as exc:
            n, failure = -1, exc
        finally:
            os.close(fd.fd)
        state = timeline.stable(before, timeline.sample())
        if failure is None:
            if n != len(DT_MAX_VALUE) or (state is not None and state.active):
                self.unexpected(f"dt_max: write returned {n} (state {state})")
        elif failure.errno == errno.EBUSY and (state is None or state.active):
            self.documented(kind, failure)
        elif failure.errno == errno.ENODEV and state is None:
            self.documented(f"{kind}.stale", failure)
        else:
            self.unexpected(f"dt_max: write failed: {failure!r}")

    def check_listdir(self) -> None:
        kind = "listdir.kho"
        self.stats.operations[kind] += 1
        timeline = self.c.timeline
        before = timeline.sample()
        try:
            names = set(os.listdir(self.c.root / KHO))
        except OSError as exc:
            self.classify_open(kind, exc, before)
            return
        after = timeline.sample()
        state = timeline.stable(before, after)
        base = {"active", "dt_max", "scratch_phys", "scratch_len"}
        if not names and after.execs_started > before.execs_completed:
            self.stats.operations[f"{kind}.removed_dir"] += 1  # the old kernel's directory
        elif not base <= names or names - base - {"dt"}:
            self.unexpected(f"{kind}: {sorted(names)}")
        elif state is not None and ("dt" in names) != state.active:
            self.unexpected(f"{kind}: {sorted(names)} while active={state.active}")

    def check_region(self) -> None:
        """A region read: every block whole, its version between the one acknowledged
        before the read and the newest one issued by the end of it."""
        region = self.rng.choice(self.c.regions)
        size = self.rng.choice(WRITE_SIZES)
        offset = self.rng.randrange(0, (region.size - size) // PAGE + 1) * PAGE
        kind = "region.read"
        self.stats.operations[kind] += 1
        first = offset // PAGE
        acked = bytes(region.expected[offset : offset + size])
        data = self.call(
            kind,
            region.path,
            os.O_RDONLY,
            lambda fd: _pread_aligned(fd, self.buf, size, offset),
            errno.ENODEV,
            hold=self.rng.random() < 0.5,
        )
        if data is None:
            return
        newest = list(self.c.versions)
        self.stats.bytes_read += len(data)
        if len(data) % PAGE or len(data) > size or not data:
            self.unexpected(f"{kind}: read of {size} at {offset:#x} returned {len(data)} bytes")
        for i in range(len(data) // PAGE):
            block = slice(i * PAGE, (i + 1) * PAGE)
            seen = _block_version(data[block], region, first + i)
            low = _block_version(acked[block], region, first + i) or 0
            high = newest[region.owner((first + i) * PAGE)]
            if seen is None or not low <= seen <= high:
                self.unexpected(
                    f"{kind}: {region.name} block {first + i} has version {seen}, "
                    f"acknowledged {low}, newest issued {high}"
                )
                return

    CHECKS: ClassVar[tuple[Callable[[_Reader], None], ...]] = (
        check_active,
        check_kexec_loaded,
        check_dt_max,
        check_scratch,
        check_dt,
        check_dt_fw,
        check_dmesg,
        check_memblock,
        check_cmdline,
        check_dt_max_write,
        check_listdir,
        check_region,
        check_region,
        check_region,
    )


# -- the controller ---------------------------------------------------------------------------


class _ControlFailed(Exception):
    """A control step failed: the campaign cannot go on meaningfully."""


class _Campaign:
    """The shared state of one campaign and its controller (the calling thread)."""

    def __init__(self, root: Path, workers: int, seed: int) -> None:
        self.root = root
        self.report = ConcurrencyReport(workers=workers)
        self.writers = max(1, workers // 2)
        self.regions = self.discover_regions()
        self.scratch = {n: self.read(f"{KHO}/{n}") for n in ("scratch_phys", "scratch_len")}
        self.versions = [0] * self.writers  # newest version each writer has issued
        if self.read(f"{KHO}/active") != b"0\n" or self.read("sys/kernel/kexec_loaded") != b"0\n":
            raise _ControlFailed("the machine must start with KHO inactive and nothing loaded")
        dt_fw = self.read(DT_FW) if (root / DT_FW).exists() else None
        self.timeline = _Timeline(_State(active=False, loaded=False, dt=None, dt_fw=dt_fw))
        self.gate = _Gate(workers)
        self.pool: list[_Worker] = [
            _Writer(self, i, seed) if i < self.writers else _Reader(self, i, seed)
            for i in range(workers)
        ]
        self.buf = _aligned(MAX_WRITE)
        image = bytearray(random.Random(seed).randbytes(KERNEL_IMAGE_SIZE))
        image[0x202:0x206] = bytes(4)  # never "HdrS": the whole file is the kernel segment
        self.image = bytes(image)

    # -- file helpers -------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except OSError as exc:
            raise _ControlFailed(f"reading {path} failed: {exc!r}") from exc

    def write(self, path: str, data: bytes, flags: int = os.O_WRONLY) -> None:
        """One write() on a fresh descriptor, like ``echo … > path``."""
        try:
            fd = os.open(self.root / path, flags)
        except OSError as exc:
            raise _ControlFailed(f"open({path}) failed: {exc!r}") from exc
        try:
            n = os.write(fd, data)
        except OSError as exc:
            raise _ControlFailed(f"write to {path} failed: {exc!r}") from exc
        finally:
            os.close(fd)
        if n != len(data):
            raise _ControlFailed(f"write to {path} returned {n} of {len(data)}")

    def status_regions(self) -> dict[str, tuple[int, int]]:
        text = self.read("machine/status").decode()
        return {m[1]: (int(m[2], 16), int(m[3], 16)) for m in STATUS_REGION.finditer(text)}

    def discover_regions(self) -> list[_Region]:
        found = self.status_regions()
        regions = []
        for index, (name, size) in enumerate(REGIONS):
            start, found_size = found.get(name, (0, 0))
            if found_size != size:
                raise _ControlFailed(
                    f"region {name!r} of {size:#x} bytes missing (mount with cmdline {CMDLINE!r})"
                )
            slices = _slices(size, self.writers)
            regions.append(_Region(index, name, start, size, slices, bytearray(size)))
        return regions

    # -- control steps ------------------------------------------------------------------------
    def set_active(self, value: bool) -> None:
        """``echo 1 > active`` (activate) or ``echo 0 > active`` (abort)."""
        old = self.timeline.state

        def new_state() -> _State:
            dt = self.read(DT) if value else None
            return _State(value, old.loaded, dt, old.dt_fw)

        with self.timeline.step(new_state, execs=False, kills_dt=not value):
            self.write(f"{KHO}/active", b"1\n" if value else b"0\n")

    def load(self) -> None:
        """What ``kho-fs kexec -l IMAGE -s`` does: stage the files, ``kexec_file_load``."""
        kexec = "machine/kexec"
        self.write(f"{kexec}/kernel", self.image, os.O_WRONLY | os.O_TRUNC)
        self.write(f"{kexec}/initrd", b"", os.O_WRONLY | os.O_TRUNC)
        self.write(f"{kexec}/cmdline", CMDLINE.encode() + b"\n", os.O_WRONLY | os.O_TRUNC)
        old = self.timeline.state
        with self.timeline.step(
            lambda: _State(old.active, True, old.dt, old.dt_fw), execs=False, kills_dt=False
        ):
            self.write(f"{kexec}/control", b"kexec_file_load\n")
        if self.read("sys/kernel/kexec_loaded") != b"1\n":
            raise _ControlFailed("kexec_loaded is not 1 after kexec_file_load")

    def exec(self) -> bytes:
        """``kho-fs kexec -e``; returns the FDT the loaded image carries."""
        handed_over = self.timeline.state.dt
        if handed_over is None:
            raise _ControlFailed("exec without an FDT")
        with self.timeline.step(
            lambda: _State(False, False, None, handed_over), execs=True, kills_dt=True
        ):
            self.write("machine/kexec/control", b"exec\n")
        return handed_over

    def cycle(self, number: int) -> None:
        self.set_active(True)
        if number % ABORT_EVERY == ABORT_EVERY - 1:
            self.set_active(False)
            self.set_active(True)
        self.load()
        self.exec()
        self.barrier()

    # -- the barrier ----------------------------------------------------------------------------
    def barrier(self) -> None:
        """Park the workers, collect their counters, verify every region, resume."""
        if not self.gate.pause(BARRIER_TIMEOUT):
            raise _ControlFailed(f"workers did not park within {BARRIER_TIMEOUT} s")
        try:
            self.collect()
            self.verify()
        finally:
            self.gate.resume()

    def collect(self) -> None:
        for worker in self.pool:
            stats, worker.stats = worker.stats, _Stats()
            stats.merge_into(self.report)

    def verify(self) -> None:
        report = self.report
        where = f"after cycle {report.cycles}"
        found = self.status_regions()
        state = self.timeline.state
        dmesg = self.read("machine/dmesg").decode("latin-1")
        for region in self.regions:
            if found.get(region.name) != (region.start, region.size):
                _add_unexpected(report, f"{where}: {region.name} moved: {found.get(region.name)}")
            revived = f"Revived memory reservation '{region.name}' from KHO"
            if state.dt_fw is not None and revived not in dmesg:
                _add_unexpected(report, f"{where}: {region.name} was not revived")
            digest = hashlib.sha256()
            fd = os.open(self.root / region.path, os.O_RDONLY)
            try:
                for offset in range(0, region.size, MAX_WRITE):
                    digest.update(_pread_aligned(fd, self.buf, MAX_WRITE, offset))
            finally:
                os.close(fd)
            if digest.digest() != hashlib.sha256(region.expected).digest():
                _add_unexpected(report, f"{where}: {region.name} differs from acknowledged writes")
            report.bytes_verified += region.size
            report.regions_verified += 1
        if state.dt_fw is not None and self.read(DT_FW) != state.dt_fw:
            _add_unexpected(report, f"{where}: dt_fw differs from the FDT that was loaded")
        if self.read("proc/cmdline") != CMDLINE.encode() + b"\n":
            _add_unexpected(report, f"{where}: the kernel runs another command line")

    def run(
        self,
        cycles: int,
        progress: Callable[[int, ConcurrencyReport], None] | None,
        timeout: float | None,
    ) -> ConcurrencyReport:
        started = time.monotonic()
        threads = [
            threading.Thread(target=w.run, name=f"kho-fs-concurrency-{w.index}", daemon=True)
            for w in self.pool
        ]
        for thread in threads:
            thread.start()
        try:
            self.barrier()  # the starting content is verified too
            for number in range(cycles):
                if timeout is not None and time.monotonic() - started > timeout:
                    _add_unexpected(self.report, f"stopped after {number} cycles ({timeout} s)")
                    break
                self.cycle(number)
                self.report.cycles += 1
                self.report.seconds = time.monotonic() - started
                if progress is not None:
                    progress(number + 1, self.report)
        except (_ControlFailed, OSError) as exc:
            _add_unexpected(self.report, f"cycle {self.report.cycles}: control failed: {exc!r}")
        finally:
            self.gate.finish()
            for thread in threads:
                thread.join(BARRIER_TIMEOUT)
                if thread.is_alive():
                    _add_unexpected(self.report, f"{thread.name} did not stop")
            self.collect()
            self.report.seconds = time.monotonic() - started
        return self.report


def run_concurrency(
    mountpoint: Path,
    cycles: int,
    workers: int = 8,
    seed: int = 0,
    progress: Callable[[int, ConcurrencyReport], None] | None = None,
    *,
    timeout: float | None = None,
) -> ConcurrencyReport:
    """Run ``cycles`` activate/load/exec cycles with ``workers`` parallel clients.

    The machine at ``mountpoint`` must be booted with :data:`CMDLINE` (on :data:`MEMORY`,
    :data:`NODES`), KHO inactive and nothing loaded.  ``progress(cycle, report)`` is
    called after each verified cycle.  ``timeout`` (seconds) stops the campaign early
    and records that as unexpected, so a CI run stays bounded.
    """
    if workers < 2:
        raise ValueError("the campaign needs at least one writer and one reader")
    try:
        campaign = _Campaign(Path(mountpoint), workers, seed)
    except _ControlFailed as exc:
        report = ConcurrencyReport(workers=workers)
        _add_unexpected(report, str(exc))
        return report
    return campaign.run(cycles, progress, timeout)
