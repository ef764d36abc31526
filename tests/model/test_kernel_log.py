"""The kernel log: levels, the console and raw forms, and the levels of the v4 messages."""

from __future__ import annotations

import pytest

from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING, KernelLog
from kho_fs.model.errors import KernelError
from kho_fs.model.machine import Machine


def clock(times: list[float]):
    return lambda: times.pop(0)


def test_console_and_raw_forms() -> None:
    log = KernelLog(clock([100.0, 100.0, 101.5, 113.25]))
    log.printk("first")
    log.printk("KHO: failed to serialize state: -3", KERN_ERR)
    log.printk("two\nlines", KERN_WARNING)
    assert log.render() == (
        "[    0.000000] first\n"
        "[    1.500000] KHO: failed to serialize state: -3\n"
        "[   13.250000] two\n"
        "[   13.250000] lines\n"
    )
    assert log.render_raw() == (
        "<6>[    0.000000] first\n"
        "<3>[    1.500000] KHO: failed to serialize state: -3\n"
        "<4>[   13.250000] two\n"
        "<4>[   13.250000] lines\n"
    )


@pytest.mark.parametrize("level", [-1, 8, 11])
def test_levels_outside_the_console_levels_are_model_bugs(level: int) -> None:
    with pytest.raises(ValueError):
        KernelLog().printk("x", level)


def test_boot_messages_carry_the_kernels_levels() -> None:
    with Machine.create(4 << 30, 1, "kho=maybe kho=on kho_scratch=512M,256M") as m:
        k = m.kernel
        k.kho.dt_max_store(b"110")
        with pytest.raises(KernelError):
            k.kho.active_store(b"1")
        assert [(r.level, r.text.split(" (")[0]) for r in k.log.records] == [
            (KERN_NOTICE, "Linux version 6.14.0-rc1-kho-v4"),
            (KERN_INFO, f"Command line: {k.cmdline}"),
            (KERN_WARNING, "Malformed early option 'kho'"),
            (KERN_NOTICE, "KHO: scratch areas: global: 512MB pernode: 256MB"),
            (KERN_ERR, "KHO: failed to serialize state: -3"),
        ]
