"""NodeTree: resolution of a profile into stable node instances, lazily and incrementally."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from kho_fs.model.errors import KernelError
from kho_fs.tree.nodes import BinaryAttribute, Directory, Node, StagingFile, TextAttribute
from kho_fs.tree.tree import ROOT_INO, Entry, ManualProfile, NodeTree, decode_name, encode_name


class CountingProfile(ManualProfile):
    def __init__(self, entries=()):
        super().__init__(entries)
        self.entry_calls = 0

    def entries(self):
        self.entry_calls += 1
        return super().entries()


def text(mode: int = 0o444, value: str = "0\n"):
    return lambda: TextAttribute(mode, lambda: value)


def blob(data: bytes = b"\xd0\x0d\xfe\xed"):
    return lambda: BinaryAttribute(0o400, lambda: data)


def base_entries(active: bool = False, gen: int = 0) -> list[Entry]:
    entries = [
        Entry("sys/kernel/kho/active", text(0o600)),
        Entry("sys/kernel/kho/scratch_phys", text(0o400)),
        Entry("sys/kernel/kexec_loaded", text()),
        Entry("sys/kernel/debug", lambda: Directory(0o700)),
        Entry("sys/kernel/debug/memblock/memory", text()),
    ]
    if active:
        entries.append(Entry("sys/kernel/kho/dt", blob(), gen))
    return entries


def test_paths_and_implied_directories():
    tree = NodeTree(ManualProfile(base_entries()))
    assert tree.root.ino == ROOT_INO
    kho = tree.resolve("sys/kernel/kho")
    assert isinstance(kho, Directory) and kho.mode == 0o040755
    debug = tree.resolve("/sys/kernel/debug/")
    assert debug is not None and debug.mode == 0o040700
    active = tree.lookup(kho, "active")
    assert active is tree.resolve("sys/kernel/kho/active")
    assert tree.path(active) == "sys/kernel/kho/active"
    assert tree.parent(active) is kho
    assert tree.node(active.ino) is active
    assert tree.lookup(kho, "dt") is None
    assert tree.lookup(active, "x") is None  # not a directory
    assert tree.resolve("") is tree.root


def test_readdir_order_is_alphabetical():
    entries = [Entry(f"d/{name}", text()) for name in ("zeta", "dt_max", "active", "dt", "B")]
    tree = NodeTree(ManualProfile(entries))
    d = tree.resolve("d")
    assert [name for name, _ in tree.children(d)] == ["B", "active", "dt", "dt_max", "zeta"]
    assert [name for name, _ in tree.children(tree.root)] == ["d"]
    assert tree.subdir_count(tree.root) == 1


def test_inodes_are_unique_and_stable():
    profile = ManualProfile(base_entries())
    tree = NodeTree(profile)
    before = {path: tree.resolve(path) for path in ("sys", "sys/kernel/kho/active")}
    inos = {n.ino for _, n in tree.children(tree.resolve("sys/kernel/kho"))}
    assert len(inos) == 2 and ROOT_INO not in inos
    profile.set_entries(base_entries(active=True, gen=1))
    for path, node in before.items():
        assert tree.resolve(path) is node
        assert not node.removed


def test_no_rebuild_without_version_change():
    profile = CountingProfile(base_entries())
    tree = NodeTree(profile)
    kho = tree.resolve("sys/kernel/kho")
    for _ in range(1000):
        tree.lookup(kho, "active")
        tree.lookup(kho, "dt")
    assert profile.entry_calls == 1
    assert tree.rebuilds == 1
    profile.touch()
    tree.lookup(kho, "active")
    assert profile.entry_calls == 2


def test_appearing_rekeyed_and_removed_nodes():
    profile = ManualProfile(base_entries())
    tree = NodeTree(profile)
    tree.take_changes()
    kho = tree.resolve("sys/kernel/kho")

    profile.set_entries(base_entries(active=True, gen=1))
    changes = tree.take_changes()
    dt1 = tree.resolve("sys/kernel/kho/dt")
    assert [(c.path, c.parent, c.new) for c in changes.added] == [("sys/kernel/kho/dt", kho, dt1)]
    assert not changes.removed and not changes.replaced
    assert tree.take_changes() is None  # nothing new since

    handle = dt1.open(os.O_RDONLY, 0)
    profile.set_entries(base_entries(active=True, gen=2))  # same path, new key
    changes = tree.take_changes()
    dt2 = tree.resolve("sys/kernel/kho/dt")
    assert dt2 is not dt1 and dt2.ino != dt1.ino
    assert dt1.removed and not dt2.removed
    assert [(c.name, c.old, c.new) for c in changes.replaced] == [("dt", dt1, dt2)]
    with pytest.raises(KernelError) as info:
        handle.read(0, 10)
    assert info.value.errno == errno.ENODEV

    profile.set_entries(base_entries())
    changes = tree.take_changes()
    assert [(c.name, c.parent, c.old) for c in changes.removed] == [("dt", kho, dt2)]
    assert dt2.removed
    assert tree.node(dt2.ino) is None


def test_same_key_after_a_removal_seen_by_the_tree_is_a_new_instance():
    profile = ManualProfile(base_entries(active=True, gen=1))
    tree = NodeTree(profile)
    dt = tree.resolve("sys/kernel/kho/dt")
    profile.set_entries(base_entries())
    tree.sync()
    profile.set_entries(base_entries(active=True, gen=1))
    assert tree.resolve("sys/kernel/kho/dt") is not dt


def test_version_change_without_entry_changes_is_still_reported():
    profile = ManualProfile(base_entries())
    tree = NodeTree(profile)
    tree.take_changes()
    profile.touch()  # e.g. a blob changed size without changing identity
    changes = tree.take_changes()
    assert changes is not None
    assert (changes.added, changes.removed, changes.replaced) == ([], [], [])


def test_changes_accumulate_until_taken():
    profile = ManualProfile(base_entries())
    tree = NodeTree(profile)
    tree.take_changes()
    profile.set_entries(base_entries(active=True, gen=1))
    tree.sync()
    profile.set_entries(base_entries(active=True, gen=2))
    tree.sync()
    changes = tree.take_changes()
    assert len(changes.added) == 1 and len(changes.replaced) == 1


def test_directory_removal_marks_the_subtree_and_reports_its_top():
    profile = ManualProfile(base_entries(active=True, gen=1))
    tree = NodeTree(profile)
    tree.take_changes()
    kho = tree.resolve("sys/kernel/kho")
    dt = tree.resolve("sys/kernel/kho/dt")
    profile.set_entries([e for e in base_entries() if "/kho/" not in e.path])
    changes = tree.take_changes()
    assert kho.removed and dt.removed
    removed = {c.path: c for c in changes.removed}
    assert set(removed) == {
        "sys/kernel/kho",
        "sys/kernel/kho/active",
        "sys/kernel/kho/dt",
        "sys/kernel/kho/scratch_phys",
    }
    # Only the top entry sits under a directory that is still live.
    assert [p for p, c in removed.items() if not c.parent.removed] == ["sys/kernel/kho"]


def test_recreated_directory_recreates_its_children():
    gen = {"boot": 1}

    def entries():
        return [Entry("sys", lambda: Directory(0o755), gen["boot"]), Entry("sys/a", text())]

    profile = ManualProfile(entries())
    tree = NodeTree(profile)
    a = tree.resolve("sys/a")
    gen["boot"] = 2
    profile.set_entries(entries())
    assert tree.resolve("sys/a") is not a and a.removed


def test_instance_kept_by_the_profile_keeps_its_inode():
    staging = StagingFile(0o600)
    gen = {"boot": 1}

    def entries():
        return [
            Entry("machine", lambda: Directory(0o755), gen["boot"]),
            Entry("machine/kexec/kernel", lambda: staging),
        ]

    profile = ManualProfile(entries())
    tree = NodeTree(profile)
    ino = tree.resolve("machine/kexec/kernel").ino
    gen["boot"] = 2  # the parent is re-created; the profile hands back the same file
    profile.set_entries(entries())
    assert tree.resolve("machine/kexec/kernel") is staging
    assert staging.ino == ino and not staging.removed


def explode():
    raise RuntimeError("make() bug")


def removed_node() -> Node:
    node = TextAttribute(0o444, lambda: "")
    node.removed = True
    return node


SHARED = TextAttribute(0o444, lambda: "shared\n")


@pytest.mark.parametrize(
    ("bad", "missing", "reason"),
    [
        ([Entry("ok", text(value="2\n"))], [], "declares this path twice"),
        ([Entry("/ok/", text())], ["ok/ok"], "component ''"),
        ([Entry("d//x", text())], ["d/x"], "component ''"),
        ([Entry("d/x/", text())], ["d/x"], "component ''"),
        ([Entry("", text())], [], "empty path"),
        ([Entry(".", text())], [], "component '.'"),
        ([Entry("d/..", text())], [], "component '..'"),
        ([Entry("d/./x", text())], ["d/x"], "component '.'"),
        ([Entry("d/a\0b", text())], [], "NUL"),
        ([Entry("d/" + "x" * 256, text())], ["d/" + "x" * 256], "256 bytes"),
        ([Entry("d/\ud800", text())], [], "no byte string"),
        ([Entry("f", text()), Entry("f/x", text())], ["f/x"], "'f' is a file"),
        ([Entry("f", text()), Entry("f/x/y", text())], ["f/x", "f/x/y"], "'f' is a file"),
        ([Entry("ok/x", text())], ["ok/x"], "'ok' is a file"),  # under the good file
        ([Entry("boom", explode), Entry("boom/x", text())], ["boom", "boom/x"], "make() bug"),
        ([Entry("e", lambda: "not a node")], ["e"], "not a Node"),  # type: ignore[arg-type,return-value]
        ([Entry("e", removed_node)], ["e"], "removed node"),
        ([Entry("a", lambda: SHARED), Entry("b", lambda: SHARED)], ["b"], "another path"),
    ],
)
def test_bad_entries_are_skipped_and_logged(bad, missing, reason, caplog):
    """Any entry that cannot be built is left out with an error in the log; every
    other entry is served (issue 8: one bad region name took every path down)."""
    good = [Entry("ok", text(value="1\n")), Entry("d/good", text())]
    tree = NodeTree(ManualProfile([*good, *bad]))
    with caplog.at_level(logging.ERROR, logger="kho_fs.tree.tree"):
        tree.sync()
    assert reason in caplog.text and "skipping the profile's entry" in caplog.text
    ok = tree.resolve("ok")
    assert isinstance(ok, TextAttribute)
    assert ok.open(os.O_RDONLY, 0).read(0, 10) == b"1\n"  # the first one declared
    assert isinstance(tree.resolve("d/good"), TextAttribute)
    for path in missing:
        assert tree.resolve(path) is None
    names = [name for name, _ in tree.children(tree.root)]
    assert names == sorted(names) and {"d", "ok"} <= set(names)


def test_longest_name_and_any_bytes_are_fine(caplog):
    raw = [b"x" * 255, b"caf\xc3\xa9", b"x\xffy", b"\x80", b"%2F", b"sp ace", b"\n"]
    profile = ManualProfile([Entry("d/" + decode_name(r), text()) for r in raw])
    tree = NodeTree(profile)
    with caplog.at_level(logging.ERROR, logger="kho_fs.tree.tree"):
        names = [encode_name(name) for name, _ in tree.children(tree.resolve("d"))]
    assert sorted(names) == sorted(raw) and caplog.text == ""
    assert decode_name(b"x\xffy") == "x\udcffy" and encode_name("x\udcffy") == b"x\xffy"
    assert decode_name(b"caf\xc3\xa9") == "caf\xe9"


def test_a_bad_entry_does_not_disturb_the_others():
    profile = ManualProfile(base_entries())
    tree = NodeTree(profile)
    active = tree.resolve("sys/kernel/kho/active")
    tree.take_changes()
    profile.set_entries([*base_entries(), Entry("sys/kernel/kho/active/x", text())])
    assert tree.resolve("sys/kernel/kho/active") is active and not active.removed
    assert tree.resolve("sys/kernel/kho/active/x") is None
    changes = tree.take_changes()
    assert changes is not None and (changes.added, changes.removed, changes.replaced) == (
        [],
        [],
        [],
    )


def test_a_profile_whose_entries_raise_changes_nothing():
    class Broken(ManualProfile):
        broken = False

        def entries(self):
            if self.broken:
                raise RuntimeError("profile bug")
            return super().entries()

    profile = Broken(base_entries())
    tree = NodeTree(profile)
    active = tree.resolve("sys/kernel/kho/active")
    profile.broken = True
    profile.touch()
    with pytest.raises(RuntimeError):
        tree.sync()
    assert not active.removed
    profile.broken = False
    assert tree.resolve("sys/kernel/kho/active") is active


def test_nodes_are_made_lazily_once():
    made: list[str] = []

    def maker(name: str):
        def make() -> Node:
            made.append(name)
            return TextAttribute(0o444, lambda: name)

        return make

    profile = ManualProfile([Entry("a", maker("a")), Entry("b", maker("b"))])
    tree = NodeTree(profile)
    tree.sync()
    profile.touch()
    tree.sync()
    assert made == ["a", "b"]
