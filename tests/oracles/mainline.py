"""Independent test oracles for the mainline KHO model (Linux 6.16 – 7.0, debugfs interface).

Written from ``shared/spec/kho-mainline.md`` alone; "§x.y" below is a section of that file.
Where the spec left room, the kernel source was read and is cited as
"<release> <path>" (repository torvalds/linux). Nothing here imports or reads ``kho_fs``: an
oracle that shares the model's code would share its mistakes.

Everything is pure and works on bytes. Memory is reached through callables
(``read(addr, size) -> bytes``, ``write(addr, data)``, ``alloc_page() -> addr``), so the same
functions serve a dict-backed fake RAM in a unit test, the model's physical memory, or the
``dev/mem`` file of a mounted machine.

Era labels are those of §0: ``6.16``, ``6.16-fix`` (Linux 6.17), ``6.18``, ``6.19`` (also 7.0),
``stateless``, ``blob``. Release names are those of §15.1.
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import libfdt

# ---------------------------------------------------------------------------------------------
# Common constants
# ---------------------------------------------------------------------------------------------

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
U64_MASK: Final = (1 << 64) - 1
SZ_1M: Final = 1 << 20
SZ_2M: Final = 2 << 20
#: CMA_MIN_ALIGNMENT_BYTES on x86-64: one pageblock (§3.2).
PAGEBLOCK_BYTES: Final = SZ_2M

ERAS: Final = ("6.16", "6.16-fix", "6.18", "6.19", "stateless", "blob")
ERAS_WITH_FINALIZE: Final = ("6.16", "6.16-fix", "6.18", "6.19")
#: Preservation bitmap size in bytes by era (§6.1); the later eras use the radix tree (§6.3).
BITMAP_BYTES: Final[Mapping[str, int]] = {"6.16": 512, "6.16-fix": 512, "6.18": 4096, "6.19": 4096}
#: Root ``compatible`` by era (§5.1; the blob era's defined string is ``kho-v4``).
ROOT_COMPATIBLE: Final[Mapping[str, str]] = {
    "6.16": "kho-v1",
    "6.16-fix": "kho-v1",
    "6.18": "kho-v1",
    "6.19": "kho-v1",
    "stateless": "kho-v2",
    "blob": "kho-v4",
}

# §7.1 reference bytes: one region `oops` at 0x23fe00000, 16 MiB.
MEMBLOCK_REFERENCE = bytes.fromhex(
    "d00dfeed000000d200000040000000bc00000030000000110000001000000000"
    "000000160000007c000000000000000000000000000000000000000000000000"
    "0000000100000000000000030000000c0000000b6d656d626c6f636b2d763100"
    "000000016f6f707300000000000000030000000f0000000b726573657276652d"
    "6d656d2d763100000000000300000008000000050000e03f0200000000000003"
    "0000000800000000000000010000000000000002000000020000000973697a65"
    "00737461727400636f6d70617469626c6500"
)


def _check_era(era: str) -> None:
    if era not in ERAS:
        raise ValueError(f"unknown era {era!r}; expected one of {ERAS}")


def _le64(value: int) -> bytes:
    return struct.pack("<Q", value & U64_MASK)


def _round_up_u64(value: int, align: int) -> int:
    """The kernel's ``round_up`` for a power-of-two ``align`` on u64: ``((x - 1) | (a - 1)) + 1``.

    Computed modulo 2^64, so ``round_up(0)`` is 0 and a wrapped "negative" value just under
    2^64 rounds to 0 — the behaviour §3.2 "Derived" relies on.
    """
    return ((((value - 1) & U64_MASK) | (align - 1)) + 1) & U64_MASK


# ---------------------------------------------------------------------------------------------
# §6 Preserved-memory map: range splitting, chunk walking, decoding and encoding
# ---------------------------------------------------------------------------------------------

#: Chunk header (§6.2): next chunk (u64), page order (u32), number of used entries (u32).
_CHUNK_HEADER: Final = struct.Struct("<QII")
#: Chunk entry (§6.2): physical start covered by the bitmap (u64), bitmap address (u64).
_CHUNK_ENTRY: Final = struct.Struct("<QQ")
#: (4096 - 16) / 16: "255 entries × 16 bytes + 16-byte header = 4096 bytes" (§6.2).
CHUNK_MAX_ENTRIES: Final = (PAGE_SIZE - _CHUNK_HEADER.size) // _CHUNK_ENTRY.size


class Chunk(NamedTuple):
    """One serialized chunk page of the preserved-memory map (§6.2), as read from memory."""

    addr: int
    next: int
    order: int
    entries: tuple[tuple[int, int], ...]  # (phys_start, bitmap_addr), the used entries only


def split_range_to_blocks(start: int, size: int) -> list[tuple[int, int]]:
    """Split a page-aligned range into maximal aligned blocks, as range preservation does (§6.1).

    Returns ``(phys, order)`` pairs in address order; block ``i`` covers ``4096 << order``
    bytes. The order of each block is ``min(trailing zero bits of pfn,
    floor(log2(remaining pages)))``.

    pfn 0 is treated as infinitely aligned (only the remaining length limits the order). The
    kernel's ``count_trailing_zeros(0)`` is -1 (include/linux/count_zeros.h), which makes the
    loop in 6.16 kernel/kexec_handover.c ``kho_preserve_phys`` undefined at pfn 0; no real
    caller preserves page 0, so the mathematical reading is used here.

    Raises ValueError unless ``start`` and ``size`` are multiples of 4096 (6.16 returns EINVAL
    for those; 6.18 instead preserves ``size // 4096`` whole pages — callers model that by
    truncating ``size`` themselves, §7.1).
    """
    if start < 0 or size < 0:
        raise ValueError("negative start or size")
    if start % PAGE_SIZE or size % PAGE_SIZE:
        raise ValueError(f"range {start:#x}+{size:#x} is not page aligned")
    pfn = start >> PAGE_SHIFT
    end = pfn + (size >> PAGE_SHIFT)
    blocks: list[tuple[int, int]] = []
    while pfn < end:
        order = (end - pfn).bit_length() - 1
        if pfn:
            order = min(order, (pfn & -pfn).bit_length() - 1)
        blocks.append((pfn << PAGE_SHIFT, order))
        pfn += 1 << order
    return blocks


def blocks_to_ranges(blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge ``(phys, order)`` blocks into sorted, maximal ``(start, size)`` ranges (§6.2).

    Adjacent blocks are merged, and so are overlapping ones (a corrupt or hand-made map can
    list the same memory at two orders): the result is the union of the covered bytes.
    """
    spans = sorted((phys, phys + (PAGE_SIZE << order)) for phys, order in blocks)
    ranges: list[tuple[int, int]] = []
    cur_start = cur_end = -1
    for start, end in spans:
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        if cur_end >= 0:
            ranges.append((cur_start, cur_end - cur_start))
        cur_start, cur_end = start, end
    if cur_end >= 0:
        ranges.append((cur_start, cur_end - cur_start))
    return ranges


def walk_chunks(read: Callable[[int, int], bytes], first_chunk: int) -> list[Chunk]:
    """Read the chunk list starting at ``first_chunk`` (§6.2); 0 means an empty map.

    Raises ValueError when the list cycles (a chunk address seen twice) or when a header claims
    more than 255 used entries (the kernel would read past its page), and when ``read``
    returns fewer bytes than asked.
    """
    chunks: list[Chunk] = []
    seen: set[int] = set()
    addr = first_chunk
    while addr:
        if addr in seen:
            raise ValueError(f"preserved-memory map chunk list loops back to {addr:#x}")
        seen.add(addr)
        page = read(addr, PAGE_SIZE)
        if len(page) != PAGE_SIZE:
            raise ValueError(f"short read of chunk {addr:#x}: {len(page)} bytes")
        nxt, order, count = _CHUNK_HEADER.unpack_from(page, 0)
        if count > CHUNK_MAX_ENTRIES:
            raise ValueError(f"chunk {addr:#x} claims {count} entries (max {CHUNK_MAX_ENTRIES})")
        entries = tuple(
            _CHUNK_ENTRY.unpack_from(page, _CHUNK_HEADER.size + i * _CHUNK_ENTRY.size)
            for i in range(count)
        )
        chunks.append(Chunk(addr, nxt, order, entries))
        addr = nxt
    return chunks


def decode_preserved_memory_map(
    read: Callable[[int, int], bytes], first_chunk: int, bitmap_bytes: int
) -> list[tuple[int, int]]:
    """Decode the bitmap/chunk preserved-memory map into sorted, unique ``(phys, order)`` (§6.2).

    For every set bit ``b`` of an entry's bitmap (bit ``b`` is bit ``b mod 8`` of byte
    ``b / 8``, least significant first) the block at ``phys_start + (b << (order + 12))`` is
    preserved. Like the kernel (6.16/6.19 kernel/.../kexec_handover.c ``deserialize_bitmap``)
    the entry's ``phys_start`` is trusted as written, and the sum is taken modulo 2^64.
    ``bitmap_bytes`` is 512 for 6.16/6.17 and 4096 from 6.18 (§6.1); decoding with the wrong
    size silently misparses (§13). A block listed twice is returned once.

    Raises ValueError on a looping chunk list or an impossible entry count (see walk_chunks).
    """
    if bitmap_bytes <= 0:
        raise ValueError("bitmap_bytes must be positive")
    found: set[tuple[int, int]] = set()
    for chunk in walk_chunks(read, first_chunk):
        shift = chunk.order + PAGE_SHIFT
        for phys_start, bitmap_addr in chunk.entries:
            data = read(bitmap_addr, bitmap_bytes)
            if len(data) != bitmap_bytes:
                raise ValueError(f"short read of bitmap {bitmap_addr:#x}")
            bits = int.from_bytes(data, "little")
            while bits:
                low = bits & -bits
                bit = low.bit_length() - 1
                bits ^= low
                found.add(((phys_start + (bit << shift)) & U64_MASK, chunk.order))
    return sorted(found)


def preserved_map_layout(
    blocks: Iterable[tuple[int, int]], bitmap_bytes: int
) -> list[tuple[int, list[tuple[int, bytes]]]]:
    """The logical content of the map: per order (ascending), its bitmaps (§6.1).

    Returns ``[(order, [(phys_start, bitmap), ...]), ...]`` with bitmaps in ascending bitmap
    number; ``phys_start = (number × B) << (order + 12)`` with ``B = 8 × bitmap_bytes`` bits.
    A block at pfn with order ``o`` sets bit ``(pfn >> o) mod B`` of bitmap ``(pfn >> o) / B``.

    Raises ValueError for a block not aligned to its own size or a negative order.
    """
    bits_per_bitmap = bitmap_bytes * 8
    per_order: dict[int, dict[int, int]] = {}
    for phys, order in blocks:
        if order < 0 or phys < 0 or phys > U64_MASK:
            raise ValueError(f"bad block ({phys:#x}, {order})")
        if phys % (PAGE_SIZE << order):
            raise ValueError(f"block {phys:#x} is not aligned to its order {order}")
        pfn_high = (phys >> PAGE_SHIFT) >> order
        number, bit = divmod(pfn_high, bits_per_bitmap)
        bitmaps = per_order.setdefault(order, {})
        bitmaps[number] = bitmaps.get(number, 0) | (1 << bit)
    layout: list[tuple[int, list[tuple[int, bytes]]]] = []
    for order in sorted(per_order):
        entries = [
            (
                ((number * bits_per_bitmap) << (order + PAGE_SHIFT)) & U64_MASK,
                value.to_bytes(bitmap_bytes, "little"),
            )
            for number, value in sorted(per_order[order].items())
        ]
        layout.append((order, entries))
    return layout


def encode_preserved_memory_map(
    blocks: Iterable[tuple[int, int]],
    bitmap_bytes: int,
    alloc_page: Callable[[], int],
    write: Callable[[int, bytes], None],
) -> int:
    """Serialize blocks into bitmaps and chunk pages (§6.1, §6.2); return the first chunk's address.

    This is an encoder of its own, written from the spec so that tests can craft handovers byte
    by byte. Layout and ordering, as 6.16 and 6.19 kernel/.../kexec_handover.c
    ``kho_mem_serialize`` do it: chunks grouped by page order, ascending; every order starts a
    new chunk; entries in ascending bitmap number; a chunk holds at most 255 entries and a full
    one continues in a new chunk of the same order; ``next`` links them, 0 ends the list.
    Every chunk page is written whole (4096 bytes, unused entries zero).

    Memory placement (the spec leaves it free; nothing but the pointers depends on it):
    all bitmaps are allocated first (order ascending, bitmap number ascending — the kernel
    allocates them while preserving, before serialization), then the chunks in list order.
    A 4096-byte bitmap takes a page of its own; smaller bitmaps (512 bytes in 6.16/6.17, where
    the kernel uses ``kzalloc`` and so a shared slab page) are packed ``4096 // bitmap_bytes``
    to a page, in allocation order. ``alloc_page`` must return page-aligned, non-zero addresses
    of pages that may be overwritten.

    With no blocks nothing is allocated and 0 is returned (what 6.19 stores when nothing is
    preserved; 6.16–6.18 always preserve at least the root FDT page).
    """
    if bitmap_bytes <= 0 or PAGE_SIZE % bitmap_bytes:
        raise ValueError("bitmap_bytes must divide 4096")
    layout = preserved_map_layout(blocks, bitmap_bytes)
    if not layout:
        return 0

    def new_page() -> int:
        addr = alloc_page()
        if addr <= 0 or addr % PAGE_SIZE:
            raise ValueError(f"alloc_page returned an unusable address {addr:#x}")
        return addr

    per_page = PAGE_SIZE // bitmap_bytes
    slot = per_page
    page = 0
    placed: list[tuple[int, list[tuple[int, int]]]] = []
    for order, entries in layout:
        refs: list[tuple[int, int]] = []
        for phys_start, bitmap in entries:
            if slot == per_page:
                page, slot = new_page(), 0
            addr = page + slot * bitmap_bytes
            slot += 1
            write(addr, bitmap)
            refs.append((phys_start, addr))
        placed.append((order, refs))

    plan: list[tuple[int, list[tuple[int, int]]]] = []
    for order, refs in placed:
        for i in range(0, len(refs), CHUNK_MAX_ENTRIES):
            plan.append((order, refs[i : i + CHUNK_MAX_ENTRIES]))
    addrs = [new_page() for _ in plan]
    for index, (order, refs) in enumerate(plan):
        nxt = addrs[index + 1] if index + 1 < len(addrs) else 0
        chunk = bytearray(PAGE_SIZE)
        _CHUNK_HEADER.pack_into(chunk, 0, nxt, order, len(refs))
        for i, (phys_start, bitmap_addr) in enumerate(refs):
            _CHUNK_ENTRY.pack_into(
                chunk, _CHUNK_HEADER.size + i * _CHUNK_ENTRY.size, phys_start, bitmap_addr
            )
        write(addrs[index], bytes(chunk))
    return addrs[0]


# ---------------------------------------------------------------------------------------------
# FDT building blocks (libfdt through pylibfdt, the same library the kernel embeds)
# ---------------------------------------------------------------------------------------------


def _ok(ret: int) -> int:
    if ret < 0:
        raise libfdt.FdtException(ret)
    return ret


class _SeqWriter:
    """libfdt's sequential writer on a fixed buffer, exactly as kernel code calls it.

    ``fdt_create(buf, size)`` zeroes the whole buffer; strings are stored newest-first at the
    buffer's end while writing and moved behind the structure block by ``fdt_finish``, which
    sets ``totalsize`` to the packed size. The old copy of the strings stays at the end of the
    buffer (the page image keeps it). A full buffer raises (the kernel gets
    ``-FDT_ERR_NOSPACE``); pylibfdt's FdtSw class would grow the buffer instead, so it is not
    used here.
    """

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        _ok(libfdt.fdt_create(self.buf, size))
        _ok(libfdt.fdt_finish_reservemap(self.buf))

    def begin_node(self, name: str) -> None:
        _ok(libfdt.fdt_begin_node(self.buf, name))

    def property_string(self, name: str, value: str) -> None:
        _ok(libfdt.fdt_property_string(self.buf, name, value))

    def property(self, name: str, value: bytes) -> None:
        _ok(libfdt.fdt_property_stub(self.buf, name, value, len(value)))

    def end_node(self) -> None:
        _ok(libfdt.fdt_end_node(self.buf))

    def finish(self) -> bytearray:
        _ok(libfdt.fdt_finish(self.buf))
        return self.buf


def _blob(buf: bytearray) -> bytes:
    return bytes(buf[: libfdt.fdt_totalsize(buf)])


def stringlist_contains(value: bytes, string: str) -> bool:
    """libfdt ``fdt_stringlist_contains``: is ``string`` one of the NUL-terminated strings?

    Used for every compatible check (§4.3 step 3, §7.2, §10); an unterminated tail never
    matches.
    """
    return string.encode() in value.split(b"\0")[:-1]


def _getprop(fdt: libfdt.Fdt, node: int, name: str) -> bytes | None:
    prop = fdt.getprop(node, name, quiet=(libfdt.NOTFOUND,))
    if isinstance(prop, int):
        return None
    return bytes(prop)


# ---------------------------------------------------------------------------------------------
# §7.1 memblock sub-FDT
# ---------------------------------------------------------------------------------------------

MEMBLOCK_SUBTREE_NAME: Final = "memblock"
MEMBLOCK_COMPATIBLE: Final = "memblock-v1"
RESERVE_MEM_COMPATIBLE: Final = "reserve-mem-v1"


def _memblock_buffer(regions: Sequence[tuple[str, int, int]]) -> bytearray:
    w = _SeqWriter(PAGE_SIZE)
    w.begin_node("")
    w.property_string("compatible", MEMBLOCK_COMPATIBLE)
    for name, start, size in regions:
        w.begin_node(name)
        w.property_string("compatible", RESERVE_MEM_COMPATIBLE)
        w.property("start", _le64(start))
        w.property("size", _le64(size))
        w.end_node()
    w.end_node()
    return w.finish()


def memblock_sub_fdt(regions: Sequence[tuple[str, int, int]]) -> bytes:
    """The ``memblock`` sub-FDT for ``(name, start, size)`` regions in table order (§7.1).

    Call order (mm/memblock.c ``prepare_kho_fdt``, identical in 6.16, 6.18 and 6.19+; only the
    preservation calls around it moved): ``fdt_create(fdt, PAGE_SIZE)``,
    ``fdt_finish_reservemap``, ``begin_node("")``, ``property_string("compatible",
    "memblock-v1")``, then per region ``begin_node(name)``, ``property_string("compatible",
    "reserve-mem-v1")``, ``property("start", 8 bytes)``, ``property("size", 8 bytes)``,
    ``end_node``; ``end_node``, ``fdt_finish``. The strings block therefore reads
    ``size\\0start\\0compatible\\0`` (newest first) and ``totalsize`` is the packed size
    (210 bytes for one 4-character name), not the page size.

    Returns ``totalsize`` bytes (what ``out/sub_fdts/memblock`` serves). The kernel builds it
    only when at least one region exists; with none this still returns a valid empty tree.
    """
    return _blob(_memblock_buffer(regions))


def memblock_sub_fdt_page(regions: Sequence[tuple[str, int, int]]) -> bytes:
    """The whole 4096-byte page holding the ``memblock`` sub-FDT (see memblock_sub_fdt).

    Beyond ``totalsize`` the page is zero except for the stale copy of the strings block that
    the sequential writer leaves at the page's end.
    """
    return bytes(_memblock_buffer(regions))


# ---------------------------------------------------------------------------------------------
# §5.1 root FDT
# ---------------------------------------------------------------------------------------------

PRESERVED_MEMORY_MAP: Final = "preserved-memory-map"


def _root_seq_buffer(
    compatible: str, mem_map: int, children: Sequence[tuple[str, int]], child_prop: str
) -> bytearray:
    w = _SeqWriter(PAGE_SIZE)
    w.begin_node("")
    w.property_string("compatible", compatible)
    w.property(PRESERVED_MEMORY_MAP, _le64(mem_map))
    for name, phys in children:
        w.begin_node(name)
        w.property(child_prop, _le64(phys))
        w.end_node()
    w.end_node()
    return w.finish()


def root_fdt(
    compatible: str,
    mem_map: int,
    children: Sequence[tuple[str, int]],
    *,
    child_prop: str = "fdt",
) -> bytes:
    """The root FDT as 6.16–6.18 build it at finalize (§2.4, §5.1), children in the given order.

    6.16 kernel/kexec_handover.c ``kho_finalize``: ``fdt_create(fdt, PAGE_SIZE)``,
    ``finish_reservemap``, ``begin_node("")``, ``property_string("compatible", "kho-v1")``,
    ``fdt_property_placeholder("preserved-memory-map", 8)`` (filled with the first chunk's
    address before the root is closed, so the bytes equal writing the value directly), then
    every notifier's ``kho_add_subtree``: ``begin_node(name)``, ``property("fdt", &phys, 8)``,
    ``end_node``; finally ``end_node`` and ``fdt_finish``. Values are native (LE) u64.
    Strings block, newest first: ``fdt\\0preserved-memory-map\\0compatible\\0``.

    Returns ``totalsize`` bytes (the packed size; ``out/fdt`` serves exactly these).
    ``child_prop`` is ``fdt`` for 6.16–7.0 (``preserved-data`` would be the stateless name).
    """
    return _blob(_root_seq_buffer(compatible, mem_map, children, child_prop))


def root_fdt_page(
    compatible: str,
    mem_map: int,
    children: Sequence[tuple[str, int]],
    *,
    child_prop: str = "fdt",
) -> bytes:
    """The whole 4096-byte root page of root_fdt (stale strings copy at the page's end)."""
    return bytes(_root_seq_buffer(compatible, mem_map, children, child_prop))


def _root_6_19_buffer(
    compatible: str, mem_map: int, children: Sequence[tuple[str, int]], child_prop: str
) -> bytearray:
    # kho_out_fdt_setup() (6.19 kernel/liveupdate/kexec_handover.c), at kho_init:
    buf = _root_seq_buffer(compatible, 0, (), child_prop)
    # kho_add_subtree(), once per subtree, in the order the subtrees are added:
    for name, phys in children:
        _ok(libfdt.fdt_open_into(buf, buf, PAGE_SIZE))
        off = libfdt.fdt_add_subnode(buf, 0, name)
        if off == -libfdt.EXISTS:
            raise OSError(errno.EEXIST, f"subtree {name!r} already exists")
        _ok(off)
        _ok(libfdt.fdt_setprop(buf, off, child_prop, _le64(phys), 8))
        _ok(libfdt.fdt_pack(buf))
    # kho_finalize() -> kho_update_memory_map(): put_unaligned() into the existing 8-byte
    # value, in place. fdt_setprop with the same length rewrites exactly those bytes.
    if mem_map:
        _ok(libfdt.fdt_setprop(buf, 0, PRESERVED_MEMORY_MAP, _le64(mem_map), 8))
    return buf


def root_fdt_6_19(
    compatible: str,
    mem_map: int,
    children: Sequence[tuple[str, int]],
    *,
    child_prop: str = "fdt",
) -> bytes:
    """The root FDT the way 6.19/7.0 build it (§5.1); ``children`` in the order they were ADDED.

    6.19 kernel/liveupdate/kexec_handover.c:

    - ``kho_out_fdt_setup`` (at ``kho_init``): ``fdt_create(root, PAGE_SIZE)``,
      ``finish_reservemap``, ``begin_node("")``, ``property_string("compatible", ...)``,
      ``property("preserved-memory-map", &zero, 8)``, ``end_node``, ``fdt_finish`` — the
      sequential writer, so the initial ``totalsize`` is packed (152 bytes for ``kho-v1``;
      this is the size ``out/fdt`` keeps, §2.1).
    - ``kho_add_subtree``: ``fdt_open_into(root, root, PAGE_SIZE)``,
      ``fdt_add_subnode(root, 0, name)`` (libfdt inserts the node after the parent's
      properties, i.e. before every existing child, so the result lists children
      newest-first), ``fdt_setprop(root, off, "fdt", &phys, 8)``, ``fdt_pack(root)``.
    - ``kho_finalize`` → ``kho_update_memory_map``: the map address is written into the
      existing property in place (``fdt_getprop_w`` + ``put_unaligned``); layout unchanged.

    It is NOT the same bytes as root_fdt with reversed children, in two ways: the read-write
    calls append ``fdt`` at the end of the strings block
    (``preserved-memory-map\\0compatible\\0fdt\\0``) where the sequential writer puts it first;
    and libfdt's ``fdt_pack`` (``fdt_packblocks_``) moves the memory-reservation block from
    0x30 (``fdt_create`` aligns it to 16) to 0x28 (``FDT_ALIGN(header, 8)``), so from the first
    addition on the tree is 8 bytes smaller than the sequential one. Returns ``totalsize``
    bytes (packed after every addition). An existing name raises OSError(EEXIST), as
    ``kho_add_subtree`` returns.
    """
    return _blob(_root_6_19_buffer(compatible, mem_map, children, child_prop))


def root_fdt_6_19_page(
    compatible: str,
    mem_map: int,
    children: Sequence[tuple[str, int]],
    *,
    child_prop: str = "fdt",
) -> bytes:
    """The whole 4096-byte root page of root_fdt_6_19 (see there)."""
    return bytes(_root_6_19_buffer(compatible, mem_map, children, child_prop))


def decode_root_fdt(blob: bytes, *, child_prop: str = "fdt") -> dict[str, Any]:
    """Read a handed-over root FDT (§5.1, §5.2): compatible list, map address, children.

    Returns ``{"compatible": [str, ...], "preserved_memory_map": int | None,
    "children": [(name, address | None), ...]}`` with children in FDT order; a map or child
    property that is missing or not exactly 8 bytes reads as None. Raises
    libfdt.FdtException for a blob whose header libfdt rejects.
    """
    fdt = libfdt.Fdt(blob)
    compat = _getprop(fdt, 0, "compatible") or b""
    mem = _getprop(fdt, 0, PRESERVED_MEMORY_MAP)
    children: list[tuple[str, int | None]] = []
    node = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
    while node >= 0:
        value = _getprop(fdt, node, child_prop)
        addr = struct.unpack("<Q", value)[0] if value is not None and len(value) == 8 else None
        children.append((fdt.get_name(node), addr))
        node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    return {
        "compatible": [s.decode(errors="replace") for s in compat.split(b"\0")[:-1]],
        "preserved_memory_map": (
            struct.unpack("<Q", mem)[0] if mem is not None and len(mem) == 8 else None
        ),
        "children": children,
    }


# ---------------------------------------------------------------------------------------------
# §10 test_kho
# ---------------------------------------------------------------------------------------------

KHO_TEST_MAGIC: Final = 0x4B484F21  # "KHO!"
KHO_TEST_NAME: Final = "kho_test"
KHO_TEST_COMPATIBLE: Final = "kho-test-v1"
#: Module parameter default: 2 × (4096 << MAX_PAGE_ORDER(10)) = 8 MiB (§10).
KHO_TEST_MAX_MEM: Final = 2 * (PAGE_SIZE << 10)
_VMALLOC_DESC: Final = struct.Struct("<QIHH")


def kho_test_folios_info_6_16(folios: Sequence[tuple[int, int]]) -> bytes:
    """6.16 ``folios_info``: one native u64 per folio, physical address OR order (§10)."""
    return b"".join(_le64(phys | order) for phys, order in folios)


def kho_vmalloc_descriptor(first: int, total_pages: int, flags: int, order: int) -> bytes:
    """The 16-byte vmalloc descriptor of §6.4 (6.18+ ``folios_info``): LE u64, u32, u16, u16."""
    return _VMALLOC_DESC.pack(first, total_pages, flags, order)


def kho_test_sub_fdt(
    nr_folios: int, folios_info: bytes, csum: int, *, buffer_size: int | None = None
) -> bytes:
    """The ``kho_test`` sub-FDT, byte-exact (§10), returned as ``totalsize`` bytes.

    lib/test_kho.c (all eras; 6.18 passes the vmalloc descriptor as ``folios_info``):
    ``fdt_create(fdt, nr_folios * 8 + PAGE_SIZE)``, ``finish_reservemap``, ``begin_node("")``,
    ``property("compatible", "kho-test-v1\\0", 12)``, ``property("magic", u32)``,
    ``begin_node("data")``, ``property("nr_folios", u32)``, ``property("folios_info", ...)``,
    ``property("csum", u32)``, ``end_node``, ``end_node``, ``fdt_finish``. The buffer size only
    matters for the page image (stale strings at its end) and for NOSPACE.
    """
    w = _SeqWriter(buffer_size if buffer_size is not None else nr_folios * 8 + PAGE_SIZE)
    w.begin_node("")
    w.property("compatible", KHO_TEST_COMPATIBLE.encode() + b"\0")
    w.property("magic", struct.pack("<I", KHO_TEST_MAGIC))
    w.begin_node("data")
    w.property("nr_folios", struct.pack("<I", nr_folios))
    w.property("folios_info", folios_info)
    w.property("csum", struct.pack("<I", csum & 0xFFFFFFFF))
    w.end_node()
    w.end_node()
    return _blob(w.finish())


def kho_test_sub_fdt_check(blob: bytes, era: str | None = None) -> dict[str, Any]:
    """Decode and check test_kho's ``kho_test`` sub-FDT the way its restore path does (§10).

    Checks, in lib/test_kho.c ``kho_test_restore`` order: a valid header, root compatible list
    containing ``kho-test-v1``, ``magic`` of 4 bytes equal to 0x4b484f21, ``/data`` with
    ``nr_folios`` (4 bytes), ``csum`` (4 bytes) and ``folios_info`` of ``8 × nr_folios`` bytes
    (6.16/6.16-fix) or 16 bytes (6.18 and later: a vmalloc descriptor, §6.4). The folio
    contents and checksum are not checked here (see inet_csum32).

    ``era`` selects the ``folios_info`` encoding; with None it is inferred from the length,
    and a length that fits both (two folios: 16 bytes) raises ValueError.

    Returns a dict: ``compatible`` (list of str), ``magic``, ``nr_folios``, ``csum`` (int or
    None), ``folios_info`` (raw bytes or None), ``layout`` (``"array"``/``"vmalloc"``/None),
    ``folios`` (list of ``(phys, order)`` for the array layout: ``phys = v & ~0xfff``,
    ``order = v & 0xfff``), ``vmalloc`` (dict ``first``, ``total_pages``, ``flags``,
    ``order`` for the descriptor layout), ``problems`` (list of str) and ``valid`` (no
    problems).
    """
    out: dict[str, Any] = {
        "compatible": [],
        "magic": None,
        "nr_folios": None,
        "csum": None,
        "folios_info": None,
        "layout": None,
        "folios": None,
        "vmalloc": None,
        "problems": [],
    }
    problems: list[str] = out["problems"]
    if era is not None:
        _check_era(era)
    try:
        fdt = libfdt.Fdt(blob)
    except libfdt.FdtException as exc:
        problems.append(f"invalid FDT header: {exc}")
        out["valid"] = False
        return out
    compat = _getprop(fdt, 0, "compatible") or b""
    out["compatible"] = [s.decode(errors="replace") for s in compat.split(b"\0")[:-1]]
    if not stringlist_contains(compat, KHO_TEST_COMPATIBLE):
        problems.append(f"root is not compatible with {KHO_TEST_COMPATIBLE!r}")
    magic = _getprop(fdt, 0, "magic")
    if magic is None or len(magic) != 4:
        problems.append("missing or malformed magic")
    else:
        out["magic"] = struct.unpack("<I", magic)[0]
        if out["magic"] != KHO_TEST_MAGIC:
            problems.append(f"wrong magic {out['magic']:#x}")
    data = fdt.path_offset("/data", quiet=(libfdt.NOTFOUND,))
    if data < 0:
        problems.append("no /data node")
        out["valid"] = False
        return out
    nr = _getprop(fdt, data, "nr_folios")
    if nr is None or len(nr) != 4:
        problems.append("missing or malformed nr_folios")
    else:
        out["nr_folios"] = struct.unpack("<I", nr)[0]
    csum = _getprop(fdt, data, "csum")
    if csum is None or len(csum) != 4:
        problems.append("missing or malformed csum")
    else:
        out["csum"] = struct.unpack("<I", csum)[0]
    info = _getprop(fdt, data, "folios_info")
    out["folios_info"] = info
    if info is None:
        problems.append("missing folios_info")
    elif out["nr_folios"] is not None:
        count = out["nr_folios"]
        if era is None:
            fits_array = len(info) == 8 * count
            fits_vmalloc = len(info) == _VMALLOC_DESC.size
            if fits_array and fits_vmalloc:
                raise ValueError("folios_info fits both encodings (2 folios); pass era")
            layout = "array" if fits_array else "vmalloc"
        else:
            layout = "array" if era in ("6.16", "6.16-fix") else "vmalloc"
        out["layout"] = layout
        if layout == "array":
            if len(info) != 8 * count:
                problems.append(f"folios_info is {len(info)} bytes, expected {8 * count}")
            else:
                words = struct.unpack(f"<{count}Q", info)
                out["folios"] = [(w & ~(PAGE_SIZE - 1), w & (PAGE_SIZE - 1)) for w in words]
        elif len(info) != _VMALLOC_DESC.size:
            problems.append(f"folios_info is {len(info)} bytes, expected {_VMALLOC_DESC.size}")
        else:
            first, total, flags, order = _VMALLOC_DESC.unpack(info)
            out["vmalloc"] = {
                "first": first,
                "total_pages": total,
                "flags": flags,
                "order": order,
            }
    out["valid"] = not problems
    return out


def inet_csum32(data: bytes, csum: int = 0) -> int:
    """x86-64 ``csum_partial(data, len(data), csum)``: the running 32-bit Internet checksum.

    test_kho keeps ``csum = csum_partial(folio, size, csum)`` over its folios in allocation
    order, starting from 0, and stores the final ``__wsum`` as the ``csum`` u32 (lib/test_kho.c
    ``kho_test_generate_data``; the restore path recomputes it in ``folios_info`` order and
    compares the 32-bit values exactly).

    arch/x86/lib/csum-partial_64.c: the 32-bit ``sum`` is zero-extended into a u64 which
    accumulates the buffer's little-endian u64 words with end-around carry (``adc``); a
    trailing ``len & 7`` bytes count as one zero-padded LE word; ``csum_finalize_sum`` folds
    to 32 bits with end-around carry (``(t + ror64(t, 32)) >> 32``). Ones'-complement
    arithmetic makes that equal to: ``S = csum + Σ words``; the result is 0 when ``S`` is 0
    (all-zero data and a zero start) and otherwise ``(S - 1) mod (2^32 - 1) + 1`` — whatever
    the word order, the 64-byte two-accumulator loop included. This is the x86-64 value;
    lib/checksum.c (other architectures) returns a different, congruent, 32-bit value.
    """
    if not 0 <= csum <= 0xFFFFFFFF:
        raise ValueError("csum must be a u32")
    total = csum + int.from_bytes(data, "little") % 0xFFFFFFFF
    if csum == 0 and not any(data):
        return 0
    return (total - 1) % 0xFFFFFFFF + 1


def kho_test_csum(folios: Iterable[bytes]) -> int:
    """The checksum test_kho stores: inet_csum32 chained over the folios, from 0 (§10)."""
    csum = 0
    for folio in folios:
        csum = inet_csum32(folio, csum)
    return csum


# ---------------------------------------------------------------------------------------------
# §9 reserve_mem_param size formatter (string_get_size, binary units)
# ---------------------------------------------------------------------------------------------

_UNITS_2: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def reserve_mem_param_size(n: int) -> str:
    """``string_get_size(n, 1, STRING_UNITS_2, ...)`` as §9 describes it (lib/string_helpers.c).

    1. values of 2^32 and more are divided by 1024 (remainder dropped) until below 2^32; then
       divided by 1024 while at least 1024, keeping the last remainder; the number of
       divisions picks the unit;
    2. decimals: 2 below 10, 1 below 100, else 0;
    3. fraction = remainder × 1000 / 1024, plus 500/50/5 for 0/1/2 decimals; reaching 1000
       carries into the integer part (without changing the unit: ``1024 KiB`` is possible);
    4. integer, then ``.`` and the first 1 or 2 digits of the 3-digit fraction, a space, unit.

    Zero prints ``0 B`` (the kernel jumps straight to printing; listings skip size 0 anyway).
    """
    if not 0 <= n <= U64_MASK:
        raise ValueError("size must be a u64")
    if n == 0:
        return "0 B"
    size, units, remainder = n, 0, 0
    while size >> 32:
        size //= 1024
        units += 1
    while size >= 1024:
        size, remainder = divmod(size, 1024)
        units += 1
    decimals = 2 if size < 10 else 1 if size < 100 else 0
    fraction = remainder * 1000 >> 10
    fraction += (500, 50, 5)[decimals]
    if fraction >= 1000:
        fraction -= 1000
        size += 1
    tail = f".{fraction:03d}"[: decimals + 1] if decimals else ""
    unit = _UNITS_2[units] if units < len(_UNITS_2) else "UNKB"
    return f"{size}{tail} {unit}"


def reserve_mem_param_line(name: str, size: int) -> str:
    """One ``memblock/reserve_mem_param`` line: name, two tabs, ``(size)``, newline (§9)."""
    return f"{name}\t\t({reserve_mem_param_size(size)})\n"


# ---------------------------------------------------------------------------------------------
# §3 kho_scratch= and §2.5 scratch files
# ---------------------------------------------------------------------------------------------

MALFORMED_KHO_SCRATCH: Final = "Malformed early option 'kho_scratch'"
DEFAULT_SCRATCH_SCALE: Final = 200


def _digit(ch: str) -> int:
    if "0" <= ch <= "9":
        return ord(ch) - ord("0")
    low = ch.lower()
    if "a" <= low <= "f" and len(ch) == 1 and ch.isascii():
        return ord(low) - ord("a") + 10
    return 16


def _fixup_radix(s: str, pos: int, base: int) -> tuple[int, int]:
    """lib/kstrtox.c ``_parse_integer_fixup_radix``: returns (base, new position)."""
    if base == 0:
        if s[pos : pos + 1] == "0":
            nxt = s[pos + 1 : pos + 2].lower()
            after = s[pos + 2 : pos + 3]
            base = 16 if nxt == "x" and after and _digit(after) < 16 else 8
        else:
            base = 10
    if base == 16 and s[pos : pos + 1] == "0" and s[pos + 1 : pos + 2].lower() == "x":
        pos += 2
    return base, pos


def _parse_integer(s: str, pos: int, base: int) -> tuple[int, int, bool]:
    """lib/kstrtox.c ``_parse_integer``: (value mod 2^64, digits consumed, overflowed)."""
    value, count, overflow = 0, 0, False
    while pos + count < len(s):
        digit = _digit(s[pos + count])
        if digit >= base:
            break
        value = value * base + digit
        if value > U64_MASK:
            overflow = True
            value &= U64_MASK
        count += 1
    return value, count, overflow


def memparse(s: str, pos: int = 0) -> tuple[int, int]:
    """lib/cmdline.c ``memparse``: (value mod 2^64, index after what was consumed).

    ``simple_strtoull(s, &end, 0)`` (``0x`` hex when a hex digit follows, leading ``0`` octal,
    no sign, no whitespace, wrap-around on overflow), then one optional suffix
    ``K M G T P E`` (either case) shifting by 10 per step and consuming one character — even
    when no digit was read (``"K"`` consumes one character and yields 0).
    """
    base, digits_at = _fixup_radix(s, pos, 0)
    value, count, _ = _parse_integer(s, digits_at, base)
    end = digits_at + count
    suffix = s[end : end + 1].upper()
    shifts = "KMGTPE".find(suffix) + 1 if suffix else 0
    if shifts:
        value = (value << (10 * shifts)) & U64_MASK
        end += 1
    return value, end


def kstrtoull(s: str, base: int) -> int:
    """lib/kstrtox.c ``kstrtoull``: optional ``+``, digits, optional ``\\n``, nothing else.

    Raises OSError(EINVAL) for no digits or trailing text, OSError(ERANGE) on overflow.
    """
    pos = 1 if s.startswith("+") else 0
    base, pos = _fixup_radix(s, pos, base)
    value, count, overflow = _parse_integer(s, pos, base)
    if overflow:
        raise OSError(errno.ERANGE, "overflow")
    if count == 0:
        raise OSError(errno.EINVAL, "no digits")
    pos += count
    if s[pos : pos + 1] == "\n":
        pos += 1
    if pos != len(s):
        raise OSError(errno.EINVAL, "trailing characters")
    return value


class ScratchSetting(NamedTuple):
    """What one accepted ``kho_scratch=`` value sets (§3.1)."""

    scale: int | None  # the N of N%, None for the explicit form
    sizes: tuple[int, int, int] | None  # (lowmem, global, pernode), None for the N% form
    message: str


def _uses_6_16_rules(era: str) -> bool:
    # §3.1 names "6.16" and "6.18 and later"; the 6.16-fix era (Linux 6.17) is 6.16 plus the
    # kexec fix, so it keeps the 6.16 parser.
    _check_era(era)
    return era in ("6.16", "6.16-fix")


def kho_scratch_setting(value: str | None, era: str) -> ScratchSetting | None:
    """Parse one ``kho_scratch=`` value like ``kho_parse_scratch_size`` (§3.1); None if malformed.

    Kernel source (6.16 kernel/kexec_handover.c; 6.19 kernel/liveupdate/kexec_handover.c):

    - no ``=`` (value None) or an empty value: error;
    - last character ``%``: the whole value must be at most 11 characters, the part before
      ``%`` goes through ``kstrtouint(.., 10)``; the message prints the u32 with ``%d``, so a
      scale above 2^31 - 1 prints negative (``4294967295%`` logs ``scale is -1%``);
    - otherwise three ``memparse`` sizes separated by single commas, each consuming at least
      one character. 6.16 rejects any zero size and ignores text after the third; 6.18+
      accepts zeros unless their u64 sum is 0 (so sizes that wrap to a 0 sum fail too) and
      rejects trailing text;
    - the message shows each size ``>> 20`` in MiB.
    """
    legacy = _uses_6_16_rules(era)
    if not value:
        return None
    if value.endswith("%"):
        if len(value) > 11:
            return None
        try:
            scale = kstrtoull(value[:-1], 10)
        except OSError:
            return None
        if scale > 0xFFFFFFFF:
            return None  # kstrtouint: ERANGE
        shown = scale - (1 << 32) if scale >= 1 << 31 else scale
        return ScratchSetting(scale, None, f"KHO: scratch scale is {shown}%")
    pos = 0
    sizes: list[int] = []
    for i in range(3):
        if i > 0:
            if value[pos : pos + 1] != ",":
                return None
            pos += 1
        size, end = memparse(value, pos)
        if end == pos or (legacy and size == 0):
            return None
        sizes.append(size)
        pos = end
    if not legacy and (sum(sizes) & U64_MASK == 0 or pos != len(value)):
        return None
    low, glob, node = sizes
    message = (
        f"KHO: scratch areas: lowmem: {low >> 20}MiB global: {glob >> 20}MiB "
        f"pernode: {node >> 20}MiB"
    )
    return ScratchSetting(None, (low, glob, node), message)


def parse_kho_scratch_oracle(value: str | None, era: str) -> str:
    """The dmesg line one ``kho_scratch=`` option produces (§3.1).

    Either ``KHO: scratch scale is N%``, ``KHO: scratch areas: lowmem: LMiB global: GMiB
    pernode: PMiB``, or ``Malformed early option 'kho_scratch'`` (init/main.c
    ``do_early_param`` for a non-zero handler return). See kho_scratch_setting for the rules.
    """
    setting = kho_scratch_setting(value, era)
    return MALFORMED_KHO_SCRATCH if setting is None else setting.message


def apply_kho_scratch(values: Sequence[str | None], era: str) -> tuple[int, int, int, int]:
    """State after several ``kho_scratch=`` options in command-line order: (scale, L, G, P).

    Starts at scale 200 and sizes 0. An accepted ``N%`` sets only the scale (an earlier
    explicit form's sizes stay, unused unless the scale is 0); an accepted explicit form sets
    the three sizes and scale 0 (explicit mode); a malformed one changes nothing (§3.1).
    """
    scale, low, glob, node = DEFAULT_SCRATCH_SCALE, 0, 0, 0
    for value in values:
        setting = kho_scratch_setting(value, era)
        if setting is None:
            continue
        if setting.sizes is None:
            assert setting.scale is not None
            scale = setting.scale
        else:
            scale = 0
            low, glob, node = setting.sizes
    return scale, low, glob, node


def scratch_sizes(
    *,
    scale: int,
    lowmem: int = 0,
    global_size: int = 0,
    pernode: int = 0,
    k_low: int = 0,
    k_all: int = 0,
    k_nodes: Sequence[int],
) -> list[int]:
    """Scratch area sizes at first boot (§3.2): ``[lowmem, global, node 0, node 1, ...]``.

    Scale mode (``scale`` non-zero): ``k_low`` = RSRV_KERN bytes below 4 GiB, ``k_all`` = all
    RSRV_KERN bytes, ``k_nodes`` = per node (with memory) sums; lowmem =
    round_up(k_low × scale / 100, 2 MiB), global = round_up(k_all × scale / 100 − lowmem,
    2 MiB) computed modulo 2^64 (a "negative" difference rounds to 0), node n =
    round_up(k_n × scale / 100, 2 MiB). Explicit mode (scale 0): L and G as given, P rounded
    up to 2 MiB for every node; ``k_nodes`` then only gives the node count.
    """
    if scale:
        low = _round_up_u64((k_low * scale & U64_MASK) // 100, PAGEBLOCK_BYTES)
        glob = _round_up_u64(((k_all * scale & U64_MASK) // 100 - low) & U64_MASK, PAGEBLOCK_BYTES)
        nodes = [_round_up_u64((k * scale & U64_MASK) // 100, PAGEBLOCK_BYTES) for k in k_nodes]
        return [low, glob, *nodes]
    return [lowmem, global_size] + [_round_up_u64(pernode, PAGEBLOCK_BYTES)] * len(k_nodes)


def scratch_file_text(values: Iterable[int]) -> str:
    """``out/scratch_phys`` / ``out/scratch_len`` text: ``0x%llx\\n`` per area (§2.5)."""
    return "".join(f"0x{v:x}\n" for v in values)


def scratch_lines_expected(
    era: str, lowmem: int, global_size: int, pernode: int, nodes: int
) -> str:
    """Expected ``out/scratch_len`` after ``kho_scratch=L,G,P`` on a first boot (§2.5, §3.2).

    Lines: L (not rounded), G (not rounded), then ``round_up(P, 2 MiB)`` once per node
    (``nodes`` = online nodes in 6.16, nodes with memory from 6.18 — the caller counts).
    Raises ValueError when the era's parser would reject these sizes (6.16/6.16-fix: any
    zero; 6.18+: a zero u64 sum), because the defaults (scale 200 %) then apply instead.
    """
    sizes = (lowmem, global_size, pernode)
    if any(not 0 <= s <= U64_MASK for s in sizes):
        raise ValueError("sizes must be u64")
    if _uses_6_16_rules(era):
        if 0 in sizes:
            raise ValueError(f"{era} rejects a zero scratch size: defaults stay")
    elif sum(sizes) & U64_MASK == 0:
        raise ValueError(f"{era} rejects all-zero scratch sizes: defaults stay")
    return scratch_file_text(
        scratch_sizes(
            scale=0, lowmem=lowmem, global_size=global_size, pernode=pernode, k_nodes=[0] * nodes
        )
    )


# ---------------------------------------------------------------------------------------------
# §2.1 debugfs files and §2.3 finalize
# ---------------------------------------------------------------------------------------------


class DebugfsEntry(NamedTuple):
    """One debugfs path (§2.1): kind and permission bits (owner root:root, §2.2)."""

    kind: str  # "dir", "attribute" (finalize), "seq" (scratch text), "blob"
    mode: int


_D: Final = DebugfsEntry("dir", 0o755)
_SEQ: Final = DebugfsEntry("seq", 0o400)
_ATTR: Final = DebugfsEntry("attribute", 0o600)
_BLOB: Final = DebugfsEntry("blob", 0o400)

#: Placeholder in DEBUGFS_FILES paths: one entry per subtree (out) or per root child with a
#: valid child pointer property (in). debugfs_expected() expands it.
SUBTREE: Final = "<name>"

#: Creation order of the fixed entries in ``kho/out/`` (§2.1; 6.16 kho_out_debugfs_init).
OUT_CREATION_ORDER: Final = ("sub_fdts", "scratch_phys", "scratch_len", "finalize")

_BASE_FINALIZE: Final[Mapping[str, DebugfsEntry]] = {
    "kho": _D,
    "kho/out": _D,
    "kho/out/sub_fdts": _D,
    "kho/out/scratch_phys": _SEQ,
    "kho/out/scratch_len": _SEQ,
    "kho/out/finalize": _ATTR,
}
_BASE_NO_FINALIZE: Final[Mapping[str, DebugfsEntry]] = {
    "kho": _D,
    "kho/out": _D,
    "kho/out/sub_fdts": _D,
    "kho/out/scratch_phys": _SEQ,
    "kho/out/scratch_len": _SEQ,
}
_OUT_BLOBS: Final[Mapping[str, DebugfsEntry]] = {
    "kho/out/fdt": _BLOB,
    "kho/out/sub_fdts/" + SUBTREE: _BLOB,
}
_IN: Final[Mapping[str, DebugfsEntry]] = {
    "kho/in": _D,
    "kho/in/fdt": _BLOB,
    "kho/in/sub_fdts": _D,
    "kho/in/sub_fdts/" + SUBTREE: _BLOB,
}

_FINALIZE_ERA_FILES: Final[Mapping[str, Mapping[str, DebugfsEntry]]] = {
    "boot": _BASE_FINALIZE,
    "finalized": {**_BASE_FINALIZE, **_OUT_BLOBS},
    "handover_boot": {**_BASE_FINALIZE, **_IN},
    "handover_finalized": {**_BASE_FINALIZE, **_OUT_BLOBS, **_IN},
}
_SUBTREE_OUT: Final = {"kho/out/sub_fdts/" + SUBTREE: _BLOB}

#: Paths under ``sys/kernel/debug`` by era and machine state (§2.1). States:
#: ``boot`` (cold boot, KHO enabled, not finalized), ``finalized`` (after a successful
#: finalize), ``handover_boot`` (booted with valid handover data), ``handover_finalized``.
#: Eras without ``finalize`` have only ``boot`` and ``handover_boot``. 6.16–6.18: ``out/fdt``
#: and ``out/sub_fdts/*`` exist only while finalized. 6.19+: subtrees exist as soon as they
#: are added, ``out/fdt`` from init but never on a handover boot (6.19
#: kernel/liveupdate/kexec_handover.c ``kho_init`` returns before adding it when an incoming
#: FDT exists). ``debugfs`` itself (``sys/kernel/debug``) is a 0700 directory.
DEBUGFS_FILES: Final[Mapping[str, Mapping[str, Mapping[str, DebugfsEntry]]]] = {
    "6.16": _FINALIZE_ERA_FILES,
    "6.16-fix": _FINALIZE_ERA_FILES,
    "6.18": _FINALIZE_ERA_FILES,
    "6.19": {
        "boot": {**_BASE_FINALIZE, "kho/out/fdt": _BLOB, **_SUBTREE_OUT},
        "finalized": {**_BASE_FINALIZE, "kho/out/fdt": _BLOB, **_SUBTREE_OUT},
        "handover_boot": {**_BASE_FINALIZE, **_SUBTREE_OUT, **_IN},
        "handover_finalized": {**_BASE_FINALIZE, **_SUBTREE_OUT, **_IN},
    },
    "stateless": {
        "boot": {**_BASE_NO_FINALIZE, "kho/out/fdt": _BLOB, **_SUBTREE_OUT},
        "handover_boot": {**_BASE_NO_FINALIZE, **_SUBTREE_OUT, **_IN},
    },
    "blob": {
        "boot": {**_BASE_NO_FINALIZE, "kho/out/fdt": _BLOB, **_SUBTREE_OUT},
        "handover_boot": {**_BASE_NO_FINALIZE, **_SUBTREE_OUT, **_IN},
    },
}


def debugfs_expected(
    era: str,
    state: str,
    out_subtrees: Iterable[str] = (),
    in_subtrees: Iterable[str] = (),
) -> dict[str, DebugfsEntry]:
    """DEBUGFS_FILES[era][state] with the ``<name>`` placeholders expanded.

    ``out_subtrees`` are the subtree names visible in ``out/sub_fdts`` in that state (6.16–6.18:
    those added by the FINALIZE notifiers; 6.19+: those added so far); ``in_subtrees`` the
    incoming root's children carrying an 8-byte child pointer.
    """
    _check_era(era)
    table = DEBUGFS_FILES[era][state]
    names = {"kho/out/sub_fdts/": list(out_subtrees), "kho/in/sub_fdts/": list(in_subtrees)}
    result: dict[str, DebugfsEntry] = {}
    for path, entry in table.items():
        if path.endswith("/" + SUBTREE):
            prefix = path[: -len(SUBTREE)]
            for name in names[prefix]:
                result[prefix + name] = entry
        else:
            result[path] = entry
    return result


#: ``out/finalize`` write outcomes (§2.3): ``FINALIZE_ERRNOS[era][(value, state)]`` is 0 for
#: success or the errno. ``value`` is ``"nonzero"`` or ``"zero"``; ``state`` is
#: ``"not_finalized"``, ``"finalized"`` or ``"kho_disabled"`` (the file outliving a KHO that
#: was disabled; 6.16 has no such path and no entry). Eras without the file map
#: ``("open", "any")`` to ENOENT.
FINALIZE_ERRNOS: Final[Mapping[str, Mapping[tuple[str, str], int]]] = {
    "6.16": {
        ("nonzero", "not_finalized"): 0,
        ("nonzero", "finalized"): errno.EEXIST,
        ("zero", "not_finalized"): errno.ENOENT,
        ("zero", "finalized"): 0,
    },
    "6.16-fix": {
        ("nonzero", "not_finalized"): 0,
        ("nonzero", "finalized"): errno.EEXIST,
        ("zero", "not_finalized"): errno.ENOENT,
        ("zero", "finalized"): 0,
    },
    "6.18": {
        ("nonzero", "not_finalized"): 0,
        ("nonzero", "finalized"): errno.EEXIST,
        ("zero", "not_finalized"): errno.ENOENT,
        ("zero", "finalized"): 0,
        ("nonzero", "kho_disabled"): errno.EOPNOTSUPP,
        ("zero", "kho_disabled"): errno.EOPNOTSUPP,
    },
    "6.19": {
        ("nonzero", "not_finalized"): 0,
        ("nonzero", "finalized"): 0,
        ("zero", "not_finalized"): errno.EINVAL,
        ("zero", "finalized"): errno.EINVAL,
        ("nonzero", "kho_disabled"): errno.EOPNOTSUPP,
        ("zero", "kho_disabled"): errno.EINVAL,
    },
    "stateless": {("open", "any"): errno.ENOENT},
    "blob": {("open", "any"): errno.ENOENT},
}

#: ``out/finalize`` read text by finalized flag (§2.3, format ``%llu\n``).
FINALIZE_READ: Final[Mapping[bool, str]] = {False: "0\n", True: "1\n"}


def debugfs_attr_value(data: bytes) -> int:
    """The value a write to a debugfs attribute passes to its handler (§2.3).

    fs/libfs.c ``simple_attr_write``: the first ``min(len, 23)`` bytes are copied into a
    24-byte buffer and NUL-terminated, so the C string ends at the first NUL; it is parsed with
    ``kstrtoull(.., 0)``. Raises OSError(EINVAL) or OSError(ERANGE) — the handler is then not
    called.
    """
    text = data[:23].split(b"\0", 1)[0].decode("latin-1")
    return kstrtoull(text, 0)


def finalize_write_oracle(
    era: str, data: bytes, *, finalized: bool, kho_enabled: bool = True
) -> int:
    """What ``write(fd, data)`` on ``out/finalize`` returns: ``len(data)`` or ``-errno`` (§2.3).

    Parse errors come first (EINVAL/ERANGE, handler not called); then FINALIZE_ERRNOS.
    Success returns the full length written (the selftest writes ``1\\0`` and expects 2).
    Raises ValueError for eras without the file.
    """
    table = FINALIZE_ERRNOS[era]
    if ("open", "any") in table:
        raise ValueError(f"{era} has no finalize file (open fails with ENOENT)")
    try:
        value = debugfs_attr_value(data)
    except OSError as exc:
        assert exc.errno is not None
        return -exc.errno
    key = (
        "nonzero" if value else "zero",
        "kho_disabled" if not kho_enabled else "finalized" if finalized else "not_finalized",
    )
    if key not in table:
        raise ValueError(f"state {key} is not reachable in {era}")
    err = table[key]
    return -err if err else len(data)


# ---------------------------------------------------------------------------------------------
# §15 releases and x86 kernel images
# ---------------------------------------------------------------------------------------------

#: §15.1: release name → (era or None, start of the ``Linux version`` string).
RELEASES: Final[Mapping[str, tuple[str | None, str]]] = {
    "6.12": (None, "6.12.0"),
    "v4": (None, "6.14.0-rc1"),
    "6.16": ("6.16", "6.16.0"),
    "6.17": ("6.16-fix", "6.17.0"),
    "6.18": ("6.18", "6.18.0"),
    "6.19": ("6.19", "6.19.0"),
    "7.0": ("6.19", "7.0.0"),
    "7.2": ("blob", "7.2.13"),
}
V4_SUFFIX: Final = "-kho-v4"


def linux_version_prefix(release: str) -> str:
    """How the ``Linux version`` string of a release name begins (§15.1); KeyError if unknown."""
    return RELEASES[release][1]


def release_for_version(version: str) -> tuple[str, bool] | None:
    """Which release a kernel version string boots (§15.1 Decision): (release, noted).

    The release word is the first word of ``version``. A word ending in ``-kho-v4`` is the v4
    series; otherwise major.minor decides: a known mainline release by name, below 6.16 →
    ``6.12``, above the newest (7.2) → ``7.2`` with ``noted`` True (the kernel then logs a
    ``kho-fs:`` line saying so), 7.1 (between 7.0 and 7.2, not modelled) → ``7.2`` with a
    note (issue 13 decision: 7.1's KHO belongs to the stateless/blob eras of §0). None when
    no ``major.minor`` can be read.
    """
    words = version.split()
    if not words:
        return None
    word = words[0]
    if word.endswith(V4_SUFFIX):
        return "v4", False
    match = re.match(r"(\d+)\.(\d+)", word)
    if match is None:
        return None
    major, minor = int(match.group(1)), int(match.group(2))
    name = f"{major}.{minor}"
    if (major, minor) > (7, 2):
        return "7.2", True
    if (major, minor) < (6, 16):
        return "6.12", False
    if name in RELEASES:
        return name, False
    if (major, minor) == (7, 1):
        return "7.2", True
    return None  # unreachable with the releases of §15.1 (6.16–6.19, 7.0) and 7.2


def parse_bzimage_version(data: bytes) -> str | None:
    """The version string of an x86 boot image (§15.3, Documentation/arch/x86/boot.rst).

    Requires the boot flag ``55 AA`` at 0x1FE, ``HdrS`` at 0x202 and a non-zero
    ``kernel_version`` (u16 at 0x20E) with ``kernel_version < 0x200 × setup_sects``
    (``setup_sects`` at 0x1F1, 0 meaning 4: boot.rst's bound). The NUL-terminated string
    starts at ``0x200 + kernel_version`` and must end (its NUL) inside the real-mode code,
    i.e. before ``0x200 × (setup_sects + 1)`` and the end of the file. Decoded as UTF-8 with
    replacement. None when any of this fails.
    """
    if len(data) < 0x210:
        return None
    if data[0x1FE:0x200] != b"\x55\xaa" or data[0x202:0x206] != b"HdrS":
        return None
    kernel_version = struct.unpack_from("<H", data, 0x20E)[0]
    setup_sects = data[0x1F1] or 4
    if kernel_version == 0 or kernel_version >= 0x200 * setup_sects:
        return None
    start = 0x200 + kernel_version
    limit = min(len(data), 0x200 * (setup_sects + 1))
    end = data.find(b"\0", start, limit)
    if end < 0:
        return None
    return data[start:end].decode("utf-8", errors="replace")


def bzimage_release(data: bytes) -> str | None:
    """The kernel release of an image: the first word of its version string (§15.3)."""
    version = parse_bzimage_version(data)
    if not version:
        return None
    words = version.split()
    return words[0] if words else None


_BZ_SETUP_SECTS: Final = 4
_BZ_VERSION_OFFSET: Final = 0x400  # file offset of the version string (kernel_version 0x200)


def make_bzimage(version: str, size: int) -> bytes:
    """A minimal, valid-looking x86 bzImage of exactly ``size`` bytes (§15.3).

    Real-mode part: 4 setup sectors after the boot sector (0xA00 bytes). Fields set: boot
    flag, ``HdrS``, protocol 2.15 (0x020F), ``setup_sects`` 4, ``syssize`` (protected-mode
    bytes / 16, rounded up), ``loadflags`` LOADED_HIGH (0x01, what makes it a *b*zImage to
    ``file``), ``code32_start`` 0x100000, ``kernel_alignment`` 2 MiB, relocatable,
    ``pref_address`` 16 MiB, and ``init_size`` (protected-mode size rounded up to 4 KiB, at
    least 4 KiB). The version string sits at file offset 0x400 (``kernel_version`` 0x200).
    The protected-mode part is zero-filled. Raises ValueError when the string does not fit in
    the setup code or ``size`` leaves no protected-mode part.
    """
    setup_end = 0x200 * (_BZ_SETUP_SECTS + 1)
    encoded = version.encode()
    if b"\0" in encoded or _BZ_VERSION_OFFSET + len(encoded) + 1 > setup_end:
        raise ValueError("version string does not fit in the setup code")
    if size <= setup_end:
        raise ValueError(f"size must exceed the real-mode part ({setup_end:#x} bytes)")
    image = bytearray(size)
    payload = size - setup_end
    image[0x1F1] = _BZ_SETUP_SECTS
    struct.pack_into("<I", image, 0x1F4, (payload + 15) // 16)  # syssize
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x200:0x202] = b"\xeb\x66"  # jmp over the header, as real images start
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    struct.pack_into("<H", image, 0x20E, _BZ_VERSION_OFFSET - 0x200)
    image[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", image, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", image, 0x230, SZ_2M)  # kernel_alignment
    image[0x234] = 1  # relocatable_kernel
    struct.pack_into("<Q", image, 0x258, 16 * SZ_1M)  # pref_address
    struct.pack_into("<I", image, 0x260, max(PAGE_SIZE, -(-payload // PAGE_SIZE) * PAGE_SIZE))
    image[_BZ_VERSION_OFFSET : _BZ_VERSION_OFFSET + len(encoded)] = encoded
    return bytes(image)


# ---------------------------------------------------------------------------------------------
# Blob era (§0 "blob", §5.1 v3/v4, §5.2, §6.3, §9): Linux 7.2
# ---------------------------------------------------------------------------------------------
# Written from the spec and from Linux 7.2.13 include/linux/kho/abi/kexec_handover.h,
# include/linux/kho/abi/kexec_metadata.h and kernel/liveupdate/kexec_handover.c, and pinned to
# the bytes a real 7.2.13 kernel showed (shared/spec/transcripts/linux-7.2.13-kho-luo.txt).

BLOB_ROOT_COMPATIBLE: Final = "kho-v4"
BLOB_DATA_PROP: Final = "preserved-data"
BLOB_SIZE_PROP: Final = "blob-size"
KEXEC_METADATA_NAME: Final = "kexec-metadata"
#: ``struct kho_kexec_metadata`` (packed, LE): u32 version (1), char[65] release, u32 count.
KEXEC_METADATA_SIZE: Final = 73
#: 7.2 SCRATCH_ALIGNMENT_BYTES = PAGE_SIZE * MAX_ORDER_NR_PAGES (order 10): 4 MiB.
BLOB_SCRATCH_ALIGN: Final = PAGE_SIZE << 10
RADIX_ORDER_0_BIT: Final = 52  # §6.3: 64 - PAGE_SHIFT
RADIX_LEVELS: Final = 6  # levels 5..1 are tables, level 0 the bitmap


def radix_key(phys: int, order: int) -> int:
    """§6.3: ``(1 << (52 − order)) OR (phys >> (12 + order))``."""
    return (1 << (RADIX_ORDER_0_BIT - order)) | (phys >> (PAGE_SHIFT + order))


def radix_unkey(key: int) -> tuple[int, int]:
    """§6.3 decode: order = 52 − (highest set bit, counting from 1) + 1; phys = key << (12 +
    order), the marker bit shifted out of the 64 bits."""
    order = RADIX_ORDER_0_BIT - key.bit_length() + 1
    return (key << (PAGE_SHIFT + order)) & U64_MASK, order


def _radix_slot(key: int, level: int) -> int:
    # §6.3: key bits 59–51, 50–42, 41–33, 32–24, 23–15 select the slots of levels 5 to 1.
    return (key >> (15 + 9 * (level - 1))) & 511


def encode_radix_tree(
    blocks: Iterable[tuple[int, int]],
    alloc_page: Callable[[], int],
    write: Callable[[int, bytes], None],
) -> int:
    """Write the §6.3 radix tree of ``(phys, order)`` blocks into zeroed pages; its root.

    Every node is a fresh page from ``alloc_page`` (whose content must read as zero); table
    entries are LE u64 addresses, a leaf is a 32768-bit bitmap (bit b = byte b/8, bit b%8).
    """
    root = alloc_page()
    tables: dict[int, dict[int, int]] = {root: {}}
    leaves: dict[int, bytearray] = {}
    for phys, order in blocks:
        key = radix_key(phys, order)
        node = root
        for level in range(RADIX_LEVELS - 1, 0, -1):
            slot = _radix_slot(key, level)
            child = tables[node].get(slot)
            if child is None:
                child = alloc_page()
                tables[node][slot] = child
                write(node + 8 * slot, _le64(child))
                if level == 1:
                    leaves[child] = bytearray(PAGE_SIZE)
                else:
                    tables[child] = {}
            node = child
        bit = key & 0x7FFF
        leaves[node][bit // 8] |= 1 << (bit % 8)
    for leaf, bits in leaves.items():
        write(leaf, bytes(bits))
    return root


def decode_radix_tree(read: Callable[[int, int], bytes], root: int) -> list[tuple[int, int]]:
    """Every ``(phys, order)`` the §6.3 tree at ``root`` holds, in the kernel's walk order
    (``kho_radix_walk_tree``: slots ascending at each level, then leaf bits ascending — so
    higher orders, whose keys are smaller, come first)."""
    out: list[tuple[int, int]] = []

    def walk(node: int, level: int, prefix: int) -> None:
        page = read(node, PAGE_SIZE)
        for slot in range(512):
            (child,) = struct.unpack_from("<Q", page, 8 * slot)
            if not child:
                continue
            key = prefix | (slot << (15 + 9 * (level - 1)))
            if level == 1:
                bits = read(child, PAGE_SIZE)
                for b in range(PAGE_SIZE * 8):
                    if bits[b // 8] >> (b % 8) & 1:
                        out.append(radix_unkey(key | b))
            else:
                walk(child, level - 1, key)

    walk(root, RADIX_LEVELS - 1, 0)
    return out


def root_fdt_blob(mem_map: int, children: Sequence[tuple[str, int, int]]) -> bytes:
    """The 7.2 root FDT after ``children`` = ``(name, phys, size)`` were ADDED in that order.

    7.2 ``kho_out_fdt_setup`` (at ``kho_init``): the sequential writer with ``compatible``
    ``kho-v4`` and ``preserved-memory-map`` = the radix root (non-zero from the start); then
    per ``kho_add_subtree(name, blob, size)``: ``fdt_open_into(root, root, PAGE_SIZE)``,
    ``fdt_add_subnode(root, 0, name)`` (first child: newest-first listing),
    ``fdt_setprop(preserved-data, &phys, 8)``, ``fdt_setprop(blob-size, &size, 8)``,
    ``fdt_pack``. Strings: ``preserved-memory-map\0compatible\0preserved-data\0blob-size\0``.
    """
    buf = _root_seq_buffer(BLOB_ROOT_COMPATIBLE, mem_map, (), BLOB_DATA_PROP)
    for name, phys, size in children:
        _ok(libfdt.fdt_open_into(buf, buf, PAGE_SIZE))
        off = libfdt.fdt_add_subnode(buf, 0, name)
        if off == -libfdt.EXISTS:
            raise OSError(errno.EEXIST, f"subtree {name!r} already exists")
        _ok(off)
        _ok(libfdt.fdt_setprop(buf, off, BLOB_DATA_PROP, _le64(phys), 8))
        _ok(libfdt.fdt_setprop(buf, off, BLOB_SIZE_PROP, _le64(size), 8))
        _ok(libfdt.fdt_pack(buf))
    return _blob(buf)


def decode_blob_root(blob: bytes) -> dict[str, Any]:
    """A blob-era root (§5.1, §5.2): compatible list, map address, children in FDT order as
    ``(name, preserved-data | None, blob-size | None)`` (None: missing or not 8 bytes)."""
    base = decode_root_fdt(blob, child_prop=BLOB_DATA_PROP)
    fdt = libfdt.Fdt(blob)
    sizes = []
    node = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
    while node >= 0:
        value = _getprop(fdt, node, BLOB_SIZE_PROP)
        ok = value is not None and len(value) == 8
        sizes.append(struct.unpack("<Q", value)[0] if ok else None)
        node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    base["children"] = [(n, a, z) for (n, a), z in zip(base["children"], sizes, strict=True)]
    return base


def kexec_metadata(release: str, count: int) -> bytes:
    """The 73-byte ``kexec-metadata`` record (§5.2): LE u32 1, the release NUL-padded to 65
    bytes (``strscpy``: at most 64 characters), LE u32 ``count``."""
    name = release.encode()[:64]
    return struct.pack("<I", 1) + name.ljust(65, b"\0") + struct.pack("<I", count & 0xFFFFFFFF)


def kexec_metadata_line(release: str, count: int) -> str:
    """The receiving kernel's line for that record (7.2 ``kho_in_kexec_metadata``, §16)."""
    return f"KHO: exec from: {release} (count {count})"


def scratch_sizes_blob(
    *,
    scale: int,
    lowmem: int = 0,
    global_size: int = 0,
    pernode: int = 0,
    k_low: int = 0,
    k_all: int = 0,
    k_nodes: Sequence[int],
) -> list[int]:
    """7.2 ``scratch_size_update`` / ``scratch_size_node``: as scratch_sizes, but the global
    difference is taken before rounding and every size — explicit ones too — is rounded up
    to 4 MiB (``SCRATCH_ALIGNMENT_BYTES``)."""
    if scale:
        low = (k_low * scale & U64_MASK) // 100
        glob = ((k_all * scale & U64_MASK) // 100 - low) & U64_MASK
        nodes = [(k * scale & U64_MASK) // 100 for k in k_nodes]
    else:
        low, glob, nodes = lowmem, global_size, [pernode] * len(k_nodes)
    return [_round_up_u64(v, BLOB_SCRATCH_ALIGN) for v in (low, glob, *nodes)]


#: 7.1+ ``reserve_mem=`` parser failures (§8), with the kernel's ``pr_err`` text.
RESERVE_MEM_MALFORMED: Final = "reserve_mem: empty or malformed parameter"
RESERVE_MEM_NO_ROOM: Final = "reserve_mem: no more room for reserved memory"
RESERVE_MEM_ALLOC_FAILED: Final = "reserve_mem: memblock allocation failed"


def reserve_mem_duplicate(name: str) -> str:
    return f'reserve_mem: name "{name}" was already used'
