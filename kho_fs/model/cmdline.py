"""The kernel command line: number parsers, the tokenizer and the KHO option handlers.

Everything follows Linux v6.14 (``lib/cmdline.c``, ``lib/kstrtox.c``, ``lib/vsprintf.c``,
``kernel/params.c``, ``mm/memblock.c``) and the KHO v4 patches character for character,
because users probe the edges (``0x``, ``1e``, quotes, ``%``) and expect the kernel's
answer, not a tidier one.

Strings are C strings: the first NUL ends them. Callers decode user bytes as latin-1,
so every character stands for one byte and the kernel's ctype rules apply as they are
(``isspace`` includes 0xA0; digits are ASCII only). Every function is total over its
text input: a malformed string gives ``None`` or a :class:`KernelError`, never a crash.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from kho_fs.model.errors import KernelError
from kho_fs.model.units import U64_MASK

# The kernel's ctype: _S class is the C whitespace set plus 0xA0 (non-breaking space).
_SPACE = frozenset(" \t\n\v\f\r\xa0")
_XDIGIT = frozenset("0123456789abcdefABCDEF")
# memparse suffixes and the shift each one applies.
_MEM_SHIFT = {c: 10 * (i + 1) for i, u in enumerate("KMGTPE") for c in (u, u.lower())}

SMP_CACHE_BYTES = 64  # x86-64 cache line; the reserve_mem= alignment floor (spec 2.4)
RESERVE_MEM_NAME_SIZE = 16  # name buffer incl. NUL, so names have 1..15 characters
RESERVE_MEM_MAX_ENTRIES = 8
U32_MASK = (1 << 32) - 1


def isspace(c: str) -> bool:
    """The kernel's ``isspace`` for one character (latin-1 byte)."""
    return c in _SPACE


def _cstr_end(s: str, pos: int = 0) -> int:
    """Index of the NUL that ends the C string containing ``pos``, or ``len(s)``."""
    nul = s.find("\0", pos)
    return len(s) if nul < 0 else nul


def _cstr(s: str | bytes) -> str:
    """The C string a buffer holds: latin-1 decoded, cut at the first NUL."""
    if isinstance(s, bytes | bytearray):
        s = bytes(s).decode("latin-1")
    return s[: _cstr_end(s)]


def _check_pos_base(pos: int, base: int) -> None:
    if pos < 0:
        raise ValueError(f"negative position {pos}")
    if not 0 <= base <= 16 or base == 1:
        raise ValueError(f"unsupported base {base}")


def _fixup_radix(s: str, pos: int, end: int, base: int) -> tuple[int, int]:
    """Radix auto-detection: ``0x`` counts as hex only when a hex digit follows it.

    Returns (position of the first digit, base). An explicit base 16 skips a ``0x``
    prefix even with no digit after it, as the kernel does.
    """

    def at(i: int) -> str:
        return s[i] if i < end else "\0"

    has_0x = at(pos) == "0" and at(pos + 1) in "xX"
    if base == 0 and at(pos) != "0":
        base = 10
    elif base == 0:
        base = 16 if has_0x and at(pos + 2) in _XDIGIT else 8
    if base == 16 and has_0x:
        pos += 2
    return pos, base


def _parse_integer(s: str, pos: int, end: int, base: int) -> tuple[int, int, bool]:
    """Accumulate digits of ``base`` from ``pos``: (value mod 2^64, digits, overflowed).

    The value wraps modulo 2^64 (v6.14 ``_parse_integer_limit``); the overflow flag is
    set when the exact value exceeds 2^64 - 1, which only ``kstrto*`` report (ERANGE).
    """
    res = 0
    overflow = False
    i = pos
    while i < end:
        c = ord(s[i])
        if 0x30 <= c <= 0x39:
            val = c - 0x30
        elif 0x61 <= (c | 0x20) <= 0x66 and c < 0x80:
            val = (c | 0x20) - 0x61 + 10
        else:
            break
        if val >= base:
            break
        if not overflow and res > (U64_MASK - val) // base:
            overflow = True
        res = (res * base + val) & U64_MASK
        i += 1
    return res, i - pos, overflow


def simple_strtoull(s: str, pos: int = 0, base: int = 0) -> tuple[int, int]:
    """The kernel's ``simple_strtoull``: (value mod 2^64, end position).

    No sign and no whitespace skipping; the end position equals ``pos`` when no digit
    was found (except for an explicit base 16 consuming a bare ``0x``). ``base`` is 0
    (auto) or 2..16; ``pos`` must not be negative (ValueError: a caller bug).
    """
    _check_pos_base(pos, base)
    if pos > len(s):
        return 0, pos
    end = _cstr_end(s, pos)
    start, base = _fixup_radix(s, pos, end, base)
    value, ndigits, _ = _parse_integer(s, start, end, base)
    return value, start + ndigits


def memparse(s: str, pos: int = 0) -> tuple[int, int]:
    """Spec 2.5: a size with an optional K/M/G/T/P/E suffix (either case), wrapping.

    Returns (value mod 2^64, position after the number and its suffix). As in v6.14 a
    suffix letter is consumed even when no digit precedes it (``"K"`` gives (0, 1));
    callers tell "nothing parsed" from the zero value.
    """
    value, end = simple_strtoull(s, pos, 0)
    if end < _cstr_end(s, pos):
        shift = _MEM_SHIFT.get(s[end])
        if shift is not None:
            value = (value << shift) & U64_MASK
            end += 1
    return value, end


def kstrtobool(s: str | bytes) -> bool:
    """Spec 2.6, v6.14 rules: only the first one or two characters decide.

    ``e``/``d`` (enable/disable) came after v6.14 and are rejected. Raises
    ``KernelError(EINVAL)`` for anything else, including the empty string.
    """
    text = _cstr(s)
    first = text[:1]
    if first and first in "YyTt1":
        return True
    if first and first in "NnFf0":
        return False
    if first and first in "Oo":
        second = text[1:2]
        if second and second in "Nn":
            return True
        if second and second in "Ff":
            return False
    raise KernelError(errno.EINVAL, f"kstrtobool: {text!r}")


def kstrtoull(s: str | bytes, base: int = 0) -> int:
    """Spec 2.7: the kernel's strict unsigned parser.

    One leading ``+``, radix detection, at least one digit, at most one ``\\n``, then
    the end of the C string. ``KernelError(ERANGE)`` above 2^64 - 1 (checked before the
    trailing text), ``KernelError(EINVAL)`` for every other failure.
    """
    _check_pos_base(0, base)
    text = _cstr(s)
    end = len(text)
    pos = 1 if text[:1] == "+" else 0
    pos, base = _fixup_radix(text, pos, end, base)
    value, ndigits, overflow = _parse_integer(text, pos, end, base)
    if overflow:
        raise KernelError(errno.ERANGE, f"kstrtoull: {text!r}")
    if ndigits == 0:
        raise KernelError(errno.EINVAL, f"kstrtoull: {text!r}")
    pos += ndigits
    if text[pos : pos + 1] == "\n":
        pos += 1
    if pos != end:
        raise KernelError(errno.EINVAL, f"kstrtoull: {text!r}")
    return value


def parameqn(a: str, b: str, n: int) -> bool:
    """The kernel's ``parameqn``: first ``n`` characters equal, with '-' == '_'.

    Past its NUL a C string reads as NUL, so a shorter string differs there; this is
    how ``__setup("reserve_mem=")`` matches a prefix of ``reserve-mem=...``.
    """
    a, b = _cstr(a), _cstr(b)
    for i in range(n):
        ca = a[i] if i < len(a) else "\0"
        cb = b[i] if i < len(b) else "\0"
        if (ca if ca != "-" else "_") != (cb if cb != "-" else "_"):
            return False
        if ca == "\0":
            return True
    return True


def parameq(a: str, b: str) -> bool:
    """Parameter names compare equal when they differ only by '-' versus '_'."""
    a, b = _cstr(a), _cstr(b)
    return len(a) == len(b) and a.replace("-", "_") == b.replace("-", "_")


def _skip_spaces(s: str, pos: int, end: int) -> int:
    while pos < end and s[pos] in _SPACE:
        pos += 1
    return pos


def _buf_cstr(buf: list[str], start: int) -> str:
    """Read a C string out of a NUL-patched character buffer."""
    out = []
    for c in buf[start:]:
        if c == "\0":
            break
        out.append(c)
    return "".join(out)


def next_arg(s: str, pos: int) -> tuple[str, str | None, int]:
    """One ``param[=value]`` token of a command line, as lib/cmdline.c ``next_arg``.

    Leading spaces are skipped. Whitespace separates tokens except inside double
    quotes; each ``"`` toggles quoting and quotes cannot be escaped. A token starting
    with ``"`` loses that quote and a final ``"``; a value starting with ``"`` loses it
    and a final ``"`` (``param="a b"`` and ``"param=a b"`` both give ``a b``). The
    first ``=`` after the first character splits param and value (``=x`` is a param
    named ``=x``); without one the value is ``None``. Returns (param, value, position
    of the next token, spaces skipped). At the end of the string: ("", None, end).
    """
    _check_pos_base(pos, 0)
    if pos >= len(s):
        return "", None, pos
    end = _cstr_end(s, pos)
    start = _skip_spaces(s, pos, end)
    quoted = start < end and s[start] == '"'
    if quoted:
        start += 1
    in_quote = quoted
    equals = 0
    i = start
    while i < end:
        c = s[i]
        if c in _SPACE and not in_quote:
            break
        if equals == 0 and c == "=" and i > start:
            equals = i - start
        if c == '"':
            in_quote = not in_quote
        i += 1
    length = i - start
    # Patch NULs into a copy of the token exactly where the kernel writes them.
    buf = list(s[start:i])
    value_at: int | None = None
    if equals:
        buf[equals] = "\0"
        value_at = equals + 1
        if value_at < length and buf[value_at] == '"':
            value_at += 1
            if buf[length - 1] == '"':
                buf[length - 1] = "\0"
    if quoted and length > 0 and buf[length - 1] == '"':
        buf[length - 1] = "\0"
    nxt = i + 1 if i < end else i
    param = _buf_cstr(buf, 0)
    value = None if value_at is None else _buf_cstr(buf, value_at)
    return param, value, _skip_spaces(s, nxt, end)


def parse_args_with_rest(cmdline: str) -> tuple[list[tuple[str, str | None]], str]:
    """Tokenize a whole command line as kernel/params.c ``parse_args``.

    Stops at the first bare ``--`` (no ``=``); returns the arguments before it and the
    text after it, which the kernel hands to init (empty when there is no ``--``).
    """
    text = _cstr(cmdline)
    end = len(text)
    pos = _skip_spaces(text, 0, end)
    args: list[tuple[str, str | None]] = []
    while pos < end:
        param, value, pos = next_arg(text, pos)
        if value is None and param == "--":
            return args, text[pos:]
        args.append((param, value))
    return args, ""


def parse_args(cmdline: str) -> list[tuple[str, str | None]]:
    """All ``(param, value)`` pairs in order, up to a bare ``--``."""
    return parse_args_with_rest(cmdline)[0]


# --- kho= and kho_scratch= (early parameters, v4 patch 05) ---------------------------


def kho_parse_enable(value: str | None) -> bool | None:
    """``kho=``: the kstrtobool value, or ``None`` when malformed (also ``kho`` alone).

    On ``None`` the caller logs ``Malformed early option 'kho'`` and keeps the old value.
    """
    if value is None:
        return None
    try:
        return kstrtobool(value)
    except KernelError:
        return None


class ScratchSizing(NamedTuple):
    """Scratch sizing from ``kho_scratch=``: a percent scale, or explicit sizes when 0.

    ``scale`` is the kernel's ``unsigned int scratch_scale``; sizes are bytes.
    """

    scale: int = 200
    size_global: int = 0
    size_pernode: int = 0


def _s32(x: int) -> int:
    """A 32-bit value as ``%d`` prints it."""
    x &= U32_MASK
    return x - (1 << 32) if x & 0x80000000 else x


def kho_parse_scratch_size(
    value: str | None, current: ScratchSizing
) -> tuple[ScratchSizing, str] | None:
    """``kho_scratch=`` as v4 patch 05 parses it (spec 2.3).

    First an unsigned number (auto radix) directly followed by ``%`` sets the scale,
    truncated to 32 bits, and leaves the sizes alone; otherwise ``G,P`` (two non-zero
    memparse sizes, the first consuming something, a ``,`` between them, anything after
    P ignored) sets both sizes and scale 0. Returns the new sizing and the dmesg line,
    or ``None`` when malformed (caller logs ``Malformed early option 'kho_scratch'``).
    """
    if value is None:
        return None
    text = _cstr(value)
    number, end = simple_strtoull(text, 0, 0)
    if text[end : end + 1] == "%":
        scale = number & U32_MASK
        return current._replace(scale=scale), f"KHO: scratch scale is {_s32(scale)} percent"
    size_global, end = memparse(text, 0)
    if not size_global or end == 0:
        return None
    if text[end : end + 1] != ",":
        return None
    size_pernode, _ = memparse(text, end + 1)
    if not size_pernode:
        return None
    sizing = ScratchSizing(scale=0, size_global=size_global, size_pernode=size_pernode)
    message = f"KHO: scratch areas: global: {size_global >> 20}MB pernode: {size_pernode >> 20}MB"
    return sizing, message


# --- reserve_mem= (ordinary boot option, mm/memblock.c) ------------------------------


class ReserveMemParam(NamedTuple):
    """A syntactically valid ``reserve_mem=size:align:name`` (align already floored)."""

    size: int
    align: int
    name: str


def parse_reserve_mem(value: str | None) -> ReserveMemParam | None:
    """Steps 2-8 of spec table 2.4; ``None`` means the option is silently ignored.

    The count limit, duplicate names, revival and allocation (steps 1, 9-12) depend on
    machine state and live with the caller.
    """
    if value is None:
        return None
    text = _cstr(value)
    size, end = memparse(text, 0)
    if not size or end == 0:
        return None
    if text[end : end + 1] != ":":
        return None
    align, end = memparse(text, end + 1)
    if text[end : end + 1] != ":":
        return None
    align = max(align, SMP_CACHE_BYTES)
    name = text[end + 1 :]
    if not 0 < len(name) < RESERVE_MEM_NAME_SIZE:
        return None
    if all(c in _SPACE for c in name):
        return None
    return ReserveMemParam(size=size, align=align, name=name)
