"""Region files under every name the kernel accepts (issue 8, items 1 and 6), in-process.

Spec 2.4: a ``reserve_mem=`` name is 1-15 bytes, any byte but NUL and the separators, not
checked against FDT node-name rules.  Every such region gets one file under
``machine/reserve_mem``, spelled with the documented escape (README, decisions.md):
the name's bytes, ``%`` -> ``%25``, ``/`` -> ``%2F``, the whole names ``.`` and ``..``
-> ``%2E`` and ``%2E%2E``.  Expected spellings are written out here as bytes.
"""

from __future__ import annotations

import logging
import os

import pytest

from kho_fs.model.drivers import BUILTIN_DRIVERS, DriverRegion, KhoDriver
from kho_fs.model.machine import Machine
from kho_fs.tree.nodes import ControlFile, Directory, File, RegionFile
from kho_fs.tree.profile_v4 import V4Profile, region_file_name, region_label
from kho_fs.tree.tree import NodeTree, decode_name, encode_name

SZ_1M = 1 << 20

# (name as the command line holds it, file name in the tree), both as bytes.
SPELLINGS = [
    (b".", b"%2E"),
    (b"..", b"%2E%2E"),
    (b"a", b"a"),
    (b"a/b", b"a%2Fb"),
    (b"/", b"%2F"),
    (b"100%", b"100%25"),
    (b"\xc3\xa9", b"\xc3\xa9"),  # UTF-8 "é": these two bytes, not "Ã©" encoded again
    (b"x\xffy", b"x\xffy"),  # not UTF-8: the same bytes
]
MORE_SPELLINGS = [
    (b"...", b"..."),
    (b".a", b".a"),
    (b"./", b".%2F"),
    (b"//", b"%2F%2F"),
    (b"a/", b"a%2F"),
    (b"%2F", b"%252F"),
    (b"%", b"%25"),
    (b"a:b", b"a:b"),
    (b"\x80\x81", b"\x80\x81"),
    (b"caf\xc3\xa9", b"caf\xc3\xa9"),
    (b"\xe2\x82\xac", b"\xe2\x82\xac"),
]
EIGHT = b"kho=on " + b" ".join(b"reserve_mem=1M:4096:" + name for name, _ in SPELLINGS)


def latin1(raw: bytes) -> str:
    """The model's text for these bytes."""
    return raw.decode("latin-1")


@pytest.mark.parametrize(("name", "spelled"), SPELLINGS + MORE_SPELLINGS)
def test_spelling_is_documented_and_reversible(name, spelled):
    assert encode_name(region_file_name(latin1(name))) == spelled
    assert region_label(decode_name(spelled)) == latin1(name)


def test_every_spelling_is_distinct():
    spelled = [s for _, s in SPELLINGS + MORE_SPELLINGS]
    assert len(set(spelled)) == len(spelled)
    assert all(s not in (b".", b"..") and b"/" not in s for s in spelled)


def tree_of(machine: Machine) -> NodeTree:
    return NodeTree(V4Profile(machine))


def listing(tree: NodeTree, path: str) -> set[bytes]:
    directory = tree.resolve(path)
    assert isinstance(directory, Directory), path
    return {encode_name(name) for name, _ in tree.children(directory)}


def region(tree: NodeTree, spelled: bytes) -> RegionFile:
    directory = tree.resolve("machine/reserve_mem")
    assert directory is not None
    node = tree.lookup(directory, decode_name(spelled))
    assert isinstance(node, RegionFile), spelled
    return node


def write(tree: NodeTree, path: str, data: bytes) -> None:
    node = tree.resolve(path)
    assert isinstance(node, File), path
    assert node.open(os.O_WRONLY, 0).write(0, data) == len(data)


def assert_serving(tree: NodeTree) -> None:
    """``machine/`` answers: the files a user needs to reboot out of any state."""
    assert {b"cmdline", b"reboot", b"status", b"dmesg", b"kexec"} <= listing(tree, "machine")
    assert isinstance(tree.resolve("machine/reboot"), ControlFile)


def assert_regions(tree: NodeTree, spellings=SPELLINGS, size=SZ_1M) -> None:
    assert listing(tree, "machine/reserve_mem") == {s for _, s in spellings}
    for _, spelled in spellings:
        assert region(tree, spelled).st_size() == size


def test_accepted_names_on_the_cold_command_line():
    with Machine.create(cmdline=latin1(EIGHT)) as m:
        tree = tree_of(m)
        assert_regions(tree)
        assert_serving(tree)
        # Each file is its own region: a byte written through one is read back only there.
        for i, (_, spelled) in enumerate(SPELLINGS):
            assert region(tree, spelled).open(os.O_RDWR, 0).write(0, bytes([i + 1]) * 4) == 4
        for i, (_, spelled) in enumerate(SPELLINGS):
            assert (
                region(tree, spelled).open(os.O_RDONLY, 0).read(0, 5) == bytes([i + 1]) * 4 + b"\0"
            )


@pytest.mark.parametrize("name", [b"..", b".", b"a/b"])
def test_cmdline_and_reboot_into_such_names_and_back(name):
    with Machine.create(cmdline="kho=on reserve_mem=1M:4096:ok") as m:
        tree = tree_of(m)
        write(tree, "machine/cmdline", b"kho=on reserve_mem=1M:4096:" + name + b"\n")
        write(tree, "machine/reboot", b"x\n")
        spelled = dict(SPELLINGS)[name]
        assert listing(tree, "machine/reserve_mem") == {spelled}
        assert_serving(tree)
        write(tree, "machine/cmdline", b"kho=on reserve_mem=1M:4096:ok\n")
        write(tree, "machine/reboot", b"x\n")
        assert listing(tree, "machine/reserve_mem") == {b"ok"}


def test_kexec_with_such_names_revives_every_region():
    with Machine.create(cmdline="kho=on") as m:
        tree = tree_of(m)
        write(tree, "machine/cmdline", EIGHT + b"\n")
        write(tree, "machine/reboot", b"1")
        for i, (_, spelled) in enumerate(SPELLINGS):
            region(tree, spelled).open(os.O_RDWR, 0).write(100, b"kept%d" % i)
        write(tree, "sys/kernel/kho/active", b"1")
        write(tree, "machine/kexec/kernel", b"K" * 4096)
        write(tree, "machine/kexec/cmdline", EIGHT + b"\n")
        write(tree, "machine/kexec/control", b"kexec_file_load\n")
        write(tree, "machine/kexec/control", b"exec\n")
        assert m.generation == 1
        assert_regions(tree)
        assert_serving(tree)
        for i, (_, spelled) in enumerate(SPELLINGS):
            assert region(tree, spelled).open(os.O_RDONLY, 0).read(100, 5) == b"kept%d" % i
        log = m.kernel.log.render()
        for name, _ in SPELLINGS:
            assert f"Revived memory reservation '{latin1(name)}' from KHO" in log


class AwkwardDriver(KhoDriver):
    """A plug-in whose region names are every awkward class, with one empty and one
    duplicate name that can have no file."""

    name = "my/drv"

    def regions(self) -> list[DriverRegion]:
        names = ["..", ".", "a", "a/b", "\xc3\xa9", "x\xffy", "", "dup", "dup", "%"]
        return [DriverRegion(n, (1 << 30) + i * 4096, 4096) for i, n in enumerate(names)]


class BrokenDriver(KhoDriver):
    name = "broken"

    def regions(self) -> list[DriverRegion]:
        raise RuntimeError("plug-in bug")


class WideDriver(KhoDriver):
    name = "wide"

    def regions(self) -> list[DriverRegion]:
        return [DriverRegion("\u20ac", 1 << 30, 4096), DriverRegion("fine", 1 << 30, 4096)]


def test_driver_region_names(caplog):
    drivers = [*BUILTIN_DRIVERS.values(), AwkwardDriver, BrokenDriver, WideDriver]
    with (
        caplog.at_level(logging.ERROR),
        Machine.create(cmdline="kho=on kho_example.size=1M", drivers=drivers) as m,
    ):
        tree = tree_of(m)
        assert listing(tree, "machine/drivers") == {b"kho_example", b"my%2Fdrv", b"wide"}
        assert listing(tree, "machine/drivers/my%2Fdrv") == {
            b"%2E%2E", b"%2E", b"a", b"a%2Fb", b"\xc3\xa9", b"x\xffy", b"dup", b"%25"
        }  # fmt: skip
        assert listing(tree, "machine/drivers/wide") == {b"fine"}
        assert listing(tree, "machine/drivers/kho_example") == {b"buffer"}
        assert_serving(tree)
    assert "plug-in bug" in caplog.text  # the broken driver is logged and left out
    assert "component ''" in caplog.text and "declares this path twice" in caplog.text
    assert "no byte string" in caplog.text


def test_machine_files_survive_a_failure_listing_the_kernel_files(monkeypatch, caplog):
    with Machine.create(cmdline="kho=on reserve_mem=1M:4096:ok") as m:
        profile = V4Profile(m)
        tree = NodeTree(profile)
        assert tree.resolve("machine/reserve_mem/ok") is not None

        def broken(*args):
            raise RuntimeError("kernel entries bug")
            yield

        monkeypatch.setattr(profile, "_kernel_entries", broken)
        m.version += 1
        with caplog.at_level(logging.ERROR):
            assert_serving(tree)
        assert "kernel entries bug" in caplog.text
        assert tree.resolve("machine/reserve_mem/ok") is None
        monkeypatch.undo()
        write(tree, "machine/reboot", b"1")
        assert tree.resolve("machine/reserve_mem/ok") is not None
