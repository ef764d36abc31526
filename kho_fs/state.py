"""Saving and restoring a whole emulated machine (``kho-fs mount --state FILE``).

File format (all integers little-endian)::

    magic  b"KHOFS-ST"   8 bytes
    version              u32 (FORMAT_VERSION)
    metadata length      u64, then UTF-8 JSON: machine, kernel and driver state
    blob count           u32, then per blob: u64 length + bytes (FDTs, kexec segments)
    RAM chunks           per chunk: u64 physical address, u32 length, bytes;
                         ended by address 2^64-1 with length 0
    sha256               32 bytes over everything before it

The metadata (format 2) names the release the firmware boots and the one running, the
drivers by their ``--driver`` spec, and everything the running kernel keeps outside RAM:
memblock, the page allocator, the KHO strategy's state (v4: the outgoing and incoming FDTs;
mainline: scratch, the debugfs blobs, the preservation tracker, the notifier chain, the
incoming map's runs; the blob era adds its radix tree), LUO's globals and the drivers' own
state. Bits that live in RAM (bitmaps, radix leaves) are read back from RAM. Format 1
(before releases) held v4 machines only; such files still load as v4. A machine whose LUO
has sessions (files of connected processes) is not saved: OSError EBUSY.

Only RAM that was ever written and is not all zeros is stored, so a 64 GiB machine with
1 GiB of data makes a ~1 GiB file. Saving writes a temporary file next to the target,
fsyncs it and renames it over the target, so a crash leaves the old state intact.
Anything wrong with a file (truncated, corrupted, foreign, another version) is reported as
:class:`StateError` with a one-line reason; nothing is ever silently replaced.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from kho_fs.model.bzimage import ImageRelease
from kho_fs.model.cmdline import ScratchSizing
from kho_fs.model.dmesg import KERN_DEBUG, KERN_EMERG, KERN_INFO, LogRecord
from kho_fs.model.drivers import KhoDriver
from kho_fs.model.fdt import Fdt, fdt_check_header
from kho_fs.model.kernel import BootInfo, Kernel
from kho_fs.model.kexec import KexecBuf, Kimage
from kho_fs.model.kho import Kho, KhoMem
from kho_fs.model.kho_blob import NEW_UTS_LEN, KhoBlobEra
from kho_fs.model.kho_mainline import KhoBlob, KhoMainline
from kho_fs.model.kho_mem_map import KhoMemTrack, _Bitmap
from kho_fs.model.kho_radix import KHO_TREE_MAX_DEPTH, TABLE_ENTRIES, KhoRadixTree
from kho_fs.model.luo import Luo, MemfdLuo
from kho_fs.model.luo_v5 import LuoV5, MemfdLuoV2
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import (
    MAX_NUMNODES,
    MEMBLOCK_KHO_SCRATCH,
    MEMBLOCK_RSRV_NOINIT,
    Memblock,
    MemblockRegion,
)
from kho_fs.model.memblock_kho import MemblockKho
from kho_fs.model.notifier import NotifierBlock
from kho_fs.model.page_alloc import PageAllocator
from kho_fs.model.physmem import MAX_MEMORY, MAX_NODES, MIN_MEMORY, PhysicalMemory
from kho_fs.model.releases import DEFAULT_RELEASE, RELEASES, Release
from kho_fs.model.reserve_mem import ReserveMemKhoParticipant, ReserveMemRegion
from kho_fs.model.units import PAGE_SIZE

MAGIC = b"KHOFS-ST"
FORMAT_VERSION = 2
LEGACY_VERSION = 1  # v4 machines only: no releases, page allocator or mainline KHO
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
    boot = k.boot
    image = k.kexec.kexec_image
    pages = k._pages
    return {
        "release": k.release.name,
        "boot": {
            "image": list(boot.image),
            "initrd": list(boot.initrd) if boot.initrd else None,
            "cmdline": boot.cmdline,
            "boot_params": boot.boot_params,
            "page_tables": boot.page_tables,
            "notes": list(boot.notes),
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
        "pages": None
        if pages is None
        else {
            "free": [[start, end] for start, end in pages._free],
            "allocated": sorted([phys, order] for phys, order in pages.allocated.items()),
        },
        "kho": _kho_state(k, blobs),
        "luo": _luo_state(k.luo),
        "reserve_mem": [[r.name, r.start, r.size] for r in k.reserve_mem.table],
        "drivers": [[d.name, _driver_state(d)] for d in k.drivers],
        # drivers whose boot hooks raised get no further hooks in this boot
        "broken_drivers": [d.name for d in k.drivers if id(d) in k._broken_drivers],
        "kexec": None if image is None else _kimage_state(image, blobs),
    }


def _driver_state(driver: KhoDriver) -> dict[str, Any]:
    """A driver's ``get_state()``; plug-in code that raises or returns something that is no
    JSON object fails the save with the reason (OSError EIO), never the daemon."""
    try:
        state = driver.get_state()
        if not isinstance(state, dict):
            raise TypeError(f"returned {type(state).__name__}, not a dict")
        json.dumps(state)
    except Exception as exc:
        raise OSError(errno.EIO, f"driver {driver.name!r}: get_state() {_one_line(exc)}") from exc
    return state


#: LUO file handlers a state file can name (by their compatible) and build again.
LUO_HANDLERS: dict[str, Callable[[], Any]] = {
    MemfdLuo.compatible: MemfdLuo,
    MemfdLuoV2.compatible: MemfdLuoV2,
}


def _luo_state(luo: Luo | None) -> dict[str, Any] | None:
    """``luo_global`` of a kernel with the Live Update Orchestrator. Sessions hold files of
    processes connected to the daemon: a state file cannot keep them, so a machine with
    sessions is not saved (EBUSY, with the reason); incoming sessions not yet deserialized
    are in RAM and come back."""
    if luo is None:
        return None
    if luo.outgoing or luo.incoming:
        raise OSError(
            errno.EBUSY,
            f"LUO has {len(luo.outgoing)} outgoing and {len(luo.incoming)} incoming "
            "session(s); a state file cannot keep them (finish or close them first)",
        )
    state: dict[str, Any] = {
        "enabled": luo.enabled,
        "liveupdate_num": luo.liveupdate_num,
        "fdt_out": luo.fdt_out,
        "fdt_in": luo.fdt_in,
        "misc_registered": luo.misc_registered,
        "out_header": luo.out_header,
        "out_flb_header": luo.out_flb_header,
        "in_header": luo.in_header,
        "incoming_active": luo.incoming_active,
        "deserialized": luo.deserialized,
        "handlers": [h.compatible for h in luo.handlers],
    }
    if isinstance(luo, LuoV5):
        # 7.2: the session record chains (kernel lists of block addresses; the blocks
        # are in RAM) and the incoming FLB header
        state["v5"] = {
            "sessions_out": list(luo.sessions_out.blocks),
            "sessions_in": list(luo.sessions_in.blocks),
            "sessions_in_restored": luo.sessions_in.incoming,
            "in_flb_header": luo.in_flb_header,
        }
    return state


def _participant_name(k: Kernel, nb: NotifierBlock) -> str:
    """How a state file names a KHO notifier: reserve_mem's mainline participant is
    ``memblock`` (its sub-FDT's name), everything else has a ``name``."""
    if nb is k.reserve_mem.memblock_kho:
        return "memblock"
    return str(getattr(nb, "name", "?"))


def _kho_state(k: Kernel, blobs: _Blobs) -> dict[str, Any]:
    kho = k.kho
    if isinstance(kho, Kho):
        return {
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
            "participants": [_participant_name(k, nb) for nb in kho.notifiers.chain],
        }
    if isinstance(kho, KhoMainline):
        return _kho_mainline_state(k, kho)
    return {}  # KhoNone: a kernel without KHO keeps nothing


def _blob_state(b: KhoBlob | None) -> list[Any] | None:
    return None if b is None else [b.name, b.phys, b.size, b.serial]


def _kho_mainline_state(k: Kernel, kho: KhoMainline) -> dict[str, Any]:
    track = kho._track
    memblock_kho = k.reserve_mem.memblock_kho
    return {
        "kho_enable": kho.kho_enable,
        "scratch_scale": kho.scratch_scale,
        "scratch_sizes": [
            kho.scratch_size_lowmem,
            kho.scratch_size_global,
            kho.scratch_size_pernode,
        ],
        "scratch": [[a.addr, a.size] for a in kho.scratch],
        "scratch_table": kho.scratch_table,
        "debugfs": kho.debugfs,
        "finalized": kho.finalized,
        "fdt_page": kho.fdt_page,
        "preserved_mem_map": kho.preserved_mem_map,
        "out_fdt": _blob_state(kho.out_fdt),
        "out_sub_fdts": [_blob_state(b) for b in kho.out_sub_fdts],
        "serial": kho._serial,
        "fdt_in_phys": kho.fdt_in_phys,
        "fdt_in_len": kho.fdt_in_len,
        "scratch_in_phys": kho.scratch_in_phys,
        "mem_map_in_phys": kho.mem_map_in_phys,
        "in_fdt": _blob_state(kho.in_fdt),
        "in_sub_fdts": [_blob_state(b) for b in kho.in_sub_fdts],
        "preserved_runs": [list(run) for run in kho._preserved_runs],
        "restored": sorted(kho._restored),
        # The bitmaps' bits are in RAM (written through); only where each bitmap is.
        "track": None
        if track is None
        else {
            "orders": [
                [order, [[index, bitmap.phys] for index, bitmap in sorted(per_order.items())]]
                for order, per_order in sorted(track.orders.items())
            ],
            "slab": list(track._slab),
        },
        "memblock": None if memblock_kho is None else {"fdt_page": memblock_kho.fdt_page},
        "participants": [_participant_name(k, nb) for nb in kho.notifiers.chain],
        **({"blob": _kho_blob_era_state(kho)} if isinstance(kho, KhoBlobEra) else {}),
    }


def _kho_blob_era_state(kho: KhoBlobEra) -> dict[str, Any]:
    """What the blob era (7.2) adds: the radix tree's pages (the leaves' bits are in RAM,
    written through) and the kexec-metadata record's fields."""
    tree = kho.radix
    return {
        "radix": None
        if tree is None
        else {
            "root": tree.root,
            "tables": [
                [node, sorted([index, child] for index, child in table.items())]
                for node, table in sorted(tree._tables.items())
            ],
            "leaves": sorted(tree._leaves),
        },
        "kexec_count": kho.kexec_count,
        "previous_release": kho.previous_release,
        "metadata_phys": kho.metadata_phys,
    }


def _kimage_state(image: Kimage, blobs: _Blobs) -> dict[str, Any]:
    segs = [
        [s.name, blobs.put(s.buffer), s.memsz, s.buf_align, s.buf_min, s.buf_max, s.top_down, s.mem]
        for s in image.segments
    ]
    refs = {ref: getattr(image, ref).name if getattr(image, ref) else None for ref in KIMAGE_REFS}
    target = image.release
    return {
        "segments": segs,
        "cmdline": image.cmdline,
        "file_mode": image.file_mode,
        "refs": refs,
        "kho_fdt_phys": image.kho_fdt_phys,
        "release": None if target is None else [target.release.name, target.note],
    }


def _ram_chunks(mem: PhysicalMemory) -> Iterator[tuple[int, bytes]]:
    """Written chunks that hold something other than zeros, cut to RAM (the first 2 MiB
    chunk holds the legacy hole below 1 MiB)."""
    zero = bytes(1 << 21)
    for chunk, length in mem.dirty_chunks():
        for r in mem.ram:
            addr, end = max(chunk, r.start), min(chunk + length, r.end)
            if addr >= end:
                continue
            data = mem.read(addr, end - addr)
            if data != zero[: end - addr]:
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
            "cold_release": machine.cold_release.name,
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

    The machine's drivers are recorded by their ``--driver`` spec and loaded again with
    :func:`kho_fs.drivers.load_driver` (built-in names, entry points, modules, files), or
    looked up in ``drivers`` when given.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _load(f, size, _driver_resolver(drivers))
    except StateError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    except RecursionError:
        raise StateError("corrupted file (bad metadata: nested too deeply)") from None
    except Exception as exc:  # whatever the model refuses in a crafted file
        raise StateError(f"corrupted file (bad metadata: {_one_line(exc)})") from None


DriverResolver = Callable[[str], Callable[[Kernel], KhoDriver]]


def _driver_resolver(
    registry: dict[str, Callable[[Kernel], KhoDriver]] | None,
) -> DriverResolver:
    """Spec -> driver factory; StateError when the spec cannot be loaded."""
    if registry is not None:

        def lookup(spec: str) -> Callable[[Kernel], KhoDriver]:
            if spec not in registry:
                raise StateError(f"the saved machine uses driver {spec!r}, which is not available")
            return registry[spec]

        return lookup
    from kho_fs.drivers import DriverLoadError, load_driver

    def load(spec: str) -> Callable[[Kernel], KhoDriver]:
        try:
            return load_driver(spec)
        except DriverLoadError as exc:
            raise StateError(
                f"the saved machine uses driver {spec!r}, which cannot be loaded: "
                f"{_shorten(exc.reason)}"
            ) from None

    return load


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


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


def _load(f: BinaryIO, size: int, resolve: DriverResolver) -> Machine:
    if size < len(MAGIC) + 12 + 32:
        raise StateError("not a kho-fs state file (too short)")
    r = _Reader(f, size - 32)
    if r.take(len(MAGIC), "magic") != MAGIC:
        raise StateError("not a kho-fs state file (bad magic)")
    version, meta_len = r.unpack("<IQ", "header")
    if version not in (FORMAT_VERSION, LEGACY_VERSION):
        raise StateError(
            f"state file format {version} is not supported (expected {FORMAT_VERSION})"
        )
    legacy = version == LEGACY_VERSION
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
            factories.append(resolve(field.text()))
        machine = Machine.__new__(Machine)
        machine.mem = mem
        machine.cold_cmdline = mm["cold_cmdline"].cmdline()
        # format 1 knew one kernel, the v4 series
        machine.cold_release = RELEASES[DEFAULT_RELEASE] if legacy else _release(mm["cold_release"])
        machine.drivers = factories
        machine.generation = mm["generation"].integer(0, S64_MAX)
        machine.boots = mm["boots"].integer(1, S64_MAX)
        machine.version = 0
        machine.kernel = _restore_kernel(machine, meta["kernel"], blobs, legacy)
    except BaseException:
        mem.close()
        raise
    return machine


def _release(field: _Field) -> Release:
    name = field.text()
    if name not in RELEASES:
        shown = name if len(name) <= 20 else name[:20] + "..."
        raise field.bad(f"names no release kho-fs has ({shown!r})")
    return RELEASES[name]


def _restore_kernel(machine: Machine, ks: _Field, blobs: list[bytes], legacy: bool) -> Kernel:
    mem = machine.mem
    release = RELEASES[DEFAULT_RELEASE] if legacy else _release(ks["release"])
    b = ks["boot"]
    initrd = b["initrd"].optional()
    boot_params = b["boot_params"].optional()
    notes = () if legacy else tuple(note.text(line=True) for note in b["notes"].items())
    boot = BootInfo(
        image=b["image"].range(mem),
        initrd=initrd.range(mem) if initrd is not None else None,
        cmdline=b["cmdline"].cmdline(),
        boot_params=boot_params.integer() if boot_params is not None else None,
        page_tables=b["page_tables"].integer(),
        notes=notes,
    )
    k = Kernel(
        mem,
        boot,
        ks["generation"].integer(0, S64_MAX),
        machine.drivers,
        on_change=machine._changed,
        release=release,
    )
    panic = ks["panic"].optional()
    k.cmdline, k.panic = ks["cmdline"].cmdline(), panic.text() if panic is not None else None
    k.log.records = _restore_log(ks["log"])
    k.log.resume()
    _restore_memblock(k.memblock, ks["memblock"])
    if legacy:  # format 1 had no page allocator: the one boot made (nothing allocates on v4)
        k._pages = PageAllocator(mem, k.memblock) if k.panic is None else None
    else:
        k._pages = _restore_pages(ks["pages"], k)
    kh = ks["kho"]
    if isinstance(k.kho, Kho):
        _restore_kho_v4(k, k.kho, kh, blobs)
    elif isinstance(k.kho, KhoMainline):
        _restore_kho_mainline(k, k.kho, kh)
    elif not isinstance(kh.value, dict):  # KhoNone keeps nothing
        raise kh.bad("is not an object")
    luo = ks["luo"].optional() if not legacy else None
    if (luo is None) != (k.luo is None):
        raise ks["luo"].bad(
            f"does not fit release {release.name} (LUO {'in' if k.luo else 'not in'} it)"
        )
    if luo is not None and k.luo is not None:
        _restore_luo(k.luo, luo, k._pages)
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
    _restore_drivers(k, ks["drivers"], legacy)
    if not legacy:
        by_name = {d.name: d for d in k.drivers}
        for field in ks["broken_drivers"].items():
            broken = by_name.get(field.text())
            if broken is None:
                raise field.bad("names no driver the kernel runs")
            k._broken_drivers.add(id(broken))
    if isinstance(k.kho, Kho | KhoMainline):
        _restore_participants(k, kh["participants"])
    kexec = ks["kexec"].optional()
    if kexec is not None:
        k.kexec.kexec_image = _restore_kimage(kexec, blobs, mem, legacy)
    return k


def _restore_luo(luo: Luo, st: _Field, pages: PageAllocator | None) -> None:
    """``luo_global``: what the boot read from the incoming ``LUO`` subtree and the pages
    ``luo_fdt_setup`` allocated (sessions are never in a state file)."""
    luo.enabled = st["enabled"].boolean()
    luo.liveupdate_num = st["liveupdate_num"].integer()
    luo.misc_registered = st["misc_registered"].boolean()
    luo.incoming_active = st["incoming_active"].boolean()
    luo.fdt_in, luo.in_header = st["fdt_in"].integer(), st["in_header"].integer()
    for name in ("fdt_out", "out_header", "out_flb_header"):
        field = st[name]
        phys = field.integer()
        if phys and (pages is None or phys not in pages.allocated):
            raise field.bad("is not a block the kernel allocated")
        setattr(luo, name, phys)
    deserialized = st["deserialized"].optional()
    luo.deserialized = deserialized.integer(-4095, 0) if deserialized is not None else None
    handlers = []
    for field in st["handlers"].items():
        compatible = field.text()
        if compatible not in LUO_HANDLERS:
            raise field.bad(f"names no LUO file handler kho-fs has ({compatible[:20]!r})")
        handlers.append(LUO_HANDLERS[compatible]())
    luo.handlers = handlers
    if isinstance(luo, LuoV5):
        _restore_luo_v5(luo, st["v5"], pages)
    elif "v5" in st.value:  # type: ignore[operator]
        raise st["v5"].bad("is for 7.2's LUO (luo-v5), not this release's")


def _restore_luo_v5(luo: LuoV5, st: _Field, pages: PageAllocator | None) -> None:
    """7.2's session record chains: the outgoing blocks are pages this kernel allocated,
    the incoming ones pages of RAM the previous kernel wrote (read at the first open)."""
    out = [_allocated(f, pages, f.integer()) for f in st["sessions_out"].items()]
    incoming = []
    for field in st["sessions_in"].items():
        phys = field.integer()
        if phys % PAGE_SIZE:
            raise field.bad("is not a page")
        incoming.append(ram_range(field, luo.mem, phys, PAGE_SIZE)[0])
    luo.sessions_out.blocks, luo.sessions_out.head_pa = out, out[0] if out else 0
    luo.sessions_in.blocks, luo.sessions_in.head_pa = incoming, incoming[0] if incoming else 0
    luo.sessions_in.incoming = st["sessions_in_restored"].boolean()
    luo.in_flb_header = st["in_flb_header"].integer()


def _restore_drivers(k: Kernel, field: _Field, legacy: bool) -> None:
    """Each driver's own state, checked by the driver (a refusal names the field); what a
    driver accepts as its memory must lie in RAM. Format 2 lists exactly the drivers the
    kernel runs, in order."""
    saved: dict[str, _Field] = {}
    for entry in field.items():
        name, state = entry.items(2)
        text = name.text()
        if text in saved:
            raise name.bad(f"repeats driver {text!r}")
        if not isinstance(state.value, dict):
            raise state.bad("is not an object")
        saved[text] = state
    running = [d.name for d in k.drivers]
    if not legacy and list(saved) != running:
        raise field.bad(f"does not list the drivers the kernel runs ({', '.join(running)})")
    for driver in k.drivers:
        saved_state = saved.get(driver.name)
        where = saved_state if saved_state is not None else field
        try:
            driver.set_state(where.value if saved_state is not None else {})  # type: ignore[arg-type]
        except Exception as exc:  # the driver's own check, or its code failing
            raise where.bad(f"is refused by driver {driver.name!r}: {_one_line(exc)}") from None
        try:
            regions = list(driver.regions())
        except Exception as exc:
            raise where.bad(f"gives driver {driver.name!r} no regions: {_one_line(exc)}") from None
        for region in regions:
            label: object = region
            try:
                label, start, size = region
                ok = type(start) is int and type(size) is int and size > 0
                ok = ok and k.mem.is_ram(start, size)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise StateError(
                    f"corrupted file (bad metadata: driver {driver.name!r} region "
                    f"{label!r} is not RAM)"
                )


def _restore_participants(k: Kernel, field: _Field) -> None:
    """The KHO notifier chain, in order: drivers by name, and reserve_mem's participant
    (``reserve_mem`` on v4, ``memblock`` on mainline)."""
    kho = k.kho
    assert isinstance(kho, Kho | KhoMainline)
    available: dict[str, NotifierBlock] = {d.name: d for d in k.drivers}
    if isinstance(kho, Kho):
        available["reserve_mem"] = ReserveMemKhoParticipant(k.reserve_mem)
    elif k.reserve_mem.memblock_kho is not None:
        available["memblock"] = k.reserve_mem.memblock_kho
    seen: set[str] = set()
    for entry in field.items():
        name = entry.text()
        if name not in available:
            raise StateError(
                f"the saved kernel has KHO participant {name!r}, which is not available"
            )
        if name in seen:
            raise entry.bad(f"registers {name!r} twice")
        seen.add(name)
        kho.register_kho_notifier(available[name])


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


def _restore_kho_v4(k: Kernel, kho: Kho, kh: _Field, blobs: list[bytes]) -> None:
    mem = k.mem
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


MAX_ORDER = 64 - 12  # a block of PAGE_SIZE << order bytes still has a u64 address
KHO_SCRATCH_ENTRY = 16  # struct kho_scratch


def _restore_pages(field: _Field, k: Kernel) -> PageAllocator | None:
    """The page allocator: sorted page-aligned free ranges, and the blocks handed out
    (each aligned to its size); all in RAM, none overlapping another."""
    st = field.optional()
    if st is None:
        if k.panic is None:
            raise field.bad("is missing although the kernel is running")
        return None
    mem = k.mem
    free: list[tuple[int, int]] = []
    last = 0
    for entry in st["free"].items():
        start, end = (f.integer() for f in entry.items(2))
        if start % PAGE_SIZE or end % PAGE_SIZE or not last <= start < end:
            raise entry.bad("is not a page-aligned range above the previous one")
        ram_range(entry, mem, start, end - start)
        free.append((start, end))
        last = end
    allocated: dict[int, int] = {}
    for entry in st["allocated"].items():
        phys_field, order_field = entry.items(2)
        phys, order = phys_field.integer(), order_field.integer(0, MAX_ORDER)
        size = PAGE_SIZE << order
        if phys % size:
            raise entry.bad("is not aligned to its size")
        ram_range(entry, mem, phys, size)
        if phys in allocated:
            raise entry.bad("repeats a block")
        allocated[phys] = order
    spans = sorted(free + [(phys, phys + (PAGE_SIZE << o)) for phys, o in allocated.items()])
    for (_, end), (start, _) in itertools.pairwise(spans):
        if start < end:
            raise st.bad(f"has overlapping blocks or free ranges at {start:#x}")
    # Its memory is what memblock handed over: neither reserved nor KHO scratch -- except
    # preserved memory (reserved RSRV_NOINIT) that kho_restore_free gave back after the
    # handover (7.2's LUO frees its records so).
    mb = k.memblock
    kept = sorted(
        [(r.base, r.end) for r in mb.reserved if not r.flags & MEMBLOCK_RSRV_NOINIT]
        + [(r.base, r.end) for r in mb.memory if r.flags & MEMBLOCK_KHO_SCRATCH]
    )
    clash = _first_overlap(spans, kept)
    if clash is not None:
        raise st.bad(f"hands out memory memblock kept at {clash:#x}")
    pages = PageAllocator(mem, k.memblock)
    pages._free, pages.allocated = free, allocated
    return pages


def _first_overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int | None:
    """The start of the first overlap of two lists of ``[start, end)`` ranges sorted by
    start, or None; the members of ``a`` must not overlap each other (those of ``b`` may)."""
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            return start
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return None


def _allocated(field: _Field, pages: PageAllocator | None, phys: int, order: int = 0) -> int:
    """``phys`` when it is a block of ``order`` the page allocator handed out."""
    if pages is None or pages.allocated.get(phys) != order:
        raise field.bad(f"is not a block of order {order} the kernel allocated")
    return phys


def _kho_blob(field: _Field, mem: PhysicalMemory, *, ram: bool) -> KhoBlob:
    """``[name, phys, size, serial]`` of a debugfs blob; with ``ram`` it must lie in RAM
    (the outgoing ones: pages this kernel wrote)."""
    name, phys, size, serial = field.items(4)
    blob = KhoBlob(
        name.text(), phys.integer(), size.integer(0, U32_MAX), serial.integer(1, S64_MAX)
    )
    if ram:
        ram_range(field, mem, blob.phys, blob.size)
    return blob


def _restore_kho_mainline(k: Kernel, kho: KhoMainline, kh: _Field) -> None:
    """Everything a mainline kernel keeps outside RAM (``kho_out``, ``kho_in``, scratch,
    the preservation tracker, reserve_mem's memblock participant)."""
    mem, pages = k.mem, k._pages
    kho.kho_enable = kh["kho_enable"].boolean()
    kho.scratch_scale = kh["scratch_scale"].integer(0, U32_MAX)
    lowmem, size_global, pernode = (f.integer() for f in kh["scratch_sizes"].items(3))
    kho.scratch_size_lowmem, kho.scratch_size_global, kho.scratch_size_pernode = (
        lowmem,
        size_global,
        pernode,
    )
    # kho_in: a handover's values were checked by kho_populate when it booted
    kho.fdt_in_phys = kh["fdt_in_phys"].integer()
    kho.fdt_in_len = kh["fdt_in_len"].integer(0, U32_MAX)
    kho.scratch_in_phys = kh["scratch_in_phys"].integer()
    kho.mem_map_in_phys = kh["mem_map_in_phys"].integer()
    if kho.fdt_in_phys:
        ram_range(kh["fdt_in_len"], mem, kho.fdt_in_phys, kho.fdt_in_len)
    # Scratch: reserved in RAM by the first boot (`kho_scratch=0%` makes empty areas);
    # after a handover, the table the previous kernel wrote, taken as it was.
    areas = []
    for area in kh["scratch"].items():
        if kho.fdt_in_phys:
            areas.append(KhoMem(*(f.integer() for f in area.items(2))))
        else:
            areas.append(KhoMem(*area.range(mem, empty=True)))
    kho.scratch = areas
    kho.scratch_table = kh["scratch_table"].integer()
    if areas:
        ram_range(kh["scratch_table"], mem, kho.scratch_table, len(areas) * KHO_SCRATCH_ENTRY)
    # kho_out
    kho.debugfs = kh["debugfs"].boolean()
    kho.finalized = kh["finalized"].boolean()
    kho.fdt_page = kh["fdt_page"].integer()
    if kho.fdt_page:
        _allocated(kh["fdt_page"], pages, kho.fdt_page)
    kho.preserved_mem_map = kh["preserved_mem_map"].integer()
    if kho.preserved_mem_map:
        _allocated(kh["preserved_mem_map"], pages, kho.preserved_mem_map)
    # debugfs blobs: windows on RAM, each with its own serial (a file instance)
    kho._serial = kh["serial"].integer(0, S64_MAX)
    out_fdt = kh["out_fdt"].optional()
    in_fdt = kh["in_fdt"].optional()
    kho.out_fdt = _kho_blob(out_fdt, mem, ram=True) if out_fdt is not None else None
    kho.out_sub_fdts = [_kho_blob(f, mem, ram=True) for f in kh["out_sub_fdts"].items()]
    kho.in_fdt = _kho_blob(in_fdt, mem, ram=True) if in_fdt is not None else None
    kho.in_sub_fdts = [_kho_blob(f, mem, ram=False) for f in kh["in_sub_fdts"].items()]
    if out_fdt is not None and kho.out_fdt is not None and kho.out_fdt[:2] != ("fdt", kho.fdt_page):
        raise out_fdt.bad("is not the root FDT page named fdt")
    if in_fdt is not None and kho.in_fdt is not None and kho.in_fdt[:2] != ("fdt", kho.fdt_in_phys):
        raise in_fdt.bad("is not the incoming FDT named fdt")
    blobs = [kho.out_fdt, kho.in_fdt, *kho.out_sub_fdts, *kho.in_sub_fdts]
    serials = [b.serial for b in blobs if b is not None]
    if len(set(serials)) != len(serials) or any(n > kho._serial for n in serials):
        raise kh["serial"].bad("does not match the blobs (repeated or newer serials)")
    # the incoming map as memory init reserved it, and the folios restored since
    runs = []
    for run in kh["preserved_runs"].items():
        phys_field, size_field, order_field = run.items(3)
        phys, size = phys_field.integer(), size_field.integer(1)
        if phys + size > U64_MAX + 1:
            raise run.bad("ends past 2^64")
        runs.append((phys, size, order_field.integer(0, MAX_ORDER)))
    kho._preserved_runs = runs
    restored = [f.integer() for f in kh["restored"].items()]
    if len(set(restored)) != len(restored):
        raise kh["restored"].bad("repeats an address")
    kho._restored = set(restored)
    track = kh["track"].optional()
    kho._track = _restore_track(track, k, pages) if track is not None else None
    memblock = kh["memblock"].optional()
    if memblock is not None:
        make = getattr(kho, "make_memblock_kho", None)  # an era with its own steps
        memblock_kho = make(k.reserve_mem) if make is not None else MemblockKho(k.reserve_mem, kho)
        memblock_kho.fdt_page = memblock["fdt_page"].integer()
        if memblock_kho.fdt_page:
            _allocated(memblock["fdt_page"], pages, memblock_kho.fdt_page)
        k.reserve_mem.memblock_kho = memblock_kho
    if isinstance(kho, KhoBlobEra):
        _restore_kho_blob_era(k, kho, kh["blob"], pages)


def _restore_kho_blob_era(
    k: Kernel, kho: KhoBlobEra, st: _Field, pages: PageAllocator | None
) -> None:
    kho.kexec_count = st["kexec_count"].integer(0, U32_MAX)
    previous = st["previous_release"].text(line=True)
    if len(previous) > NEW_UTS_LEN:
        raise st["previous_release"].bad(f"is longer than {NEW_UTS_LEN} bytes")
    kho.previous_release = previous
    kho.metadata_phys = st["metadata_phys"].integer()
    if kho.metadata_phys:
        _allocated(st["metadata_phys"], pages, kho.metadata_phys)
    radix = st["radix"].optional()
    kho.radix = _restore_radix(radix, k, pages) if radix is not None else None


def _restore_radix(st: _Field, k: Kernel, pages: PageAllocator | None) -> KhoRadixTree:
    """The radix tree: table pages with their entries, leaf pages (bits read back from
    RAM), each a page the kernel allocated, each reached once from the root at its level."""
    if pages is None:
        raise st.bad("needs a page allocator (the boot stopped before it)")
    root_field = st["root"]
    root = _allocated(root_field, pages, root_field.integer())
    tables: dict[int, dict[int, int]] = {}
    for entry in st["tables"].items():
        node_field, children = entry.items(2)
        node = _allocated(node_field, pages, node_field.integer())
        if node in tables:
            raise node_field.bad("repeats a table")
        table: dict[int, int] = {}
        for item in children.items():
            index_field, child_field = item.items(2)
            index = index_field.integer(0, TABLE_ENTRIES - 1)
            if index in table:
                raise index_field.bad("repeats an entry")
            table[index] = child_field.integer()
        tables[node] = table
    leaves: set[int] = set()
    for leaf_field in st["leaves"].items():
        leaf = _allocated(leaf_field, pages, leaf_field.integer())
        if leaf in leaves or leaf in tables:
            raise leaf_field.bad("repeats a page")
        leaves.add(leaf)
    if root not in tables:
        raise root_field.bad("is not a table")
    reached, todo = {root}, [(root, KHO_TREE_MAX_DEPTH - 1)]
    while todo:
        node, level = todo.pop()
        for child in tables[node].values():
            if child in reached:
                raise st.bad(f"reaches page {child:#x} twice")
            reached.add(child)
            if level > 1 and child in tables:
                todo.append((child, level - 1))
            elif level == 1 and child in leaves:
                continue
            else:
                raise st.bad(f"has page {child:#x} where a level-{level - 1} node belongs")
    if reached != set(tables) | leaves:
        raise st.bad("holds pages the root does not reach")
    tree = KhoRadixTree(k.mem, pages, root)
    tree._tables = tables
    tree._leaves = {leaf: bytearray(k.mem.read(leaf, PAGE_SIZE)) for leaf in sorted(leaves)}
    return tree


def _restore_track(st: _Field, k: Kernel, pages: PageAllocator | None) -> KhoMemTrack:
    """``kho_mem_track``: where each bitmap is (its bits are read back from RAM, where
    every change was written through) and the free bitmap slots of a carved page."""
    if pages is None:
        raise st.bad("needs a page allocator (the boot stopped before it)")
    track = KhoMemTrack(k.mem, pages, k.release.bitmap_bytes)
    nbytes = track.bitmap_bytes
    used: set[int] = set()

    def bitmap_memory(field: _Field) -> int:
        phys = field.integer()
        if phys % nbytes:
            raise field.bad(f"is not aligned to the bitmap size {nbytes}")
        _allocated(field, pages, phys - phys % PAGE_SIZE)
        if phys in used:
            raise field.bad("is used twice")
        used.add(phys)
        return phys

    for entry in st["orders"].items():
        order_field, bitmaps = entry.items(2)
        order = order_field.integer(0, MAX_ORDER)
        if order in track.orders:
            raise order_field.bad("repeats an order")
        max_index = ((1 << MAX_ORDER) - 1 >> order) // track.bits_per_bitmap
        per_order: dict[int, _Bitmap] = {}
        for item in bitmaps.items():
            index_field, phys_field = item.items(2)
            index = index_field.integer(0, max_index)
            if index in per_order:
                raise index_field.bad("repeats a bitmap index")
            bitmap = _Bitmap(bitmap_memory(phys_field), nbytes)
            bitmap.bits[:] = k.mem.read(bitmap.phys, nbytes)
            per_order[index] = bitmap
        track.orders[order] = per_order
    slab = st["slab"]
    track._slab = [bitmap_memory(f) for f in slab.items()]
    if track._slab and nbytes >= PAGE_SIZE:
        raise slab.bad("holds slots although bitmaps are whole pages")
    return track


def _restore_kimage(st: _Field, blobs: list[bytes], mem: PhysicalMemory, legacy: bool) -> Kimage:
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
    if not legacy:
        # mainline: the root FDT page the boot parameters name (read there at exec time)
        image.kho_fdt_phys = st["kho_fdt_phys"].integer()
        if image.kho_fdt_phys:
            ram_range(st["kho_fdt_phys"], mem, image.kho_fdt_phys, PAGE_SIZE)
        target = st["release"].optional()
        if target is not None:
            name, note = target.items(2)
            note_field = note.optional()
            image.release = ImageRelease(
                _release(name), note_field.text(line=True) if note_field is not None else None
            )
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
