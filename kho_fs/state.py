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
from kho_fs.model.dmesg import KERN_DEBUG, KERN_EMERG, KERN_INFO, LogRecord
from kho_fs.model.drivers import BUILTIN_DRIVERS, KhoDriver
from kho_fs.model.fdt import Fdt, fdt_check_header
from kho_fs.model.kernel import BootInfo, Kernel
from kho_fs.model.kexec import KexecBuf, Kimage
from kho_fs.model.kho import Kho, KhoMem
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import MAX_NUMNODES, Memblock, MemblockRegion
from kho_fs.model.notifier import NotifierBlock
from kho_fs.model.physmem import MAX_MEMORY, MAX_NODES, MIN_MEMORY, PhysicalMemory
from kho_fs.model.releases import DEFAULT_RELEASE, RELEASES
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
    kho, boot = k.kho_v4, k.boot
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
        "log": [[r.usec, r.text, r.level] for r in k.log.records],
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
    """Rebuild the machine saved in ``path``; StateError with a reason when impossible.

    The checksum only proves that the file is the one written; the content may still be
    crafted.  So every field of the metadata is checked for its type, its range and its
    consistency with the rest (:class:`_Field`) before the model sees it, and anything
    the model still rejects while the machine is rebuilt is reported the same way: a
    one-line :class:`StateError`, never a traceback.
    """
    registry = BUILTIN_DRIVERS if drivers is None else drivers
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _load(f, size, registry)
    except StateError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    except RecursionError:
        raise StateError("corrupted file (bad metadata: nested too deeply)") from None
    except Exception as exc:  # whatever the model refuses in a crafted file
        raise StateError(f"corrupted file (bad metadata: {_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


U64_MAX = (1 << 64) - 1
S64_MAX = (1 << 63) - 1
U32_MAX = (1 << 32) - 1
COMMAND_LINE_MAX = 2047  # COMMAND_LINE_SIZE 2048 with the NUL


def ram_range(field: _Field, mem: PhysicalMemory, start: int, size: int) -> tuple[int, int]:
    """``(start, size)`` when it is a non-empty piece of RAM, else StateError about ``field``."""
    if size == 0 or not mem.is_ram(start, size):
        raise field.bad(f"[{start:#x}, +{size:#x}) is not RAM")
    return start, size


class _Field:
    """One value of the metadata and where it was read (``kernel.kho.scratch[1]``).

    Each accessor returns the value only if it has the expected JSON type and range,
    else raises StateError naming the field: a state file is untrusted input.
    """

    __slots__ = ("value", "where")

    def __init__(self, value: object, where: str) -> None:
        self.value, self.where = value, where

    def bad(self, what: str) -> StateError:
        return StateError(f"corrupted file (bad metadata: {self.where} {what})")

    def __getitem__(self, key: str) -> _Field:
        if not isinstance(self.value, dict):
            raise self.bad("is not an object")
        if key not in self.value:
            raise StateError(f"corrupted file (bad metadata: {self.where}.{key} is missing)")
        return _Field(self.value[key], f"{self.where}.{key}")

    def items(self, length: int | None = None) -> list[_Field]:
        """The elements of a list (of exactly ``length`` elements when given)."""
        if not isinstance(self.value, list):
            raise self.bad("is not a list")
        if length is not None and len(self.value) != length:
            raise self.bad(f"does not have {length} elements")
        return [_Field(v, f"{self.where}[{i}]") for i, v in enumerate(self.value)]

    def integer(self, lo: int = 0, hi: int = U64_MAX) -> int:
        if type(self.value) is not int:
            raise self.bad("is not an integer")
        if not lo <= self.value <= hi:
            raise self.bad(f"is out of range [{lo:#x}, {hi:#x}]")
        return self.value

    def boolean(self) -> bool:
        if type(self.value) is not bool:
            raise self.bad("is not true or false")
        return self.value

    def text(self, *, line: bool = False) -> str:
        """Text standing for bytes (latin-1), without NUL (and without a newline with
        ``line``)."""
        if not isinstance(self.value, str):
            raise self.bad("is not a string")
        if "\0" in self.value or (line and "\n" in self.value):
            raise self.bad("holds a NUL or newline")
        if not all(ord(c) < 256 for c in self.value):
            raise self.bad("is not a byte string")
        return self.value

    def cmdline(self) -> str:
        value = self.text()
        if len(value) > COMMAND_LINE_MAX:
            raise self.bad(f"is longer than {COMMAND_LINE_MAX} bytes")
        return value

    def optional(self) -> _Field | None:
        return None if self.value is None else self

    def range(self, mem: PhysicalMemory, *, empty: bool = False) -> tuple[int, int]:
        """``[start, size]`` of a non-empty piece of RAM (or, with ``empty``, of nothing)."""
        start, size = (field.integer() for field in self.items(2))
        if empty and size == 0:
            return start, size
        return ram_range(self, mem, start, size)

    def blob(self, blobs: list[bytes], *, fdt: bool = False) -> bytes | None:
        """The blob a field indexes, or None; with ``fdt`` it must be a valid FDT."""
        if self.value is None:
            return None
        data = blobs[self.integer(0, len(blobs) - 1)] if blobs else None
        if data is None:
            raise self.bad("names a blob the file does not have")
        if fdt and fdt_check_header(data):
            raise self.bad("is not a valid FDT")
        return data


def _parse_metadata(raw: bytes) -> _Field:
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise StateError("corrupted file (bad metadata: nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise StateError(f"corrupted file (bad metadata: {_one_line(exc)})") from None
    root = _Field(meta, "metadata")
    root["machine"], root["kernel"]  # both sections exist
    return root


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
    # Only what is needed to lay out RAM is read before the checksum is verified.
    meta = _parse_metadata(raw_meta)
    mm = meta["machine"]
    memory, nodes = mm["memory"].integer(MIN_MEMORY, MAX_MEMORY), mm["nodes"].integer(1, MAX_NODES)
    try:
        mem = PhysicalMemory(memory, nodes)
    except ValueError as exc:
        raise mm.bad(f"describes no machine ({exc})") from None
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
        factories = []
        for field in mm["drivers"].items():
            name = field.text()
            if name not in registry:
                raise StateError(f"the saved machine uses driver {name!r}, which is not available")
            factories.append(registry[name])
        machine = Machine.__new__(Machine)
        machine.mem = mem
        machine.cold_cmdline = mm["cold_cmdline"].cmdline()
        machine.cold_release = RELEASES[DEFAULT_RELEASE]  # state files hold v4 machines
        machine.drivers = factories
        machine.generation = mm["generation"].integer(0, S64_MAX)
        machine.boots = mm["boots"].integer(1, S64_MAX)
        machine.version = 0
        machine.kernel = _restore_kernel(machine, meta["kernel"], blobs)
    except BaseException:
        mem.close()
        raise
    return machine


def _restore_kernel(machine: Machine, ks: _Field, blobs: list[bytes]) -> Kernel:
    mem = machine.mem
    b = ks["boot"]
    initrd = b["initrd"].optional()
    boot_params = b["boot_params"].optional()
    boot = BootInfo(
        image=b["image"].range(mem),
        initrd=initrd.range(mem) if initrd is not None else None,
        cmdline=b["cmdline"].cmdline(),
        boot_params=boot_params.integer() if boot_params is not None else None,
        page_tables=b["page_tables"].integer(),
    )
    k = Kernel(
        mem, boot, ks["generation"].integer(0, S64_MAX), machine.drivers, on_change=machine._changed
    )
    panic = ks["panic"].optional()
    k.cmdline, k.panic = ks["cmdline"].cmdline(), panic.text() if panic is not None else None
    k.log.records = _restore_log(ks["log"])
    k.log.resume()
    _restore_memblock(k.memblock, ks["memblock"])
    _restore_kho(k, ks["kho"], blobs)
    regions = []
    for field in ks["reserve_mem"].items():
        name, start, size = field.items(3)
        text = name.text(line=True)
        if not text or " " in text:
            raise name.bad("is not a reserve_mem name")
        regions.append(
            ReserveMemRegion(text, *ram_range(field, mem, start.integer(), size.integer()))
        )
    k.reserve_mem.table = regions
    saved_drivers: dict[str, dict[str, Any]] = {}
    for field in ks["drivers"].items():
        driver_name, driver_state = field.items(2)
        if not isinstance(driver_state.value, dict):
            raise driver_state.bad("is not an object")
        saved_drivers[driver_name.text()] = driver_state.value
    for driver in k.drivers:
        # What a driver keeps is its own to check; whatever it accepts must lie in RAM.
        driver.set_state(saved_drivers.get(driver.name) or {})
        for region in driver.regions():
            if region.size <= 0 or not mem.is_ram(region.start, region.size):
                raise StateError(
                    f"corrupted file (bad metadata: driver {driver.name!r} region "
                    f"{region.name!r} is not RAM)"
                )
    participants: dict[str, NotifierBlock] = {
        "reserve_mem": ReserveMemKhoParticipant(k.reserve_mem)
    }
    participants.update({d.name: d for d in k.drivers})
    for field in ks["kho"]["participants"].items():
        participant = field.text()
        if participant not in participants:
            raise StateError(
                f"the saved kernel has KHO participant {participant!r}, which is not available"
            )
        k.kho.register_kho_notifier(participants[participant])
    kexec = ks["kexec"].optional()
    if kexec is not None:
        k.kexec.kexec_image = _restore_kimage(kexec, blobs, mem)
    return k


def _restore_log(field: _Field) -> list[LogRecord]:
    """``[usec, text, level]`` records; files written before levels hold ``[usec, text]``
    (level: info).  Timestamps never go back."""
    records = []
    last = 0
    for record in field.items():
        parts = record.items()
        if len(parts) not in (2, 3):
            raise record.bad("is not [usec, text, level]")
        usec = parts[0].integer(last, S64_MAX)
        level = parts[2].integer(KERN_EMERG, KERN_DEBUG) if len(parts) == 3 else KERN_INFO
        records.append(LogRecord(usec, parts[1].text(line=True), level))
        last = usec
    return records


def _restore_memblock(mb: Memblock, field: _Field) -> None:
    for name in ("memory", "reserved"):
        regions = []
        for r in field[name].items():
            base, size, flags, nid = r.items(4)
            regions.append(
                MemblockRegion(
                    base.integer(),
                    size.integer(1),
                    flags.integer(0, U32_MAX),
                    nid.integer(-1, MAX_NUMNODES),
                )
            )
        getattr(mb, name).regions = regions
    mb.bottom_up = field["bottom_up"].boolean()
    mb.kho_scratch_only = field["kho_scratch_only"].boolean()
    mb.current_limit = field["current_limit"].integer()
    try:
        mb.check_invariants()
    except AssertionError as exc:
        raise field.bad(f"lists are inconsistent ({exc})") from None


def _restore_kho(k: Kernel, kh: _Field, blobs: list[bytes]) -> None:
    kho, mem = k.kho_v4, k.mem
    if not isinstance(kho, Kho):
        raise StateError("the saved machine's kernel has no v4 KHO to restore into")
    kho.kho_enable = kh["kho_enable"].boolean()
    kho.active = kh["active"].boolean()
    kho.sysfs = kh["sysfs"].boolean()
    scale, size_global, size_pernode = kh["sizing"].items(3)
    kho.sizing = ScratchSizing(
        scale.integer(0, U32_MAX), size_global.integer(), size_pernode.integer()
    )
    # `kho_scratch=0%` makes empty areas
    kho.scratch = [KhoMem(*area.range(mem, empty=True)) for area in kh["scratch"].items()]
    kho.dt_max, kho.fdt_serial = kh["dt_max"].integer(), kh["fdt_serial"].integer(0, S64_MAX)
    kho.fdt = kh["fdt"].blob(blobs, fdt=True)
    kho.dt_fw = kh["dt_fw"].blob(blobs, fdt=True)
    if kho.active != (kho.fdt is not None):
        raise kh.bad("has an FDT exactly when not active")
    fdt_in = kh["fdt_in"].blob(blobs, fdt=True)
    kho.fdt_in = Fdt(fdt_in) if fdt_in is not None else None
    kho.fdt_in_phys, kho.scratch_in_phys = (
        kh["fdt_in_phys"].integer(),
        kh["scratch_in_phys"].integer(),
    )


def _restore_kimage(st: _Field, blobs: list[bytes], mem: PhysicalMemory) -> Kimage:
    segments: dict[str, KexecBuf] = {}
    for field in st["segments"].items():
        name, blob, memsz, align, bmin, bmax, top_down, at = field.items(8)
        data = blob.blob(blobs) or b""
        start, size = ram_range(field, mem, at.integer(), memsz.integer())
        if len(data) > size:
            raise field.bad("holds more bytes than its memory size")
        text = name.text(line=True)
        if text in segments:
            raise field.bad(f"repeats the segment name {text!r}")
        segments[text] = KexecBuf(
            text,
            data,
            size,
            align.integer(),
            bmin.integer(),
            bmax.integer(),
            top_down.boolean(),
            start,
        )
    image = Kimage(list(segments.values()), st["cmdline"].cmdline(), st["file_mode"].boolean())
    refs = st["refs"]
    if not isinstance(refs.value, dict) or set(refs.value) != set(KIMAGE_REFS):
        raise refs.bad(f"does not name exactly {', '.join(KIMAGE_REFS)}")
    for ref in KIMAGE_REFS:
        target = refs[ref].optional()
        if target is None:
            if ref in ("kernel", "boot_params"):
                raise refs[ref].bad("is missing: the image cannot boot")
            continue
        segment = segments.get(target.text())
        if segment is None:
            raise target.bad("names no segment")
        setattr(image, ref, segment)
    return image
