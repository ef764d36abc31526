"""``reserve_mem=``: named boot-time reservations, and their KHO participant (v4 patch 13).

The table is filled while boot options are parsed and never changes afterwards in v4.
On a handover boot each option first tries to revive the previous kernel's region of
the same name and size, so the bytes stay at the same physical address.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, NamedTuple

from kho_fs.model.cmdline import parse_reserve_mem
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.fdt import FdtSw
from kho_fs.model.kho import KEXEC_KHO_ABORT, KEXEC_KHO_DUMP, Kho
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE
from kho_fs.model.units import hex_

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel

RESERVE_MEM_MAX_ENTRIES = 8
RESERVE_MEM_NAME_SIZE = 16
RESERVE_MEM_COMPATIBLE = "reserve_mem-v1"
RESERVE_MEM_MAP_COMPATIBLE = "reserve_mem_map-v1"
RESERVE_MEM_NODE = "reserve_mem"


class ReserveMemRegion(NamedTuple):
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


class ReserveMem:
    """``reserved_mem_table`` and the functions around it."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.table: list[ReserveMemRegion] = []
        self.memblock_kho: Any = None  # mainline: the memblock sub-FDT owner

    def reserve_mem_init(self) -> None:
        """``late_initcall(reserve_mem_init)``: mainline kernels hand the table over
        through the ``memblock`` sub-FDT (the v4 participant registered at core init)."""
        from kho_fs.model.kho_mainline import KhoMainline
        from kho_fs.model.memblock_kho import MemblockKho

        kho = self.kernel.kho
        if isinstance(kho, KhoMainline):
            make = getattr(kho, "make_memblock_kho", None)  # an era with its own steps
            self.memblock_kho = make(self) if make is not None else MemblockKho(self, kho)
            self.memblock_kho.reserve_mem_init()

    def reserve_mem_find_by_name(self, name: str) -> ReserveMemRegion | None:
        return next((r for r in self.table if r.size and r.name == name), None)

    def reserve_mem(self, value: str | None) -> None:
        """The ``reserve_mem=`` boot-option handler: every failure is silent in v4; from
        Linux 7.1 each one is logged (spec §8, release trait ``reserve_mem_messages``)."""
        loud = self.kernel.release.reserve_mem_messages
        if value is None:  # ``reserve_mem`` without ``=`` never reaches the handler
            return
        if len(self.table) >= RESERVE_MEM_MAX_ENTRIES:
            if loud:
                self._err("reserve_mem: no more room for reserved memory")
            return
        param = parse_reserve_mem(value)
        if param is None:
            if loud:
                self._err("reserve_mem: empty or malformed parameter")
            return
        if self.reserve_mem_find_by_name(param.name):
            if loud:
                self._err(f'reserve_mem: name "{param.name}" was already used')
            return
        if self._revive(param.name, param.size, param.align):
            return
        start = self.kernel.memblock.memblock_phys_alloc(param.size, param.align)
        if not start:
            if loud:
                self._err("reserve_mem: memblock allocation failed")
            return
        self.table.append(ReserveMemRegion(param.name, start, param.size))

    def _err(self, text: str) -> None:
        self.kernel.printk(text, KERN_ERR)

    def reserve_mem_param_show(self) -> str:
        """debugfs ``memblock/reserve_mem_param`` (Linux 7.1+, spec §9): one line per
        region with a size, ``name\t\t(size)``, the size from ``string_get_size``."""
        from kho_fs.model.string_helpers import string_get_size

        return "".join(
            f"{r.name}\t\t({string_get_size(r.size)})\n" for r in self.table if r.size
        )

    def _revive(self, name: str, size: int, align: int) -> bool:
        """Revival as the running kernel's KHO does it (v4 node or mainline sub-FDT)."""
        from kho_fs.model.kho_mainline import KhoMainline
        from kho_fs.model.memblock_kho import reserve_mem_kho_revive_mainline

        kho = self.kernel.kho
        if isinstance(kho, KhoMainline):
            if not kho.handover:
                return False
            start = reserve_mem_kho_revive_mainline(self, kho, name, size, align)
            if start is None:
                return False
            self.table.append(ReserveMemRegion(name, start, size))
            return True
        if not isinstance(kho, Kho) or kho.fdt_in is None:
            return False
        return self.reserve_mem_kho_revive(name, size, align)

    def reserve_mem_kho_revive(self, name: str, size: int, align: int) -> bool:
        """Take over the previous kernel's region ``name`` if it matches (spec 6.5)."""
        fdt = self.kernel.kho_v4.fdt_in
        if fdt is None:
            return False
        node = fdt.path_offset("/" + RESERVE_MEM_NODE)
        if node is None:
            return False
        printk = self.kernel.printk
        if not fdt.node_compatible(node, RESERVE_MEM_COMPATIBLE):
            printk(f"Node '/{RESERVE_MEM_NODE}' has unknown compatible", KERN_WARNING)
            return False
        for child in fdt.subnodes(node):
            if fdt.get_name(child) != name:
                continue
            if not fdt.node_compatible(child, RESERVE_MEM_MAP_COMPATIBLE):
                printk(f"Node '/{RESERVE_MEM_NODE}/{name}' has unknown compatible", KERN_WARNING)
                continue
            mem = fdt.getprop(child, "mem")
            if mem is None or len(mem) != 16:
                continue
            start, old_size = struct.unpack("<QQ", mem)
            if start & (align - 1):  # the kernel's IS_ALIGNED, literal for odd aligns too
                printk(
                    f"KHO reserved_mem '{name}' has wrong alignment ({hex_(align)}, {hex_(start)})",
                    KERN_WARNING,
                )
                continue
            if old_size != size:
                printk(
                    f"KHO reserved_mem '{name}' has wrong size ({hex_(old_size)} != {hex_(size)})",
                    KERN_WARNING,
                )
                continue
            self.table.append(ReserveMemRegion(name, start, size))
            printk(f"Revived memory reservation '{name}' from KHO", KERN_INFO)
            return True
        return False


class ReserveMemKhoParticipant:
    """The v4 ``reserve_mem`` notifier: writes ``/reserve_mem`` on DUMP."""

    name = "reserve_mem"

    def __init__(self, reserve_mem: ReserveMem) -> None:
        self.reserve_mem = reserve_mem

    def notifier_call(self, event: int, data: Any) -> int:
        if event == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        if event != KEXEC_KHO_DUMP or not isinstance(data, FdtSw):
            return NOTIFY_BAD
        table = self.reserve_mem.table
        if not table:
            return NOTIFY_DONE
        fdt = data
        err = fdt.begin_node(RESERVE_MEM_NODE)
        err |= fdt.property_string("compatible", RESERVE_MEM_COMPATIBLE)
        for region in table:
            err |= fdt.begin_node(region.name)
            err |= fdt.property_string("compatible", RESERVE_MEM_MAP_COMPATIBLE)
            err |= fdt.property("mem", struct.pack("<QQ", region.start, region.size))
            err |= fdt.end_node()
        err |= fdt.end_node()
        return NOTIFY_BAD if err else NOTIFY_DONE
