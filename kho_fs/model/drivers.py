"""The driver interface for KHO participants, and a built-in example driver.

A driver is instantiated once per boot (like built-in kernel code) and gets three hooks:

* ``early_init(args)`` — after boot options are parsed, while memblock still allocates
  (scratch-only on a handover boot). Find your node in ``kernel.kho.fdt_in`` and claim
  your old memory, or allocate fresh memory with memblock.
* ``init()`` — an initcall; the default registers the driver on the KHO notifier chain.
* ``notifier_call(event, data)`` — DUMP (``data`` is the :class:`FdtSw` positioned in the
  open root node: add complete subnodes, list preserved ranges in ``mem`` properties) or
  ABORT (``data`` is None). Return a notifier code (``NOTIFY_DONE``, ``NOTIFY_BAD`` or
  ``notifier_from_errno(-E...)``).

Drivers may also expose windows on their memory as files under ``machine/drivers/``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from kho_fs.model.cmdline import memparse, parameq
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.fdt import FdtSw
from kho_fs.model.kho import KEXEC_KHO_ABORT, KEXEC_KHO_DUMP
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE
from kho_fs.model.units import PAGE_SIZE, hex_

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel


class DriverRegion(NamedTuple):
    """A range of physical memory a driver owns and lets users read and write."""

    name: str
    start: int
    size: int


class KhoDriver:
    """Base class: override what you need; the defaults do nothing and succeed."""

    name = "driver"
    #: KHO implementations (``Release.kho``) whose API this driver uses; on a kernel with
    #: another one it is not built in (it does not load).
    kho_kinds: frozenset[str] = frozenset({"v4"})

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def supports(self, kernel: Kernel) -> bool:
        return kernel.kho.kind in self.kho_kinds

    def early_init(self, args: list[tuple[str, str | None]]) -> None:
        """Boot options are parsed; memblock allocations are possible."""

    def init(self) -> None:
        self.kernel.kho.register_kho_notifier(self)

    def notifier_call(self, event: int, data: Any) -> int:
        if event == KEXEC_KHO_DUMP and isinstance(data, FdtSw):
            return self.kho_dump(data)
        if event == KEXEC_KHO_ABORT:
            self.kho_abort()
            return NOTIFY_DONE
        return NOTIFY_BAD

    def kho_dump(self, fdt: FdtSw) -> int:
        return NOTIFY_DONE

    def kho_abort(self) -> None:
        """Unfreeze whatever DUMP froze."""

    def regions(self) -> list[DriverRegion]:
        return []

    def get_state(self) -> dict[str, Any]:
        """JSON-able state for ``kho-fs mount --state`` (the machine's RAM is saved anyway)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned, instead of booting."""


class KhoExampleDriver(KhoDriver):
    """Preserves one driver-allocated buffer across kexec through a ``mem`` property.

    Enabled by the emulator's boot option ``kho_example.size=SIZE``. The buffer appears as
    ``machine/drivers/kho_example/buffer``; after a KHO kexec with the same size it is
    found again at the same physical address with the same bytes.
    """

    name = "kho_example"
    compatible = "kho-example-v1"
    param = "kho_example.size"

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.buffer: DriverRegion | None = None

    def early_init(self, args: list[tuple[str, str | None]]) -> None:
        size = 0
        for key, value in args:
            if parameq(key, self.param) and value:
                parsed, end = memparse(value)
                if end == len(value):
                    size = parsed
        if not size:
            return
        start = self._kho_restore(size)
        restored = start is not None
        if start is None:
            start = self.kernel.memblock.memblock_phys_alloc(size, PAGE_SIZE)
            if not start:
                self.kernel.printk(f"{self.name}: cannot allocate {hex_(size)} bytes", KERN_ERR)
                return
        self.buffer = DriverRegion("buffer", start, size)
        how = "restored from KHO" if restored else "allocated"
        self.kernel.printk(
            f"{self.name}: buffer {how} at {hex_(start)} ({hex_(size)} bytes)", KERN_INFO
        )

    def _kho_restore(self, size: int) -> int | None:
        fdt = self.kernel.kho_v4.fdt_in
        if fdt is None:
            return None
        node = fdt.path_offset("/" + self.name)
        if node is None or not fdt.node_compatible(node, self.compatible):
            return None
        mem = fdt.getprop(node, "mem")
        if mem is None or len(mem) != 16:
            return None
        start, old_size = struct.unpack("<QQ", mem)
        if old_size != size or start % PAGE_SIZE:
            self.kernel.printk(
                f"{self.name}: preserved buffer does not match, allocating a new one",
                KERN_WARNING,
            )
            return None
        return int(start)

    def kho_dump(self, fdt: FdtSw) -> int:
        if self.buffer is None:
            return NOTIFY_DONE
        err = fdt.begin_node(self.name)
        err |= fdt.property_string("compatible", self.compatible)
        err |= fdt.property("mem", struct.pack("<QQ", self.buffer.start, self.buffer.size))
        err |= fdt.end_node()
        return NOTIFY_BAD if err else NOTIFY_DONE

    def regions(self) -> list[DriverRegion]:
        return [self.buffer] if self.buffer is not None else []

    def get_state(self) -> dict[str, Any]:
        b = self.buffer
        return {"buffer": None if b is None else [b.start, b.size]}

    def set_state(self, state: dict[str, Any]) -> None:
        b = state.get("buffer")
        self.buffer = None if b is None else DriverRegion("buffer", int(b[0]), int(b[1]))


BUILTIN_DRIVERS: dict[str, Callable[[Kernel], KhoDriver]] = {
    KhoExampleDriver.name: KhoExampleDriver,
}
