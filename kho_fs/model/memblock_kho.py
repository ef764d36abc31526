"""reserve_mem across a mainline KHO kexec: the ``memblock`` sub-FDT (mm/memblock.c).

Outgoing (spec §7.1): at late init, when KHO is enabled and at least one region exists,
a page holds the FDT ``memblock-v1`` with one ``reserve-mem-v1`` child per region
(``start``, ``size``, native u64). The regions and that page are preserved and the page
is added as subtree ``memblock`` — at FINALIZE (6.16–6.18, a notifier) or at once (6.19).

Incoming (§7.2): before allocating a ``reserve_mem=`` region, the kernel looks for a child
of the same name and size and takes the old range over.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any

from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import Fdt, FdtSw
from kho_fs.model.kho_mainline import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoSerialization
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE, notifier_from_errno
from kho_fs.model.units import PAGE_SIZE, hex_

if TYPE_CHECKING:
    from kho_fs.model.kho_mainline import KhoMainline
    from kho_fs.model.reserve_mem import ReserveMem

MEMBLOCK_KHO_FDT = "memblock"
MEMBLOCK_KHO_NODE_COMPATIBLE = "memblock-v1"
RESERVE_MEM_KHO_NODE_COMPATIBLE = "reserve-mem-v1"


def build_memblock_fdt(regions: list[tuple[str, int, int]]) -> bytes | int:
    """The sub-FDT bytes (sequential writer, call order of the kernel) or a libfdt error."""
    fdt = FdtSw(PAGE_SIZE)
    err = fdt.finish_reservemap() or fdt.begin_node("")
    err = err or fdt.property_string("compatible", MEMBLOCK_KHO_NODE_COMPATIBLE)
    for name, start, size in regions:
        err = (
            err
            or fdt.begin_node(name)
            or fdt.property_string("compatible", RESERVE_MEM_KHO_NODE_COMPATIBLE)
            or fdt.property("start", struct.pack("<Q", start))
            or fdt.property("size", struct.pack("<Q", size))
            or fdt.end_node()
        )
    err = err or fdt.end_node() or fdt.finish()
    return err if err else fdt.blob()


class MemblockKho:
    """The memblock side of mainline KHO for one kernel."""

    def __init__(self, reserve_mem: ReserveMem, kho: KhoMainline) -> None:
        self.reserve_mem = reserve_mem
        self.kho = kho
        self.fdt_page = 0

    # -- outgoing ---------------------------------------------------------------------
    def reserve_mem_init(self) -> None:
        """``late_initcall(reserve_mem_init)``."""
        kho, table = self.kho, self.reserve_mem.table
        if not kho.kho_enable or not table:
            return
        page = kho.pages.alloc_pages(0, zero=False)
        if not page:
            self._report(-errno.ENOMEM)
            return
        blob = build_memblock_fdt([(r.name, r.start, r.size) for r in table])
        if isinstance(blob, int):
            kho.pages.free_pages(page)
            self._report(blob)
            return
        kho.kernel.mem.write(page, blob)
        self.fdt_page = page
        if kho.release.memblock_preserve == "init":
            # 6.19 prepare_kho_fdt: every step runs, errors are OR-ed (``err |=``), and
            # the subtree is added only when all of them succeeded
            err = 0
            for r in table:
                err |= self._errno(lambda r=r: self._preserve_region(r.start, r.size))
            err |= self._errno(lambda: kho.kho_preserve_folio(page, 0))
            if not err:
                err = self._errno(lambda: kho.kho_add_subtree(MEMBLOCK_KHO_FDT, page))
            if err:
                self._report(err)
            return
        kho.register_kho_notifier(self)

    def _preserve_region(self, start: int, size: int) -> None:
        """6.16: ``kho_preserve_phys`` (page-aligned or EINVAL); 6.18+: whole pages only."""
        if self.kho.release.memblock_preserve == "phys":
            self.kho.kho_preserve_phys(start, size)
        else:
            self.kho.kho_preserve_pages(start, size // PAGE_SIZE)

    def _report(self, err: int) -> None:
        self.kho.printk(f"failed to prepare memblock FDT for KHO: {err}", KERN_ERR)

    def notifier_call(self, event: int, data: Any) -> int:
        if event == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        if event != KEXEC_KHO_FINALIZE or not isinstance(data, KhoSerialization):
            return NOTIFY_BAD
        # 6.16/6.18 reserve_mem_kho_finalize: every call runs and the errors are OR-ed
        # (``err |= ...``), so an unaligned region still leaves the subtree added
        err = 0
        for r in self.reserve_mem.table:
            err |= self._errno(lambda r=r: self._preserve_region(r.start, r.size))
        err |= self._errno(lambda: self.kho.kho_preserve_folio(self.fdt_page, 0))
        err |= self._errno(lambda: self.kho.kho_add_subtree(MEMBLOCK_KHO_FDT, self.fdt_page, data))
        return notifier_from_errno(err) if err else NOTIFY_DONE

    @staticmethod
    def _errno(call: Any) -> int:
        try:
            call()
        except KernelError as exc:
            return -exc.errno
        return 0


def reserve_mem_kho_revive_mainline(
    reserve_mem: ReserveMem, kho: KhoMainline, name: str, size: int, align: int
) -> int | None:
    """The old start of region ``name`` if the incoming ``memblock`` FDT has it (§7.2)."""
    printk = kho.printk
    try:
        phys = kho.kho_retrieve_subtree(MEMBLOCK_KHO_FDT)
    except KernelError as exc:
        if exc.errno != errno.ENOENT:
            printk(
                f"failed to retrieve FDT '{MEMBLOCK_KHO_FDT}' from KHO: {-exc.errno}", KERN_WARNING
            )
        return None
    mem = kho.kernel.mem
    try:
        fdt = Fdt(mem.read(phys, PAGE_SIZE))
    except ValueError:
        fdt = None
    err = fdt.node_check_compatible(0, MEMBLOCK_KHO_NODE_COMPATIBLE) if fdt else -9
    if fdt is None or err:
        printk(
            f"FDT '{MEMBLOCK_KHO_FDT}' is incompatible with "
            f"'{MEMBLOCK_KHO_NODE_COMPATIBLE}': {err}",
            KERN_WARNING,
        )
        return None
    node = fdt.path_offset("/" + name) if "/" not in name else None
    if node is None:
        printk(f"FDT '{MEMBLOCK_KHO_FDT}' has no child '{name}': -1", KERN_WARNING)
        return None
    err = fdt.node_check_compatible(node, RESERVE_MEM_KHO_NODE_COMPATIBLE)
    if err:
        printk(
            f"Node '{name}' is incompatible with '{RESERVE_MEM_KHO_NODE_COMPATIBLE}': {err}",
            KERN_WARNING,
        )
        return None
    p_start, p_size = fdt.getprop(node, "start"), fdt.getprop(node, "size")
    if p_start is None or p_size is None or len(p_start) != 8 or len(p_size) != 8:
        return None
    start = struct.unpack("<Q", p_start)[0]
    old_size = struct.unpack("<Q", p_size)[0]
    if start & (align - 1):
        printk(
            f"KHO reserve-mem '{name}' has wrong alignment ({hex_(align)}, {hex_(start)})",
            KERN_WARNING,
        )
        return None
    if old_size != size:
        printk(
            f"KHO reserve-mem '{name}' has wrong size ({hex_(old_size)} != {hex_(size)})",
            KERN_WARNING,
        )
        return None
    printk(f"Revived memory reservation '{name}' from KHO", KERN_INFO)
    return int(start)
