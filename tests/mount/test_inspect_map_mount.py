"""``kho-fs inspect`` and ``kho-fs map`` on real mounts, driven as a user would.

Expected values are read through the mount (the kernel's files, ``dev/mem``) and decoded
by the independent oracles of tests/oracles/mainline.py, never by kho_fs.inspect.
"""

from __future__ import annotations

import json
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mount_helpers import kho_fs
from oracles.mainline import (
    BITMAP_BYTES,
    RELEASES,
    blocks_to_ranges,
    decode_preserved_memory_map,
    decode_root_fdt,
    kho_test_sub_fdt_check,
    memblock_sub_fdt,
)

from kho_fs.testing import MountedMachine, mounted

CMDLINE = "console=ttyS0 kho=on reserve_mem=16M:4096:oops test_kho.max_mem=256K"
V4_CMDLINE = "console=ttyS0 kho=on reserve_mem=16M:4096:oops kho_example.size=1M"
DEBUGFS = "sys/kernel/debug/kho"


def mount(tmp_path: Path, release: str) -> Any:
    if release == "v4":
        return mounted(tmp_path, memory="1G", cmdline=V4_CMDLINE, extra_args=["--release", "v4"])
    return mounted(tmp_path, memory="1G", cmdline=CMDLINE,
                   extra_args=["--release", release, "--driver", "test_kho"])  # fmt: skip


def image(tmp_path: Path) -> Path:
    path = tmp_path / "Image"
    path.write_bytes(b"\x90" * 65536)  # no boot header: the same release boots again
    return path


def make_handover(m: MountedMachine, release: str) -> None:
    if release == "v4":
        m.write("sys/kernel/kho/active", "1")
    else:
        m.write(f"{DEBUGFS}/out/finalize", "1")


def inspect_json(m: MountedMachine, *args: str) -> dict[str, Any]:
    r = kho_fs("inspect", str(m.mountpoint), "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@contextmanager
def dev_mem(m: MountedMachine) -> Iterator[Callable[[int, int], bytes]]:
    fd = os.open(m.path("dev/mem"), os.O_RDONLY)
    try:
        yield lambda addr, size: os.pread(fd, size, addr)
    finally:
        os.close(fd)  # an open descriptor would keep the mount busy


def status_region(m: MountedMachine, name: str) -> tuple[int, int]:
    for line in m.read_text("machine/status").splitlines():
        words = line.split()
        if words[:2] == ["reserve_mem:", name]:
            return int(words[2], 16), int(words[4], 16)
    raise AssertionError(f"no reserve_mem {name} in machine/status")


def sub(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["sub_fdts"] if s["name"] == name)


def props(tree: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    node = tree
    for part in [p for p in path.split("/") if p]:
        node = next(c for c in node["children"] if c["name"] == part)
    return {p["name"]: p for p in node["properties"]}


def expected_mainline(m: MountedMachine, release: str) -> dict[str, Any]:
    """What the handover holds, decoded by the oracles from the mount's files and RAM."""
    era = RELEASES[release][0]
    assert era is not None
    shown = m.read_bytes(f"{DEBUGFS}/out/fdt")
    # the root page (6.19+ show only its first bytes in out/fdt): machine/layout names it
    total = struct.unpack(">I", shown[4:8])[0]
    candidates = [
        int(words[1], 16)
        for words in (line.split() for line in m.read_text("machine/layout").splitlines())
        if words[0] == "fdt-out" and words[3] == "root"
    ]
    with dev_mem(m) as read:
        root = read(candidates[0], total)
        assert root.startswith(shown)
        decoded = decode_root_fdt(root)
        first = decoded["preserved_memory_map"]
        blocks = decode_preserved_memory_map(read, first, BITMAP_BYTES[era])
    return {"era": era, "root": decoded, "ranges": blocks_to_ranges(blocks), "blocks": blocks}


@pytest.mark.parametrize("release", ["6.16", "6.17", "6.18", "6.19", "7.0"])
def test_inspect_mainline_mount(tmp_path: Path, release: str) -> None:
    with mount(tmp_path, release) as m:
        make_handover(m, release)
        report = inspect_json(m)
        expected = expected_mainline(m, release)
        start, size = status_region(m, "oops")
        memblock = m.read_bytes(f"{DEBUGFS}/out/sub_fdts/memblock")
        kho_test = m.read_bytes(f"{DEBUGFS}/out/sub_fdts/kho_test")
        text = kho_fs("inspect", str(m.mountpoint))
    assert report["source"] | {"path": None, "root_file": None} == {
        "path": None, "root_file": None, "kind": "kho-fs mount", "interface": "mainline",
        "side": "out", "linux_version": RELEASES[release][1],
        "root_address": report["source"]["root_address"], "physical_memory": True,
    }  # fmt: skip
    assert [(s["name"], s["address"]) for s in report["sub_fdts"]] == expected["root"]["children"]
    pres = report["preserved"]
    assert pres["map_address"] == expected["root"]["preserved_memory_map"]
    assert pres["bitmap_bytes"] == BITMAP_BYTES[expected["era"]]
    assert [(r["start"], r["size"]) for r in pres["ranges"]] == expected["ranges"]
    assert pres["total_blocks"] == len(expected["blocks"])
    assert any(s <= start and start + size <= s + z for s, z in expected["ranges"])
    # memblock, test_kho: the same values as the oracles find in the same files
    assert memblock == memblock_sub_fdt([("oops", start, size)])
    oops = props(sub(report, "memblock")["fdt"]["tree"], "/oops")
    assert (oops["start"]["decoded"], oops["size"]["decoded"]) == (start, size)
    check = kho_test_sub_fdt_check(kho_test, expected["era"])
    data = props(sub(report, "kho_test")["fdt"]["tree"], "/data")
    assert data["nr_folios"]["decoded"] == check["nr_folios"]
    assert data["csum"]["decoded"] == check["csum"]
    assert any("matches" in line for line in data["csum"]["details"])
    folios = {(f["address"], f["order"]) for f in data["folios_info"]["decoded"]["folios"]}
    assert folios <= set(expected["blocks"])
    assert text.returncode == 0 and "// preserved memory: map at" in text.stdout


def test_inspect_v4_mount_out_and_in(tmp_path: Path) -> None:
    with mount(tmp_path, "v4") as m:
        assert kho_fs("inspect", str(m.mountpoint)).returncode == 1  # not active yet
        make_handover(m, "v4")
        out = inspect_json(m)
        start, size = status_region(m, "oops")
        r = kho_fs("kexec", "-l", str(image(tmp_path)), "-s", "--reuse-cmdline", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        assert kho_fs("kexec", "-e", root=m.mountpoint).returncode == 0
        incoming = inspect_json(m)  # no dt after the kexec: the incoming side
        dt_fw = m.read_bytes("sys/firmware/kho/dt_fw")
    assert out["source"]["interface"] == "v4" and out["source"]["side"] == "out"
    assert incoming["source"]["side"] == "in"
    ranges = {(r["start"], r["size"], r["node"]) for r in out["preserved"]["ranges"]}
    assert (start, size, "/reserve_mem/oops") in ranges
    assert {(r["start"], r["size"]) for r in incoming["preserved"]["ranges"]} == {
        (a, s) for a, s, _ in ranges
    }
    mem = props(incoming["root"]["tree"], "/reserve_mem/oops")["mem"]
    assert bytes.fromhex(mem["hex"]) == struct.pack("<QQ", start, size)
    assert incoming["root"]["totalsize"] == len(dt_fw)


def test_inspect_incoming_side_after_kexec(tmp_path: Path) -> None:
    """6.18: what the first kernel handed over, read by the second through in/."""
    with mount(tmp_path, "6.18") as m:
        make_handover(m, "6.18")
        before = inspect_json(m)
        r = kho_fs("kexec", "-l", str(image(tmp_path)), "-s", "--reuse-cmdline", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        assert kho_fs("kexec", "-e", root=m.mountpoint).returncode == 0
        after = inspect_json(m, "--side", "in")
        r = kho_fs("inspect", str(m.path(f"{DEBUGFS}/in")), "--json")
        assert r.returncode == 0, r.stderr
        debugfs_dir = json.loads(r.stdout)
    assert after["source"]["side"] == "in"
    assert [s["name"] for s in after["sub_fdts"]] == [s["name"] for s in before["sub_fdts"]]
    assert after["preserved"]["map_address"] == before["preserved"]["map_address"]
    assert debugfs_dir["source"]["kind"] == "debugfs directory"
    assert debugfs_dir["source"]["physical_memory"] is True  # dev/mem of the enclosing mount


def test_map_mount(tmp_path: Path) -> None:
    with mount(tmp_path, "6.19") as m:
        make_handover(m, "6.19")
        svg_file = tmp_path / "map.svg"
        r = kho_fs("map", str(m.mountpoint), "-o", str(svg_file))
        assert r.returncode == 0 and r.stdout == "", r.stderr
        served = m.read_bytes("machine/map.svg").decode("ascii")
        text = kho_fs("map", str(m.mountpoint), "--text")
        start, size = status_region(m, "oops")
        memory = m.read_text("sys/kernel/debug/memblock/memory")
    drawn = svg_file.read_text("ascii")
    assert drawn == served  # the command and the mount draw the same picture
    root = ET.fromstring(drawn)
    groups = [
        g for g in root.iter("{http://www.w3.org/2000/svg}g") if "region" in g.get("class", "")
    ]
    lanes = [(g.get("data-lane"), int(g.get("data-start", ""), 16), int(g.get("data-end", ""), 16))
             for g in groups]  # fmt: skip
    assert ("reserve_mem", start, start + size - 1) in lanes
    assert sum(1 for lane, *_ in lanes if lane == "memory") == len(memory.splitlines())
    assert text.returncode == 0 and " oops " in text.stdout


def test_map_refuses_a_directory_that_is_no_mount(tmp_path: Path) -> None:
    r = kho_fs("map", str(tmp_path))
    assert r.returncode == 3 and r.stderr.strip().endswith("not a kho-fs mount")
