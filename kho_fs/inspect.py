"""Decode a KHO handover for people: ``kho-fs inspect``.

A handover is a root FDT, the sub-FDTs (or raw blobs) its children point at, and — in
mainline kernels — a preserved-memory map in RAM. This module reads them from wherever
they are and turns them into one report: an annotated tree (every property as dtc prints
it, the known ones with their meaning and native-endian values) plus the preserved memory
as ranges with page orders and totals. Nothing here needs a mount: the sources are bytes
and a ``read(addr, size)`` callable for physical memory, so the same code serves a
mount's ``dev/mem``, the model's RAM (``machine/map.svg``) and tests.

Sources (:func:`load_source`):

- a kho-fs mount: its outgoing or incoming handover through either interface (v4
  ``sys/kernel/kho/dt`` / ``sys/firmware/kho/dt_fw``, mainline
  ``sys/kernel/debug/kho/{out,in}/fdt`` and ``sub_fdts/*``), physical memory through
  ``dev/mem``, the release from ``proc/version``;
- a debugfs ``kho/out`` or ``kho/in`` directory (a real kernel's, or a copy): ``fdt`` and
  ``sub_fdts/*``; inside a kho-fs mount ``dev/mem`` is used too;
- a plain FDT file.

FDT bytes are checked by libfdt (``fdt_check_full``, through the project's adapter)
before the structure block is walked here; the walk keeps raw name bytes (latin-1) and
every property in order, which the printer needs. Property values print exactly as
``dtc -I dtb -O dts`` prints them (its ``guess_value_type`` rules); the pure-Python
``fdt`` package is not used (docs/tools.md).
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kho_fs.model.fdt import FDT_MAGIC, fdt_check_full, fdt_strerror

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
U64_MASK = (1 << 64) - 1
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
FDT_HEADER_SIZE = 40
MAX_SUB_FDT = 64 << 20  # a sub-FDT larger than this is not followed through memory
MAX_CHUNKS = 1 << 20  # chunk-list guard (a looping or endless list written through dev/mem)
CHUNK_HDR = struct.Struct("<QII")  # next, order, num_elms (spec kho-mainline.md §6.2)
CHUNK_ELM = struct.Struct("<QQ")  # phys_start, bitmap
CHUNK_MAX_ENTRIES = (PAGE_SIZE - CHUNK_HDR.size) // CHUNK_ELM.size  # 255
MAX_ORDER = 64 - PAGE_SHIFT
KHO_TEST_MAGIC = 0x4B484F21
VMALLOC_DESC = struct.Struct("<QIHH")  # first chunk, total pages, flags, order (§6.4)
CSUM_VERIFY_LIMIT = 256 << 20  # test_kho folios are checksummed when at most this large
LUO_SESSION = struct.Struct("<64sQQ")  # name, files address, file count (§12)
LUO_FILE = struct.Struct("<48sQQ")  # compatible, data, token
LUO_MAX_SESSIONS = 4096
LUO_MAX_FILES = 4096
TEXT_LIST_LIMIT = 16  # entries of a decoded list printed in text (JSON has them all)
DTC_VALUE_LIMIT = 64  # known properties longer than this are abridged in text

#: What a root ``compatible`` string says (spec kho-mainline.md §5.1, §7, §10, §12; kho-v4.md §5.4).
COMPATIBLES = {
    "kho-v1": "KHO handover root, ABI v1 (the v4 series and Linux 6.16 – 7.0)",
    "kho-v2": "KHO handover root, ABI v2 (stateless era: radix-tree map)",
    "kho-v3": "KHO handover root, ABI v3 (blob era)",
    "kho-v4": "KHO handover root, ABI v4 (blob era, Linux 7.1+)",
    "reserve_mem-v1": "reserve_mem= regions (v4 series)",
    "reserve_mem_map-v1": "one reserve_mem= region (v4 series)",
    "memblock-v1": "memblock's reserve_mem= regions (mainline sub-FDT)",
    "reserve-mem-v1": "one reserve_mem= region",
    "kho-test-v1": "the kernel's KHO test module (lib/test_kho.c)",
    "kho-example-v1": "kho-fs's example driver (a preserved buffer)",
    "luo-v1": "Live Update Orchestrator state (6.19)",
    "luo-session-v1": "LUO sessions (6.19)",
    "luo-session-v2": "LUO sessions",
    "luo-flb-v1": "LUO file-lifecycle-bound objects",
}


class InspectError(Exception):
    """A source that cannot be decoded: one line for the user."""


# -- sizes -------------------------------------------------------------------------------


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """``16 MiB``, ``4 KiB``, ``1.50 GiB``, ``100 B``: exact when the unit divides it."""
    unit = min((n.bit_length() - 1) // 10, 6) if n > 0 else 0
    if unit == 0:
        return f"{n} B"
    shift = unit * 10
    if n & ((1 << shift) - 1):
        return f"{n / (1 << shift):.2f} {_UNITS[unit]}"
    return f"{n >> shift} {_UNITS[unit]}"


# -- FDT parsing ---------------------------------------------------------------------------


@dataclass
class FdtProp:
    name: str  # latin-1 text standing for the name's bytes
    value: bytes


@dataclass
class FdtNode:
    name: str
    path: str
    props: list[FdtProp] = field(default_factory=list)
    children: list[FdtNode] = field(default_factory=list)

    def prop(self, name: str) -> bytes | None:
        return next((p.value for p in self.props if p.name == name), None)

    def child(self, name: str) -> FdtNode | None:
        return next((c for c in self.children if c.name == name), None)

    def compatible(self) -> list[str]:
        value = self.prop("compatible")
        if not value:
            return []
        return [
            s.decode("latin-1") for s in value.split(b"\0")[: -1 if value.endswith(b"\0") else None]
        ]

    def walk(self) -> Iterator[FdtNode]:
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class ParsedFdt:
    totalsize: int
    version: int
    last_comp_version: int
    boot_cpuid_phys: int
    memreserve: list[tuple[int, int]]
    root: FdtNode


class FdtTruncated(InspectError):
    """The header promises more bytes than the blob has (6.19's ``out/fdt``)."""

    def __init__(self, have: int, total: int) -> None:
        super().__init__(f"truncated FDT: {have} of its {total} bytes")
        self.have = have
        self.total = total


def is_fdt(data: bytes) -> bool:
    return len(data) >= 4 and struct.unpack_from(">I", data)[0] == FDT_MAGIC


def parse_fdt(blob: bytes) -> ParsedFdt:
    """Check ``blob`` with libfdt, then walk it; InspectError on anything wrong."""
    if len(blob) < FDT_HEADER_SIZE:
        raise InspectError(f"not an FDT: {len(blob)} bytes, shorter than an FDT header")
    (
        magic,
        total,
        off_struct,
        off_strings,
        off_rsv,
        version,
        last_comp,
        cpuid,
        size_strings,
        size_struct,
    ) = struct.unpack_from(">10I", blob)
    if magic != FDT_MAGIC:
        raise InspectError(f"not an FDT: magic 0x{magic:08x}, expected 0xd00dfeed")
    if total > len(blob):
        raise FdtTruncated(len(blob), total)
    blob = bytes(blob[:total])
    err = fdt_check_full(blob)
    if err:
        raise InspectError(f"invalid FDT: libfdt says {fdt_strerror(err)} ({err})")
    memreserve = []
    at = off_rsv
    while at + 16 <= off_struct:
        addr, size = struct.unpack_from(">QQ", blob, at)
        if not addr and not size:
            break
        memreserve.append((addr, size))
        at += 16
    strings = blob[off_strings : off_strings + size_strings]
    end = off_struct + size_struct
    stack: list[FdtNode] = []
    root: FdtNode | None = None
    at = off_struct
    while at + 4 <= end:
        (token,) = struct.unpack_from(">I", blob, at)
        at += 4
        if token == FDT_BEGIN_NODE:
            stop = blob.index(b"\0", at)
            name = blob[at:stop].decode("latin-1")
            at = (stop + 4) & ~3
            parent = stack[-1] if stack else None
            path = "/" if parent is None else (parent.path.rstrip("/") + "/" + name)
            node = FdtNode(name, path)
            if parent is None:
                root = node
            else:
                parent.children.append(node)
            stack.append(node)
        elif token == FDT_END_NODE:
            stack.pop()
        elif token == FDT_PROP:
            length, nameoff = struct.unpack_from(">II", blob, at)
            at += 8
            nstop = strings.index(b"\0", nameoff)
            stack[-1].props.append(
                FdtProp(strings[nameoff:nstop].decode("latin-1"), blob[at : at + length])
            )
            at = (at + length + 3) & ~3
        elif token == FDT_NOP:
            continue
        elif token == FDT_END:
            break
        else:  # fdt_check_full accepted it, so this cannot happen
            raise InspectError(f"invalid FDT: unknown token {token} at {at - 4:#x}")
    if root is None:
        raise InspectError("invalid FDT: no root node")
    return ParsedFdt(total, version, last_comp, cpuid, memreserve, root)


# -- dtc's property printer (treesource.c) --------------------------------------------------

_DTC_ESCAPES = {
    7: "\\a",
    8: "\\b",
    9: "\\t",
    10: "\\n",
    11: "\\v",
    12: "\\f",
    13: "\\r",
    92: "\\\\",
    34: '\\"',
    0: "\\0",
}


def _isstring(c: int) -> bool:
    return 0x20 <= c <= 0x7E or c == 0 or c in (7, 8, 9, 10, 11, 12, 13)


def _dtc_string(chunk: bytes) -> str:
    out = ['"']
    for c in chunk[:-1]:
        esc = _DTC_ESCAPES.get(c)
        if esc is not None:
            out.append(esc)
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    out.append('"')
    return "".join(out)


def dtc_value(value: bytes) -> str:
    """What dtc prints after a property name: ``""`` (empty), `` = "a", "b"``, `` = <0x01>``
    or `` = [01 02]`` — ``guess_value_type`` and ``write_propval`` of dtc's treesource.c."""
    n = len(value)
    if n == 0:
        return ""
    nnotstring = sum(1 for c in value if not _isstring(c))
    nnul = value.count(0)
    if value[-1] == 0 and nnotstring == 0 and nnul <= n - nnul:
        starts = [0]
        at = value.index(0) + 1
        while at < n:
            starts.append(at)
            at = value.index(0, at) + 1
        bounds = [*starts, n]
        return " = " + ", ".join(_dtc_string(value[a:b]) for a, b in itertools_pairs(bounds))
    if n % 4 == 0:
        cells = struct.unpack(f">{n // 4}I", value)
        return " = <" + " ".join(f"0x{c:02x}" for c in cells) + ">"
    return " = [" + " ".join(f"{c:02x}" for c in value) + "]"


def itertools_pairs(seq: list[int]) -> Iterator[tuple[int, int]]:
    return itertools.pairwise(seq)


def dtc_value_abridged(value: bytes, limit: int = DTC_VALUE_LIMIT) -> str:
    """:func:`dtc_value`, but a long value shows its first cells and a byte count."""
    if len(value) <= limit:
        return dtc_value(value)
    head = value[: limit // 2 & ~3]
    text = dtc_value(head)
    if text.endswith(">"):
        return f"{text[:-1]} /* … {len(value)} bytes in all */>"
    if text.endswith("]"):
        return f"{text[:-1]} /* … {len(value)} bytes in all */]"
    return f"{text} /* … {len(value)} bytes in all */"


# -- physical memory -----------------------------------------------------------------------

MemRead = Callable[[int, int], bytes]


class DevMem:
    """A mount's ``dev/mem`` (file offset = physical address) as a ``read(addr, size)``.

    Reads past the end of RAM return zeros, like the model's bus."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDONLY)

    def read(self, addr: int, size: int) -> bytes:
        if size <= 0 or addr < 0:
            return bytes(max(size, 0))
        parts = []
        got = 0
        while got < size:
            chunk = os.pread(self.fd, size - got, addr + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        return data + bytes(size - len(data)) if len(data) < size else data

    def close(self) -> None:
        os.close(self.fd)


def batch_read(
    read: MemRead, addrs: Iterable[int], size: int, gap: int = 64 << 10
) -> dict[int, bytes]:
    """``{addr: read(addr, size)}`` with neighbouring addresses read together (one call
    per span of at most 4 MiB with holes under ``gap``): through FUSE, 10,000 bitmaps cost
    a handful of reads instead of 10,000."""
    out: dict[int, bytes] = {}
    spans: list[list[int]] = []
    for a in sorted(set(addrs)):
        if spans and a - spans[-1][-1] <= gap and a + size - spans[-1][0] <= 4 << 20:
            spans[-1].append(a)
        else:
            spans.append([a])
    for span in spans:
        base = span[0]
        data = read(base, span[-1] + size - base)
        for a in span:
            out[a] = data[a - base : a - base + size]
    return out


# -- preserved-memory map (mainline §6.1, §6.2) ---------------------------------------------


@dataclass(slots=True)
class MemRange:
    """A contiguous preserved range and the blocks (by order) it is made of."""

    start: int
    size: int
    orders: dict[int, int]  # order -> blocks
    labels: list[str] = field(default_factory=list)  # v4: the nodes whose `mem` names it


@dataclass
class MemMap:
    first_chunk: int
    bitmap_bytes: int
    chunks: int
    bitmaps: int
    runs: list[tuple[int, int, int]]  # (start, size, order): adjacent blocks of one order
    notes: list[str]
    order_blocks: dict[int, int] = field(default_factory=dict)  # order -> blocks

    def ranges(self) -> list[MemRange]:
        return [MemRange(r["start"], r["size"], r["orders"]) for r in merge_runs(self.runs)]


def decode_mem_map(read: MemRead, first: int, bitmap_bytes: int) -> MemMap:
    """Walk the chunk list at ``first`` and decode its bitmaps as a kernel with
    ``bitmap_bytes``-byte bitmaps would; garbage gives notes, never an exception."""
    notes: list[str] = []
    entries: list[tuple[int, int, int]] = []  # order, phys_start, bitmap
    seen: set[int] = set()
    addr = first
    chunks = 0
    while addr:
        if addr in seen:
            notes.append(f"the chunk list loops back to {addr:#x}; stopped there")
            break
        if len(seen) >= MAX_CHUNKS:
            notes.append(f"more than {MAX_CHUNKS} chunks; stopped")
            break
        seen.add(addr)
        page = read(addr, PAGE_SIZE)
        nxt, order, count = CHUNK_HDR.unpack_from(page, 0)
        chunks += 1
        if count > CHUNK_MAX_ENTRIES:
            notes.append(
                f"chunk {addr:#x} claims {count} entries (at most {CHUNK_MAX_ENTRIES}); "
                f"read {CHUNK_MAX_ENTRIES}"
            )
            count = CHUNK_MAX_ENTRIES
        if order > MAX_ORDER:
            notes.append(f"chunk {addr:#x} has page order {order}; its entries are skipped")
        else:
            entries += [
                (order, phys, bitmap)
                for phys, bitmap in CHUNK_ELM.iter_unpack(
                    page[CHUNK_HDR.size : CHUNK_HDR.size + count * CHUNK_ELM.size]
                )
            ]
        addr = nxt
    bitmaps = batch_read(read, (b for _, _, b in entries), bitmap_bytes)
    runs: list[tuple[int, int, int]] = []  # (start, size, order)
    append = runs.append
    limit = U64_MASK + 1
    order_blocks: dict[int, int] = {}
    for order, phys_start, bitmap in entries:
        value = int.from_bytes(bitmaps[bitmap], "little")
        if not value:
            continue
        shift = order + PAGE_SHIFT
        if phys_start + (value.bit_length() << shift) > limit:
            notes.append(f"bitmap {bitmap:#x} names memory past 2^64; ignored")
            continue
        order_blocks[order] = order_blocks.get(order, 0) + value.bit_count()
        # bit i of the bitmap is character i of the reversed binary text; str.find skips
        # the zeros at C speed
        bits = format(value, "b")[::-1]
        find, nbits = bits.find, len(bits)
        i = find("1")
        while i >= 0:
            j = find("0", i)
            if j < 0:
                j = nbits
            append((phys_start + (i << shift), (j - i) << shift, order))
            i = find("1", j)
    return MemMap(first, bitmap_bytes, chunks, len(entries), runs, notes, order_blocks)


def is_radix_root(root: FdtNode) -> bool:
    """A root whose map is the radix tree (stateless and blob eras: ``kho-v2`` and later)."""
    return any(re.fullmatch(r"kho-v([2-9]|\d\d+)", c) for c in root.compatible())


def decode_radix_map(read: MemRead, root: int) -> MemMap | None:
    """The radix-tree map (spec §6.3) at ``root`` as runs (None: no walker available)."""
    try:
        from kho_fs.model.kho_radix import walk_radix_runs
    except ImportError:  # pragma: no cover - the blob-era model is not part of this tree
        return None
    runs = [(phys, size, order) for phys, size, order in walk_radix_runs(read, root) if size]
    return MemMap(root, PAGE_SIZE, 0, 0, runs, [])


def merge_runs(runs: Iterable[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Touching or overlapping runs merged into ranges: ``{"start", "size", "orders":
    {order: blocks}}`` (the report's form: 100,000 ranges are built once, not twice)."""
    ranges: list[dict[str, Any]] = []
    append = ranges.append
    cur_end = -1
    cur: dict[str, Any] = {}
    orders: dict[int, int] = {}
    for start, size, order in sorted(runs):
        if start <= cur_end:
            end = start + size
            if end > cur_end:
                cur_end = end
                cur["size"] = end - cur["start"]
            orders[order] = orders.get(order, 0) + (size >> (order + PAGE_SHIFT))
            continue
        orders = {order: size >> (order + PAGE_SHIFT)}
        cur = {"start": start, "size": size, "orders": orders}
        cur_end = start + size
        append(cur)
    return ranges


# -- sources ---------------------------------------------------------------------------------


@dataclass
class HandoverSource:
    """Everything a handover decode reads: the root blob, sub-FDT blobs by name, memory."""

    label: str
    kind: str  # "kho-fs mount", "debugfs directory", "FDT file"
    root: bytes
    root_file: str | None = None
    sub_fdts: dict[str, bytes] = field(default_factory=dict)
    sub_fdt_files: dict[str, str] = field(default_factory=dict)
    read_mem: MemRead | None = None
    interface: str | None = None  # "v4" or "mainline"
    side: str | None = None  # "out" or "in"
    linux_version: str | None = None
    bitmap_bytes: int | None = None
    bitmap_bytes_from: str | None = None
    root_phys: int | None = None
    notes: list[str] = field(default_factory=list)
    _close: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self._close:
            close()
        self._close.clear()

    def __enter__(self) -> HandoverSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


V4_OUT = "sys/kernel/kho/dt"
V4_IN = "sys/firmware/kho/dt_fw"
DEBUGFS_KHO = "sys/kernel/debug/kho"
LAYOUT_FILE = "machine/layout"


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InspectError(f"{path}: {exc.strerror or exc}") from None


def is_mount_root(path: Path) -> bool:
    """A kho-fs mount (or a directory laid out like one): ``machine/status`` and ``dev/mem``."""
    return (path / "machine" / "status").is_file() and (path / "dev" / "mem").exists()


def find_mount_root(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        try:
            if is_mount_root(candidate):
                return candidate
        except OSError:
            continue
    return None


def read_layout(root: Path) -> list[tuple[str, int, int, str]]:
    """``machine/layout`` records ``(kind, start, size, name)``; [] when absent."""
    try:
        text = (root / LAYOUT_FILE).read_text("latin-1")
    except OSError:
        return []
    return parse_layout(text)


def parse_layout(text: str) -> list[tuple[str, int, int, str]]:
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        try:
            out.append(
                (parts[0], int(parts[1], 16), int(parts[2], 16), parts[3] if len(parts) > 3 else "")
            )
        except ValueError:
            continue
    return out


def linux_version_of(root: Path) -> str | None:
    try:
        text = (root / "proc" / "version").read_text("latin-1")
    except OSError:
        return None
    words = text.split()
    return words[2] if len(words) > 2 and words[:2] == ["Linux", "version"] else None


def bitmap_bytes_for(uts_release: str) -> int | None:
    """Bitmap size of the release a ``Linux version`` names (None: no bitmap map)."""
    from kho_fs.model.bzimage import release_for_version
    from kho_fs.model.releases import KHO_MAINLINE

    found = release_for_version(uts_release)
    if found is None or found.release.kho != KHO_MAINLINE:
        return None
    return found.release.bitmap_bytes


def _debugfs_dir(path: Path, src: HandoverSource) -> None:
    src.root_file = str(path / "fdt")
    src.root = _read_file(path / "fdt")
    subs = path / "sub_fdts"
    if subs.is_dir():
        try:
            names = sorted(os.listdir(subs))
        except OSError as exc:
            raise InspectError(f"{subs}: {exc.strerror}") from None
        for name in names:
            src.sub_fdts[name] = _read_file(subs / name)
            src.sub_fdt_files[name] = str(subs / name)


def load_source(
    path: str | os.PathLike[str], side: str | None = None, bitmap_bytes: int | None = None
) -> HandoverSource:
    """Find the handover ``path`` names (see the module docstring); InspectError if none."""
    p = Path(path)
    label = str(path)
    if not p.exists():
        raise InspectError(f"{label}: no such file or directory")
    mount = find_mount_root(p.resolve())
    src = HandoverSource(label=label, kind="FDT file", root=b"")
    if p.is_dir() and mount is not None and p.resolve() == mount:
        _load_mount(mount, side, src)
    elif p.is_dir() and (p / "out").is_dir() and not (p / "fdt").exists():  # a debugfs kho/
        src.kind, src.interface = "debugfs directory", "mainline"
        chosen = _choose_side(
            side, (p / "out" / "fdt").exists(), (p / "in" / "fdt").exists(), label
        )
        src.side = chosen
        _debugfs_dir(p / chosen, src)
    elif p.is_dir() and (p / "fdt").exists():
        src.kind, src.interface = "debugfs directory", "mainline"
        src.side = side or (p.name if p.name in ("out", "in") else None)
        _debugfs_dir(p, src)
    elif p.is_dir():
        raise InspectError(
            f"{label}: not a KHO source (expected an FDT file, a kho-fs mount, or a debugfs "
            "kho/out or kho/in directory with an fdt file)"
        )
    else:
        src.root_file = label
        src.root = _read_file(p)
        name = p.name
        src.side = (
            side
            or {"dt": "out", "dt_fw": "in"}.get(name)
            or (p.parent.name if p.parent.name in ("out", "in") else None)
        )
        if name in ("dt", "dt_fw"):
            src.interface = "v4"
    if mount is not None:
        if src.kind == "FDT file" and p.resolve() != mount:
            src.kind = "file in a kho-fs mount"
        _attach_mount(mount, src)
    if bitmap_bytes is not None:
        src.bitmap_bytes, src.bitmap_bytes_from = bitmap_bytes, "--bitmap-bytes"
    if not src.root:
        src.close()
        raise InspectError(f"{src.root_file or label}: empty (no FDT)")
    return src


def _choose_side(side: str | None, has_out: bool, has_in: bool, label: str) -> str:
    if side == "out" and not has_out:
        raise InspectError(f"{label}: no outgoing handover (not activated/finalized yet)")
    if side == "in" and not has_in:
        raise InspectError(f"{label}: no incoming handover (this boot received none)")
    if side:
        return side
    if has_out:
        return "out"
    if has_in:
        return "in"
    raise InspectError(
        f"{label}: no handover: KHO is disabled, not activated (v4: echo 1 > "
        "sys/kernel/kho/active) or not finalized (mainline: echo 1 > "
        "sys/kernel/debug/kho/out/finalize), and this boot received none"
    )


def _load_mount(mount: Path, side: str | None, src: HandoverSource) -> None:
    src.kind = "kho-fs mount"
    debugfs = mount / DEBUGFS_KHO
    if debugfs.is_dir():
        src.interface = "mainline"
        chosen = _choose_side(
            side, (debugfs / "out" / "fdt").exists(), (debugfs / "in" / "fdt").exists(), src.label
        )
        src.side = chosen
        _debugfs_dir(debugfs / chosen, src)
        return
    has_out, has_in = (mount / V4_OUT).exists(), (mount / V4_IN).exists()
    if has_out or has_in or (mount / "sys/kernel/kho").is_dir():
        src.interface = "v4"
    chosen = _choose_side(side, has_out, has_in, src.label)
    src.side = chosen
    src.root_file = str(mount / (V4_OUT if chosen == "out" else V4_IN))
    src.root = _read_file(mount / (V4_OUT if chosen == "out" else V4_IN))


def _attach_mount(mount: Path, src: HandoverSource) -> None:
    """Physical memory, the release and (6.19's truncated ``out/fdt``) the whole root."""
    try:
        dev = DevMem(mount / "dev" / "mem")
    except OSError as exc:
        src.notes.append(f"{mount / 'dev/mem'}: {exc.strerror}: physical memory not read")
    else:
        src.read_mem = dev.read
        src._close.append(dev.close)
    src.linux_version = linux_version_of(mount)
    if src.linux_version is not None and src.bitmap_bytes is None:
        size = bitmap_bytes_for(src.linux_version)
        if size is not None:
            src.bitmap_bytes, src.bitmap_bytes_from = (
                size,
                f"proc/version: Linux {src.linux_version}",
            )
    records = read_layout(mount)
    want = f"fdt-{src.side}"
    root = next(((a, s) for k, a, s, n in records if k == want and n == "root"), None)
    if root is not None:
        src.root_phys = root[0]
        total = struct.unpack_from(">I", src.root, 4)[0] if len(src.root) >= 8 else 0
        if src.read_mem is not None and is_fdt(src.root) and len(src.root) < total <= MAX_SUB_FDT:
            full = src.read_mem(root[0], total)
            if full.startswith(src.root):
                src.notes.append(
                    f"{src.root_file} has {len(src.root)} of the root FDT's {total} bytes (6.19+ "
                    f"keep the size it had when created); the whole root was read at {root[0]:#x}"
                )
                src.root = full


# -- the report ------------------------------------------------------------------------------


@dataclass
class Note:
    """What inspect says about one property: a one-line meaning, more lines, and data."""

    meaning: str
    lines: list[str] = field(default_factory=list)
    data: Any = None


def _u64(value: bytes) -> int | None:
    return struct.unpack("<Q", value)[0] if len(value) == 8 else None


def _u32(value: bytes) -> int | None:
    return struct.unpack("<I", value)[0] if len(value) == 4 else None


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _range_text(start: int, size: int) -> str:
    last = (start + size - 1) & U64_MASK if size else start
    return f"{start:#x}..{last:#x} ({human_size(size)})"


class Decoder:
    """Builds the report of one source."""

    def __init__(self, src: HandoverSource) -> None:
        self.src = src
        self.read = src.read_mem
        self.notes: list[str] = list(src.notes)
        self.v4_mem: list[dict[str, Any]] = []

    # -- entry point -------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        src = self.src
        out: dict[str, Any] = {
            "source": {
                "path": src.label,
                "kind": src.kind,
                "interface": src.interface,
                "side": src.side,
                "linux_version": src.linux_version,
                "root_file": src.root_file,
                "root_address": src.root_phys,
                "physical_memory": src.read_mem is not None,
            },
            "notes": self.notes,
        }
        try:
            parsed = parse_fdt(src.root)
        except FdtTruncated as exc:
            if not src.sub_fdts:
                raise InspectError(f"{src.root_file or src.label}: {exc}") from None
            self.notes.append(
                f"{src.root_file}: {exc} (6.19+ keep out/fdt at the size it had when created); "
                "its tree cannot be shown, the sub-FDTs are listed from sub_fdts/"
            )
            out["root"] = {"truncated": True, "have": exc.have, "totalsize": exc.total}
            out["sub_fdts"] = [self.sub_fdt(name, None, 0) for name in src.sub_fdts]
            out["preserved"] = None
            return out
        except InspectError as exc:
            raise InspectError(f"{src.root_file or src.label}: {exc}") from None
        kind = self.fdt_kind(parsed.root)
        out["root"] = self.fdt_report(parsed, kind)
        out["sub_fdts"] = self.follow_children(parsed.root, kind)
        out["preserved"] = self.preserved(parsed.root, kind)
        return out

    # -- FDTs ---------------------------------------------------------------------------------
    def fdt_kind(self, root: FdtNode) -> str | None:
        compat = root.compatible()
        if any(c.startswith("kho-v") for c in compat):
            return "kho"
        for c, kind in (
            ("memblock-v1", "memblock"),
            ("kho-test-v1", "kho_test"),
            ("reserve-mem-v1", "memblock"),
        ):
            if c in compat:
                return kind
        if any(c.startswith("luo-v") for c in compat):
            return "luo"
        return None

    def fdt_report(self, parsed: ParsedFdt, kind: str | None) -> dict[str, Any]:
        return {
            "totalsize": parsed.totalsize,
            "version": parsed.version,
            "last_comp_version": parsed.last_comp_version,
            "boot_cpuid_phys": parsed.boot_cpuid_phys,
            "memreserve": [[a, s] for a, s in parsed.memreserve],
            "kind": kind,
            "tree": self.node_report(parsed.root, kind, 0, parsed.root),
        }

    def node_report(
        self, node: FdtNode, kind: str | None, depth: int, root: FdtNode
    ) -> dict[str, Any]:
        props = []
        for p in node.props:
            try:
                note = self.annotate(kind, node, p, depth, root)
            except (ValueError, struct.error, IndexError, OverflowError) as exc:
                note = Note(f"cannot decode: {exc}")
            entry: dict[str, Any] = {
                "name": p.name,
                "length": len(p.value),
                "dtc": dtc_value(p.value).removeprefix(" = "),
                "hex": p.value.hex(),
            }
            if note is not None:
                entry["meaning"] = note.meaning
                if note.lines:
                    entry["details"] = note.lines
                if note.data is not None:
                    entry["decoded"] = note.data
            props.append(entry)
        return {
            "name": node.name,
            "path": node.path,
            "properties": props,
            "children": [self.node_report(c, kind, depth + 1, root) for c in node.children],
        }

    def annotate(
        self, kind: str | None, node: FdtNode, p: FdtProp, depth: int, root: FdtNode
    ) -> Note | None:
        name, v = p.name, p.value
        if name == "compatible":
            compat = node.compatible()
            known = [COMPATIBLES[c] for c in compat if c in COMPATIBLES]
            return Note("; ".join(known), data=compat) if known else None
        if kind == "kho":
            return self.annotate_kho(node, p, depth)
        if kind == "memblock" and name in ("start", "size") and len(v) == 8:
            value = _u64(v)
            assert value is not None
            if name == "start":
                size = _u64(node.prop("size") or b"")
                what = (
                    f"region '{node.name}': {_range_text(value, size)}"
                    if size is not None
                    else f"region '{node.name}' starts here"
                )
                return Note(f"u64 {value:#x}: start of reserve_mem {what}", data=value)
            return Note(
                f"u64 {value:#x}: size of reserve_mem region '{node.name}' ({human_size(value)})",
                data=value,
            )
        if kind == "kho_test":
            return self.annotate_test_kho(node, p)
        if kind == "luo":
            return self.annotate_luo(node, p)
        return None

    def annotate_kho(self, node: FdtNode, p: FdtProp, depth: int) -> Note | None:
        name, v = p.name, p.value
        if name == "mem":
            if not v or len(v) % 16:
                return Note(f"malformed mem: {len(v)} bytes, not LE u64 (address, size) pairs")
            entries = [struct.unpack_from("<QQ", v, i) for i in range(0, len(v), 16)]
            label = node.path
            for a, s in entries:
                self.v4_mem.append({"start": a, "size": s, "node": label})
            lines = [f"  {_range_text(a, s)}" for a, s in entries[1:]]
            meaning = "preserved range" + (
                f" (1 of {len(entries)}; the v4 kernel reserves only the first)"
                if len(entries) > 1
                else ""
            )
            return Note(
                f"{meaning}: {_range_text(*entries[0])}",
                lines,
                [{"start": a, "size": s} for a, s in entries],
            )
        if name == "preserved-memory-map" and depth == 0:
            value = _u64(v)
            if value is None:
                return Note(f"malformed: {len(v)} bytes, expected a u64")
            if not value:
                return Note(
                    "u64 0: no preserved-memory map (not finalized yet, or nothing preserved)",
                    data=0,
                )
            return Note(
                f"u64 {value:#x}: address of the preserved-memory map (decoded below)", data=value
            )
        if name in ("fdt", "preserved-data") and depth == 1 and self.src.interface != "v4":
            value = _u64(v)
            if value is None:
                return Note(f"malformed: {len(v)} bytes, expected a u64 address")
            what = "sub-FDT" if name == "fdt" else "blob"
            return Note(
                f"u64 {value:#x}: physical address of the {what} '{node.name}' (below)", data=value
            )
        if name == "blob-size" and depth == 1:
            value = _u64(v)
            return (
                Note(
                    f"u64 {value:#x}: size of the blob '{node.name}' ({human_size(value)})",
                    data=value,
                )
                if value is not None
                else None
            )
        if name in ("start", "size") and len(v) == 8:
            value = _u64(v)
            assert value is not None
            return Note(f"u64 {value:#x}", data=value)
        return None

    def annotate_test_kho(self, node: FdtNode, p: FdtProp) -> Note | None:
        name, v = p.name, p.value
        if name == "magic" and node.path == "/":
            value = _u32(v)
            if value is None:
                return Note(f"malformed magic: {len(v)} bytes")
            ok = "ok" if value == KHO_TEST_MAGIC else f"wrong, expected {KHO_TEST_MAGIC:#x}"
            return Note(f'u32 {value:#x} ("KHO!"): test_kho magic, {ok}', data=value)
        if node.path != "/data":
            return None
        if name == "nr_folios":
            value = _u32(v)
            return (
                Note(f"u32 {value}: folios test_kho preserved", data=value)
                if value is not None
                else Note("malformed: expected a u32")
            )
        if name == "csum":
            value = _u32(v)
            if value is None:
                return Note("malformed: expected a u32")
            return Note(
                f"u32 {value:#010x}: checksum (csum_partial) of the folios' bytes",
                self._csum_lines(node, value),
                value,
            )
        if name == "folios_info":
            return self._folios_note(node, v)
        return None

    def _folios_layout(self, node: FdtNode, v: bytes) -> str | None:
        count = _u32(node.prop("nr_folios") or b"")
        if count is None:
            return None
        fits_array, fits_desc = len(v) == 8 * count, len(v) == VMALLOC_DESC.size
        if fits_array and fits_desc:  # two folios: the release decides
            size = self.src.bitmap_bytes
            return "array" if size == 512 else "vmalloc"
        return "array" if fits_array else "vmalloc" if fits_desc else None

    def _folios(
        self, node: FdtNode, v: bytes
    ) -> tuple[list[tuple[int, int]] | None, list[str], dict[str, Any] | None]:
        """(folios, explanation lines, descriptor) of ``folios_info``."""
        layout = self._folios_layout(node, v)
        count = _u32(node.prop("nr_folios") or b"") or 0
        if layout == "array":
            words = struct.unpack(f"<{count}Q", v)
            return [(w & ~(PAGE_SIZE - 1), w & (PAGE_SIZE - 1)) for w in words], [], None
        if layout != "vmalloc":
            return (
                None,
                [
                    f"{len(v)} bytes fit neither layout "
                    "(8 × nr_folios, or a 16-byte vmalloc descriptor)"
                ],
                None,
            )
        first, pages, flags, order = VMALLOC_DESC.unpack(v)
        desc = {"first_chunk": first, "total_pages": pages, "flags": flags, "order": order}
        if self.read is None:
            return None, ["the array itself is in memory: inspect a kho-fs mount to read it"], desc
        data, problem = self._vmalloc_pages(first, pages, order)
        if problem:
            return None, [problem], desc
        if len(data) < 8 * count:
            return None, [f"the vmalloc area has {len(data)} bytes, fewer than {count} u64"], desc
        words = struct.unpack_from(f"<{count}Q", data)
        return [(w & ~(PAGE_SIZE - 1), w & (PAGE_SIZE - 1)) for w in words], [], desc

    def _vmalloc_pages(self, first: int, total: int, order: int) -> tuple[bytes, str | None]:
        assert self.read is not None
        if order > MAX_ORDER or total > (1 << 24):
            return b"", f"implausible descriptor (order {order}, {total} pages)"
        out: list[bytes] = []
        seen: set[int] = set()
        chunk = first
        while chunk and chunk not in seen and len(out) < total:
            seen.add(chunk)
            page = self.read(chunk, PAGE_SIZE)
            for (phys,) in struct.iter_unpack("<Q", page[8:]):
                if not phys or len(out) >= total:
                    break
                out.append(self.read(phys, PAGE_SIZE << order))
            chunk = struct.unpack_from("<Q", page)[0]
        if len(out) != total:
            return b"", f"the vmalloc chunks list {len(out)} of {total} pages"
        return b"".join(out), None

    def _folios_note(self, node: FdtNode, v: bytes) -> Note:
        folios, lines, desc = self._folios(node, v)
        if desc is not None:
            flags = (
                ", ".join(n for bit, n in ((1, "vmalloc"), (2, "huge")) if desc["flags"] & bit)
                or "none"
            )
            meaning = (
                f"vmalloc descriptor (6.18+): first chunk {desc['first_chunk']:#x}, "
                f"{desc['total_pages']} page(s) of order {desc['order']}, "
                f"flags {desc['flags']:#x} ({flags})"
            )
        else:
            meaning = "u64 per folio: physical address | order (6.16/6.17 layout)"
        data: dict[str, Any] = {
            "layout": "vmalloc" if desc is not None else "array",
            "descriptor": desc,
        }
        if folios is not None:
            data["folios"] = [{"address": a, "order": o} for a, o in folios]
            total = sum(PAGE_SIZE << o for _, o in folios)
            lines = [f"{len(folios)} folio(s), {human_size(total)} in all:"] + [
                f"  {a:#x} order {o} ({human_size(PAGE_SIZE << o)})" for a, o in folios
            ]
        return Note(meaning, lines, data)

    def _csum_lines(self, node: FdtNode, stored: int) -> list[str]:
        if self.read is None:
            return []
        folios, _, _ = self._folios(node, node.prop("folios_info") or b"")
        if not folios:
            return []
        total = sum(PAGE_SIZE << min(o, MAX_ORDER) for _, o in folios)
        if total > CSUM_VERIFY_LIMIT:
            return [f"not recomputed: the folios hold {human_size(total)}"]
        from kho_fs.model.test_kho import csum_partial

        csum = 0
        for a, o in folios:
            csum = csum_partial(self.read(a, PAGE_SIZE << o), csum)
        verdict = "matches" if csum == stored else f"does NOT match (memory gives {csum:#010x})"
        return [f"recomputed over {human_size(total)} read from memory: {verdict}"]

    def annotate_luo(self, node: FdtNode, p: FdtProp) -> Note | None:
        name, v = p.name, p.value
        if name == "liveupdate-number":
            value = _u64(v)
            return (
                Note(f"u64 {value}: live-update number (the incoming one + 1)", data=value)
                if value is not None
                else None
            )
        if name == "luo-session-header":
            addr = _u64(v)
            if addr is None:
                return None
            sessions, lines = self._luo_sessions(addr)
            return Note(
                f"u64 {addr:#x}: address of the session array",
                lines,
                {"address": addr, "sessions": sessions},
            )
        if name == "luo-flb-header":
            addr = _u64(v)
            if addr is None:
                return None
            lines = []
            if self.read is not None:
                pgcnt, count = struct.unpack("<QQ", self.read(addr, 16))
                lines = [f"{count} FLB object(s) in {pgcnt} page(s)"]
            return Note(f"u64 {addr:#x}: address of the FLB array", lines, addr)
        return None

    def _luo_sessions(self, addr: int) -> tuple[list[dict[str, Any]] | None, list[str]]:
        if self.read is None:
            return None, []
        (count,) = struct.unpack("<Q", self.read(addr, 8))
        if count > LUO_MAX_SESSIONS:
            return None, [f"implausible session count {count}"]
        raw = self.read(addr + 8, count * LUO_SESSION.size)
        sessions, lines = [], [f"{count} session(s):"]
        for sname, files_addr, nfiles in LUO_SESSION.iter_unpack(raw):
            files = []
            if nfiles <= LUO_MAX_FILES and files_addr:
                for compat, data, token in LUO_FILE.iter_unpack(
                    self.read(files_addr, nfiles * LUO_FILE.size)
                ):
                    files.append({"compatible": _cstr(compat), "data": data, "token": token})
            sessions.append(
                {"name": _cstr(sname), "files_address": files_addr, "files": files, "count": nfiles}
            )
            lines.append(f"  '{_cstr(sname)}': {nfiles} file(s) at {files_addr:#x}")
            lines += [
                f"    token {f['token']:#x}: {f['compatible']} data {f['data']:#x}" for f in files
            ]
        return sessions, lines

    # -- sub-FDTs ------------------------------------------------------------------------------
    def follow_children(self, root: FdtNode, kind: str | None) -> list[dict[str, Any]]:
        if kind != "kho" or self.src.interface == "v4":
            return []
        out = []
        named: set[str] = set()
        for child in root.children:
            value = child.prop("fdt")
            if value is None:
                value = child.prop("preserved-data")
            if value is None:
                continue
            addr = _u64(value)
            size = _u64(child.prop("blob-size") or b"") or 0
            named.add(child.name)
            out.append(self.sub_fdt(child.name, addr, size))
        for name in self.src.sub_fdts:
            if name not in named:
                self.notes.append(f"sub_fdts/{name} is not named by the root FDT")
                out.append(self.sub_fdt(name, None, 0))
        return out

    def sub_fdt(self, name: str, addr: int | None, blob_size: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "address": addr}
        blob = self.src.sub_fdts.get(name)
        if blob is not None:
            entry["from"] = self.src.sub_fdt_files.get(name, f"sub_fdts/{name}")
        elif addr is not None and self.read is not None and addr:
            entry["from"] = f"physical memory at {addr:#x}"
            if blob_size:
                blob = self.read(addr, min(blob_size, MAX_SUB_FDT))
            else:
                header = self.read(addr, FDT_HEADER_SIZE)
                total = struct.unpack_from(">I", header, 4)[0] if is_fdt(header) else 0
                blob = self.read(addr, total) if 0 < total <= MAX_SUB_FDT else header
        else:
            entry["from"] = None
            entry["error"] = "not available (no sub_fdts/ file and no physical memory)"
            return entry
        entry["length"] = len(blob)
        if is_fdt(blob):
            try:
                parsed = parse_fdt(blob)
            except InspectError as exc:
                entry["error"] = str(exc)
                return entry
            entry["fdt"] = self.fdt_report(parsed, self.fdt_kind(parsed.root))
        else:
            entry["raw"] = self.raw_blob(name, blob)
        return entry

    def raw_blob(self, name: str, blob: bytes) -> dict[str, Any]:
        """A sub-blob that is no FDT (blob era): ``kexec-metadata``, a raw ``LUO`` state."""
        out: dict[str, Any] = {"hex": blob[:256].hex()}
        if name == "kexec-metadata" and len(blob) >= 73:
            version, release, count = struct.unpack_from("<I65sI", blob)
            out.update(
                meaning="kexec metadata (blob era)",
                version=version,
                previous_release=_cstr(release),
                kexec_count=count,
            )
            out["lines"] = [
                f"version {version}, previous kernel {_cstr(release)!r}, kexec count {count}"
            ]
            return out
        lead = _cstr(blob[:16])
        if name == "LUO" and re.fullmatch(r"luo-v\d+", lead):
            words = [w for (w,) in struct.iter_unpack("<Q", blob[8 : 8 + ((len(blob) - 8) & ~7)])]
            out.update(
                meaning=f"raw LUO state, ABI {lead!r} (newer than 6.19's luo-v1 FDT)",
                compatible=lead,
                words=words,
            )
            out["lines"] = [
                f"compatible {lead!r}, then u64 " + " ".join(f"{w:#x}" for w in words[:8])
            ]
            return out
        out["meaning"] = "not an FDT"
        out["lines"] = [f"{len(blob)} bytes, not an FDT; first bytes {blob[:32].hex()}"]
        return out

    # -- preserved memory ----------------------------------------------------------------------
    def preserved(self, root: FdtNode, kind: str | None) -> dict[str, Any] | None:
        if kind != "kho":
            return None
        value = root.prop("preserved-memory-map")
        if value is None:
            if not self.v4_mem:
                return {
                    "format": "mem properties",
                    "ranges": [],
                    "total_bytes": 0,
                    "note": "no mem properties: nothing preserved",
                }
            ranges = sorted(self.v4_mem, key=lambda r: r["start"])
            return {
                "format": "mem properties",
                "ranges": ranges,
                "total_bytes": sum(r["size"] for r in ranges),
            }
        first = _u64(value)
        radix = is_radix_root(root)
        out: dict[str, Any] = {"format": "radix tree" if radix else "bitmaps", "map_address": first}
        if first is None:
            out["note"] = f"malformed preserved-memory-map ({len(value)} bytes)"
            return out
        if first == 0:
            out["note"] = "no map: not finalized yet, or nothing preserved"
            return out
        if self.read is None:
            out["note"] = (
                "physical memory is not readable here: "
                "inspect a kho-fs mount (dev/mem) to decode the map"
            )
            return out
        if radix:
            mm = decode_radix_map(self.read, first)
            if mm is None:
                out["note"] = "radix-tree map: this kho-fs cannot walk it"
                return out
            return mem_map_report(mm) | out
        if self.src.bitmap_bytes is None:
            out["note"] = "bitmap size unknown: pass --bitmap-bytes 512 (6.16/6.17) or 4096 (6.18+)"
            return out
        mm = decode_mem_map(self.read, first, self.src.bitmap_bytes)
        return mem_map_report(mm, self.src.bitmap_bytes_from) | out


def mem_map_report(mm: MemMap, bitmap_from: str | None = None) -> dict[str, Any]:
    counts = mm.order_blocks
    if not counts:  # a map decoded without per-bitmap counts (the radix tree)
        for _, size, order in mm.runs:
            counts[order] = counts.get(order, 0) + (size >> (order + PAGE_SHIFT))
    orders = {o: {"blocks": n, "bytes": n << (o + PAGE_SHIFT)} for o, n in sorted(counts.items())}
    return {
        "format": "bitmaps",
        "map_address": mm.first_chunk,
        "bitmap_bytes": mm.bitmap_bytes,
        "bitmap_bytes_from": bitmap_from,
        "chunks": mm.chunks,
        "bitmaps": mm.bitmaps,
        "orders": orders,  # int keys (JSON makes them strings)
        "total_blocks": sum(o["blocks"] for o in orders.values()),
        "total_bytes": sum(o["bytes"] for o in orders.values()),
        "ranges": merge_runs(mm.runs),
        "notes": mm.notes,
    }


def decode(src: HandoverSource) -> dict[str, Any]:
    """The report of one source (JSON-able)."""
    return Decoder(src).report()


def inspect_path(
    path: str | os.PathLike[str], side: str | None = None, bitmap_bytes: int | None = None
) -> dict[str, Any]:
    with load_source(path, side, bitmap_bytes) as src:
        return decode(src)


# -- text rendering ----------------------------------------------------------------------------


def render_text(report: dict[str, Any]) -> str:
    out: list[str] = []
    s = report["source"]
    what = [s["kind"]]
    if s.get("linux_version"):
        what.append(f"Linux {s['linux_version']}")
    if s.get("interface"):
        what.append(
            {"v4": "v4 sysfs interface", "mainline": "mainline debugfs interface"}.get(
                s["interface"], s["interface"]
            )
        )
    if s.get("side"):
        what.append({"out": "outgoing handover", "in": "incoming handover"}[s["side"]])
    out.append(f"// kho-fs inspect {s['path']}: {', '.join(what)}")
    for note in report["notes"]:
        out.append(f"// note: {note}")
    root = report["root"]
    if root.get("truncated"):
        out.append(
            f"// root FDT {s['root_file']}: truncated, {root['have']} of {root['totalsize']} bytes"
        )
    else:
        where = f" at {s['root_address']:#x}" if s.get("root_address") is not None else ""
        out.append(f"// root FDT {s['root_file'] or ''}{where}")
        _render_fdt(root, out)
    for sub in report["sub_fdts"]:
        out.append("")
        addr = f" at {sub['address']:#x}" if sub.get("address") is not None else ""
        origin = f", read from {sub['from']}" if sub.get("from") else ""
        out.append(f"// sub-FDT '{sub['name']}'{addr}{origin}")
        if "error" in sub:
            out.append(f"// {sub['error']}")
        elif "fdt" in sub:
            _render_fdt(sub["fdt"], out)
        elif "raw" in sub:
            out.append(f"// {sub['raw']['meaning']}")
            out += [f"//   {line}" for line in sub["raw"].get("lines", [])]
    pres = report.get("preserved")
    if pres is not None:
        out.append("")
        _render_preserved(pres, out)
    return "\n".join(out) + "\n"


def _render_fdt(fdt: dict[str, Any], out: list[str]) -> None:
    memres = f", {len(fdt['memreserve'])} memory reservation(s)" if fdt["memreserve"] else ""
    out.append(f"// {fdt['totalsize']} bytes, version {fdt['version']}{memres}")
    out.append("/dts-v1/;")
    out.append("")
    for addr, size in fdt["memreserve"]:
        out.append(f"/memreserve/\t0x{addr:016x} 0x{size:016x};")
    _render_node(fdt["tree"], 0, out)


def _render_node(node: dict[str, Any], level: int, out: list[str]) -> None:
    pad = "\t" * level
    out.append(f"{pad}{node['name'] or '/'} {{")
    for p in node["properties"]:
        value = bytes.fromhex(p["hex"])
        text = dtc_value_abridged(value) if "meaning" in p else dtc_value(value)
        line = f"{pad}\t{p['name']}{text};"
        if p.get("meaning"):
            line += f"\t// {p['meaning']}"
        out.append(line)
        details = p.get("details", [])
        shown = details[: TEXT_LIST_LIMIT + 1]
        out += [f"{pad}\t\t// {d}" for d in shown]
        if len(details) > len(shown):
            out.append(f"{pad}\t\t// … {len(details) - len(shown)} more (--json lists them all)")
    for child in node["children"]:
        out.append("")
        _render_node(child, level + 1, out)
    out.append(f"{pad}}};")


def _render_preserved(p: dict[str, Any], out: list[str]) -> None:
    if p["format"] == "mem properties":
        ranges = p["ranges"]
        out.append(
            f"// preserved memory (v4: the mem properties): {len(ranges)} range(s), "
            f"{human_size(p['total_bytes'])}"
        )
        out += [f"//   {_range_text(r['start'], r['size'])}  {r['node']}" for r in ranges]
        if p.get("note"):
            out.append(f"//   {p['note']}")
        return
    head = (
        f"// preserved memory: map at {p['map_address']:#x}"
        if p.get("map_address")
        else "// preserved memory"
    )
    if "note" in p:
        out.append(f"{head}: {p['note']}")
        return
    if p["format"] == "radix tree":
        out.append(f"// preserved memory: radix tree at {p['map_address']:#x}")
    else:
        origin = f" (size from {p['bitmap_bytes_from']})" if p.get("bitmap_bytes_from") else ""
        out.append(
            f"{head}, {p['chunks']} chunk(s), {p['bitmaps']} bitmap(s) "
            f"of {p['bitmap_bytes']} bytes{origin}"
        )
    for note in p.get("notes", []):
        out.append(f"//   note: {note}")
    out.append("//   order  blocks      bytes")
    for order, o in p["orders"].items():
        out.append(f"//   {int(order):5d}  {o['blocks']:6d}  {human_size(o['bytes']):>9s}")
    out.append(
        f"//   total: {p['total_blocks']} block(s), {human_size(p['total_bytes'])}, "
        f"in {len(p['ranges'])} range(s):"
    )
    sizes: dict[int, str] = {}
    parts: dict[tuple[tuple[int, int], ...], str] = {}
    append = out.append
    for r in p["ranges"]:
        start, size = r["start"], r["size"]
        text = sizes.get(size)
        if text is None:
            text = sizes[size] = f"{human_size(size):>10s}"
        orders = r["orders"]
        key = tuple(sorted(orders.items())) if len(orders) > 1 else tuple(orders.items())
        what = parts.get(key)
        if what is None:
            what = parts[key] = ", ".join(f"order {o} × {n}" for o, n in key)
        append(f"//   0x{start:016x}..0x{start + size - 1:016x} {text}  {what}")
