"""Whole KHO cycles on the machine model: preserve bytes across kexec, and the ways to lose them."""

from __future__ import annotations

import hashlib
import random

import pytest
from kho_model_helpers import (
    FOUND_LINE,
    PLAIN_KERNEL,
    SEED_CMDLINE,
    driver,
    flags_covering,
    inside_any,
    is_reserved,
    kho_cycle,
)

from kho_fs.model.drivers import KhoExampleDriver

SZ_64M = 64 << 20
REVIVED = "Revived memory reservation 'trace' from KHO"


def fill(m, start: int, size: int, seed: int) -> str:
    data = random.Random(seed).randbytes(size)
    m.mem.write(start, data)
    return hashlib.sha256(data).hexdigest()


def digest(m, start: int, size: int) -> str:
    return hashlib.sha256(m.mem.read(start, size)).hexdigest()


def test_seed_flow(seed):
    k = seed.kernel
    assert k.panic is None and k.kho.sysfs
    region = seed.region("trace")
    assert region is not None and region.size == SZ_64M
    want = fill(seed, region.start, region.size, 1)
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, b"initrd-bytes" * 100, k.cmdline)
    assert k.kexec.kexec_loaded_show() == "1\n"
    k2 = seed.kexec_exec()
    assert seed.generation == 1 and k2 is seed.kernel and k2 is not k
    assert k2.panic is None
    assert FOUND_LINE in k2.log.lines()
    assert REVIVED in k2.log.lines()
    after = seed.region("trace")
    assert (after.start, after.size) == (region.start, region.size)
    assert digest(seed, after.start, after.size) == want
    assert k2.kho.dt_fw is not None and k2.kho.active_show() == "0\n"
    # the preserved range is a plain (NONE) reservation in the new kernel
    assert flags_covering(k2.memblock.reserved, after.start, after.size) == {"NONE"}


def test_kexec_load_instead_of_file_load(seed):
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_load(PLAIN_KERNEL, None, k.cmdline)
    k2 = seed.kexec_exec()
    assert k2.panic is None
    assert k2.handover is False and k2.kho.dt_fw is None
    assert FOUND_LINE not in k2.log.lines()
    assert not any(line.startswith("Revived") for line in k2.log.lines())
    # a boot without handover: KHO starts over with freshly reserved scratch
    assert k2.kho.sysfs and k2.kho.scratch_len_show() == "0x20000000\n0x10000000\n"
    assert not any(r.flags & 0x40 for r in k2.memblock.memory)


def test_activate_after_load_carries_nothing(seed):
    k = seed.kernel
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    k.kho.active_store(b"1")
    assert k.kexec.kexec_image.kho_fdt is None and k.kexec.kexec_image.kho_scratch is None
    k2 = seed.kexec_exec()
    assert k2.handover is False and k2.kho.dt_fw is None
    assert not any(line.startswith("Revived") for line in k2.log.lines())


def test_wrong_size_on_next_cmdline(seed):
    old = seed.region("trace")
    k2 = kho_cycle(seed, "reserve_mem=32M:4096:trace kho=on kho_scratch=512M,256M")
    lines = k2.log.lines()
    assert "KHO reserved_mem 'trace' has wrong size (0x4000000 != 0x2000000)" in lines
    assert REVIVED not in lines
    new = seed.region("trace")
    assert new.size == 32 << 20
    assert inside_any(k2.kho.scratch, new.start, new.size)
    assert not (old.start < new.start + new.size and new.start < old.start + old.size)
    assert is_reserved(k2, old.start, old.size)


def test_cold_reboot_loses_bytes(seed):
    region = seed.region("trace")
    fill(seed, region.start, region.size, 2)
    k = seed.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    k2 = seed.reboot()
    assert seed.generation == 0
    assert k2.handover is False and k2.kho.dt_fw is None
    assert k2.kexec.kexec_loaded_show() == "0\n"
    assert not any(line.startswith("Revived") for line in k2.log.lines())
    assert seed.mem.read(region.start, region.size) == bytes(region.size)
    new = seed.region("trace")
    assert seed.mem.read(new.start, new.size) == bytes(new.size)


def test_cold_reboot_with_new_cmdline(seed):
    k2 = seed.reboot("kho=off")
    assert k2.cmdline == "kho=off" and not k2.kho.sysfs and seed.region("trace") is None


def test_two_numa_nodes(machine):
    m = machine("reserve_mem=64M:4096:trace kho=on", nodes=2)
    k = m.kernel
    assert len(k.kho.scratch) == 3
    region = m.region("trace")
    want = fill(m, region.start, region.size, 3)
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
    for seg in k.kexec.kexec_image.segments:
        assert inside_any(k.kho.scratch, seg.mem, seg.memsz)
    k2 = m.kexec_exec()
    assert k2.panic is None and REVIVED in k2.log.lines()
    assert m.region("trace").start == region.start
    assert digest(m, region.start, region.size) == want
    assert k2.kho.scratch == k.kho.scratch


def test_three_kexecs_keep_bytes(seed):
    region = seed.region("trace")
    want = fill(seed, region.start, 1 << 20, 4)
    table = list(seed.kernel.kho.scratch)
    for gen in (1, 2, 3):
        k = kho_cycle(seed)
        assert seed.generation == gen
        assert k.panic is None and REVIVED in k.log.lines()
        assert seed.region("trace").start == region.start
        assert digest(seed, region.start, 1 << 20) == want
        assert k.kho.scratch == table
        assert k.log.lines()[0].endswith(f"#{gen + 1} SMP PREEMPT_DYNAMIC")


def test_dt_fw_of_each_generation_is_previous_fdt(seed):
    fdts = []
    for _ in range(2):
        k = seed.kernel
        k.kho.active_store(b"1")
        fdts.append(k.kho.fdt)
        k.kexec.kexec_file_load(PLAIN_KERNEL, None, k.cmdline)
        k2 = seed.kexec_exec()
        assert k2.kho.dt_fw == fdts[-1]
    # dt_fw is never removed: activation and abort in the new kernel leave it alone
    k2.kho.active_store(b"1")
    k2.kho.active_store(b"0")
    assert k2.kho.dt_fw == fdts[-1]


def test_kho_example_driver_round_trip(machine):
    m = machine("kho=on kho_example.size=8M")
    k = m.kernel
    drv = driver(k, KhoExampleDriver)
    assert drv.buffer is not None and drv.buffer.size == 8 << 20
    start = drv.buffer.start
    assert not inside_any(k.kho.scratch, start, drv.buffer.size)
    want = fill(m, start, drv.buffer.size, 5)
    k2 = kho_cycle(m)
    drv2 = driver(k2, KhoExampleDriver)
    assert drv2.buffer is not None
    assert (drv2.buffer.start, drv2.buffer.size) == (start, 8 << 20)
    assert (
        f"kho_example: buffer restored from KHO at 0x{start:x} (0x800000 bytes)" in k2.log.lines()
    )
    assert digest(m, start, 8 << 20) == want
    assert flags_covering(k2.memblock.reserved, start, 8 << 20) == {"NONE"}


def test_kho_example_driver_size_change_allocates_new(machine):
    m = machine("kho=on kho_example.size=8M")
    start = driver(m.kernel, KhoExampleDriver).buffer.start
    k2 = kho_cycle(m, "kho=on kho_example.size=4M")
    drv2 = driver(k2, KhoExampleDriver)
    assert "kho_example: preserved buffer does not match, allocating a new one" in k2.log.lines()
    assert drv2.buffer.start != start
    assert inside_any(k2.kho.scratch, drv2.buffer.start, drv2.buffer.size)


def test_4tib_machine_cycle(machine):
    m = machine("reserve_mem=64M:4096:trace kho=on", memory=4 << 40)
    k = m.kernel
    assert k.panic is None and k.kho.sysfs
    region = m.region("trace")
    assert region.start > 3 << 40  # top-down: near the top of the 4 TiB (+2 GiB hole) map
    want = fill(m, region.start, 1 << 20, 6)
    k2 = kho_cycle(m)
    assert k2.panic is None
    assert REVIVED in k2.log.lines()
    assert m.region("trace").start == region.start
    assert digest(m, region.start, 1 << 20) == want


def test_4tib_with_small_explicit_scratch_stops_boot(machine):
    """Spec 6.4 Decision: a 4 TiB node needs a 64 GiB memory map, which cannot come out of
    768 MiB of scratch; the handover boot stops with the kho-fs line."""
    m = machine(SEED_CMDLINE, memory=4 << 40)
    k2 = kho_cycle(m)
    assert k2.panic == "kho-fs: early allocation failed in scratch-only mode"
    assert "kho-fs: early allocation failed in scratch-only mode" in k2.log.lines()


@pytest.mark.parametrize("nodes", [1, 3])
def test_new_region_after_handover_lands_in_scratch(machine, nodes):
    m = machine("kho=on reserve_mem=64M:4096:trace", nodes=nodes)
    trace = m.region("trace").start
    k2 = kho_cycle(m, "kho=on reserve_mem=64M:4096:trace reserve_mem=8M:4096:fresh")
    fresh = m.region("fresh")
    assert fresh is not None and inside_any(k2.kho.scratch, fresh.start, fresh.size)
    assert m.region("trace").start == trace
    assert REVIVED in k2.log.lines()
