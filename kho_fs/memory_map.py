"""A picture of the machine's physical memory: ``kho-fs map`` and ``machine/map.svg``.

What is drawn comes from the files a mount serves — the memblock debugfs lists, the
scratch files of either KHO interface, ``machine/status`` (reserve_mem regions),
``machine/layout`` (RAM and nodes, KHO FDT pages, the scratch table, kexec segments) —
and from physical memory (the preserved-memory map, decoded as ``kho-fs inspect`` does).
:func:`collect` reads them through a :class:`Reader`: :class:`MountReader` for a mount
(the CLI), :class:`ModelReader` for the model itself (the profile's ``machine/map.svg``),
so both pictures are built by the same code from the same text, and this module never
imports the CLI.

The address axis is piecewise logarithmic: every start or end of anything drawn is a
boundary, and the stretch between two neighbouring boundaries is
``MIN_WIDTH + LOG_WIDTH * log2(1 + bytes / 4 KiB)`` pixels wide — a 4 KiB page gets 4 px,
a 2 MiB block 20 px, a 1 TiB node with nothing in it 58 px. The axis wraps into rows of
:data:`ROW_WIDTH` pixels; each row shows one band (lane) per kind of thing.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kho_fs.inspect import (
    DEBUGFS_KHO,
    LAYOUT_FILE,
    V4_IN,
    V4_OUT,
    DevMem,
    FdtNode,
    InspectError,
    MemRange,
    decode_mem_map,
    decode_radix_map,
    human_size,
    is_fdt,
    is_radix_root,
    parse_fdt,
    parse_layout,
)

if TYPE_CHECKING:
    from kho_fs.model.machine import Machine

PAGE_SIZE = 4096
MIN_WIDTH = 2.0
LOG_WIDTH = 2.0
ROW_WIDTH = 1200.0
LEFT = 96.0  # lane labels
LANE_HEIGHT = 13.0
ROW_GAP = 16.0
LANES = ("node", "memory", "reserved", "scratch", "reserve_mem", "KHO", "preserved", "kexec")
MEMBLOCK_LINE = re.compile(
    r"^\s*(\d+): 0x([0-9a-f]+)\.\.0x([0-9a-f]+)\s+(\S+)\s+(\S+)$"
)  # spec kho-v4.md §3.9
RESERVE_MEM_LINE = re.compile(r"^reserve_mem: (.*?)\s+(0x[0-9a-f]+) \+ (0x[0-9a-f]+)$")
NODE_COLOURS = (
    "#9ecae1",
    "#a1d99b",
    "#fdd0a2",
    "#dadaeb",
    "#c7e9c0",
    "#fcbba1",
    "#d9d9d9",
    "#bcbddc",
)
COLOURS = {
    "memory NONE": "#e0e0e0",
    "memory KHO_SCRATCH": "#fdae6b",
    "memory": "#bdbdbd",
    "reserved NONE": "#9e9e9e",
    "reserved RSV_KERN": "#6a51a3",
    "reserved RSV_NIT": "#e6550d",
    "reserved KHO_SCRATCH": "#fd8d3c",
    "reserved": "#636363",
    "scratch": "#fd8d3c",
    "reserve_mem": "#31a354",
    "KHO root FDT": "#de2d26",
    "KHO sub-FDT": "#fb6a4a",
    "KHO scratch table": "#fcae91",
    "preserved (outgoing)": "#3182bd",
    "preserved (incoming)": "#08519c",
    "kexec": "#e7298a",
}


@dataclass
class Region:
    """One thing drawn: in ``lane``, coloured by ``kind``, ``label`` in its tooltip."""

    lane: str
    kind: str
    start: int
    size: int
    label: str
    short: str  # for the text rendering

    @property
    def end(self) -> int:
        return self.start + self.size

    def title(self) -> str:
        last = self.end - 1 if self.size else self.start
        return f"{self.label}: 0x{self.start:016x}..0x{last:016x} ({human_size(self.size)})"


@dataclass
class MemoryPicture:
    title: str
    regions: list[Region] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- readers -----------------------------------------------------------------------------------


class Reader(Protocol):
    def text(self, rel: str) -> str | None: ...

    def blob(self, rel: str) -> bytes | None: ...

    def read_mem(self, addr: int, size: int) -> bytes: ...

    @property
    def has_mem(self) -> bool: ...


class MountReader:
    """Files of a mounted machine, ``dev/mem`` for physical memory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self._mem: DevMem | None = DevMem(self.root / "dev" / "mem")
        except OSError:
            self._mem = None

    def text(self, rel: str) -> str | None:
        data = self.blob(rel)
        return None if data is None else data.decode("latin-1")

    def blob(self, rel: str) -> bytes | None:
        try:
            with open(self.root / rel, "rb") as f:
                return f.read()
        except OSError:
            return None

    @property
    def has_mem(self) -> bool:
        return self._mem is not None

    def read_mem(self, addr: int, size: int) -> bytes:
        return self._mem.read(addr, size) if self._mem is not None else bytes(size)

    def close(self) -> None:
        if self._mem is not None:
            self._mem.close()
            self._mem = None


class ModelReader:
    """The same files, asked of the model directly (what the profile serves)."""

    def __init__(self, machine: Machine) -> None:
        from kho_fs.model.kho import Kho
        from kho_fs.model.kho_mainline import KhoMainline
        from kho_fs.model.memblock import memblock_debug_show

        self.machine = machine
        k = machine.kernel
        files: dict[str, Callable[[], str | bytes | None]] = {
            "machine/status": machine.status,
            LAYOUT_FILE: lambda: machine_layout(machine),
        }
        if k.panic is None:
            files["proc/version"] = lambda: k.linux_banner + "\n"
        if k.panic is None and getattr(k.release, "memblock_debugfs_arrays", True):
            files["sys/kernel/debug/memblock/memory"] = lambda: memblock_debug_show(
                k.memblock.memory
            )
            files["sys/kernel/debug/memblock/reserved"] = lambda: memblock_debug_show(
                k.memblock.reserved
            )
        kho = k.kho
        if k.panic is None:
            if isinstance(kho, KhoMainline) and kho.debugfs:
                base = f"{DEBUGFS_KHO}/out"
                files[f"{base}/scratch_phys"] = kho.scratch_phys_show
                files[f"{base}/scratch_len"] = kho.scratch_len_show
            elif isinstance(kho, Kho) and kho.sysfs:
                files["sys/kernel/kho/scratch_phys"] = kho.scratch_phys_show
                files["sys/kernel/kho/scratch_len"] = kho.scratch_len_show
                if kho.fdt is not None:
                    files[V4_OUT] = lambda: kho.fdt
                if kho.dt_fw is not None:
                    files[V4_IN] = lambda: kho.dt_fw
        self._files = files

    def blob(self, rel: str) -> bytes | None:
        make = self._files.get(rel)
        if make is None:
            return None
        value = make()
        if value is None:
            return None
        return value.encode("latin-1", errors="replace") if isinstance(value, str) else value

    def text(self, rel: str) -> str | None:
        data = self.blob(rel)
        return None if data is None else data.decode("latin-1")

    @property
    def has_mem(self) -> bool:
        return True

    def read_mem(self, addr: int, size: int) -> bytes:
        return self.machine.mem.read(addr, size)


# -- machine/layout ------------------------------------------------------------------------------


def machine_layout(machine: Machine) -> str:
    """``machine/layout``: what the picture needs that no kernel file shows, one
    ``KIND START SIZE NAME`` line each (hex): RAM by node, the KHO FDT pages (outgoing and
    incoming, root first), the scratch table, the loaded kexec segments."""
    from kho_fs.model.kho import Kho
    from kho_fs.model.kho_mainline import KhoMainline

    lines = [f"ram {r.start:#x} {r.size:#x} node {r.nid}" for r in machine.mem.ram]
    k = machine.kernel
    kho = k.kho
    if isinstance(kho, KhoMainline):
        if kho.out_fdt is not None:
            lines.append(f"fdt-out {kho.out_fdt.phys:#x} {PAGE_SIZE:#x} root")
            lines += [f"fdt-out {b.phys:#x} {b.size:#x} {b.name}" for b in kho.out_sub_fdts]
        if kho.in_fdt is not None:
            lines.append(f"fdt-in {kho.in_fdt.phys:#x} {kho.in_fdt.size:#x} root")
            lines += [f"fdt-in {b.phys:#x} {b.size:#x} {b.name}" for b in kho.in_sub_fdts]
        if kho.scratch_table and kho.scratch:
            lines.append(f"scratch-table {kho.scratch_table:#x} {16 * len(kho.scratch):#x} table")
    elif isinstance(kho, Kho):
        if kho.fdt_in is not None:
            lines.append(f"fdt-in {kho.fdt_in_phys:#x} {kho.fdt_in.totalsize:#x} root")
        if kho.scratch_in_phys and kho.scratch:
            lines.append(f"scratch-table {kho.scratch_in_phys:#x} {16 * len(kho.scratch):#x} table")
    image = k.kexec.kexec_image
    if image is not None:
        lines += [f"kexec {s.mem:#x} {s.memsz:#x} {s.name}" for s in image.segments]
    return "".join(line + "\n" for line in lines)


# -- collecting --------------------------------------------------------------------------------


def _hex_lines(text: str | None) -> list[int]:
    out = []
    for line in (text or "").split():
        try:
            out.append(int(line, 16))
        except ValueError:
            continue
    return out


def _memblock(reader: Reader, which: str) -> list[Region]:
    text = reader.text(f"sys/kernel/debug/memblock/{which}") or ""
    out = []
    for line in text.splitlines():
        m = MEMBLOCK_LINE.match(line)
        if m is None:
            continue
        index, base, last, node, flag = m.groups()
        start, end = int(base, 16), int(last, 16) + 1
        kind = f"{which} {flag}" if f"{which} {flag}" in COLOURS else which
        where = f"node {node}" if node != "x" else "no node"
        out.append(
            Region(
                which, kind, start, end - start, f"memblock.{which}[{index}] {flag}, {where}", flag
            )
        )
    return out


def _preserved(
    reader: Reader, blob: bytes | None, bitmap_bytes: int | None, side: str, notes: list[str]
) -> list[Region]:
    """The preserved ranges a root FDT names: v4 ``mem`` properties or the mainline map."""
    kind = f"preserved ({'outgoing' if side == 'out' else 'incoming'})"
    word = "out" if side == "out" else "in"
    if blob is None or not is_fdt(blob):
        return []
    try:
        root = parse_fdt(blob).root
    except InspectError as exc:
        notes.append(f"{side} root FDT: {exc}")
        return []
    ranges: list[MemRange] = []
    value = root.prop("preserved-memory-map")
    if value is None:
        ranges = _mem_properties(root)
    elif len(value) == 8:
        first = struct.unpack("<Q", value)[0]
        if not first:
            notes.append(f"preserved ({word}): the map is not serialized yet (finalize)")
        elif is_radix_root(root) and reader.has_mem:
            radix = decode_radix_map(reader.read_mem, first)
            ranges = radix.ranges() if radix is not None else []
        elif not reader.has_mem or bitmap_bytes is None:
            notes.append(f"preserved ({word}): physical memory or bitmap size unknown")
        else:
            mm = decode_mem_map(reader.read_mem, first, bitmap_bytes)
            notes += [f"preserved ({word}): {n}" for n in mm.notes]
            ranges = mm.ranges()
    out = []
    for r in ranges:
        orders = ", ".join(f"order {o} × {n}" for o, n in sorted(r.orders.items()))
        what = orders or ", ".join(r.labels)
        out.append(Region("preserved", kind, r.start, r.size, f"preserved ({word}), {what}", word))
    return out


def _mem_properties(root: FdtNode) -> list[MemRange]:
    ranges = []
    for node in root.walk():
        value = node.prop("mem")
        if value and len(value) % 16 == 0:
            for i in range(0, len(value), 16):
                start, size = struct.unpack_from("<QQ", value, i)
                if size:
                    ranges.append(MemRange(start, size, {}, [f"mem of {node.path}"]))
    return sorted(ranges, key=lambda r: r.start)


def collect(reader: Reader) -> MemoryPicture:
    """Everything drawn, from the files ``reader`` serves."""
    from kho_fs.inspect import bitmap_bytes_for

    notes: list[str] = []
    layout = parse_layout(reader.text(LAYOUT_FILE) or "")
    version_text = (reader.text("proc/version") or "").split()
    uts = version_text[2] if len(version_text) > 2 else None
    bitmap_bytes = bitmap_bytes_for(uts) if uts else None
    regions: list[Region] = []
    ram = [(a, s, n) for k, a, s, n in layout if k == "ram" and s]
    nodes = sorted({n for _, _, n in ram})
    for start, size, name in ram:
        colour_index = nodes.index(name)
        regions.append(Region("node", f"{name}#{colour_index}", start, size, f"RAM, {name}", name))
    regions += _memblock(reader, "memory")
    regions += _memblock(reader, "reserved")
    if (reader.text(f"{DEBUGFS_KHO}/out/scratch_phys")) is not None:
        base, names = f"{DEBUGFS_KHO}/out", ["lowmem", "global"]
    else:
        base, names = "sys/kernel/kho", ["global"]
    phys = _hex_lines(reader.text(f"{base}/scratch_phys"))
    lens = _hex_lines(reader.text(f"{base}/scratch_len"))
    for i, (a, s) in enumerate(zip(phys, lens, strict=False)):
        label = names[i] if i < len(names) else f"node {i - len(names)}"
        if s:
            regions.append(Region("scratch", "scratch", a, s, f"KHO scratch, {label}", label))
    for line in (reader.text("machine/status") or "").splitlines():
        m = RESERVE_MEM_LINE.match(line)
        if m is not None and int(m.group(3), 16):
            name = m.group(1)
            regions.append(
                Region(
                    "reserve_mem",
                    "reserve_mem",
                    int(m.group(2), 16),
                    int(m.group(3), 16),
                    f"reserve_mem region '{name}'",
                    name,
                )
            )
    for kind, start, size, name in layout:
        if kind in ("fdt-out", "fdt-in"):
            side = "outgoing" if kind == "fdt-out" else "incoming"
            what = "KHO root FDT" if name == "root" else "KHO sub-FDT"
            label = f"{what} ({side})" + ("" if name == "root" else f" '{name}'")
            short = f"{'root' if name == 'root' else name} {kind[4:]}"
            regions.append(Region("KHO", what, start, size, label, short))
        elif kind == "scratch-table":
            regions.append(
                Region("KHO", "KHO scratch table", start, size, "KHO scratch table", "table")
            )
        elif kind == "kexec":
            regions.append(Region("kexec", "kexec", start, size, f"kexec segment {name}", name))
    out_root = reader.blob(V4_OUT)
    in_root = reader.blob(V4_IN)
    for kind, start, _size, name in layout:
        if kind in ("fdt-out", "fdt-in") and name == "root" and reader.has_mem:
            header = reader.read_mem(start, 8)
            total = struct.unpack_from(">I", header, 4)[0] if is_fdt(header) else 0
            blob = reader.read_mem(start, total) if 0 < total <= PAGE_SIZE << 10 else None
            if kind == "fdt-out":
                out_root = blob
            else:
                in_root = blob
    regions += _preserved(reader, out_root, bitmap_bytes, "out", notes)
    regions += _preserved(reader, in_root, bitmap_bytes, "in", notes)
    total_ram = sum(s for _, s, _ in ram)
    title = f"kho-fs memory map: {human_size(total_ram)} RAM in {len(nodes)} NUMA node(s)"
    if uts:
        title += f", Linux {uts}"
    return MemoryPicture(title, [r for r in regions if r.size > 0], notes)


def picture_from_machine(machine: Machine) -> MemoryPicture:
    return collect(ModelReader(machine))


def picture_from_mount(root: str | Path) -> MemoryPicture:
    reader = MountReader(root)
    try:
        return collect(reader)
    finally:
        reader.close()


# -- the axis ------------------------------------------------------------------------------------


def segment_width(size: int) -> float:
    return MIN_WIDTH + LOG_WIDTH * math.log2(1 + size / PAGE_SIZE)


class Axis:
    """Boundary address -> position along the (unwrapped) axis."""

    def __init__(self, regions: list[Region]) -> None:
        bounds = sorted({r.start for r in regions} | {r.end for r in regions})
        self.bounds = bounds
        self.pos: dict[int, float] = {}
        x = 0.0
        for i, b in enumerate(bounds):
            self.pos[b] = x
            if i + 1 < len(bounds):
                x += segment_width(bounds[i + 1] - b)
        self.length = x


# -- SVG -------------------------------------------------------------------------------------------


def _xml(text: str) -> str:
    """Text for XML 1.0: escaped, non-ASCII as character references, control bytes as
    ``\\xNN`` (labels are latin-1 text standing for arbitrary bytes)."""
    out = []
    for ch in text:
        c = ord(ch)
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == '"':
            out.append("&quot;")
        elif c < 0x20 or c == 0x7F:
            out.append(f"\\x{c:02x}")
        elif c > 0x7E:
            out.append(f"&#x{c:x};")
        else:
            out.append(ch)
    return "".join(out)


def _kind_class(kinds: list[str], kind: str) -> str:
    return f"k{kinds.index(kind)}"


def _colour(kind: str) -> str:
    if "#" in kind and kind.split("#")[-1].isdigit():  # a node: "node N#i"
        return NODE_COLOURS[int(kind.split("#")[-1]) % len(NODE_COLOURS)]
    return COLOURS.get(kind, "#cccccc")


def render_svg(picture: MemoryPicture) -> str:
    """The picture as a standalone SVG document (ASCII)."""
    regions = picture.regions
    axis = Axis(regions)
    if 0 < axis.length < ROW_WIDTH:  # a short axis is stretched to fill one row
        stretch = ROW_WIDTH / axis.length
        axis.pos = {b: x * stretch for b, x in axis.pos.items()}
        axis.length = ROW_WIDTH
    rows = max(1, math.ceil(axis.length / ROW_WIDTH - 1e-9)) if regions else 1
    row_height = LANE_HEIGHT * len(LANES) + ROW_GAP
    top = 40.0
    kinds = sorted({r.kind for r in regions}, key=lambda k: (LANES.index(_lane_of(regions, k)), k))
    legend_rows = math.ceil(len(kinds) / 4) if kinds else 0
    width = LEFT + ROW_WIDTH + 20
    height = top + rows * row_height + 24 + legend_rows * 16 + 16 * len(picture.notes) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="10">',
        f"<title>{_xml(picture.title)}</title>",
        "<style>g.region rect{stroke:#333;stroke-width:0.4}g.region:hover rect{stroke:#000;"
        "stroke-width:1.2}text.lane{fill:#444}text.addr{fill:#666;font-size:9px}"
        + "".join(f".{_kind_class(kinds, k)}{{fill:{_colour(k)}}}" for k in kinds)
        + "</style>",
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#fff"/>',
        f'<text x="8" y="16" font-size="13">{_xml(picture.title)}</text>',
        '<text x="8" y="30" class="addr">log-like scale: between neighbouring boundaries, '
        "2 + 2 &#215; log2(1 + bytes / 4 KiB) units; hover for addresses and sizes</text>",
    ]
    for row in range(rows):
        y0 = top + row * row_height
        for i, lane in enumerate(LANES):
            y = y0 + i * LANE_HEIGHT
            out.append(f'<text class="lane" x="4" y="{y + LANE_HEIGHT - 3:.1f}">{lane}</text>')
    # address labels above each row: where RAM ranges start and end, where rows start
    marks = sorted(
        {r.start for r in regions if r.lane == "node"}
        | {r.end for r in regions if r.lane == "node"}
    )
    for row in range(rows):
        first = next((b for b in axis.bounds if axis.pos[b] >= row * ROW_WIDTH - 1e-6), None)
        row_marks = [b for b in marks if row * ROW_WIDTH <= axis.pos[b] < (row + 1) * ROW_WIDTH]
        if first is not None and first not in row_marks:
            row_marks.insert(0, first)
        right = -1e9
        for b in row_marks:
            x = LEFT + axis.pos[b] - row * ROW_WIDTH
            label = f"0x{b:x}"
            if x < right + 4:
                continue
            out.append(
                f'<text class="addr" x="{x:.1f}" y="{top + row * row_height - 2:.1f}">'
                f"{label}</text>"
            )
            right = x + 5.5 * len(label)
    for r in regions:
        x0, x1 = axis.pos[r.start], axis.pos[r.end]
        lane_y = LANES.index(r.lane) * LANE_HEIGHT + 1
        rects = []
        x = x0
        while x < x1 - 1e-9:
            row = int(x // ROW_WIDTH)
            stop = min(x1, (row + 1) * ROW_WIDTH)
            rx = LEFT + x - row * ROW_WIDTH
            ry = top + row * row_height + lane_y
            rects.append(
                f'<rect x="{rx:.1f}" y="{ry:.1f}" width="{stop - x:.1f}" '
                f'height="{LANE_HEIGHT - 2:.0f}"/>'
            )
            x = stop
        last = r.end - 1 if r.size else r.start
        out.append(
            f'<g class="region {_kind_class(kinds, r.kind)}" data-lane="{_xml(r.lane)}" '
            f'data-start="0x{r.start:x}" data-end="0x{last:x}"><title>{_xml(r.title())}</title>'
            + "".join(rects)
            + "</g>"
        )
    y = top + rows * row_height + 8
    for i, kind in enumerate(kinds):
        col, line = i % 4, i // 4
        lx, ly = 8 + col * 300, y + line * 16
        total = sum(r.size for r in regions if r.kind == kind)
        name = _legend_name(kind)
        out.append(
            f'<rect class="{_kind_class(kinds, kind)}" x="{lx}" y="{ly:.0f}" width="14" '
            f'height="10" stroke="#333" stroke-width="0.4"/>'
            f'<text x="{lx + 18}" y="{ly + 9:.0f}">{_xml(name)} ({human_size(total)})</text>'
        )
    y += legend_rows * 16 + 6
    for note in picture.notes:
        out.append(f'<text class="addr" x="8" y="{y + 8:.0f}">note: {_xml(note)}</text>')
        y += 16
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _lane_of(regions: list[Region], kind: str) -> str:
    return next(r.lane for r in regions if r.kind == kind)


def _legend_name(kind: str) -> str:
    if "#" in kind and kind.split("#")[-1].isdigit():
        return kind.rsplit("#", 1)[0] + " RAM"
    if kind.startswith(("memory", "reserved")):
        return "memblock " + kind
    return kind


# -- text ----------------------------------------------------------------------------------


def render_text(picture: MemoryPicture) -> str:
    """One line per stretch of addresses over which nothing changes: what covers it in
    each lane (``-`` for nothing)."""
    regions = picture.regions
    axis = Axis(regions)
    bounds = axis.bounds
    # sweep: regions starting at each boundary, active set per lane
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for i, r in enumerate(regions):
        starts.setdefault(r.start, []).append(i)
        ends.setdefault(r.end, []).append(i)
    active: set[int] = set()
    rows: list[tuple[int, int, tuple[str, ...], tuple[int, ...]]] = []
    for a, b in itertools.pairwise(bounds):
        active -= set(ends.get(a, ()))
        active |= set(starts.get(a, ()))
        key = tuple(sorted(active))
        cells = tuple(
            "+".join(regions[i].short for i in key if regions[i].lane == lane) or "-"
            for lane in LANES
        )
        if rows and rows[-1][3] == key and rows[-1][1] == a:
            rows[-1] = (rows[-1][0], b, cells, key)
        else:
            rows.append((a, b, cells, key))
    widths = [max([len(lane), *(len(r[2][i]) for r in rows)]) for i, lane in enumerate(LANES)]
    widths = [min(w, 24) for w in widths]
    head = f"{'start':18s} {'end (exclusive)':18s} {'size':>10s}  " + "  ".join(
        f"{lane:{w}s}" for lane, w in zip(LANES, widths, strict=True)
    )
    lines = [picture.title, head.rstrip()]
    for a, b, cells, key in rows:
        if not key:  # a hole nothing covers
            continue
        text = "  ".join(_cut(c, w) for c, w in zip(cells, widths, strict=True))
        lines.append(f"0x{a:016x} 0x{b:016x} {human_size(b - a):>10s}  {text}".rstrip())
    totals: dict[str, int] = {}
    for r in regions:
        totals[r.kind] = totals.get(r.kind, 0) + r.size
    lines.append(
        "totals: "
        + "; ".join(f"{_legend_name(k)} {human_size(v)}" for k, v in sorted(totals.items()))
    )
    lines += [f"note: {n}" for n in picture.notes]
    return "\n".join(lines) + "\n"


def _cut(text: str, width: int) -> str:
    text = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)
    return f"{text[: width - 1]}…" if len(text) > width else f"{text:{width}s}"
