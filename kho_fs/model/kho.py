"""Kexec HandOver, v4 series: scratch areas, the outgoing FDT, and the incoming side.

Function names follow kernel/kexec_handover.c of the v4 series so that a kernel engineer
can find each step; the sysfs show/store handlers live here too because in the kernel
they are part of the same file and take the same mutex.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from kho_fs.model.cmdline import (
    ScratchSizing,
    kho_parse_enable,
    kho_parse_scratch_size,
    kstrtobool,
    kstrtoull,
)
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING
from kho_fs.model.errors import KernelError, report_crash
from kho_fs.model.fdt import FDT_MAGIC, Fdt, FdtSw, fdt_check_header, fdt_header_totalsize
from kho_fs.model.memblock import MEMBLOCK_ALLOC_ACCESSIBLE, NUMA_NO_NODE
from kho_fs.model.notifier import NOTIFY_BAD, BlockingNotifierHead, NotifierBlock, notifier_to_errno
from kho_fs.model.units import PAGE_SIZE, PAGEBLOCK_SIZE, hex_, round_up

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel

log = logging.getLogger(__name__)

KHO_FDT_COMPATIBLE = "kho-v1"
KEXEC_KHO_DUMP = 0
KEXEC_KHO_ABORT = 1
KHO_DT_MAX_DEFAULT = 10 << 20
INT_MAX = (1 << 31) - 1
CMA_MIN_ALIGNMENT_BYTES = PAGEBLOCK_SIZE
FDT_MAGIC_BYTES = FDT_MAGIC.to_bytes(4, "big")
KHO_MEM_SIZE = 16  # struct kho_mem: LE u64 addr, LE u64 size


class KhoMem(NamedTuple):
    """One scratch-table entry or one ``mem`` property entry."""

    addr: int
    size: int

    def pack(self) -> bytes:
        return struct.pack("<QQ", self.addr, self.size)

    @property
    def end(self) -> int:
        return self.addr + self.size


def kho_mem_pack(entries: list[KhoMem]) -> bytes:
    return b"".join(e.pack() for e in entries)


def kho_mem_unpack(data: bytes) -> list[KhoMem]:
    return [KhoMem(*struct.unpack_from("<QQ", data, i)) for i in range(0, len(data) - 15, 16)]


class Kho:
    """One kernel's KHO state: ``kho_out`` (what it will hand over) and ``kho_in``."""

    kind = "v4"
    scratch_names: tuple[str, ...] = ("global",)  # labels of the first scratch areas
    init_level = "late"  # kho_init is a late initcall

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.kho_enable = False
        self.sizing = ScratchSizing()
        self.scratch: list[KhoMem] = []  # kho_scratch / kho_scratch_cnt
        self.notifiers = BlockingNotifierHead()
        # kho_out
        self.active = False
        self.dt_max = KHO_DT_MAX_DEFAULT
        self.fdt: bytes | None = None
        self.fdt_serial = 0  # each published FDT is a new `dt` file instance
        # kho_in
        self.fdt_in_phys = 0
        self.fdt_in: Fdt | None = None
        self.scratch_in_phys = 0
        self.sysfs: bool = False  # /sys/kernel/kho exists
        self.dt_fw: bytes | None = None  # /sys/firmware/kho/dt_fw

    # -- early parameters ----------------------------------------------------------
    def early_params(self) -> dict[str, Callable[[str | None], bool]]:
        return {"kho": self.kho_parse_enable, "kho_scratch": self.kho_parse_scratch_size}

    def kho_parse_enable(self, value: str | None) -> bool:
        parsed = kho_parse_enable(value)
        if parsed is None:
            return False
        self.kho_enable = parsed
        return True

    def kho_parse_scratch_size(self, value: str | None) -> bool:
        parsed = kho_parse_scratch_size(value, self.sizing)
        if parsed is None:
            return False
        self.sizing, message = parsed
        self.kernel.printk(message, KERN_NOTICE)
        return True

    # -- first boot: scratch reservation (mm_core_init -> kho_memory_init) ----------------
    def scratch_size(self, nid: int) -> int:
        s = self.sizing
        if s.scale:
            size = self.kernel.memblock.memblock_reserved_kern_size(nid=nid) * s.scale // 100
        else:
            size = s.size_global if nid == NUMA_NO_NODE else s.size_pernode
        return round_up(size, CMA_MIN_ALIGNMENT_BYTES)

    def kho_reserve_scratch(self) -> None:
        """Carve the global and per-node scratch areas; any failure disables KHO silently."""
        mb = self.kernel.memblock
        nodes = self.kernel.online_nodes()
        count = len(nodes) + 1
        table = mb.memblock_phys_alloc(count * KHO_MEM_SIZE, PAGE_SIZE)
        if not table:
            self.kho_enable = False
            return
        areas: list[KhoMem] = []
        size = self.scratch_size(NUMA_NO_NODE)
        addr = mb.memblock_phys_alloc(size, CMA_MIN_ALIGNMENT_BYTES)
        if addr:
            areas.append(KhoMem(addr, size))
            for nid in nodes:
                size = self.scratch_size(nid)
                addr = mb.memblock_alloc_range_nid(
                    size, CMA_MIN_ALIGNMENT_BYTES, 0, MEMBLOCK_ALLOC_ACCESSIBLE, nid, True
                )
                if not addr:
                    break
                areas.append(KhoMem(addr, size))
        if len(areas) != count:
            for area in reversed(areas):
                mb.memblock_phys_free(area.addr, area.size)
            mb.memblock_phys_free(table, count * KHO_MEM_SIZE)
            self.kho_enable = False
            return
        self.scratch = areas
        self.kernel.mem.write(table, kho_mem_pack(areas))

    # -- boot with handover ------------------------------------------------------------
    def kho_populate(
        self, fdt_phys: int, _fdt_len: int, scratch_phys: int, scratch_len: int
    ) -> None:
        """Take over the previous kernel's FDT and scratch table (called from setup_arch)."""
        k = self.kernel
        header = k.mem.read(fdt_phys, 40)
        total = fdt_header_totalsize(header)
        valid = header[:4] == FDT_MAGIC_BYTES and 40 <= total <= INT_MAX
        blob = k.mem.read(fdt_phys, total) if valid else header
        if not valid or fdt_check_header(blob):
            k.printk(f"KHO: setup: kexec handover FDT is invalid ({hex_(fdt_phys)})", KERN_WARNING)
            return
        self.fdt_in_phys = fdt_phys
        self.fdt_in = Fdt(blob)
        k.memblock.memblock_reserve(fdt_phys, len(blob))
        count = scratch_len // KHO_MEM_SIZE
        if count == 0:
            k.printk(
                f"KHO: setup: failed to memremap kexec scratch ({hex_(scratch_phys)})",
                KERN_WARNING,
            )
            return
        table = kho_mem_unpack(k.mem.read(scratch_phys, count * KHO_MEM_SIZE))
        for area in table:
            k.memblock.memblock_add(area.addr, area.size)
            k.memblock.memblock_mark_kho_scratch(area.addr, area.size)
        k.memblock.memblock_reserve(scratch_phys, count * KHO_MEM_SIZE)
        k.memblock.kho_scratch_only = True
        self.scratch = table
        self.scratch_in_phys = scratch_phys
        k.printk(
            "KHO: setup: Found kexec handover data. Will skip init for some devices", KERN_INFO
        )

    def kho_reserve_previous_mem(self) -> None:
        """Reserve every range named by a ``mem`` property of the incoming FDT (6.6)."""
        if self.fdt_in is None:
            return
        for path, props in self.fdt_in.walk():
            mem = next((p.value for p in props if p.name == "mem"), None)
            if mem is None or len(mem) % KHO_MEM_SIZE or not mem:
                continue
            entries = kho_mem_unpack(mem)
            if len(entries) > 1:
                self.kernel.printk(
                    f"kho-fs: {path}: mem property has {len(entries)} entries; "
                    "only the first is reserved (v4 behaviour)",
                    KERN_WARNING,
                )
            self.kernel.memblock.memblock_reserve(entries[0].addr, entries[0].size)

    def kho_memory_init(self) -> None:
        if self.fdt_in is not None:
            self.kho_reserve_previous_mem()
        elif self.kho_enable:
            self.kho_reserve_scratch()
        # Scratch pageblocks then become CMA; the page allocator is not modelled.

    def kho_init(self) -> None:
        """Late init: the sysfs directory and, after a handover, ``dt_fw``."""
        if not self.kho_enable:
            return
        self.sysfs = True
        if self.fdt_in is not None:
            self.dt_fw = self.fdt_in.blob

    def core_initcalls(self) -> None:
        """The reserve_mem participant registers before any driver (v4 patch 13)."""
        from kho_fs.model.reserve_mem import ReserveMemKhoParticipant

        self.register_kho_notifier(ReserveMemKhoParticipant(self.kernel.reserve_mem))

    @property
    def handover(self) -> bool:
        return self.fdt_in is not None

    def status_lines(self) -> list[str]:
        if not self.sysfs:
            return ["KHO:         disabled (no /sys/kernel/kho)"]
        return [f"KHO:         enabled, active={int(self.active)}, dt_max={self.dt_max:#x}"]

    # -- outgoing: notifiers, serialize, abort ---------------------------------------
    def register_kho_notifier(self, nb: NotifierBlock) -> None:
        self.notifiers.register(nb)

    def unregister_kho_notifier(self, nb: NotifierBlock) -> None:
        self.notifiers.unregister(nb)

    def _participant_crashed(self, nb: NotifierBlock, exc: BaseException) -> int:
        """A participant that raises fails its notifier call (NOTIFY_BAD, -EPERM)."""
        report_crash(self.kernel, nb, "notifier_call()", exc)
        return NOTIFY_BAD

    def kho_serialize(self) -> int:
        """Build the FDT in a ``dt_max`` buffer: 0 or the negative error the kernel logs."""
        if self.dt_max > INT_MAX:
            return -errno.ENOMEM
        fdt = FdtSw(self.dt_max)
        if fdt.create_error:
            return -errno.EINVAL
        for step in (
            fdt.finish_reservemap,
            lambda: fdt.begin_node(""),
            lambda: fdt.property_string("compatible", KHO_FDT_COMPATIBLE),
        ):
            err = step()
            if err:
                return err
        err = notifier_to_errno(
            self.notifiers.call_chain(KEXEC_KHO_DUMP, fdt, on_error=self._participant_crashed)
        )
        if err:
            return err
        err = fdt.end_node() or fdt.finish()
        if err:
            return err
        if fdt.check_header():
            return -errno.EINVAL
        self.fdt = fdt.blob()
        self.fdt_serial += 1
        return 0

    def kho_abort(self) -> None:
        if not self.active:
            return
        self.fdt = None
        self.notifiers.call_chain(KEXEC_KHO_ABORT, None, on_error=self._participant_crashed)

    # -- sysfs handlers ----------------------------------------------------------------
    def active_show(self) -> str:
        return "1\n" if self.active else "0\n"

    def active_store(self, buf: bytes) -> None:
        value = kstrtobool(buf)
        if not self.kho_enable:
            raise KernelError(errno.EOPNOTSUPP)
        if not self.scratch:
            raise KernelError(errno.ENOMEM)
        if value == self.active:
            return
        if value:
            err = self.kho_serialize()
            if err:
                self.kernel.printk(f"KHO: failed to serialize state: {err}", KERN_ERR)
                raise KernelError(errno.EINVAL, f"failed to serialize state: {err}")
            self.active = True
        else:
            self.kho_abort()
            self.active = False
        self.kernel.changed()

    def dt_max_show(self) -> str:
        return f"{hex_(self.dt_max)}\n"

    def dt_max_store(self, buf: bytes) -> None:
        try:
            value = kstrtoull(buf, 0)
        except KernelError as exc:
            raise KernelError(errno.EINVAL) from exc
        if self.fdt is not None:
            raise KernelError(errno.EBUSY)
        self.dt_max = value

    def scratch_phys_show(self) -> str:
        return "".join(f"{hex_(a.addr)}\n" for a in self.scratch)

    def scratch_len_show(self) -> str:
        return "".join(f"{hex_(a.size)}\n" for a in self.scratch)

    # -- kexec_file_load step -------------------------------------------------------------
    def kho_fill_kimage(self) -> tuple[bytes, bytes] | None:
        """The FDT copy and scratch-table copy a file load must carry, or None if inactive."""
        if not self.active or self.fdt is None:
            return None
        return bytes(self.fdt), kho_mem_pack(self.scratch)

    def kho_scratch_ranges(self) -> list[KhoMem] | None:
        """Where kexec may place segments: the scratch areas while active, else None."""
        return list(self.scratch) if self.active else None
