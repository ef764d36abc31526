"""The memory picture (``kho-fs map``, ``machine/map.svg``) in-process.

Expected ranges come from the model's own lists (RAM, memblock, scratch, reserve_mem,
kexec segments) and, for the preserved blocks, from the independent oracle decoding the
same RAM (tests/oracles/mainline.py).
"""

from __future__ import annotations

import math
import random
import re
import struct
import xml.etree.ElementTree as ET

import pytest
from oracles.mainline import blocks_to_ranges, decode_preserved_memory_map, decode_root_fdt

from kho_fs.memory_map import (
    machine_layout,
    picture_from_machine,
    render_svg,
    render_text,
    segment_width,
)
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import memblock_debug_show

SVG = "{http://www.w3.org/2000/svg}"
TIB = 1 << 40
GIB = 1 << 30


def preserve_spread(m: Machine, count: int, seed: int = 7) -> None:
    """``count`` separate blocks of random orders in free RAM, then finalize."""
    kho = m.kernel.kho
    assert isinstance(kho, KhoMainline)
    base, end = 8 * GIB, m.mem.end - 64 * GIB
    slots = count + count // 4
    stride = (end - base) // slots // 4096 * 4096
    busy = [(a.addr, a.end) for a in kho.scratch]
    busy += [(r.base, r.base + r.size) for r in m.kernel.memblock.reserved]
    rng = random.Random(seed)
    done = 0
    for i in range(slots):
        if done == count:
            break
        order = rng.randrange(10)
        size = 4096 << order
        phys = (base + i * stride + size - 1) // size * size
        if any(a < phys + size and phys < b for a, b in busy) or not m.mem.is_ram(phys, size):
            continue
        kho.kho_preserve_folio(phys, order)
        done += 1
    assert done == count
    kho.finalize_store(1)


def regions_of(svg: str) -> list[tuple[str, int, int, str]]:
    """``(lane, start, last, title)`` of every region element of an SVG document."""
    root = ET.fromstring(svg)
    out = []
    for g in root.iter(f"{SVG}g"):
        if "region" not in g.get("class", "").split():
            continue
        title = g.find(f"{SVG}title")
        assert title is not None and title.text
        assert g.findall(f"{SVG}rect"), "a region with nothing drawn"
        out.append((g.get("data-lane", ""), int(g.get("data-start", ""), 16),
                    int(g.get("data-end", ""), 16), title.text))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def big() -> tuple[Machine, str]:
    """A 4 TiB, 4-node 6.18 machine with 1,000 preserved ranges and a loaded image."""
    m = Machine.create(4 * TIB, 4, "console=ttyS0 kho=on reserve_mem=64M:4096:trace",
                       drivers=[], release="6.18")  # fmt: skip
    preserve_spread(m, 1000)
    m.kernel.kexec.kexec_file_load(b"\x90" * 65536, None, m.kernel.cmdline)
    svg = render_svg(picture_from_machine(m))
    yield m, svg
    m.close()


def test_svg_of_a_4_tib_machine(big: tuple[Machine, str]) -> None:
    m, svg = big
    assert len(svg.encode()) < 1 << 20
    assert svg.isascii()
    found = regions_of(svg)
    for _lane, start, last, title in found:  # every title names its element's range
        assert f"0x{start:016x}..0x{last:016x}" in title
    by_lane: dict[str, list[tuple[int, int]]] = {}
    for lane, start, last, _ in found:
        by_lane.setdefault(lane, []).append((start, last + 1 - start))
    k = m.kernel
    kho = k.kho
    assert isinstance(kho, KhoMainline) and kho.out_fdt is not None
    # preserved: one element per range the oracle decodes from the same RAM
    root = m.mem.read(kho.out_fdt.phys, 4096)
    first = decode_root_fdt(root[: struct.unpack(">I", root[4:8])[0]])["preserved_memory_map"]
    blocks = decode_preserved_memory_map(m.mem.read, first, 4096)
    expected = blocks_to_ranges(blocks)
    assert len(expected) >= 1000
    assert sorted(by_lane["preserved"]) == expected
    # the rest: one element per thing the model lists
    assert sorted(by_lane["node"]) == sorted((r.start, r.size) for r in m.mem.ram)
    assert sorted(by_lane["memory"]) == sorted((r.base, r.size) for r in k.memblock.memory)
    assert sorted(by_lane["reserved"]) == sorted((r.base, r.size) for r in k.memblock.reserved)
    assert sorted(by_lane["scratch"]) == sorted((a.addr, a.size) for a in kho.scratch if a.size)
    assert by_lane["reserve_mem"] == [(r.start, r.size) for r in k.reserve_mem.table]
    image = k.kexec.kexec_image
    assert image is not None
    assert sorted(by_lane["kexec"]) == sorted((s.mem, s.memsz) for s in image.segments)
    kho_lane = sorted(by_lane["KHO"])
    assert (kho.out_fdt.phys, 4096) in kho_lane
    assert all((b.phys, b.size) in kho_lane for b in kho.out_sub_fdts)
    # a legend names every kind, with a swatch
    assert "preserved (outgoing)" in svg and "memblock reserved RSV_KERN" in svg


def test_scale_keeps_a_page_and_a_tib_visible() -> None:
    assert segment_width(4096) >= 3
    assert segment_width(TIB) < 100
    assert segment_width(TIB) / segment_width(4096) > 10
    assert math.isclose(segment_width(0), 2.0)


def test_text_rendering(big: tuple[Machine, str]) -> None:
    m, _ = big
    text = render_text(picture_from_machine(m))
    lines = text.splitlines()
    assert re.match(
        r"kho-fs memory map: 4(\.00)? TiB RAM in 4 NUMA node\(s\), Linux 6.18.0", lines[0]
    )
    assert re.search(r"^0x[0-9a-f]{16} 0x[0-9a-f]{16} .* trace ", text, re.M)
    assert sum(" out " in line for line in lines) >= 1000
    assert lines[-1].startswith("totals:") or lines[-1].startswith("note:")


def test_layout_file_lists_what_no_kernel_file_shows(big: tuple[Machine, str]) -> None:
    m, _ = big
    records = [line.split(" ", 3) for line in machine_layout(m).splitlines()]
    ram = [(int(a, 16), int(s, 16), n) for kind, a, s, n in records if kind == "ram"]
    assert ram == [(r.start, r.size, f"node {r.nid}") for r in m.mem.ram]
    image = m.kernel.kexec.kexec_image
    assert image is not None
    kexec = [(int(a, 16), int(s, 16), n) for kind, a, s, n in records if kind == "kexec"]
    assert kexec == [(s.mem, s.memsz, s.name) for s in image.segments]


@pytest.mark.parametrize("release", ["v4", "6.16", "6.19", "7.2"])
def test_every_release_draws_and_parses(release: str) -> None:
    cmdline = "console=ttyS0 kho=on reserve_mem=16M:4096:oops"
    with Machine.create(1 << 30, 1, cmdline, release=release) as m:
        kho = m.kernel.kho
        if isinstance(kho, KhoMainline):
            if release != "7.2":  # the blob era has no finalize
                kho.finalize_store(1)
        else:
            m.kernel.kho_v4.active_store(b"1")
        m.kernel.kexec.kexec_file_load(b"\x90" * 65536, None, m.kernel.cmdline)
        m.kexec_exec()  # the handover boot: incoming FDT, RSV_NIT / NONE reservations
        svg = render_svg(picture_from_machine(m))
        region = m.region("oops")
        assert region is not None
        found = regions_of(svg)
        assert ("reserve_mem", region.start, region.end - 1) in [f[:3] for f in found]
        incoming = [(s, e) for lane, s, e, t in found if lane == "preserved"]
        assert any(s <= region.start and region.end - 1 <= e for s, e in incoming), release
        if memblock_debug_show(m.kernel.memblock.reserved) and release != "7.2":
            assert any(lane == "reserved" for lane, *_ in found)


def test_labels_with_odd_bytes_stay_valid_xml() -> None:
    cmdline = "console=ttyS0 kho=on reserve_mem=1M:4096:a<&\x01\xe9"
    with Machine.create(1 << 30, 1, cmdline, release="6.18") as m:
        svg = render_svg(picture_from_machine(m))
    assert svg.isascii()
    titles = [t for *_, t in regions_of(svg)]
    assert any("a<&\\x01\xe9" in t for t in titles)
