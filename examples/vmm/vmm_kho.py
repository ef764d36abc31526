"""A VMM's kernel side, as a kho-fs plug-in driver: guest memory and a state blob that
survive a kexec of the host, on the v4 series and on mainline (6.16 – 7.0).

The driver allocates guest memory (``vmm.guest_mem=SIZE`` on the kernel command line,
default 16M; ``0`` turns it off) and one page of VMM state at boot and serves them as
``machine/drivers/vmm/guest_mem`` and ``machine/drivers/vmm/state``. A VMM (here: your
shell or your test) writes the guest's RAM and its device state there. Across a KHO kexec
both come back at the same physical addresses with the same bytes, and dmesg says
``vmm: guest memory … restored from KHO``; if anything does not match (another size, no
handover, a kernel that dropped it) the driver starts afresh and says ``allocated``.

How each kernel is told (one driver, three APIs, see ``docs/drivers.md``):

- **v4**: at ``echo 1 > active`` the DUMP notifier writes ``/vmm`` into the open FDT,
  with a ``mem`` property per range (the next kernel reserves the first pair of each).
- **6.16 – 6.18**: at ``finalize`` the FINALIZE notifier preserves both ranges and the
  sub-FDT page and adds subtree ``vmm``.
- **6.19 +**: everything is preserved and the subtree added at boot (``init``).

Load it with ``kho-fs mount M --driver examples/vmm/vmm_kho.py:VmmDriver`` or, installed
(``pip install examples/vmm``), ``--driver vmm``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from kho_fs.drivers import (
    API_6_16,
    API_6_19,
    API_V4,
    KERN_ERR,
    KERN_INFO,
    KERN_WARNING,
    KEXEC_KHO_ABORT,
    KEXEC_KHO_FINALIZE,
    NOTIFY_BAD,
    NOTIFY_DONE,
    PAGE_SIZE,
    DriverRegion,
    Fdt,
    FdtSw,
    KernelError,
    KhoDriver,
    KhoMainline,
    KhoSerialization,
    kho_api,
    memparse,
    notifier_from_errno,
    parameq,
)

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel

COMPATIBLE = "kho-fs,vmm-v1"
DEFAULT_GUEST_MEM = 16 << 20
STATE_SIZE = PAGE_SIZE


def _range(value: bytes | None) -> tuple[int, int] | None:
    """A ``<u64 start, u64 size>`` property (little-endian, as KHO writes them)."""
    if value is None or len(value) != 16:
        return None
    start, size = struct.unpack("<QQ", value)
    return int(start), int(size)


class VmmDriver(KhoDriver):
    """Guest memory plus a page of VMM state, kept across kexec."""

    name = "vmm"
    kho_kinds = frozenset({"v4", "mainline"})
    param = "vmm.guest_mem"

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.guest: DriverRegion | None = None
        self.state: DriverRegion | None = None
        self.fdt_phys = 0  # mainline: the page holding our sub-FDT
        self.restored = False

    # -- boot --------------------------------------------------------------------------
    def early_init(self, args: list[tuple[str, str | None]]) -> None:
        size = DEFAULT_GUEST_MEM
        for key, value in args:
            if parameq(key, self.param) and value is not None:
                parsed, end = memparse(value)
                if end == len(value):
                    size = -(-parsed // PAGE_SIZE) * PAGE_SIZE
        if not size:
            return
        old = self._handed_over()
        if old is not None and old[0][1] == size and old[1][1] == STATE_SIZE:
            (guest, _), (state, _) = old
            self.restored = True
        else:
            if old is not None:
                self.kernel.printk("vmm: handed-over guest memory has another size", KERN_WARNING)
            mb = self.kernel.memblock
            guest = mb.memblock_phys_alloc(size, PAGE_SIZE)
            state = mb.memblock_phys_alloc(STATE_SIZE, PAGE_SIZE) if guest else 0
            if not state:
                self.kernel.printk(f"vmm: cannot allocate {size >> 20} MiB", KERN_ERR)
                return
            self.kernel.mem.zero(guest, size)
            self.kernel.mem.zero(state, STATE_SIZE)
        self.guest = DriverRegion("guest_mem", guest, size)
        self.state = DriverRegion("state", state, STATE_SIZE)
        how = "restored from KHO" if self.restored else "allocated"
        self.kernel.printk(
            f"vmm: guest memory {guest:#x} ({size >> 20} MiB) and state {state:#x} {how}",
            KERN_INFO,
        )

    def _handed_over(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """``((guest start, size), (state start, size))`` the previous kernel left us."""
        api = kho_api(self.kernel)
        if api == API_V4:
            fdt = self.kernel.kho_v4.fdt_in
            node = None if fdt is None else fdt.path_offset("/vmm")
            if fdt is None or node is None or not fdt.node_compatible(node, COMPATIBLE):
                return None
            guest_node, state_node = (
                fdt.path_offset("/vmm/guest-mem"),
                fdt.path_offset("/vmm/state"),
            )
            if guest_node is None or state_node is None:
                return None
            guest, state = (
                _range(fdt.getprop(guest_node, "mem")),
                _range(fdt.getprop(state_node, "mem")),
            )
        elif api in (API_6_16, API_6_19):
            kho = self.kernel.kho
            assert isinstance(kho, KhoMainline)
            try:
                phys = kho.kho_retrieve_subtree("vmm")
                sub = Fdt(self.kernel.mem.read(phys, PAGE_SIZE))
            except (KernelError, ValueError):
                return None
            if not sub.node_compatible(0, COMPATIBLE):
                return None
            guest, state = _range(sub.getprop(0, "guest-mem")), _range(sub.getprop(0, "state"))
        else:
            return None
        return None if guest is None or state is None else (guest, state)

    def init(self) -> None:
        api = kho_api(self.kernel)
        if self.guest is None or api not in (API_V4, API_6_16, API_6_19):
            return
        if api in (API_V4, API_6_16):  # serialize when user space asks
            self.kernel.kho.register_kho_notifier(self)
            if api == API_V4:
                return
        kho = self.kernel.kho
        assert isinstance(kho, KhoMainline)
        if not kho.kho_enable:
            return
        self.fdt_phys = kho.pages.alloc_pages(0)
        if not self.fdt_phys:
            self.kernel.printk("vmm: no page for the KHO FDT", KERN_ERR)
            return
        self.kernel.mem.write(self.fdt_phys, self._sub_fdt())
        if api == API_6_19:  # preserve-any-time: hand everything over now
            try:
                self._preserve(None)
            except KernelError as exc:
                self.kernel.printk(f"vmm: cannot preserve guest memory: {-exc.errno}", KERN_ERR)

    # -- mainline: the sub-FDT and the preservations --------------------------------------
    def _sub_fdt(self) -> bytes:
        assert self.guest is not None and self.state is not None
        fdt = FdtSw(PAGE_SIZE)
        err = (
            fdt.finish_reservemap()
            or fdt.begin_node("")
            or fdt.property_string("compatible", COMPATIBLE)
            or fdt.property("guest-mem", struct.pack("<QQ", self.guest.start, self.guest.size))
            or fdt.property("state", struct.pack("<QQ", self.state.start, self.state.size))
            or fdt.end_node()
            or fdt.finish()
        )
        if err:
            raise KernelError(22, f"vmm: FDT error {err}")
        return fdt.blob()

    def _preserve(self, ser: KhoSerialization | None) -> None:
        assert self.guest is not None and self.state is not None
        kho = self.kernel.kho
        assert isinstance(kho, KhoMainline)
        for r in (self.guest, self.state):
            kho.kho_preserve_pages(r.start, r.size // PAGE_SIZE)
        kho.kho_preserve_folio(self.fdt_phys, 0)
        kho.kho_add_subtree("vmm", self.fdt_phys, ser)

    # -- notifiers (v4 DUMP/ABORT, 6.16–6.18 FINALIZE/ABORT) ------------------------------
    def notifier_call(self, event: int, data: Any) -> int:
        if kho_api(self.kernel) == API_V4:
            return super().notifier_call(event, data)  # kho_dump / kho_abort below
        if event == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        if event != KEXEC_KHO_FINALIZE or not isinstance(data, KhoSerialization):
            return NOTIFY_BAD
        try:
            self._preserve(data)
        except KernelError as exc:
            return notifier_from_errno(-exc.errno)
        return NOTIFY_DONE

    def kho_dump(self, fdt: FdtSw) -> int:
        """v4: ``/vmm`` with one ``mem`` property per range, in the open handover FDT."""
        if self.guest is None or self.state is None:
            return NOTIFY_DONE
        err = fdt.begin_node("vmm") or fdt.property_string("compatible", COMPATIBLE)
        for node, r in (("guest-mem", self.guest), ("state", self.state)):
            err = (
                err
                or fdt.begin_node(node)
                or fdt.property("mem", struct.pack("<QQ", r.start, r.size))
                or fdt.end_node()
            )
        err = err or fdt.end_node()
        return NOTIFY_BAD if err else NOTIFY_DONE

    # -- files and --state -------------------------------------------------------------------
    def regions(self) -> list[DriverRegion]:
        return [r for r in (self.guest, self.state) if r is not None]

    def get_state(self) -> dict[str, Any]:
        return {
            "guest": None if self.guest is None else [self.guest.start, self.guest.size],
            "state": None if self.state is None else [self.state.start, self.state.size],
            "fdt_phys": self.fdt_phys,
            "restored": self.restored,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """What :meth:`get_state` saved, checked as untrusted input (ValueError)."""

        def pair(key: str) -> tuple[int, int] | None:
            value = state.get(key)
            if value is None:
                return None
            if not (isinstance(value, list) and len(value) == 2):
                raise ValueError(f"{key} is not [start, size]")
            start, size = value
            if type(start) is not int or type(size) is not int or start < 0 or size <= 0:
                raise ValueError(f"{key} is not [start, size]")
            return start, size

        guest, blob = pair("guest"), pair("state")
        fdt_phys = state.get("fdt_phys", 0)
        if type(fdt_phys) is not int or fdt_phys < 0:
            raise ValueError("fdt_phys is not an address")
        self.guest = None if guest is None else DriverRegion("guest_mem", *guest)
        self.state = None if blob is None else DriverRegion("state", *blob)
        self.fdt_phys = fdt_phys
        self.restored = bool(state.get("restored", False))
