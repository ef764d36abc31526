"""One boot of the emulated kernel: start_kernel in x86's order, and what it owns.

A ``Kernel`` lives from one boot to the next kexec or reboot. The ``Machine`` owns the
hardware (RAM and its contents) and creates a new ``Kernel`` for every boot.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, NamedTuple

from kho_fs.model.cmdline import parameq, parse_args
from kho_fs.model.dmesg import KERN_EMERG, KERN_INFO, KERN_NOTICE, KERN_WARNING, KernelLog
from kho_fs.model.drivers import DriverRegion, KhoDriver
from kho_fs.model.errors import report_crash
from kho_fs.model.kexec import (
    BP_CMD_LINE_PTR,
    BP_EXT_CMD_LINE_PTR,
    BP_SETUP_DATA,
    COMMAND_LINE_SIZE,
    SETUP_KEXEC_KHO,
    Kexec,
)
from kho_fs.model.kho import Kho
from kho_fs.model.kho_blob import KhoBlobEra
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.kho_none import KhoNone
from kho_fs.model.luo import Luo
from kho_fs.model.luo_v5 import LuoV5
from kho_fs.model.memblock import Memblock
from kho_fs.model.page_alloc import PageAllocator
from kho_fs.model.releases import (
    DEFAULT_RELEASE,
    KHO_BLOB,
    KHO_MAINLINE,
    KHO_NONE,
    KHO_V4,
    LUO_FORMAT_FDT,
    LUO_FORMAT_V5,
    RELEASES,
    Release,
)
from kho_fs.model.reserve_mem import ReserveMem
from kho_fs.model.units import PAGE_SIZE, SZ_1M

if TYPE_CHECKING:
    from kho_fs.model.physmem import PhysicalMemory

UTS_RELEASE = RELEASES[DEFAULT_RELEASE].uts_release
KHO_STRATEGIES: dict[str, Callable[[Kernel], Kho | KhoMainline | KhoNone]] = {
    KHO_NONE: KhoNone,
    KHO_V4: Kho,
    KHO_MAINLINE: KhoMainline,
    KHO_BLOB: KhoBlobEra,
}
#: LUO formats: 6.19/7.0's `LUO` FDT (luo.py), 7.2's raw `luo-v5` blob (luo_v5.py)
LUO_STRATEGIES: dict[str, Callable[[Kernel], Luo]] = {
    LUO_FORMAT_FDT: Luo,
    LUO_FORMAT_V5: LuoV5,
}
#: Parameters every modelled kernel knows besides its KHO ones (a subset of x86-64's).
KNOWN_PARAMS = frozenset(
    {
        "console", "earlycon", "earlyprintk", "loglevel", "quiet", "debug", "ignore_loglevel",
        "root", "rootfstype", "rootwait", "rw", "ro", "init", "rdinit", "initrd", "nokaslr", "mem",
        "memmap", "crashkernel", "reserve_mem", "panic", "nosmp", "maxcpus", "nr_cpus", "noapic",
        "nolapic", "acpi", "audit", "selinux", "apparmor", "splash", "memblock", "numa", "nopti",
        "mitigations",
    }
)
REALMODE_TRAMPOLINE_SIZE = 24 * 1024
MEMMAP_SHIFT = 6  # struct page is 64 bytes per 4 KiB page: 1/64 of a node's RAM
SETUP_DATA_MAX_NODES = 64  # guard against a looping chain written through /dev/mem


class BootFailed(Exception):
    """The emulated boot stopped (a real kernel would panic)."""


class BootInfo(NamedTuple):
    """What the boot loader or kexec hands the kernel."""

    image: tuple[int, int]  # kernel image (start, memory size)
    initrd: tuple[int, int] | None = None
    cmdline: str = ""  # cold boot: the firmware's command line
    boot_params: int | None = None  # kexec boot: the zero page in RAM
    page_tables: int = 4 * SZ_1M  # early page-table allocation (model parameter)
    notes: tuple[str, ...] = ()  # kho-fs lines logged after the banner (image mapping)


class Kernel:
    """The running kernel: memblock, log, command line, KHO, reserve_mem and kexec."""

    def __init__(
        self,
        mem: PhysicalMemory,
        boot: BootInfo,
        generation: int,
        drivers: Sequence[Callable[[Kernel], KhoDriver]] = (),
        on_change: Callable[[], None] | None = None,
        release: Release = RELEASES[DEFAULT_RELEASE],
    ) -> None:
        self.mem = mem
        self.boot = boot
        self.generation = generation
        self.release = release
        self.log = KernelLog()
        self.memblock = Memblock()
        self.kho = KHO_STRATEGIES[release.kho](self)
        self.reserve_mem = ReserveMem(self)
        self.kexec = Kexec(self)
        # /dev/liveupdate (docs/luo.md): the release's LUO format picks the strategy
        self.luo = LUO_STRATEGIES[release.luo_format](self) if release.liveupdate else None
        self._pages: PageAllocator | None = None
        self._driver_failures: list[tuple[SimpleNamespace, str, Exception]] = []  # shown at boot
        self._broken_drivers: set[int] = set()  # id() of drivers whose hooks raised
        self._bad_regions: set[tuple[int, str]] = set()  # reported once per boot
        self.drivers: list[KhoDriver] = self._build_drivers(drivers)
        self.cmdline = boot.cmdline
        self.panic: str | None = None
        self._on_change = on_change

    # -- drivers (plug-in code: whatever it raises is a failing driver, never a crash) --
    def _build_drivers(self, factories: Sequence[Callable[[Kernel], KhoDriver]]) -> list[KhoDriver]:
        """Instantiate the drivers that support this kernel. A factory that raises, returns
        no :class:`KhoDriver` or repeats a name is left out; dmesg says why at boot."""
        built: list[KhoDriver] = []
        for make in factories:
            label = getattr(make, "name", None)
            if not isinstance(label, str):
                label = getattr(make, "__qualname__", None) or repr(make)
            try:
                driver = make(self)
                if not isinstance(driver, KhoDriver):
                    raise TypeError(f"the factory returned {type(driver).__name__}, no KhoDriver")
                if not isinstance(driver.name, str) or not driver.name:
                    raise TypeError(f"its name is {driver.name!r}, not a non-empty string")
                if any(d.name == driver.name for d in built):
                    raise ValueError(f"a driver named {driver.name!r} is already built in")
                if driver.supports(self):
                    built.append(driver)
            except Exception as exc:
                self._driver_failures.append((SimpleNamespace(name=label), "probe", exc))
        return built

    def _driver_hook(self, driver: KhoDriver, hook: str, call: Callable[[], object]) -> None:
        """Run ``early_init``/``init`` of a driver; if it raises, dmesg says so and the
        driver gets no further hooks in this boot (its notifier, if any, is dropped)."""
        if id(driver) in self._broken_drivers:
            return
        try:
            call()
        except Exception as exc:
            self._broken_drivers.add(id(driver))
            report_crash(self, driver, f"{hook}()", exc)
            chain = getattr(self.kho, "notifiers", None)
            if chain is not None and driver in chain.chain:
                chain.unregister(driver)

    def driver_regions(self, driver: KhoDriver) -> list[DriverRegion]:
        """``driver.regions()`` that are windows on RAM; a ``regions()`` that raises or a
        region that is not a (name, start, size) range of RAM is left out, with one dmesg
        line per driver and boot."""
        try:
            regions = list(driver.regions())
        except Exception as exc:
            if id(driver) not in self._broken_drivers:
                self._broken_drivers.add(id(driver))
                report_crash(self, driver, "regions()", exc)
            return []
        good = []
        for r in regions:
            try:
                name, start, size = r
                ok = (
                    isinstance(name, str)
                    and type(start) is int
                    and type(size) is int
                    and size > 0
                    and start >= 0
                    and self.mem.is_ram(start, size)
                )
            except (TypeError, ValueError):
                ok = False
            if ok:
                good.append(DriverRegion(name, start, size))
            elif (id(driver), repr(r)) not in self._bad_regions:
                self._bad_regions.add((id(driver), repr(r)))
                self.printk(
                    f"kho-fs: driver {driver.name!r}: region {r!r} is no range of RAM; "
                    "no file for it",
                    KERN_WARNING,
                )
        return good

    # -- helpers ---------------------------------------------------------------------
    def printk(self, text: str, level: int = KERN_INFO) -> None:
        self.log.printk(text, level)
        self.changed()  # the dmesg files grew: cached sizes must not stay stale

    @property
    def pages(self) -> PageAllocator:
        """The page allocator; it exists once memblock has handed memory over."""
        if self._pages is None:
            raise RuntimeError("page allocator used before mm init")
        return self._pages

    @property
    def kho_v4(self) -> Kho:
        """The KHO of a v4-series kernel, for code that exists only there (the v4 sysfs
        handlers, the v4 state file); TypeError on another release."""
        if not isinstance(self.kho, Kho):
            raise TypeError(f"release {self.release.name} has no v4 KHO")
        return self.kho

    @property
    def linux_banner(self) -> str:
        """``Linux version …``: dmesg's first line and ``/proc/version``."""
        return (
            f"Linux version {self.release.uts_release} (kho-fs) "
            f"#{self.generation + 1} SMP PREEMPT_DYNAMIC"
        )

    def changed(self) -> None:
        """Tell the machine that something visible in the tree may have changed."""
        if self._on_change is not None:
            self._on_change()

    def online_nodes(self) -> list[int]:
        return list(range(self.mem.nr_nodes))

    def early_alloc(self, size: int, align: int, nid: int | None = None) -> int:
        """An allocation the kernel cannot boot without (page tables, memory map)."""
        mb = self.memblock
        addr = (
            mb.memblock_phys_alloc(size, align)
            if nid is None
            else mb.memblock_phys_alloc_try_nid(size, align, nid)
        )
        if not addr:
            if mb.kho_scratch_only:
                raise BootFailed("kho-fs: early allocation failed in scratch-only mode")
            raise BootFailed("Kernel panic - not syncing: early memory allocation failed")
        return addr

    # -- boot --------------------------------------------------------------------------
    def start_kernel(self) -> None:
        """Boot; a failed boot is recorded in ``panic`` and the log, never raised."""
        try:
            self._boot()
        except BootFailed as exc:
            self.panic = str(exc)
            self.printk(str(exc), KERN_EMERG)  # panic() prints with pr_emerg

    def _boot(self) -> None:
        mb, boot = self.memblock, self.boot
        kho_args = None
        if boot.boot_params is not None:
            self.cmdline = self._read_cmdline(boot.boot_params)
        self.printk(self.linux_banner, KERN_NOTICE)
        for note in boot.notes:
            self.printk(note, KERN_NOTICE)
        self.printk(f"Command line: {self.cmdline}", KERN_INFO)
        args = parse_args(self.cmdline)
        # setup_arch: early_reserve_memory (v4 patch 11: RSRV_KERN for image, initrd, setup_data)
        mb.memblock_reserve_kern(*boot.image)
        if boot.initrd is not None:
            mb.memblock_reserve_kern(*boot.initrd)
        if boot.boot_params is not None:
            kho_args = self._parse_setup_data(boot.boot_params)
        if kho_args is not None:
            self.kho.kho_populate(*kho_args)
        # parse_early_param: a handler returning False makes do_early_param complain
        early = self.kho.early_params()
        if self.luo is not None:
            early = {**early, **self.luo.early_params()}
        if self.release.reports_unknown_params:
            self._report_unknown_params(args, early)
        for param, value in args:
            handler = next((h for name, h in early.items() if parameq(param, name)), None)
            if handler is not None and not handler(value):
                self.printk(f"Malformed early option '{param}'", KERN_WARNING)
        # e820__memblock_setup and the first MiB
        for r in self.mem.ram:
            mb.memblock_add(r.start, r.size)
        mb.memblock_mark_kho_scratch(0, SZ_1M)
        if not mb.memblock_phys_alloc_range(REALMODE_TRAMPOLINE_SIZE, PAGE_SIZE, 0, SZ_1M):
            raise BootFailed("Kernel panic - not syncing: Real mode trampoline was not allocated")
        mb.memblock_reserve(0, SZ_1M)
        mb.memblock_clear_kho_scratch(0, SZ_1M)
        # init_mem_mapping, initmem_init (NUMA), sparse_init (memory map per node)
        self.early_alloc(boot.page_tables, PAGE_SIZE)
        for r in self.mem.ram:
            mb.memblock_set_node(r.start, r.size, mb.memory, r.nid)
        for nid in self.online_nodes():
            self.early_alloc(self.mem.node_size(nid) >> MEMMAP_SHIFT, PAGE_SIZE, nid)
        # start_kernel: ordinary boot options
        for param, value in args:
            if parameq(param, "reserve_mem"):
                self.reserve_mem.reserve_mem(value)
        for who, hook, exc in self._driver_failures:
            report_crash(self, who, hook, exc)
        for driver in self.drivers:
            self._driver_hook(driver, "early_init", partial(driver.early_init, args))
        # mm_core_init: KHO memory init, then memblock hands memory to the page allocator
        self.kho.kho_memory_init()
        mb.kho_scratch_only = False
        mb.memmap_init_reserved_pages()
        self._pages = PageAllocator(self.mem, mb)
        # initcalls, by level: early, core, fs, device (drivers), late (link order: kernel/, mm/)
        if self.luo is not None:
            self.luo.liveupdate_early_init()
        self.kho.core_initcalls()
        if self.kho.init_level == "fs":
            self.kho.kho_init()
        for driver in self.drivers:
            self._driver_hook(driver, "init", driver.init)
        if self.kho.init_level == "late":
            self.kho.kho_init()
        if self.luo is not None:
            self.luo.late_init()
        self.reserve_mem.reserve_mem_init()

    def _report_unknown_params(
        self, args: list[tuple[str, str | None]], early: Mapping[str, object]
    ) -> None:
        """init/main.c: unknown words go to init, logged once (spec §15.2)."""
        known = KNOWN_PARAMS | set(early) | set(self.release_params())
        plain = [p for p, v in args if v is None and p not in known and "." not in p]
        env = [
            f"{p}={v}" for p, v in args if v is not None and p not in known and "." not in p
        ]
        if plain or env:
            self.printk(
                "Unknown kernel command line parameters "
                f'"{" ".join(plain + env)}", will be passed to user space.',
                KERN_NOTICE,
            )

    def shutdown(self) -> None:
        """This kernel is gone (kexec or reboot): what it held for user space is dropped
        and descriptors of this boot are dead."""
        if self.luo is not None:
            self.luo.shutdown()

    def release_params(self) -> list[str]:
        """Boot parameters of optional subsystems this release has."""
        return ["liveupdate"] if self.release.liveupdate else []

    def _read_cmdline(self, boot_params: int) -> str:
        lo, hi = (
            struct.unpack("<I", self.mem.read(boot_params + BP_CMD_LINE_PTR, 4))[0],
            struct.unpack("<I", self.mem.read(boot_params + BP_EXT_CMD_LINE_PTR, 4))[0],
        )
        raw = self.mem.read(lo | (hi << 32), COMMAND_LINE_SIZE)
        return raw.split(b"\0", 1)[0].decode("latin-1")

    def _parse_setup_data(self, boot_params: int) -> tuple[int, int, int, int] | None:
        """Walk the setup_data chain; reserve each node; return the KHO node's payload."""
        found = None
        addr = struct.unpack("<Q", self.mem.read(boot_params + BP_SETUP_DATA, 8))[0]
        seen: set[int] = set()
        while addr and addr not in seen and len(seen) < SETUP_DATA_MAX_NODES:
            seen.add(addr)
            nxt, type_, length = struct.unpack("<QII", self.mem.read(addr, 16))
            self.memblock.memblock_reserve_kern(addr, 16 + length)
            if type_ == SETUP_KEXEC_KHO and length >= 32:
                found = struct.unpack("<QQQQ", self.mem.read(addr + 16, 32))
            addr = nxt
        return found

    # -- views -------------------------------------------------------------------------
    @property
    def handover(self) -> bool:
        return self.kho.handover
