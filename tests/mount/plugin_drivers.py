"""Plug-in drivers for the tests of ``--driver SPEC`` (loaded by the daemon as
``tests/mount/plugin_drivers.py:NAME``, so it imports nothing from the tests).

``FileDriver`` is a working driver; the others each raise in one hook, as a buggy
driver would.
"""

from __future__ import annotations

from typing import Any

from kho_fs.drivers import (
    KEXEC_KHO_FINALIZE,
    NOTIFY_DONE,
    PAGE_SIZE,
    DriverRegion,
    FdtSw,
    KhoDriver,
)
from kho_fs.model.drivers import KhoExampleDriver


class FileDriver(KhoExampleDriver):
    """The example driver under another name: ``file_driver.size=SIZE``."""

    name = "file_driver"
    compatible = "file-driver-v1"
    param = "file_driver.size"


class _Buggy(KhoDriver):
    kho_kinds = frozenset({"v4", "mainline"})


class EarlyInitBug(_Buggy):
    name = "early_bug"

    def early_init(self, args: list[tuple[str, str | None]]) -> None:
        raise RuntimeError("early_init bug")


class InitBug(_Buggy):
    name = "init_bug"

    def init(self) -> None:
        super().init()  # registered on the notifier chain, then it fails
        raise ValueError("init bug")

    def kho_dump(self, fdt: FdtSw) -> int:
        raise AssertionError("a driver whose init failed is not called")


class RegionsBug(_Buggy):
    name = "regions_bug"

    def regions(self) -> list[DriverRegion]:
        raise KeyError("regions bug")


class BadRegion(_Buggy):
    """One region outside RAM (no file), one good page."""

    name = "bad_region"

    def early_init(self, args: list[tuple[str, str | None]]) -> None:
        self.page = self.kernel.memblock.memblock_phys_alloc(PAGE_SIZE, PAGE_SIZE)

    def regions(self) -> list[DriverRegion]:
        return [
            DriverRegion("outside", 1 << 60, PAGE_SIZE),
            DriverRegion("page", self.page, PAGE_SIZE),
        ]


class DumpBug(_Buggy):
    """v4: the DUMP notifier raises."""

    name = "dump_bug"
    kho_kinds = frozenset({"v4"})

    def kho_dump(self, fdt: FdtSw) -> int:
        raise RuntimeError("dump bug")


class FinalizeBug(_Buggy):
    """6.16–6.18: the FINALIZE notifier raises."""

    name = "finalize_bug"
    kho_kinds = frozenset({"mainline"})

    def notifier_call(self, event: int, data: Any) -> int:
        if event == KEXEC_KHO_FINALIZE:
            raise RuntimeError("finalize bug")
        return NOTIFY_DONE


def probe_bug(kernel: Any) -> KhoDriver:
    """A factory that raises (the driver is not built in)."""
    raise OSError("probe bug")


def not_a_driver(kernel: Any) -> object:
    """A factory that returns something else."""
    return 42


class NotADriver:
    """Not a KhoDriver subclass: a load error."""
