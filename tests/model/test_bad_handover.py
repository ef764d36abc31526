"""Bad input across a mainline kexec (issue 9): corrupt or foreign handovers.

Between ``kexec_file_load`` and ``kexec -e`` the root FDT page, the preserved-memory map's
chunk list or the scratch table is overwritten in RAM through ``machine.mem.write`` (what a
write to ``dev/mem`` does). The next kernel must refuse a handover it cannot use with its
era's messages (spec ``kho-mainline.md`` §4.3) and then boot exactly as a kernel without a
handover does (scratch reserved afresh, regions allocated afresh, no ``in/``); what it
accepts (a readable root whose map is garbage) it must survive. Nothing may raise out of
``kexec_exec``.

Expected values come from the spec and from libfdt itself (``fdt_check_header``,
``fdt_node_check_compatible`` on the corrupted bytes), never from the model.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import libfdt
import pytest

from kho_fs.model.kexec import Kimage
from kho_fs.model.machine import Machine
from kho_fs.model.test_kho import TestKhoDriver

MAINLINE = ["6.16", "6.17", "6.18", "6.19", "7.0"]
TOGGLE = ["6.16", "6.17", "6.18"]  # eras that build the root at finalize (spec §2.4)
CMDLINE = (
    "console=ttyS0 kho=on kho_scratch=16M,64M,32M reserve_mem=1M:4096:oops test_kho.max_mem=64K"
)
KERNEL = b"\x90" * 8192  # not a bzImage: the same kernel again (spec §15.3 Decision)
PAGE = 4096
V4_FDT = (
    Path(__file__).resolve().parents[1] / "data" / "v4-oops-16M-at-0x23fe00000.dtb"
).read_bytes()
PAYLOAD = b"bytes that must not come back on a refused handover"
K = "kho"


def found_line(release: str) -> str:
    suffix = " Will skip init for some devices" if release in TOGGLE else ""
    return f"KHO: found kexec handover data.{suffix}"


def setup_lines(log: list[str]) -> list[str]:
    """Populate's lines and the memory-init lines of spec §4.3/§4.4."""
    prefixes = ("KHO: setup:", "KHO: found kexec", "KHO: disabling", "KHO: failed to get")
    return [line for line in log if line.startswith(prefixes)]


def loaded(release: str) -> tuple[Machine, Kimage]:
    """A finalized machine with a region holding ``PAYLOAD``, the same kernel loaded."""
    m = Machine.create(memory=2 << 30, cmdline=CMDLINE, release=release, drivers=[TestKhoDriver])
    k = m.kernel
    region = m.region("oops")
    assert region is not None
    m.mem.write(region.start, PAYLOAD)
    k.kho.finalize_store(1)
    k.kexec.kexec_file_load(KERNEL, None, CMDLINE)
    image = k.kexec.kexec_image
    assert image is not None and image.kho_fdt_phys == k.kho.fdt_page
    return m, image


def root_page(m: Machine, image: Kimage) -> bytearray:
    return bytearray(m.mem.read(image.kho_fdt_phys, PAGE))


def patch_root(m: Machine, image: Kimage, edit: Callable[[libfdt.Fdt], object]) -> bytes:
    """Edit the root FDT with libfdt and write it back in place; return the new bytes."""
    fdt = libfdt.Fdt(root_page(m, image))
    fdt.resize(PAGE)
    edit(fdt)
    fdt.pack()
    blob = bytes(fdt.as_bytearray())
    m.mem.write(image.kho_fdt_phys, blob[:PAGE])
    return blob


def cold_reference(release: str) -> Machine:
    return Machine.create(memory=2 << 30, cmdline=CMDLINE, release=release, drivers=[TestKhoDriver])


def assert_boots_as_without_handover(m: Machine, release: str) -> None:
    """Spec §4.3 step 9: the handover is dropped and the kernel boots on its own."""
    k = m.kernel
    assert k.panic is None
    assert not k.handover and not k.kho.handover
    assert found_line(release) not in k.log.lines()
    assert not any(line.startswith("Revived memory reservation") for line in k.log.lines())
    kho = k.kho
    assert kho.debugfs and kho.in_fdt is None and kho.in_sub_fdts == []
    cold = cold_reference(release).kernel.kho
    # scratch reserved afresh with the command line's sizes (spec §3.1, §3.2)
    assert kho.scratch_len_show() == cold.scratch_len_show() == "0x1000000\n0x4000000\n0x2000000\n"
    assert not any(r.flags & 0x40 for r in k.memblock.memory)  # no KHO_SCRATCH: no handover
    region = m.region("oops")
    assert region is not None  # allocated afresh (its bytes are whatever RAM held)
    # 6.19+: test_kho saves again at init; older eras register for the next finalize
    if release in TOGGLE:
        assert kho.out_sub_fdts == []
    else:
        assert sorted(b.name for b in kho.out_sub_fdts) == ["kho_test", "memblock"]
    # and a clean handover works again from here (spec §11)
    kho.finalize_store(1)
    k.kexec.kexec_file_load(KERNEL, None, CMDLINE)
    m.kexec_exec()
    assert found_line(release) in m.kernel.log.lines()
    assert "Revived memory reservation 'oops' from KHO" in m.kernel.log.lines()
    assert "test_kho: KHO restore succeeded" in m.kernel.log.lines()


# -- the root FDT page: refused (spec §4.3 steps 2 and 3) ---

ROOT_CORRUPTIONS: dict[str, Callable[[bytearray], None]] = {
    "magic": lambda page: page.__setitem__(slice(0, 4), b"\0\0\0\0"),
    "zeroed page": lambda page: page.__setitem__(slice(0, PAGE), bytes(PAGE)),
    "random bytes": lambda page: page.__setitem__(slice(0, PAGE), random.Random(9).randbytes(PAGE)),
    "version 1": lambda page: page.__setitem__(slice(20, 24), struct.pack(">I", 1)),
    "last compatible version 18": lambda page: page.__setitem__(
        slice(24, 28), struct.pack(">I", 18)
    ),
    "structure offset past the end": lambda page: page.__setitem__(
        slice(8, 12), struct.pack(">I", 0xFFFF0)
    ),
}


@pytest.mark.parametrize("release", MAINLINE)
@pytest.mark.parametrize("how", list(ROOT_CORRUPTIONS))
def test_invalid_root_fdt_is_refused(release: str, how: str) -> None:
    m, image = loaded(release)
    page = root_page(m, image)
    ROOT_CORRUPTIONS[how](page)
    if how == "random bytes":
        page[0:4] = b"\x12\x34\x56\x78"  # never the magic by chance
    m.mem.write(image.kho_fdt_phys, bytes(page))
    err = libfdt.fdt_check_header(page)
    assert err < 0, "the corruption must make libfdt reject the header"
    m.kexec_exec()  # must not raise
    addr = f"{image.kho_fdt_phys:#x}"
    assert setup_lines(m.kernel.log.lines()) == [
        f"KHO: setup: handover FDT ({addr}) is invalid: {err}",
        "KHO: disabling KHO revival: -22",
    ]
    assert_boots_as_without_handover(m, release)


@pytest.mark.parametrize("release", MAINLINE)
def test_root_fdt_larger_than_its_page_is_refused(release: str) -> None:
    """fdt_size is one page (spec §4.2); a header claiming more is not read past it
    (kho-fs decision: -FDT_ERR_TRUNCATED, the error libfdt gives a short buffer)."""
    m, image = loaded(release)
    page = root_page(m, image)
    page[4:8] = struct.pack(">I", 2 * PAGE)
    m.mem.write(image.kho_fdt_phys, bytes(page))
    m.kexec_exec()
    assert setup_lines(m.kernel.log.lines()) == [
        f"KHO: setup: handover FDT ({image.kho_fdt_phys:#x}) is invalid: {-libfdt.TRUNCATED}",
        "KHO: disabling KHO revival: -22",
    ]
    assert_boots_as_without_handover(m, release)


INCOMPATIBLE: dict[str, Callable[[libfdt.Fdt], object]] = {
    "kho-v2": lambda fdt: fdt.setprop_str(0, "compatible", "kho-v2"),
    "kho-v1 prefix": lambda fdt: fdt.setprop_str(0, "compatible", "kho-v10"),
    "no compatible": lambda fdt: fdt.delprop(0, "compatible"),
    "suffix": lambda fdt: fdt.setprop(0, "compatible", b"not-kho-v1\0"),
    "empty": lambda fdt: fdt.setprop(0, "compatible", b""),
}


@pytest.mark.parametrize("release", MAINLINE)
@pytest.mark.parametrize("how", list(INCOMPATIBLE))
def test_incompatible_root_is_refused(release: str, how: str) -> None:
    m, image = loaded(release)
    blob = patch_root(m, image, INCOMPATIBLE[how])
    err = libfdt.fdt_node_check_compatible(bytearray(blob), 0, "kho-v1")
    assert err != 0
    m.kexec_exec()
    assert setup_lines(m.kernel.log.lines()) == [
        f"KHO: setup: handover FDT ({image.kho_fdt_phys:#x}) is incompatible with 'kho-v1': {err}",
        "KHO: disabling KHO revival: -22",
    ]
    assert_boots_as_without_handover(m, release)


@pytest.mark.parametrize("release", MAINLINE)
def test_compatible_list_containing_kho_v1_is_accepted(release: str) -> None:
    """The check is "the list contains the era's string" (spec §4.3 step 3)."""
    m, image = loaded(release)
    patch_root(m, image, lambda fdt: fdt.setprop(0, "compatible", b"vendor,kho\0kho-v1\0"))
    m.kexec_exec()
    lines = m.kernel.log.lines()
    assert setup_lines(lines) == [found_line(release)]
    assert "Revived memory reservation 'oops' from KHO" in lines
    region = m.region("oops")
    assert region is not None and m.mem.read(region.start, len(PAYLOAD)) == PAYLOAD


# -- the memory map property (spec §4.3 step 4, §4.4 step 3) ---


@pytest.mark.parametrize("release", MAINLINE)
@pytest.mark.parametrize("how", ["zero", "missing", "4 bytes"])
def test_bad_memory_map_property(release: str, how: str) -> None:
    m, image = loaded(release)
    edits: dict[str, Callable[[libfdt.Fdt], object]] = {
        "zero": lambda fdt: fdt.setprop(0, "preserved-memory-map", bytes(8)),
        "missing": lambda fdt: fdt.delprop(0, "preserved-memory-map"),
        "4 bytes": lambda fdt: fdt.setprop(0, "preserved-memory-map", bytes(4)),
    }
    patch_root(m, image, edits[how])
    m.kexec_exec()
    k = m.kernel
    lines = setup_lines(k.log.lines())
    bitmaps = ["KHO: failed to get preserved memory bitmaps"] if how != "zero" else []
    if release in TOGGLE:
        # accepted (only the header and compatible are checked), nothing preserved
        assert lines == [found_line(release), *bitmaps]
        assert not any(r.flags & 0x10 for r in k.memblock.reserved)  # no RSRV_NOINIT
        assert k.kho.in_fdt is not None
    else:
        assert lines == [*bitmaps, "KHO: disabling KHO revival: -2"]
        assert_boots_as_without_handover(m, release)


# -- a foreign handover: the v4 series' FDT (spec §13) ---


@pytest.mark.parametrize("release", MAINLINE)
def test_v4_fdt_is_foreign(release: str) -> None:
    """A v4 root is ``kho-v1`` too: 6.16–6.18 accept it and find no map and no ``memblock``;
    6.19+ refuse it for the missing map (spec §13)."""
    m, image = loaded(release)
    m.mem.write(image.kho_fdt_phys, V4_FDT + bytes(PAGE - len(V4_FDT)))
    m.kexec_exec()
    k = m.kernel
    lines = k.log.lines()
    if release in TOGGLE:
        assert setup_lines(lines) == [
            found_line(release),
            "KHO: failed to get preserved memory bitmaps",
        ]
        assert not any(line.startswith(("Revived", "FDT 'memblock'")) for line in lines)
        assert k.kho.in_fdt is not None and k.kho.in_fdt.size == len(V4_FDT)
        assert k.kho.in_sub_fdts == []  # v4 children have no 8-byte `fdt` property
        assert k.panic is None
    else:
        assert setup_lines(lines) == [
            "KHO: failed to get preserved memory bitmaps",
            "KHO: disabling KHO revival: -2",
        ]
        assert_boots_as_without_handover(m, release)


# -- the chunk list: accepted, garbage survived (spec §6.2) ---


def first_chunk(m: Machine, image: Kimage) -> int:
    fdt = libfdt.Fdt(root_page(m, image))
    return int(struct.unpack("<Q", bytes(fdt.getprop(0, "preserved-memory-map")))[0])


CHUNK_CORRUPTIONS: dict[str, Callable[[Machine, int], None]] = {
    "next points to itself": lambda m, c: m.mem.write(c, struct.pack("<Q", c)),
    "count 0xffffffff": lambda m, c: m.mem.write(c + 12, struct.pack("<I", 0xFFFFFFFF)),
    "order 60": lambda m, c: m.mem.write(c + 8, struct.pack("<I", 60)),
    "bitmap outside RAM": lambda m, c: m.mem.write(c + 24, struct.pack("<Q", 1 << 46)),
    "phys_start near 2^64": lambda m, c: m.mem.write(c + 16, struct.pack("<Q", (1 << 64) - PAGE)),
    "random page": lambda m, c: m.mem.write(c, random.Random(9).randbytes(PAGE)),
    "next outside RAM": lambda m, c: m.mem.write(c, struct.pack("<Q", 1 << 46)),
}


@pytest.mark.parametrize("release", MAINLINE)
@pytest.mark.parametrize("how", list(CHUNK_CORRUPTIONS))
def test_corrupt_chunk_list_is_survived(release: str, how: str) -> None:
    """Populate checks the root, not the chunks (spec §4.3): the handover is accepted, the
    garbage map is walked, and the kernel boots with its files answering."""
    m, image = loaded(release)
    CHUNK_CORRUPTIONS[how](m, first_chunk(m, image))
    m.kexec_exec()
    k = m.kernel
    assert k.panic is None
    assert setup_lines(k.log.lines())[0] == found_line(release)
    kho = k.kho
    assert kho.in_fdt is not None and kho.debugfs
    m.status()
    kho.finalize_show()
    kho.scratch_phys_show()
    for blob in [kho.in_fdt, *kho.in_sub_fdts, *kho.out_sub_fdts]:
        kho.blob_read(blob, 0, blob.size)


@pytest.mark.parametrize("release", MAINLINE)
def test_map_pointing_outside_ram_is_survived(release: str) -> None:
    m, image = loaded(release)
    patch_root(
        m, image, lambda fdt: fdt.setprop(0, "preserved-memory-map", struct.pack("<Q", 1 << 46))
    )
    m.kexec_exec()
    assert m.kernel.panic is None
    assert setup_lines(m.kernel.log.lines())[0] == found_line(release)


# -- the scratch table (spec §4.2: a copy of the kho_scratch array, made at load time) ---


@pytest.mark.parametrize("release", MAINLINE)
def test_zeroed_scratch_table_stops_the_next_kernel_cleanly(release: str) -> None:
    """A table of empty areas leaves scratch-only mode nothing to allocate from: the next
    kernel stops at boot (a real one panics) — recorded, not raised — and a cold reboot
    brings the machine back."""
    m = cold_reference(release)
    k = m.kernel
    k.mem.write(k.kho.scratch_table, bytes(16 * len(k.kho.scratch)))
    k.kho.finalize_store(1)
    k.kexec.kexec_file_load(KERNEL, None, CMDLINE)
    image = k.kexec.kexec_image
    assert image is not None and image.kho_scratch is not None
    assert image.kho_scratch.buffer == bytes(16 * 3)  # copied from RAM at load time
    m.kexec_exec()
    assert m.kernel.panic == "kho-fs: early allocation failed in scratch-only mode"
    assert found_line(release) in m.kernel.log.lines()
    m.reboot()
    assert m.kernel.panic is None and m.kernel.kho.debugfs


@pytest.mark.parametrize("release", MAINLINE)
@pytest.mark.parametrize(
    "table",
    [
        struct.pack("<QQ", 1 << 40, 1 << 30) * 3,  # areas where no RAM is
        struct.pack("<QQ", 0, (1 << 64) - 1) * 3,  # one area as large as the address space
        struct.pack("<QQ", (1 << 64) - (1 << 20), 1 << 21) * 3,  # areas wrapping past 2^64
    ],
    ids=["outside RAM", "whole address space", "wrapping"],
)
def test_garbage_scratch_table_does_not_raise(release: str, table: bytes) -> None:
    m = cold_reference(release)
    k = m.kernel
    k.mem.write(k.kho.scratch_table, table)
    k.kho.finalize_store(1)
    k.kexec.kexec_file_load(KERNEL, None, CMDLINE)
    m.kexec_exec()  # must not raise
    k = m.kernel
    assert k.panic in (None, "kho-fs: early allocation failed in scratch-only mode")
    m.status()
    if k.panic is None:  # spec §2.5: a handover boot shows the inherited table unchanged
        areas = [struct.unpack_from("<QQ", table, i) for i in range(0, len(table), 16)]
        assert k.kho.scratch_phys_show() == "".join(f"{a:#x}\n" for a, _ in areas)
        assert k.kho.scratch_len_show() == "".join(f"{n:#x}\n" for _, n in areas)
