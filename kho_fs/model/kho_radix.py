"""The KHO radix tree: the preserved-memory map of the blob era (Linux 7.2, spec §6.3).

``include/linux/kho/abi/kexec_handover.h`` and kernel/liveupdate/kexec_handover.c
(``kho_radix_add_page``, ``kho_radix_del_page``, ``kho_radix_walk_tree``) in Linux 7.2:
every preserved block ``(phys, order)`` is one bit, found by the key
``(1 << (52 - order)) | (phys >> (12 + order))``. Levels 5 to 1 are pages of 512 LE u64
physical addresses (0 = empty), selected by key bits 59–51, 50–42, 41–33, 32–24, 23–15;
level 0 is a page-sized bitmap selected by key bits 14–0.

The tree is kernel memory from the moment a node is allocated, and every table entry and
bit is written through to emulated RAM: the root's address is in the root FDT from boot
on, so whatever is preserved when ``kexec -e`` runs is what the next kernel sees — there
is no finalize step. The receiving side (:func:`walk_radix_runs`) reads only RAM.
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
KHO_ORDER_0_LOG2 = 64 - PAGE_SHIFT  # 52: position of the order bit of an order-0 page
KHO_TABLE_SIZE_LOG2 = 9  # 512 u64 entries per node page
KHO_BITMAP_SIZE_LOG2 = PAGE_SHIFT + 3  # 32768 bits per leaf page
KHO_TREE_MAX_DEPTH = -(-(KHO_ORDER_0_LOG2 - KHO_BITMAP_SIZE_LOG2 + 1) // KHO_TABLE_SIZE_LOG2) + 1
TABLE_ENTRIES = 1 << KHO_TABLE_SIZE_LOG2
BITMAP_BITS = 1 << KHO_BITMAP_SIZE_LOG2
MAX_WALK_PAGES = 1 << 20  # guard against a tree rewritten through /dev/mem into a fan-out
_ENTRY = struct.Struct("<Q")


def kho_radix_encode_key(phys: int, order: int) -> int:
    return (1 << (KHO_ORDER_0_LOG2 - order)) | (phys >> (PAGE_SHIFT + order))


def kho_radix_decode_key(key: int) -> tuple[int, int]:
    """``(phys, order)`` of a key; the order bit is shifted out (64-bit arithmetic)."""
    order = KHO_ORDER_0_LOG2 - key.bit_length() + 1
    if order < 0:  # a key above bit 52 (a garbage tree): the kernel's shift wraps
        order &= 0xFFFFFFFF
    shift = (PAGE_SHIFT + order) & 63
    return (key << shift) & ((1 << 64) - 1), order


def table_index(key: int, level: int) -> int:
    shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
    return (key >> shift) % TABLE_ENTRIES


class KhoRadixTree:
    """``struct kho_radix_tree`` of the running kernel, its pages in emulated RAM.

    A Python mirror (``_tables``: node address → {index: child address}; ``_leaves``:
    leaf address → bitmap) answers lookups; every change is also written to RAM.
    """

    def __init__(self, mem: PhysicalMemory, pages: PageAllocator, root: int) -> None:
        self.mem = mem
        self.pages = pages
        self.root = root  # a zeroed page (kzalloc(PAGE_SIZE) in kho_init)
        self._tables: dict[int, dict[int, int]] = {root: {}}
        self._leaves: dict[int, bytearray] = {}

    def add_page(self, pfn: int, order: int) -> int:
        """``kho_radix_add_page``: 0 or -ENOMEM (the new branch is undone)."""
        key = kho_radix_encode_key(pfn << PAGE_SHIFT, order)
        node = self.root
        created: list[int] = []
        anchor: tuple[int, int] | None = None
        for level in range(KHO_TREE_MAX_DEPTH - 1, 0, -1):
            idx = table_index(key, level)
            table = self._tables[node]
            child = table.get(idx)
            if child is None:
                child = self.pages.alloc_pages(0)  # get_zeroed_page
                if not child:
                    for page in created:
                        self._tables.pop(page, None)
                        self._leaves.pop(page, None)
                        self.pages.free_pages(page)
                    if anchor is not None:
                        del self._tables[anchor[0]][anchor[1]]
                        self.mem.write(anchor[0] + 8 * anchor[1], bytes(8))
                    return -errno.ENOMEM
                table[idx] = child
                self.mem.write(node + 8 * idx, _ENTRY.pack(child))
                if anchor is None:
                    anchor = (node, idx)
                created.append(child)
                if level == 1:
                    self._leaves[child] = bytearray(PAGE_SIZE)
                else:
                    self._tables[child] = {}
            node = child
        self._set_bit(node, key % BITMAP_BITS, True)
        return 0

    def del_page(self, pfn: int, order: int) -> None:
        """``kho_radix_del_page``: clear the bit; empty nodes stay (as in the kernel)."""
        key = kho_radix_encode_key(pfn << PAGE_SHIFT, order)
        node = self.root
        for level in range(KHO_TREE_MAX_DEPTH - 1, 0, -1):
            child = self._tables[node].get(table_index(key, level))
            if child is None:
                return  # WARN_ON: never preserved
            node = child
        self._set_bit(node, key % BITMAP_BITS, False)

    def _set_bit(self, leaf: int, bit: int, value: bool) -> None:
        bits = self._leaves[leaf]
        byte, mask = bit >> 3, 1 << (bit & 7)
        old = bits[byte]
        new = old | mask if value else old & ~mask
        if new != old:
            bits[byte] = new
            self.mem.write(leaf + byte, bytes((new,)))

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Every preserved block ``(phys, order)`` in walk order (ascending key)."""
        for phys, size, order in walk_radix_runs(self.mem.read, self.root):
            block = PAGE_SIZE << order
            for at in range(phys, phys + size, block):
                yield at, order

    def destroy(self) -> None:
        """Free every node page but the root (the kernel frees the root separately)."""
        for page in [*self._tables, *self._leaves]:
            if page != self.root:
                self.pages.free_pages(page)
        self._tables = {self.root: {}}
        self._leaves = {}


def walk_radix_runs(read: Callable[[int, int], bytes], root: int) -> Iterator[tuple[int, int, int]]:
    """What ``kho_mem_retrieve`` reserves: ``(phys, size, order)`` runs of adjacent blocks of
    one order, in the kernel's walk order (tables by ascending index, then leaf bits),
    read from RAM only.

    A leaf's bits are consecutive keys of one order, so a run of set bits is a run of
    adjacent blocks; reserving the run is the same as reserving its blocks one by one.
    """
    budget = [MAX_WALK_PAGES]

    def walk(node: int, level: int, start: int) -> Iterator[tuple[int, int, int]]:
        if budget[0] <= 0:
            return
        budget[0] -= 1
        page = read(node, PAGE_SIZE)
        shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
        for i, (child,) in enumerate(_ENTRY.iter_unpack(page)):
            if not child:
                continue
            key = start | (i << shift)
            if level == 1:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
                yield from _leaf_runs(read(child, PAGE_SIZE), key)
            else:
                yield from walk(child, level - 1, key)

    yield from walk(root, KHO_TREE_MAX_DEPTH - 1, 0)


def _leaf_runs(bitmap: bytes, key: int) -> Iterator[tuple[int, int, int]]:
    value = int.from_bytes(bitmap, "little")
    bit = 0
    while value:
        skip = (value & -value).bit_length() - 1
        value >>= skip
        bit += skip
        run = (~value & (value + 1)).bit_length() - 1
        if not key:  # order bit inside the leaf (order 38+, a garbage tree): one by one
            run = 1
        phys, order = kho_radix_decode_key(key | bit)
        if order <= KHO_ORDER_0_LOG2:
            block = PAGE_SIZE << order
            yield phys, run * block, order
        value >>= run
        bit += run
