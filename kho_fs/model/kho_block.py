"""KHO serialization blocks: linked pages of fixed-size records (Linux 7.2).

A port of Linux 7.2.13 kernel/liveupdate/kho_block.c, include/linux/kho_block.h and the
ABI include/linux/kho/abi/block.h. A block is one preserved page (``KHO_BLOCK_SIZE`` =
``PAGE_SIZE``) that starts with ``struct kho_block_header_ser {u64 next; u64 count}`` and
holds ``count`` records right after it; ``next`` is the physical address of the following
block (0 ends the chain). LUO keeps its session records and each session's file records
in such chains (luo_session.c, luo_file.c), which is what lifted 6.19's fixed arrays.

The header fields and the records live in emulated RAM and are written when the kernel
writes them (``next`` when a block is linked, ``count`` when a record is reserved), so the
next kernel reads exactly what 7.2 leaves there. The ``struct kho_block`` list (which
blocks the set holds) is kernel memory: a Python list of block addresses.

Messages are printed with the ``luo: `` prefix: kho_block.o is part of the composite
``luo.o`` (kernel/liveupdate/Makefile, ``luo-y``), so its ``KBUILD_MODNAME`` is ``luo``.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from kho_fs.model.dmesg import KERN_ERR, KERN_WARNING
from kho_fs.model.errors import KernelError
from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.kho_blob import KhoBlobEra

KHO_BLOCK_SIZE = PAGE_SIZE
#: ``struct kho_block_header_ser``: u64 next, u64 count (packed)
KHO_BLOCK_HEADER_SER = struct.Struct("<QQ")
#: Safeguard against corrupted chains: at most 10000 blocks per set (kho_block.c)
KHO_MAX_BLOCKS = 10000
_U64 = struct.Struct("<Q")


def kho_block_count_per_block(entry_size: int) -> int:
    """``KHO_BLOCK_SET_INIT``'s ``count_per_block``: records that fit after the header."""
    return (KHO_BLOCK_SIZE - KHO_BLOCK_HEADER_SER.size) // entry_size


class KhoBlockSet:
    """``struct kho_block_set``: the blocks (addresses of their headers), in chain order.

    Outgoing sets allocate blocks with ``kho_alloc_preserve`` and free them with
    ``kho_unpreserve_free``; a set restored from the previous kernel (``incoming``) frees
    them with ``kho_restore_free``.
    """

    def __init__(self, kho: KhoBlobEra, entry_size: int, log_prefix: str = "luo: ") -> None:
        self.kho = kho
        self.entry_size = entry_size
        self.count_per_block = kho_block_count_per_block(entry_size)
        self.blocks: list[int] = []
        self.head_pa = 0
        self.incoming = False
        self.log_prefix = log_prefix

    # -- helpers ------------------------------------------------------------------------
    @property
    def nblocks(self) -> int:
        return len(self.blocks)

    def _read_u64(self, phys: int) -> int:
        return int(_U64.unpack(self.kho.kernel.mem.read(phys, 8))[0])

    def header_next(self, block: int) -> int:
        return self._read_u64(block)

    def header_count(self, block: int) -> int:
        return self._read_u64(block + 8)

    def entry(self, block: int, index: int) -> int:
        """Physical address of record ``index`` of ``block`` (``kho_block_entry``)."""
        return block + KHO_BLOCK_HEADER_SER.size + index * self.entry_size

    def _free_ser(self, block: int) -> None:
        """``kho_block_free_ser``."""
        if self.incoming:
            self.kho.kho_restore_free(block)
        else:
            self.kho.kho_unpreserve_free(block)

    # -- growing and shrinking (outgoing) ----------------------------------------------------
    def _add(self, block: int) -> int:
        """``kho_block_add``: link ``block`` at the end of the chain (its ``next`` field
        in RAM of the former last block). ENOSPC past ``KHO_MAX_BLOCKS``."""
        if self.nblocks >= KHO_MAX_BLOCKS:
            return -errno.ENOSPC
        mem = self.kho.kernel.mem
        if self.blocks:
            mem.write(self.blocks[-1], _U64.pack(block))
        else:
            self.head_pa = block
        self.blocks.append(block)
        return 0

    def _grow_one(self) -> int:
        try:
            block = self.kho.kho_alloc_preserve(KHO_BLOCK_SIZE)
        except KernelError as exc:
            return -exc.errno
        err = self._add(block)
        if err:
            self._free_ser(block)
        return err

    def _shrink_one(self) -> None:
        if not self.blocks:
            return
        last = self.blocks.pop()
        self._free_ser(last)
        if self.blocks:
            self.kho.kernel.mem.write(self.blocks[-1], _U64.pack(0))
        else:
            self.head_pa = 0

    def kho_block_set_grow(self, count: int) -> int:
        """Room for ``count`` records: new blocks until it fits; on failure the blocks
        added by this call are released. 0 or a negative errno (ENOMEM, ENOSPC)."""
        if self.incoming:  # WARN_ON_ONCE
            return -errno.EINVAL
        orig = self.nblocks
        while count > self.nblocks * self.count_per_block:
            err = self._grow_one()
            if err:
                while self.nblocks > orig:
                    self._shrink_one()
                return err
        return 0

    def kho_block_set_shrink(self, count: int) -> None:
        """Drop last blocks that ``count`` records no longer need."""
        while self.nblocks > 0 and count <= (self.nblocks - 1) * self.count_per_block:
            self._shrink_one()

    # -- the receiving side -------------------------------------------------------------------
    def _is_cyclic(self) -> bool:
        """``kho_block_set_is_cyclic``: Floyd's walk over the ``next`` fields in RAM."""
        fast = slow = self.head_pa
        count = 0
        while fast:
            if count >= KHO_MAX_BLOCKS:
                self.kho.printk(f"{self.log_prefix}Block set is corrupted", KERN_ERR)
                return True
            count += 1
            nxt = self.header_next(fast)
            if not nxt:
                break
            fast = nxt
            nxt = self.header_next(fast)
            if not nxt:
                break
            fast = nxt
            slow = self.header_next(slow)
            if slow == fast:
                self.kho.printk(f"{self.log_prefix}Block set is corrupted", KERN_ERR)
                return True
        return False

    def kho_block_set_restore(self, head_pa: int) -> int:
        """Adopt the chain at ``head_pa`` the previous kernel wrote: every block must hold
        1 to ``count_per_block`` records. On failure every block of the chain is freed.
        0 or a negative errno (EINVAL)."""
        self.incoming = True
        if not head_pa:
            return 0
        self.head_pa = head_pa
        if self._is_cyclic():
            self.head_pa = 0
            return -errno.EINVAL
        next_pa = head_pa
        err = 0
        while next_pa:
            count = self.header_count(next_pa)
            if not count or count > self.count_per_block:
                self.kho.printk(
                    f"{self.log_prefix}Block contains invalid entry count: {count}", KERN_WARNING
                )
                err = -errno.EINVAL
                break
            err = self._add(next_pa)
            if err:
                break
            next_pa = self.header_next(next_pa)
        if not err:
            return 0
        self.kho_block_set_destroy()
        while next_pa:  # the blocks not restored yet
            block, next_pa = next_pa, self.header_next(next_pa)
            self._free_ser(block)
        return err

    def kho_block_set_destroy(self) -> None:
        for block in self.blocks:
            self._free_ser(block)
        self.blocks = []
        self.head_pa = 0

    def kho_block_set_clear(self) -> None:
        """Zero every block's count and records (``next`` stays)."""
        mem = self.kho.kernel.mem
        for block in self.blocks:
            mem.write(block + 8, bytes(KHO_BLOCK_SIZE - 8))

    def kho_block_set_head_pa(self) -> int:
        return self.head_pa


class KhoBlockSetIt:
    """``struct kho_block_set_it``: a position (block, index) in a set."""

    def __init__(self, bs: KhoBlockSet) -> None:
        """``kho_block_set_it_init``."""
        self.bs = bs
        self.block = 0 if bs.blocks else -1  # index into bs.blocks; -1: no block
        self.i = 0

    def _phys(self) -> int:
        return self.bs.blocks[self.block]

    def _next_entry(self, written: bool) -> int:
        """The slot after the current one (its physical address), moving to the next
        block once this one's slots are passed: all ``count_per_block`` of them, or
        (``written``) the ``count`` its header in RAM holds. 0 after the last block."""
        bs = self.bs
        if self.block < 0:
            return 0
        end = bs.header_count(self._phys()) if written else bs.count_per_block
        if self.i >= end:
            if self.block == bs.nblocks - 1:
                return 0
            self.block += 1
            self.i = 0
        entry = bs.entry(self._phys(), self.i)
        self.i += 1
        return entry

    def reserve_entry(self) -> int:
        """``kho_block_set_it_reserve_entry``: the next free slot (its physical address),
        moving to the next block when this one is full; the block's ``count`` in RAM
        becomes the new index. 0 when the set is full."""
        entry = self._next_entry(written=False)
        if entry:
            self.bs.kho.kernel.mem.write(self._phys() + 8, _U64.pack(self.i))
        return entry

    def read_entry(self) -> int:
        """``kho_block_set_it_read_entry``: the next record written (each block's
        ``count`` is read from RAM), or 0 after the last. The kernel compares the index
        with ``count`` for equality; a count lowered through /dev/mem after the restore
        checked it would make the kernel walk off the page, here it ends the block."""
        return self._next_entry(written=True)

    def prev(self) -> int:
        """``kho_block_set_it_prev``: step back one slot (0 at the very beginning)."""
        bs = self.bs
        if self.block < 0:
            return 0
        if self.i == 0:
            if self.block == 0:
                return 0
            self.block -= 1
            self.i = bs.count_per_block
        self.i -= 1
        return bs.entry(self._phys(), self.i)


__all__ = [
    "KHO_BLOCK_HEADER_SER",
    "KHO_BLOCK_SIZE",
    "KHO_MAX_BLOCKS",
    "KhoBlockSet",
    "KhoBlockSetIt",
    "kho_block_count_per_block",
]
