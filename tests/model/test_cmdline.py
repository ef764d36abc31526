"""Command-line parsers: spec section 2 examples, checklist items 2-5, 15, 22, properties."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kho_fs.model.cmdline import (
    ReserveMemParam,
    ScratchSizing,
    isspace,
    kho_parse_enable,
    kho_parse_scratch_size,
    kstrtobool,
    kstrtoull,
    memparse,
    next_arg,
    parameq,
    parameqn,
    parse_args,
    parse_args_with_rest,
    parse_reserve_mem,
    simple_strtoull,
)
from kho_fs.model.errors import KernelError
from kho_fs.model.units import SZ_1G, SZ_1M, U64_MASK

DEFAULT = ScratchSizing()

# ---------------------------------------------------------------------------------------
# ctype


def test_isspace_is_the_kernel_set() -> None:
    assert all(isspace(c) for c in " \t\n\v\f\r\xa0")
    assert not any(isspace(c) for c in "\0\x1c\x85xA=\"")


# ---------------------------------------------------------------------------------------
# simple_strtoull


@pytest.mark.parametrize(
    ("text", "base", "expected"),
    [
        ("123abc", 0, (123, 3)),
        ("0x1F:", 0, (31, 4)),
        ("0X1f", 0, (31, 4)),
        ("0x", 0, (0, 1)),  # 0x without a hex digit: octal 0, 'x' left
        ("0xg", 0, (0, 1)),
        ("017", 0, (15, 3)),
        ("08", 0, (0, 1)),  # 8 is not an octal digit
        ("", 0, (0, 0)),
        ("-5", 0, (0, 0)),  # no sign
        ("+5", 0, (0, 0)),
        (" 5", 0, (0, 0)),  # no whitespace skipping
        ("ff", 16, (255, 2)),
        ("0xff", 16, (255, 4)),
        ("0x", 16, (0, 2)),  # explicit base 16 skips a bare prefix
        ("0x10", 10, (0, 1)),
        ("101", 2, (5, 3)),
        ("1\x002", 0, (1, 1)),  # NUL ends the string
        ("18446744073709551615", 0, (U64_MASK, 20)),
        ("18446744073709551616", 0, (0, 20)),  # wraps
        ("0x10000000000000001", 0, (1, 19)),
        ("\xb2", 0, (0, 0)),  # superscript two: not an ASCII digit
        ("\uff11", 0, (0, 0)),  # fullwidth one
    ],
)
def test_simple_strtoull(text: str, base: int, expected: tuple[int, int]) -> None:
    assert simple_strtoull(text, 0, base) == expected


def test_simple_strtoull_position() -> None:
    assert simple_strtoull("size=0x20;", 5) == (32, 9)
    assert simple_strtoull("abc", 3) == (0, 3)
    assert simple_strtoull("abc", 10) == (0, 10)


@pytest.mark.parametrize(("pos", "base"), [(-1, 0), (0, 1), (0, 17), (0, -2)])
def test_simple_strtoull_rejects_caller_bugs(pos: int, base: int) -> None:
    with pytest.raises(ValueError):
        simple_strtoull("1", pos, base)


# ---------------------------------------------------------------------------------------
# memparse (spec 2.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", (512 * SZ_1M, 4)),
        ("512m", (512 * SZ_1M, 4)),
        ("1K", (1 << 10, 2)),
        ("1k", (1 << 10, 2)),
        ("2G", (2 * SZ_1G, 2)),
        ("2g", (2 * SZ_1G, 2)),
        ("3T", (3 << 40, 2)),
        ("3t", (3 << 40, 2)),
        ("5P", (5 << 50, 2)),
        ("5p", (5 << 50, 2)),
        ("1E", (1 << 60, 2)),
        ("1e", (1 << 60, 2)),  # decimal: e is the exa suffix
        ("0x1e", (30, 4)),  # hex: e is a digit
        ("0x1eK", (30 << 10, 5)),
        ("4096", (4096, 4)),
        ("0x1000", (4096, 6)),
        ("010K", (8 << 10, 4)),  # octal
        ("16E", (0, 3)),  # 2^64 wraps to 0
        ("17E", (1 << 60, 3)),
        ("0x10000000000000000", (0, 19)),
        ("18446744073709551617K", (1 << 10, 21)),  # wraps in the digits, then shifts
        ("12MB", (12 * SZ_1M, 3)),  # only one suffix letter
        ("12X", (12, 2)),
        ("12M:", (12 * SZ_1M, 3)),
        ("", (0, 0)),
        (":", (0, 0)),
        ("-1M", (0, 0)),
        ("0x", (0, 1)),
        ("0xK", (0, 1)),
        ("K", (0, 1)),  # v6.14: a suffix is consumed even without digits
        ("M\0", (0, 1)),
        ("1\0K", (1, 1)),  # the suffix after a NUL is not part of the string
    ],
)
def test_memparse(text: str, expected: tuple[int, int]) -> None:
    assert memparse(text) == expected


def test_memparse_from_position() -> None:
    assert memparse("16M:4096:oops", 4) == (4096, 8)
    assert memparse("16M::oops", 4) == (0, 4)


# ---------------------------------------------------------------------------------------
# kstrtobool (spec 2.6, checklist 2 and 10)

KSTRTOBOOL_TRUE = ["Y", "y", "T", "t", "1", "1\n", "yes", "true", "on", "On", "oN", "ON",
                   "1abc", "y\0garbage", "Yes please", "t\n"]
KSTRTOBOOL_FALSE = ["N", "n", "F", "f", "0", "0\n", "no", "false", "off", "OFF", "Off", "oF",
                    "0abc", "nonsense"]
KSTRTOBOOL_INVALID = ["", "E", "e", "D", "d", "enable", "disable", " 1", "\n", "o", "O",
                      "o\n", "ox", "2", "maybe", "\x001", "o\0n", "\xa01", "-1", "+1"]


@pytest.mark.parametrize("text", KSTRTOBOOL_TRUE)
def test_kstrtobool_true(text: str) -> None:
    assert kstrtobool(text) is True
    assert kstrtobool(text.encode("latin-1")) is True


@pytest.mark.parametrize("text", KSTRTOBOOL_FALSE)
def test_kstrtobool_false(text: str) -> None:
    assert kstrtobool(text) is False
    assert kstrtobool(text.encode("latin-1")) is False


@pytest.mark.parametrize("text", KSTRTOBOOL_INVALID)
def test_kstrtobool_invalid(text: str) -> None:
    for arg in (text, text.encode("latin-1")):
        with pytest.raises(KernelError) as info:
            kstrtobool(arg)
        assert info.value.errno == errno.EINVAL


# ---------------------------------------------------------------------------------------
# kstrtoull (spec 2.7, checklist 15 and 20)

KSTRTOULL_VALID = [
    ("0xa00000", 0xA00000),
    ("10485760", 10485760),
    ("050000000", 0o50000000),
    ("+4096", 4096),
    ("4096\n", 4096),
    ("0x100\n", 0x100),
    ("+256", 256),
    ("0400", 256),
    ("0", 0),
    ("0\n", 0),
    ("00", 0),
    ("0X1F", 31),
    ("+0x10", 16),
    ("18446744073709551615", U64_MASK),
    ("0xffffffffffffffff", U64_MASK),
    ("01777777777777777777777", U64_MASK),
    ("0x1000" + "\0" * 4090, 0x1000),  # checklist 20: NUL padding ends the string
    ("12\0garbage", 12),
    ("12\n\0\n", 12),
]
KSTRTOULL_EINVAL = ["0x", "08", " 4096", "4096 ", "4096\n\n", "-1", "4K", "", "\n", "+",
                    "++1", "+-1", "-0", " 1", "0x\n", "0xg", "1.0", "\n1", "\x001",
                    "1\r\n", "\xb9"]


@pytest.mark.parametrize(("text", "value"), KSTRTOULL_VALID)
def test_kstrtoull_valid(text: str, value: int) -> None:
    assert kstrtoull(text) == value
    assert kstrtoull(text.encode("latin-1")) == value


@pytest.mark.parametrize("text", KSTRTOULL_EINVAL)
def test_kstrtoull_einval(text: str) -> None:
    for arg in (text, text.encode("latin-1")):
        with pytest.raises(KernelError) as info:
            kstrtoull(arg)
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "text",
    ["18446744073709551616", "0x10000000000000000", "02000000000000000000000",
     "99999999999999999999999999", "18446744073709551616\n",
     "18446744073709551616 trailing"],  # overflow is reported before the trailing text
)
def test_kstrtoull_erange(text: str) -> None:
    with pytest.raises(KernelError) as info:
        kstrtoull(text)
    assert info.value.errno == errno.ERANGE


def test_kstrtoull_explicit_base() -> None:
    assert kstrtoull("ff", 16) == 255
    assert kstrtoull("0xff", 16) == 255
    assert kstrtoull("010", 10) == 10
    with pytest.raises(KernelError):
        kstrtoull("0x10", 10)


# ---------------------------------------------------------------------------------------
# parameq / parameqn


def test_parameq() -> None:
    assert parameq("kho_scratch", "kho-scratch")
    assert parameq("reserve-mem", "reserve_mem")
    assert parameq("", "")
    assert not parameq("kho", "kho_scratch")
    assert not parameq("kho_scratch", "kho")
    assert not parameq("Kho", "kho")
    assert parameq("kho\0x", "kho")  # C strings


def test_parameqn_prefix() -> None:
    assert parameqn("reserve-mem=16M:4096:oops", "reserve_mem=", 12)
    assert not parameqn("reserve_mem", "reserve_mem=", 12)
    assert parameqn("abc", "abd", 2)


# ---------------------------------------------------------------------------------------
# next_arg / parse_args


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kho=on rest", ("kho", "on", 7)),
        ("   kho=on   rest", ("kho", "on", 12)),
        ("quiet rest", ("quiet", None, 6)),
        ('param="a b" rest', ("param", "a b", 12)),
        ('"param=a b" rest', ("param", "a b", 12)),
        ('"quiet loud" rest', ("quiet loud", None, 13)),
        ('a="" rest', ("a", "", 5)),
        ('a=" rest', ("a", " rest", 8)),  # unterminated quote runs to the end
        ('a="b"c rest', ("a", 'b"c', 7)),  # value quote only stripped at the very end
        ('a=b"c d" rest', ("a", 'b"c d"', 9)),  # quotes inside a value protect spaces
        ('a"b c"=d rest', ('a"b c"', "d", 9)),
        ('"a="', ("a", "", 4)),
        ('"', ("", None, 1)),
        ('""', ("", None, 2)),
        ("=x rest", ("=x", None, 3)),  # '=' as first character is not a separator
        ("=x=y", ("=x", "y", 4)),
        ("a==b", ("a", "=b", 4)),
        ("a= b", ("a", "", 3)),
        ("kho=on\n", ("kho", "on", 7)),  # trailing newline is whitespace
        ("kho=on\xa0x", ("kho", "on", 7)),
        ("kho=on\0 x", ("kho", "on", 6)),  # NUL ends the command line
        ('p="x\ny" z', ("p", "x\ny", 8)),
        ("", ("", None, 0)),
        ("   ", ("", None, 3)),
    ],
)
def test_next_arg(text: str, expected: tuple[str, str | None, int]) -> None:
    assert next_arg(text, 0) == expected


def test_next_arg_from_position() -> None:
    line = "a=1 b=2"
    param, value, pos = next_arg(line, 0)
    assert (param, value, pos) == ("a", "1", 4)
    assert next_arg(line, pos) == ("b", "2", 7)
    assert next_arg(line, 7) == ("", None, 7)
    assert next_arg(line, 100) == ("", None, 100)


def test_parse_args_examples() -> None:
    assert parse_args("reserve_mem=12M:4096:oops ramoops.mem_name=oops") == [
        ("reserve_mem", "12M:4096:oops"),
        ("ramoops.mem_name", "oops"),
    ]
    assert parse_args(' kho=on  kho_scratch=512M,256M "x=a b" quiet\n') == [
        ("kho", "on"),
        ("kho_scratch", "512M,256M"),
        ("x", "a b"),
        ("quiet", None),
    ]
    assert parse_args("") == []
    assert parse_args(" \t\n") == []


def test_parse_args_stops_at_dashes() -> None:
    assert parse_args_with_rest("kho=1 -- kho=0 single") == ([("kho", "1")], "kho=0 single")
    assert parse_args_with_rest("a --") == ([("a", None)], "")
    assert parse_args_with_rest('"--" b') == ([], "b")
    assert parse_args("a --=x b") == [("a", None), ("--", "x"), ("b", None)]
    assert parse_args("a ---- b") == [("a", None), ("----", None), ("b", None)]
    assert parse_args_with_rest("a b") == ([("a", None), ("b", None)], "")


def test_parse_args_repeated_left_to_right() -> None:
    assert parse_args("kho=0 kho=1 kho") == [("kho", "0"), ("kho", "1"), ("kho", None)]


# ---------------------------------------------------------------------------------------
# kho= (spec 2.2, checklist 2)


@pytest.mark.parametrize("value", ["on", "1", "yes", "true", "On", "y", "Y"])
def test_kho_enable_true(value: str) -> None:
    assert kho_parse_enable(value) is True


@pytest.mark.parametrize("value", ["off", "0", "n", "no", "false", "OFF"])
def test_kho_enable_false(value: str) -> None:
    assert kho_parse_enable(value) is False


@pytest.mark.parametrize("value", [None, "", "maybe", "e", "enable", "d", "disable", "2", "o"])
def test_kho_enable_malformed(value: str | None) -> None:
    assert kho_parse_enable(value) is None


def test_kho_enable_from_command_line() -> None:
    args = parse_args("kho kho= kho=maybe kho=on")
    results = [kho_parse_enable(v) for p, v in args if p == "kho"]
    assert results == [None, None, None, True]


# ---------------------------------------------------------------------------------------
# kho_scratch= (spec 2.3, checklist 3-5)


@pytest.mark.parametrize(
    ("value", "scale", "line"),
    [
        ("150%", 150, "KHO: scratch scale is 150 percent"),
        ("0x10%", 16, "KHO: scratch scale is 16 percent"),
        ("010%", 8, "KHO: scratch scale is 8 percent"),
        ("%", 0, "KHO: scratch scale is 0 percent"),
        ("0%", 0, "KHO: scratch scale is 0 percent"),
        ("200%trailing", 200, "KHO: scratch scale is 200 percent"),
        ("150%,1M", 150, "KHO: scratch scale is 150 percent"),
        ("4294967295%", 4294967295, "KHO: scratch scale is -1 percent"),
        ("2147483648%", 2147483648, "KHO: scratch scale is -2147483648 percent"),
        ("4294967296%", 0, "KHO: scratch scale is 0 percent"),
        ("4294967446%", 150, "KHO: scratch scale is 150 percent"),
    ],
)
def test_kho_scratch_percent(value: str, scale: int, line: str) -> None:
    current = ScratchSizing(scale=200, size_global=7 * SZ_1M, size_pernode=3 * SZ_1M)
    assert kho_parse_scratch_size(value, current) == (
        ScratchSizing(scale=scale, size_global=7 * SZ_1M, size_pernode=3 * SZ_1M),
        line,
    )


@pytest.mark.parametrize(
    ("value", "size_global", "size_pernode", "line"),
    [
        ("512M,256M", 512 * SZ_1M, 256 * SZ_1M,
         "KHO: scratch areas: global: 512MB pernode: 256MB"),
        ("1536K,1M", 1536 << 10, SZ_1M, "KHO: scratch areas: global: 1MB pernode: 1MB"),
        ("1K,1K", 1 << 10, 1 << 10, "KHO: scratch areas: global: 0MB pernode: 0MB"),
        ("16M,512M,256M", 16 * SZ_1M, 512 * SZ_1M,
         "KHO: scratch areas: global: 16MB pernode: 512MB"),
        ("1G,0x100000", SZ_1G, SZ_1M, "KHO: scratch areas: global: 1024MB pernode: 1MB"),
        ("0x20000000,0x10000000", 0x20000000, 0x10000000,
         "KHO: scratch areas: global: 512MB pernode: 256MB"),
        ("512M,256Mjunk", 512 * SZ_1M, 256 * SZ_1M,
         "KHO: scratch areas: global: 512MB pernode: 256MB"),
        ("1e,1", 1 << 60, 1, "KHO: scratch areas: global: 1099511627776MB pernode: 0MB"),
        ("15E,15E", 15 << 60, 15 << 60,
         "KHO: scratch areas: global: 16492674416640MB pernode: 16492674416640MB"),
    ],
)
def test_kho_scratch_sizes(value: str, size_global: int, size_pernode: int, line: str) -> None:
    assert kho_parse_scratch_size(value, ScratchSizing(scale=150)) == (
        ScratchSizing(scale=0, size_global=size_global, size_pernode=size_pernode),
        line,
    )


def test_kho_scratch_checklist_4_sizes() -> None:
    result = kho_parse_scratch_size("512M,256M", DEFAULT)
    assert result is not None
    assert (result[0].size_global, result[0].size_pernode) == (0x20000000, 0x10000000)


@pytest.mark.parametrize(
    "value",
    [None, "", "512M", "0,256M", "512M,0", "512M;256M", "abc", "-5%", "512M,", ",256M",
     "K,1M", "512M,K", "0x,1M", "16E,1M", "1M,16E", " 150%", "150 %", "1M %", "10M%",
     "1e%", "\x00150%", "512M\0,256M", "+5%"],
)
def test_kho_scratch_malformed(value: str | None) -> None:
    assert kho_parse_scratch_size(value, DEFAULT) is None


def test_kho_scratch_left_to_right() -> None:
    sizing = DEFAULT
    for value in ("512M,256M", "512M", "150%"):
        result = kho_parse_scratch_size(value, sizing)
        if result is not None:
            sizing = result[0]
    assert sizing == ScratchSizing(scale=150, size_global=512 * SZ_1M, size_pernode=256 * SZ_1M)


# ---------------------------------------------------------------------------------------
# reserve_mem= (spec 2.4 steps 2-8, checklist 21-22)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("16M:4096:oops", ReserveMemParam(16 * SZ_1M, 4096, "oops")),
        ("12M:4096:oops", ReserveMemParam(12 * SZ_1M, 4096, "oops")),
        ("16M::oops", ReserveMemParam(16 * SZ_1M, 64, "oops")),  # empty align
        ("16M:0:oops", ReserveMemParam(16 * SZ_1M, 64, "oops")),
        ("16M:63:oops", ReserveMemParam(16 * SZ_1M, 64, "oops")),  # floored to 64
        ("16M:64:oops", ReserveMemParam(16 * SZ_1M, 64, "oops")),
        ("16M:65:oops", ReserveMemParam(16 * SZ_1M, 65, "oops")),  # no power of two needed
        ("16M:1M:oops", ReserveMemParam(16 * SZ_1M, SZ_1M, "oops")),
        ("1:0x1000:a", ReserveMemParam(1, 4096, "a")),
        ("16M:4096:a:b", ReserveMemParam(16 * SZ_1M, 4096, "a:b")),  # name may hold ':'
        ("16M:4096::", ReserveMemParam(16 * SZ_1M, 4096, ":")),
        ("16M:4096:" + "x" * 15, ReserveMemParam(16 * SZ_1M, 4096, "x" * 15)),
        ("16M:4096: x ", ReserveMemParam(16 * SZ_1M, 4096, " x ")),
        ("16M:4096:a b", ReserveMemParam(16 * SZ_1M, 4096, "a b")),
        ("16M:K:oops", ReserveMemParam(16 * SZ_1M, 64, "oops")),  # v6.14 memparse eats 'K'
        ("1e:4096:big", ReserveMemParam(1 << 60, 4096, "big")),
        ("16M:16E:wrap", ReserveMemParam(16 * SZ_1M, 64, "wrap")),  # align wraps to 0
        ("16M:4096:oops\0tail", ReserveMemParam(16 * SZ_1M, 4096, "oops")),
    ],
)
def test_reserve_mem_valid(value: str, expected: ReserveMemParam) -> None:
    assert parse_reserve_mem(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "0:4096:x",  # zero size
        ":4096:x",
        "K:4096:x",  # consumed, but zero
        "16E:4096:x",  # wraps to zero
        "16M",
        "16M:",
        "16M:4096",
        "16M:4096:",  # empty name
        "16M;4096:oops",
        "16M:4096;oops",
        "16MB:4096:oops",
        "16M:4x:oops",
        "16M:4096:" + "x" * 16,  # 16-character name
        "16M:4096: ",  # whitespace-only names
        "16M:4096:\t\n",
        "16M:4096:\xa0",
        "16M:4096:\0oops",
        "-16M:4096:x",
        " 16M:4096:x",
    ],
)
def test_reserve_mem_ignored(value: str | None) -> None:
    assert parse_reserve_mem(value) is None


def test_reserve_mem_from_command_line() -> None:
    args = parse_args('reserve_mem=16M:4096:oops reserve_mem="1M:64:a b" quiet')
    params = [parse_reserve_mem(v) for p, v in args if parameq(p, "reserve_mem")]
    assert params == [
        ReserveMemParam(16 * SZ_1M, 4096, "oops"),
        ReserveMemParam(SZ_1M, 64, "a b"),
    ]


# ---------------------------------------------------------------------------------------
# Properties: totality

# Characters that steer the parsers into their interesting branches.
_FOCUS = st.sampled_from(list("0123456789xXabcdefKMGTPEkmgtpe%,:=\"- +\n\t\0\xa0\x85yYnNoOtTfF"))
focused_text = st.lists(_FOCUS, max_size=40).map("".join)
any_text = st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=0xFF)), focused_text)
any_value = st.one_of(st.none(), any_text)


def _only_kernel_errors(func: Callable[..., object], *args: object) -> None:
    try:
        func(*args)
    except KernelError as err:
        assert err.errno in (errno.EINVAL, errno.ERANGE)


@given(any_text, st.integers(min_value=0, max_value=50), st.sampled_from([0, 2, 8, 10, 16]))
def test_simple_strtoull_total(text: str, pos: int, base: int) -> None:
    value, end = simple_strtoull(text, pos, base)
    assert 0 <= value <= U64_MASK
    assert end >= pos
    assert end <= max(pos, len(text))


@given(any_text, st.integers(min_value=0, max_value=50))
def test_memparse_total(text: str, pos: int) -> None:
    value, end = memparse(text, pos)
    assert 0 <= value <= U64_MASK
    assert pos <= end <= max(pos, len(text))
    if end == pos:
        assert value == 0


@given(st.one_of(any_text, st.binary()))
def test_kstrtobool_total(data: str | bytes) -> None:
    _only_kernel_errors(kstrtobool, data)


@given(st.one_of(any_text, st.binary()), st.sampled_from([0, 8, 10, 16]))
def test_kstrtoull_total(data: str | bytes, base: int) -> None:
    _only_kernel_errors(kstrtoull, data, base)


@given(any_text, any_text)
def test_parameq_total(a: str, b: str) -> None:
    assert parameq(a, b) == parameq(b, a)
    assert parameq(a, a)


@given(any_text, st.integers(min_value=0, max_value=50))
def test_next_arg_total(text: str, pos: int) -> None:
    param, value, nxt = next_arg(text, pos)
    assert nxt >= pos
    assert "\0" not in param
    assert value is None or "\0" not in value


@given(any_text)
def test_parse_args_total(text: str) -> None:
    args, rest = parse_args_with_rest(text)
    assert parse_args(text) == args
    assert rest in text
    for param, value in args:
        assert value is not None or param != "--"


@given(any_value)
def test_kho_parse_enable_total(value: str | None) -> None:
    assert kho_parse_enable(value) in (True, False, None)


@given(any_value)
def test_kho_parse_scratch_size_total(value: str | None) -> None:
    result = kho_parse_scratch_size(value, DEFAULT)
    if result is not None:
        sizing, line = result
        assert line.startswith("KHO: scratch ")
        assert 0 <= sizing.scale <= 0xFFFFFFFF
        if line.startswith("KHO: scratch areas: "):
            assert sizing.scale == 0
            assert sizing.size_global and sizing.size_pernode


@given(any_value)
def test_parse_reserve_mem_total(value: str | None) -> None:
    result = parse_reserve_mem(value)
    if result is not None:
        assert result.size > 0
        assert result.align >= 64
        assert 1 <= len(result.name) <= 15
        assert result.name.strip(" \t\n\v\f\r\xa0")


# ---------------------------------------------------------------------------------------
# Properties: agreement with a plain reference

_SHIFTS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


@st.composite
def numbers(draw: st.DrawFn) -> tuple[str, int]:
    """A number in decimal, octal or hex spelling, with its exact value (may exceed 2^64)."""
    value = draw(st.one_of(st.integers(0, 1 << 20), st.integers(0, 1 << 70)))
    radix = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
    if radix == "dec":
        return str(value), value
    if radix == "oct":
        return "0" + format(value, "o"), value
    digits = format(value, "x" if radix == "hex" else "X")
    return draw(st.sampled_from(["0x", "0X"])) + digits, value


@given(numbers(), st.sampled_from(sorted(_SHIFTS)), st.booleans(),
       st.sampled_from(["", ":", ",", " x", "\0K", "%"]))
def test_memparse_matches_reference(
    number: tuple[str, int], suffix: str, lower: bool, tail: str
) -> None:
    spelled, value = number
    if spelled[:2] in ("0x", "0X") and suffix == "E":
        suffix = "M"  # in hex an E would be another digit
    if lower:
        suffix = suffix.lower()
    text = spelled + suffix + tail
    assert memparse(text) == ((value << _SHIFTS[suffix.upper()]) & U64_MASK,
                              len(spelled) + len(suffix))


@given(numbers(), st.sampled_from(["", "+"]), st.sampled_from(["", "\n", "\0junk", "\n\0x"]))
def test_kstrtoull_matches_reference(number: tuple[str, int], sign: str, tail: str) -> None:
    spelled, value = number
    text = sign + spelled + tail
    if value > U64_MASK:
        with pytest.raises(KernelError) as info:
            kstrtoull(text)
        assert info.value.errno == errno.ERANGE
    else:
        assert kstrtoull(text) == value
        assert kstrtoull(text.encode("latin-1")) == value


@given(numbers(), st.sampled_from(["\n\n", " ", "x", "-", "\n1"]))
def test_kstrtoull_rejects_trailing_text(number: tuple[str, int], tail: str) -> None:
    spelled, value = number
    with pytest.raises(KernelError) as info:
        kstrtoull(spelled + tail)
    assert info.value.errno == (errno.ERANGE if value > U64_MASK else errno.EINVAL)


@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_kho_scratch_sizes_match_reference(g: int, p: int) -> None:
    result = kho_parse_scratch_size(f"{g:#x},{p}", DEFAULT)
    if g == 0 or p == 0:
        assert result is None
    else:
        assert result == (ScratchSizing(0, g, p),
                          f"KHO: scratch areas: global: {g >> 20}MB pernode: {p >> 20}MB")


@given(st.integers(0, 1 << 70))
def test_kho_scratch_percent_matches_reference(n: int) -> None:
    scale = n & 0xFFFFFFFF
    signed = scale - (1 << 32) if scale >= 1 << 31 else scale
    assert kho_parse_scratch_size(f"{n}%", DEFAULT) == (
        ScratchSizing(scale=scale), f"KHO: scratch scale is {signed} percent")


_NAME = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                                       exclude_characters="\xa0"), min_size=1, max_size=15)


@given(st.integers(1, 1 << 40), st.integers(0, 1 << 30), _NAME)
def test_reserve_mem_matches_reference(size: int, align: int, name: str) -> None:
    assert parse_reserve_mem(f"{size}:{align:#x}:{name}") == ReserveMemParam(
        size, max(align, 64), name)


# ---------------------------------------------------------------------------------------
# Properties: parse_args round trip

_WORD_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                            exclude_characters='"=\xa0')
_params = st.text(alphabet=_WORD_CHARS, min_size=1, max_size=8).filter(lambda p: p != "--")
_plain_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters='"\xa0'),
    max_size=8,
)
_spaced_values = st.text(
    alphabet=st.characters(min_codepoint=0x09, max_codepoint=0xFF, exclude_characters='"\0'),
    max_size=8,
)
_separators = st.text(alphabet=" \t\n\v\f\r\xa0", min_size=1, max_size=3)


@given(st.lists(st.tuples(_params, st.one_of(st.none(), _plain_values)), max_size=8),
       _separators, st.text(alphabet=" \t\n", max_size=2), st.text(alphabet=" \t\n", max_size=2))
@example([("kho", "on"), ("quiet", None)], " ", "", "")
def test_parse_args_round_trip(
    args: list[tuple[str, str | None]], sep: str, lead: str, trail: str
) -> None:
    line = lead + sep.join(p if v is None else f"{p}={v}" for p, v in args) + trail
    assert parse_args(line) == args


@given(st.lists(st.tuples(_params, _spaced_values, st.booleans()), max_size=6), _separators)
def test_parse_args_round_trip_quoted(args: list[tuple[str, str, bool]], sep: str) -> None:
    spelled = [f'"{p}={v}"' if whole else f'{p}="{v}"' for p, v, whole in args]
    assert parse_args(sep.join(spelled)) == [(p, v) for p, v, _ in args]


@given(st.lists(st.tuples(_params, st.one_of(st.none(), _plain_values)), max_size=4),
       st.text(max_size=20))
def test_parse_args_rest_after_dashes(args: list[tuple[str, str | None]], rest: str) -> None:
    rest = rest.replace("\0", "").lstrip(" \t\n\v\f\r\xa0")
    line = " ".join([p if v is None else f"{p}={v}" for p, v in args] + ["--", rest])
    assert parse_args_with_rest(line) == (args, rest)
