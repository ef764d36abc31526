"""``kho-fs inspect`` in-process: handovers of every release, saved files, garbage.

Expected values come from the spec (kho-mainline.md §5–§7, §10; kho-v4.md §5), the real
Linux 7.2.13 recording (tests/data/linux-7.2.13-debugfs-kho) and the independent oracles
of tests/oracles/mainline.py — never from kho_fs.inspect itself.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from oracles.mainline import (
    BITMAP_BYTES,
    RELEASES,
    blocks_to_ranges,
    decode_blob_root,
    decode_preserved_memory_map,
    decode_radix_tree,
    decode_root_fdt,
    encode_preserved_memory_map,
    kho_test_csum,
    kho_test_sub_fdt_check,
    memblock_sub_fdt,
)

from kho_fs.cli import main
from kho_fs.inspect import (
    HandoverSource,
    InspectError,
    decode,
    decode_mem_map,
    inspect_path,
    render_text,
)
from kho_fs.model.builtin_drivers import DRIVERS
from kho_fs.model.fdt import FdtSw
from kho_fs.model.kho import Kho
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine

DATA = Path(__file__).parent.parent / "data"
REAL = DATA / "linux-7.2.13-debugfs-kho"
MAINLINE = ("6.16", "6.17", "6.18", "6.19", "7.0")
CMDLINE = "console=ttyS0 kho=on reserve_mem=16M:4096:oops test_kho.max_mem=256K"
V4_CMDLINE = "console=ttyS0 kho=on reserve_mem=16M:4096:oops kho_example.size=1M"


def handover(release: str) -> Machine:
    """A 1 GiB machine of ``release`` with its outgoing handover made (activate/finalize)."""
    if release == "v4":
        m = Machine.create(1 << 30, 1, V4_CMDLINE, release="v4")
        m.kernel.kho_v4.active_store(b"1")
        return m
    m = Machine.create(1 << 30, 1, CMDLINE, drivers=[DRIVERS["test_kho"]], release=release)
    kho = m.kernel.kho
    assert isinstance(kho, KhoMainline)
    kho.finalize_store(1)
    return m


def write_debugfs_out(m: Machine, where: Path) -> Path:
    """What ``sys/kernel/debug/kho/out`` serves, as files: ``fdt`` and ``sub_fdts/*``."""
    kho = m.kernel.kho
    assert isinstance(kho, KhoMainline) and kho.out_fdt is not None
    out = where / "out"
    (out / "sub_fdts").mkdir(parents=True)
    (out / "fdt").write_bytes(kho.blob_read(kho.out_fdt, 0, kho.out_fdt.size))
    for b in kho.out_sub_fdts:
        (out / "sub_fdts" / b.name).write_bytes(kho.blob_read(b, 0, b.size))
    return out


def full_root(m: Machine) -> bytes:
    kho = m.kernel.kho
    assert isinstance(kho, KhoMainline) and kho.out_fdt is not None
    header = m.mem.read(kho.out_fdt.phys, 8)
    return m.mem.read(kho.out_fdt.phys, struct.unpack(">I", header[4:8])[0])


def props(tree: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """``{name: property report}`` of the node at ``path`` of a report tree."""
    node = tree
    for part in [p for p in path.split("/") if p]:
        node = next(c for c in node["children"] if c["name"] == part)
    return {p["name"]: p for p in node["properties"]}


def sub(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["sub_fdts"] if s["name"] == name)


# -- every release, from files (no memory) ----------------------------------------------


@pytest.mark.parametrize("release", MAINLINE)
def test_mainline_debugfs_files(release: str, tmp_path: Path) -> None:
    with handover(release) as m:
        out = write_debugfs_out(m, tmp_path)
        root = full_root(m)
        region = m.region("oops")
        assert region is not None
    (tmp_path / "root.dtb").write_bytes(root)
    era = RELEASES[release][0]
    assert era is not None
    expected_root = decode_root_fdt(root)
    # the directory as the kernel shows it (6.19+: out/fdt keeps its creation size)
    report = inspect_path(out)
    assert report["source"]["kind"] == "debugfs directory"
    truncated = (out / "fdt").stat().st_size < len(root)
    assert bool(report["root"].get("truncated")) == truncated == (release in ("6.19", "7.0"))
    if not truncated:
        root_props = props(report["root"]["tree"], "/")
        assert root_props["compatible"]["decoded"] == expected_root["compatible"]
        assert (
            root_props["preserved-memory-map"]["decoded"] == expected_root["preserved_memory_map"]
        )
        children = [(s["name"], s["address"]) for s in report["sub_fdts"]]
        assert children == expected_root["children"]
    # the whole root as a file next to the sub-FDTs: children with their addresses
    shutil.copy(tmp_path / "root.dtb", out / "fdt")
    report = inspect_path(out)
    assert [(s["name"], s["address"]) for s in report["sub_fdts"]] == expected_root["children"]
    # memblock: the oracle builds the same bytes; inspect reads the region back
    memblock = (out / "sub_fdts" / "memblock").read_bytes()
    assert memblock == memblock_sub_fdt([("oops", region.start, region.size)])
    oops = props(sub(report, "memblock")["fdt"]["tree"], "/oops")
    assert oops["start"]["decoded"] == region.start
    assert oops["size"]["decoded"] == region.size == 16 << 20
    # test_kho: the oracle's decode of the same bytes
    blob = (out / "sub_fdts" / "kho_test").read_bytes()
    expected = kho_test_sub_fdt_check(blob, era)
    assert expected["valid"], expected["problems"]
    data = props(sub(report, "kho_test")["fdt"]["tree"], "/data")
    top = props(sub(report, "kho_test")["fdt"]["tree"], "/")
    assert top["magic"]["decoded"] == expected["magic"] == 0x4B484F21
    assert data["nr_folios"]["decoded"] == expected["nr_folios"]
    assert data["csum"]["decoded"] == expected["csum"]
    info = data["folios_info"]["decoded"]
    if expected["layout"] == "array":
        assert info["layout"] == "array"
        assert [(f["address"], f["order"]) for f in info["folios"]] == expected["folios"]
    else:
        assert info["layout"] == "vmalloc"
        assert info["descriptor"] == {
            "first_chunk": expected["vmalloc"]["first"],
            "total_pages": expected["vmalloc"]["total_pages"],
            "flags": expected["vmalloc"]["flags"],
            "order": expected["vmalloc"]["order"],
        }
    # without physical memory the map is named, not decoded
    assert report["preserved"]["map_address"] == expected_root["preserved_memory_map"]
    assert "not readable" in report["preserved"]["note"]
    text = render_text(report)
    assert "preserved-memory-map" in text and "reserve_mem region 'oops'" in text


@pytest.mark.parametrize("release", MAINLINE)
def test_mainline_with_memory_matches_the_oracle(release: str) -> None:
    """The preserved-memory map decoded from RAM: ranges, orders, totals as the oracle
    decodes the same bytes; test_kho's folios all preserved, their checksum recomputed."""
    era = RELEASES[release][0]
    assert era is not None
    with handover(release) as m:
        kho = m.kernel.kho
        assert isinstance(kho, KhoMainline)
        root = full_root(m)
        subs = {b.name: kho.blob_read(b, 0, b.size) for b in kho.out_sub_fdts}
        bitmap_bytes = BITMAP_BYTES[era]
        src = HandoverSource("test", "test", root, sub_fdts=subs, read_mem=m.mem.read,
                             interface="mainline", bitmap_bytes=bitmap_bytes)  # fmt: skip
        report = decode(src)
        first = decode_root_fdt(root)["preserved_memory_map"]
        blocks = decode_preserved_memory_map(m.mem.read, first, bitmap_bytes)
        info = props(sub(report, "kho_test")["fdt"]["tree"], "/data")
        folios = [(f["address"], f["order"]) for f in info["folios_info"]["decoded"]["folios"]]
        folio_bytes = [m.mem.read(a, 4096 << o) for a, o in folios]
        region = m.region("oops")
    pres = report["preserved"]
    assert pres["format"] == "bitmaps" and pres["bitmap_bytes"] == bitmap_bytes
    expected_ranges = blocks_to_ranges(blocks)
    assert [(r["start"], r["size"]) for r in pres["ranges"]] == expected_ranges
    by_order: dict[int, int] = {}
    for _, order in blocks:
        by_order[order] = by_order.get(order, 0) + 1
    assert {int(k): v["blocks"] for k, v in pres["orders"].items()} == by_order
    assert pres["total_blocks"] == len(blocks)
    assert pres["total_bytes"] == sum(4096 << o for _, o in blocks)
    for r in pres["ranges"]:  # the blocks of a range add up to it
        assert sum(n * (4096 << int(o)) for o, n in r["orders"].items()) == r["size"]
    # the region and every test_kho folio are preserved blocks
    assert region is not None
    assert any(s <= region.start and region.end <= s + z for s, z in expected_ranges)
    assert set(folios) <= set(blocks)
    assert sum(4096 << o for _, o in folios) == 256 << 10
    # the checksum inspect recomputed is the oracle's
    csum = info["csum"]
    assert csum["decoded"] == kho_test_csum(folio_bytes)
    assert any("matches" in line for line in csum["details"])


def test_v4_handover() -> None:
    with handover("v4") as m:
        kho = m.kernel.kho
        assert isinstance(kho, Kho) and kho.fdt is not None
        fdt = kho.fdt
        region = m.region("oops")
        buffer = next(d for d in m.kernel.drivers if d.name == "kho_example").regions()[0]
    assert region is not None
    report = decode(HandoverSource("dt", "FDT file", fdt, interface="v4"))
    pres = report["preserved"]
    assert pres["format"] == "mem properties"
    got = sorted((r["start"], r["size"], r["node"]) for r in pres["ranges"])
    assert got == sorted(
        [
            (region.start, region.size, "/reserve_mem/oops"),
            (buffer.start, buffer.size, "/kho_example"),
        ]
    )
    assert report["sub_fdts"] == []


def test_v4_reference_blob_from_the_spec() -> None:
    """kho-v4.md §5.6: one region `oops`, start 0x23fe00000, 16 MiB."""
    report = inspect_path(DATA / "v4-oops-16M-at-0x23fe00000.dtb")
    mem = props(report["root"]["tree"], "/reserve_mem/oops")["mem"]
    assert mem["decoded"] == [{"start": 0x23FE00000, "size": 0x1000000}]
    assert mem["dtc"] == "<0xe03f 0x2000000 0x01 0x00>"  # the spec's dtc line
    assert report["preserved"]["ranges"] == [
        {"start": 0x23FE00000, "size": 0x1000000, "node": "/reserve_mem/oops"}
    ]


def test_saved_fdt_without_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A saved file with nothing preserved, and a mainline root saved alone."""
    assert main(["inspect", str(DATA / "v4-no-regions.dtb")]) == 0
    text = capsys.readouterr().out
    assert 'compatible = "kho-v1";' in text and "nothing preserved" in text
    with handover("6.18") as m:
        root = full_root(m)
    (tmp_path / "root.dtb").write_bytes(root)
    assert main(["inspect", str(tmp_path / "root.dtb"), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["source"]["physical_memory"] is False
    assert "not readable" in report["preserved"]["note"]
    assert all(s["error"].startswith("not available") for s in report["sub_fdts"])


# -- blob era (7.2): the real kernel's files, and the model's ----------------------------


def test_real_linux_7_2_debugfs_in() -> None:
    report = inspect_path(REAL / "in")
    root = (REAL / "in" / "fdt").read_bytes()
    expected = decode_blob_root(root)
    assert props(report["root"]["tree"], "/")["compatible"]["decoded"] == ["kho-v4"]
    children = [(s["name"], s["address"]) for s in report["sub_fdts"]]
    assert children == [(n, a) for n, a, _ in expected["children"]]
    meta = sub(report, "kexec-metadata")["raw"]
    assert (meta["version"], meta["previous_release"], meta["kexec_count"]) == (1, "7.2.13", 1)
    oops = props(sub(report, "memblock")["fdt"]["tree"], "/oops")
    assert (oops["start"]["decoded"], oops["size"]["decoded"]) == (0x7C600000, 16 << 20)
    desc = props(sub(report, "kho_test")["fdt"]["tree"], "/data")["folios_info"]["decoded"]
    assert desc["layout"] == "vmalloc" and desc["descriptor"]["total_pages"] == 1
    assert sub(report, "LUO")["raw"]["meaning"] == "not an FDT"  # reused memory, as recorded
    assert report["preserved"]["format"] == "radix tree"


def test_real_linux_7_2_debugfs_out_truncated_root() -> None:
    report = inspect_path(REAL)  # kho/: the outgoing side first
    assert report["source"]["side"] == "out"
    assert report["root"] == {"truncated": True, "have": 233, "totalsize": 405}
    luo = sub(report, "LUO")["raw"]
    assert luo["compatible"] == "luo-v5" and luo["words"][0] == 1
    assert sub(report, "kexec-metadata")["raw"]["previous_release"] == "7.2.13"


def test_blob_era_model_radix_map_matches_the_oracle() -> None:
    m = Machine.create(1 << 30, 1, CMDLINE, drivers=[DRIVERS["test_kho"]], release="7.2")
    with m:
        kho = m.kernel.kho
        assert isinstance(kho, KhoMainline) and kho.out_fdt is not None
        root = full_root(m)
        subs = {b.name: kho.blob_read(b, 0, b.size) for b in kho.out_sub_fdts}
        report = decode(HandoverSource("t", "t", root, sub_fdts=subs, read_mem=m.mem.read))
        first = decode_blob_root(root)["preserved_memory_map"]
        blocks = decode_radix_tree(m.mem.read, first)
    pres = report["preserved"]
    assert pres["format"] == "radix tree"
    assert [(r["start"], r["size"]) for r in pres["ranges"]] == blocks_to_ranges(blocks)
    assert pres["total_blocks"] == len(blocks)


# -- the map decoder on crafted memory ---------------------------------------------------


class FakeRam:
    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.next = 0x1000_0000

    def alloc(self) -> int:
        self.next += 4096
        return self.next

    def write(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            page = self.pages.setdefault((addr + i) & ~4095, bytearray(4096))
            page[(addr + i) & 4095] = b

    def read(self, addr: int, size: int) -> bytes:
        return bytes(
            self.pages.get((addr + i) & ~4095, bytes(4096))[(addr + i) & 4095] for i in range(size)
        )


@pytest.mark.parametrize("bitmap_bytes", [512, 4096])
def test_mem_map_decoder_on_the_oracle_encoder(bitmap_bytes: int) -> None:
    blocks = [(0x4000_0000 + i * 0x20_0000, i % 10) for i in range(300)] + [
        (0x1000, 0),
        (0x2000, 1),
    ]
    ram = FakeRam()
    first = encode_preserved_memory_map(blocks, bitmap_bytes, ram.alloc, ram.write)
    mm = decode_mem_map(ram.read, first, bitmap_bytes)
    assert mm.notes == []
    assert [(r.start, r.size) for r in mm.ranges()] == blocks_to_ranges(blocks)
    assert sorted((s, o) for s, z, o in mm.runs for s in range(s, s + z, 4096 << o)) == sorted(
        blocks
    )


def test_mem_map_decoder_survives_garbage() -> None:
    ram = FakeRam()
    ram.write(0x5000, struct.pack("<QII", 0x6000, 3, 9999))  # too many entries, then a loop
    ram.write(0x6000, struct.pack("<QII", 0x5000, 200, 1))  # impossible order
    mm = decode_mem_map(ram.read, 0x5000, 4096)
    assert any("loops" in n for n in mm.notes)
    assert any("claims 9999" in n for n in mm.notes)
    assert any("order 200" in n for n in mm.notes)


# -- dtc's rendering of unknown properties -------------------------------------------------

UNKNOWN = [
    ("empty", b""),
    ("string", b"hello\0"),
    ("strings", b"a\0bc\0"),
    ("escapes", b'tab\there "q" \\ \n\0'),
    ("cells", bytes.fromhex("0000000100000200")),
    ("bytes", b"\x01\x02\x03"),
    ("nuls", b"\0\0"),
    ("half-nul", b"ab\0\0"),
    ("binary", b"\xff\xfe\0\0"),
    ("high", b"\xe9t\xe9\0"),
]


def test_unknown_properties_print_as_dtc_prints_them(tmp_path: Path) -> None:
    assert shutil.which("dtc"), "dtc is missing: scripts/setup installs device-tree-compiler"
    fdt = FdtSw(4096)
    assert not fdt.finish_reservemap() and not fdt.begin_node("")
    for name, value in UNKNOWN:
        assert not fdt.property(name, value)
    assert not fdt.begin_node("child@1") and not fdt.property("x", b"\0\0\0\x07")
    assert not (fdt.end_node() or fdt.end_node() or fdt.finish())
    path = tmp_path / "unknown.dtb"
    path.write_bytes(fdt.blob())
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(path)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    ours = render_text(inspect_path(path))
    tree = "\n".join(line for line in ours.splitlines() if not line.startswith("//")).strip()
    # dtc before 1.7 prints a string list as one string with \0 inside ("a\0bc"), newer
    # dtc as a list ("a", "bc"); inspect prints the newer form
    assert tree.replace('", "', "\\0") == dts.strip().replace('", "', "\\0")
    assert '\tstrings = "a", "bc";' in tree


# -- garbage: one line, exit 1, no traceback --------------------------------------------------


def _garbage(tmp_path: Path) -> dict[str, Path]:
    good = (DATA / "v4-oops-16M-at-0x23fe00000.dtb").read_bytes()
    bad_struct = bytearray(good)
    bad_struct[0x40:0x44] = b"\0\0\0\x07"  # an unknown token where the root begins
    cases = {
        "empty": b"",
        "random": bytes(range(256)) * 3,
        "short": good[:20],
        "truncated": good[:100],
        "bad-magic": b"\xd0\x0d\xfe\xef" + good[4:],
        "bad-struct": bytes(bad_struct),
        "huge-totalsize": good[:4] + b"\x7f\xff\xff\xff" + good[8:],
    }
    out = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    (tmp_path / "dir").mkdir()
    out["not-a-source"] = tmp_path / "dir"
    out["missing"] = tmp_path / "missing"
    return out


def test_garbage_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, path in _garbage(tmp_path).items():
        assert main(["inspect", str(path)]) == 1, name
        captured = capsys.readouterr()
        assert captured.out == "", name
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kho-fs: "), (name, captured.err)
        assert "Traceback" not in captured.err


def test_garbage_through_the_real_command(tmp_path: Path) -> None:
    paths = _garbage(tmp_path)
    for name in ("random", "bad-struct", "truncated"):
        r = subprocess.run([sys.executable, "-m", "kho_fs", "inspect", str(paths[name])],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 1, (name, r.stderr)
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1, (name, r.stderr)
        assert "Traceback" not in r.stderr


def test_decode_errors_are_inspect_errors() -> None:
    with pytest.raises(InspectError, match="not an FDT"):
        decode(HandoverSource("x", "FDT file", b"\0" * 64))


# -- LUO (6.19): the sub-FDT and the session records in memory (spec §12) ------------------


def test_luo_sessions_and_files_from_memory() -> None:
    ram = FakeRam()
    header, files = 0x2000_0000, 0x2100_0000
    ram.write(header, struct.pack("<Q", 2))  # luo_session_header_ser: count
    ram.write(header + 8, struct.pack("<64sQQ", b"vm-1", files, 2))
    ram.write(header + 88, struct.pack("<64sQQ", b"empty", 0, 0))
    ram.write(files, struct.pack("<48sQQ", b"memfd-v1", 0x3000_0000, 0x10))
    ram.write(files + 64, struct.pack("<48sQQ", b"memfd-v1", 0x3000_1000, 0x11))
    fdt = FdtSw(4096)
    assert not (
        fdt.finish_reservemap()
        or fdt.begin_node("")
        or fdt.property_string("compatible", "luo-v1")
        or fdt.property("liveupdate-number", struct.pack("<Q", 3))
        or fdt.begin_node("luo-session")
        or fdt.property_string("compatible", "luo-session-v1")
        or fdt.property("luo-session-header", struct.pack("<Q", header))
        or fdt.end_node()
        or fdt.end_node()
        or fdt.finish()
    )
    report = decode(HandoverSource("LUO", "FDT file", fdt.blob(), read_mem=ram.read))
    top = props(report["root"]["tree"], "/")
    assert top["liveupdate-number"]["decoded"] == 3
    sessions = props(report["root"]["tree"], "/luo-session")["luo-session-header"]["decoded"]
    assert sessions["address"] == header
    assert [(s["name"], s["count"]) for s in sessions["sessions"]] == [("vm-1", 2), ("empty", 0)]
    assert sessions["sessions"][0]["files"] == [
        {"compatible": "memfd-v1", "data": 0x3000_0000, "token": 0x10},
        {"compatible": "memfd-v1", "data": 0x3000_1000, "token": 0x11},
    ]
    assert "token 0x11: memfd-v1" in render_text(report)


def test_luo_subtree_of_a_6_19_machine() -> None:
    with Machine.create(1 << 30, 1, "console=ttyS0 kho=on liveupdate=on", release="6.19") as m:
        kho = m.kernel.kho
        assert isinstance(kho, KhoMainline)
        blob = next(b for b in kho.out_sub_fdts if b.name == "LUO")
        subs = {"LUO": kho.blob_read(blob, 0, blob.size)}
        report = decode(HandoverSource("t", "t", full_root(m), sub_fdts=subs,
                                       read_mem=m.mem.read, bitmap_bytes=4096))  # fmt: skip
    luo = sub(report, "LUO")["fdt"]["tree"]
    assert props(luo, "/")["compatible"]["decoded"] == ["luo-v1"]
    number = struct.unpack("<Q", bytes.fromhex(props(luo, "/")["liveupdate-number"]["hex"]))[0]
    assert props(luo, "/")["liveupdate-number"]["decoded"] == number
    header = props(luo, "/luo-session")["luo-session-header"]["decoded"]
    assert header["sessions"] == []
