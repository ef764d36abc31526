"""Fixtures and helpers for the machine-model tests (spec ``shared/spec/kho-v4.md``).

Machines use a sparse mmap as large as their physical address space, so every machine a
test creates goes through the ``machine`` factory fixture, which closes it at teardown.
Test modules import the helpers as ``from kho_model_helpers import ...`` (pytest puts this
directory on ``sys.path``); ``conftest.py`` re-exports the fixtures.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kho_fs.model.drivers import KhoDriver
from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import FdtSw
from kho_fs.model.kernel import Kernel
from kho_fs.model.kho import KEXEC_KHO_ABORT, KEXEC_KHO_DUMP
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import memblock_debug_show
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE

# The spec's reference FDT blobs (kho-v4.md §5.6), copied from shared/spec/vectors.
VECTORS = Path(__file__).resolve().parents[1] / "data"
SEED_CMDLINE = "reserve_mem=64M:4096:trace kho=on kho_scratch=512M,256M"
FOUND_LINE = "KHO: setup: Found kexec handover data. Will skip init for some devices"
SZ_1M = 1 << 20
SZ_2M = 2 << 20
SZ_16M = 16 << 20
SZ_64K = 64 << 10
PAGE = 4096

# A plain (non-bzImage) kernel file: loaded whole, memory size = file size rounded to 4 KiB.
PLAIN_KERNEL = b"\x7fKHO-test-kernel" * 512  # 8 KiB


def round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def round_down(x: int, a: int) -> int:
    return x // a * a


def bzimage(
    init_size: int, *, version: int = 0x020F, setup_sects: int = 4, body: int = 64 << 10
) -> bytes:
    """A minimal x86 bzImage: ``HdrS`` at 0x202, protocol version at 0x206, init_size at 0x260."""
    kern16 = (setup_sects + 1) * 512
    img = bytearray(kern16 + body)
    img[0x1F1] = setup_sects
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    struct.pack_into("<I", img, 0x260, init_size)
    for i in range(kern16, len(img), 4096):  # recognisable body bytes
        img[i : i + 8] = struct.pack("<Q", i)
    return bytes(img)


# -- machines -------------------------------------------------------------------------------


@pytest.fixture
def machine() -> Iterator[Callable[..., Machine]]:
    """Factory ``machine(cmdline=..., memory=..., nodes=..., drivers=...)``; closes all."""
    made: list[Machine] = []

    def make(cmdline: str = "kho=on", **kw: Any) -> Machine:
        m = Machine.create(cmdline=cmdline, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def seed(machine: Callable[..., Machine]) -> Machine:
    """The seed machine: 16 GiB, one node, :data:`SEED_CMDLINE`."""
    return machine(SEED_CMDLINE)


def expect_errno(errno_: int, fn: Callable[..., Any], *args: Any, **kw: Any) -> KernelError:
    with pytest.raises(KernelError) as info:
        fn(*args, **kw)
    assert info.value.errno == errno_, (
        f"expected errno {errno_}, got {info.value.errno} ({info.value})"
    )
    return info.value


def kho_cycle(
    m: Machine, next_cmdline: str | None = None, *, initrd: bytes | None = None
) -> Kernel:
    """Activate KHO, ``kexec_file_load`` the plain kernel, ``kexec -e``; returns the new kernel."""
    k = m.kernel
    if not k.kho.active:
        k.kho.active_store(b"1")
    k.kexec.kexec_file_load(
        PLAIN_KERNEL, initrd, k.cmdline if next_cmdline is None else next_cmdline
    )
    return m.kexec_exec()


# -- debugfs memblock text ----------------------------------------------------------------------

_DEBUGFS_LINE = re.compile(
    r"^ {0,3}(\d+): 0x([0-9a-f]{16})\.\.0x([0-9a-f]{16}) ( {0,3}\d+|   x) (\S+)$"
)


@dataclass(frozen=True)
class DebugLine:
    index: int
    base: int
    last: int  # inclusive
    node: int | None
    flag: str

    def covers(self, base: int, size: int) -> bool:
        return self.base <= base and base + size - 1 <= self.last


def debugfs_lines(type_: Any) -> list[DebugLine]:
    """Parse ``/sys/kernel/debug/memblock/<type>`` text (spec 3.9) as produced by the model."""
    out = []
    for raw in memblock_debug_show(type_).splitlines():
        m = _DEBUGFS_LINE.match(raw)
        assert m, f"malformed debugfs line {raw!r}"
        node = None if m.group(4).strip() == "x" else int(m.group(4))
        out.append(
            DebugLine(int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16), node, m.group(5))
        )
    return out


def flags_covering(type_: Any, base: int, size: int) -> set[str]:
    """The debugfs flag names of every line overlapping ``[base, base + size)``; the range
    must be covered without gaps (AssertionError otherwise)."""
    lines = [ln for ln in debugfs_lines(type_) if ln.base < base + size and base <= ln.last]
    assert lines, f"no line covers {base:#x}+{size:#x}"
    pos = base
    for ln in lines:
        assert ln.base <= pos, f"gap at {pos:#x} in coverage of {base:#x}+{size:#x}"
        pos = ln.last + 1
    assert pos >= base + size, f"coverage of {base:#x}+{size:#x} stops at {pos:#x}"
    return {ln.flag for ln in lines}


def is_reserved(k: Kernel, base: int, size: int) -> bool:
    return any(r.base < base + size and base < r.end for r in k.memblock.reserved)


def inside_any(areas: list[Any], base: int, size: int) -> bool:
    return any(a.addr <= base and base + size <= a.addr + a.size for a in areas)


# -- test participants ----------------------------------------------------------------------


class Recorder(KhoDriver):
    """A participant that records every event it gets and otherwise succeeds."""

    name = "recorder"

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.events: list[int] = []

    def notifier_call(self, event: int, data: Any) -> int:
        self.events.append(event)
        if event == KEXEC_KHO_DUMP:
            assert isinstance(data, FdtSw)
        if event == KEXEC_KHO_ABORT:
            assert data is None
        return NOTIFY_DONE


def mem_writer(node: str, payload: bytes) -> type[KhoDriver]:
    """A participant class writing ``/<node>`` with a ``mem`` property of raw ``payload``
    (``node == ""`` writes the ``mem`` property into the root node itself)."""

    class MemWriter(KhoDriver):
        name = f"mem-writer-{node or 'root'}"

        def kho_dump(self, fdt: FdtSw) -> int:
            if not node:
                return NOTIFY_BAD if fdt.property("mem", payload) else NOTIFY_DONE
            err = fdt.begin_node(node)
            err |= fdt.property_string("compatible", "kho-fs-test-v1")
            err |= fdt.property("mem", payload)
            err |= fdt.end_node()
            return NOTIFY_BAD if err else NOTIFY_DONE

    return MemWriter


def driver(k: Kernel, cls: type) -> Any:
    """The instance of driver class ``cls`` in kernel ``k``."""
    found = [d for d in k.drivers if isinstance(d, cls)]
    assert len(found) == 1
    return found[0]


def kmem(*entries: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<QQ", a, s) for a, s in entries)
