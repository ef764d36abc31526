"""A profile for ``kho-fs mount --profile``: the real v4 machine plus plug-in drivers whose
names cannot be file names as they are (loaded by the daemon, so it imports nothing from
the tests).  Used by test_region_names.py."""

from __future__ import annotations

from kho_fs.model.drivers import BUILTIN_DRIVERS, DriverRegion, KhoDriver
from kho_fs.model.machine import Machine
from kho_fs.model.units import PAGE_SIZE
from kho_fs.tree.profile_v4 import V4Profile

CMDLINE = "kho=on"
#: Region names of AwkwardDriver: "" and the second "dup" can have no file.
REGION_NAMES = ["..", ".", "a", "a/b", "\xc3\xa9", "x\xffy", "%", "", "dup", "dup"]


class AwkwardDriver(KhoDriver):
    """One page of RAM per region, under names of every awkward class."""

    name = "my/drv"

    def __init__(self, kernel):
        super().__init__(kernel)
        self.base = 0

    def early_init(self, args):
        self.base = self.kernel.memblock.memblock_phys_alloc(
            len(REGION_NAMES) * PAGE_SIZE, PAGE_SIZE
        )

    def regions(self):
        return [
            DriverRegion(name, self.base + i * PAGE_SIZE, PAGE_SIZE)
            for i, name in enumerate(REGION_NAMES)
        ]


class BrokenDriver(KhoDriver):
    """A plug-in with a bug in regions(): its files are left out, the rest is served."""

    name = "broken"

    def regions(self):
        raise RuntimeError("regions() bug injected by test_region_names")


def awkward_profile(memory: int, nodes: int, cmdline: str | None) -> V4Profile:
    drivers = [*BUILTIN_DRIVERS.values(), AwkwardDriver, BrokenDriver]
    return V4Profile(Machine.create(memory, nodes, cmdline or CMDLINE, drivers=drivers))
