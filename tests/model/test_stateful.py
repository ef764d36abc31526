"""A stateful property test of the whole machine model (hypothesis ``RuleBasedStateMachine``).

Every test case draws the release the machine boots (``v4``, ``6.12``, ``6.16``, ``6.17``,
``6.18``, ``6.19``, ``7.0``), then runs random sequences of what user space and the
operator can do to it against a small *reference model* kept in this file, written from the
specs (``kho-v4.md``, ``kho-mainline.md``) and the independent oracles of
``tests/oracles/mainline.py`` rather than from the model's code.

v4: activate, abort, ``dt_max`` writes, writes into ``reserve_mem`` regions, ``kexec -l -s``,
``kexec -l``, unload, ``kexec -e``, cold reboot, next-kernel command lines that keep, resize,
drop, add or re-align regions, turn KHO off or change ``kho_scratch=``. The reference knows
which regions must survive a kexec and with which bytes and start addresses, what
``active``/``dt_max``/``kexec_loaded`` read, which errno each step must give, where each
kexec segment goes (spec 9.1), and which dmesg lines a boot must print.

Mainline (6.16 – 7.0) and 6.12: ``out/finalize`` writes (every era's errnos, abort where it
exists), preservations of folios and page ranges by a test driver that owns a sub-FDT
(:class:`StatefulKhoDriver`) and by direct KHO calls, region and preserved-memory writes, the
same loads, ``kexec -e`` and reboots. Each successful finalize is checked byte for byte (root
FDT, ``memblock`` sub-FDT) and its preserved-memory map, decoded by the oracle, must list
exactly what was preserved; each handover is predicted from the bytes in RAM at ``kexec -e``
(header, compatible, map, sub-FDTs: spec §4.3), so stale and never-finalized handovers are
predicted as well; after it every preserved block must be reserved with RSRV_NOINIT and
every preserved byte (regions, the driver's folios and ranges) must still be there; the
debugfs tree must list exactly the files of spec §2.1 and every FDT in it must pass
libfdt's full check.

After every step the invariants of the whole machine are checked: preserved bytes (compared
exactly with the reference's copy, which is stronger and cheaper than a sha256) and
addresses, scratch areas disjoint from each other and from memory that lived outside
scratch, memblock lists sorted/disjoint/merged (spec 8.2), every emitted FDT passing
libfdt's full check, dmesg only growing within a boot, and the reference's states.

One hazard is part of the reference, not an invariant violation: a region allocated on a
handover boot lives inside scratch (spec 6.5 "Hazard", mainline §7.2), and once handed over
again, the next ``kexec -s`` may place segments on top of it. The reference therefore
applies the executed image's segments to its copy of RAM, exactly as ``kexec -e`` copies
them; regions allocated outside scratch must never be touched by a KHO image.

``KHO_FS_STATEFUL_EXAMPLES`` (default 700, split across the releases) and
``KHO_FS_STATEFUL_STEPS`` (default 20) size the run; the long campaign (``scripts/stress``)
raises the first to 20,000 or more. ``KHO_FS_STATEFUL_RELEASES=6.16,6.19`` narrows the
releases drawn; ``KHO_FS_STATEFUL_SHRINK=0`` reports a failing sequence without shrinking.
"""

from __future__ import annotations

import errno
import os
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import pairwise

import libfdt
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from kho_model_helpers import FOUND_LINE, PLAIN_KERNEL, bzimage
from oracles.mainline import BITMAP_BYTES as ML_BITMAP_BYTES
from oracles.mainline import (
    DebugfsEntry,
    apply_kho_scratch,
    blocks_to_ranges,
    debugfs_attr_value,
    debugfs_expected,
    decode_preserved_memory_map,
    decode_root_fdt,
    finalize_write_oracle,
    linux_version_prefix,
    memblock_sub_fdt,
    parse_kho_scratch_oracle,
    root_fdt,
    root_fdt_6_19,
    scratch_sizes,
    split_range_to_blocks,
)

from kho_fs.model import fdt as fdt_module
from kho_fs.model.drivers import KhoDriver
from kho_fs.model.errors import KernelError
from kho_fs.model.kernel import Kernel
from kho_fs.model.kexec import (
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
    Kimage,
)
from kho_fs.model.kho_mainline import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoMainline
from kho_fs.model.machine import Machine
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE, notifier_from_errno
from kho_fs.tree.kho_debugfs import DebugfsAttribute, DebugfsBlobFile, kho_debugfs_entries
from kho_fs.tree.nodes import DebugfsSeqFile, Directory

EXAMPLES = int(os.environ.get("KHO_FS_STATEFUL_EXAMPLES", "700"))
STEPS = int(os.environ.get("KHO_FS_STATEFUL_STEPS", "20"))

PAGE = 4096
SZ_1M = 1 << 20
SZ_2M = 2 << 20
SZ_16M = 16 << 20
SZ_64K = 64 << 10
INT_MAX = (1 << 31) - 1
U64_MAX = (1 << 64) - 1
DT_MAX_DEFAULT = 10 << 20
MEMBLOCK_RSRV_KERN = 0x20
MEMBLOCK_KHO_SCRATCH = 0x40
FILL_LINE = "KHO: ===> kho_fill_kimage: kexec_add_buffer"
PANIC_LINE = "kho-fs: early allocation failed in scratch-only mode"
PAGE_TABLES = 4 * SZ_1M  # BootInfo.page_tables: the first early allocation after RAM is added
REVIVAL_PREFIXES = ("Revived memory reservation", "KHO reserved_mem", "Node '/reserve_mem")
EARLY_PREFIXES = ("Malformed early option", "KHO: scratch")


def round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def round_down(x: int, a: int) -> int:
    return x // a * a


def overlaps(a: int, asz: int, b: int, bsz: int) -> bool:
    return a < b + bsz and b < a + asz


# -- command lines ---------------------------------------------------------------------------

KHO_TRUE = ("on", "1", "yes")
KHO_VALUES = ("on", "on", "on", "on", "1", "yes", "off", "maybe", None)
SCRATCH_VALUES = (None, None, None, "150%", "300%", "0%", "8M,8M", "64M,32M", "2M,2M", "512M")
NAMES = ("a", "oops", "trace", "r3", "r4", "r5", "r6", "r7", "fifteen_chars_x", "sixteen_chars_xx")
SIZES = (0x1000, 0x1234, 0x10000, 0x30000, 0x40000)
ALIGNS = (0, 64, PAGE, SZ_64K, SZ_2M)  # 0: an empty align field (floored to 64)


@dataclass(frozen=True)
class RegionOpt:
    """One ``reserve_mem=size:align:name`` option (possibly invalid: size 0, 16-char name)."""

    size: int
    align: int
    name: str

    def render(self) -> str:
        if self.size and self.size % SZ_1M == 0:
            size = f"{self.size >> 20}M"
        elif self.size and self.size % 1024 == 0:
            size = f"{self.size >> 10}K"
        else:
            size = hex(self.size)
        return f"reserve_mem={size}:{self.align or ''}:{self.name}"

    @property
    def valid(self) -> bool:
        """Spec 2.4 steps 2-8 for the values this test generates."""
        return self.size > 0 and 0 < len(self.name) < 16

    @property
    def eff_align(self) -> int:
        return max(self.align, 64)


@dataclass(frozen=True)
class Config:
    """A kernel command line in structured form, so the reference knows what it says."""

    kho: str | None
    scratch: str | None
    regions: tuple[RegionOpt, ...]

    def render(self) -> str:
        words = ["console=ttyS0", *(r.render() for r in self.regions)]
        if self.kho is not None:
            words.append(f"kho={self.kho}")
        if self.scratch is not None:
            words.append(f"kho_scratch={self.scratch}")
        return " ".join(words)

    @property
    def kho_enabled(self) -> bool:
        return self.kho in KHO_TRUE  # "maybe" is malformed and keeps the default (off)

    def early_lines(self) -> list[str]:
        """The dmesg lines early parameter parsing must print (spec 2.2, 2.3)."""
        out = []
        if self.kho == "maybe":
            out.append("Malformed early option 'kho'")
        if self.scratch == "512M":
            out.append("Malformed early option 'kho_scratch'")
        elif self.scratch is not None and self.scratch.endswith("%"):
            out.append(f"KHO: scratch scale is {self.scratch[:-1]} percent")
        elif self.scratch is not None:
            g, p = (parse_size(v) for v in self.scratch.split(","))
            out.append(f"KHO: scratch areas: global: {g >> 20}MB pernode: {p >> 20}MB")
        return out

    def scale(self) -> int | None:
        """The scratch scale in percent, or None for explicit sizes."""
        if self.scratch is None or self.scratch == "512M":
            return 200
        if self.scratch.endswith("%"):
            return int(self.scratch[:-1])
        return None


def parse_size(text: str) -> int:
    return int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]]


region_opts = st.builds(
    RegionOpt,
    st.sampled_from((*SIZES, 0)),
    st.sampled_from(ALIGNS),
    st.sampled_from(NAMES),
)
configs = st.builds(
    Config,
    st.sampled_from(KHO_VALUES),
    st.sampled_from(SCRATCH_VALUES),
    st.lists(region_opts, max_size=10).map(tuple),
)

# -- sysfs buffers ---------------------------------------------------------------------------

ACTIVE_BUFS: list[tuple[bytes, bool | None]] = [
    *((b, True) for b in (b"1", b"1\n", b"y", b"Yes", b"t", b"on", b"ON", b"1\0junk")),
    *((b, False) for b in (b"0", b"0\n", b"n", b"off", b"F")),
    *((b, None) for b in (b"2", b"", b"\n", b" 1", b"o", b"enable", b"disable", b"e", b"\x001")),
]
DT_MAX_BAD = (
    b"0x",
    b"08",
    b"-1",
    b" 1",
    b"4K",
    b"",
    b"1\n\n",
    b"0x1g",
    b"++1",
    b"1 ",
    b"18446744073709551616",
    b"\x00256",
)
DT_MAX_VALUES = (0, 47, 48, 102, 103, 110, 111, 4096, DT_MAX_DEFAULT, INT_MAX, INT_MAX + 1, U64_MAX)
DT_MAX_FORMATS = ("dec", "hex", "HEX", "oct", "plus")


def render_dt_max(value: int, fmt: str, newline: bool, nul_tail: bool) -> bytes:
    text = {
        "dec": str(value),
        "hex": f"0x{value:x}",
        "HEX": f"0X{value:X}",
        "oct": f"0{value:o}",
        "plus": f"+{value}",
    }[fmt]
    raw = (text + ("\n" if newline else "")).encode()
    return raw + b"\0garbage" if nul_tail else raw


def fdt_total_size(names: Iterable[str]) -> int:
    """Spec 5.5: 111 without regions, else 163 + sum(68 + 4 * ceil((len + 1) / 4))."""
    names = list(names)
    if not names:
        return 111
    return 163 + sum(68 + 4 * ((len(n) + 1 + 3) // 4) for n in names)


def serialize_error(dt_max: int, total: int, regions: bool) -> int:
    """Spec 4.3: the error activation logs for this ``dt_max``, 0 on success."""
    if dt_max > INT_MAX:
        return -12
    if dt_max < 48:
        return -22
    if dt_max < 103:
        return -3
    if regions and dt_max < total - 8:
        return -1
    if dt_max < total:
        return -3
    return 0


# -- kexec images and the reference placement (spec 9.1) --------------------------------------


@dataclass(frozen=True)
class KernelFile:
    label: str
    data: bytes
    memsz: int  # what the kernel segment claims (init_size rule, docs/decisions.md)

    def __repr__(self) -> str:
        return f"KernelFile({self.label!r})"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:  # hypothesis' failure report
        p.text(repr(self))  # type: ignore[attr-defined]


KERNELS = (
    KernelFile("plain", PLAIN_KERNEL, round_up(len(PLAIN_KERNEL), PAGE)),
    KernelFile("bz2M", bzimage(SZ_2M), SZ_2M),
    KernelFile("bz24M", bzimage(24 * SZ_1M), 24 * SZ_1M),
)


class Blob(bytes):
    """Bytes that a failure report shows by their size, not their content."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:
        p.text(repr(self))  # type: ignore[attr-defined]


INITRDS = (None, None, Blob(b""), Blob(b"initrd!" * 700), Blob(b"\x5a" * (3 * SZ_1M)))


@dataclass(frozen=True)
class SegReq:
    name: str
    memsz: int
    align: int
    buf_min: int


def segment_requests(
    fdt: bytes | None, n_areas: int, kernel: KernelFile, initrd: bytes | None, floor: int
) -> list[SegReq]:
    """The segments of one load in the order they are placed (spec 9.1 steps 2-3)."""
    reqs = []
    if fdt is not None:
        reqs += [
            SegReq("kho-fdt", len(fdt), SZ_64K, 0),
            SegReq("kho-scratch", 16 * n_areas, SZ_64K, 0),
        ]
    reqs += [
        SegReq("purgatory", 16 << 10, PAGE, floor),
        SegReq("boot_params", 8 << 10, PAGE, floor),
        SegReq("kernel", kernel.memsz, SZ_2M, max(floor, SZ_1M)),
    ]
    if initrd:
        reqs.append(SegReq("initrd", len(initrd), PAGE, floor))
    return reqs


def system_ram(k: Kernel) -> list[tuple[int, int]]:
    """System RAM resources with inclusive ends: touching ranges are one (e820 has no
    NUMA nodes), so a segment may cross a node boundary, never a hole."""
    out: list[tuple[int, int]] = []
    for r in k.mem.ram:
        if out and out[-1][1] + 1 == r.start:
            out[-1] = (out[-1][0], r.end - 1)
        else:
            out.append((r.start, r.end - 1))
    return out


def place(
    reqs: list[SegReq], ranges: list[tuple[int, int]], top_down: bool
) -> tuple[list[int], int | None]:
    """Place segments as spec 9.1 step 4 describes: ranges in order (inclusive ends),
    top-down or bottom-up, stepping past already placed segments.

    Returns the addresses placed and the index of the first segment that fits nowhere.
    Stepping one page at a time past a clash is shortened to jumping past the clashing
    segment: with power-of-two alignments every skipped candidate overlaps it.
    """
    placed: list[tuple[int, int]] = []
    for i, req in enumerate(reqs):
        memsz, align = round_up(req.memsz, PAGE), max(req.align, PAGE)
        where = None
        for start, end in ranges:
            if end - start + 1 < memsz or end < req.buf_min:
                continue
            where = (_top_down if top_down else _bottom_up)(
                start, end, memsz, align, req.buf_min, placed
            )
            if where is not None:
                break
        if where is None:
            return [p for p, _ in placed], i
        placed.append((where, memsz))
    return [p for p, _ in placed], None


def _clash(placed: list[tuple[int, int]], start: int, size: int) -> tuple[int, int] | None:
    return next((p for p in placed if overlaps(p[0], p[1], start, size)), None)


def _top_down(
    start: int, end: int, memsz: int, align: int, buf_min: int, placed: list[tuple[int, int]]
) -> int | None:
    t = end - memsz + 1
    while True:
        t = round_down(t, align)
        if t < start or t < buf_min:
            return None
        clash = _clash(placed, t, memsz)
        if clash is None:
            return t
        t = min(t - PAGE, clash[0] - memsz)


def _bottom_up(
    start: int, end: int, memsz: int, align: int, buf_min: int, placed: list[tuple[int, int]]
) -> int | None:
    t = max(start, buf_min)
    while True:
        t = round_up(t, align)
        if t + memsz - 1 > end:
            return None
        clash = _clash(placed, t, memsz)
        if clash is None:
            return t
        t = max(t + PAGE, clash[0] + clash[1])


# -- FDT reading (pylibfdt directly, not the model's adapter) ------------------------------------


def fdt_check_full(blob: bytes) -> int:
    return int(libfdt.fdt_check_full(bytearray(blob), len(blob)))


def fdt_regions(blob: bytes) -> list[tuple[str, int, int]]:
    """(name, start, size) of each ``/reserve_mem`` child, in FDT order."""
    fdt = libfdt.Fdt(bytearray(blob))
    assert fdt.getprop(0, "compatible").as_str() == "kho-v1"
    node = fdt.path_offset("/reserve_mem", quiet=(libfdt.NOTFOUND,))
    if node < 0:
        return []
    assert fdt.getprop(node, "compatible").as_str() == "reserve_mem-v1"
    out = []
    child = fdt.first_subnode(node, quiet=(libfdt.NOTFOUND,))
    while child >= 0:
        assert fdt.getprop(child, "compatible").as_str() == "reserve_mem_map-v1"
        mem = bytes(fdt.getprop(child, "mem"))
        assert len(mem) == 16
        out.append(
            (
                fdt.get_name(child),
                int.from_bytes(mem[:8], "little"),
                int.from_bytes(mem[8:], "little"),
            )
        )
        child = fdt.next_subnode(child, quiet=(libfdt.NOTFOUND,))
    return out


# -- the reference model ---------------------------------------------------------------------------


@dataclass
class RefRegion:
    """A ``reserve_mem`` region as the reference expects it, with a copy of its bytes.

    ``in_scratch`` records where it was born: regions allocated on a handover boot come out
    of scratch (spec 6.4/6.5); all others are allocated before scratch exists and never
    overlap it.
    """

    name: str
    start: int
    size: int
    in_scratch: bool
    shadow: bytearray

    def patch(self, addr: int, data: bytes) -> None:
        """Apply a write of ``data`` at physical ``addr`` to the part inside this region."""
        lo, hi = max(addr, self.start), min(addr + len(data), self.start + self.size)
        if lo < hi:
            self.shadow[lo - self.start : hi - self.start] = data[lo - addr : hi - addr]


@dataclass
class RefImage:
    """A loaded kexec image: its command line and, for a KHO load, the snapshot it carries."""

    cfg: Config
    fdt: bytes | None
    scratch: list[tuple[int, int]]
    kimage: Kimage  # the model's, for the segment bytes ``kexec -e`` writes

    @property
    def kho(self) -> bool:
        return self.fdt is not None


@dataclass
class Ref:
    cfg: Config
    cold_cfg: Config
    generation: int = 0
    sysfs: bool = False
    active: bool = False
    dt_max: int = DT_MAX_DEFAULT
    scratch: list[tuple[int, int]] = field(default_factory=list)
    table: list[RefRegion] = field(default_factory=list)
    loaded: RefImage | None = None
    dt_fw: bytes | None = None
    # ranges the handover boot must keep reserved: (start, size, lived in scratch)
    preserved: list[tuple[int, int, bool]] = field(default_factory=list)


def free_ranges(
    areas: list[tuple[int, int]], reserved: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Parts of ``areas`` not covered by ``reserved``, as (start, end) pairs."""
    out = []
    res = sorted(reserved)
    for a, sz in areas:
        pos, end = max(a, PAGE), a + sz  # memblock never hands out page 0
        for r, rsz in res:
            if r + rsz <= pos or r >= end:
                continue
            if r > pos:
                out.append((pos, r))
            pos = max(pos, r + rsz)
        if pos < end:
            out.append((pos, end))
    return out


def fits(free: list[tuple[int, int]], size: int, align: int) -> bool:
    """Whether a top-down memblock search could place ``size`` bytes (spec 8.2)."""
    return any(e >= size and round_down(e - size, align) >= s for s, e in free)


def covered(regions: Iterable[tuple[int, int]], base: int, size: int) -> bool:
    """Whether the union of sorted ``regions`` covers ``[base, base + size)`` without gaps."""
    pos = base
    for r, rsz in sorted(regions):
        if r > pos:
            break
        pos = max(pos, r + rsz)
        if pos >= base + size:
            return True
    return pos >= base + size


# == mainline releases (shared/spec/kho-mainline.md) ========================================
#
# The same machine booted with a mainline kernel (6.16 - 7.0) or with 6.12 (no KHO). The
# reference below is written from kho-mainline.md and the independent oracles of
# tests/oracles/mainline.py; what a handover carries is predicted from the bytes in RAM at
# ``kexec -e`` time (the root FDT page, the chunk list, the bitmaps, the sub-FDTs), as the
# next kernel reads them (spec §4.1 Decision), so stale or never-finalized handovers are
# predicted too.

ML_RELEASES = ("6.16", "6.17", "6.18", "6.19", "7.0")
RELEASE_ERA = {"6.16": "6.16", "6.17": "6.16-fix", "6.18": "6.18", "6.19": "6.19", "7.0": "6.19"}
TOGGLE_ERAS = ("6.16", "6.16-fix", "6.18")  # finalize 0/1 with abort (spec §2.3)
ALL_RELEASES = ("v4", "6.12", *ML_RELEASES)
#: releases the campaign draws from (``KHO_FS_STATEFUL_RELEASES=6.16,6.19`` narrows it)
RELEASES_UNDER_TEST = tuple(
    r for r in os.environ.get("KHO_FS_STATEFUL_RELEASES", ",".join(ALL_RELEASES)).split(",") if r
)
MEMBLOCK_RSRV_NOINIT = 0x10
SZ_4G = 1 << 32
ML_SCRATCH_VALUES = (
    None, None, None, None, None, "150%", "300%", "16M,64M,32M", "0,64M,32M",
    "16M,64M,32Mjunk", "512M,256M", "16M,4G,16M", "2M,2M,2M",
)  # fmt: skip
ML_SIZES = (0x1000, 0x1000, 0x10000, 0x10000, 0x30000, 0x40000, 0x40000, 0x1234)
ML_KHO_VALUES = ("on", "on", "on", "on", "on", "on", "1", "yes", "off", "maybe", None)
#: dmesg line families, each compared as a whole list (order within a family)
POPULATE_PREFIXES = ("KHO: setup:", "KHO: found kexec handover", "KHO: disabling KHO revival")
MEMINIT_PREFIXES = ("KHO: failed to get preserved memory", "KHO: failed to restore folio")
ML_REVIVAL_PREFIXES = (
    "Revived memory reservation", "KHO reserve-mem", "FDT 'memblock'", "Node '",
    "failed to retrieve FDT 'memblock'",
)  # fmt: skip
ML_EARLY_PREFIXES = ("Malformed early option", "KHO: scratch scale", "KHO: scratch areas")
SCRATCH_FAIL_PREFIXES = ("KHO: Failed to reserve",)
FINALIZE_PREFIXES = ("KHO: Failed to convert", "KHO: Failed to abort")
KNOWN_KHO_PREFIXES = (
    *POPULATE_PREFIXES, *MEMINIT_PREFIXES, *ML_EARLY_PREFIXES, *SCRATCH_FAIL_PREFIXES,
    *FINALIZE_PREFIXES, *ML_REVIVAL_PREFIXES,
)  # fmt: skip
PREPARE_PREFIX = "failed to prepare memblock FDT for KHO"
UNKNOWN_PREFIX = "Unknown kernel command line parameters"
FINALIZE_BUFS = (
    b"1", b"1\0", b"1\n", b"0x1", b"+1", b"0", b"0\n", b"0x0", b"2", b"abc", b" 1", b"-1",
    b"18446744073709551616", b"0x", b"1" + b"\0" * 30, b"0" * 23 + b"1", b"1\n\n",
)  # fmt: skip
#: test driver: how many items its sub-FDT has room for (fixed size, so the debugfs blob
#: size captured when a 6.19 subtree is added stays the FDT's size)
DRIVER_MAX_ITEMS = 48
DRIVER_SUBTREE = "stateful"
DRIVER_COMPATIBLE = "stateful-kho-v1"
U64_ALL = (1 << 64) - 1


@dataclass(frozen=True)
class MlConfig:
    """A mainline (or 6.12) command line in structured form."""

    kho: str | None
    scratch: str | None
    regions: tuple[RegionOpt, ...]

    def render(self) -> str:
        words = ["console=ttyS0", *(r.render() for r in self.regions)]
        if self.kho is not None:
            words.append(f"kho={self.kho}")
        if self.scratch is not None:
            words.append(f"kho_scratch={self.scratch}")
        return " ".join(words)

    @property
    def kho_enabled(self) -> bool:
        """kstrtobool (spec §2.1); ``maybe`` is malformed and keeps the default, off."""
        return self.kho in KHO_TRUE

    def early_lines(self, era: str | None) -> list[str]:
        """Early-parameter lines (spec §3.1, init/main.c); 6.12 (era None) has no handler."""
        if era is None:
            return []
        out = []
        if self.kho == "maybe":
            out.append("Malformed early option 'kho'")
        if self.scratch is not None:
            out.append(parse_kho_scratch_oracle(self.scratch, era))
        return out

    def unknown_line(self) -> list[str]:
        """6.12 (spec §15.2): ``kho=`` and ``kho_scratch=`` are unknown (init's environment)."""
        env = [f"kho={self.kho}"] if self.kho is not None else []
        env += [f"kho_scratch={self.scratch}"] if self.scratch is not None else []
        if not env:
            return []
        return [f'{UNKNOWN_PREFIX} "{" ".join(env)}", will be passed to user space.']


ml_region_opts = st.builds(
    RegionOpt, st.sampled_from((*ML_SIZES, 0)), st.sampled_from(ALIGNS), st.sampled_from(NAMES)
)
ml_configs = st.builds(
    MlConfig,
    st.sampled_from(ML_KHO_VALUES),
    st.sampled_from(ML_SCRATCH_VALUES),
    st.lists(ml_region_opts, max_size=4).map(tuple),
)


class StatefulKhoDriver(KhoDriver):
    """A KHO user of the mainline API (spec §2.4, §5.2, §10 as a pattern), driven by the rules.

    It preserves folios and page ranges on request and lists them in its own sub-FDT
    ``stateful`` (``items``: ``DRIVER_MAX_ITEMS`` LE u64 triples phys, order (all ones for
    a range), pages; ``count``: LE u32): added at FINALIZE (6.16–6.18) or at init and
    rewritten in place after every preservation (6.19+). On a handover boot it retrieves
    the incoming ``stateful`` subtree and restores every folio it lists, recording what
    ``kho_restore_folio`` answered.
    """

    name = "stateful_kho"
    kho_kinds = frozenset({"mainline"})

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.fdt_phys = 0
        self.items: list[tuple[int, int, int]] = []
        self.incoming: list[tuple[int, int, int]] | None = None
        self.retrieve_errno = 0
        self.restored: dict[int, int | None] = {}

    @property
    def kho(self) -> KhoMainline:
        kho = self.kernel.kho
        assert isinstance(kho, KhoMainline)
        return kho

    def init(self) -> None:
        kho = self.kho
        if not kho.kho_enable:
            return
        try:
            phys = kho.kho_retrieve_subtree(DRIVER_SUBTREE)
        except KernelError as exc:
            self.retrieve_errno = exc.errno
        else:
            self.incoming = driver_items_from_fdt(self.kernel.mem.read(phys, PAGE))
            for p, order, _ in self.incoming or ():
                if order != U64_ALL:
                    self.restored[p] = kho.kho_restore_folio(p)
        self.fdt_phys = kho.pages.alloc_pages(0)
        if not self.fdt_phys:
            return
        self.write_fdt()
        if kho.release.subtrees_at_init:
            kho.kho_preserve_folio(self.fdt_phys, 0)
            kho.kho_add_subtree(DRIVER_SUBTREE, self.fdt_phys)
        else:
            kho.register_kho_notifier(self)

    def write_fdt(self) -> None:
        self.kernel.mem.write(self.fdt_phys, driver_fdt(self.items))

    def notifier_call(self, event: int, data: object) -> int:
        if event == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        if event != KEXEC_KHO_FINALIZE:
            return NOTIFY_BAD
        self.write_fdt()
        try:
            self.kho.kho_preserve_folio(self.fdt_phys, 0)
            self.kho.kho_add_subtree(DRIVER_SUBTREE, self.fdt_phys, data)  # type: ignore[arg-type]
        except KernelError as exc:
            return notifier_from_errno(-exc.errno)
        return NOTIFY_DONE

    def preserve(self, phys: int, order: int, nr_pages: int) -> None:
        """``kho_preserve_folio`` (order >= 0) or a page range: ``kho_preserve_phys`` in
        6.16/6.17, ``kho_preserve_pages`` from 6.18 (spec §6.1)."""
        kho = self.kho
        if order >= 0:
            kho.kho_preserve_folio(phys, order)
        elif kho.release.memblock_preserve == "phys":
            kho.kho_preserve_phys(phys, nr_pages * PAGE)
        else:
            kho.kho_preserve_pages(phys, nr_pages)
        self.items.append((phys, order & U64_ALL, nr_pages))
        if kho.release.subtrees_at_init:
            self.write_fdt()


def driver_fdt(items: list[tuple[int, int, int]]) -> bytes:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", DRIVER_COMPATIBLE)
    sw.property_u32("count", 0)
    cells = items[:DRIVER_MAX_ITEMS] + [(0, 0, 0)] * (DRIVER_MAX_ITEMS - len(items))
    sw.property("items", b"".join(struct.pack("<QQQ", *c) for c in cells))
    sw.end_node()
    blob = bytearray(sw.as_fdt().as_bytearray())
    fdt = libfdt.Fdt(blob)
    fdt.setprop(0, "count", struct.pack("<I", min(len(items), DRIVER_MAX_ITEMS)))
    fdt.pack()
    return bytes(fdt.as_bytearray())


def driver_items_from_fdt(page: bytes) -> list[tuple[int, int, int]] | None:
    try:
        fdt = libfdt.Fdt(bytearray(page))
        count = struct.unpack("<I", bytes(fdt.getprop(0, "count")))[0]
        raw = bytes(fdt.getprop(0, "items"))
    except (libfdt.FdtException, struct.error):
        return None
    return [struct.unpack_from("<QQQ", raw, 24 * i) for i in range(min(count, len(raw) // 24))]


@dataclass
class Span:
    """Bytes the reference expects at ``start`` (a preserved item, or preserved bytes kept
    from the previous boot)."""

    start: int
    shadow: bytearray

    @property
    def size(self) -> int:
        return len(self.shadow)

    def patch(self, addr: int, data: bytes) -> None:
        lo, hi = max(addr, self.start), min(addr + len(data), self.start + self.size)
        if lo < hi:
            self.shadow[lo - self.start : hi - self.start] = data[lo - addr : hi - addr]


@dataclass
class MlItem(Span):
    """Memory the test driver preserved: a folio (``order`` >= 0) or ``nr_pages`` pages."""

    order: int = 0
    nr_pages: int = 1
    preserved: bool = True

    def blocks(self) -> list[tuple[int, int]]:
        if self.order >= 0:
            return [(self.start, self.order)]
        return split_range_to_blocks(self.start, self.nr_pages * PAGE)


@dataclass
class MlImage:
    cfg: MlConfig
    fdt_phys: int  # the root FDT page the image points at (0: no KHO data)
    table: list[tuple[int, int]]  # the scratch table it carries
    kimage: Kimage


@dataclass
class MlRef:
    release: str
    era: str | None  # None: 6.12
    cfg: MlConfig
    cold_cfg: MlConfig
    generation: int = 0
    kho_enable: bool = False  # KHO enabled at the end of boot
    debugfs: bool = False
    handover: bool = False
    finalized: bool = False
    scratch: list[tuple[int, int]] = field(default_factory=list)
    table: list[RefRegion] = field(default_factory=list)
    items: list[MlItem] = field(default_factory=list)
    preserved: set[tuple[int, int]] = field(default_factory=set)  # what the map must list
    final_set: set[tuple[int, int]] | None = None  # 6.16-6.18: at the last finalize
    final_keys: set[tuple[int, int]] | None = None  # 6.19: (order, bitmap) at finalize
    added: list[tuple[str, int]] = field(default_factory=list)  # subtrees (name, address)
    stale: list[str] = field(default_factory=list)  # out/sub_fdts a failed finalize left
    driver_registered: bool = False
    memblock_page: int = 0
    in_subtrees: list[str] = field(default_factory=list)
    in_fdt_size: int = 0
    kept: list[Span] = field(default_factory=list)  # preserved bytes from the last boot
    kept_blocks: set[tuple[int, int]] = field(default_factory=set)
    loaded: MlImage | None = None


@dataclass
class Handover:
    """What the next kernel will find, read from RAM as it will be at ``kexec -e``."""

    lines: list[str]  # populate's dmesg lines (spec §4.3)
    accepted: bool
    root: bytes = b""
    children: list[tuple[str, int | None]] = field(default_factory=list)
    blocks: set[tuple[int, int]] | None = None  # decoded map; None: not decodable
    meminit_lines: list[str] = field(default_factory=list)
    memblock: dict[str, tuple[bytes, bytes]] | None = None  # name -> (start, size) props
    memblock_problem: bool = False  # an odd memblock sub-FDT: revival lines unpredicted
    driver_items: list[tuple[int, int, int]] | None = None
    sub_sizes: dict[str, int] = field(default_factory=dict)


def bitmap_key(block: tuple[int, int], bitmap_bytes: int) -> tuple[int, int]:
    """(order, bitmap number) of a block (spec §6.1)."""
    phys, order = block
    return order, ((phys >> 12) >> order) // (bitmap_bytes * 8)


def predict_handover(read: Callable[[int, int], bytes], fdt_phys: int, era: str) -> Handover:
    """Spec §4.3 and §4.4 with libfdt and the oracles, on the bytes at ``fdt_phys``."""
    page = read(fdt_phys, PAGE)
    buf = bytearray(page)
    err = int(libfdt.fdt_check_header(buf))
    if not err and libfdt.fdt_totalsize(buf) > PAGE:
        err = -libfdt.TRUNCATED
    if err:
        return Handover(
            [
                f"KHO: setup: handover FDT ({fdt_phys:#x}) is invalid: {err}",
                "KHO: disabling KHO revival: -22",
            ],
            False,
        )
    root = bytes(page[: libfdt.fdt_totalsize(buf)])
    cerr = int(libfdt.fdt_node_check_compatible(bytearray(root), 0, "kho-v1"))
    if cerr:
        return Handover(
            [
                f"KHO: setup: handover FDT ({fdt_phys:#x}) is incompatible with 'kho-v1': {cerr}",
                "KHO: disabling KHO revival: -22",
            ],
            False,
        )
    info = decode_root_fdt(root)
    mem_map = info["preserved_memory_map"]
    lines: list[str] = []
    meminit: list[str] = []
    if era == "6.19":
        if mem_map is None:
            lines.append("KHO: failed to get preserved memory bitmaps")
        if not mem_map:
            lines.append("KHO: disabling KHO revival: -2")
            return Handover(lines, False)
    suffix = " Will skip init for some devices" if era in TOGGLE_ERAS else ""
    lines.append(f"KHO: found kexec handover data.{suffix}")
    h = Handover(lines, True, root, info["children"])
    if mem_map is None:
        meminit.append("KHO: failed to get preserved memory bitmaps")
    try:
        h.blocks = set(decode_preserved_memory_map(read, mem_map or 0, ML_BITMAP_BYTES[era]))
    except ValueError:
        h.blocks = None
    if era == "6.18" and h.blocks is not None and fdt_phys not in {p for p, _ in h.blocks}:
        # 6.18 (page magic): the root folio must be a preserved head (spec §4.4 step 3)
        meminit.append("KHO: failed to restore folio for KHO fdt")
    h.meminit_lines = meminit
    for name, addr in h.children:
        if addr is None:
            continue
        sub = read(addr, PAGE)
        h.sub_sizes[name] = int(struct.unpack(">I", sub[4:8])[0])
        if name == MEMBLOCK_SUBTREE:
            h.memblock, h.memblock_problem = memblock_children(sub)
        elif name == DRIVER_SUBTREE:
            h.driver_items = driver_items_from_fdt(sub)
    if any(n == MEMBLOCK_SUBTREE and a is None for n, a in h.children):
        h.memblock_problem = True
    return h


MEMBLOCK_SUBTREE = "memblock"


def memblock_children(page: bytes) -> tuple[dict[str, tuple[bytes, bytes]] | None, bool]:
    """The ``memblock`` sub-FDT's regions (spec §7.1): name -> raw (start, size) values."""
    try:
        fdt = libfdt.Fdt(bytearray(page))
        if libfdt.fdt_node_check_compatible(fdt.as_bytearray(), 0, "memblock-v1"):
            return None, True
        out = {}
        node = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
        while node >= 0:
            if libfdt.fdt_node_check_compatible(fdt.as_bytearray(), node, "reserve-mem-v1"):
                return None, True
            start = fdt.getprop(node, "start", quiet=(libfdt.NOTFOUND,))
            size = fdt.getprop(node, "size", quiet=(libfdt.NOTFOUND,))
            if isinstance(start, int) or isinstance(size, int):
                return None, True
            out[fdt.get_name(node)] = (bytes(start), bytes(size))
            node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    except libfdt.FdtException:
        return None, True
    return out, False


def read_with_segments(
    read: Callable[[int, int], bytes], segments: Iterable[object]
) -> Callable[[int, int], bytes]:
    """RAM as the next kernel reads it: ``kexec -e`` copied every segment first (§9.5)."""
    segs = [(s.mem, s.buffer[: s.memsz] + bytes(s.memsz - len(s.buffer[: s.memsz])))  # type: ignore[attr-defined]
            for s in segments]  # fmt: skip

    def reader(addr: int, size: int) -> bytes:
        data = bytearray(read(addr, size))
        for start, body in segs:
            lo, hi = max(addr, start), min(addr + size, start + len(body))
            if lo < hi:
                data[lo - addr : hi - addr] = body[lo - start : hi - start]
        return bytes(data)

    return reader


def union_cover(blocks: Iterable[tuple[int, int]], start: int, size: int) -> list[tuple[int, int]]:
    """The parts of ``[start, start + size)`` the blocks cover, as (start, size) pairs."""
    out = []
    for b, bsz in blocks_to_ranges(blocks):
        lo, hi = max(b, start), min(b + bsz, start + size)
        if lo < hi:
            out.append((lo, hi - lo))
    return out


def debugfs_listing(kho: KhoMainline) -> dict[str, DebugfsEntry]:
    """What the tree shows under ``sys/kernel/debug`` for this kernel, as oracle entries."""
    kinds = {
        Directory: "dir",
        DebugfsAttribute: "attribute",
        DebugfsBlobFile: "blob",
        DebugfsSeqFile: "seq",
    }
    out: dict[str, DebugfsEntry] = {}

    def entry(path: str, make: Callable[[], object], _key: object) -> None:
        node = make()
        out[path.removeprefix("sys/kernel/debug/")] = DebugfsEntry(
            kinds[type(node)],
            node.mode & 0o7777,  # type: ignore[attr-defined]
        )

    for _ in kho_debugfs_entries(kho, entry):  # type: ignore[arg-type]
        pass
    return out


class MainlineRules(RuleBasedStateMachine):
    """The mainline and 6.12 rules and checks of :class:`KhoMachine` (see the section above)."""

    m: Machine | None
    ml: MlRef | None
    release: str

    # -- helpers -----------------------------------------------------------------------------
    @property
    def k(self) -> Kernel:
        assert self.m is not None
        return self.m.kernel

    @property
    def mlr(self) -> MlRef:
        assert self.ml is not None
        return self.ml

    @property
    def ml_mode(self) -> bool:
        return self.ml is not None and self.m is not None

    @property
    def ml_kho(self) -> KhoMainline:
        kho = self.k.kho
        assert isinstance(kho, KhoMainline)
        return kho

    def ml_driver(self) -> StatefulKhoDriver | None:
        return next((d for d in self.k.drivers if isinstance(d, StatefulKhoDriver)), None)

    def ml_spans(self) -> Iterable[Span | RefRegion]:
        ml = self.mlr
        return [*ml.table, *ml.items, *ml.kept]

    def ml_write_ram(self, addr: int, payload: bytes) -> None:
        assert self.m is not None
        self.m.mem.write(addr, payload)
        for span in self.ml_spans():
            span.patch(addr, payload)

    def ml_new_lines(self, before: int) -> list[str]:
        return [r.text for r in self.k.log.records[before:]]

    # -- debugfs out/finalize (spec §2.3, §2.4) ------------------------------------------------
    def ml_write_finalize(self, buf: bytes) -> None:
        k, ml, kho = self.k, self.mlr, self.ml_kho
        assert ml.era is not None
        node = DebugfsAttribute(0o600, kho.finalize_show, kho.finalize_store)
        want = finalize_write_oracle(ml.era, buf, finalized=ml.finalized)
        before = len(k.log.records)
        if want < 0:
            self.expect_error(-want, node.write, None, 0, buf)
            assert self.ml_new_lines(before) == []
            return
        value = debugfs_attr_value(buf)
        if ml.era not in TOGGLE_ERAS:  # 6.19: serialize the map again, every time
            assert node.write(None, 0, buf) == len(buf)  # type: ignore[arg-type]
            event("finalize: 6.19 re-serialize" if ml.finalized else "finalize: 6.19 first")
            ml.finalized = True
            bitmap_bytes = ML_BITMAP_BYTES[ml.era]
            ml.final_keys = {bitmap_key(b, bitmap_bytes) for b in ml.preserved}
            self.ml_check_root_and_map()
        elif not value:
            assert node.write(None, 0, buf) == len(buf)  # type: ignore[arg-type]
            event("finalize: abort")
            ml.finalized, ml.final_set = False, None
            ml.preserved, ml.added, ml.stale = set(), [], []
            for item in ml.items:  # abort drops every preservation (spec §2.4)
                item.preserved = False
        else:
            err, created, blocks = self.ml_predict_finalize()
            if err:
                self.expect_error(-err, node.write, None, 0, buf)
                event(f"finalize: failed {err}")
                assert self.ml_new_lines(before) == [
                    f"KHO: Failed to convert KHO state tree: {err}"
                ]
                ml.preserved = set()
                for item in ml.items:
                    item.preserved = False
                ml.stale += [name for name, _ in created]
                return
            assert node.write(None, 0, buf) == len(buf)  # type: ignore[arg-type]
            event("finalize: ok")
            ml.finalized, ml.preserved, ml.added = True, blocks, created
            ml.final_set = set(blocks)
            self.ml_check_root_and_map()
        assert self.ml_new_lines(before) == []

    def ml_region_blocks(self, start: int, size: int) -> tuple[list[tuple[int, int]], int]:
        """What memblock preserves of one region, or the error (spec §6.1, §7.1):
        6.16/6.17 ``kho_preserve_phys`` (page-aligned or EINVAL); 6.18+ ``size / 4096``
        whole pages from the page holding ``start``. Model decision (not in the spec):
        ``kho_preserve_pages`` refuses pages overlapping scratch with EINVAL, as the
        kernel's KEXEC_HANDOVER_DEBUG check does."""
        ml = self.mlr
        if ml.era in ("6.16", "6.16-fix"):
            if start % PAGE or size % PAGE:
                return [], -errno.EINVAL
            return split_range_to_blocks(start, size), 0
        n = size // PAGE
        if any(overlaps(a, sz, start, n * PAGE) for a, sz in ml.scratch):
            return [], -errno.EINVAL
        return split_range_to_blocks(start - start % PAGE, n * PAGE), 0

    def ml_participants(self) -> list[str]:
        """Notifier chain in registration order: the driver (device initcall) before
        memblock (late initcall)."""
        ml = self.mlr
        out = ["stateful"] if ml.driver_registered else []
        return out + (["memblock"] if ml.memblock_page else [])

    def ml_predict_finalize(self) -> tuple[int, list[tuple[str, int]], set[tuple[int, int]]]:
        """6.16–6.18 finalize (spec §2.4): root page preserved, notifiers in order, map.

        memblock ORs its errors (``err |=``) and still adds its subtree; a subtree file
        left by a failed finalize makes its re-creation fail with EEXIST (debugfs)."""
        ml = self.mlr
        blocks = set(ml.preserved)
        blocks.add((self.ml_kho.fdt_page, 0))
        created: list[tuple[str, int]] = []
        driver = self.ml_driver()
        for part in self.ml_participants():
            if part == "stateful":
                assert driver is not None
                blocks.add((driver.fdt_phys, 0))
                if "stateful" in ml.stale:
                    return -errno.EEXIST, created, blocks
                created.append(("stateful", driver.fdt_phys))
                continue
            err = 0
            for r in ml.table:
                got, e = self.ml_region_blocks(r.start, r.size)
                err |= e
                blocks.update(got)
            blocks.add((ml.memblock_page, 0))
            if "memblock" in ml.stale:
                err |= -errno.EEXIST
            else:
                created.append(("memblock", ml.memblock_page))
            if err:
                return err, created, blocks
        return 0, created, blocks

    def ml_check_root_and_map(self) -> None:
        """After a finalize: the root page byte for byte (oracles' root_fdt, §5.1) and its
        preserved-memory map decoded by the oracle equal to what was preserved (§6)."""
        k, ml, kho = self.k, self.mlr, self.ml_kho
        assert ml.era is not None
        page = k.mem.read(kho.fdt_page, PAGE)
        total = int(struct.unpack(">I", page[4:8])[0])
        root = page[:total]
        assert fdt_check_full(root) == 0
        mem_map = decode_root_fdt(root)["preserved_memory_map"]
        assert mem_map is not None
        build = root_fdt if ml.era in TOGGLE_ERAS else root_fdt_6_19
        assert root == build("kho-v1", mem_map, ml.added), "root FDT bytes differ"
        got = set(decode_preserved_memory_map(k.mem.read, mem_map, ML_BITMAP_BYTES[ml.era]))
        assert got == ml.preserved, (
            f"map lists {sorted(got - ml.preserved)} extra, {sorted(ml.preserved - got)} missing"
        )
        if ml.era in TOGGLE_ERAS:
            assert kho.out_fdt is not None and kho.out_fdt.size == total

    # -- preservation by the test driver and direct calls (spec §6.1, §2.4) -------------------
    def ml_can_preserve(self) -> bool:
        return (
            self.ml_mode
            and self.mlr.debugfs
            and self.ml_driver() is not None
            and len(self.mlr.items) < DRIVER_MAX_ITEMS
        )

    def ml_preserve(self, data: st.DataObject) -> None:
        """The test driver preserves a folio or a page range (spec §6.1), or (6.16/6.17)
        an unaligned range is refused."""
        ml, kho = self.mlr, self.ml_kho
        kinds = ["folio", "folio", "range"]
        if ml.era in ("6.16", "6.16-fix") and not ml.finalized:
            kinds.append("unaligned")
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "unaligned":
            self.ml_preserve_unaligned(
                data.draw(st.sampled_from([1, 0x800, 0xFFF]), label="offset"),
                data.draw(st.integers(1, 3), label="pages"),
            )
            return
        order = data.draw(st.integers(0, 4), label="order")
        driver = self.ml_driver()
        assert driver is not None
        phys = kho.pages.alloc_pages(order)
        if not phys:
            event("preserve: out of pages")
            return
        nr_pages = 1 << order if kind == "folio" else data.draw(st.integers(1, 1 << order))
        seed = data.draw(st.integers(0, 1 << 32), label="seed")
        payload = random.Random(seed).randbytes(nr_pages * PAGE)
        self.ml_write_ram(phys, payload)
        item_order = order if kind == "folio" else -1
        if ml.finalized and ml.era in TOGGLE_ERAS:  # EBUSY while finalized (§2.4)
            self.expect_error(errno.EBUSY, driver.preserve, phys, item_order, nr_pages)
            kho.pages.free_pages(phys)
            event("preserve: EBUSY while finalized")
            return
        driver.preserve(phys, item_order, nr_pages)
        item = MlItem(phys, bytearray(payload), item_order, nr_pages)
        ml.items.append(item)
        ml.preserved.update(item.blocks())
        if ml.finalized:
            event("preserve: after a 6.19 finalize")

    def ml_preserve_unaligned(self, offset: int, pages: int) -> None:
        """6.16 ``kho_preserve_phys``: EINVAL unless start and size are page-aligned (§6.1)."""
        kho = self.ml_kho
        phys = kho.pages.alloc_pages(2)
        self.expect_error(errno.EINVAL, kho.kho_preserve_phys, phys + offset, pages * PAGE)
        self.expect_error(errno.EINVAL, kho.kho_preserve_phys, phys, pages * PAGE - offset)
        kho.pages.free_pages(phys)
        assert set(kho.preserved_blocks()) == self.mlr.preserved

    # -- kexec -------------------------------------------------------------------------------
    def ml_next_config(self, data: st.DataObject) -> MlConfig:
        cur = self.mlr.cfg
        kind = data.draw(
            st.sampled_from(
                ["same", "same", "same", "resize", "realign", "drop", "add", "kho_off",
                 "kho_on", "scratch", "fresh"]
            ),
            label="next cmdline",
        )  # fmt: skip
        regions = list(cur.regions)
        if kind in ("resize", "realign", "drop") and regions:
            i = data.draw(st.integers(0, len(regions) - 1), label="region index")
            if kind == "resize":
                regions[i] = replace(regions[i], size=data.draw(st.sampled_from(ML_SIZES)))
            elif kind == "realign":
                regions[i] = replace(regions[i], align=data.draw(st.sampled_from(ALIGNS)))
            else:
                del regions[i]
        elif kind == "add":
            regions.append(data.draw(ml_region_opts))
        elif kind == "kho_off":
            return replace(cur, kho="off")
        elif kind == "kho_on":
            return replace(cur, kho="on")
        elif kind == "scratch":
            return replace(cur, scratch=data.draw(st.sampled_from(ML_SCRATCH_VALUES)))
        elif kind == "fresh":
            return data.draw(ml_configs)
        return replace(cur, regions=tuple(regions))

    def ml_file_load(self, data: st.DataObject) -> None:
        kernel = data.draw(st.sampled_from(KERNELS))
        initrd = data.draw(st.sampled_from(INITRDS))
        flags = data.draw(st.sampled_from([0, 0, 0, KEXEC_FILE_NO_INITRAMFS]))
        self.ml_kexec_file_load(kernel, initrd, self.ml_next_config(data), flags)

    def ml_kexec_file_load(
        self, kernel: KernelFile, initrd: bytes | None, cfg: MlConfig, flags: int = 0
    ) -> bool:
        """``kexec -l -s`` (spec §4.1): KHO data (the root page's address and the scratch
        table segment) when enabled (6.16, 6.19+) or finalized (6.17, 6.18); every segment
        in scratch while KHO is enabled, top-down (v4 sheet 9.1)."""
        k, ml = self.k, self.mlr
        if flags & KEXEC_FILE_NO_INITRAMFS:
            initrd = None
        needs_finalize = ml.era in ("6.16-fix", "6.18")
        attached = ml.kho_enable and (ml.finalized or not needs_finalize)
        reqs = [SegReq("kho-scratch", 16 * len(ml.scratch), SZ_64K, 0)] if attached else []
        reqs += segment_requests(None, 0, kernel, initrd, 0)
        if ml.kho_enable:
            ranges = [(a, a + sz - 1) for a, sz in ml.scratch if sz]
        else:
            ranges = list(reversed(system_ram(k)))
        addrs, failed = place(reqs, ranges, top_down=True)
        before = len(k.log.records)
        if failed is not None:
            self.expect_error(
                errno.EADDRNOTAVAIL, k.kexec.kexec_file_load, kernel.data, initrd, cfg.render(),
                flags,
            )  # fmt: skip
            event(f"file load: EADDRNOTAVAIL at {reqs[failed].name}")
            assert self.ml_new_lines(before) == []
            return False
        k.kexec.kexec_file_load(kernel.data, initrd, cfg.render(), flags)
        assert self.ml_new_lines(before) == []
        image = k.kexec.kexec_image
        assert image is not None
        assert [(s.name, s.mem) for s in image.segments] == [
            (q.name, a) for q, a in zip(reqs, addrs, strict=True)
        ]
        fdt_phys = 0
        if attached:
            event("file load: with KHO data")
            fdt_phys = self.ml_kho.fdt_page
            assert image.kho_fdt_phys == fdt_phys and image.kho_scratch is not None
            assert image.kho_scratch.buffer == b"".join(
                struct.pack("<QQ", a, sz) for a, sz in ml.scratch
            )
        else:
            assert not image.kho_fdt_phys and image.kho_scratch is None
        ml.loaded = MlImage(cfg, fdt_phys, list(ml.scratch), image)
        return True

    def ml_user_load(self, data: st.DataObject) -> None:
        """``kexec -l`` without ``-s``: never KHO data (spec §4.1)."""
        k = self.k
        kernel = data.draw(st.sampled_from(KERNELS))
        initrd = data.draw(st.sampled_from(INITRDS))
        cfg = self.ml_next_config(data)
        reqs = segment_requests(None, 0, kernel, initrd, SZ_16M)
        addrs, failed = place(reqs, system_ram(k), top_down=False)
        assert failed is None
        k.kexec.kexec_load(kernel.data, initrd, cfg.render())
        image = k.kexec.kexec_image
        assert image is not None and not image.kho_fdt_phys
        assert [(s.name, s.mem) for s in image.segments] == [
            (q.name, a) for q, a in zip(reqs, addrs, strict=True)
        ]
        self.mlr.loaded = MlImage(cfg, 0, [], image)

    def ml_cycle(self, data: st.DataObject) -> None:
        """finalize, ``kexec -l -s``, ``kexec -e``: the selftest's handover, to go deep."""
        ml = self.mlr
        if not ml.finalized or ml.era not in TOGGLE_ERAS:
            self.ml_write_finalize(b"1\0")
        kernel = data.draw(st.sampled_from(KERNELS[:2]))
        if self.ml_kexec_file_load(
            kernel, data.draw(st.sampled_from(INITRDS[:4])), self.ml_next_config(data)
        ):
            self.ml_exec()

    def ml_exec(self) -> None:
        assert self.m is not None
        ml = self.mlr
        image = ml.loaded
        if image is None:
            old = self.k
            self.expect_error(errno.EINVAL, self.m.kexec_exec)
            assert self.k is old
            return
        for seg in image.kimage.segments:  # what relocate_kernel writes (spec §4.1)
            body = seg.buffer[: seg.memsz]
            body += bytes(seg.memsz - len(body))
            for span in self.ml_spans():
                span.patch(seg.mem, body)
        ho = None
        expected: set[tuple[int, int]] | None = None
        if image.fdt_phys:
            assert ml.era is not None
            read = read_with_segments(self.k.mem.read, image.kimage.segments)
            ho = predict_handover(read, image.fdt_phys, ml.era)
            if ml.era in TOGGLE_ERAS and ml.finalized:
                expected = ml.final_set
            elif ml.era not in TOGGLE_ERAS and ml.final_keys is not None:
                bb = ML_BITMAP_BYTES[ml.era]
                expected = {b for b in ml.preserved if bitmap_key(b, bb) in ml.final_keys}
        self.m.kexec_exec()
        ml.generation += 1
        ml.cfg = image.cfg
        self.ml_after_boot(cold=False, image=image, ho=ho, expected=expected)

    # -- boots -------------------------------------------------------------------------------
    def ml_after_boot(
        self,
        cold: bool,
        image: MlImage | None,
        ho: Handover | None,
        expected: set[tuple[int, int]] | None = None,
    ) -> None:
        """Check a fresh boot against kho-mainline.md and rebuild the reference for it."""
        assert self.m is not None
        k, ml = self.k, self.mlr
        cfg, era = ml.cfg, ml.era
        lines = k.log.lines()

        def family(prefixes: str | tuple[str, ...]) -> list[str]:
            return [ln for ln in lines if ln.startswith(prefixes)]

        assert k.cmdline == cfg.render()
        assert lines[0].startswith(f"Linux version {linux_version_prefix(ml.release)} ")
        assert lines[0].endswith(f"#{ml.generation + 1} SMP PREEMPT_DYNAMIC")
        assert lines[1] == f"Command line: {k.cmdline}"
        assert self.m.generation == ml.generation
        old_table = {r.name: r for r in ml.table}
        old_spans: list[Span | RefRegion] = [*ml.table, *ml.items]
        accepted = ho is not None and ho.accepted
        ml.finalized, ml.final_set, ml.final_keys = False, None, None
        ml.added, ml.stale, ml.items, ml.preserved = [], [], [], set()
        ml.loaded, ml.in_subtrees, ml.in_fdt_size = None, [], 0
        ml.kept, ml.kept_blocks = [], set()
        ml.driver_registered, ml.memblock_page = False, 0
        ml.handover, ml.table = accepted, []
        if era is None:  # 6.12: no KHO at all (spec §15.2)
            assert k.kho.kind == "none" and k.panic is None
            assert family(UNKNOWN_PREFIX) == cfg.unknown_line()
            assert not any(ln.startswith("KHO") for ln in lines)
            ml.kho_enable = ml.debugfs = False
            ml.scratch = []
            self.ml_check_table(cold, None, old_table)
            event(f"boot 6.12: {'cold' if cold else 'kexec'}")
            return
        assert family(UNKNOWN_PREFIX) == []
        populate = family(POPULATE_PREFIXES + MEMINIT_PREFIXES)
        if k.panic is not None:
            # only scratch-only mode can starve the early allocations (spec §4.4)
            assert accepted and k.panic == PANIC_LINE and lines[-1] == PANIC_LINE
            event("boot: panic in scratch-only mode")
            self.m.reboot()
            ml.cfg, ml.generation = ml.cold_cfg, 0
            self.ml_after_boot(cold=True, image=None, ho=None)
            return
        assert populate == ((ho.lines + ho.meminit_lines) if ho is not None else [])
        assert k.kho.handover == accepted
        assert family(ML_EARLY_PREFIXES) == cfg.early_lines(era)
        event(
            f"boot {ml.release}: "
            + ("cold" if cold else "handover" if accepted else "refused" if ho else "plain kexec")
        )
        kho = self.ml_kho
        if accepted:
            assert ho is not None and image is not None
            ml.scratch = list(image.table)
            assert family(SCRATCH_FAIL_PREFIXES) == []
            scratch_mem = [(r.base, r.size) for r in k.memblock.memory if r.flags & 0x40]
            for a, sz in ml.scratch:
                assert not sz or covered(scratch_mem, a, sz), "inherited scratch not KHO_SCRATCH"
            self.ml_check_handover(ho, expected, old_spans)
            ml.kho_enable = cfg.kho_enabled
        else:
            assert not any(r.flags & 0x40 for r in k.memblock.memory)
            ml.kho_enable = self.ml_check_fresh_scratch(cfg, family(SCRATCH_FAIL_PREFIXES))
        ml.debugfs = ml.kho_enable
        assert kho.kho_enable == ml.kho_enable and kho.debugfs == ml.debugfs
        self.ml_check_table(cold, ho if accepted else None, old_table)
        # the new kernel's outgoing side: drivers at device init, memblock at late init
        driver = self.ml_driver()
        prepare: list[str] = []
        if ml.debugfs:
            assert driver is not None and driver.fdt_phys
            if accepted and ho is not None:
                self.ml_check_driver_restore(driver, ho)
            else:
                assert driver.incoming is None
            mb = k.reserve_mem.memblock_kho
            ml.memblock_page = mb.fdt_page if mb is not None and ml.table else 0
            if ml.table:
                sub = k.mem.read(ml.memblock_page, PAGE)
                want = memblock_sub_fdt([(r.name, r.start, r.size) for r in ml.table])
                assert sub[: len(want)] == want, "memblock sub-FDT differs from spec §7.1"
            if era in TOGGLE_ERAS:
                ml.driver_registered = True
            else:
                ml.preserved = {(kho.fdt_page, 0), (driver.fdt_phys, 0)}
                ml.added = [("stateful", driver.fdt_phys)]
                if ml.table:
                    err = 0
                    for r in ml.table:
                        got, e = self.ml_region_blocks(r.start, r.size)
                        err |= e
                        ml.preserved.update(got)
                    ml.preserved.add((ml.memblock_page, 0))
                    if err:
                        prepare.append(f"{PREPARE_PREFIX}: {err}")
                        event("boot: memblock FDT not prepared (region in scratch)")
                    else:
                        ml.added.append(("memblock", ml.memblock_page))
                page = k.mem.read(kho.fdt_page, PAGE)
                total = int(struct.unpack(">I", page[4:8])[0])
                assert page[:total] == root_fdt_6_19("kho-v1", 0, ml.added)
        assert family(PREPARE_PREFIX) == prepare
        assert not [ln for ln in family("KHO") if not ln.startswith(KNOWN_KHO_PREFIXES)], lines

    def ml_check_fresh_scratch(self, cfg: MlConfig, fail_lines: list[str]) -> bool:
        """Scratch of a boot without handover (spec §3.2, §3.3); whether KHO stays enabled."""
        k, ml = self.k, self.mlr
        kho = self.ml_kho
        era = ml.era
        assert era is not None
        if not cfg.kho_enabled:
            assert fail_lines == [] and not kho.scratch
            ml.scratch = []
            return False
        scale, low, glob, pernode = apply_kho_scratch([cfg.scratch], era)
        if not scale and glob >= k.mem.installed:
            want = ["KHO: Failed to reserve global scratch buffer"] if era == "6.19" else []
            if era != "6.16":
                want.append("KHO: Failed to reserve scratch area, disabling kexec handover")
            assert fail_lines == want
            assert not kho.scratch
            event("boot: scratch reservation failed")
            ml.scratch = []
            return False
        assert fail_lines == []
        areas = [(a.addr, a.size) for a in kho.scratch]
        nodes = k.mem.nr_nodes
        assert len(areas) == nodes + 2
        exclude = [*areas, (kho.scratch_table, 16 * len(areas))]
        # per node: only allocations made for a node carry it before the end of boot, i.e.
        # the node's memory map (1/64 of its RAM, the model's footprint, docs/releases.md)
        k_nodes = [k.mem.node_size(n) >> 6 for n in range(nodes)]
        sizes = scratch_sizes(
            scale=scale, lowmem=low, global_size=glob, pernode=pernode,
            k_low=kern_size(k, limit=0xFFFFFFFF, exclude=exclude),
            k_all=kern_size(k, exclude=exclude), k_nodes=k_nodes,
        )  # fmt: skip
        assert [sz for _, sz in areas] == sizes, (areas, sizes)
        low_addr, low_size = areas[0]
        assert not low_size or low_addr + low_size <= SZ_4G
        for nid, (a, sz) in enumerate(areas[2:]):
            assert not sz or any(r.start <= a and a + sz <= r.end for r in k.mem.node_ranges(nid))
        for a, sz in areas:
            assert not sz or a % SZ_2M == 0
        assert k.mem.read(kho.scratch_table, 16 * len(areas)) == b"".join(
            struct.pack("<QQ", a, sz) for a, sz in areas
        )
        ml.scratch = areas
        return True

    def ml_check_handover(
        self,
        ho: Handover,
        expected: set[tuple[int, int]] | None,
        old_spans: list[Span | RefRegion],
    ) -> None:
        """Spec §4.4: every preserved block reserved with RSRV_NOINIT, its bytes kept."""
        k, ml = self.k, self.mlr
        kho = self.ml_kho
        if kho.debugfs:
            ml.in_subtrees = [n for n, a in ho.children if a is not None]
            ml.in_fdt_size = len(ho.root)
            assert kho.in_fdt is not None and kho.in_fdt.size == len(ho.root)
            assert [(b.name, b.size) for b in kho.in_sub_fdts] == [
                (n, ho.sub_sizes[n]) for n in ml.in_subtrees
            ]
        if ho.blocks is None:
            event("handover: map not decodable")
            return
        if expected is not None:
            assert ho.blocks == expected, (
                f"handed over {sorted(ho.blocks - expected)} extra, "
                f"{sorted(expected - ho.blocks)} missing"
            )
            event("handover: map as finalized")
        else:
            event("handover: stale or never-finalized map")
        ml.kept_blocks = {(p, o) for p, o in ho.blocks if k.mem.is_ram(p, PAGE << o)}
        noinit = [(r.base, r.size) for r in k.memblock.reserved if r.flags & MEMBLOCK_RSRV_NOINIT]
        for p, o in ml.kept_blocks:
            assert covered(noinit, p, PAGE << o), f"preserved {p:#x} order {o} not NOINIT"
        for span in old_spans:
            for lo, size in union_cover(ho.blocks, span.start, span.size):
                kept = Span(lo, bytearray(span.shadow[lo - span.start : lo - span.start + size]))
                assert k.mem.read(lo, size) == kept.shadow, f"preserved bytes at {lo:#x} lost"
                ml.kept.append(kept)
        if ml.kept:
            event("handover: preserved bytes kept")

    def ml_check_driver_restore(self, driver: StatefulKhoDriver, ho: Handover) -> None:
        """The driver found its subtree and ``kho_restore_folio`` answered as the map says:
        the folio's order, or None (6.18+, page magic) / 0 (6.16, no magic) (spec §4.4)."""
        ml = self.mlr
        if DRIVER_SUBTREE not in [n for n, a in ho.children if a is not None]:
            assert driver.incoming is None
            return
        assert driver.incoming == ho.driver_items
        blocks = ho.blocks or set()
        magic = ml.era in ("6.18", "6.19")
        for p, order, _ in ho.driver_items or ():
            if order == U64_ALL:
                continue
            orders = [o for q, o in blocks if q == p]
            want = min(orders) if orders else (None if magic else 0)
            assert driver.restored[p] == want, (p, order, driver.restored[p], want)
            if want == order:
                event("driver: folio restored")
        # a page nobody preserved, and a folio restored a second time (spec §4.4 step 2)
        kho = self.ml_kho
        assert kho.kho_restore_folio(driver.fdt_phys) == (None if magic else 0)
        for p, order, _ in ho.driver_items or ():
            if order != U64_ALL:
                assert kho.kho_restore_folio(p) == (None if magic else 0)

    def ml_check_table(
        self, cold: bool, ho: Handover | None, old_table: dict[str, RefRegion]
    ) -> None:
        """``reserve_mem=`` with mainline revival (spec §7.2) and fresh allocations."""
        k, ml, cfg = self.k, self.mlr, self.mlr.cfg
        actual = {r.name: r for r in k.reserve_mem.table}
        want_lines: list[str] = []
        names: list[str] = []
        free = free_ranges(ml.scratch, ((r.base, r.size) for r in k.memblock.reserved))
        for opt in cfg.regions:
            if len(names) >= 8 or not opt.valid or opt.name in names:
                continue
            if ho is not None and ho.memblock is not None:
                props = ho.memblock.get(opt.name)
                if props is None:
                    want_lines.append(f"FDT 'memblock' has no child '{opt.name}': -1")
                elif len(props[0]) == 8 and len(props[1]) == 8:
                    start = int.from_bytes(props[0], "little")
                    size = int.from_bytes(props[1], "little")
                    if start & (opt.eff_align - 1):
                        event("revival: wrong alignment")
                        want_lines.append(
                            f"KHO reserve-mem '{opt.name}' has wrong alignment "
                            f"({opt.eff_align:#x}, {start:#x})"
                        )
                    elif size != opt.size:
                        event("revival: wrong size")
                        want_lines.append(
                            f"KHO reserve-mem '{opt.name}' has wrong size "
                            f"({size:#x} != {opt.size:#x})"
                        )
                    else:
                        want_lines.append(f"Revived memory reservation '{opt.name}' from KHO")
                        got = actual.get(opt.name)
                        assert got is not None and (got.start, got.size) == (start, size)
                        old = old_table.get(opt.name)
                        born = old.in_scratch if old is not None and old.start == start else False
                        event("revival: revived")
                        content = bytearray(k.mem.read(start, size))
                        ml.table.append(RefRegion(opt.name, start, size, born, content))
                        names.append(opt.name)
                        continue
            got = actual.get(opt.name)
            if got is None or got.size != opt.size or got.start % opt.eff_align:
                # only scratch-only mode can run out of room (the lists only grew since)
                assert ho is not None and not fits(free, opt.size, opt.eff_align), opt
                event("boot: fresh region did not fit in scratch")
                continue
            if ho is not None:
                assert covered(ml.scratch, got.start, got.size), f"{opt.name} outside scratch"
            content = bytearray(k.mem.read(got.start, got.size))
            if cold:
                assert content == bytes(got.size), "a cold boot starts with zeroed RAM"
            ml.table.append(RefRegion(opt.name, got.start, got.size, ho is not None, content))
            names.append(opt.name)
        assert [r.name for r in k.reserve_mem.table] == names
        if ho is None or not ho.memblock_problem:
            assert [ln for ln in k.log.lines() if ln.startswith(ML_REVIVAL_PREFIXES)] == want_lines

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def ml_state_matches(self) -> None:
        """debugfs as spec §2.1 lists it, the files' contents, preserved bytes and blocks."""
        if not self.ml_mode:
            return
        k, ml = self.k, self.mlr
        assert k.kexec.kexec_loaded_show() == ("1\n" if ml.loaded is not None else "0\n")
        assert [(r.name, r.start, r.size) for r in k.reserve_mem.table] == [
            (r.name, r.start, r.size) for r in ml.table
        ]
        for span in self.ml_spans():
            assert k.mem.read(span.start, span.size) == span.shadow, f"bytes at {span.start:#x}"
        areas = [(a, sz) for a, sz in ml.scratch if sz]
        for span in [*ml.items, *(r for r in ml.table if not r.in_scratch)]:
            assert not any(overlaps(a, sz, span.start, span.size) for a, sz in areas)
        if ml.era is None:
            return
        kho = self.ml_kho
        assert kho.kho_enable == ml.kho_enable and kho.debugfs == ml.debugfs
        expected: dict[str, DebugfsEntry] = {}
        if ml.debugfs:
            state = ("handover_" if ml.handover else "") + ("finalized" if ml.finalized else "boot")
            expected = debugfs_expected(
                ml.era, state, [n for n, _ in ml.added], ml.in_subtrees if ml.handover else []
            )
            expected.update(
                {f"kho/out/sub_fdts/{n}": DebugfsEntry("blob", 0o400) for n in ml.stale}
            )
        assert debugfs_listing(kho) == expected
        if not ml.debugfs:
            return
        assert kho.finalize_show() == ("1\n" if ml.finalized else "0\n")
        assert kho.scratch_phys_show() == "".join(f"0x{a:x}\n" for a, _ in ml.scratch)
        assert kho.scratch_len_show() == "".join(f"0x{s:x}\n" for _, s in ml.scratch)
        assert set(kho.preserved_blocks()) == ml.preserved
        if kho.out_fdt is not None:
            blob = kho.blob_read(kho.out_fdt, 0, PAGE)
            if ml.era not in TOGGLE_ERAS:
                assert kho.out_fdt.size == 152  # its size at creation (spec §2.1)
                blob = k.mem.read(kho.fdt_page, int(struct.unpack(">I", blob[4:8])[0]))
            assert fdt_check_full(blob) == 0
        # incoming blobs only where the map preserved their pages: a stale handover's pages
        # are free memory to this kernel, which may reuse them (spec §4.4)
        kept = blocks_to_ranges(ml.kept_blocks)
        incoming = [b for b in (kho.in_fdt, *kho.in_sub_fdts) if b and covered(kept, b.phys, PAGE)]
        for b in [*kho.out_sub_fdts, *incoming]:
            data = kho.blob_read(b, 0, b.size)
            assert int(struct.unpack(">I", data[4:8])[0]) == b.size, b.name
            assert fdt_check_full(data) == 0, f"{b.name} fails fdt_check_full"
        stale = [n for n in ml.stale]
        assert [b.name for b in kho.out_sub_fdts] == [n for n, _ in ml.added] + stale
        if ml.kept_blocks:
            noinit = [
                (r.base, r.size) for r in k.memblock.reserved if r.flags & MEMBLOCK_RSRV_NOINIT
            ]
            for span in ml.kept:
                assert covered(noinit, span.start, span.size), "preserved memory unreserved"


def kern_size(k: Kernel, limit: int = U64_ALL, exclude: Iterable[tuple[int, int]] = ()) -> int:
    """Spec §3.2 K(limit, none): RSRV_KERN reservations up to ``limit`` as they were
    before the scratch areas (``exclude``) were taken."""
    total = 0
    skip = [(a, a + sz) for a, sz in exclude if sz]
    for r in sorted(k.memblock.reserved, key=lambda r: r.base):
        if r.base > limit:
            break
        if not r.flags & MEMBLOCK_RSRV_KERN:
            continue
        end = limit if r.base + r.size > limit else r.base + r.size
        size = end - r.base
        for a, b in skip:
            size -= max(0, min(b, end) - max(a, r.base))
        total += size
    return total


class KhoMachine(MainlineRules):
    """The machine under test plus the reference; every rule predicts, acts, compares.

    The release is drawn per test case: ``v4`` runs the rules of this class against the
    v4 reference (:class:`Ref`), every other release the rules of :class:`MainlineRules`
    against :class:`MlRef`; ``write_region``, ``bad_load``, ``unload``, ``kexec_exec``,
    ``reboot`` and the generic invariants serve both.
    """

    def __init__(self) -> None:
        super().__init__()
        self.m: Machine | None = None
        self.ref: Ref | None = None
        self.ml: MlRef | None = None
        self.release = "v4"
        self.log_kernel: Kernel | None = None
        self.log_seen: list[object] = []

    @property
    def v4(self) -> bool:
        return self.ref is not None and self.m is not None

    # -- helpers -----------------------------------------------------------------------------
    @property
    def k(self) -> Kernel:
        assert self.m is not None
        return self.m.kernel

    @property
    def r(self) -> Ref:
        assert self.ref is not None
        return self.ref

    def expect_error(self, code: int, fn: Callable[..., object], *args: object) -> KernelError:
        try:
            fn(*args)
        except KernelError as exc:
            assert exc.errno == code, f"expected {errno.errorcode[code]}, got {exc.name} ({exc})"
            return exc
        raise AssertionError(f"expected {errno.errorcode[code]}, the call succeeded")

    def total_fdt_size(self) -> int:
        return fdt_total_size(r.name for r in self.r.table)

    # -- setup -------------------------------------------------------------------------------
    @initialize(
        release=st.sampled_from(RELEASES_UNDER_TEST), nodes=st.sampled_from([1, 2]), data=st.data()
    )
    def boot_machine(self, release: str, nodes: int, data: st.DataObject) -> None:
        self.release = release
        if release == "v4":
            memory = data.draw(st.sampled_from([1 << 30, 2 << 30]), label="memory")
            cfg = data.draw(configs, label="cmdline")
            self.m = Machine.create(memory=memory, nodes=nodes, cmdline=cfg.render())
            self.ref = Ref(cfg=cfg, cold_cfg=cfg)
            self.after_boot(cold=True, image=None)
            return
        memory = data.draw(st.sampled_from([1 << 30, 2 << 30, 4 << 30]), label="memory")
        mcfg = data.draw(ml_configs, label="cmdline")
        self.m = Machine.create(
            memory=memory,
            nodes=nodes,
            cmdline=mcfg.render(),
            release=release,
            drivers=[StatefulKhoDriver],
        )
        self.ml = MlRef(release, RELEASE_ERA.get(release), mcfg, mcfg)
        self.ml_after_boot(cold=True, image=None, ho=None)

    def teardown(self) -> None:
        if self.m is not None:
            self.m.close()

    # -- sysfs rules -------------------------------------------------------------------------
    def kho_switch_on(self) -> bool:
        if self.v4:
            return self.r.sysfs
        return self.ml_mode and self.mlr.debugfs

    @precondition(lambda self: self.kho_switch_on())
    @rule(data=st.data())
    def write_active(self, data: st.DataObject) -> None:
        """v4 ``active`` (spec 3.3) or mainline ``out/finalize`` (spec §2.3)."""
        if self.v4:
            self.store_active(*data.draw(st.sampled_from(ACTIVE_BUFS), label="active"))
        else:
            self.ml_write_finalize(data.draw(st.sampled_from(FINALIZE_BUFS), label="finalize"))

    def store_active(self, raw: bytes, value: bool | None) -> bool:
        """Write ``active`` and check it against spec 3.3/4.1; True when active afterwards."""
        kho, ref = self.k.kho, self.r
        before = len(self.k.log.records)
        if value is None:
            self.expect_error(errno.EINVAL, kho.active_store, raw)
        elif value and not ref.active:
            err = serialize_error(ref.dt_max, self.total_fdt_size(), bool(ref.table))
            if err:
                self.expect_error(errno.EINVAL, kho.active_store, raw)
                event(f"activation failed: {err}")
                assert [r.text for r in self.k.log.records[before:]] == [
                    f"KHO: failed to serialize state: {err}"
                ]
                return False
            kho.active_store(raw)
            ref.active = True
            assert kho.fdt is not None and len(kho.fdt) == self.total_fdt_size()
            assert fdt_regions(kho.fdt) == [(r.name, r.start, r.size) for r in ref.table]
        else:  # a no-op, or an abort (spec 4.5)
            kho.active_store(raw)
            ref.active = bool(value)
        assert len(self.k.log.records) == before, "activation/abort must log nothing on success"
        return ref.active

    @precondition(lambda self: self.r.sysfs if self.v4 else self.ml_can_preserve())
    @rule(data=st.data())
    def kho_use(self, data: st.DataObject) -> None:
        """v4: ``dt_max`` writes (spec 3.4); mainline: the test driver preserves memory."""
        if self.v4:
            self.write_dt_max(data)
        else:
            self.ml_preserve(data)

    def write_dt_max(self, data: st.DataObject) -> None:
        kho, ref = self.k.kho, self.r
        if data.draw(st.integers(0, 5), label="bad") == 0:
            self.expect_error(
                errno.EINVAL, kho.dt_max_store, data.draw(st.sampled_from(DT_MAX_BAD))
            )
            return
        total = self.total_fdt_size()
        value = data.draw(
            st.one_of(
                st.sampled_from(DT_MAX_VALUES),
                st.integers(total - 12, total + 2),
                st.integers(0, 1 << 16),
            ),
            label="value",
        )
        raw = render_dt_max(
            value,
            data.draw(st.sampled_from(DT_MAX_FORMATS)),
            data.draw(st.booleans()),
            data.draw(st.booleans()),
        )
        if ref.active:
            self.expect_error(errno.EBUSY, kho.dt_max_store, raw)
        else:
            kho.dt_max_store(raw)
            ref.dt_max = value

    # -- RAM ---------------------------------------------------------------------------------
    def region_table(self) -> list[RefRegion | MlItem]:
        """What the operator writes into: regions, and preserved items (mainline: preserved
        memory stays live, what is written before ``kexec -e`` is handed over)."""
        if self.v4:
            return list(self.r.table)
        return [*self.mlr.table, *self.mlr.items] if self.ml_mode else []

    @precondition(lambda self: bool(self.region_table()))
    @rule(data=st.data())
    def write_region(self, data: st.DataObject) -> None:
        table = self.region_table()
        region = table[data.draw(st.integers(0, len(table) - 1), label="region index")]
        off = data.draw(st.integers(0, region.size - 1), label="offset")
        length = data.draw(st.integers(1, min(region.size - off, 3 * PAGE)), label="length")
        payload = random.Random(data.draw(st.integers(0, 1 << 32), label="seed")).randbytes(length)
        self.write_ram(region.start + off, payload)

    def write_ram(self, addr: int, payload: bytes) -> None:
        if not self.v4:
            self.ml_write_ram(addr, payload)
            return
        assert self.m is not None
        self.m.mem.write(addr, payload)
        for region in self.r.table:  # regions may alias (the scratch hazard)
            region.patch(addr, payload)

    # -- kexec -------------------------------------------------------------------------------
    def draw_next_config(self, data: st.DataObject) -> Config:
        """The next kernel's command line: mostly a variation of the current one."""
        cur = self.r.cfg
        kind = data.draw(
            st.sampled_from(
                [
                    "same",
                    "same",
                    "same",
                    "resize",
                    "realign",
                    "drop",
                    "add",
                    "kho_off",
                    "kho_on",
                    "scratch",
                    "fresh",
                ]
            ),
            label="next cmdline",
        )
        regions = list(cur.regions)
        if kind in ("resize", "realign", "drop") and regions:
            i = data.draw(st.integers(0, len(regions) - 1), label="region index")
            if kind == "resize":
                regions[i] = replace(regions[i], size=data.draw(st.sampled_from(SIZES)))
            elif kind == "realign":
                regions[i] = replace(regions[i], align=data.draw(st.sampled_from(ALIGNS)))
            else:
                del regions[i]
        elif kind == "add":
            regions.append(data.draw(region_opts))
        elif kind == "kho_off":
            return replace(cur, kho="off")
        elif kind == "kho_on":
            return replace(cur, kho="on")
        elif kind == "scratch":
            return replace(cur, scratch=data.draw(st.sampled_from(SCRATCH_VALUES)))
        elif kind == "fresh":
            return data.draw(configs)
        return replace(cur, regions=tuple(regions))

    @rule(data=st.data())
    def file_load(self, data: st.DataObject) -> None:
        if not self.v4:
            self.ml_file_load(data)
            return
        kernel = data.draw(st.sampled_from(KERNELS))
        initrd = data.draw(st.sampled_from(INITRDS))
        flags = data.draw(st.sampled_from([0, 0, 0, KEXEC_FILE_NO_INITRAMFS]))
        self.kexec_file_load(kernel, initrd, self.draw_next_config(data), flags)

    def kexec_file_load(
        self, kernel: KernelFile, initrd: bytes | None, cfg: Config, flags: int = 0
    ) -> bool:
        """``kexec -l -s``: predict placement (spec 9.1) and the errno; True if loaded."""
        k, ref = self.k, self.r
        if flags & KEXEC_FILE_NO_INITRAMFS:
            initrd = None
        fdt = bytes(k.kho.fdt) if ref.active and k.kho.fdt is not None else None
        assert (fdt is not None) == ref.active
        reqs = segment_requests(fdt, len(ref.scratch), kernel, initrd, 0)
        if ref.active:
            ranges = [(a, a + sz - 1) for a, sz in ref.scratch if sz]
        else:
            ranges = list(reversed(system_ram(k)))
        addrs, failed = place(reqs, ranges, top_down=True)
        before = len(k.log.records)
        if failed is not None:
            self.expect_error(
                errno.EADDRNOTAVAIL,
                k.kexec.kexec_file_load,
                kernel.data,
                initrd,
                cfg.render(),
                flags,
            )
            event(f"file load: EADDRNOTAVAIL at {reqs[failed].name}")
            want = [FILL_LINE] if reqs[failed].name == "kho-fdt" else []
            assert [r.text for r in k.log.records[before:]] == want
            return False
        k.kexec.kexec_file_load(kernel.data, initrd, cfg.render(), flags)
        assert len(k.log.records) == before
        image = k.kexec.kexec_image
        assert image is not None
        assert [(s.name, s.mem) for s in image.segments] == [
            (q.name, a) for q, a in zip(reqs, addrs, strict=True)
        ]
        if fdt is not None:
            assert image.kho_fdt is not None and image.kho_fdt.buffer == fdt
            for s in image.segments:
                assert covered(ref.scratch, s.mem, s.memsz), f"segment {s.name} outside scratch"
                for region in ref.table:
                    assert region.in_scratch or not overlaps(
                        s.mem, s.memsz, region.start, region.size
                    )
        ref.loaded = RefImage(cfg, fdt, list(ref.scratch), image)
        return True

    @rule(data=st.data())
    def user_load(self, data: st.DataObject) -> None:
        if not self.v4:
            self.ml_user_load(data)
            return
        """``kexec -l`` without ``-s``: bottom-up from 16 MiB in RAM, never KHO data (9.3)."""
        k, ref = self.k, self.r
        kernel = data.draw(st.sampled_from(KERNELS))
        initrd = data.draw(st.sampled_from(INITRDS))
        cfg = self.draw_next_config(data)
        reqs = segment_requests(None, 0, kernel, initrd, SZ_16M)
        addrs, failed = place(reqs, system_ram(k), top_down=False)
        assert failed is None, "user-space loads fit in RAM by construction"
        k.kexec.kexec_load(kernel.data, initrd, cfg.render())
        image = k.kexec.kexec_image
        assert image is not None and image.kho_fdt is None
        assert [(s.name, s.mem) for s in image.segments] == [
            (q.name, a) for q, a in zip(reqs, addrs, strict=True)
        ]
        ref.loaded = RefImage(cfg, None, [], image)

    @rule(
        case=st.sampled_from(
            ["unknown flag", "crash", "empty kernel", "long cmdline", "empty user kernel"]
        )
    )
    def bad_load(self, case: str) -> None:
        """Failed loads leave any loaded image in place (spec 9.1 step 6)."""
        kx = self.k.kexec
        if case == "unknown flag":
            self.expect_error(errno.EINVAL, kx.kexec_file_load, PLAIN_KERNEL, None, "x", 0x10)
        elif case == "crash":
            self.expect_error(
                errno.EOPNOTSUPP, kx.kexec_file_load, PLAIN_KERNEL, None, "x", KEXEC_FILE_ON_CRASH
            )
        elif case == "empty kernel":
            self.expect_error(errno.ENOEXEC, kx.kexec_file_load, b"", None, "x")
        elif case == "long cmdline":
            self.expect_error(errno.EINVAL, kx.kexec_file_load, PLAIN_KERNEL, None, "a" * 2048)
        else:
            self.expect_error(errno.ENOEXEC, kx.kexec_load, b"", None, "x")

    @rule(by_flag=st.booleans())
    def unload(self, by_flag: bool) -> None:
        if by_flag:
            self.k.kexec.kexec_file_load(b"", None, "", KEXEC_FILE_UNLOAD)
        else:
            self.k.kexec.kexec_unload()
        if self.v4:
            self.r.loaded = None
        else:
            self.mlr.loaded = None

    @rule()
    def kexec_exec(self) -> None:
        if self.v4:
            self.exec_()
        else:
            self.ml_exec()

    def exec_(self) -> None:
        assert self.m is not None
        ref = self.r
        image = ref.loaded
        if image is None:
            old = self.k
            self.expect_error(errno.EINVAL, self.m.kexec_exec)
            assert self.k is old
            return
        for seg in image.kimage.segments:  # what relocate_kernel writes (spec 9.5)
            for region in ref.table:
                if not overlaps(seg.mem, seg.memsz, region.start, region.size):
                    continue
                assert not image.kho or region.in_scratch, f"{seg.name} lands on {region.name!r}"
                lo, hi = max(seg.mem, region.start), min(seg.end, region.start + region.size)
                body = seg.buffer[lo - seg.mem : hi - seg.mem]
                region.patch(lo, body + bytes(hi - lo - len(body)))
        self.m.kexec_exec()
        ref.generation += 1
        ref.cfg = image.cfg
        self.after_boot(cold=False, image=image)

    @precondition(lambda self: self.kho_switch_on())
    @rule(data=st.data())
    def kho_cycle(self, data: st.DataObject) -> None:
        """Activate, ``kexec -l -s``, ``kexec -e``: the full handover, to reach deep generations."""
        if not self.v4:
            self.ml_cycle(data)
            return
        if not self.store_active(b"1", True):
            return
        kernel = data.draw(st.sampled_from(KERNELS[:2]))
        if self.kexec_file_load(
            kernel, data.draw(st.sampled_from(INITRDS[:4])), self.draw_next_config(data)
        ):
            self.exec_()

    @rule(data=st.data())
    def reboot(self, data: st.DataObject) -> None:
        assert self.m is not None
        if not self.v4:
            mcfg = data.draw(st.none() | ml_configs, label="new firmware cmdline")
            self.m.reboot(None if mcfg is None else mcfg.render())
            ml = self.mlr
            if mcfg is not None:
                ml.cold_cfg = mcfg
            ml.cfg, ml.generation = ml.cold_cfg, 0
            self.ml_after_boot(cold=True, image=None, ho=None)
            return
        cfg = data.draw(st.none() | configs, label="new firmware cmdline")
        self.m.reboot(None if cfg is None else cfg.render())
        ref = self.r
        if cfg is not None:
            ref.cold_cfg = cfg
        ref.cfg = ref.cold_cfg
        ref.generation = 0
        self.after_boot(cold=True, image=None)

    # -- boots -------------------------------------------------------------------------------
    def after_boot(self, cold: bool, image: RefImage | None) -> None:
        """Check a fresh boot against the spec and rebuild the reference for it."""
        assert self.m is not None
        k, ref, cfg = self.k, self.r, self.r.cfg
        handover = image is not None and image.kho
        old_table = {r.name: r for r in ref.table}
        lines = k.log.lines()
        assert k.cmdline == cfg.render()
        assert (
            lines[0].endswith(f"#{ref.generation + 1} SMP PREEMPT_DYNAMIC")
            and lines[1] == f"Command line: {k.cmdline}"
        )
        assert self.m.generation == ref.generation
        assert (FOUND_LINE in lines) == handover and k.handover == handover
        assert [ln for ln in lines if ln.startswith(EARLY_PREFIXES)] == cfg.early_lines()
        ref.active, ref.dt_max, ref.loaded = False, DT_MAX_DEFAULT, None
        ref.table, ref.preserved, ref.dt_fw = [], [], None
        ref.scratch = list(image.scratch) if handover and image is not None else []
        if k.panic is not None:
            # Only scratch-only mode can starve the early allocations (spec 6.4 Decision).
            event("boot: panic in scratch-only mode")
            assert handover and k.panic == PANIC_LINE and lines[-1] == PANIC_LINE
            free = free_ranges(ref.scratch, ((r.base, r.size) for r in k.memblock.reserved))
            sizes = [PAGE_TABLES] + [k.mem.node_size(n) >> 6 for n in range(k.mem.nr_nodes)]
            assert not all(fits(free, s, PAGE) for s in sizes), "panicked although everything fits"
            # The tree now shows only machine/ (docs/decisions.md): the operator reboots.
            self.dmesg_only_grows()
            self.memblock_lists_are_minimal()
            assert self.m is not None
            self.m.reboot()
            ref.cfg, ref.generation = ref.cold_cfg, 0
            self.after_boot(cold=True, image=None)
            return
        event(f"boot: {'cold' if cold else 'handover' if handover else 'kexec without KHO'}")
        if ref.generation >= 3:
            event("boot: generation >= 3")
        assert not k.memblock.kho_scratch_only
        incoming: dict[str, tuple[int, int]] = {}
        if handover:
            assert image is not None and image.fdt is not None
            # kexec -e copied every segment and zero-filled it to its memory size (spec 9.5);
            # a handover boot writes no RAM, so the copies are still intact.
            for seg in image.kimage.segments:
                want = seg.buffer[: seg.memsz]
                assert k.mem.read(seg.mem, seg.memsz) == want + bytes(seg.memsz - len(want)), (
                    seg.name
                )
            incoming = {name: (start, size) for name, start, size in fdt_regions(image.fdt)}
            for name, (start, size) in incoming.items():
                ref.preserved.append((start, size, old_table[name].in_scratch))
            fdt_seg, table_seg = image.kimage.kho_fdt, image.kimage.kho_scratch
            assert fdt_seg is not None and table_seg is not None
            ref.preserved += [
                (fdt_seg.mem, len(image.fdt), True),
                (table_seg.mem, len(table_seg.buffer), True),
            ]
        self.check_table(cold, handover, cfg, incoming, old_table)
        # KHO's own state (spec 6.2 step 8, 6.7, 7.1)
        ref.sysfs = cfg.kho_enabled
        assert k.kho.sysfs == ref.sysfs
        if handover:
            assert image is not None
            ref.dt_fw = image.fdt if cfg.kho_enabled else None
            for a, sz in ref.scratch:
                assert sz == 0 or covered(
                    ((r.base, r.size) for r in k.memblock.memory if r.flags & MEMBLOCK_KHO_SCRATCH),
                    a,
                    sz,
                ), "inherited scratch not KHO_SCRATCH in memory"
        else:
            assert not any(r.flags & MEMBLOCK_KHO_SCRATCH for r in k.memblock.memory)
            if cfg.kho_enabled:
                ref.scratch = [(a.addr, a.size) for a in k.kho.scratch]
                self.check_scratch_sizes(cfg)
        assert k.kho.dt_fw == ref.dt_fw

    def check_table(
        self,
        cold: bool,
        handover: bool,
        cfg: Config,
        incoming: dict[str, tuple[int, int]],
        old_table: dict[str, RefRegion],
    ) -> None:
        """Walk the ``reserve_mem=`` options as spec 2.4/6.5 do and compare the table."""
        k, ref = self.k, self.r
        actual = {r.name: r for r in k.reserve_mem.table}
        want_lines: list[str] = []
        names: list[str] = []
        free = free_ranges(ref.scratch, ((r.base, r.size) for r in k.memblock.reserved))
        for opt in cfg.regions:
            if len(names) >= 8 or not opt.valid or opt.name in names:
                continue
            if opt.name in incoming:
                start, size = incoming[opt.name]
                if start % opt.eff_align:
                    event("revival: wrong alignment")
                    want_lines.append(
                        f"KHO reserved_mem '{opt.name}' has wrong alignment"
                        f" ({opt.eff_align:#x}, {start:#x})"
                    )
                elif size != opt.size:
                    event("revival: wrong size")
                    want_lines.append(
                        f"KHO reserved_mem '{opt.name}' has wrong size ({size:#x} != {opt.size:#x})"
                    )
                else:
                    want_lines.append(f"Revived memory reservation '{opt.name}' from KHO")
                    got = actual.get(opt.name)
                    assert got is not None and (got.start, got.size) == (start, size), (
                        f"{opt.name} not revived"
                    )
                    old = old_table[opt.name]
                    where = "in" if old.in_scratch else "outside"
                    event(f"revival: revived a region born {where} scratch")
                    ref.table.append(RefRegion(opt.name, start, size, old.in_scratch, old.shadow))
                    names.append(opt.name)
                    continue
            got = actual.get(opt.name)
            if got is None or got.size != opt.size or got.start % opt.eff_align:
                # Only scratch-only mode can run out of room (the lists only grew since).
                # A failed allocation records no name, so a later option of the same
                # name may still take it (mm/memblock.c reserve_mem).
                assert handover and not fits(free, opt.size, opt.eff_align), (
                    f"{opt.name} not allocated"
                )
                event("boot: fresh region did not fit in scratch")
                continue
            assert got.size == opt.size and got.start % opt.eff_align == 0
            if handover:
                assert covered(ref.scratch, got.start, got.size), (
                    f"fresh {opt.name} outside scratch"
                )
            content = k.mem.read(got.start, got.size)
            if cold:
                assert content == bytes(got.size), "a cold boot must start with zeroed RAM"
            ref.table.append(RefRegion(opt.name, got.start, got.size, handover, bytearray(content)))
            names.append(opt.name)
        assert [r.name for r in k.reserve_mem.table] == names
        assert [ln for ln in k.log.lines() if ln.startswith(REVIVAL_PREFIXES)] == want_lines

    def check_scratch_sizes(self, cfg: Config) -> None:
        """Scratch of a boot without handover (spec 7.1, 7.2, 7.4)."""
        k, ref = self.k, self.r
        nodes = k.mem.nr_nodes
        sizes = [sz for _, sz in ref.scratch]
        assert len(sizes) == nodes + 1
        scale = cfg.scale()
        if scale is None:
            assert cfg.scratch is not None
            g, p = (parse_size(v) for v in cfg.scratch.split(","))
            assert sizes == [round_up(g, SZ_2M)] + [round_up(p, SZ_2M)] * nodes
            return
        # S for the global area: every RSRV_KERN byte before any area existed, i.e. all
        # RSRV_KERN now minus the areas; for a node: its node-tagged memory map.
        kern = sum(r.size for r in k.memblock.reserved if r.flags & MEMBLOCK_RSRV_KERN)
        want_global = round_up((kern - sum(sizes)) * scale // 100, SZ_2M)
        want_nodes = [
            round_up((k.mem.node_size(n) >> 6) * scale // 100, SZ_2M) for n in range(nodes)
        ]
        assert sizes == [want_global, *want_nodes]

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def dmesg_only_grows(self) -> None:
        if self.m is None:
            return
        records = list(self.k.log.records)
        if self.k is self.log_kernel:
            assert records[: len(self.log_seen)] == self.log_seen, (
                "dmesg records changed or vanished"
            )
        assert all(a.usec <= b.usec for a, b in pairwise(records))
        self.log_kernel, self.log_seen = self.k, list(records)

    @invariant()
    def memblock_lists_are_minimal(self) -> None:
        if self.m is None:
            return
        for lst in (self.k.memblock.memory, self.k.memblock.reserved):
            regions = lst.regions
            assert all(r.size > 0 for r in regions), f"{lst.name}: empty entry"
            for a, b in pairwise(regions):
                assert a.base + a.size <= b.base, f"{lst.name}: {a} and {b} unsorted or overlapping"
                assert not (a.base + a.size == b.base and a.nid == b.nid and a.flags == b.flags), (
                    f"{lst.name}: {a} and {b} should have merged"
                )

    @invariant()
    def sysfs_state_matches(self) -> None:
        if not self.v4:
            return
        k, ref = self.k, self.r
        assert k.kexec.kexec_loaded_show() == ("1\n" if ref.loaded is not None else "0\n")
        assert (ref.loaded is None) or k.kexec.kexec_image is ref.loaded.kimage
        assert k.kho.sysfs == ref.sysfs
        if ref.sysfs:
            assert k.kho.active_show() == ("1\n" if ref.active else "0\n")
            assert k.kho.dt_max_show() == f"0x{ref.dt_max:x}\n"
            assert k.kho.scratch_phys_show() == "".join(f"0x{a:x}\n" for a, _ in ref.scratch)
            assert k.kho.scratch_len_show() == "".join(f"0x{s:x}\n" for _, s in ref.scratch)
        assert (k.kho.fdt is not None) == ref.active
        if k.kho.fdt is not None:
            assert fdt_check_full(k.kho.fdt) == 0
        assert k.kho.dt_fw == ref.dt_fw
        if k.kho.dt_fw is not None:
            assert fdt_check_full(k.kho.dt_fw) == 0

    @invariant()
    def regions_and_scratch(self) -> None:
        """Preserved bytes and addresses; scratch disjoint from itself and outside memory."""
        if not self.v4:
            return
        k, ref = self.k, self.r
        assert [(r.name, r.start, r.size) for r in k.reserve_mem.table] == [
            (r.name, r.start, r.size) for r in ref.table
        ]
        for region in ref.table:  # exact comparison: stronger than, and cheaper than, a digest
            assert k.mem.read(region.start, region.size) == region.shadow, (
                f"bytes of {region.name!r} changed"
            )
        areas = [(a, sz) for a, sz in ref.scratch if sz]
        for i, (a, asz) in enumerate(areas):
            for b, bsz in areas[i + 1 :]:
                assert not overlaps(a, asz, b, bsz), "scratch areas overlap"
        outside = [(r.start, r.size) for r in ref.table if not r.in_scratch]
        outside += [(s, sz) for s, sz, in_scratch in ref.preserved if not in_scratch]
        for start, size in outside:
            assert not any(overlaps(a, asz, start, size) for a, asz in areas), (
                "scratch overlaps preserved memory"
            )
        for region in ref.table:
            if region.in_scratch:
                assert covered(areas, region.start, region.size)
        reserved = [(r.base, r.size) for r in k.memblock.reserved]
        for start, size, in_scratch in ref.preserved:
            where = f"preserved range {start:#x}+{size:#x}"
            assert covered(reserved, start, size), f"{where} not reserved"
            if not in_scratch:  # nothing else can sit there: a plain (NONE) reservation (3.9)
                flags = {
                    r.flags for r in k.memblock.reserved if overlaps(r.base, r.size, start, size)
                }
                assert flags == {0}, f"{where} has flags {flags}"


KhoMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    # KHO_FS_STATEFUL_SHRINK=0: report the first failing sequence as found (debugging)
    phases=[
        p for p in Phase if p != Phase.shrink or os.environ.get("KHO_FS_STATEFUL_SHRINK") != "0"
    ],
)
TestKhoMachine = KhoMachine.TestCase


# -- the sequential-write buffer grows invisibly (kho_fs/model/fdt.py) -----------------------------


def _sw_ops_direct(size: int, ops: list[tuple[str, str, int]]) -> tuple[list[int], bytes | None]:
    """The same calls straight into one ``size``-byte buffer, as the kernel makes them."""
    buf = bytearray(size)
    results = [int(libfdt.fdt_create(buf, size))]
    if results[0]:
        return results, None
    results += [int(libfdt.fdt_finish_reservemap(buf)), int(libfdt.fdt_begin_node(buf, ""))]
    for op, name, n in ops:
        if op == "node":
            results.append(int(libfdt.fdt_begin_node(buf, name)))
        elif op == "prop":
            results.append(int(libfdt.fdt_property_stub(buf, name, bytes([n % 251]) * n, n)))
        else:
            results.append(int(libfdt.fdt_end_node(buf)))
    results += [int(libfdt.fdt_end_node(buf)), int(libfdt.fdt_finish(buf))]
    return results, None if results[-1] else bytes(buf[: libfdt.fdt_totalsize(buf)])


def _sw_ops_model(size: int, ops: list[tuple[str, str, int]]) -> tuple[list[int], bytes | None]:
    sw = fdt_module.FdtSw(size)
    results = [sw.create_error]
    if results[0]:
        return results, None
    results += [sw.finish_reservemap(), sw.begin_node("")]
    for op, name, n in ops:
        if op == "node":
            results.append(sw.begin_node(name))
        elif op == "prop":
            results.append(sw.property(name, bytes([n % 251]) * n))
        else:
            results.append(sw.end_node())
    results += [sw.end_node(), sw.finish()]
    return results, None if results[-1] else sw.blob()


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 700),
    first=st.sampled_from([48, 64, 100, 256]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["node", "prop", "end"]),
            st.sampled_from(NAMES[:5]),
            st.integers(0, 120),
        ),
        max_size=12,
    ),
)
def test_fdt_sw_growth_matches_one_full_buffer(
    size: int, first: int, ops: list[tuple[str, str, int]]
) -> None:
    """Starting small and growing on demand gives every error and byte a ``dt_max``-sized
    buffer gives (the fix that stops activation from zeroing up to 2 GiB)."""
    saved = fdt_module.FDT_SW_INITIAL
    fdt_module.FDT_SW_INITIAL = first
    try:
        assert _sw_ops_model(size, ops) == _sw_ops_direct(size, ops)
    finally:
        fdt_module.FDT_SW_INITIAL = saved
