"""A stateful property test of the whole machine model (hypothesis ``RuleBasedStateMachine``).

Random sequences of what user space and the operator can do to an emulated machine
(activate, abort, ``dt_max`` writes, writes into ``reserve_mem`` regions, ``kexec -l -s``,
``kexec -l``, unload, ``kexec -e``, cold reboot, next-kernel command lines that keep, resize,
drop, add or re-align regions, turn KHO off or change ``kho_scratch=``) are run against a
small *reference model* kept in this file, written from the spec (kho-v4.md) rather than
from the model's code: which regions must survive a kexec and with which bytes and start
addresses, what ``active``/``dt_max``/``kexec_loaded`` read, which errno each step must give,
where each kexec segment goes (spec 9.1), and which dmesg lines a boot must print.

After every step the invariants of the whole machine are checked: preserved bytes (compared
exactly with the reference's copy, which is stronger and cheaper than a sha256) and
addresses, scratch areas disjoint from each other and from memory that lived outside
scratch, memblock lists sorted/disjoint/merged (spec 8.2), every emitted FDT passing
libfdt's full check, dmesg only growing within a boot, and the reference's states.

One v4 hazard is part of the reference, not an invariant violation: a region allocated on
a handover boot lives inside scratch (spec 6.5, "Hazard"), and once handed over again, the
next ``kexec -s`` may place segments on top of it. The reference therefore applies the
executed image's segments to its copy of RAM, exactly as ``kexec -e`` copies them; regions
allocated outside scratch must never be touched by a KHO image.

``KHO_FS_STATEFUL_EXAMPLES`` (default 1000) and ``KHO_FS_STATEFUL_STEPS`` (default 20)
size the run; the long campaign raises the first to 20,000 or more.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import pairwise

import libfdt
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from kho_model_helpers import FOUND_LINE, PLAIN_KERNEL, bzimage

from kho_fs.model import fdt as fdt_module
from kho_fs.model.errors import KernelError
from kho_fs.model.kernel import Kernel
from kho_fs.model.kexec import (
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
    Kimage,
)
from kho_fs.model.machine import Machine

EXAMPLES = int(os.environ.get("KHO_FS_STATEFUL_EXAMPLES", "1000"))
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


KERNELS = (
    KernelFile("plain", PLAIN_KERNEL, round_up(len(PLAIN_KERNEL), PAGE)),
    KernelFile("bz2M", bzimage(SZ_2M), SZ_2M),
    KernelFile("bz24M", bzimage(24 * SZ_1M), 24 * SZ_1M),
)
INITRDS = (None, None, b"", b"initrd!" * 700, b"\x5a" * (3 * SZ_1M))


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


class KhoMachine(RuleBasedStateMachine):
    """The machine under test plus the reference; every rule predicts, acts, compares."""

    def __init__(self) -> None:
        super().__init__()
        self.m: Machine | None = None
        self.ref: Ref | None = None
        self.log_kernel: Kernel | None = None
        self.log_seen: list[object] = []

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
        memory=st.sampled_from([1 << 30, 2 << 30]), nodes=st.sampled_from([1, 2]), cfg=configs
    )
    def boot_machine(self, memory: int, nodes: int, cfg: Config) -> None:
        self.m = Machine.create(memory=memory, nodes=nodes, cmdline=cfg.render())
        self.ref = Ref(cfg=cfg, cold_cfg=cfg)
        self.after_boot(cold=True, image=None)

    def teardown(self) -> None:
        if self.m is not None:
            self.m.close()

    # -- sysfs rules -------------------------------------------------------------------------
    @precondition(lambda self: self.r.sysfs)
    @rule(buf=st.sampled_from(ACTIVE_BUFS))
    def write_active(self, buf: tuple[bytes, bool | None]) -> None:
        self.store_active(*buf)

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

    @precondition(lambda self: self.r.sysfs)
    @rule(data=st.data())
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
    @precondition(lambda self: bool(self.r.table))
    @rule(data=st.data())
    def write_region(self, data: st.DataObject) -> None:
        region = data.draw(st.sampled_from(self.r.table), label="region")
        off = data.draw(st.integers(0, region.size - 1), label="offset")
        length = data.draw(st.integers(1, min(region.size - off, 3 * PAGE)), label="length")
        payload = random.Random(data.draw(st.integers(0, 1 << 32), label="seed")).randbytes(length)
        self.write_ram(region.start + off, payload)

    def write_ram(self, addr: int, payload: bytes) -> None:
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
        self.r.loaded = None

    @rule()
    def kexec_exec(self) -> None:
        self.exec_()

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

    @precondition(lambda self: self.r.sysfs)
    @rule(data=st.data())
    def kho_cycle(self, data: st.DataObject) -> None:
        """Activate, ``kexec -l -s``, ``kexec -e``: the full handover, to reach deep generations."""
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
            if got is None:
                # Only scratch-only mode can run out of room (the lists only grew since).
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
        if self.m is None:
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
        if self.m is None:
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
