"""lib/string_helpers.c: the kernel's human-readable size formatter.

``memblock/reserve_mem_param`` (Linux 7.1+, spec kho-mainline.md §9) prints each region's
size with ``string_get_size(size, 1, STRING_UNITS_2, buf, 16)``: three significant figures,
binary units, a space, ``B``. The rounding has kernel quirks (a carry never changes the
unit, so ``1024 KiB`` is possible); they are kept.
"""

from __future__ import annotations

STRING_UNITS_10 = 0
STRING_UNITS_2 = 1
_UNITS = {
    STRING_UNITS_10: ("", "k", "M", "G", "T", "P", "E", "Z", "Y"),
    STRING_UNITS_2: ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"),
}
_DIVISOR = {STRING_UNITS_10: 1000, STRING_UNITS_2: 1024}
_ROUNDING = (500, 50, 5)
U64_MASK = (1 << 64) - 1


def string_get_size(
    size: int, blk_size: int = 1, units: int = STRING_UNITS_2, buflen: int = 16
) -> str:
    """``string_get_size(size, blk_size, units, buf, buflen)``: the text in ``buf``
    (truncated to ``buflen - 1`` characters, as ``snprintf`` does)."""
    size &= U64_MASK
    blk_size &= U64_MASK
    divisor = _DIVISOR[units]
    i = 0
    remainder = 0
    tail = ""
    if blk_size == 0:
        size = 0
    if size:
        while blk_size >> 32:
            blk_size //= divisor
            i += 1
        while size >> 32:
            size //= divisor
            i += 1
        size = (size * blk_size) & U64_MASK
        while size >= divisor:
            size, remainder = divmod(size, divisor)
            i += 1
        sf_cap = size
        j = 0
        while sf_cap * 10 < 1000:
            sf_cap *= 10
            j += 1
        if units == STRING_UNITS_2:
            remainder = (remainder * 1000) >> 10
        remainder += _ROUNDING[j]
        if remainder >= 1000:
            remainder -= 1000
            size += 1
        if j:
            tail = f".{remainder:03d}"[: j + 1]
    unit = _UNITS[units][i] if i < len(_UNITS[units]) else "UNK"
    text = f"{size & 0xFFFFFFFF}{tail} {unit}B"
    return text[: buflen - 1]
