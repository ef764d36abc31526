"""The emulated machine: RAM that outlives kernels, and the kernel running on it now."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kho_fs.model.drivers import BUILTIN_DRIVERS, KhoDriver
from kho_fs.model.errors import KernelError
from kho_fs.model.kernel import BootInfo, Kernel
from kho_fs.model.physmem import PhysicalMemory
from kho_fs.model.releases import DEFAULT_RELEASE, RELEASES, Release, get_release
from kho_fs.model.reserve_mem import ReserveMemRegion
from kho_fs.model.units import SZ_1M, SZ_16M

COLD_KERNEL_BASE = SZ_16M  # LOAD_PHYSICAL_ADDR on x86-64
COLD_KERNEL_SIZE = 32 * SZ_1M  # in-memory size of the first kernel (model parameter)
DEFAULT_CMDLINE = "console=ttyS0 kho=on"


class Machine:
    """RAM and NUMA layout plus the current :class:`Kernel`.

    ``version`` increases whenever something a file tree shows may have appeared, gone
    or been replaced (activation, abort, kexec load, exec, reboot), or a file's size may
    have changed (every dmesg line), so views can refresh cheaply instead of caching copies
    of the model.
    """

    def __init__(
        self,
        mem: PhysicalMemory,
        cmdline: str,
        drivers: Sequence[Callable[[Kernel], KhoDriver]] | None = None,
        release: Release = RELEASES[DEFAULT_RELEASE],
    ) -> None:
        self.mem = mem
        self.cold_cmdline = cmdline
        self.cold_release = release  # what the firmware boots (the installed kernel)
        self.drivers = list(BUILTIN_DRIVERS.values()) if drivers is None else list(drivers)
        self.generation = 0  # kexecs since the last cold boot
        self.boots = 0
        self.version = 0
        self.kernel = self._cold_boot()

    @classmethod
    def create(
        cls,
        memory: int = 16 << 30,
        nodes: int = 1,
        cmdline: str = DEFAULT_CMDLINE,
        drivers: Sequence[Callable[[Kernel], KhoDriver]] | None = None,
        release: str = DEFAULT_RELEASE,
    ) -> Machine:
        """Build and cold-boot a machine; ValueError (a user-facing message) on bad input."""
        rel = get_release(release)
        if "\0" in cmdline:
            raise ValueError("the command line must not contain NUL bytes")
        if len(cmdline) >= 2048:
            raise ValueError("the command line must be shorter than 2048 bytes")
        if not all(ord(c) < 256 for c in cmdline):
            raise ValueError("the command line must consist of bytes (latin-1 characters)")
        return cls(PhysicalMemory(memory, nodes), cmdline, drivers, rel)

    # -- lifecycle -----------------------------------------------------------------------
    def _changed(self) -> None:
        self.version += 1

    def _start(self, boot: BootInfo, release: Release | None = None) -> Kernel:
        kernel = Kernel(
            self.mem,
            boot,
            self.generation,
            self.drivers,
            on_change=self._changed,
            release=release or self.cold_release,
        )
        self.boots += 1
        kernel.start_kernel()
        self._changed()
        return kernel

    def _cold_boot(self) -> Kernel:
        return self._start(
            BootInfo(image=(COLD_KERNEL_BASE, COLD_KERNEL_SIZE), cmdline=self.cold_cmdline)
        )

    def kexec_exec(self) -> Kernel:
        """``kexec -e``: copy the loaded segments into RAM and boot the next kernel.

        RAM keeps its contents; the new kernel finds its command line, and the KHO
        handover if the load carried one, in the boot parameters the load wrote.
        """
        image = self.kernel.kexec.kernel_kexec()
        self.kernel.kexec.machine_kexec(image)
        assert image.boot_params is not None and image.kernel is not None
        initrd = (image.initrd.mem, image.initrd.memsz) if image.initrd is not None else None
        boot = BootInfo(
            image=(image.kernel.mem, image.kernel.memsz),
            initrd=initrd,
            boot_params=image.boot_params.mem,
            notes=(image.release.note,) if image.release and image.release.note else (),
        )
        self.generation += 1
        release = image.release.release if image.release else self.kernel.release
        self.kernel.shutdown()
        self.kernel = self._start(boot, release)
        return self.kernel

    def reboot(self, cmdline: str | None = None) -> Kernel:
        """Cold reboot: RAM contents are lost; the firmware's command line is used again
        (or ``cmdline``, which then becomes the firmware's)."""
        if cmdline is not None:
            if "\0" in cmdline or len(cmdline) >= 2048:
                raise KernelError(22, "bad command line")
            self.cold_cmdline = cmdline
        self.kernel.shutdown()
        self.mem.clear()
        self.generation = 0
        self.kernel = self._cold_boot()
        return self.kernel

    def close(self) -> None:
        self.mem.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- views used by the file tree and the CLI -------------------------------------------
    def region(self, name: str) -> ReserveMemRegion | None:
        return self.kernel.reserve_mem.reserve_mem_find_by_name(name)

    def status(self) -> str:
        """A human summary for ``kho-fs status``."""
        k = self.kernel
        lines = [
            f"release:     {k.release.name} ({k.release.uts_release})",
            f"generation:  {self.generation} kexec(s) since cold boot ({self.boots} boots in all)",
            f"cmdline:     {k.cmdline}",
            f"state:       {'PANICKED: ' + k.panic if k.panic else 'running'}",
        ]
        for nid in range(self.mem.nr_nodes):
            lines.append(f"node {nid}:      {self.mem.node_size(nid) >> 20} MiB RAM")
        kho = k.kho
        lines += kho.status_lines()
        if k.luo is not None:
            lines += k.luo.status_lines()
        lines.append(f"handover:    {_handover_status(k)}")
        first = kho.scratch_names
        for i, area in enumerate(kho.scratch):
            label = first[i] if i < len(first) else f"node {i - len(first)}"
            lines.append(f"scratch:     {label:7s} {area.addr:#x} + {area.size:#x}")
        for r in k.reserve_mem.table:
            lines.append(f"reserve_mem: {r.name:15s} {r.start:#x} + {r.size:#x}")
        loaded = k.kexec.kexec_image
        if loaded is None:
            lines.append("kexec:       nothing loaded")
        else:
            target = loaded.release.release if loaded.release else k.release
            lines.append(f"kexec:       loaded{' with KHO data' if loaded.kho_scratch else ''}")
            lines.append(f"next kernel: {target.name} ({target.uts_release})")
        return "\n".join(lines) + "\n"


def _handover_status(k: Kernel) -> str:
    """Whether this boot received a handover, and whether ``dt_fw`` shows it: a v4 kernel
    creates ``/sys/firmware/kho`` only with KHO enabled (spec checklist 34). Releases
    without ``dt_fw`` (mainline's debugfs interface) just say ``yes``."""
    if not k.handover:
        return "no"
    if getattr(k.kho, "dt_fw", None) is not None:
        return "yes, dt_fw present"
    if hasattr(k.kho, "dt_fw"):
        return "yes (KHO disabled: no /sys/firmware/kho)"
    return "yes"
