"""Saving and restoring a whole emulated machine (``kho-fs mount --state FILE``).

File format (all integers little-endian)::

    magic  b"KHOFS-ST"   8 bytes
    version              u32 (FORMAT_VERSION)
    metadata length      u64, then UTF-8 JSON: machine, kernel and driver state
    blob count           u32, then per blob: u64 length + bytes (FDTs, kexec segments)
    RAM chunks           per chunk: u64 physical address, u32 length, bytes;
                         ended by address 2^64-1 with length 0
    sha256               32 bytes over everything before it

Only RAM that was ever written and is not all zeros is stored, so a 64 GiB machine with
1 GiB of data makes a ~1 GiB file. Saving writes a temporary file next to the target,
fsyncs it and renames it over the target, so a crash leaves the old state intact.
Anything wrong with a file (truncated, corrupted, foreign, another version) is reported as
:class:`StateError` with a one-line reason; nothing is ever silently replaced.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from kho_fs.model.cmdline import ScratchSizing
from kho_fs.model.dmesg import LogRecord
from kho_fs.model.drivers import BUILTIN_DRIVERS, KhoDriver
from kho_fs.model.fdt import Fdt
from kho_fs.model.kernel import BootInfo, Kernel
from kho_fs.model.kexec import KexecBuf, Kimage
from kho_fs.model.kho import KhoMem
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import Memblock, MemblockRegion
from kho_fs.model.notifier import NotifierBlock
from kho_fs.model.physmem import PhysicalMemory
from kho_fs.model.reserve_mem import ReserveMemKhoParticipant, ReserveMemRegion

MAGIC = b"KHOFS-ST"
FORMAT_VERSION = 1
MAX_METADATA = 256 << 20
COPY_CHUNK = 1 << 21
END_OF_CHUNKS = (1 << 64) - 1
MAX_CHUNK = 1 << 21
KIMAGE_REFS = ("kho_fdt", "kho_scratch", "boot_params", "kernel", "initrd")


class StateError(Exception):
    """A state file that cannot be used; the message says why in one line."""


# -- saving -------------------------------------------------------------------------------
class _Blobs:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def put(self, data: bytes | None) -> int | None:
        if data is None:
            return None
        self.items.append(bytes(data))
        return len(self.items) - 1


def _kernel_state(k: Kernel, blobs: _Blobs) -> dict[str, Any]:
    kho, boot = k.kho, k.boot
    image = k.kexec.kexec_image
    return {
        "boot": {
            "image": list(boot.image),
            "initrd": list(boot.initrd) if boot.initrd else None,
            "cmdline": boot.cmdline,
            "boot_params": boot.boot_params,
            "page_tables": boot.page_tables,
        },
        "generation": k.generation,
        "cmdline": k.cmdline,
        "panic": k.panic,
        "log": [[r.usec, r.text] for r in k.log.records],
        "memblock": {
            "memory": [[r.base, r.size, r.flags, r.nid] for r in k.memblock.memory.regions],
            "reserved": [[r.base, r.size, r.flags, r.nid] for r in k.memblock.reserved.regions],
            "bottom_up": k.memblock.bottom_up,
            "current_limit": k.memblock.current_limit,
            "kho_scratch_only": k.memblock.kho_scratch_only,
        },
        "kho": {
            "kho_enable": kho.kho_enable,
            "sizing": [kho.sizing.scale, kho.sizing.size_global, kho.sizing.size_pernode],
            "scratch": [[a.addr, a.size] for a in kho.scratch],
            "active": kho.active,
            "dt_max": kho.dt_max,
            "fdt": blobs.put(kho.fdt),
            "fdt_serial": kho.fdt_serial,
            "fdt_in_phys": kho.fdt_in_phys,
            "fdt_in": blobs.put(kho.fdt_in.blob if kho.fdt_in else None),
            "scratch_in_phys": kho.scratch_in_phys,
            "sysfs": kho.sysfs,
            "dt_fw": blobs.put(kho.dt_fw),
            "participants": [getattr(nb, "name", "?") for nb in kho.notifiers.chain],
        },
        "reserve_mem": [[r.name, r.start, r.size] for r in k.reserve_mem.table],
        "drivers": [[d.name, d.get_state()] for d in k.drivers],
        "kexec": None if image is None else _kimage_state(image, blobs),
    }


def _kimage_state(image: Kimage, blobs: _Blobs) -> dict[str, Any]:
    segs = [
        [s.name, blobs.put(s.buffer), s.memsz, s.buf_align, s.buf_min, s.buf_max, s.top_down, s.mem]
        for s in image.segments
    ]
    refs = {ref: getattr(image, ref).name if getattr(image, ref) else None for ref in KIMAGE_REFS}
    return {"segments": segs, "cmdline": image.cmdline, "file_mode": image.file_mode, "refs": refs}


def _ram_chunks(mem: PhysicalMemory) -> Iterator[tuple[int, bytes]]:
    """Written chunks that hold something other than zeros."""
    zero = bytes(1 << 21)
    for addr, length in mem.dirty_chunks():
        data = mem.read(addr, length)
        if data != zero[:length]:
            yield addr, data


def save_machine(machine: Machine, path: str | os.PathLike[str]) -> int:
    """Write ``machine`` to ``path`` atomically; returns the bytes written."""
    target = Path(path)
    blobs = _Blobs()
    meta = {
        "machine": {
            "memory": machine.mem.installed,
            "nodes": machine.mem.nr_nodes,
            "cold_cmdline": machine.cold_cmdline,
            "generation": machine.generation,
            "boots": machine.boots,
            "drivers": [getattr(d, "name", None) for d in machine.drivers],
        },
        "kernel": _kernel_state(machine.kernel, blobs),
    }
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    written = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:

            def out(data: bytes) -> None:
                nonlocal written
                f.write(data)
                digest.update(data)
                written += len(data)

            raw = json.dumps(meta, separators=(",", ":")).encode()
            out(MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(raw)) + raw)
            out(struct.pack("<I", len(blobs.items)))
            for blob in blobs.items:
                out(struct.pack("<Q", len(blob)))
                out(blob)
            for addr, data in _ram_chunks(machine.mem):
                out(struct.pack("<QI", addr, len(data)))
                out(data)
            out(struct.pack("<QI", END_OF_CHUNKS, 0))
            f.write(digest.digest())
            written += digest.digest_size
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


# -- loading ------------------------------------------------------------------------------
class _Reader:
    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size
        self.digest = hashlib.sha256()

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise StateError(f"truncated file (while reading {what})")
        data = self.f.read(n)
        if len(data) != n:
            raise StateError(f"truncated file (while reading {what})")
        self.left -= n
        self.digest.update(data)
        return data

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def load_machine(
    path: str | os.PathLike[str],
    drivers: dict[str, Callable[[Kernel], KhoDriver]] | None = None,
) -> Machine:
    """Rebuild the machine saved in ``path``; StateError with a reason when impossible."""
    registry = BUILTIN_DRIVERS if drivers is None else drivers
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _load(f, size, registry)
    except StateError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    except (KeyError, IndexError, TypeError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise StateError(f"corrupted file (bad metadata: {type(exc).__name__}: {exc})") from None


def _load(f: BinaryIO, size: int, registry: dict[str, Callable[[Kernel], KhoDriver]]) -> Machine:
    if size < len(MAGIC) + 12 + 32:
        raise StateError("not a kho-fs state file (too short)")
    r = _Reader(f, size - 32)
    if r.take(len(MAGIC), "magic") != MAGIC:
        raise StateError("not a kho-fs state file (bad magic)")
    version, meta_len = r.unpack("<IQ", "header")
    if version != FORMAT_VERSION:
        raise StateError(
            f"state file format {version} is not supported (expected {FORMAT_VERSION})"
        )
    if meta_len > MAX_METADATA:
        raise StateError("corrupted file (metadata length)")
    raw_meta = r.take(meta_len, "metadata")
    (nblobs,) = r.unpack("<I", "blob count")
    blobs = []
    for i in range(nblobs):
        (n,) = r.unpack("<Q", f"blob {i}")
        blobs.append(r.take(n, f"blob {i}"))
    meta = json.loads(raw_meta)
    mm = meta["machine"]
    try:
        factories = [registry[name] for name in mm["drivers"]]
    except KeyError as exc:
        raise StateError(
            f"the saved machine uses driver {exc.args[0]!r}, which is not available"
        ) from None
    mem = PhysicalMemory(int(mm["memory"]), int(mm["nodes"]))
    try:
        # RAM is streamed straight into the new machine; nothing is used before the
        # checksum over the whole file has been verified.
        for i in itertools.count():
            addr, n = r.unpack("<QI", f"chunk {i}")
            if addr == END_OF_CHUNKS:
                break
            if n > MAX_CHUNK or not mem.is_ram(addr, n):
                raise StateError(f"corrupted file (chunk {i} outside RAM)")
            mem.write(addr, r.take(n, f"chunk {i}"))
        if r.left:
            raise StateError("corrupted file (trailing bytes)")
        if f.read(32) != r.digest.digest():
            raise StateError("corrupted file (checksum mismatch)")
        machine = Machine.__new__(Machine)
        machine.mem = mem
        machine.cold_cmdline = str(mm["cold_cmdline"])
        machine.drivers = factories
        machine.generation = int(mm["generation"])
        machine.boots = int(mm["boots"])
        machine.version = 0
        machine.kernel = _restore_kernel(machine, meta["kernel"], blobs)
    except BaseException:
        mem.close()
        raise
    return machine


def _blob(blobs: list[bytes], index: int | None) -> bytes | None:
    return None if index is None else blobs[index]


def _restore_kernel(machine: Machine, ks: dict[str, Any], blobs: list[bytes]) -> Kernel:
    b = ks["boot"]
    boot = BootInfo(
        image=(int(b["image"][0]), int(b["image"][1])),
        initrd=(int(b["initrd"][0]), int(b["initrd"][1])) if b["initrd"] else None,
        cmdline=str(b["cmdline"]),
        boot_params=b["boot_params"],
        page_tables=int(b["page_tables"]),
    )
    k = Kernel(
        machine.mem, boot, int(ks["generation"]), machine.drivers, on_change=machine._changed
    )
    k.cmdline, k.panic = str(ks["cmdline"]), ks["panic"]
    k.log.records = [LogRecord(int(u), str(t)) for u, t in ks["log"]]
    k.log.resume()
    mb = ks["memblock"]
    k.memblock = Memblock()
    k.memblock.memory.regions = [MemblockRegion(*map(int, r)) for r in mb["memory"]]
    k.memblock.reserved.regions = [MemblockRegion(*map(int, r)) for r in mb["reserved"]]
    k.memblock.bottom_up, k.memblock.kho_scratch_only = (
        bool(mb["bottom_up"]),
        bool(mb["kho_scratch_only"]),
    )
    k.memblock.current_limit = int(mb["current_limit"])
    k.memblock.check_invariants()
    kh, kho = ks["kho"], k.kho
    kho.kho_enable, kho.active, kho.sysfs = (
        bool(kh["kho_enable"]),
        bool(kh["active"]),
        bool(kh["sysfs"]),
    )
    kho.sizing = ScratchSizing(*map(int, kh["sizing"]))
    kho.scratch = [KhoMem(int(a), int(s)) for a, s in kh["scratch"]]
    kho.dt_max, kho.fdt_serial = int(kh["dt_max"]), int(kh["fdt_serial"])
    kho.fdt, kho.dt_fw = _blob(blobs, kh["fdt"]), _blob(blobs, kh["dt_fw"])
    fdt_in = _blob(blobs, kh["fdt_in"])
    kho.fdt_in = Fdt(fdt_in) if fdt_in is not None else None
    kho.fdt_in_phys, kho.scratch_in_phys = int(kh["fdt_in_phys"]), int(kh["scratch_in_phys"])
    k.reserve_mem.table = [
        ReserveMemRegion(str(n), int(s), int(z)) for n, s, z in ks["reserve_mem"]
    ]
    saved_drivers = dict(ks["drivers"])
    for driver in k.drivers:
        driver.set_state(saved_drivers.get(driver.name) or {})
    participants: dict[str, NotifierBlock] = {
        "reserve_mem": ReserveMemKhoParticipant(k.reserve_mem)
    }
    participants.update({d.name: d for d in k.drivers})
    for name in kh["participants"]:
        if name not in participants:
            raise StateError(
                f"the saved kernel has KHO participant {name!r}, which is not available"
            )
        kho.register_kho_notifier(participants[name])
    if ks["kexec"] is not None:
        k.kexec.kexec_image = _restore_kimage(ks["kexec"], blobs)
    return k


def _restore_kimage(st: dict[str, Any], blobs: list[bytes]) -> Kimage:
    segments = []
    for name, blob, memsz, align, bmin, bmax, top_down, mem in st["segments"]:
        data = _blob(blobs, blob) or b""
        kbuf = KexecBuf(
            str(name), data, int(memsz), int(align), int(bmin), int(bmax), bool(top_down), int(mem)
        )
        segments.append(kbuf)
    image = Kimage(segments, str(st["cmdline"]), bool(st["file_mode"]))
    by_name = {s.name: s for s in segments}
    for ref, name in st["refs"].items():
        if ref not in KIMAGE_REFS:
            raise StateError(f"corrupted file (unknown kexec reference {ref!r})")
        setattr(image, ref, by_name[name] if name is not None else None)
    return image
