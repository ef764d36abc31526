"""Fuzz every writable file of a live mount and judge each answer by the spec alone.

The campaign drives a mounted machine the way a careless or hostile root process would:
random payloads (empty to 8 KiB, NUL bytes, non-UTF-8, numbers at every boundary, valid
values often enough that activations, aborts, loads and ``dt_max`` changes really
happen) at random offsets, mostly through one long-lived descriptor per file
(``os.pwrite``, so tens of thousands of writes take seconds), sometimes through a fresh
``open`` with ``O_TRUNC``/``O_APPEND``/``O_RDWR``, plus ``ftruncate`` and probes of the
files that must refuse writing.

Every outcome is predicted *before* the write by a small oracle written from
``shared/spec/kho-v4.md`` and ``docs/decisions.md`` -- never from the model's code, so a
bug shared by model and oracle would need to be written twice.  The oracle keeps the
expected state (``active``, ``dt_max``, ``kexec_loaded``, the firmware command line, the
staging files and a shadow copy of every physical page the campaign wrote) and the
campaign compares it with what the mount shows at regular checkpoints, together with the
invariants that must hold whatever was written (memblock lists sorted and disjoint and
unchanged, ``dt`` present exactly while active, scratch table unchanged, one dmesg line
per failed activation with the spec's error number).

Two steps are taken on purpose, never at random: one KHO kexec (activate, load, ``exec``;
the regions must come back at the same address with the bytes the fuzzer wrote) and one
cold reboot (RAM must read as zeros afterwards).  ``machine/reboot`` and ``exec`` are
otherwise never written: the generator refuses any control payload that would run
``exec``.  A third deliberate step boots ``reserve_mem=`` names of every class the spec
accepts but a file system cannot take as they are (:data:`AWKWARD_NAMES`: ``.``, ``..``,
names with ``/``, a name next to that name plus ``/``, ``%``, bytes above 0x7f, UTF-8 or
not): once through ``machine/cmdline`` and a reboot, once as the command line of a KHO
kexec through ``machine/kexec/cmdline`` and ``control``; every region must then be
reachable under its documented spelling (:func:`region_spelling`) and ``machine/`` must
keep answering.  Such command lines are also among the random payloads of
``machine/cmdline`` and ``machine/kexec/cmdline``.

Where the spec leaves the answer open, the prediction is a documented set (a kexec load
with both an empty kernel and an over-long command line may give EINVAL or ENOEXEC) or the
input is not generated (``O_APPEND`` on windows onto memory, see ``fresh_flags``).

Use :data:`FUZZ_CMDLINE`, :data:`FUZZ_MEMORY` and :data:`FUZZ_NODES` for the mount; the
oracle's RAM map and FDT sizes are computed for them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

__all__ = [
    "AWKWARD_NAMES",
    "FUZZ_CMDLINE",
    "FUZZ_MEMORY",
    "FUZZ_NODES",
    "FUZZ_REGIONS",
    "MAINLINE_ERAS",
    "MAINLINE_FUZZ_ARGS",
    "MAINLINE_FUZZ_CMDLINE",
    "MAINLINE_FUZZ_MEMORY",
    "MAINLINE_FUZZ_REGIONS",
    "FuzzReport",
    "Refused",
    "Unexpected",
    "blob_write_outcome",
    "c_string",
    "debugfs_attr_value",
    "finalize_outcome",
    "kho_fdt_size",
    "kho_serialize_error",
    "kstrtobool",
    "kstrtoull",
    "out_subtrees",
    "q35_ram_map",
    "region_spelling",
    "reserve_mem_table",
    "run_fuzz",
    "run_mainline_fuzz",
    "sysfs_store_buffer",
]

#: Installed RAM of the fuzzed machine: 8 GiB gives RAM up to 10 GiB (decisions.md).
FUZZ_MEMORY = "8G"
#: Two nodes, so RAM has a node boundary (at 6 GiB) that ``dev/mem`` writes may straddle.
FUZZ_NODES = 2
#: Two regions with one-character names (FDT 307 bytes), explicit scratch sizes.
FUZZ_CMDLINE = "reserve_mem=2M:4096:a reserve_mem=1M:64:b kho=on kho_scratch=512M,256M"
#: What FUZZ_CMDLINE must give (spec 2.4): name -> size.
FUZZ_REGIONS = {"a": 2 << 20, "b": 1 << 20}
_FUZZ_SCRATCH_LEN = [512 << 20] + [256 << 20] * FUZZ_NODES  # spec 2.3 and 10 item 4

PAGE_SIZE = 4096
U64_MAX = (1 << 64) - 1
INT_MAX = (1 << 31) - 1
KHO_DT_MAX_DEFAULT = 10 << 20  # spec 3.4
COMMAND_LINE_SIZE = 2048  # decisions.md: at most 2047 bytes
KEXEC_STAGING_MAX = {"kernel": 1 << 30, "initrd": 1 << 30, "cmdline": 4096}  # decisions.md
KEXEC_FILE_UNLOAD, KEXEC_FILE_ON_CRASH, KEXEC_FILE_NO_INITRAMFS = 0x1, 0x2, 0x4  # spec 9.1
KEXEC_FILE_DEBUG = 0x8  # v6.7+ uapi: valid in v6.14, the v4 series' base
KEXEC_COMMANDS = (b"kexec_file_load", b"kexec_load", b"unload", b"exec")
FDT_MAGIC = b"\xd0\x0d\xfe\xed"

KHO = "sys/kernel/kho"
ACTIVE, DT_MAX, DT = f"{KHO}/active", f"{KHO}/dt_max", f"{KHO}/dt"
DT_FW = "sys/firmware/kho/dt_fw"
LOADED = "sys/kernel/kexec_loaded"
MEMBLOCK = "sys/kernel/debug/memblock"
DEV_MEM = "dev/mem"
CONTROL = "machine/kexec/control"
COLD_CMDLINE = "machine/cmdline"
STAGING = {name: f"machine/kexec/{name}" for name in KEXEC_STAGING_MAX}


# -- the oracle: spec rules, written independently of the model ----------------------------


class Refused(Exception):
    """A parser or store refuses its input with ``errno`` (the kernel's negative return)."""

    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


def c_string(buf: bytes) -> bytes:
    """Spec 3.2: stores parse the buffer as a C string, which ends at the first NUL."""
    return buf.split(b"\0", 1)[0]


def sysfs_store_buffer(data: bytes) -> bytes:
    """Spec 3.2 Decision (b): one write is one store of its first min(len, 4096) bytes."""
    return data[:PAGE_SIZE]


def kstrtobool(buf: bytes) -> bool:
    """Spec 2.6 (v6.14): the first one or two characters decide; ``e``/``d`` are errors."""
    s = c_string(buf)
    first, second = s[:1], s[1:2]
    if first and first in b"YyTt1":
        return True
    if first and first in b"NnFf0":
        return False
    if first and first in b"Oo" and second:
        if second in b"Nn":
            return True
        if second in b"Ff":
            return False
    raise Refused(errno.EINVAL)


_DIGITS = {
    8: frozenset(b"01234567"),
    10: frozenset(b"0123456789"),
    16: frozenset(b"0123456789abcdefABCDEF"),
}


def kstrtoull(buf: bytes) -> int:
    """Spec 2.7: kstrtoull with base 0 over a C string.

    One ``+``; ``0x`` + hex digit is hex, a leading ``0`` octal, else decimal; at least one
    digit; above 2^64 - 1 is ERANGE (checked before the tail); then at most one ``\\n``.
    """
    s = c_string(buf)
    i = 1 if s[:1] == b"+" else 0
    if s[i : i + 2] in (b"0x", b"0X") and s[i + 2 : i + 3] and s[i + 2] in _DIGITS[16]:
        base, i = 16, i + 2
    elif s[i : i + 1] == b"0":
        base = 8
    else:
        base = 10
    j = i
    while j < len(s) and s[j] in _DIGITS[base]:
        j += 1
    if j == i:
        raise Refused(errno.EINVAL)
    if int(s[i:j], base) > U64_MAX:
        raise Refused(errno.ERANGE)
    if s[j:] not in (b"", b"\n"):
        raise Refused(errno.EINVAL)
    return int(s[i:j], base)


def kho_fdt_size(names: Iterable[str]) -> int:
    """Spec 5.5: the FDT's total size for reserve_mem regions with these names."""
    names = list(names)
    if not names:
        return 111
    return 163 + sum(68 + 4 * -(-(len(n.encode("latin-1")) + 1) // 4) for n in names)


def kho_serialize_error(dt_max: int, names: Iterable[str]) -> int:
    """Spec 4.3: the error ``echo 1 > active`` logs for this ``dt_max`` (0: success)."""
    names = list(names)
    total = kho_fdt_size(names)
    if dt_max > INT_MAX:
        return -errno.ENOMEM
    if dt_max < 48:
        return -errno.EINVAL
    if dt_max < 103:
        return -3  # -FDT_ERR_NOSPACE
    if names and dt_max < total - 8:
        return -1  # NOTIFY_BAD from the reserve_mem participant
    if dt_max < total:
        return -3
    return 0


def q35_ram_map(installed: int) -> list[tuple[int, int]]:
    """decisions.md RAM map: ``[0, 0x9f000)``, ``[1 MiB, lowmem)``, ``[4 GiB, ...)``."""
    lowmem = installed if installed < 0xB0000000 else 2 << 30
    ranges = [(0, 0x9F000), (1 << 20, lowmem)]
    if installed > lowmem:
        ranges.append((4 << 30, (4 << 30) + installed - lowmem))
    return ranges


#: reserve_mem names by class (issue 8): all valid for the kernel (spec 2.4: 1-15 bytes,
#: not only whitespace, no FDT node-name check), none of them a file name as it is or
#: plain ASCII.  No whitespace (the kernel's isspace includes 0xA0) and no ``"`` (it
#: toggles quoting in next_arg), so each option stays one word.
AWKWARD_NAMES: dict[str, tuple[bytes, ...]] = {
    "dot": (b".", b".."),
    "slash": (b"/", b"a/b", b"/x", b"x/", b"//", b"../x", b"./", b"a//b", b"/../"),
    "percent": (b"%", b"%2F", b"%25", b"100%", b"%2E", b"%%"),
    "utf-8": (b"\xc3\xa9", b"caf\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x92\xbe", b"\xc3\xa9/"),
    "not utf-8": (b"\xff", b"x\xffy", b"\x80", b"\xc3", b"\xe9t\xe9", b"\xfe\xfe/", b"\x85"),
    "odd ascii": (b"...", b".a", b"a.", b"a:b", b"a=b", b"-", b"\x01\x7f", b"\\"),
}
#: Stems of the "prefix-plus-slash" class: ``stem`` and ``stem/tail`` side by side.
_PREFIX_STEMS = (b"a", b".", b"..", b"\xc3\xa9", b"\xff", b"%")


def region_spelling(name: bytes) -> bytes:
    """README (Paths): the file name of region ``name``: its bytes, ``%`` -> ``%25``,
    ``/`` -> ``%2F``; the whole names ``.`` and ``..`` are ``%2E`` and ``%2E%2E``."""
    if name in (b".", b".."):
        return b"%2E" * len(name)
    return name.replace(b"%", b"%25").replace(b"/", b"%2F")


def reserve_mem_table(options: Iterable[tuple[int, bytes]]) -> list[tuple[bytes, int]]:
    """Spec 2.4 steps 1, 2, 7, 8, 9 (every allocation succeeds on the fuzzed machine):
    the (name, size) table that ``reserve_mem=SIZE:4096:NAME`` options give, in order."""
    table: list[tuple[bytes, int]] = []
    for size, name in options:
        if len(table) >= 8 or not size or not 0 < len(name) < 16:
            continue
        if not name.strip(b" \t\n\v\f\r\xa0") or any(n == name for n, _ in table):
            continue
        table.append((name, size))
    return table


def _kernel_words(text: bytes) -> list[bytes]:
    """Words of a control command, split at the kernel's ``isspace`` (C set plus 0xA0)."""
    for c in b"\t\n\v\f\r\xa0":
        text = text.replace(bytes([c]), b" ")
    return [w for w in text.split(b" ") if w]


def _parse_size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]?)", text).groups()  # type: ignore[union-attr]
    return int(number) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unexpected:
    """One write whose outcome differs from the oracle's prediction."""

    index: int
    path: str
    operation: str
    payload: str
    expected: str
    got: str


@dataclass
class FuzzReport:
    """What a campaign did and what went wrong; ``ok`` is the verdict."""

    seed: int
    writes: int = 0
    truncates: int = 0
    read_opens: int = 0  # probes that open write-only files for reading
    seconds: float = 0.0
    per_file: Counter[str] = field(default_factory=Counter)
    per_result: Counter[str] = field(default_factory=Counter)  # "ok" or an errno name
    events: Counter[str] = field(default_factory=Counter)  # activations, loads, ...
    unexpected: list[Unexpected] = field(default_factory=list)
    invariant_failures: list[str] = field(default_factory=list)
    checkpoints: int = 0
    daemon_pid: int | None = None
    daemon_alive: bool = False

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.invariant_failures and self.daemon_alive

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"seed {self.seed}: {self.writes} writes, {self.truncates} truncates, "
            f"{self.read_opens} read-opens in "
            f"{self.seconds:.1f} s, {self.checkpoints} checkpoints, daemon pid "
            f"{self.daemon_pid} {'alive' if self.daemon_alive else 'NOT alive'}",
            "per file: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_file.items())),
            "results: " + ", ".join(f"{k} {v}" for k, v in self.per_result.most_common()),
            "events: " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items())),
        ]
        lines += [f"unexpected: {u}" for u in self.unexpected[:limit]]
        lines += [f"invariant: {f}" for f in self.invariant_failures[:limit]]
        return "\n".join(lines)


def _name(result: int) -> str:
    return str(result) if result >= 0 else errno.errorcode.get(-result, str(-result))


def _short(payload: bytes, limit: int = 48) -> str:
    if len(payload) <= limit:
        return repr(payload)
    return f"{payload[:limit]!r}... ({len(payload)} bytes)"


# -- expected state --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prediction:
    """The acceptable results (count >= 0 or -errno) and the effect of a matching one."""

    results: frozenset[int]
    effect: Callable[[int], None] | None = None


def _expect(*results: int, effect: Callable[[int], None] | None = None) -> _Prediction:
    return _Prediction(frozenset(results), effect)


class _Shadow:
    """The expected bytes of every physical page the campaign touched.

    A page is loaded through the mount (``dev/mem``) the first time a write is about to
    touch it, so only the campaign's own writes explain any later difference.
    """

    def __init__(self, load: Callable[[int, int], bytes]) -> None:
        self._load = load
        self.pages: dict[int, bytearray] = {}

    def ensure(self, addr: int, size: int) -> None:
        wanted = range(addr // PAGE_SIZE, -(-(addr + size) // PAGE_SIZE))
        for first, count in _runs(p for p in wanted if p not in self.pages):
            data = self._load(first * PAGE_SIZE, count * PAGE_SIZE)
            for i in range(count):
                self.pages[first + i] = bytearray(data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])

    def write(self, addr: int, data: bytes) -> None:
        self.ensure(addr, len(data))
        pos = 0
        while pos < len(data):
            page, off = divmod(addr + pos, PAGE_SIZE)
            n = min(PAGE_SIZE - off, len(data) - pos)
            self.pages[page][off : off + n] = data[pos : pos + n]
            pos += n

    def read(self, addr: int, size: int) -> bytes:
        self.ensure(addr, size)
        out = bytearray()
        for page in range(addr // PAGE_SIZE, -(-(addr + size) // PAGE_SIZE)):
            out += self.pages[page]
        start = addr % PAGE_SIZE
        return bytes(out[start : start + size])

    def drop(self, keep: Callable[[int], bool]) -> None:
        self.pages = {p: b for p, b in self.pages.items() if keep(p * PAGE_SIZE)}


def _runs(pages: Iterable[int]) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of consecutive page numbers, in ascending order."""
    first = prev = -2
    for p in sorted(pages):
        if p != prev + 1:
            if first >= 0:
                yield first, prev - first + 1
            first = p
        prev = p
    if first >= 0:
        yield first, prev - first + 1


@dataclass
class _Expected:
    """What the spec says the machine now is, as far as the campaign changed it."""

    active: bool = False
    dt_max: int = KHO_DT_MAX_DEFAULT
    kexec_loaded: bool = False
    handover: bool = False
    cold_cmdline: bytes = b""
    staging: dict[str, bytearray] = field(default_factory=dict)
    serialize_log: list[int] = field(default_factory=list)  # this boot's failed activations


# -- payloads --------------------------------------------------------------------------------


_NUMBER_ODDITIES = (
    b"", b"0x", b"0X", b"08", b"09", b"0", b"+", b"-", b"0x\n", b"0xg", b"\n", b"4K", b"\xff1",
    b"1\xff", b"\xc3\xa9", b"0x100\n", b"+256", b"0400", b" 1", b"-1", b"0x10\0\n\n",
)  # fmt: skip
_BOOL_INVALID = (
    b"2", b"enable", b"disable", b"e", b"d", b"E", b"D", b" 1", b"\n", b"o", b"O", b"o\n", b"ox",
    b"\t0", b"-1", b"+1", b"\x001", b"\xff", b"\xc3\xa9", b"", b"x", b"o\0n", b"O\0f",
)  # fmt: skip
_COMMAND_WORDS = (
    b"unload", b"kexec_load", b"kexec_file_load", b"kexec_file_load", b"exec", b"EXEC",
    b"Unload", b"kexec_file_loadx", b"kexec-load", b"",
)  # fmt: skip
_COMMAND_ARGS = (
    b"0", b"4", b"1", b"2", b"3", b"5", b"6", b"7", b"8", b"0x4", b"04", b"+4", b"-4", b"0x",
    b"08", b"99999999999999999999999", b"18446744073709551615", b"18446744073709551616",
    b"0x10", b"now",
)  # fmt: skip

# Maps random bytes onto characters the parsers care about (digits, signs, x, y/n/o, ...).
_NUMBERISH = (b"0123456789xX+-\n \t\0yYnNoO" * 11)[:256]


class _Payloads:
    """Random inputs biased towards the spec's edges."""

    LENGTHS = (0, 1, 2, 3, 7, 8, 15, 16, 63, 64, 511, 512, 4095, 4096, 4097, 8191, 8192)

    def __init__(self, rng: random.Random, fdt_size: int) -> None:
        self.rng = rng
        t = fdt_size
        self.edges = [
            0, 1, 7, 8, 47, 48, 102, 103, t - 9, t - 8, t - 1, t, t + 1, 111, 239, 4096,
            KHO_DT_MAX_DEFAULT, INT_MAX, INT_MAX + 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
            1 << 63, U64_MAX, 1 << 64, (1 << 64) + 1, 10**20, 10**30,
        ]  # fmt: skip
        self.good = [t, t + 1, 4096, KHO_DT_MAX_DEFAULT, INT_MAX]

    def length(self) -> int:
        r = self.rng.random()
        if r < 0.45:
            return self.rng.choice(self.LENGTHS)
        if r < 0.8:
            return self.rng.randint(1, 64)
        return self.rng.randint(0, 8192)

    def blob(self, n: int | None = None) -> bytes:
        n = self.length() if n is None else n
        kind = self.rng.randrange(6)
        if kind == 0:
            return bytes(n)
        if kind == 1:
            return b"\xff" * n
        if kind == 2:
            return (b"kho\0fuzz\xfe" * (n // 9 + 1))[:n]
        if kind == 3:
            return self.rng.randbytes(n).translate(_NUMBERISH)
        return self.rng.randbytes(n)

    def number(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.12:
            return rng.choice(
                [
                    *_NUMBER_ODDITIES,
                    b"0x1000" + b"\0" * rng.randint(1, 5000),  # spec 10 item 20
                    b"0" * rng.randint(4090, 4100) + b"17",  # the 4096-byte clamp decides
                    b"1" + b"0" * rng.randint(15, 25),  # around 2^64
                    self.blob(),
                ]
            )
        value = rng.choice(self.good) if r < 0.5 else rng.choice(self.edges)
        if rng.random() < 0.15:
            value = rng.getrandbits(rng.choice((8, 16, 31, 32, 64, 65)))
        forms: list[Callable[[int], bytes]] = [
            lambda v: b"%d" % v,
            lambda v: b"0x%x" % v,
            lambda v: b"0X%X" % v,
            lambda v: b"0x%X" % v,
            lambda v: b"0%o" % v,
            lambda v: b"+%d" % v,
            lambda v: b"+0x%x" % v,
            lambda v: b"-%d" % v,
            lambda v: b"++%d" % v,
            lambda v: b"+-%d" % v,
        ]
        weights = [30, 25, 5, 5, 10, 8, 5, 4, 4, 4]
        text = rng.choices(forms, weights)[0](value)
        suffix = rng.choices(
            [b"", b"\n", b"\n\n", b" ", b"\t", b"\0" + self.blob(), b"\n\0junk", b"K", b"x"],
            [40, 30, 6, 5, 3, 6, 4, 3, 3],
        )[0]
        prefix = rng.choices([b"", b" ", b"\t", b"\n", b"\0"], [92, 2, 2, 2, 2])[0]
        return prefix + text + suffix

    def boolean(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            token = rng.choice(
                [b"1", b"y", b"Y", b"t", b"T", b"on", b"ON", b"oN", b"yes", b"true", b"1abc"]
            )
        elif r < 0.8:
            token = rng.choice(
                [b"0", b"n", b"N", b"f", b"F", b"off", b"OFF", b"oF", b"no", b"false", b"0x"]
            )
        else:
            token = rng.choice(_BOOL_INVALID)
        suffix = rng.choices(
            [b"", b"\n", b"\n\n", b"\0" + self.blob(), self.blob(), b" " * rng.randint(4000, 8200)],
            [40, 35, 5, 8, 8, 4],
        )[0]
        return token + suffix

    def command(self) -> bytes:
        rng = self.rng
        word = rng.choice(_COMMAND_WORDS)
        args: list[bytes] = []
        r = rng.random()
        if r < 0.45:
            args.append(rng.choice(_COMMAND_ARGS))
            if rng.random() < 0.15:
                args.append(b"extra")
        sep = rng.choice([b" ", b" ", b"\t", b"  ", b"\xa0", b"\v", b"\f", b"\r", b"\x1c", b"\x85"])
        text = sep.join([word, *args])
        if rng.random() < 0.05:
            text = rng.choice([b" ", b"\t", b"\n"]) + text
        suffix = rng.choices(
            [b"", b"\n", b"\n\n", b"\0" + self.blob(), b" ", b"\x85", self.blob()],
            [30, 40, 5, 8, 5, 4, 8],
        )[0]
        return text + suffix

    def cmdline(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.2:
            return self.awkward_cmdline()[0] + rng.choice([b"", b"\n"])
        n = rng.choice([0, 1, 100, 2046, 2047, 2048, 2049, 4095, 4096, 5000])
        body = rng.choice([b"x" * n, (FUZZ_CMDLINE.encode() + b" ") * (n // 70 + 1), self.blob(n)])
        body = body[:n]
        return body + rng.choices([b"", b"\n", b"\n\n\n", b"\0tail"], [40, 40, 10, 10])[0]

    def awkward_name(self, cls: str | None = None) -> bytes:
        rng = self.rng
        return rng.choice(AWKWARD_NAMES[cls or rng.choice(list(AWKWARD_NAMES))])

    def awkward_options(self, keep: Sequence[tuple[int, bytes]] = ()) -> list[tuple[int, bytes]]:
        """``(size, name)`` of ``reserve_mem=`` options: one name of every class of
        :data:`AWKWARD_NAMES` and a prefix-plus-slash pair, in random order, with
        options the kernel ignores (a duplicate, 0 or 16+ bytes, whitespace only) and
        ``keep`` (options of an earlier boot, to be revived) mixed in."""
        rng = self.rng
        size = partial(rng.choice, [4096, 4097, 64 << 10, 1 << 20])
        stem = rng.choice(_PREFIX_STEMS)
        tail = rng.choice([b"b", b"", b".", b"..", b"\xff"])
        names = [self.awkward_name(c) for c in AWKWARD_NAMES] + [stem, stem + b"/" + tail]
        options = [(size(), n) for n in names] + list(keep)
        rng.shuffle(options)
        ignored = [b"", b"0123456789abcdef", b"%" * 16, options[0][1]]
        for name in rng.sample(ignored, rng.randint(0, len(ignored))):
            options.insert(rng.randrange(len(options) + 1), (size(), name))
        return options

    def awkward_cmdline(
        self, keep: Sequence[tuple[int, bytes]] = ()
    ) -> tuple[bytes, list[tuple[int, bytes]]]:
        """A command line with :meth:`awkward_options`, and those options."""
        options = self.awkward_options(keep)
        words = [b"reserve_mem=%d:4096:%s" % option for option in options]
        words.insert(self.rng.randrange(len(words) + 1), b"kho=on")
        return b" ".join(words), options


def _would_run_exec(payload: bytes) -> bool:
    """Whether any plausible tokenizer reads ``payload`` as the bare ``exec`` command."""
    text = c_string(payload)
    return (
        _kernel_words(text) == [b"exec"]
        or text.split() == [b"exec"]
        or text.decode("latin-1").split() == ["exec"]
    )


# -- the campaign ----------------------------------------------------------------------------


class _Campaign:
    """One campaign on one mount: descriptors, the oracle state and the report."""

    CHECK_EVERY = 1000
    FRESH = 0.06  # share of writes through a fresh open

    def __init__(self, mountpoint: Path, seed: int, report: FuzzReport) -> None:
        self.mnt = mountpoint
        self.rng = random.Random(seed)
        self.report = report
        self.names = list(FUZZ_REGIONS)
        self.fdt_size = kho_fdt_size(self.names)
        self.gen = _Payloads(self.rng, self.fdt_size)
        self.ram = q35_ram_map(_parse_size(FUZZ_MEMORY))
        self.mem_end = self.ram[-1][1]
        self.node_boundary = self._node_boundary()
        self.state = _Expected()
        self.fds: dict[str, int] = {}
        self.dt_fd: int | None = None
        self.shadow = _Shadow(self._load_phys)
        self.regions: dict[str, tuple[int, int]] = {}
        self.scratch: list[tuple[int, int]] = []
        self.memblock: dict[str, list[str]] = {}
        self.pool: list[int] = []

    # -- small I/O helpers -----------------------------------------------------------------
    def p(self, rel: str) -> Path:
        return self.mnt / rel

    def read(self, rel: str, limit: int = 1 << 22) -> bytes:
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            return _pread_all(fd, 0, limit)
        finally:
            os.close(fd)

    def fail(self, message: str) -> None:
        self.report.invariant_failures.append(f"after {self.report.writes} writes: {message}")

    def _load_phys(self, addr: int, size: int) -> bytes:
        data = _pread_all(self.fds[DEV_MEM], addr, size)
        return data + bytes(size - len(data))

    def _node_boundary(self) -> int:
        """Where node 1 starts: nodes get equal shares of installed RAM in address order,
        in 128 MiB multiples (decisions.md); the lost legacy hole counts as installed, so
        installed bytes below 4 GiB are addresses and the rest continues at 4 GiB."""
        share = _parse_size(FUZZ_MEMORY) // FUZZ_NODES // (128 << 20) * (128 << 20)
        lowmem = self.ram[1][1]
        return share if share < lowmem else (4 << 30) + share - lowmem

    def in_ram(self, addr: int, size: int) -> bool:
        """Inside RAM as a whole: touching ranges would count as one (none touch here)."""
        return any(start <= addr and addr + size <= end for start, end in self.ram)

    # -- setup per boot ----------------------------------------------------------------------
    def open_kernel_files(self) -> None:
        """Descriptors on the running kernel's files (new instances after every boot)."""
        for rel in (ACTIVE, DT_MAX):
            self.fds[rel] = os.open(self.p(rel), os.O_WRONLY)
        for rel in (*self.region_paths(), DEV_MEM):
            self.fds[rel] = os.open(self.p(rel), os.O_RDWR)

    def open_machine_files(self) -> None:
        self.fds[CONTROL] = os.open(self.p(CONTROL), os.O_WRONLY)
        self.fds[COLD_CMDLINE] = os.open(self.p(COLD_CMDLINE), os.O_WRONLY)
        for rel in STAGING.values():
            self.fds[rel] = os.open(self.p(rel), os.O_RDWR)

    def close_kernel_files(self) -> None:
        for rel in (ACTIVE, DT_MAX, *self.region_paths(), DEV_MEM):
            fd = self.fds.pop(rel, None)
            if fd is not None:
                os.close(fd)
        self.close_dt()

    def close_all(self) -> None:
        self.close_kernel_files()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def close_dt(self) -> None:
        if self.dt_fd is not None:
            os.close(self.dt_fd)
            self.dt_fd = None

    def region_paths(self) -> list[str]:
        return [f"machine/reserve_mem/{name}" for name in self.names]

    def learn_boot(self) -> None:
        """Read what the spec leaves to the machine (addresses) and check the boot state."""
        status = self.read("machine/status").decode("latin-1")
        found = {
            m[1]: (int(m[2], 16), int(m[3], 16))
            for m in re.finditer(
                r"^reserve_mem: (\S+)\s+(0x[0-9a-f]+) \+ (0x[0-9a-f]+)$", status, re.M
            )
        }
        if {n: s for n, (_, s) in found.items()} != FUZZ_REGIONS:
            if not self.regions:
                raise ValueError(f"mount the campaign with cmdline={FUZZ_CMDLINE!r}: {found}")
            raise _StepFailed(f"regions after the boot: {found}")
        if self.regions and found != self.regions:
            self.fail(f"regions moved across the boot: {self.regions} -> {found}")
        self.regions = found
        listing = sorted(os.listdir(self.p("machine/reserve_mem")))
        if listing != sorted(self.names):
            self.fail(f"machine/reserve_mem lists {listing}")
        phys, lens = (self._hexlines(f"{KHO}/{f}") for f in ("scratch_phys", "scratch_len"))
        if lens != _FUZZ_SCRATCH_LEN or len(phys) != len(lens):
            self.fail(f"scratch_len {lens}, scratch_phys {phys}")
        scratch = list(zip(phys, lens, strict=False))
        if self.scratch and scratch != self.scratch:
            self.fail(f"scratch table changed across the boot: {self.scratch} -> {scratch}")
        self.scratch = scratch
        self.memblock = {f: self._memblock_lines(f) for f in ("memory", "reserved")}
        self.check_memblock_shape()
        if not self.pool:  # random RAM pages for dev/mem writes, fixed for the campaign
            self.pool = [self._random_ram_page() for _ in range(48)]

    def _random_ram_page(self) -> int:
        start, end = self.rng.choice(self.ram)
        return self.rng.randrange(start, end, PAGE_SIZE)

    def _hexlines(self, rel: str) -> list[int]:
        text = self.read(rel).decode("latin-1")
        if not re.fullmatch(r"(0x[0-9a-f]+\n)+", text):
            self.fail(f"{rel} reads {text!r}")
            return []
        return [int(x, 16) for x in text.split()]

    def _memblock_lines(self, which: str) -> list[str]:
        return self.read(f"{MEMBLOCK}/{which}").decode("latin-1").splitlines()

    # -- executing one write ---------------------------------------------------------------
    def attempt(
        self,
        rel: str,
        payload: bytes,
        offset: int,
        predict: Callable[[], _Prediction],
        *,
        flags: int | None = None,
    ) -> int:
        """One write through the long-lived descriptor, or through a fresh open with
        ``flags``; the prediction is made right before (it may load shadow pages)."""
        pred = predict()
        how = f"pwrite@{offset:#x}"
        try:
            if flags is None:
                got = os.pwrite(self.fds[rel], payload, offset)
            else:
                how = f"open({_flag_names(flags)})+write@{offset:#x}"
                fd = os.open(self.p(rel), flags)
                try:
                    if not flags & os.O_APPEND:
                        os.lseek(fd, offset, os.SEEK_SET)
                    got = os.write(fd, payload)
                finally:
                    os.close(fd)
        except OSError as exc:
            got = -(exc.errno or 0)
        self.record(rel, how, payload, pred, got)
        return got

    def record(
        self, rel: str, how: str, payload: bytes, pred: _Prediction, got: int, *, write: bool = True
    ) -> None:
        r = self.report
        if write:
            r.writes += 1
        else:
            r.read_opens += 1
        r.per_file[rel] += 1
        r.per_result["ok" if got >= 0 else _name(got)] += 1
        if got in pred.results:
            if pred.effect is not None:
                pred.effect(got)
            return
        expected = "|".join(sorted(_name(x) for x in pred.results))
        r.unexpected.append(Unexpected(r.writes, rel, how, _short(payload), expected, _name(got)))
        self.resync()

    def resync(self) -> None:
        """After a wrong prediction, believe the mount again so one bug is reported once."""
        st = self.state
        st.active = self.read(ACTIVE) == b"1\n"
        with contextlib.suppress(ValueError):
            st.dt_max = int(self.read(DT_MAX), 16)
        st.kexec_loaded = self.read(LOADED) == b"1\n"
        st.cold_cmdline = self.read(COLD_CMDLINE).removesuffix(b"\n")
        for name, rel in STAGING.items():
            st.staging[name] = bytearray(self.read(rel, 1 << 30))
        st.serialize_log = self.dmesg_serialize_errors()
        self.shadow.pages.clear()

    def offset_text(self) -> int:
        """Text attributes ignore the offset (spec 3.2 Decision b); try a few anyway."""
        return self.rng.choice([0, 0, 0, 1, 4095, 4096, 1 << 40, self.rng.randrange(1 << 20)])

    def fresh_flags(self, readable: bool, append: bool = True) -> int | None:
        """Flags for a fresh open, or None for the long-lived descriptor.

        ``append=False`` for windows on memory: through FUSE an ``O_APPEND`` write lands
        at the kernel's cached i_size (0 right after an ``O_TRUNC`` open, whose atomic
        truncation the kernel assumes), while a real device ignores ``O_APPEND``; the
        spec says nothing, so the campaign does not guess.
        """
        if self.rng.random() >= self.FRESH:
            return None
        flags = os.O_RDWR if readable and self.rng.random() < 0.3 else os.O_WRONLY
        if self.rng.random() < 0.3:
            flags |= os.O_TRUNC
        if append and self.rng.random() < 0.2:
            flags |= os.O_APPEND
        return flags

    # -- targets -----------------------------------------------------------------------------
    def op_active(self) -> None:
        payload = self.gen.boolean()
        self.attempt(
            ACTIVE,
            payload,
            self.offset_text(),
            lambda: self.predict_active(payload),
            flags=self.fresh_flags(readable=True),
        )

    def serialize_error(self) -> int:
        return kho_serialize_error(self.state.dt_max, self.names)

    def predict_active(self, payload: bytes) -> _Prediction:
        """Spec 3.3: kstrtobool, then no-op when unchanged, then activation or abort."""
        buf = sysfs_store_buffer(payload)
        if not buf:
            return _expect(0)
        try:
            value = kstrtobool(buf)
        except Refused as r:
            return _expect(-r.errno)
        st = self.state
        if value == st.active:
            return _expect(len(buf))
        if not value:
            return _expect(len(buf), effect=lambda _: self.on_abort())
        err = self.serialize_error()
        if err:
            return _expect(-errno.EINVAL, effect=lambda _: self.on_failed_activation(err))
        return _expect(len(buf), effect=lambda _: self.on_activation())

    def on_activation(self) -> None:
        self.state.active = True
        self.report.events["activations"] += 1

    def on_failed_activation(self, err: int) -> None:
        self.state.serialize_log.append(err)
        self.report.events[f"failed activations ({err})"] += 1

    def on_abort(self) -> None:
        self.state.active = False
        self.report.events["aborts"] += 1
        if self.dt_fd is not None:  # spec 3.2: a removed file's old descriptor: ENODEV
            try:
                os.pread(self.dt_fd, 16, 0)
                self.fail("reading dt through a descriptor opened before the abort worked")
            except OSError as exc:
                if exc.errno != errno.ENODEV:
                    self.fail(f"read of dt after abort: {exc!r}, expected ENODEV")
            self.close_dt()

    def op_dt_max(self) -> None:
        payload = self.gen.number()
        self.attempt(
            DT_MAX,
            payload,
            self.offset_text(),
            lambda: self.predict_dt_max(payload),
            flags=self.fresh_flags(readable=True),
        )

    def predict_dt_max(self, payload: bytes) -> _Prediction:
        """Spec 3.4: any parse error is EINVAL, then EBUSY while active, then stored."""
        buf = sysfs_store_buffer(payload)
        if not buf:
            return _expect(0)
        try:
            value = kstrtoull(buf)
        except Refused:
            return _expect(-errno.EINVAL)
        if self.state.active:
            return _expect(-errno.EBUSY)

        def store(_: int) -> None:
            self.state.dt_max = value
            self.report.events["dt_max stores"] += 1

        return _expect(len(buf), effect=store)

    def window_offset(self, size: int, n: int) -> int:
        rng = self.rng
        return rng.choice(
            [
                0,
                rng.randrange(size),
                size - 1,
                max(size - n, 0),
                max(size - n // 2 - 1, 0),
                size,
                size + rng.randrange(1, 1 << 20),
                1 << 40,
                1 << 62,
                PAGE_SIZE - 1,
                rng.randrange(1, size // PAGE_SIZE) * PAGE_SIZE - 1 if size > PAGE_SIZE else 0,
            ]
        )

    def op_region(self, name: str) -> None:
        rel = f"machine/reserve_mem/{name}"
        start, size = self.regions[name]
        payload = self.gen.blob()
        offset = self.window_offset(size, len(payload))
        self.attempt(
            rel,
            payload,
            offset,
            lambda: self.predict_window(start, size, offset, payload),
            flags=self.fresh_flags(readable=True, append=False),
        )

    def predict_window(self, start: int, size: int, offset: int, payload: bytes) -> _Prediction:
        """decisions.md region files: ENOSPC at or past the end, short count across it."""
        if not payload:
            return _expect(0)
        if offset >= size:
            return _expect(-errno.ENOSPC)
        n = min(len(payload), size - offset)
        self.shadow.ensure(start + offset, n)
        return _expect(n, effect=lambda _: self.shadow.write(start + offset, payload[:n]))

    def op_dev_mem(self) -> None:
        rng = self.rng
        payload = self.gen.blob()
        n = len(payload)
        edges = [0, 0x9F000, 1 << 20, 2 << 30, 4 << 30, self.node_boundary, self.mem_end]
        edges += [s for s, _ in self.regions.values()] + [s + z for s, z in self.regions.values()]
        edges += [s for s, _ in self.scratch]
        r = rng.random()
        if r < 0.5:
            offset = rng.choice(edges) + rng.choice([-n, -(n // 2) - 1, -1, 0, 1, -PAGE_SIZE])
        elif r < 0.85:
            offset = rng.choice(self.pool) + rng.randrange(-64, PAGE_SIZE)
        else:
            offset = rng.choice([0xA0000, 3 << 30, 1 << 40, 1 << 62, self.mem_end + 1])
        offset = max(offset, 0)
        self.attempt(
            DEV_MEM,
            payload,
            offset,
            lambda: self.predict_dev_mem(offset, payload),
            flags=self.fresh_flags(readable=True, append=False),
        )

    def predict_dev_mem(self, offset: int, payload: bytes) -> _Prediction:
        """decisions.md: dev/mem spans 0 to the end of RAM; writes into holes: EFAULT."""
        if not payload:
            return _expect(0)
        if offset >= self.mem_end:
            return _expect(-errno.ENOSPC)
        n = min(len(payload), self.mem_end - offset)
        if not self.in_ram(offset, n):
            return _expect(-errno.EFAULT)
        self.shadow.ensure(offset, n)
        return _expect(n, effect=lambda _: self.shadow.write(offset, payload[:n]))

    def op_control(self) -> None:
        payload = self.gen.command()
        while _would_run_exec(sysfs_store_buffer(payload)):
            payload = self.gen.command()
        self.attempt(
            CONTROL,
            payload,
            self.offset_text(),
            lambda: self.predict_control(payload),
            flags=self.fresh_flags(readable=False),
        )

    def predict_control(self, payload: bytes) -> _Prediction:
        """README/decisions.md: ``kexec_file_load [FLAGS]``, ``kexec_load``, ``unload``
        (``exec`` is never sent at random); the loads answer with the syscall's errno."""
        buf = sysfs_store_buffer(payload)
        if not buf:
            return _expect(0)
        words = _kernel_words(c_string(buf))
        if not words or words[0] not in KEXEC_COMMANDS:
            return _expect(-errno.EINVAL)
        cmd = words[0]
        if len(words) > (2 if cmd == b"kexec_file_load" else 1):
            return _expect(-errno.EINVAL)
        ok = len(buf)
        if cmd == b"exec":
            raise AssertionError("the campaign never runs exec at random")
        if cmd == b"unload":
            return _expect(ok, effect=lambda _: self.on_loaded(False))
        flags = 0
        if len(words) > 1:
            try:
                flags = kstrtoull(words[1])
            except Refused as r:
                return _expect(-r.errno)
        valid = KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS
        if flags & ~(valid | KEXEC_FILE_DEBUG):
            return _expect(-errno.EINVAL)
        if flags & KEXEC_FILE_ON_CRASH:  # the crash slot: never the normal image
            if flags & KEXEC_FILE_UNLOAD:
                return _expect(ok)  # decisions.md: unloading the (empty) crash slot
            return _expect(-errno.EOPNOTSUPP)  # decisions.md: crash images are refused
        if flags & KEXEC_FILE_UNLOAD:
            return _expect(ok, effect=lambda _: self.on_loaded(False))
        staged = self.state.staging
        errors = set()
        if len(c_string(bytes(staged["cmdline"])).rstrip(b"\n")) >= COMMAND_LINE_SIZE:
            errors.add(-errno.EINVAL)
        if not staged["kernel"]:
            errors.add(-errno.ENOEXEC)  # decisions.md: an empty file is no kernel
        if errors:  # the spec does not order these two checks: either errno will do
            return _Prediction(frozenset(errors))
        # Tiny segments always fit: in RAM, or in the 256+ MiB scratch areas when active.
        return _expect(ok, effect=lambda _: self.on_loaded(True))

    def on_loaded(self, loaded: bool) -> None:
        self.state.kexec_loaded = loaded
        self.report.events["loads" if loaded else "unloads"] += 1

    def op_cold_cmdline(self) -> None:
        payload = self.gen.cmdline()
        self.attempt(
            COLD_CMDLINE,
            payload,
            self.offset_text(),
            lambda: self.predict_cold_cmdline(payload),
            flags=self.fresh_flags(readable=True),
        )

    def predict_cold_cmdline(self, payload: bytes) -> _Prediction:
        """decisions.md: the firmware command line is a C string without its trailing
        newlines, at most 2047 bytes (EINVAL otherwise)."""
        buf = sysfs_store_buffer(payload)
        if not buf:
            return _expect(0)
        text = c_string(buf).rstrip(b"\n")
        if len(text) >= COMMAND_LINE_SIZE:
            return _expect(-errno.EINVAL)
        return _expect(len(buf), effect=lambda _: setattr(self.state, "cold_cmdline", text))

    def op_staging(self, name: str) -> None:
        rng = self.rng
        rel, limit = STAGING[name], KEXEC_STAGING_MAX[name]
        content = self.state.staging[name]
        payload = self.gen.blob()
        if name == "cmdline" and rng.random() < 0.2:  # kexec command lines of issue 8
            payload = self.gen.awkward_cmdline()[0] + b"\n"
        n = len(payload)
        small = min(limit, 256 << 10)
        offset = rng.choice(
            [
                0,
                len(content),
                rng.randrange(len(content) + 1),
                rng.randrange(small),
                limit,
                1 << 40,
                1 << 62,
                # straddling or just below the limit: never allocate 1 GiB
                *([max(limit - n + 1, 0), max(limit - n, 0)] if limit <= PAGE_SIZE else []),
            ]
        )
        flags = self.fresh_flags(readable=True)
        if flags is not None and flags & os.O_TRUNC:
            content = bytearray()
        effective = len(content) if flags is not None and flags & os.O_APPEND else offset
        if name == "kernel" and _is_bzimage(_overlay(content, effective, payload, limit)):
            payload = bytes(len(payload))  # a bzImage header would change the placement
        self.attempt(
            rel,
            payload,
            offset,
            lambda: self.predict_staging(name, flags, effective, payload),
            flags=flags,
        )

    def predict_staging(
        self, name: str, flags: int | None, offset: int, payload: bytes
    ) -> _Prediction:
        """decisions.md: ordinary files up to their limit: a write starting at or past it
        fails with EFBIG, one straddling it is cut there (short count)."""
        limit = KEXEC_STAGING_MAX[name]
        if flags is not None and flags & os.O_TRUNC:
            self.state.staging[name] = bytearray()  # the open truncates before the write
        if not payload:
            return _expect(0)
        if offset >= limit:
            return _expect(-errno.EFBIG)
        written = payload[: limit - offset]

        def store(_: int) -> None:
            self.state.staging[name] = _overlay(self.state.staging[name], offset, written, limit)

        return _expect(len(written), effect=store)

    def op_truncate(self) -> None:
        """ftruncate: staging files resize (EFBIG past their limit); every other writable
        file accepts and ignores it (spec 3.2, decisions.md)."""
        rng = self.rng
        rel = rng.choice(
            [
                ACTIVE,
                DT_MAX,
                DEV_MEM,
                CONTROL,
                COLD_CMDLINE,
                *self.region_paths(),
                *STAGING.values(),
                *STAGING.values(),
            ]
        )
        name = next((n for n, p in STAGING.items() if p == rel), None)
        if name is None:
            size = rng.choice([0, 1, 4096, 1 << 40])
            expected = 0
        else:
            content, limit = self.state.staging[name], KEXEC_STAGING_MAX[name]
            size = rng.choice(
                [0, len(content) // 2, len(content), len(content) + 100, limit + 1, 1 << 40]
            )
            expected = -errno.EFBIG if size > limit else 0
        try:
            os.ftruncate(self.fds[rel], size)
            got = 0
        except OSError as exc:
            got = -(exc.errno or 0)
        self.report.truncates += 1
        self.report.per_file[f"{rel} (ftruncate)"] += 1
        if got == expected:
            if name is not None and got == 0:
                content = self.state.staging[name]
                self.state.staging[name] = (content + bytes(max(size - len(content), 0)))[:size]
            return
        self.report.unexpected.append(
            Unexpected(
                self.report.writes, rel, f"ftruncate({size:#x})", "", _name(expected), _name(got)
            )
        )
        self.resync()

    def op_probe(self) -> None:
        """Files that must refuse writing (spec 3.1, 3.2, 3.9; decisions.md)."""
        rng = self.rng
        st = self.state
        payload = self.gen.blob(rng.choice([1, 2, 16, 4096]))
        wr = rng.choice([os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC])
        probes: list[tuple[str, int, int]] = [
            (f"{KHO}/scratch_phys", wr, -errno.EACCES),
            (f"{KHO}/scratch_len", wr, -errno.EACCES),
            (LOADED, wr, -errno.EACCES),
            (DT, wr, -errno.EACCES if st.active else -errno.ENOENT),
            (DT_FW, wr, -errno.EACCES if st.handover else -errno.ENOENT),
            ("proc/cmdline", os.O_WRONLY, -errno.EIO),  # procfs: no write handler
            (f"{MEMBLOCK}/memory", os.O_WRONLY, -errno.EINVAL),  # debugfs, spec 3.9
            (f"{MEMBLOCK}/reserved", os.O_WRONLY, -errno.EINVAL),
            (KHO, os.O_WRONLY, -errno.EISDIR),
            (f"{KHO}/new", os.O_WRONLY | os.O_CREAT, -errno.EACCES),  # kernfs: no create
        ]
        rel, flags, expected = rng.choice(probes)
        self.attempt(rel, payload, 0, lambda: _expect(expected), flags=flags)
        # Read-opening write-only files: no show, so EACCES; never write through them.
        rel = rng.choice(["machine/reboot", CONTROL])
        flags = rng.choice([os.O_RDONLY, os.O_RDWR])
        try:
            os.close(os.open(self.p(rel), flags))
            got = 0
        except OSError as exc:
            got = -(exc.errno or 0)
        how = f"open({_flag_names(flags)})"
        self.record(f"{rel} (read-open)", how, b"", _expect(-errno.EACCES), got, write=False)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, *, full: bool = False) -> None:
        """Compare everything the oracle tracks with the mount, and the invariants."""
        self.report.checkpoints += 1
        st = self.state
        want = {
            ACTIVE: b"1\n" if st.active else b"0\n",
            DT_MAX: b"0x%x\n" % st.dt_max,
            LOADED: b"1\n" if st.kexec_loaded else b"0\n",
            COLD_CMDLINE: st.cold_cmdline + b"\n",
        }
        for rel, value in want.items():
            got = self.read(rel)
            if got != value:
                self.fail(f"{rel} reads {_short(got)}, expected {_short(value)}")
        for name, rel in STAGING.items():
            got = self.read(rel, 1 << 30)
            if got != st.staging[name]:
                self.fail(
                    f"{rel}: {len(got)} bytes differ from the {len(st.staging[name])} expected"
                )
        sizes = {ACTIVE: PAGE_SIZE, DT_MAX: PAGE_SIZE, DEV_MEM: self.mem_end}
        sizes |= {f"machine/reserve_mem/{n}": z for n, (_, z) in self.regions.items()}
        sizes |= {STAGING[n]: len(c) for n, c in st.staging.items()}
        for rel, size in sizes.items():
            if os.stat(self.p(rel)).st_size != size:
                self.fail(f"stat {rel}: st_size {os.stat(self.p(rel)).st_size}, expected {size}")
        self.check_dt()
        self.check_memory(full=full)
        self.check_memblock()
        self.check_dmesg()

    def check_dt(self) -> None:
        """Spec 3.6: ``dt`` exists exactly while active, 0400, st_size = the FDT size."""
        try:
            info = os.stat(self.p(DT))
        except FileNotFoundError:
            if self.state.active:
                self.fail("active but dt is missing")
            return
        if not self.state.active:
            self.fail("inactive but dt exists")
            return
        if (info.st_mode & 0o7777, info.st_size) != (0o400, self.fdt_size):
            self.fail(f"dt mode {info.st_mode:o} size {info.st_size}, expected 400 {self.fdt_size}")
        if self.dt_fd is None:
            self.dt_fd = os.open(self.p(DT), os.O_RDONLY)
        blob = _pread_all(self.dt_fd, 0, 1 << 16)
        self.check_fdt(blob, DT)

    def check_fdt(self, blob: bytes, rel: str) -> None:
        """Spec 5: magic, total size, ``kho-v1`` and each region's LE (start, size)."""
        size_ok = len(blob) == self.fdt_size and blob[4:8] == struct.pack(">I", self.fdt_size)
        if blob[:4] != FDT_MAGIC or not size_ok or b"kho-v1\0" not in blob:
            self.fail(f"{rel} is not the expected {self.fdt_size}-byte FDT: {_short(blob)}")
        for name, (start, size) in self.regions.items():
            if struct.pack("<QQ", start, size) not in blob:
                self.fail(f"{rel} lacks the mem property of region {name}")

    def check_memory(self, *, full: bool) -> None:
        """Region files and ``dev/mem`` show exactly the bytes the campaign wrote."""
        for name, (start, size) in self.regions.items():
            digest = hashlib.sha256(self.read(f"machine/reserve_mem/{name}", size)).digest()
            if digest != hashlib.sha256(self.shadow.read(start, size)).digest():
                self.fail(f"region {name}: sha256 differs from the expected content")
        ranges = [(s, s + z) for s, z in self.regions.values()]
        pages = [
            p
            for p in self.shadow.pages
            if full or not any(a <= p * PAGE_SIZE < b for a, b in ranges)
        ]
        for first, count in _runs(pages):
            addr = first * PAGE_SIZE
            got = self._load_phys(addr, count * PAGE_SIZE)
            want = self.shadow.read(addr, count * PAGE_SIZE)
            if got != want:
                bad = next(i for i in range(len(got)) if got[i] != want[i])
                self.fail(f"dev/mem at {addr + bad:#x} differs from the expected bytes")

    def check_memblock_shape(self) -> None:
        """Spec 3.9 format; 8.2: sorted, no overlaps, equal touching neighbours merged;
        the memory list covers exactly the RAM map; regions and scratch are reserved."""
        parsed: dict[str, list[tuple[int, int, str, str]]] = {}
        for which, lines in self.memblock.items():
            out = []
            for i, line in enumerate(lines):
                m = _MEMBLOCK_LINE.match(line)
                if not m or int(m[1]) != i:
                    self.fail(f"memblock {which} line {i}: {line!r}")
                    continue
                out.append((int(m[2], 16), int(m[3], 16) + 1, m[4].strip(), m[5]))
            for (_, e0, n0, f0), (b1, _, n1, f1) in itertools.pairwise(out):
                if b1 < e0:
                    self.fail(f"memblock {which}: {b1:#x} overlaps the region ending {e0:#x}")
                if b1 == e0 and (n0, f0) == (n1, f1) and f0 == "NONE":
                    self.fail(f"memblock {which}: touching equal regions at {b1:#x} not merged")
            parsed[which] = out
        memory = _merge((b, e) for b, e, _, _ in parsed.get("memory", []))
        if memory != self.ram:
            self.fail(f"memblock memory covers {memory}, RAM is {self.ram}")
        reserved = parsed.get("reserved", [])
        for name, (start, size) in self.regions.items():
            if not _covered(reserved, start, start + size, None):
                self.fail(f"region {name} is not reserved")
        for start, size in self.scratch:
            if self.state.handover:
                ok = _covered(parsed.get("memory", []), start, start + size, "KHO_SCRATCH")
            else:
                ok = _covered(reserved, start, start + size, "RSV_KERN")
            if not ok:
                self.fail(f"scratch area {start:#x}+{size:#x} is not covered as it should be")

    def check_memblock(self) -> None:
        """Writes never allocate: both lists stay as they were at boot."""
        for which, lines in self.memblock.items():
            now = self._memblock_lines(which)
            if now != lines:
                self.fail(f"memblock {which} changed: {len(lines)} -> {len(now)} lines")

    def check_dmesg(self) -> None:
        """Spec 4.1: one ``failed to serialize state`` line per failed activation."""
        got = self.dmesg_serialize_errors()
        if got != self.state.serialize_log:
            self.fail(
                f"dmesg serialize errors {got[:10]}... ({len(got)}), expected "
                f"{self.state.serialize_log[:10]}... ({len(self.state.serialize_log)})"
            )

    def dmesg_serialize_errors(self) -> list[int]:
        text = self.read("machine/dmesg", 1 << 26).decode("latin-1")
        pattern = r"\] KHO: failed to serialize state: (-?\d+)$"
        return [int(x) for x in re.findall(pattern, text, re.M)]

    # -- deliberate steps -------------------------------------------------------------------
    def must(self, rel: str, payload: bytes, predict: Callable[[], _Prediction]) -> None:
        """A deliberate write: the prediction must say success, the mount must agree."""
        pred = predict()
        if not any(r >= 0 for r in pred.results):
            self.fail(f"deliberate write {payload!r} to {rel} predicted to fail")
        if self.attempt(rel, payload, 0, lambda: pred) < 0:
            raise _StepFailed(f"deliberate write {payload!r} to {rel} failed")

    def stage_known_image(self) -> None:
        image = bytearray(self.rng.randbytes(64 << 10))
        image[0x202:0x206] = b"\0\0\0\0"  # not a bzImage: loaded whole
        for name, data in (
            ("kernel", bytes(image)),
            ("initrd", b""),
            ("cmdline", FUZZ_CMDLINE.encode() + b"\n"),
        ):
            os.ftruncate(self.fds[STAGING[name]], 0)
            self.state.staging[name] = bytearray()
            if data:
                self.must(STAGING[name], data, partial(self.predict_staging, name, None, 0, data))

    def kho_kexec(self) -> None:
        """Activate, ``kexec_file_load``, ``exec``: a boot with handover (spec 6)."""
        self.must(ACTIVE, b"0\n", lambda: self.predict_active(b"0\n"))
        self.must(DT_MAX, b"0xa00000\n", lambda: self.predict_dt_max(b"0xa00000\n"))
        self.must(ACTIVE, b"1\n", lambda: self.predict_active(b"1\n"))
        dt = self.read(DT)
        self.stage_known_image()
        cmd = b"kexec_file_load\n"
        self.must(CONTROL, cmd, lambda: self.predict_control(cmd))
        old_active = self.fds[ACTIVE]
        got = self.attempt(CONTROL, b"exec\n", 0, lambda: _expect(5))
        if got < 0:
            raise _StepFailed(f"exec failed with {_name(got)}")
        self.report.events["kexec exec"] += 1
        try:  # decisions: files of the old kernel are gone; old descriptors get ENODEV
            os.pwrite(old_active, b"1", 0)
            self.fail("writing active through a descriptor of the previous kernel worked")
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                self.fail(f"write through an old active descriptor: {exc!r}, expected ENODEV")
        self.close_kernel_files()
        st = self.state
        st.active, st.dt_max, st.kexec_loaded = False, KHO_DT_MAX_DEFAULT, False
        st.handover, st.serialize_log = True, []
        # Segments went into scratch (spec 9.1 step 4); nothing else in RAM changed.
        self.shadow.drop(lambda a: not any(s <= a < s + z for s, z in self.scratch))
        self.open_kernel_files()
        self.learn_boot()
        log = self.read("machine/dmesg").decode("latin-1")
        for line in [
            "KHO: setup: Found kexec handover data. Will skip init for some devices",
            *(f"Revived memory reservation '{n}' from KHO" for n in self.names),
        ]:
            if f"] {line}\n" not in log:
                self.fail(f"dmesg lacks {line!r} after the KHO kexec")
        if self.read("proc/cmdline") != FUZZ_CMDLINE.encode() + b"\n":
            self.fail("the kexec'd kernel does not run the staged command line")
        info = os.stat(self.p(DT_FW))
        fw = self.read(DT_FW)
        if fw != dt or info.st_mode & 0o7777 != 0o444:
            self.fail(f"dt_fw (mode {info.st_mode:o}) differs from the dt loaded")
        self.checkpoint(full=True)

    def cold_reboot(self) -> None:
        """``machine/reboot`` with the campaign's command line: RAM reads as zeros."""
        cmdline = FUZZ_CMDLINE.encode() + b"\n"
        self.must(COLD_CMDLINE, cmdline, lambda: self.predict_cold_cmdline(cmdline))
        for name, rel in STAGING.items():  # whether they survive a reboot is not specified
            os.ftruncate(self.fds[rel], 0)
            self.state.staging[name] = bytearray()
        old_dt_max = self.fds[DT_MAX]
        fd = os.open(self.p("machine/reboot"), os.O_WRONLY)
        try:
            got = os.write(fd, b"1\n")
        finally:
            os.close(fd)
        self.record("machine/reboot", "open+write", b"1\n", _expect(2), got)
        self.report.events["cold reboots"] += 1
        try:
            os.pwrite(old_dt_max, b"0x1000", 0)
            self.fail("writing dt_max through a descriptor of the previous boot worked")
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                self.fail(f"write through an old dt_max descriptor: {exc!r}, expected ENODEV")
        self.close_kernel_files()
        st = self.state
        st.active, st.dt_max, st.kexec_loaded = False, KHO_DT_MAX_DEFAULT, False
        st.handover, st.serialize_log = False, []
        self.shadow.pages.clear()
        self.open_kernel_files()
        self.learn_boot()
        for name, (_, size) in self.regions.items():
            if self.read(f"machine/reserve_mem/{name}", size) != bytes(size):
                self.fail(f"region {name} not zero after a cold reboot")
        if os.path.exists(self.p(DT_FW)):
            self.fail("dt_fw exists after a cold reboot")
        if self.read("proc/cmdline") != cmdline:
            self.fail("the rebooted kernel does not run the firmware command line")
        self.checkpoint(full=True)

    def awkward_names(self) -> None:
        """Issue 8: boot ``reserve_mem=`` names of every awkward class, by
        ``machine/cmdline`` + ``machine/reboot`` and then as the command line of a KHO
        kexec (``machine/kexec/cmdline`` + ``control``); each region must be reachable
        under its spelling and ``machine/`` must keep answering.  Ends with a cold
        reboot into :data:`FUZZ_CMDLINE`, so the campaign goes on where it was."""
        self.close_kernel_files()
        cmdline, options = self.gen.awkward_cmdline()
        self.names_step_write(COLD_CMDLINE, cmdline + b"\n")
        self.names_step_write("machine/reboot", b"1\n")
        self.report.events["awkward cold boots"] += 1
        table = reserve_mem_table(options)
        self.check_awkward_boot(cmdline, table, revived=[])
        # The same names (and new ones) handed over by a KHO kexec: kept ones revive.
        kept = [(size, name) for name, size in table[: len(table) // 2 + 1]]
        cmdline2, options2 = self.gen.awkward_cmdline(kept)
        self.names_step_write(ACTIVE, b"1\n")
        image = bytearray(self.rng.randbytes(64 << 10))
        image[0x202:0x206] = b"\0\0\0\0"
        for name, data in (("kernel", bytes(image)), ("cmdline", cmdline2 + b"\n")):
            os.ftruncate(self.fds[STAGING[name]], 0)
            self.names_step_write(STAGING[name], data)
        os.ftruncate(self.fds[STAGING["initrd"]], 0)
        self.names_step_write(CONTROL, b"kexec_file_load\n")
        self.names_step_write(CONTROL, b"exec\n")
        self.report.events["awkward kexecs"] += 1
        table2 = reserve_mem_table(options2)
        revived = [name for name, size in table2 if (name, size) in table]
        self.check_awkward_boot(cmdline2, table2, revived=revived)
        # Back to the campaign's machine: a cold reboot, as in cold_reboot().
        self.names_step_write(COLD_CMDLINE, FUZZ_CMDLINE.encode() + b"\n")
        self.names_step_write("machine/reboot", b"1\n")
        st = self.state
        st.active, st.dt_max, st.kexec_loaded = False, KHO_DT_MAX_DEFAULT, False
        st.handover, st.serialize_log = False, []
        st.cold_cmdline = FUZZ_CMDLINE.encode()
        for name, rel in STAGING.items():
            os.ftruncate(self.fds[rel], 0)
            st.staging[name] = bytearray()
        self.shadow.pages.clear()
        self.open_kernel_files()
        self.learn_boot()
        self.checkpoint(full=True)

    def names_step_write(self, rel: str, data: bytes) -> None:
        """One whole write through a fresh descriptor; the step stops if it fails."""
        fd = os.open(self.p(rel), os.O_WRONLY)
        try:
            got = os.write(fd, data)
        except OSError as exc:
            raise _StepFailed(f"names step: writing {_short(data)} to {rel}: {exc}") from None
        finally:
            os.close(fd)
        self.report.per_file[f"{rel} (names step)"] += 1
        if got != len(data):
            raise _StepFailed(f"names step: {rel} took {got} of {len(data)} bytes")

    def check_awkward_boot(
        self, cmdline: bytes, table: list[tuple[bytes, int]], revived: list[bytes]
    ) -> None:
        """After a boot with awkward names: one file per region under its spelling, with
        the region's size, its own memory (and a revived one its bytes of the last boot),
        the names verbatim in the FDT, and ``machine/`` answering."""
        root = os.fsencode(self.mnt)
        if self.read("proc/cmdline") != cmdline + b"\n":
            self.fail(f"names step: the kernel does not run {_short(cmdline)}")
        if not {"cmdline", "reboot", "status", "dmesg", "kexec"} <= set(
            os.listdir(self.p("machine"))
        ):
            self.fail(f"names step: machine/ lists {os.listdir(self.p('machine'))}")
        self.read("machine/status")
        spelled = {region_spelling(name): (name, size) for name, size in table}
        directory = root + b"/machine/reserve_mem"
        listing = sorted(os.listdir(directory)) if table else []
        if listing != sorted(spelled):
            self.fail(f"names step: machine/reserve_mem lists {listing}, want {sorted(spelled)}")
            return
        log = self.read("machine/dmesg", 1 << 26)
        for spelling, (name, size) in spelled.items():
            self.report.events["awkward regions checked"] += 1
            path = directory + b"/" + spelling
            tag = b"<" + hashlib.sha256(name).hexdigest()[:8].encode() + b">"
            fd = os.open(path, os.O_RDWR)
            try:
                if os.fstat(fd).st_size != size:
                    self.fail(f"names step: {spelling!r} has st_size {os.fstat(fd).st_size}")
                old = os.pread(fd, len(tag), 0)
                self.report.events["awkward regions revived"] += name in revived
                if name in revived and old != tag:
                    self.fail(f"names step: revived region {name!r} reads {old!r}, not {tag!r}")
                if os.pwrite(fd, tag, 0) != len(tag) or os.pread(fd, len(tag), 0) != tag:
                    self.fail(f"names step: region {name!r} does not keep {tag!r}")
            finally:
                os.close(fd)
            line = b"] Revived memory reservation '" + name + b"' from KHO\n"
            if (name in revived) != (line in log):
                self.fail(f"names step: region {name!r} revived: {line in log}")
        if table:
            self.names_step_write(ACTIVE, b"1\n")
            blob = self.read(DT)
            for name, _ in table:
                if b"\0\0\0\x01" + name + b"\0" not in blob:
                    self.fail(f"names step: the FDT lacks the node {name!r}")
            self.names_step_write(ACTIVE, b"0\n")

    # -- the loop ----------------------------------------------------------------------------
    def ops(self) -> list[tuple[int, Callable[[], None]]]:
        return [
            (12, self.op_active),
            (14, self.op_dt_max),
            (9, lambda: self.op_region("a")),
            (7, lambda: self.op_region("b")),
            (14, self.op_dev_mem),
            (9, self.op_control),
            (5, self.op_cold_cmdline),
            (6, lambda: self.op_staging("kernel")),
            (3, lambda: self.op_staging("initrd")),
            (6, lambda: self.op_staging("cmdline")),
            (4, self.op_probe),
            (1, self.op_truncate),
        ]

    def run(self, writes: int, deliberate: bool, progress: Callable[[int], None] | None) -> None:
        ops = self.ops()
        weights = [w for w, _ in ops]
        steps = [
            (writes // 3, self.kho_kexec),
            (2 * writes // 3, self.cold_reboot),
            (5 * writes // 6, self.awkward_names),
        ]
        steps = steps if deliberate else []
        next_check = self.CHECK_EVERY
        while self.report.writes < writes:
            self.rng.choices(ops, weights)[0][1]()
            if steps and self.report.writes >= steps[0][0]:
                steps.pop(0)[1]()
            if self.report.writes >= next_check:
                self.checkpoint()
                next_check += self.CHECK_EVERY
                if progress is not None:
                    progress(self.report.writes)
        self.checkpoint(full=True)
        if progress is not None:
            progress(self.report.writes)


class _StepFailed(Exception):
    """A deliberate step did not happen; the campaign cannot go on meaningfully."""


_MEMBLOCK_LINE = re.compile(
    r"^ *(\d+): 0x([0-9a-f]{16})\.\.0x([0-9a-f]{16}) ([ \d]{3}[\dx]) "
    r"(NONE|HOTPLUG|MIRROR|NOMAP|DRV_MNG|RSV_NIT|RSV_KERN|KHO_SCRATCH|UNKNOWN)$"
)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _covered(
    lines: list[tuple[int, int, str, str]], start: int, end: int, flag: str | None
) -> bool:
    spans = _merge((b, e) for b, e, _, f in lines if flag is None or f == flag)
    return any(b <= start and end <= e for b, e in spans)


def _overlay(content: bytearray, offset: int, data: bytes, limit: int) -> bytearray:
    """``content`` after writing ``data`` at ``offset`` (a hole reads as zeros)."""
    if not data or offset + len(data) > limit:
        return bytearray(content)
    out = bytearray(content)
    if offset > len(out):
        out += bytes(offset - len(out))
    out[offset : offset + len(data)] = data
    return out


def _is_bzimage(image: bytes | bytearray) -> bool:
    return image[0x202:0x206] == b"HdrS"


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    """Read up to ``size`` bytes at ``offset`` until EOF (FUSE may return short reads)."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _flag_names(flags: int) -> str:
    names = {os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}.get(flags & os.O_ACCMODE, "O_RDONLY")
    for bit, name in ((os.O_TRUNC, "O_TRUNC"), (os.O_APPEND, "O_APPEND"), (os.O_CREAT, "O_CREAT")):
        if flags & bit:
            names += f"|{name}"
    return names


def run_fuzz(
    mountpoint: Path,
    writes: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    *,
    deliberate: bool = True,
) -> FuzzReport:
    """Fuzz the machine mounted at ``mountpoint`` with ``writes`` writes from ``seed``.

    The mount must run :data:`FUZZ_CMDLINE` on :data:`FUZZ_MEMORY` with
    :data:`FUZZ_NODES` nodes, freshly booted (ValueError otherwise); the campaign owns
    the kexec staging files and empties them first.  ``deliberate`` adds
    the KHO kexec (after a third of the writes) and the cold reboot (after two thirds).
    ``progress`` is called with the number of writes done at every checkpoint.
    The report's ``ok`` tells whether every outcome matched the oracle, every invariant held
    and the daemon that served the mount at the start still serves it.
    """
    from kho_fs.daemon import read_pid_file

    mountpoint = Path(mountpoint)
    report = FuzzReport(seed=seed)
    report.daemon_pid = read_pid_file(str(mountpoint))
    if report.daemon_pid is None:
        report.invariant_failures.append("no live daemon pid file for the mount")
    started = time.monotonic()
    campaign = _Campaign(mountpoint, seed, report)
    st = campaign.state
    if campaign.read("proc/cmdline") != FUZZ_CMDLINE.encode() + b"\n":
        raise ValueError(f"mount the campaign with cmdline={FUZZ_CMDLINE!r}")
    st.cold_cmdline = campaign.read(COLD_CMDLINE).removesuffix(b"\n")
    st.staging = {name: bytearray() for name in STAGING}
    st.kexec_loaded = campaign.read(LOADED) == b"1\n"
    st.handover = os.path.exists(campaign.p(DT_FW))
    if campaign.read(ACTIVE) != b"0\n" or campaign.read(DT_MAX) != b"0xa00000\n":
        raise ValueError("the campaign needs a machine with KHO inactive and dt_max at default")
    try:
        campaign.open_machine_files()
        for rel in STAGING.values():  # the campaign owns the staging files
            os.ftruncate(campaign.fds[rel], 0)
        campaign.open_kernel_files()
        campaign.learn_boot()
        for start, size in campaign.regions.values():
            campaign.shadow.ensure(start, size)
        campaign.checkpoint(full=True)
        campaign.run(writes, deliberate, progress)
    except (_StepFailed, OSError) as exc:  # OSError: the mount stopped answering
        report.invariant_failures.append(f"campaign stopped after {report.writes} writes: {exc}")
    finally:
        campaign.close_all()
        report.seconds = time.monotonic() - started
    if report.daemon_pid is not None:
        report.daemon_alive = read_pid_file(str(mountpoint)) == report.daemon_pid and _answers(
            mountpoint
        )
    return report


def _answers(mountpoint: Path) -> bool:
    """The mount is there and its machine runs (a dead daemon leaves ENOTCONN)."""
    try:
        status = (mountpoint / "machine/status").read_bytes()
    except OSError:
        return False
    return os.path.ismount(mountpoint) and b"state:       running" in status


# == mainline releases: the debugfs interface (spec kho-mainline.md §2) ========================
#
# The same approach on a machine that boots a mainline kernel (``--release 6.16`` … ``7.0``)
# with the kernel's KHO test module: every writable file of ``sys/kernel/debug/kho`` (and the
# memblock debugfs files) gets random payloads, and each answer is predicted first by an
# oracle written from kho-mainline.md §2.2/§2.3:
#
# * ``out/finalize``: the first min(len, 23) bytes, NUL-terminated, parsed with kstrtoull
#   base 0 (EINVAL, ERANGE on overflow, the handler not called); then the era's table of
#   §2.3 (6.16–6.18: EEXIST when finalized, ENOENT for 0 when not, abort with 0; 6.19/7.0:
#   0 is EINVAL, any other value re-serializes); success returns the full length written.
# * seq files (``out/scratch_phys``, ``out/scratch_len``, ``memblock/*``): no write
#   handler, EINVAL (§2.2 Decision); root may open them for writing.
# * blobs (``out/fdt``, ``out/sub_fdts/*``, ``in/fdt``, ``in/sub_fdts/*``): the generic
#   blob write handler bounded by the blob's size (0 at or past the end, a short count
#   across it) that patches RAM, so the campaign keeps a shadow of every blob and reads it
#   back; a descriptor of a blob removed by an abort reads EIO.
#
# One deliberate step halfway: a cold reboot, ``finalize``, ``kexec_file_load`` of the same
# kernel and ``exec`` (the kernel's selftest, §11): the regions revive, test_kho restores, and
# the campaign goes on in the handover boot, whose ``in/`` blobs it fuzzes too.

#: Releases :func:`run_mainline_fuzz` knows (spec §15.1) and their era (§0).
MAINLINE_ERAS = {"6.16": "6.16", "6.17": "6.16-fix", "6.18": "6.18", "6.19": "6.19", "7.0": "6.19"}
_TOGGLE_ERAS = ("6.16", "6.16-fix", "6.18")
MAINLINE_FUZZ_MEMORY = "2G"
MAINLINE_FUZZ_CMDLINE = (
    "console=ttyS0 kho=on kho_scratch=16M,64M,32M reserve_mem=1M:4096:a "
    "reserve_mem=64K:4096:b test_kho.max_mem=256K"
)
MAINLINE_FUZZ_REGIONS = {"a": 1 << 20, "b": 64 << 10}
#: ``kho-fs mount`` options for the campaign's machine (the release goes with ``--release``)
MAINLINE_FUZZ_ARGS = ["--driver", "test_kho"]
_KDBG = "sys/kernel/debug/kho"
FINALIZE = f"{_KDBG}/out/finalize"
_SEQ_FILES = (
    f"{_KDBG}/out/scratch_phys",
    f"{_KDBG}/out/scratch_len",
    f"{MEMBLOCK}/memory",
    f"{MEMBLOCK}/reserved",
)
#: Bytes of a blob the campaign shadows and writes: the blob's own page. A size beyond it
#: comes only from a header the campaign patched, and what lies past the page is other
#: memory (other blobs' pages, the map), so the campaign neither writes nor trusts it.
_BLOB_CAP = PAGE_SIZE
SIMPLE_ATTR_SIZE = 24  # struct simple_attr: char set_buf[24]
_FINALIZE_TOKENS = (
    b"1", b"1\0", b"1\n", b"0x1", b"+1", b"01", b"2", b"0", b"0\n", b"0x0", b"00", b"+0",
)  # fmt: skip


def debugfs_attr_value(data: bytes) -> int:
    """Spec §2.3: the value a debugfs attribute write passes to its handler, or Refused
    (EINVAL/ERANGE) — the first min(len, 23) bytes, a C string, kstrtoull base 0."""
    return kstrtoull(data[: SIMPLE_ATTR_SIZE - 1])


def finalize_outcome(era: str, data: bytes, finalized: bool) -> int:
    """What ``write(fd, data)`` on ``out/finalize`` returns (spec §2.3): ``len(data)`` or
    ``-errno``. An empty write never reaches the file system (FUSE answers 0)."""
    if not data:
        return 0
    try:
        value = debugfs_attr_value(data)
    except Refused as r:
        return -r.errno
    if era in _TOGGLE_ERAS:
        if value and finalized:
            return -errno.EEXIST
        if not value and not finalized:
            return -errno.ENOENT
        return len(data)
    return len(data) if value else -errno.EINVAL


def blob_write_outcome(size: int, offset: int, n: int) -> int:
    """Spec §2.2: ``simple_write_to_buffer`` into a blob of ``size`` bytes."""
    if not n or offset >= size:
        return 0
    return min(n, size - offset)


def out_subtrees(handover: bool) -> list[str]:
    """The KHO users of the campaign's machine (spec §7.1, §10): memblock always (two
    regions), test_kho unless it restored its data on this boot."""
    return ["memblock"] if handover else ["kho_test", "memblock"]


@dataclass
class _BlobShadow:
    """A blob as the campaign expects it: its size and the bytes it knows."""

    size: int
    known: bytearray  # the first min(size, _BLOB_CAP) bytes

    def write(self, offset: int, data: bytes) -> None:
        end = min(offset + len(data), len(self.known))
        if offset < end:
            self.known[offset:end] = data[: end - offset]


class _MainlineCampaign:
    """The mainline campaign on one mount (see the section comment above)."""

    CHECK_EVERY = 500

    def __init__(self, mountpoint: Path, release: str, seed: int, report: FuzzReport) -> None:
        self.mnt = mountpoint
        self.release = release
        self.era = MAINLINE_ERAS[release]
        self.rng = random.Random(seed)
        self.report = report
        self.gen = _Payloads(self.rng, PAGE_SIZE)
        self.finalized = False
        self.handover = False
        self.root_dirty = False  # 6.19: out/fdt was written since boot
        self.blobs: dict[str, _BlobShadow] = {}
        self.fds: dict[str, int] = {}
        self.scratch = b""
        self.dirty: set[str] = set()  # blobs whose page the campaign wrote during this boot

    # -- I/O ---------------------------------------------------------------------------------
    def p(self, rel: str) -> Path:
        return self.mnt / rel

    def read(self, rel: str, limit: int = 1 << 22) -> bytes:
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            return _pread_all(fd, 0, limit)
        finally:
            os.close(fd)

    def fail(self, message: str) -> None:
        self.report.invariant_failures.append(f"after {self.report.writes} writes: {message}")

    def attempt(
        self, rel: str, payload: bytes, offset: int, pred: _Prediction, flags: int | None = None
    ) -> int:
        how = f"pwrite@{offset:#x}"
        try:
            if flags is None:
                got = os.pwrite(self.fds[rel], payload, offset)
            else:
                how = f"open({_flag_names(flags)})+write@{offset:#x}"
                fd = os.open(self.p(rel), flags)
                try:
                    os.lseek(fd, offset, os.SEEK_SET)
                    got = os.write(fd, payload)
                finally:
                    os.close(fd)
        except OSError as exc:
            got = -(exc.errno or 0)
        r = self.report
        r.writes += 1
        r.per_file[rel] += 1
        r.per_result["ok" if got >= 0 else _name(got)] += 1
        if got in pred.results:
            if pred.effect is not None:
                pred.effect(got)
        else:
            expected = "|".join(sorted(_name(x) for x in pred.results))
            r.unexpected.append(
                Unexpected(r.writes, rel, how, _short(payload), expected, _name(got))
            )
            self.resync()
        return got

    # -- what the spec says exists ---------------------------------------------------------
    def expected_blobs(self) -> list[str]:
        """Blob paths of spec §2.1 for the era and state."""
        out = []
        if self.era in _TOGGLE_ERAS:
            if self.finalized:
                out.append(f"{_KDBG}/out/fdt")
                out += [f"{_KDBG}/out/sub_fdts/{n}" for n in out_subtrees(self.handover)]
        else:
            if not self.handover:
                out.append(f"{_KDBG}/out/fdt")
            out += [f"{_KDBG}/out/sub_fdts/{n}" for n in out_subtrees(self.handover)]
        if self.handover:
            out.append(f"{_KDBG}/in/fdt")
            out += [f"{_KDBG}/in/sub_fdts/{n}" for n in ("kho_test", "memblock")]
        return out

    def listing(self) -> list[str]:
        found = []
        for sub in ("out", "out/sub_fdts", "in", "in/sub_fdts"):
            path = self.p(f"{_KDBG}/{sub}")
            if not path.is_dir():
                continue
            for name in os.listdir(path):
                rel = f"{_KDBG}/{sub}/{name}"
                if not self.p(rel).is_dir() and rel != FINALIZE and rel not in _SEQ_FILES:
                    found.append(rel)
        return sorted(found)

    def learn_blob(self, rel: str, size: int | None = None) -> None:
        """A blob just created: read what it holds (the machine's addresses and sizes are
        its own), check it is what the spec says, and open a descriptor for the fuzzing."""
        data = self.read(rel, _BLOB_CAP + 1)
        if size is None:  # learn it: the whole blob, or its header's word for a huge one
            size = len(data) if len(data) <= _BLOB_CAP else struct.unpack(">I", data[4:8])[0]
        elif len(data) != min(size, _BLOB_CAP + 1):
            self.fail(f"{rel}: {len(data)} bytes where its header said {size}")
        self.blobs[rel] = _BlobShadow(size, bytearray(data[: min(size, _BLOB_CAP)]))
        fd = self.fds.pop(rel, None)
        if fd is not None:
            os.close(fd)
        self.fds[rel] = os.open(self.p(rel), os.O_RDWR)

    def check_fdt(self, rel: str, data: bytes, compatible: bytes) -> None:
        """A freshly created KHO FDT passes libfdt's full check with the spec's compatible."""
        import libfdt

        buf = bytearray(data)
        if libfdt.fdt_check_full(buf, len(buf)) != 0:
            self.fail(f"{rel} fails fdt_check_full")
            return
        compat = libfdt.Fdt(buf).getprop(0, "compatible", quiet=(libfdt.NOTFOUND,))
        if isinstance(compat, int) or bytes(compat) != compatible:
            self.fail(f"{rel} has compatible {compat!r}, expected {compatible!r}")

    def learn_boot(self) -> None:
        """Open the kernel's files after a boot and learn the blobs (spec §2.1)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.blobs.clear()
        self.dirty.clear()
        self.root_dirty = False
        self.fds[FINALIZE] = os.open(self.p(FINALIZE), os.O_WRONLY)
        for rel in _SEQ_FILES:  # debugfs: root may open 0400 files for writing (§2.2)
            self.fds[rel] = os.open(self.p(rel), os.O_WRONLY)
        self.scratch = self.read(f"{_KDBG}/out/scratch_phys")
        for rel in self.expected_blobs():
            self.learn_blob(rel)
        self.check_created()

    def check_created(self) -> None:
        for rel in self.expected_blobs():
            shadow = self.blobs.get(rel)
            if shadow is None or rel in self.dirty:
                continue
            data = bytes(shadow.known)
            if rel.endswith("out/fdt") and self.era not in _TOGGLE_ERAS:
                if shadow.size != 152:  # spec §2.1: the size it had when created
                    self.fail(f"{rel} has {shadow.size} bytes, expected 152")
                continue
            want = {"fdt": b"kho-v1\0", "memblock": b"memblock-v1\0", "kho_test": b"kho-test-v1\0"}
            self.check_fdt(rel, data, want[rel.rsplit("/", 1)[1]])

    # -- targets -----------------------------------------------------------------------------
    def op_finalize(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            payload = rng.choice(_FINALIZE_TOKENS) + rng.choice(
                [b"", b"\n", b"\0" + self.gen.blob()]
            )
        elif r < 0.7:
            payload = self.gen.number()
        else:
            payload = self.gen.blob()
        offset = rng.choice([0, 0, 0, 1, 23, 4096, 1 << 30])
        flags = None
        if rng.random() < 0.06:
            flags = rng.choice([os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC])
        got = finalize_outcome(self.era, payload, self.finalized)
        if got <= 0:
            self.attempt(FINALIZE, payload, offset, _expect(got), flags)
            return
        handler = self.on_finalize if debugfs_attr_value(payload) else self.on_abort

        def effect(result: int) -> None:
            if result > 0:
                handler()

        results = [got]
        if self.era not in _TOGGLE_ERAS and self.root_dirty:
            # a root patched through out/fdt: whether libfdt still finds the map in it
            # decides (a real 6.19 kernel dereferences a NULL property; kho-fs: EINVAL)
            results.append(-errno.EINVAL)
        self.attempt(FINALIZE, payload, offset, _expect(*results, effect=effect), flags)

    def on_finalize(self) -> None:
        self.report.events["finalizes"] += 1
        if self.era not in _TOGGLE_ERAS:
            self.finalized = True
            rel = f"{_KDBG}/out/fdt"
            if rel in self.blobs:  # the map's address changed in the root (spec §6.2)
                self.learn_blob(rel, 152)
            return
        self.finalized = True
        for rel in self.expected_blobs():
            if rel.startswith(f"{_KDBG}/out/"):
                old = self.blobs.get(rel)
                # a sub-FDT's size is its header's totalsize when the file is created
                size = (
                    struct.unpack(">I", old.known[4:8])[0] if old and len(old.known) >= 8 else None
                )
                self.learn_blob(rel, size)
        self.check_created()

    def on_abort(self) -> None:
        """Spec §2.3: abort removes out/fdt and every out/sub_fdts file; a descriptor of a
        removed blob reads EIO (§2.2)."""
        self.report.events["aborts"] += 1
        self.finalized = False
        for rel in [r for r in self.fds if r.startswith(f"{_KDBG}/out/") and r in self.blobs]:
            fd = self.fds.pop(rel)
            try:
                os.pread(fd, 8, 0)
                self.fail(f"{rel} still reads after the abort removed it")
            except OSError as exc:
                if exc.errno != errno.EIO:
                    self.fail(f"read of removed {rel}: {exc!r}, expected EIO")
            finally:
                os.close(fd)
        # keep the shadows of sub-FDT pages (the same pages come back at the next finalize)
        self.blobs.pop(f"{_KDBG}/out/fdt", None)

    def op_seq(self) -> None:
        rel = self.rng.choice(_SEQ_FILES)
        payload = self.rng.choice([self.gen.blob(), self.gen.number(), b"0x1000\n"])
        self.attempt(
            rel, payload, self.rng.choice([0, 1, 4096]), _expect(-errno.EINVAL if payload else 0)
        )

    def op_blob(self) -> None:
        live = [rel for rel in self.blobs if rel in self.fds]
        if not live:
            return self.op_finalize()
        rel = self.rng.choice(live)
        shadow = self.blobs[rel]
        payload = self.gen.blob(self.rng.choice([1, 2, 4, 8, 16, 64, 512, self.gen.length()]))
        size = shadow.size
        if len(shadow.known) < size:  # a patched header claims more than the page
            payload = payload[: max(len(shadow.known) // 2, 1)]
        offset = self.rng.choice(
            [
                0,
                4,
                8,
                0x28,
                self.rng.randrange(max(size, 1)),
                max(size - 1, 0),
                max(size - len(payload) // 2, 0),
                size,
                size + 1,
                1 << 20,
            ]
        )
        if len(shadow.known) < size and len(shadow.known) <= offset < size:
            offset = self.rng.choice([0, len(shadow.known) - len(payload), size])
        elif (
            len(shadow.known) < size and offset + len(payload) > len(shadow.known) and offset < size
        ):
            offset = max(len(shadow.known) - len(payload), 0)
        got = blob_write_outcome(size, offset, len(payload))

        def effect(_: int) -> None:
            shadow.write(offset, payload[:got])
            if got:
                self.dirty.add(rel)
                self.root_dirty = self.root_dirty or rel.endswith("out/fdt")

        self.attempt(rel, payload, offset, _expect(got, effect=effect))

    def op_read(self) -> None:
        live = [rel for rel in self.blobs if rel in self.fds]
        if not live:
            return
        rel = self.rng.choice(live)
        shadow = self.blobs[rel]
        offset = self.rng.randrange(max(len(shadow.known), 1))
        got = os.pread(self.fds[rel], 256, offset)
        want = bytes(shadow.known[offset : offset + 256])
        if got[: len(want)] != want:
            self.fail(f"{rel} at {offset:#x} reads {_short(got)}, expected {_short(want)}")

    def op_probe(self) -> None:
        """What must refuse: directories, creating files, the finalize file read-only."""
        rel, flags, expected = self.rng.choice(
            [
                (f"{_KDBG}/out", os.O_WRONLY, -errno.EISDIR),
                (f"{_KDBG}/out/sub_fdts", os.O_RDWR, -errno.EISDIR),
                (f"{_KDBG}/out/new", os.O_WRONLY | os.O_CREAT, -errno.EACCES),
                (f"{_KDBG}/out/sub_fdts/new", os.O_WRONLY | os.O_CREAT, -errno.EACCES),
                (FINALIZE, os.O_RDONLY, -errno.EBADF),  # opened for reading: write is EBADF
            ]
        )
        self.attempt(rel, b"1", 0, _expect(expected), flags)

    def op_truncate(self) -> None:
        """debugfs files accept a size change and ignore it (simple_setattr; the tree's
        pseudo-files keep their content): the blob must read as before."""
        rel = self.rng.choice(list(self.fds))
        size = self.rng.choice([0, 1, 4096, 1 << 40])
        try:
            os.ftruncate(self.fds[rel], size)
            got = 0
        except OSError as exc:
            got = -(exc.errno or 0)
        self.report.truncates += 1
        self.report.per_file[f"{rel} (ftruncate)"] += 1
        if got != 0:
            self.report.unexpected.append(
                Unexpected(self.report.writes, rel, f"ftruncate({size:#x})", "", "0", _name(got))
            )

    def resync(self) -> None:
        """Believe the mount again after a wrong prediction (one bug, one report)."""
        self.finalized = self.read(FINALIZE) == b"1\n"
        for rel in list(self.blobs):
            if rel not in self.listing():
                self.blobs.pop(rel)
                fd = self.fds.pop(rel, None)
                if fd is not None:
                    os.close(fd)
            else:
                self.learn_blob(rel)
        for rel in self.listing():
            if rel not in self.blobs:
                self.learn_blob(rel)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> None:
        self.report.checkpoints += 1
        got = self.read(FINALIZE)
        want = b"1\n" if self.finalized else b"0\n"
        if got != want:
            self.fail(f"finalize reads {got!r}, expected {want!r}")
        if self.listing() != sorted(self.expected_blobs()):
            self.fail(
                f"debugfs lists {self.listing()}, spec §2.1 says {sorted(self.expected_blobs())}"
            )
        if self.read(f"{_KDBG}/out/scratch_phys") != self.scratch:
            self.fail("scratch_phys changed")
        for rel, shadow in self.blobs.items():
            if rel not in self.fds:
                continue
            data = _pread_all(self.fds[rel], 0, len(shadow.known))
            if data != shadow.known:
                self.fail(f"{rel} differs from the bytes written into it")
        log = self.read("machine/dmesg", 1 << 26).decode("latin-1")
        if "Failed to convert KHO state tree" in log:
            self.fail("a finalize failed (dmesg: Failed to convert KHO state tree)")

    # -- the deliberate step -----------------------------------------------------------------
    def write_whole(self, rel: str, data: bytes) -> None:
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_TRUNC)
        try:
            if os.write(fd, data) != len(data):
                raise _StepFailed(f"short write to {rel}")
        except OSError as exc:
            raise _StepFailed(f"writing {_short(data)} to {rel}: {exc}") from None
        finally:
            os.close(fd)

    def reboot_and_kexec(self) -> None:
        """Cold reboot, then the selftest's handover (spec §11): finalize, load, exec."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.write_whole(COLD_CMDLINE, MAINLINE_FUZZ_CMDLINE.encode() + b"\n")
        self.write_whole("machine/reboot", b"1\n")
        self.report.events["cold reboots"] += 1
        self.finalized, self.handover = False, False
        self.learn_boot()
        self.write_whole(FINALIZE, b"1\0")
        self.on_finalize()
        out_fdt = bytes(self.blobs[f"{_KDBG}/out/fdt"].known)
        image = bytearray(self.rng.randbytes(64 << 10))
        image[0x202:0x206] = b"\0\0\0\0"  # not a bzImage: the same kernel again (§15.3)
        self.write_whole(STAGING["kernel"], bytes(image))
        self.write_whole(STAGING["initrd"], b"")
        self.write_whole(STAGING["cmdline"], MAINLINE_FUZZ_CMDLINE.encode() + b"\n")
        self.write_whole(CONTROL, b"kexec_file_load\n")
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.write_whole(CONTROL, b"exec\n")
        self.report.events["kexec exec"] += 1
        self.finalized, self.handover = False, True
        log = self.read("machine/dmesg", 1 << 26).decode("latin-1")
        suffix = " Will skip init for some devices" if self.era in _TOGGLE_ERAS else ""
        for line in [
            f"KHO: found kexec handover data.{suffix}",
            *(f"Revived memory reservation '{n}' from KHO" for n in MAINLINE_FUZZ_REGIONS),
            "test_kho: KHO restore succeeded",
        ]:
            if f"] {line}\n" not in log:
                self.fail(f"dmesg lacks {line!r} after the handover")
        self.learn_boot()
        in_fdt = bytes(self.blobs[f"{_KDBG}/in/fdt"].known)
        if self.era in _TOGGLE_ERAS and in_fdt != out_fdt:  # §11: the same page
            self.fail("in/fdt differs from the out/fdt handed over")

    def run(self, writes: int, progress: Callable[[int], None] | None) -> None:
        ops = [
            (30, self.op_finalize),
            (30, self.op_blob),
            (12, self.op_seq),
            (10, self.op_read),
            (3, self.op_probe),
            (1, self.op_truncate),
        ]
        weights = [w for w, _ in ops]
        step_at = writes // 2
        next_check = self.CHECK_EVERY
        while self.report.writes < writes:
            self.rng.choices(ops, weights)[0][1]()
            if step_at and self.report.writes >= step_at:
                step_at = 0
                self.checkpoint()
                self.reboot_and_kexec()
                self.checkpoint()
            if self.report.writes >= next_check:
                self.checkpoint()
                next_check += self.CHECK_EVERY
                if progress is not None:
                    progress(self.report.writes)
        self.checkpoint()


def run_mainline_fuzz(
    mountpoint: Path,
    release: str,
    writes: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Fuzz the debugfs files of a mainline machine mounted at ``mountpoint``.

    The mount must boot ``release`` (``--release``) with :data:`MAINLINE_FUZZ_ARGS`,
    :data:`MAINLINE_FUZZ_CMDLINE` and :data:`MAINLINE_FUZZ_MEMORY`, freshly (ValueError
    otherwise). Halfway through, the campaign reboots the machine and performs a KHO kexec.
    """
    from kho_fs.daemon import read_pid_file

    if release not in MAINLINE_ERAS:
        raise ValueError(f"no mainline campaign for release {release!r}")
    mountpoint = Path(mountpoint)
    report = FuzzReport(seed=seed)
    report.daemon_pid = read_pid_file(str(mountpoint))
    if report.daemon_pid is None:
        report.invariant_failures.append("no live daemon pid file for the mount")
    started = time.monotonic()
    campaign = _MainlineCampaign(mountpoint, release, seed, report)
    if campaign.read("proc/cmdline") != MAINLINE_FUZZ_CMDLINE.encode() + b"\n":
        raise ValueError(f"mount the campaign with cmdline={MAINLINE_FUZZ_CMDLINE!r}")
    if not campaign.read("proc/version").startswith(f"Linux version {release}.0 ".encode()):
        raise ValueError(f"mount the campaign with --release {release}")
    if campaign.read(FINALIZE) != b"0\n" or campaign.p(f"{_KDBG}/in").exists():
        raise ValueError("the campaign needs a freshly booted machine")
    try:
        campaign.learn_boot()
        campaign.checkpoint()
        campaign.run(writes, progress)
    except (_StepFailed, OSError) as exc:
        report.invariant_failures.append(f"campaign stopped after {report.writes} writes: {exc}")
    finally:
        for fd in campaign.fds.values():
            os.close(fd)
        campaign.fds.clear()
        report.seconds = time.monotonic() - started
    if report.daemon_pid is not None:
        report.daemon_alive = read_pid_file(str(mountpoint)) == report.daemon_pid and _answers(
            mountpoint
        )
    return report
