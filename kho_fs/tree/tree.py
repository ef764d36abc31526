"""The node tree: a profile's entries resolved into stable node instances and inodes.

A profile is data.  It reports the entries that exist right now, each an :class:`Entry`
``(path, make, key)``, and a ``version()`` that changes whenever the entry set or the
identity of an entry may have changed.  The tree turns that into directories of node
instances:

- ``(path, key)`` is the identity of a node.  While an entry keeps its path, its key and
  its parent directory instance, the tree keeps its node instance and inode number.  A
  different key (or a re-created parent) gives a NEW instance with a new inode; the old
  instance is marked ``removed`` so handles opened on it fail with its ``removed_errno``.
- The tree only rebuilds when ``version()`` changed, so lookups in a polled ``stat`` loop
  cost one ``version()`` call.  It may therefore miss intermediate states: a node that is
  removed and re-created between two rebuilds must come back with a different key (a
  generation counter, say), never with the old one.
- ``make`` usually builds a fresh instance, but may hand back one the profile keeps (a
  staging file that survives kexec): it keeps its inode.  One instance sits at one path,
  and an instance the tree has removed may not come back.
- Directories may be declared (an entry whose ``make`` returns a :class:`Directory`) or
  implied by a deeper path, in which case they are ``Directory(0o755)`` whose identity
  lasts as long as they exist.  The root always exists (mode 0755, inode 1).
- What changed since the adapter last asked is available through :meth:`take_changes`,
  so the FUSE layer can invalidate the kernel's caches.
- Names are text in Python's file-name convention, fixed to UTF-8 with ``surrogateescape``
  whatever the locale (:func:`encode_name`, :func:`decode_name`): any byte string, valid
  UTF-8 or not, is a name and comes back as exactly those bytes.
- A bad entry never takes the tree down.  An entry whose path is not a valid relative
  path (empty, ``.`` or ``..`` components, NUL, a component over :data:`NAME_MAX` bytes),
  that repeats a path already declared, that sits under a file or under an entry that
  could not be built, whose ``make`` raises or returns no :class:`Node`, or whose node is
  removed or already placed elsewhere is skipped with an error in the log; the rest of
  the tree is served.  Only a profile whose ``entries()`` itself raises fails the rebuild
  (the tree then stays as it was and the next request tries again).

Nothing here imports pyfuse3 or the model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from itertools import count
from typing import NamedTuple, Protocol

from kho_fs.tree.nodes import Directory, Node

__all__ = [
    "NAME_MAX",
    "ROOT_INO",
    "Entry",
    "EntryChange",
    "ManualProfile",
    "NodeTree",
    "Profile",
    "TreeChanges",
    "decode_name",
    "encode_name",
]

log = logging.getLogger(__name__)

#: Inode number of the root directory (FUSE_ROOT_ID in the FUSE protocol).
ROOT_INO = 1
#: Longest file name in bytes (Linux NAME_MAX; what ``statfs`` reports as f_namemax).
NAME_MAX = 255


def encode_name(name: str) -> bytes:
    """The bytes of the file name ``name`` (UTF-8, undecodable bytes as lone surrogates)."""
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    """The tree's text for the file name ``raw``; ``encode_name`` gives ``raw`` back."""
    return raw.decode("utf-8", "surrogateescape")


class Entry(NamedTuple):
    """One path a profile declares.

    ``path`` is relative to the mount root, ``/``-separated (``sys/kernel/kho/active``);
    ``make`` builds a fresh node instance; ``key`` is the identity of that instance (see
    the module docstring) -- ``None`` is fine for a file that never changes identity.
    """

    path: str
    make: Callable[[], Node]
    key: Hashable = None


class Profile(Protocol):
    """What the tree asks an ABI profile.  Both calls must be cheap and side-effect free."""

    def version(self) -> int:
        """A number that changes whenever ``entries()`` or an entry's identity may have."""
        ...

    def entries(self) -> Iterable[Entry]:
        """The entries that exist now, in any order."""
        ...


class EntryChange(NamedTuple):
    """One directory entry that changed in a rebuild.

    ``parent`` is the directory instance the kernel knows the entry under: the old parent
    for a removal or replacement, the new one for an addition.
    """

    path: str
    parent: Directory
    name: str
    old: Node | None
    new: Node | None


@dataclass
class TreeChanges:
    """Entries changed by the rebuilds since the last :meth:`NodeTree.take_changes`.

    Its existence alone means the profile's version changed, so sizes may have changed
    even when the three lists are empty.
    """

    removed: list[EntryChange] = field(default_factory=list)
    added: list[EntryChange] = field(default_factory=list)
    replaced: list[EntryChange] = field(default_factory=list)


@dataclass
class _Slot:
    node: Node
    key: Hashable
    parent: Directory | None
    name: str


_IMPLIED = object()  # key of directories nobody declared


@functools.lru_cache(maxsize=4096)  # the same paths come back at every rebuild
def _split(path: str) -> tuple[str, ...]:
    """The components of an entry path: relative, ``/``-separated, no empty, ``.`` or
    ``..`` component, no NUL, each component a name of at most NAME_MAX bytes."""
    parts = tuple(path.split("/"))
    if not path:
        raise ValueError("empty path")
    for p in parts:
        if p in ("", ".", ".."):
            raise ValueError(f"component {p!r}")
        if "\0" in p:
            raise ValueError("NUL in a component")
        try:
            size = len(encode_name(p))
        except UnicodeEncodeError:
            raise ValueError(f"component {p!r} is no byte string") from None
        if size > NAME_MAX:
            raise ValueError(f"component of {size} bytes")
    return parts


def _skip(path: str, reason: str) -> None:
    log.error("skipping the profile's entry %r: %s", path, reason)


def _make(entry: Entry) -> Node:
    node = entry.make()
    if not isinstance(node, Node):
        raise TypeError(f"make() returned {node!r}, not a Node")
    return node


class NodeTree:
    """Resolves a :class:`Profile` into node instances, lazily and incrementally."""

    def __init__(self, profile: Profile) -> None:
        self._profile = profile
        self._inos = count(ROOT_INO + 1)
        self.root = Directory(0o755)
        self.root.ino = ROOT_INO
        root_slot = _Slot(self.root, None, None, "")
        self._slots: dict[tuple[str, ...], _Slot] = {(): root_slot}
        self._by_ino: dict[int, tuple[str, ...]] = {ROOT_INO: ()}
        self._children: dict[int, list[tuple[str, Node]]] = {ROOT_INO: []}
        self._version: int | None = None
        self._pending: TreeChanges | None = None
        self.rebuilds = 0

    # -- queries (each one first catches up with the profile) --------------------------

    def node(self, ino: int) -> Node | None:
        """The live node with inode ``ino``, or None."""
        self.sync()
        parts = self._by_ino.get(ino)
        return None if parts is None else self._slots[parts].node

    def lookup(self, parent: Node, name: str) -> Node | None:
        """The live child ``name`` of directory ``parent``, or None."""
        self.sync()
        parts = self._by_ino.get(parent.ino)
        if parts is None or not parent.is_dir:
            return None
        slot = self._slots.get((*parts, name))
        return None if slot is None else slot.node

    def parent(self, node: Node) -> Directory | None:
        """The live parent directory of a live node (None for the root or a removed node)."""
        self.sync()
        parts = self._by_ino.get(node.ino)
        return None if parts is None else self._slots[parts].parent

    def children(self, directory: Node) -> list[tuple[str, Node]]:
        """``(name, node)`` pairs of a live directory, in alphabetical order."""
        self.sync()
        return list(self._children.get(directory.ino, ()))

    def subdir_count(self, directory: Node) -> int:
        self.sync()
        return sum(1 for _, n in self._children.get(directory.ino, ()) if n.is_dir)

    def path(self, node: Node) -> str | None:
        """The path of a live node (``""`` for the root), or None."""
        self.sync()
        parts = self._by_ino.get(node.ino)
        return None if parts is None else "/".join(parts)

    def resolve(self, path: str) -> Node | None:
        """The live node at ``path`` (``""`` or ``/`` for the root), or None."""
        self.sync()
        parts = tuple(p for p in path.split("/") if p)
        slot = self._slots.get(parts)
        return None if slot is None else slot.node

    # -- change tracking ---------------------------------------------------------------

    def sync(self) -> None:
        """Rebuild if the profile's version changed since the last rebuild."""
        version = self._profile.version()
        if version != self._version:
            self._rebuild()
            self._version = version

    def take_changes(self) -> TreeChanges | None:
        """Catch up with the profile and hand over the changes not yet taken (None if none)."""
        self.sync()
        changes, self._pending = self._pending, None
        return changes

    def _rebuild(self) -> None:
        declared: dict[tuple[str, ...], Entry] = {}
        for entry in self._profile.entries():
            try:
                parts = _split(entry.path)
            except ValueError as exc:
                _skip(entry.path, f"not a valid path ({exc})")
                continue
            if parts in declared:
                _skip(entry.path, "the profile declares this path twice")
                continue
            declared[parts] = entry
        wanted: dict[tuple[str, ...], Entry | None] = dict(declared)
        for parts in declared:
            for depth in range(1, len(parts)):
                wanted.setdefault(parts[:depth], None)

        old_slots = self._slots
        slots: dict[tuple[str, ...], _Slot] = {(): old_slots[()]}
        placed = {id(self.root)}
        changes = TreeChanges()
        # Sorting component tuples puts every directory before its descendants.
        for parts in sorted(wanted):
            wanted_entry = wanted[parts]
            path = "/".join(parts)
            parent_slot = slots.get(parts[:-1])
            if parent_slot is None:
                _skip(path, f"{'/'.join(parts[:-1])!r} was skipped")
                continue
            parent = parent_slot.node
            if not isinstance(parent, Directory):
                _skip(path, f"{'/'.join(parts[:-1])!r} is a file")
                continue
            key = _IMPLIED if wanted_entry is None else wanted_entry.key
            old = old_slots.get(parts)
            reused = old is not None and old.key == key and old.parent is parent
            if old is not None and reused:
                node = old.node
            elif wanted_entry is None:
                node = Directory(0o755)
            else:
                try:
                    node = _make(wanted_entry)
                except Exception:
                    log.exception("skipping the profile's entry %r: make() failed", path)
                    continue
                if node.removed:
                    _skip(path, f"make() re-used the removed node {node!r}")
                    continue
            if id(node) in placed:
                _skip(path, f"the node {node!r} already sits at another path")
                continue
            placed.add(id(node))
            if not reused:
                if not node.ino:  # an instance the profile keeps may already have one
                    node.ino = next(self._inos)
                if old is None:
                    changes.added.append(EntryChange(path, parent, parts[-1], None, node))
                else:
                    assert old.parent is not None
                    changes.replaced.append(
                        EntryChange(path, old.parent, parts[-1], old.node, node)
                    )
            slots[parts] = _Slot(node, key, parent, parts[-1])

        for parts, old in old_slots.items():
            if id(old.node) in placed:
                continue
            old.node.removed = True
            if parts not in slots:
                assert old.parent is not None
                changes.removed.append(
                    EntryChange("/".join(parts), old.parent, old.name, old.node, None)
                )

        if self._pending is None:
            self._pending = changes
        else:
            self._pending.removed += changes.removed
            self._pending.added += changes.added
            self._pending.replaced += changes.replaced
        self._slots = slots
        self._by_ino = {s.node.ino: parts for parts, s in slots.items()}
        children: dict[int, list[tuple[str, Node]]] = {
            s.node.ino: [] for s in slots.values() if s.node.is_dir
        }
        for parts in sorted(slots):
            if parts:
                children[slots[parts[:-1]].node.ino].append((parts[-1], slots[parts].node))
        self._children = children
        self.rebuilds += 1
        log.debug(
            "rebuilt tree: %d nodes, %d added, %d replaced, %d removed",
            len(slots),
            len(changes.added),
            len(changes.replaced),
            len(changes.removed),
        )


class ManualProfile:
    """A profile whose entry list is set by hand: for tests and plug-in experiments.

    Every :meth:`set_entries` or :meth:`touch` bumps the version.
    """

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries = list(entries)
        self._version = 0

    def version(self) -> int:
        return self._version

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def set_entries(self, entries: Iterable[Entry]) -> None:
        self._entries = list(entries)
        self.touch()

    def touch(self) -> None:
        """Declare that identities or sizes may have changed without a new entry list."""
        self._version += 1
