"""Crafted state files: a valid checksum over hostile metadata (issue 8, item 15).

The checksum only proves the file is the one written.  Every field of the metadata must
still be checked: deep nesting, wrong types, huge or negative numbers, missing keys,
indices that point nowhere.  Each such file is refused by ``kho-fs mount --state`` with
exit code 1 and one line ``kho-fs: cannot restore FILE: corrupted file (...)``, never a
traceback; a mutation that happens to describe a valid machine must give a machine
whose every file can be read.

Most cases run ``kho_fs.cli.main`` in-process (the refusal happens before the daemon
is forked; the fork is replaced by a check of the machine); a few go through the real
command.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import itertools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kho_fs import cli, daemon
from kho_fs.model.builtin_drivers import DRIVERS
from kho_fs.model.bzimage import make_bzimage
from kho_fs.model.errors import KernelError
from kho_fs.model.kho_blob import KhoBlobEra
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine
from kho_fs.model.releases import RELEASES
from kho_fs.state import FORMAT_VERSION, MAGIC, save_machine
from kho_fs.tree.nodes import Directory, File
from kho_fs.tree.tree import NodeTree

CMDLINE = "reserve_mem=1M:4096:oops kho=on kho_example.size=64K"
MAINLINE_CMDLINE = "reserve_mem=1M:4096:oops kho=on liveupdate=on test_kho.max_mem=64K"
DEEP = "__deeply_nested__"
FieldPath = tuple[str | int, ...]
#: The machines whose files are crafted: a v4 one, and mainline ones after a handover
#: (incoming blobs, preserved runs, restored folios) or on their first boot (test_kho's
#: folios), each finalized again (where the release has finalize) and with the next image
#: loaded; 7.2 is the blob era (radix tree, kexec-metadata).
RICH = ["v4", "6.16 handover", "6.18 first boot", "6.19 handover", "7.2 handover"]


# -- a state file with every section filled in --------------------------------------------


def build_rich_state(kind: str, path: Path) -> bytes:
    """A state file in which every field of the format holds something (see RICH)."""
    if kind == "v4":
        with Machine.create(1 << 30, 2, CMDLINE) as m:
            k = m.kernel
            k.kho.active_store(b"1")
            k.kexec.kexec_file_load(b"K" * 5000, b"I" * 300, k.cmdline)
            m.kexec_exec()
            k = m.kernel
            region = m.region("oops")
            assert region is not None
            m.mem.write(region.start, b"region bytes")
            k.kho.active_store(b"1")
            k.kexec.kexec_file_load(b"K" * 3000, None, k.cmdline)
            save_machine(m, path)
    else:
        release, when = kind.split(" ", 1)
        image = make_bzimage(RELEASES[release], 4096)
        drivers = [DRIVERS["test_kho"]]
        finalize = RELEASES[release].has_finalize
        with Machine.create(1 << 30, 2, MAINLINE_CMDLINE, drivers, release) as m:
            if finalize:
                m.kernel.kho.finalize_store(1)
            if when == "handover":
                m.kernel.kexec.kexec_file_load(image, b"I" * 300, m.kernel.cmdline)
                m.kexec_exec()
                assert "test_kho: KHO restore succeeded" in m.kernel.log.lines()
                region = m.region("oops")
                assert region is not None
                m.mem.write(region.start, b"region bytes")
                if finalize:
                    m.kernel.kho.finalize_store(1)
            kho = m.kernel.kho
            assert isinstance(kho, KhoMainline)
            if finalize:
                assert kho.finalized and kho._track is not None
            else:
                assert isinstance(kho, KhoBlobEra) and kho.radix is not None
            m.kernel.kexec.kexec_file_load(image, None, m.kernel.cmdline)
            save_machine(m, path)
    meta, rest = split(path.read_bytes())
    # Keep the blobs, drop the RAM chunks (megabytes the metadata cases do not need).
    (nblobs,) = struct.unpack_from("<I", rest)
    end = 4
    for _ in range(nblobs):
        (n,) = struct.unpack_from("<Q", rest, end)
        end += 8 + n
    return join(json.dumps(meta).encode(), rest[:end] + struct.pack("<QI", (1 << 64) - 1, 0))


@pytest.fixture(scope="module", params=RICH)
def rich_state(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_rich_state(request.param, tmp_path_factory.mktemp("state") / "rich.state")


@pytest.fixture(scope="module")
def rich_v4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_rich_state("v4", tmp_path_factory.mktemp("state") / "v4.state")


@pytest.fixture(scope="module")
def rich_mainline(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_rich_state("6.16 handover", tmp_path_factory.mktemp("state") / "6.16.state")


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(metadata, everything between it and the checksum)."""
    (meta_len,) = struct.unpack_from("<Q", data, len(MAGIC) + 4)
    start = len(MAGIC) + 12
    return json.loads(data[start : start + meta_len]), data[start + meta_len : -32]


def join(raw_meta: bytes, rest: bytes) -> bytes:
    """A state file around ``raw_meta`` with a valid checksum."""
    body = MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(raw_meta)) + raw_meta + rest
    return body + hashlib.sha256(body).digest()


def encode(meta: object) -> bytes:
    text = json.dumps(meta, separators=(",", ":"))
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


# -- the mutations --------------------------------------------------------------------------


def leaves(value: object, path: FieldPath = ()) -> Iterator[tuple[FieldPath, object]]:
    """Every value in the metadata with its path; of long lists only the first and last
    elements (the rest have the same shape)."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        indices = range(len(value)) if len(value) <= 2 else (0, len(value) - 1)
        for i in indices:
            yield from leaves(value[i], (*path, i))


def replaced(meta: dict[str, Any], path: FieldPath, new: object) -> dict[str, Any]:
    out = copy.deepcopy(meta)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return out


def deleted(meta: dict[str, Any], path: FieldPath) -> dict[str, Any]:
    out = copy.deepcopy(meta)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return out


def driver_owned(meta: dict[str, Any], path: FieldPath) -> bool:
    """Inside kho_example's own state (``kernel.drivers[i][1]``): that driver checks it
    loosely (test_kho's state is checked as strictly as the rest)."""
    if path[:2] != ("kernel", "drivers") or len(path) <= 3 or path[3] != 1:
        return False
    return bool(meta["kernel"]["drivers"][path[2]][0] == "kho_example")


def bad_values(old: object) -> list[object]:
    """Values of the wrong type or range for a field holding ``old``."""
    if type(old) is bool:
        return [0, "x", None]
    if type(old) is int:
        return [1.5, "x", 1 << 64, 10**30, -1, None, DEEP]
    if isinstance(old, str):
        return [5, None, [], DEEP]
    if old is None:
        return [1.5, "x", -1, [], DEEP]
    if isinstance(old, list):
        return [{}, 1, None, [*old, old[0]] if old else [1], DEEP]
    return [[], 1, None, DEEP]


def must_refuse(path: FieldPath, old: object, new: object) -> bool:
    """Whether replacing ``old`` at ``path`` by ``new`` can never be a valid file."""
    if new == DEEP or isinstance(new, float) or new in (1 << 64, 10**30):
        return True
    if type(old) is int and new == -1:
        return path[-1] != 3 or path[:2] != ("kernel", "memblock")  # only a nid may be -1
    if type(old) is int and not isinstance(new, int):  # blob indices may be null
        nullable = path[-1] in ("boot_params", "fdt", "fdt_in", "dt_fw") or (
            "segments" in path and path[-1] == 1
        )
        return new is not None or not nullable
    return False


def blob_of(meta: dict[str, Any], segment: str) -> int:
    """The blob index of the loaded image's segment ``segment``."""
    return next(s[1] for s in meta["kernel"]["kexec"]["segments"] if s[0] == segment)


class Accepted(Exception):
    """The mount got past the state file (the daemon would have been started)."""


@pytest.fixture
def mount_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[bytes], tuple[int, str]]:
    """Run ``kho-fs mount MNT --state FILE`` in this process on a file holding ``data``:
    ``(exit code, stderr)``; a machine that is accepted is read through its whole file
    tree instead of being mounted (raises :class:`Accepted` when that worked)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "crafted.state"

    def start_daemon(profile: Any, *args: object) -> int:
        exercise(profile)
        profile.machine.close()
        raise Accepted

    monkeypatch.setattr(daemon, "_start_daemon", start_daemon)

    def run(data: bytes) -> tuple[int, str]:
        state.write_bytes(data)
        capsys.readouterr()
        code = cli.main(["mount", str(mnt), "--state", str(state)])
        return code, capsys.readouterr().err

    return run


def exercise(profile: Any) -> None:
    """Read every file of the machine's tree, as a mount would serve it."""
    profile.machine.status()
    tree = NodeTree(profile)
    todo = [tree.root]
    while todo:
        node = todo.pop()
        for _, child in tree.children(node):
            if isinstance(child, Directory):
                todo.append(child)
            elif isinstance(child, File):
                child.st_size()
                try:
                    handle = child.open(os.O_RDONLY, 0)
                except KernelError as exc:
                    assert exc.errno in (errno.EACCES, errno.EIO), exc
                    continue
                handle.read(0, 4096)


def check_refused(code: int, err: str, state_hint: str = "crafted.state") -> None:
    assert code == 1, err
    assert err.startswith("kho-fs: cannot restore ") and state_hint in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert len(err) < 400, err


def outcome(run: Callable[[bytes], tuple[int, str]], data: bytes) -> str:
    """ "refused" (with the one-line message checked) or "accepted" (and usable)."""
    try:
        code, err = run(data)
    except Accepted:
        return "accepted"
    check_refused(code, err)
    return "refused"


# -- tests --------------------------------------------------------------------------------


def test_the_rich_state_itself_is_accepted(rich_state, mount_in_process):
    assert outcome(mount_in_process, rich_state) == "accepted"


@pytest.mark.parametrize(
    "cmdline",
    [
        "kho=on kho_scratch=0%",  # empty scratch areas
        "kho=on kho_scratch=1K,1K",  # the boot stops in scratch-only mode
        "kho=off reserve_mem=1M:4096:a",
        "kho=on kho_scratch=200G,1G",  # no scratch at all
        "",
        CMDLINE,
    ],
)
def test_every_machine_the_model_makes_is_accepted(cmdline, tmp_path, mount_in_process):
    """The checks refuse nothing the emulator itself writes (activated, loaded, after a
    handover into other regions, after a reboot)."""
    for nodes in (1, 2):
        with Machine.create(1 << 30, nodes, cmdline) as m:
            steps: list[Callable[[], object]] = [
                lambda: m.kernel.kho.active_store(b"1"),
                lambda: m.kernel.kexec.kexec_file_load(
                    b"K" * 5000, None, "kho=on reserve_mem=2M:4096:b"
                ),
                m.kexec_exec,
                lambda: m.kernel.kho.active_store(b"1"),
                lambda: m.kernel.kexec.kexec_file_load(b"K" * 3000, b"I", m.kernel.cmdline),
                lambda: m.kernel.kho.active_store(b"0"),
                lambda: m.kernel.kexec.kexec_load(b"K" * 3000, None, m.kernel.cmdline),
            ]
            for step in [*steps, m.reboot, *steps[:2]]:
                with contextlib.suppress(KernelError):  # no KHO, a stopped boot...
                    step()
                path = tmp_path / "model.state"
                save_machine(m, path)
                assert outcome(mount_in_process, path.read_bytes()) == "accepted"


MAINLINE_MACHINE_RELEASES = ["6.12", "6.16", "6.17", "6.18", "6.19", "7.2"]
MAINLINE_MACHINE_CMDLINES = [
    "kho=on kho_scratch=0%",  # empty scratch areas
    "kho=on kho_scratch=1K,1K,1K",  # the handover boot stops in scratch-only mode
    "kho=off reserve_mem=1M:4096:a",
    "kho=on kho_scratch=200G,1G,1G",  # no scratch at all
    "",
    MAINLINE_CMDLINE,
]
# CI: every release with two command lines, every command line with two releases;
# KHO_FS_STATE_FULL=1 runs the whole product (36 cases, several minutes)
MAINLINE_MACHINE_CASES = (
    list(itertools.product(MAINLINE_MACHINE_RELEASES, MAINLINE_MACHINE_CMDLINES))
    if os.environ.get("KHO_FS_STATE_FULL")
    else [
        (r, MAINLINE_MACHINE_CMDLINES[(i + k) % 6])
        for i, r in enumerate(MAINLINE_MACHINE_RELEASES)
        for k in (0, 3)
    ]
)


@pytest.mark.parametrize(("release", "cmdline"), MAINLINE_MACHINE_CASES)
def test_every_mainline_machine_the_model_makes_is_accepted(
    release, cmdline, tmp_path, mount_in_process
):
    """The same for 6.12, the mainline releases and the blob era with test_kho: finalized,
    aborted, loaded, after a handover, after a kexec into another release, after a
    reboot."""
    other = make_bzimage(RELEASES["6.19" if release != "6.19" else "6.17"], 4096)

    def finalize(value: int) -> None:
        kho = m.kernel.kho
        if isinstance(kho, KhoMainline) and kho.debugfs and m.kernel.panic is None:
            kho.finalize_store(value)  # only through debugfs, as the mount does

    with Machine.create(1 << 30, 2, cmdline, [DRIVERS["test_kho"]], release) as m:
        steps: list[Callable[[], object]] = [
            lambda: finalize(1),
            lambda: m.kernel.kexec.kexec_file_load(
                b"K" * 5000, None, "kho=on reserve_mem=2M:4096:b test_kho.max_mem=64K"
            ),
            m.kexec_exec,
            lambda: finalize(1),
            lambda: m.kernel.kexec.kexec_file_load(other, b"I", m.kernel.cmdline),
            lambda: finalize(0),
            lambda: finalize(1),
            m.kexec_exec,
            lambda: m.kernel.kexec.kexec_load(b"K" * 3000, None, m.kernel.cmdline),
        ]
        for step in [*steps, m.reboot, *steps[:2]]:
            with contextlib.suppress(KernelError):  # no KHO, a stopped boot...
                step()
            path = tmp_path / "model.state"
            save_machine(m, path)
            assert outcome(mount_in_process, path.read_bytes()) == "accepted"


def test_every_field_with_a_bad_value_or_missing_is_refused(rich_state, mount_in_process):
    meta, rest = split(rich_state)
    cases = 0
    for path, old in list(leaves(meta)):
        if not path or driver_owned(meta, path):
            continue
        if isinstance(path[-1], str):  # a missing key
            result = outcome(mount_in_process, join(encode(deleted(meta, path)), rest))
            assert result == "refused", f"missing {path} was accepted"
            cases += 1
        for new in bad_values(old):
            result = outcome(mount_in_process, join(encode(replaced(meta, path, new)), rest))
            if must_refuse(path, old, new):
                assert result == "refused", f"{path}: {old!r} -> {new!r} was accepted"
            cases += 1
    assert cases > 400


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: replaced(m, ("machine", "memory"), -(1 << 30)), "machine.memory"),
        (lambda m: replaced(m, ("machine", "memory"), 1 << 62), "machine.memory"),
        (lambda m: replaced(m, ("machine", "nodes"), 10**100), "machine.nodes"),
        (lambda m: replaced(m, ("machine", "generation"), "1"), "not an integer"),
        (lambda m: deleted(m, ("kernel", "memblock")), "kernel.memblock is missing"),
        (lambda m: replaced(m, ("kernel", "kho", "fdt"), -1), "kernel.kho.fdt"),
        (lambda m: replaced(m, ("kernel", "kho", "fdt"), 10**6), "kernel.kho.fdt"),
        (lambda m: replaced(m, ("kernel", "kho", "dt_fw"), blob_of(m, "kernel")), "valid FDT"),
        (lambda m: replaced(m, ("kernel", "kho", "active"), 0), "not true or false"),
        (lambda m: replaced(m, ("kernel", "kho", "active"), False), "FDT exactly when"),
        (lambda m: replaced(m, ("kernel", "reserve_mem", 0, 2), -4096), "reserve_mem[0]"),
        (lambda m: replaced(m, ("kernel", "reserve_mem", 0, 1), 1 << 50), "is not RAM"),
        (lambda m: replaced(m, ("kernel", "kho", "scratch", 0), [1 << 50, 1]), "is not RAM"),
        (lambda m: replaced(m, ("kernel", "memblock", "memory", 0, 1), 0), "out of range"),
        (lambda m: replaced(m, ("kernel", "memblock", "reserved"), [[0, 1, 0, 0]] * 2), "ncons"),
        (lambda m: replaced(m, ("kernel", "log", 0), [1, "a\nb", 6]), "NUL or newline"),
        (lambda m: replaced(m, ("kernel", "log", 0, 0), 1 << 63), "kernel.log[0][0]"),
        (lambda m: replaced(m, ("kernel", "cmdline"), "x" * 5000), "longer than"),
        (lambda m: replaced(m, ("kernel", "cmdline"), "\u20ac"), "not a byte string"),
        (lambda m: replaced(m, ("kernel", "kexec", "refs", "kernel"), None), "cannot boot"),
        (lambda m: replaced(m, ("kernel", "kexec", "refs", "kernel"), "nope"), "no segment"),
        (lambda m: replaced(m, ("kernel", "kexec", "segments", 0, 2), 0), "is not RAM"),
        (lambda m: replaced(m, ("kernel", "drivers", 0, 1), {"buffer": [-5, 4096]}), "driver"),
        (lambda m: replaced(m, ("kernel", "drivers", 0, 1), {"buffer": "x"}), "ValueError"),
        (lambda m: replaced(m, ("kernel", "boot"), DEEP), "nested too deeply"),
        (lambda m: DEEP, "nested too deeply"),
        (lambda m: [m], "metadata is not an object"),
    ],
)
def test_crafted_values_are_refused_with_the_field_named(rich_v4, mount_in_process, mutate, reason):
    meta, rest = split(rich_v4)
    code, err = mount_in_process(join(encode(mutate(meta)), rest))
    check_refused(code, err)
    assert reason in err, err


def kho_of(meta: dict[str, Any]) -> dict[str, Any]:
    return meta["kernel"]["kho"]  # type: ignore[no-any-return]


def free_page(meta: dict[str, Any]) -> int:
    """A page the page allocator has not handed out."""
    return int(meta["kernel"]["pages"]["free"][0][0])


def test_kho_state(meta: dict[str, Any]) -> dict[str, Any]:
    return meta["kernel"]["drivers"][0][1]  # type: ignore[no-any-return]


test_kho_state.__test__ = False  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: replaced(m, ("kernel", "release"), "9.9"), "kernel.release names no release"),
        (lambda m: replaced(m, ("machine", "cold_release"), "v5"), "machine.cold_release"),
        (lambda m: replaced(m, ("kernel", "pages"), None), "although the kernel is running"),
        (
            lambda m: replaced(m, ("kernel", "pages", "allocated", 0, 0), free_page(m) + 1),
            "kernel.pages.allocated[0] is not aligned",
        ),
        (
            lambda m: replaced(m, ("kernel", "pages", "free", 0), [4096, 8192]),
            "hands out memory memblock kept",
        ),
        (
            lambda m: replaced(
                m, ("kernel", "pages", "allocated"), m["kernel"]["pages"]["allocated"] * 2
            ),
            "repeats a block",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "fdt_page"), free_page(m)),
            "kernel.kho.fdt_page is not a block of order 0 the kernel allocated",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "out_fdt", 1), kho_of(m)["fdt_in_phys"]),
            "kernel.kho.out_fdt is not the root FDT page",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "in_sub_fdts", 0, 3), 1),
            "kernel.kho.serial does not match",
        ),
        (lambda m: replaced(m, ("kernel", "kho", "serial"), 2), "kernel.kho.serial"),
        (
            lambda m: replaced(m, ("kernel", "kho", "track", "orders", 0, 1, 0, 1), free_page(m)),
            "kernel.kho.track.orders[0][1][0][1] is not a block",
        ),
        (
            lambda m: replaced(
                m, ("kernel", "kho", "track", "slab", 0), kho_of(m)["track"]["orders"][0][1][0][1]
            ),
            "is used twice",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "track", "slab", 0), free_page(m) + 512),
            "kernel.kho.track.slab[0] is not a block",
        ),
        (lambda m: replaced(m, ("kernel", "kho", "participants"), ["memblock"] * 2), "twice"),
        (
            lambda m: replaced(m, ("kernel", "kho", "participants"), ["kho_example"]),
            "participant 'kho_example', which is not available",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "memblock"), None),
            "participant 'memblock', which is not available",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "preserved_runs", 0), [(1 << 64) - 1, 2, 0]),
            "ends past 2^64",
        ),
        (lambda m: replaced(m, ("kernel", "kho", "scratch_table"), 1 << 50), "is not RAM"),
        (lambda m: replaced(m, ("kernel", "kho", "fdt_in_len"), 1 << 31), "is not RAM"),
        (
            lambda m: replaced(m, ("kernel", "kho", "restored", 1), -4096),
            "kernel.kho.restored[1] is out of range",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "restored"), kho_of(m)["restored"] * 2),
            "repeats an address",
        ),
        (lambda m: replaced(m, ("kernel", "drivers"), []), "drivers the kernel runs (test_kho)"),
        (
            lambda m: replaced(m, ("kernel", "drivers", 0, 1, "folios"), [[free_page(m), 0]]),
            "refused by driver 'test_kho': ValueError: folios[0]",
        ),
        (
            lambda m: replaced(m, ("kernel", "drivers", 0, 1, "csum"), 1 << 32),
            "csum is not an integer",
        ),
        (
            lambda m: deleted(m, ("kernel", "drivers", 0, 1, "max_mem")),
            "kernel.drivers[0][1] is refused by driver 'test_kho': ValueError: max_mem missing",
        ),
        (lambda m: replaced(m, ("kernel", "kexec", "release", 0), "6.99"), "names no release"),
        (lambda m: replaced(m, ("kernel", "kexec", "kho_fdt_phys"), 1 << 50), "is not RAM"),
        (lambda m: replaced(m, ("kernel", "boot", "notes"), ["a\nb"]), "NUL or newline"),
    ],
)
def test_crafted_mainline_values_are_refused_with_the_field_named(
    rich_mainline, mount_in_process, mutate, reason
):
    meta, rest = split(rich_mainline)
    code, err = mount_in_process(join(encode(mutate(meta)), rest))
    check_refused(code, err)
    assert reason in err, err


@pytest.fixture(scope="module")
def rich_blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_rich_state("7.2 handover", tmp_path_factory.mktemp("state") / "7.2.state")


def radix_of(meta: dict[str, Any]) -> dict[str, Any]:
    return meta["kernel"]["kho"]["blob"]["radix"]  # type: ignore[no-any-return]


def radix_root_table(meta: dict[str, Any]) -> int:
    radix = radix_of(meta)
    return next(i for i, t in enumerate(radix["tables"]) if t[0] == radix["root"])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda m: replaced(m, ("kernel", "kho", "blob", "radix", "root"), free_page(m)),
            "kernel.kho.blob.radix.root is not a block",
        ),
        (
            lambda m: replaced(
                m, ("kernel", "kho", "blob", "radix", "leaves"), radix_of(m)["leaves"] * 2
            ),
            "repeats a page",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "blob", "radix", "leaves"), []),
            "where a level-0 node belongs",
        ),
        (
            lambda m: replaced(
                m,
                ("kernel", "kho", "blob", "radix", "tables", radix_root_table(m), 1, 0, 1),
                radix_of(m)["leaves"][0],
            ),
            "where a level-4 node belongs",
        ),
        (
            lambda m: replaced(
                m,
                ("kernel", "kho", "blob", "radix", "tables", radix_root_table(m), 1, 0, 0),
                512,
            ),
            "is out of range",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "blob", "metadata_phys"), free_page(m)),
            "kernel.kho.blob.metadata_phys is not a block",
        ),
        (
            lambda m: replaced(m, ("kernel", "kho", "blob", "previous_release"), "x" * 65),
            "longer than 64 bytes",
        ),
        (lambda m: deleted(m, ("kernel", "kho", "blob")), "kernel.kho.blob is missing"),
    ],
)
def test_crafted_blob_era_values_are_refused_with_the_field_named(
    rich_blob, mount_in_process, mutate, reason
):
    meta, rest = split(rich_blob)
    code, err = mount_in_process(join(encode(mutate(meta)), rest))
    check_refused(code, err)
    assert reason in err, err


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe", b"NaN", b'{"machine": 1e999}', b"[" * 5000 + b"]" * 5000],
)
def test_metadata_that_is_not_json_is_refused(rich_v4, mount_in_process, raw):
    _, rest = split(rich_v4)
    code, err = mount_in_process(join(raw, rest))
    check_refused(code, err)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_metadata_is_refused_or_gives_a_usable_machine(rich_state, mount_in_process, data):
    meta, rest = split(rich_state)
    paths = [path for path, _ in leaves(meta) if path]
    path = data.draw(st.sampled_from(paths))
    outcome(mount_in_process, join(encode(replaced(meta, path, data.draw(JSON))), rest))


@pytest.mark.parametrize("rich", ["rich_v4", "rich_mainline"])
def test_the_real_command_refuses_crafted_files(rich, request, tmp_path):
    meta, rest = split(request.getfixturevalue(rich))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for i, mutated in enumerate(
        [
            replaced(meta, ("kernel", "boot"), DEEP),
            replaced(meta, ("kernel", "reserve_mem", 0, 2), -1),
            deleted(meta, ("kernel", "kho")),
            replaced(meta, ("kernel", "memblock", "current_limit"), 1e400),
            replaced(meta, ("kernel", "release"), "6.15"),
            replaced(meta, ("kernel", "pages", "free"), [[0, 1 << 20]]),
        ]
    ):
        state = tmp_path / f"crafted-{i}.state"
        state.write_bytes(join(encode(mutated), rest))
        r = subprocess.run(
            [sys.executable, "-m", "kho_fs", "mount", str(mnt), "--state", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        check_refused(r.returncode, r.stderr, str(state))
        assert r.stdout == "" and "corrupted file (bad metadata: " in r.stderr
        assert not os.path.ismount(mnt)
