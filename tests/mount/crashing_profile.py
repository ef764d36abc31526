"""A profile for ``kho-fs mount --profile``: the real v4 machine plus a participant whose
DUMP raises (loaded by the daemon, so it imports nothing from the tests)."""

from __future__ import annotations

from kho_fs.model.drivers import BUILTIN_DRIVERS, KhoDriver
from kho_fs.model.fdt import FdtSw
from kho_fs.model.machine import Machine
from kho_fs.tree.profile_v4 import V4Profile

CMDLINE = "kho=on reserve_mem=1M:4096:oops"


class CrashingDriver(KhoDriver):
    """A participant with a bug: its DUMP raises."""

    name = "crashing"

    def kho_dump(self, fdt: FdtSw) -> int:
        raise RuntimeError("participant bug injected by test_faults")


def crashing_profile(memory: int, nodes: int, cmdline: str | None) -> V4Profile:
    drivers = [*BUILTIN_DRIVERS.values(), CrashingDriver]
    return V4Profile(Machine.create(memory, nodes, cmdline or CMDLINE, drivers=drivers))
