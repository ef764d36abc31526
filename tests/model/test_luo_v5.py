"""LUO of release 7.2 (``luo-v5``): docs/luo.md, Linux 7.2.13 and its recording.

Expected values come from the 7.2.13 source -- include/linux/kho/abi/{luo,block,memfd}.h,
kernel/liveupdate/{luo_core,luo_session,luo_file,kho_block}.c, mm/memfd_luo.c -- and the
real recording (tests/data/transcripts/linux-7.2.13-kho-luo.txt). What the model wrote is
read back from emulated RAM with the decoder below, written here from those headers; the
model's own structures are only used to find where to start (the root FDT page).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libfdt
import pytest
from luo_model_helpers import (
    BusyHandler,
    Source,
    arg,
    contents,
    create,
    errno_of,
    finish,
    luo_of,
    preserve,
    retrieve,
    retrieve_fd,
)
from oracles.mainline import decode_blob_root, root_fdt_blob

from kho_fs.model.builtin_drivers import DRIVERS
from kho_fs.model.bzimage import make_bzimage
from kho_fs.model.errors import KernelError
from kho_fs.model.luo import (
    FD_ARG,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
    Luo,
    LuoSession,
)
from kho_fs.model.machine import Machine
from kho_fs.model.releases import RELEASES
from kho_fs.state import load_machine, save_machine

CMDLINE = "console=ttyS0 kho=on liveupdate=on"
TRANSCRIPT = (
    Path(__file__).resolve().parents[1] / "data" / "transcripts" / "linux-7.2.13-kho-luo.txt"
)
PAGE = 4096
MiB = 1 << 20

# -- the 7.2.13 ABI, from the headers (independent of kho_fs.model) --------------------------------
LUO_SER = struct.Struct("<8sQQQ")  # luo.h: struct luo_ser (packed), 32 bytes
BLOCK_HEADER = struct.Struct("<QQ")  # block.h: struct kho_block_header_ser {next, count}
SESSION_SER = struct.Struct("<64sQQ")  # luo.h: name[64], luo_file_set_ser {files, count}
FILE_SER = struct.Struct("<48sQQ")  # luo.h: compatible[48], data, token
FLB_HEADER = struct.Struct("<QQ")  # luo.h: luo_flb_header_ser {pgcnt, count}
MEMFD_SER = struct.Struct("<QQIIQQIHH")  # memfd.h: pos, size, seals, flags, nr_folios, kho_vmalloc
FOLIO_SER = struct.Struct("<QQ")  # memfd.h: pfn:52 | flags:12, index
SESSIONS_PER_BLOCK = (PAGE - 16) // 80  # KHO_BLOCK_SET_INIT's count_per_block
FILES_PER_BLOCK = (PAGE - 16) // 64
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
GET_NAME_ARG = struct.Struct("<II64s")  # uapi: size, reserved, name[64]


def transcript_hex(path: str, nth: int) -> bytes:
    lines = TRANSCRIPT.read_text().splitlines()
    hits = [i for i, line in enumerate(lines) if line == f"=== HEX {path}"]
    return bytes.fromhex(lines[hits[nth] + 1])


def decode_luo_ser(raw: bytes) -> dict[str, Any]:
    compat, number, sessions_pa, flbs_pa = LUO_SER.unpack(raw)
    return {"compatible": compat, "num": number, "sessions_pa": sessions_pa, "flbs_pa": flbs_pa}


def read_chain(read: Callable[[int, int], bytes], head: int, size: int) -> list[list[bytes]]:
    """The records of a kho_block chain, block by block."""
    blocks, seen = [], set()
    while head:
        assert head % PAGE == 0 and head not in seen
        seen.add(head)
        nxt, count = BLOCK_HEADER.unpack(read(head, 16))
        blocks.append([read(head + 16 + i * size, size) for i in range(count)])
        head = nxt
    return blocks


def cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


class Decoded:
    """Everything a 7.2 kernel left for the next one, decoded from RAM."""

    def __init__(self, m: Machine) -> None:
        read = m.kernel.mem.read
        root = root_of(m)
        luo = next(c for c in decode_blob_root(root)["children"] if c[0] == "LUO")
        self.luo_phys, self.luo_size = luo[1], luo[2]
        self.luo = decode_luo_ser(read(self.luo_phys, 32))
        self.session_blocks = read_chain(read, self.luo["sessions_pa"], 80)
        self.sessions: dict[bytes, dict[str, Any]] = {}
        for rec in (r for block in self.session_blocks for r in block):
            name, files, count = SESSION_SER.unpack(rec)
            chain = read_chain(read, files, 64) if files else []
            records = [FILE_SER.unpack(r) for block in chain for r in block]
            self.sessions[cstr(name)] = {
                "raw_name": name,
                "count": count,
                "file_blocks": [len(b) for b in chain],
                "files": {token: (cstr(compat), compat, data) for compat, data, token in records},
            }
        self.flb = FLB_HEADER.unpack(read(self.luo["flbs_pa"], 16))
        self.read = read

    def memfd(self, data: int) -> dict[str, Any]:
        pos, size, seals, flags, nr, first, total, vflags, order = MEMFD_SER.unpack(
            self.read(data, 48)
        )
        out: dict[str, Any] = {"pos": pos, "size": size, "seals": seals, "flags": flags}
        out.update(nr_folios=nr, first=first, total=total, vflags=vflags, order=order)
        pages, chunk = [], first
        while chunk:  # kho_vmalloc_chunk: next, then zero-terminated phys[]
            words = struct.unpack("<512Q", self.read(chunk, PAGE))
            pages += [p for p in words[1:] if p][:511]
            chunk = words[0]
        array = b"".join(self.read(p, PAGE) for p in pages)
        out["vmalloc_pages"] = pages
        out["folios"] = [
            (w & ((1 << 52) - 1), w >> 52, index)
            for w, index in (FOLIO_SER.unpack_from(array, i * 16) for i in range(nr))
        ]
        return out

    def memfd_bytes(self, data: int) -> bytes:
        info = self.memfd(data)
        out = bytearray(info["size"])
        for pfn, _flags, index in info["folios"]:
            at = index * PAGE
            chunk = self.read(pfn << 12, max(0, min(2 * MiB, info["size"] - at)))
            out[at : at + len(chunk)] = chunk
        return bytes(out)


def root_of(m: Machine) -> bytes:
    page = m.kernel.mem.read(m.kernel.kho.fdt_page, PAGE)  # type: ignore[union-attr]
    return page[: struct.unpack(">I", page[4:8])[0]]


# -- driving the model -----------------------------------------------------------------------------
def boot(release: str = "7.2", cmdline: str = CMDLINE, memory: int = 1 << 30, **kw: Any) -> Machine:
    return Machine.create(memory=memory, cmdline=cmdline, release=release, **kw)


def load(m: Machine, release: str = "7.2", cmdline: str | None = None) -> None:
    k = m.kernel
    k.kexec.kexec_file_load(make_bzimage(RELEASES[release]), None, cmdline or k.cmdline)


def kexec(
    m: Machine,
    release: str = "7.2",
    cmdline: str | None = None,
    patch: Callable[[Machine], None] | None = None,
) -> None:
    """Load ``release`` and jump; ``patch`` (:func:`after_reboot`) damages what the reboot
    call left in RAM first."""
    load(m, release, cmdline)
    if patch is not None:
        after_reboot(m, patch)
    m.kexec_exec()


def after_reboot(m: Machine, patch: Callable[[Machine], None]) -> None:
    """Run ``patch`` right after the reboot call serialized LUO, before the jump."""
    luo = luo_of(m)
    original = luo.liveupdate_reboot

    def wrapped() -> None:
        original()
        patch(m)

    luo.liveupdate_reboot = wrapped  # type: ignore[method-assign]


def get_name(luo: Luo, s: LuoSession, raw: bytes | None = None) -> bytes:
    reply = luo.ioctl(s, LIVEUPDATE_SESSION_GET_NAME, arg(raw or GET_NAME_ARG.pack(72, 0, b"")))
    return reply.data


def stage1(m: Machine, sessions: dict[bytes, dict[int, Source]]) -> list[LuoSession]:
    luo = luo_of(m)
    dev = luo.open_device()
    out = []
    for name, files in sessions.items():
        s = create(luo, dev, name)
        for token, src in files.items():
            preserve(luo, s, token, src)
        out.append(s)
    luo.release_device(dev)
    return out


def log(m: Machine) -> list[str]:
    return m.kernel.log.lines()


RETRIEVED_1 = "luo: Retrieved live update data, liveupdate number: 1"
PANIC = "Kernel panic - not syncing: The incoming tree failed to initialize properly [{}], " + (
    "disabling live update"
)


# -- the outgoing blob at late init (transcript, stage 1) ------------------------------------------
def test_luo_ser_at_late_init_matches_the_recording() -> None:
    real = transcript_hex("/sys/kernel/debug/kho/out/sub_fdts/LUO", 0)
    assert (
        real
        == (Path(TRANSCRIPT).parents[1] / "linux-7.2.13-debugfs-kho/out/sub_fdts/LUO").read_bytes()
    )
    want = decode_luo_ser(real)
    assert want["compatible"] == b"luo-v5\0\0" and want["num"] == 1 and want["sessions_pa"] == 0
    with boot() as m:
        d = Decoded(m)
        assert d.luo_size == 32 == len(real)
        got = decode_luo_ser(m.mem.read(d.luo_phys, 32))
        assert {k: v for k, v in got.items() if k != "flbs_pa"} == {
            k: v for k, v in want.items() if k != "flbs_pa"
        }
        # flbs_pa: a preserved page holding luo_flb_header_ser {pgcnt 1, count 0}
        assert got["flbs_pa"] % PAGE == 0 and got["flbs_pa"] != 0
        assert d.flb == (1, 0)
        preserved = set(m.kernel.kho.preserved_blocks())  # type: ignore[union-attr]
        assert (d.luo_phys, 0) in preserved and (got["flbs_pa"], 0) in preserved
        assert "liveupdate:  enabled (luo-v5), liveupdate number 0" in m.status()


def test_root_fdt_holds_luo_where_the_real_kernel_put_it() -> None:
    """Same add order as the recording's root (kexec-metadata, kho_test, LUO, memblock):
    the root rebuilt from the children the model added is byte-identical."""
    real = decode_blob_root(transcript_hex("/sys/kernel/debug/kho/in/fdt", 0))
    assert [(c[0], c[2]) for c in real["children"] if c[0] == "LUO"] == [("LUO", 32)]
    cmd = CMDLINE + " reserve_mem=16M:4096:oops test_kho.max_mem=64K"
    with boot(cmdline=cmd, memory=2 << 30, drivers=[DRIVERS["test_kho"]]) as m:
        ours = decode_blob_root(root_of(m))
        assert [c[0] for c in ours["children"]] == [c[0] for c in real["children"]]
        assert [c[2] for c in ours["children"]][1] == 32
        rebuilt = root_fdt_blob(ours["preserved_memory_map"], ours["children"][::-1])
        assert rebuilt == root_of(m)


def test_liveupdate_off_or_kho_off_adds_no_luo_blob() -> None:
    with boot(cmdline="console=ttyS0 kho=on") as m:
        assert [c[0] for c in decode_blob_root(root_of(m))["children"]] == ["kexec-metadata"]
        assert errno_of(luo_of(m).open_device) == errno.ENOENT
    with boot(cmdline="console=ttyS0 liveupdate=on") as m:
        assert "luo: Disabling liveupdate because KHO is disabled" in log(m)
        assert errno_of(luo_of(m).open_device) == errno.ENOENT


# -- the reboot path: records in RAM ---------------------------------------------------------------
def test_reboot_serializes_sessions_files_and_memfds() -> None:
    five = os.urandom(5000)
    three = os.urandom(3 * MiB)
    with boot() as m:
        stage1(
            m,
            {
                b"vm": {1: Source(five, pos=7, seals=F_SEAL_SHRINK | F_SEAL_GROW), 2: Source()},
                b"db": {0xABCDEF: Source(three, pos=3 * MiB)},
                b"e" * 63: {},
            },
        )
        before = Decoded(m)
        assert before.luo["sessions_pa"] == 0 and before.session_blocks == []
        luo_of(m).liveupdate_reboot()
        d = Decoded(m)
        assert d.luo["num"] == 1 and d.luo["sessions_pa"] != 0 and d.flb == (1, 0)
        assert [len(b) for b in d.session_blocks] == [3]
        assert list(d.sessions) == [b"vm", b"db", b"e" * 63]  # creation order
        assert d.sessions[b"e" * 63] == {
            "raw_name": b"e" * 63 + b"\0",
            "count": 0,
            "file_blocks": [],
            "files": {},
        }
        vm = d.sessions[b"vm"]
        assert vm["raw_name"] == b"vm".ljust(64, b"\0")
        assert vm["count"] == 2 and vm["file_blocks"] == [2]
        assert {t: f[0] for t, f in vm["files"].items()} == {1: b"memfd-v2", 2: b"memfd-v2"}
        assert vm["files"][1][1] == b"memfd-v2".ljust(48, b"\0")
        m1 = d.memfd(vm["files"][1][2])
        assert (m1["pos"], m1["size"], m1["seals"], m1["flags"]) == (7, 5000, 6, 0)
        assert m1["nr_folios"] == 2 and (m1["total"], m1["vflags"], m1["order"]) == (1, 1, 0)
        assert [(flags, index) for _, flags, index in m1["folios"]] == [(3, 0), (3, 1)]
        assert d.memfd_bytes(vm["files"][1][2]) == five
        assert m.mem.read((m1["folios"][1][0] << 12) + 904, PAGE - 904) == bytes(PAGE - 904)
        m2 = d.memfd(vm["files"][2][2])
        assert (m2["size"], m2["seals"], m2["nr_folios"], m2["first"], m2["total"]) == (
            0, F_SEAL_SEAL, 0, 0, 0,
        )  # fmt: skip
        db = d.sessions[b"db"]["files"][0xABCDEF]
        m3 = d.memfd(db[2])
        assert m3["pos"] == 3 * MiB and d.memfd_bytes(db[2]) == three
        assert sorted(i for _, _, i in m3["folios"]) == sorted({i for _, _, i in m3["folios"]})
        preserved = set(m.kernel.kho.preserved_blocks())  # type: ignore[union-attr]
        for pfn, _f, _i in m1["folios"] + m3["folios"]:
            assert any(phys == pfn << 12 for phys, _ in preserved)
        for page in m1["vmalloc_pages"] + [m1["first"]]:
            assert (page, 0) in preserved
        for block in [d.luo["sessions_pa"]]:
            assert (block, 0) in preserved


def test_records_grow_into_more_blocks() -> None:
    """51 session records per block, 63 file records per block (block.h)."""
    with boot() as m:
        sessions = {f"s{i:02}".encode(): {} for i in range(SESSIONS_PER_BLOCK + 1)}
        sessions[b"s00"] = {t: Source(bytes([t])) for t in range(1, FILES_PER_BLOCK + 2)}
        stage1(m, sessions)
        luo_of(m).liveupdate_reboot()
        d = Decoded(m)
        assert [len(b) for b in d.session_blocks] == [SESSIONS_PER_BLOCK, 1]
        assert d.sessions[b"s00"]["file_blocks"] == [FILES_PER_BLOCK, 1]
        assert d.sessions[b"s00"]["count"] == FILES_PER_BLOCK + 1
        kexec(m)
        luo = luo_of(m)
        dev = luo.open_device()
        s = retrieve(luo, dev, b"s00")
        assert contents(m, retrieve_fd(luo, s, FILES_PER_BLOCK + 1)) == bytes([64])
        assert retrieve(luo, dev, b"s51").files == []


def test_closing_the_last_session_of_a_block_frees_it() -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        made = [create(luo, dev, f"s{i}".encode()) for i in range(SESSIONS_PER_BLOCK + 1)]
        luo.release_session(made[-1])
        luo.liveupdate_reboot()
        assert [len(b) for b in Decoded(m).session_blocks] == [SESSIONS_PER_BLOCK]


# -- 7.2 -> 7.2 ------------------------------------------------------------------------------------
def test_two_stage_flow_with_several_sessions() -> None:
    big = os.urandom(MiB) * 64  # 64 MiB
    hole = bytearray(3 * MiB + 5)
    hole[:4096] = os.urandom(4096)
    hole[-5:] = b"tail!"
    files = {
        1: Source(big, pos=12345),
        2: Source(b""),
        3: Source(bytes(hole)),
        4: Source(b"short", pos=5, seals=F_SEAL_SEAL | F_SEAL_WRITE),
    }
    with boot(memory=2 << 30) as m:
        stage1(m, {b"vm": {1: files[1], 2: files[2]}, b"db": {3: files[3], 4: files[4]}, b"x": {}})
        files[4].data[0:1] = b"S"  # after preserve: the folio holds it at the reboot call
        kexec(m)
        assert "luo: Retrieved live update data, liveupdate number: 1" in log(m)
        luo = luo_of(m)
        assert "sessions:    outgoing: none; incoming: not yet read" in m.status()
        dev = luo.open_device()
        vm, db = retrieve(luo, dev, b"vm"), retrieve(luo, dev, b"db")
        assert errno_of(retrieve, luo, dev, b"vm") == errno.EINVAL
        got = {t: retrieve_fd(luo, vm if t < 3 else db, t) for t in files}
        assert contents(m, got[1]) == big and got[1].pos == 12345
        assert got[2].size == 0 and got[2].extents == [] and got[2].seals == F_SEAL_SEAL
        assert contents(m, got[3]) == bytes(hole)
        assert contents(m, got[4]) == b"Short" and got[4].pos == 5
        assert got[4].seals == F_SEAL_SEAL | F_SEAL_WRITE
        assert retrieve_fd(luo, vm, 1) is got[1]
        assert errno_of(retrieve_fd, luo, vm, 99) == errno.ENOENT
        assert get_name(luo, vm)[8:11] == b"vm\0"
        finish(luo, vm)
        finish(luo, vm)  # nothing left: success again
        assert errno_of(retrieve_fd, luo, vm, 1) == errno.ENOENT
        luo.release_session(db)  # closing a retrieved session finishes it
        x = retrieve(luo, dev, b"x")
        assert x.files == []
        kexec(m)
        assert "luo: Retrieved live update data, liveupdate number: 2" in log(m)
        # "x" was retrieved and still open at the kexec: not serialized, lost
        assert errno_of(retrieve, luo_of(m), luo_of(m).open_device(), b"x") == errno.ENOENT


def test_liveupdate_number_counts_up_and_the_blob_is_freed() -> None:
    stage2 = decode_luo_ser(transcript_hex("/sys/kernel/debug/kho/out/sub_fdts/LUO", 1))
    assert (stage2["num"], stage2["sessions_pa"]) == (2, 0)
    with boot() as m:
        for n in range(1, 4):
            kexec(m)
            assert f"luo: Retrieved live update data, liveupdate number: {n}" in log(m)
            d = Decoded(m)
            assert (d.luo["num"], d.luo["sessions_pa"]) == (n + 1, 0)
            # the incoming blob was restored and freed: in/sub_fdts/LUO still names it
            kho = m.kernel.kho
            incoming = next(b for b in kho.in_sub_fdts if b.name == "LUO")  # type: ignore[union-attr]
            assert incoming.size == 32
            pages = m.kernel.pages
            assert incoming.phys in pages.allocated or any(
                s <= incoming.phys < e for s, e in pages._free
            )


def test_state_file_keeps_incoming_sessions(tmp_path: Path) -> None:
    with boot() as m:
        stage1(m, {b"vm": {1: Source(b"kept across a save", pos=3)}, b"other": {}})
        kexec(m)
        assert luo_of(m).incoming_active and luo_of(m).deserialized is None
        save_machine(m, tmp_path / "m.state")
        with load_machine(tmp_path / "m.state") as again:
            luo = luo_of(again)
            dev = luo.open_device()
            s = retrieve(luo, dev, b"vm")
            f = retrieve_fd(luo, s, 1)
            assert contents(again, f) == b"kept across a save" and f.pos == 3
            finish(luo, s)
            luo.release_session(s)
            luo.release_session(retrieve(luo, dev, b"other"))
            save_machine(again, tmp_path / "after.state")
            with load_machine(tmp_path / "after.state") as third:
                kexec(third)
                assert "luo: Retrieved live update data, liveupdate number: 2" in log(third)


# -- uAPI of 7.2 -----------------------------------------------------------------------------------
def test_session_names_and_get_name() -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        assert errno_of(create, luo, dev, b"") == errno.EINVAL
        assert errno_of(create, luo, dev, b"n" * 64) == errno.EINVAL
        s = create(luo, dev, b"n" * 63)
        assert errno_of(create, luo, dev, b"n" * 63) == errno.EEXIST
        reply = get_name(luo, s)
        assert reply == GET_NAME_ARG.pack(72, 0, b"n" * 63)
        # strscpy: bytes of the caller's buffer past the NUL stay as they were
        t = create(luo, dev, b"ab")
        assert get_name(luo, t, GET_NAME_ARG.pack(72, 0, b"xxxxxx"))[8:14] == b"ab\0xxx"
        assert get_name(luo, t, GET_NAME_ARG.pack(72, 0, b"")[:40] + bytes(32))[8:11] == b"ab\0"
        raw = GET_NAME_ARG.pack(72, 1, b"")
        assert errno_of(get_name, luo, t, raw) == errno.EINVAL  # reserved
        assert errno_of(get_name, luo, t, GET_NAME_ARG.pack(71, 0, b"")) == errno.EINVAL
        # on the device, 0x43 is outside the table
        with pytest.raises(KernelError) as info:
            luo.ioctl(dev, LIVEUPDATE_SESSION_GET_NAME, arg(GET_NAME_ARG.pack(72, 0, b"")))
        assert info.value.errno == errno.EINVAL


def test_finish_checks_reserved() -> None:
    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a")}})
        kexec(m)
        luo = luo_of(m)
        s = retrieve(luo, luo.open_device(), b"s")
        assert errno_of(finish, luo, s, 1) == errno.EINVAL
        assert len(s.files) == 1
        finish(luo, s)


def test_a_file_is_preserved_once() -> None:
    """luo_preserved_files: EBUSY for the same inode in any session, until unpreserved."""
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        a, b = create(luo, dev, b"a"), create(luo, dev, b"b")
        src = Source(b"x", ident="inode-1")
        preserve(luo, a, 1, src)
        assert errno_of(preserve, luo, a, 1, src) == errno.EEXIST  # the token first
        assert errno_of(preserve, luo, a, 2, src) == errno.EBUSY
        assert errno_of(preserve, luo, b, 1, Source(b"y", ident="inode-1")) == errno.EBUSY
        assert src.released == 0
        luo.release_session(a)
        assert src.released == 1
        preserve(luo, b, 1, Source(b"y", ident="inode-1"))


def test_a_retrieved_file_is_busy_until_its_session_finishes() -> None:
    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a")}})
        kexec(m)
        luo = luo_of(m)
        dev = luo.open_device()
        s = retrieve(luo, dev, b"s")
        f = retrieve_fd(luo, s, 1)
        f.file_id = "host-inode-9"  # what the transport sets when it builds the file
        out = create(luo, dev, b"next")
        assert errno_of(preserve, luo, out, 1, Source(b"a", ident="host-inode-9")) == errno.EBUSY
        finish(luo, s)
        preserve(luo, out, 1, Source(b"a", ident="host-inode-9"))


def test_preserve_errnos_in_kernel_order() -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        s = create(luo, dev, b"s")
        assert errno_of(preserve, luo, s, 1, None) == errno.EBADF
        assert errno_of(preserve, luo, s, 1, Source(kind="other")) == errno.ENOENT
        assert errno_of(preserve, luo, s, 1, Source(b"x", seals=0x40)) == errno.EOPNOTSUPP
        preserve(luo, s, 1, Source(b"x", seals=0x3F))  # every seal 7.2 knows
        assert errno_of(
            luo.ioctl, s, LIVEUPDATE_SESSION_RETRIEVE_FD, arg(FD_ARG.pack(16, 0, 1))
        ) == (errno.EINVAL)
        assert errno_of(finish, luo, s) == errno.EINVAL
        # failed preserves gave back the record block they grew
        luo.release_session(s)
        luo.liveupdate_reboot()
        assert Decoded(m).session_blocks == []


def test_no_fixed_limits_only_the_block_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """6.19's 128 files and 819 sessions are gone; KHO_MAX_BLOCKS (10000) blocks per chain
    is the limit: ENOSPC (here with the cap lowered to 2 blocks)."""
    import kho_fs.model.kho_block as kho_block

    monkeypatch.setattr(kho_block, "KHO_MAX_BLOCKS", 2)
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        sessions = [create(luo, dev, f"s{i}".encode()) for i in range(2 * SESSIONS_PER_BLOCK)]
        assert errno_of(create, luo, dev, b"one-too-many") == errno.ENOSPC
        s = sessions[0]
        for token in range(2 * FILES_PER_BLOCK):
            preserve(luo, s, token, Source(b"f"))
        assert errno_of(preserve, luo, s, 999, Source(b"f")) == errno.ENOSPC
        luo.release_session(sessions[-1])
        create(luo, dev, b"one-too-many")


def test_block_allocation_failure_is_enomem(monkeypatch: pytest.MonkeyPatch) -> None:
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        for i in range(SESSIONS_PER_BLOCK):
            create(luo, dev, f"s{i}".encode())

        def no_memory(size: int) -> int:
            raise KernelError(errno.ENOMEM)

        monkeypatch.setattr(m.kernel.kho, "kho_alloc_preserve", no_memory)
        assert errno_of(create, luo, dev, b"next") == errno.ENOMEM


def test_duplicate_name_at_a_block_boundary_panics_the_next_kernel() -> None:
    """luo_session_insert grows the chain before it compares names: a duplicate that
    needed a new block leaves an empty block linked, and the next kernel refuses the chain
    (count 0) and panics -- Linux 7.2.13's behaviour."""
    with boot() as m:
        luo = luo_of(m)
        dev = luo.open_device()
        for i in range(SESSIONS_PER_BLOCK):
            create(luo, dev, f"s{i}".encode())
        assert errno_of(create, luo, dev, b"s0") == errno.EEXIST
        luo.liveupdate_reboot()
        d = Decoded(m)
        assert [len(b) for b in d.session_blocks] == [SESSIONS_PER_BLOCK, 0]
        kexec(m)
        assert "luo: Block contains invalid entry count: 0" in log(m)
        assert m.kernel.panic == PANIC.format("-EINVAL")


# -- the receiving side's checks -------------------------------------------------------------------
def _luo_child(m: Machine) -> tuple[Any, int]:
    fdt = libfdt.Fdt(root_of(m))
    return fdt, fdt.path_offset("/LUO")


def _write_root(m: Machine, fdt: Any) -> None:
    m.mem.write(m.kernel.kho.fdt_page, bytes(fdt.as_bytearray()))  # type: ignore[union-attr]


def patch_blob_size(size: int | None) -> Callable[[Machine], None]:
    def patch(m: Machine) -> None:
        fdt, node = _luo_child(m)
        if size is None:
            fdt.delprop(node, "blob-size")
        else:
            fdt.setprop(node, "blob-size", struct.pack("<Q", size))
        _write_root(m, fdt)

    return patch


def patch_luo_ser(offset: int, data: bytes) -> Callable[[Machine], None]:
    def patch(m: Machine) -> None:
        m.mem.write(Decoded(m).luo_phys + offset, data)

    return patch


def patch_session_block(offset: int, data: bytes, block: int = 0) -> Callable[[Machine], None]:
    def patch(m: Machine) -> None:
        head = Decoded(m).luo["sessions_pa"]
        for _ in range(block):
            head = struct.unpack("<Q", m.mem.read(head, 8))[0]
        m.mem.write(head + offset, data)

    return patch


INCOMPATIBLE = "luo: LUO state is incompatible with 'luo-v5'"
BAD_COUNT = "luo: Block contains invalid entry count: {}"


@pytest.mark.parametrize(
    ("patch", "lines"),
    [
        (patch_blob_size(16), ["luo: LUO state is too small (16 < 32)"]),
        (patch_blob_size(31), ["luo: LUO state is too small (31 < 32)"]),
        (
            patch_blob_size(None),
            [
                "KHO: broken KHO subnode 'LUO': missing or invalid blob-size property",
                "luo: failed to retrieve LUO state 'LUO' from KHO: -EINVAL",
            ],
        ),
        (patch_luo_ser(0, b"luo-v4"), [INCOMPATIBLE]),
        (patch_luo_ser(6, b"x"), [INCOMPATIBLE]),  # strncmp of 8 bytes: "luo-v5x" differs
        (patch_luo_ser(0, b"luo-v1\0\0"), [INCOMPATIBLE]),
        # the number is read (and logged) before the session chain is restored
        (patch_session_block(8, struct.pack("<Q", 0)), [RETRIEVED_1, BAD_COUNT.format(0)]),
        (patch_session_block(8, struct.pack("<Q", 52)), [RETRIEVED_1, BAD_COUNT.format(52)]),
    ],
)
def test_a_damaged_luo_state_panics(patch: Callable[[Machine], None], lines: list[str]) -> None:
    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a")}})
        kexec(m, patch=patch)
        got = [line for line in log(m) if line.startswith(("luo", "KHO: broken"))]
        assert got == lines
        assert m.kernel.panic == PANIC.format("-EINVAL")


def test_a_cyclic_session_chain_panics() -> None:
    def patch(m: Machine) -> None:
        head = Decoded(m).luo["sessions_pa"]
        m.mem.write(head, struct.pack("<Q", head))  # next = itself

    with boot() as m:
        stage1(m, {b"s": {}})
        kexec(m, patch=patch)
        assert "luo: Block set is corrupted" in log(m)
        assert "luo: Retrieved live update data, liveupdate number: 1" in log(m)
        assert m.kernel.panic == PANIC.format("-EINVAL")


def test_the_panic_comes_even_with_liveupdate_off() -> None:
    with boot() as m:
        stage1(m, {b"s": {}})
        kexec(m, cmdline="console=ttyS0 kho=on", patch=patch_luo_ser(0, b"luo-v9"))
        assert m.kernel.panic == PANIC.format("-EINVAL")


def test_liveupdate_off_reads_the_state_but_offers_no_device() -> None:
    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a")}})
        kexec(m, cmdline="console=ttyS0 kho=on")
        assert "luo: Retrieved live update data, liveupdate number: 1" in log(m)
        assert errno_of(luo_of(m).open_device) == errno.ENOENT
        assert "LUO" not in [c[0] for c in decode_blob_root(root_of(m))["children"]]
        kexec(m, cmdline=CMDLINE)  # no LUO state handed over: a first live update again
        assert not any("Retrieved live update data" in line for line in log(m))
        assert Decoded(m).luo["num"] == 1


@pytest.mark.parametrize(
    ("patch", "lines"),
    [
        (
            "duplicate",
            ["luo: Failed to insert session [s] -EEXIST"],
        ),
        (
            "handler",
            [
                "luo: No registered handler for compatible 'memfd-v9'",
                "luo: Failed to deserialize files for session [s] -ENOENT",
            ],
        ),
        (
            "count",
            [
                "luo: File count mismatch: expected 3, found 2",
                "luo: Failed to deserialize files for session [s] -EINVAL",
            ],
        ),
        (
            "file-block",
            [
                "luo: Block contains invalid entry count: 70",
                "luo: Failed to deserialize files for session [s] -EINVAL",
            ],
        ),
    ],
)
def test_sessions_that_cannot_be_read_fail_every_open(patch: str, lines: list[str]) -> None:
    def damage(m: Machine) -> None:
        d = Decoded(m)
        head = d.luo["sessions_pa"]
        if patch == "duplicate":
            m.mem.write(head + 16 + 80, b"s\0")  # the second record named like the first
            return
        files = SESSION_SER.unpack(m.mem.read(head + 16, 80))[1]
        if patch == "handler":
            m.mem.write(files + 16 + 64, b"memfd-v9")
        elif patch == "count":
            m.mem.write(head + 16 + 72, struct.pack("<Q", 3))
        else:
            m.mem.write(files + 8, struct.pack("<Q", 70))

    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a"), 2: Source(b"b")}, b"t": {}})
        kexec(m, patch=damage)
        assert m.kernel.panic is None
        luo = luo_of(m)
        assert errno_of(luo.open_device) == errno.EIO
        assert errno_of(luo.open_device) == errno.EIO  # the first result, every time
        got = log(m)
        for line in lines:
            assert got.count(line) == 1


def test_a_folio_that_cannot_be_restored_fails_that_retrieve_every_time() -> None:
    def damage(m: Machine) -> None:
        d = Decoded(m)
        data = d.sessions[b"s"]["files"][1][2]
        page = d.memfd(data)["vmalloc_pages"][0]
        m.mem.write(page, struct.pack("<Q", (0x1234 | (3 << 52))))  # a pfn nobody preserved

    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a" * 5000), 2: Source(b"b")}})
        kexec(m, patch=damage)
        luo = luo_of(m)
        s = retrieve(luo, luo.open_device(), b"s")
        assert errno_of(retrieve_fd, luo, s, 1) == errno.EIO
        assert errno_of(retrieve_fd, luo, s, 1) == errno.EIO  # remembered, not retried
        line = "memfd_luo: Unable to restore folio at physical address: 1234000"
        assert log(m).count(line) == 1
        assert contents(m, retrieve_fd(luo, s, 2)) == b"b"
        finish(luo, s)


def test_unknown_seals_in_the_record_are_eopnotsupp() -> None:
    def damage(m: Machine) -> None:
        d = Decoded(m)
        m.mem.write(d.sessions[b"s"]["files"][1][2] + 16, struct.pack("<I", 0x80))

    with boot() as m:
        stage1(m, {b"s": {1: Source(b"a")}})
        kexec(m, patch=damage)
        luo = luo_of(m)
        s = retrieve(luo, luo.open_device(), b"s")
        assert errno_of(retrieve_fd, luo, s, 1) == errno.EOPNOTSUPP


# -- the reboot call failing -----------------------------------------------------------------------
def test_freeze_failure_fails_the_reboot_and_undoes_it() -> None:
    class Broken(Source):
        def readinto(self, offset: int, buf: memoryview) -> int:
            raise OSError(errno.EIO, "gone")

    with boot() as m:
        good, bad = stage1(m, {b"good": {1: Source(b"ok")}, b"bad": {0x10: Broken(b"abc")}})
        load(m)
        assert errno_of(m.kexec_exec) == errno.EIO
        assert "luo: Freeze failed for token[0x10] handler[memfd-v2] err[-EIO]" in log(m)
        assert m.generation == 0
        d = Decoded(m)
        assert d.luo["sessions_pa"] == 0
        head = luo_of(m).sessions_out.blocks[0]  # type: ignore[attr-defined]
        first = SESSION_SER.unpack(m.mem.read(head + 16, 80))
        assert first == (bytes(64), 0, 0)  # the name zeroed, the file set cleared
        luo_of(m).release_session(bad)
        m.kexec_exec()
        luo = luo_of(m)
        dev = luo.open_device()
        s = retrieve(luo, dev, b"good")
        assert contents(m, retrieve_fd(luo, s, 1)) == b"ok"
        assert errno_of(retrieve, luo, dev, b"bad") == errno.ENOENT
        assert good is not None


def test_finish_refused_by_a_file_is_ebusy() -> None:
    with boot() as m:
        luo_of(m).handlers.append(BusyHandler())
        stage1(m, {b"s": {1: Source(b"a"), 2: Source(kind="busy")}})
        kexec(m)
        luo = luo_of(m)
        luo.handlers.append(BusyHandler())
        s = retrieve(luo, luo.open_device(), b"s")
        assert errno_of(finish, luo, s) == errno.EBUSY and len(s.files) == 2
        luo.release_session(s)
        assert "luo: Unable to finish session [s] on release" in log(m)


# -- between releases ------------------------------------------------------------------------------
@pytest.mark.parametrize("receiver", ["6.19", "7.0", "6.18", "6.12"])
def test_7_2_sessions_are_lost_in_older_releases(receiver: str) -> None:
    """The root is ``kho-v4``: a ``kho-v1`` kernel refuses the handover before LUO looks."""
    with boot() as m:
        src = Source(b"precious")
        stage1(m, {b"vm": {1: src}})
        kexec(m, receiver)
        assert m.kernel.panic is None and src.released == 1
        if receiver in ("6.19", "7.0"):
            assert "KHO: disabling KHO revival: -22" in log(m)
            luo = luo_of(m)
            assert errno_of(retrieve, luo, luo.open_device(), b"vm") == errno.ENOENT
            assert not any("Retrieved live update data" in line for line in log(m))
        else:
            assert m.kernel.luo is None


@pytest.mark.parametrize("sender", ["6.19", "7.0"])
def test_older_sessions_are_lost_in_7_2(sender: str) -> None:
    with boot(sender) as m:
        stage1(m, {b"vm": {1: Source(b"precious")}})
        kexec(m, "7.2")
        assert m.kernel.panic is None
        assert "KHO: disabling KHO revival" in log(m)
        luo = luo_of(m)
        assert errno_of(retrieve, luo, luo.open_device(), b"vm") == errno.ENOENT
        assert Decoded(m).luo["num"] == 1  # a first live update
