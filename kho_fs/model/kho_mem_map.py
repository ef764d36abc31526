"""The preserved-memory map of mainline KHO (6.16 – 7.0): bitmaps per order, chunk pages.

Tracking (spec §6.1, kernel/kexec_handover.c ``__kho_preserve_order``): for every page
order a sparse array of bitmaps; a block at ``pfn`` of ``order`` sets bit
``(pfn >> order) % B`` of bitmap ``(pfn >> order) // B``. The bitmaps are kernel memory:
they live in emulated RAM from the moment they are allocated, and every bit set or
cleared is written through, so a chunk list that points at them shows the next kernel
what is preserved *at exec time* (6.19 keeps preserving after finalize).

Serialization (§6.2, ``kho_mem_serialize``) writes the chunk pages that list the bitmaps;
deserialization (``kho_mem_deserialize``) is what the receiving kernel does with them.
Both work on RAM bytes only, so the receiver may be another release with another bitmap
size — and misread it exactly as the kernel would.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.page_alloc import PageAllocator
    from kho_fs.model.physmem import PhysicalMemory

PAGE_SHIFT = 12
CHUNK_HDR = struct.Struct("<QII")  # next, order, num_elms
CHUNK_ELM = struct.Struct("<QQ")  # phys_start, bitmap
KHOSER_BITMAP_SIZE = (PAGE_SIZE - CHUNK_HDR.size) // CHUNK_ELM.size  # 255
MAX_CHUNKS = 1 << 20  # guard against a looping chunk list written through /dev/mem


def ilog2(x: int) -> int:
    return x.bit_length() - 1


def count_trailing_zeros(x: int) -> int:
    return (x & -x).bit_length() - 1 if x else 64


def split_pfn_range(pfn: int, end_pfn: int) -> Iterator[tuple[int, int]]:
    """Maximal aligned blocks ``(pfn, order)`` covering ``[pfn, end_pfn)`` (§6.1)."""
    while pfn < end_pfn:
        order = min(count_trailing_zeros(pfn), ilog2(end_pfn - pfn))
        yield pfn, order
        pfn += 1 << order


class _Bitmap:
    __slots__ = ("bits", "phys")

    def __init__(self, phys: int, nbytes: int) -> None:
        self.phys = phys
        self.bits = bytearray(nbytes)


class KhoMemTrack:
    """``struct kho_mem_track``: the outgoing kernel's preservations, bitmaps in RAM."""

    def __init__(self, mem: PhysicalMemory, pages: PageAllocator, bitmap_bytes: int) -> None:
        self.mem = mem
        self.pages = pages
        self.bitmap_bytes = bitmap_bytes
        self.bits_per_bitmap = bitmap_bytes * 8
        self.orders: dict[int, dict[int, _Bitmap]] = {}
        self._slab: list[int] = []  # free sub-page slots for bitmaps smaller than a page

    # -- bitmap memory -------------------------------------------------------------
    def _alloc_slab_bitmap(self) -> int:
        """A bitmap smaller than a page: ``kzalloc(512)``, a slot of a zeroed page."""
        if not self._slab:  # carve a zeroed page into slots
            page = self.pages.alloc_pages(0)
            if not page:
                return 0
            self._slab = list(
                range(page + PAGE_SIZE - self.bitmap_bytes, page - 1, -self.bitmap_bytes)
            )
        return self._slab.pop()

    # -- preserve / unpreserve (__kho_preserve_order, __kho_unpreserve) ----------------
    def preserve_order(self, pfn: int, order: int) -> int:
        """Set the bit of one block; 0 or -ENOMEM.

        Called once per folio (a 1 TiB set of 2 MiB folios is 524,288 calls), so the
        common case, a bit in a bitmap that exists, is inlined: one byte written through.
        """
        index, bit = divmod(pfn >> order, self.bits_per_bitmap)
        per_order = self.orders.get(order)
        if per_order is None:
            per_order = self.orders[order] = {}
        bitmap = per_order.get(index)
        if bitmap is None:
            return self._new_bitmap(per_order, index, bit)
        bits = bitmap.bits
        byte = bit >> 3
        old = bits[byte]
        new = old | (1 << (bit & 7))
        if new != old:
            bits[byte] = new
            self.mem.write(bitmap.phys + byte, bytes((new,)))
        return 0

    def _new_bitmap(self, per_order: dict[int, _Bitmap], index: int, bit: int) -> int:
        """Allocate bitmap ``index`` of an order with ``bit`` set; 0 or -ENOMEM."""
        if self.bitmap_bytes >= PAGE_SIZE:
            # A zeroed page with one bit set, written in one go (same bytes as zeroing it
            # and then writing the bit).
            phys = self.pages.alloc_pages(0, zero=False)
            if not phys:
                return -errno.ENOMEM
            bitmap = per_order[index] = _Bitmap(phys, self.bitmap_bytes)
            bitmap.bits[bit >> 3] = 1 << (bit & 7)
            self.mem.write(phys, bitmap.bits)
            return 0
        phys = self._alloc_slab_bitmap()
        if not phys:
            return -errno.ENOMEM
        bitmap = per_order[index] = _Bitmap(phys, self.bitmap_bytes)
        self._set(bitmap, bit, True)
        return 0

    def unpreserve_order(self, pfn: int, order: int) -> None:
        high = pfn >> order
        index, bit = divmod(high, self.bits_per_bitmap)
        bitmap = self.orders.get(order, {}).get(index)
        if bitmap is not None:
            self._set(bitmap, bit, False)

    def _set(self, bitmap: _Bitmap, bit: int, value: bool) -> None:
        byte, mask = bit >> 3, 1 << (bit & 7)
        old = bitmap.bits[byte]
        new = old | mask if value else old & ~mask
        if new != old:
            bitmap.bits[byte] = new
            self.mem.write(bitmap.phys + byte, bytes((new,)))

    def preserve_pfn_range(self, pfn: int, end_pfn: int) -> int:
        """Preserve ``[pfn, end_pfn)`` as maximal aligned blocks; undo on failure."""
        for start, order in split_pfn_range(pfn, end_pfn):
            err = self.preserve_order(start, order)
            if err:
                self.unpreserve_pfn_range(pfn, start)
                return err
        return 0

    def unpreserve_pfn_range(self, pfn: int, end_pfn: int) -> None:
        for start, order in split_pfn_range(pfn, end_pfn):
            self.unpreserve_order(start, order)

    def destroy(self) -> None:
        """Drop every preservation and free the bitmaps (``kho_abort`` in 6.16–6.18)."""
        for per_order in self.orders.values():
            for bitmap in per_order.values():
                if self.bitmap_bytes >= PAGE_SIZE:
                    self.pages.free_pages(bitmap.phys)
        self.orders.clear()

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Every preserved block as ``(phys, order)``, by order then address."""
        for order in sorted(self.orders):
            for index in sorted(self.orders[order]):
                base = index * self.bits_per_bitmap
                yield from (
                    ((base + bit) << (order + PAGE_SHIFT), order)
                    for bit in _set_bits(self.orders[order][index].bits)
                )

    # -- serialization (kho_mem_serialize) ----------------------------------------
    def serialize(self) -> int:
        """Write the chunk list into fresh pages; its first address, 0 when empty, or a
        negative errno (the chunks written so far are freed).

        Each chunk is built in a buffer and written once, when the address of the next one
        is known (or there is none): the bytes left in RAM, on success and on ENOMEM, are
        those of the kernel's zeroed chunk pages filled entry by entry.
        """
        first = 0
        pending: tuple[int, bytearray] | None = None  # the last chunk, not yet written
        bits_per_bitmap = self.bits_per_bitmap
        for order in sorted(self.orders):
            per_order = self.orders[order]
            indices = sorted(per_order)
            shift = order + PAGE_SHIFT
            # every order starts a chunk, even one whose bitmaps could not be allocated
            for start in range(0, max(len(indices), 1), KHOSER_BITMAP_SIZE):
                chunk = self.pages.alloc_pages(0, zero=False)  # written whole below
                if pending is not None:
                    if chunk:
                        struct.pack_into("<Q", pending[1], 0, chunk)
                    self.mem.write(*pending)
                if not chunk:
                    self.free_chunks(first)
                    return -errno.ENOMEM
                first = first or chunk
                part = indices[start : start + KHOSER_BITMAP_SIZE]
                page = bytearray(PAGE_SIZE)
                CHUNK_HDR.pack_into(page, 0, 0, order, len(part))
                at = CHUNK_HDR.size
                for index in part:
                    phys_start = (index * bits_per_bitmap) << shift
                    CHUNK_ELM.pack_into(page, at, phys_start, per_order[index].phys)
                    at += CHUNK_ELM.size
                pending = (chunk, page)
        if pending is not None:
            self.mem.write(*pending)
        return first

    def free_chunks(self, first: int) -> None:
        """``kho_mem_ser_free``: give a chunk list's pages back (their bytes stay)."""
        for chunk in walk_chunks(self.mem.read, first):
            self.pages.free_pages(chunk)


def _set_bits(bits: bytes | bytearray) -> Iterator[int]:
    value = int.from_bytes(bits, "little")
    while value:
        low = value & -value
        yield low.bit_length() - 1
        value ^= low


def walk_chunks(read: Callable[[int, int], bytes], first: int) -> Iterator[int]:
    """Addresses of the chunks of a list, stopping at 0 or at a loop."""
    seen: set[int] = set()
    chunk = first
    while chunk and chunk not in seen and len(seen) < MAX_CHUNKS:
        seen.add(chunk)
        yield chunk
        chunk = struct.unpack("<Q", read(chunk, 8))[0]


def deserialize_runs(
    read: Callable[[int, int], bytes], first: int, bitmap_bytes: int
) -> Iterator[tuple[int, int, int]]:
    """What ``kho_mem_deserialize`` reserves: ``(phys, size, order)`` runs of adjacent
    blocks of one order, read from RAM as a kernel with ``bitmap_bytes`` bitmaps would.

    Runs are an optimisation: reserving one run is the same as reserving its blocks one
    by one (memblock merges touching regions with equal flags).
    """
    bits_per_bitmap = bitmap_bytes * 8
    # walk_chunks, with each chunk read once: its next pointer is taken from the same
    # page (nothing writes RAM while the receiving kernel walks the list)
    seen: set[int] = set()
    chunk = first
    while chunk and chunk not in seen and len(seen) < MAX_CHUNKS:
        seen.add(chunk)
        page = read(chunk, PAGE_SIZE)
        chunk, order, count = CHUNK_HDR.unpack_from(page, 0)
        count = min(count, KHOSER_BITMAP_SIZE)
        if order > 63 - PAGE_SHIFT:
            continue
        block = 1 << (order + PAGE_SHIFT)
        for phys_start, bitmap in CHUNK_ELM.iter_unpack(
            page[CHUNK_HDR.size : CHUNK_HDR.size + count * CHUNK_ELM.size]
        ):
            value = int.from_bytes(read(bitmap, bitmap_bytes), "little")
            bit = 0
            while value:
                # next run of set bits
                skip = (value & -value).bit_length() - 1
                value >>= skip
                bit += skip
                run = (~value & (value + 1)).bit_length() - 1
                yield phys_start + bit * block, run * block, order
                value >>= run
                bit += run
                if bit >= bits_per_bitmap:
                    break
