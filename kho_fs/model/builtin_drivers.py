"""The KHO participants built into kho-fs, by the name ``--driver`` takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kho_fs.model.drivers import KhoExampleDriver
from kho_fs.model.test_kho import TestKhoDriver

if TYPE_CHECKING:
    from kho_fs.model.drivers import KhoDriver
    from kho_fs.model.kernel import Kernel

DRIVERS: dict[str, Callable[[Kernel], KhoDriver]] = {
    KhoExampleDriver.name: KhoExampleDriver,
    TestKhoDriver.name: TestKhoDriver,
}
