"""The FUSE adapter: the only module that speaks pyfuse3.

It maps inode numbers and file handles to the nodes of a :class:`~kho_fs.tree.NodeTree`,
turns :class:`~kho_fs.model.errors.KernelError` into ``FUSEError`` and keeps the kernel's
caches honest.  Every request handler goes through :func:`_guarded`: an unexpected
exception becomes EIO for that one request plus a logged traceback, and the daemon keeps
serving (pyfuse3 would otherwise let it escape and stop the main loop).

Cache policy:

- Positive entries and attributes are cached for :data:`CACHE_TIMEOUT` seconds, so a
  polled ``stat`` is answered by the kernel without a round trip.
- Negative lookups are answered with ENOENT, which the kernel never caches: a file that
  appears is visible at the next lookup.
- Whenever the profile's version changed, the adapter invalidates every directory entry
  that was removed or replaced and the attributes of every inode the kernel knows.
  After a request that may change the model (write, setattr, open) the reply is sent
  only once the kernel has processed those invalidations, so the process that wrote
  ``1`` to ``active`` sees ``dt`` at its very next ``stat``.  The blocking libfuse calls
  run in a worker thread (calling them on the event loop can deadlock against a lookup
  that holds the parent directory's lock while it waits for us).
- There is no ``flush`` handler: pyfuse3 answers ENOSYS once and the kernel stops sending
  FLUSH, which saves one round trip per ``close()``.  Nothing is buffered (every write
  is stored before it returns), so a close has nothing to report.
- A directory listing is taken at opendir, but an entry whose node was removed since
  is never sent (READDIRPLUS replies become dcache entries): it is replaced by the
  node now at that name, or skipped.
- Every file is opened with ``keep_cache`` off and the node's ``direct_io`` flag (true
  for all kho-fs files but ``machine/dmesg.raw``, which util-linux maps shared), so file
  data is never served from a page cache filled before the open.

There is no mmap handler in FUSE.  With FOPEN_DIRECT_IO the kernel refuses shared
mappings with ENODEV, like sysfs; private mappings are set up by the kernel and filled
through ordinary reads (documented limitation).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import reprlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

import pyfuse3
import trio

from kho_fs.model.errors import KernelError
from kho_fs.model.units import PAGE_SIZE
from kho_fs.tree.nodes import File, Node, OpenFile
from kho_fs.tree.tree import ROOT_INO, NodeTree, TreeChanges, decode_name, encode_name

__all__ = ["CACHE_TIMEOUT", "CacheNotifier", "KernelCacheNotifier", "Operations"]

log = logging.getLogger(__name__)

#: Seconds the kernel may keep entries and attributes; changes are pushed explicitly.
CACHE_TIMEOUT = 3600.0

assert pyfuse3.ROOT_INODE == ROOT_INO

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _guarded(handler: _F) -> _F:
    """Run a request handler so that only ``FUSEError`` ever leaves it.

    KernelError carries the errno the caller must see; anything else is a bug, answered
    with EIO and logged with its traceback.
    """

    @functools.wraps(handler)
    async def wrapper(self: Operations, *args: Any) -> Any:
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except KernelError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception(
                "unexpected error in %s%s; answering EIO", handler.__name__, reprlib.repr(args)
            )
            raise pyfuse3.FUSEError(errno.EIO) from None

    return cast(_F, wrapper)


class CacheNotifier(Protocol):
    """Sends cache invalidations to the kernel (replaced by a recorder in tests)."""

    async def invalidate(
        self, entries: Sequence[tuple[int, bytes]], inodes: Sequence[int], *, wait: bool
    ) -> None:
        """Forget ``(parent inode, name)`` entries and the attributes of ``inodes``.

        With ``wait`` the call returns once the kernel has processed everything.
        """
        ...


class KernelCacheNotifier:
    """The real notifier: libfuse's notify calls."""

    async def invalidate(
        self, entries: Sequence[tuple[int, bytes]], inodes: Sequence[int], *, wait: bool
    ) -> None:
        if wait:
            await trio.to_thread.run_sync(self._send, entries, inodes)
            return
        for parent, name in entries:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        for ino in inodes:
            self._invalidate_inode(ino)

    def _send(self, entries: Sequence[tuple[int, bytes]], inodes: Sequence[int]) -> None:
        for parent, name in entries:
            try:
                pyfuse3.invalidate_entry(parent, name)
            except FileNotFoundError:
                pass  # the kernel never looked that entry up, or already forgot it
            except OSError:
                log.exception("invalidating entry %r in inode %d failed", name, parent)
        for ino in inodes:
            self._invalidate_inode(ino)

    @staticmethod
    def _invalidate_inode(ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except FileNotFoundError:
            pass
        except OSError:
            log.exception("invalidating inode %d failed", ino)


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers on top of a :class:`NodeTree`."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, tree: NodeTree, notifier: CacheNotifier | None = None) -> None:
        super().__init__()
        self.tree = tree
        self._notifier: CacheNotifier = notifier or KernelCacheNotifier()
        # Every inode the kernel holds a lookup reference on, live or removed, so that
        # getattr on an fd of a removed file still works.  The root is always known.
        self._known: dict[int, Node] = {ROOT_INO: tree.root}
        self._lookups: dict[int, int] = {}
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, Node]]] = {}
        self._handles = itertools.count(1)

    # -- helpers ---------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self._known.get(ino) or self.tree.node(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _file(self, fh: int) -> OpenFile:
        try:
            return self._files[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def _remember(self, node: Node) -> None:
        self._known[node.ino] = node
        self._lookups[node.ino] = self._lookups.get(node.ino, 0) + 1

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.generation = 0
        attrs.entry_timeout = CACHE_TIMEOUT
        attrs.attr_timeout = CACHE_TIMEOUT
        attrs.st_mode = node.mode
        if node.removed:
            attrs.st_nlink = 0
        elif node.is_dir:
            attrs.st_nlink = 2 + self.tree.subdir_count(node)
        else:
            attrs.st_nlink = 1
        attrs.st_uid = node.uid
        attrs.st_gid = node.gid
        attrs.st_rdev = 0
        attrs.st_size = node.st_size()
        attrs.st_blksize = PAGE_SIZE
        attrs.st_blocks = 0
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.ctime_ns
        return attrs

    async def _sync(self, *, wait: bool = False) -> None:
        """Catch up with the profile and push what changed to the kernel's caches."""
        changes = self.tree.take_changes()
        if changes is not None:
            await self._publish(changes, wait=wait)

    async def _publish(self, changes: TreeChanges, *, wait: bool) -> None:
        # An entry under a directory that is itself gone is covered by invalidating
        # that directory's entry (the kernel drops the whole subtree).
        entries = [
            (c.parent.ino, encode_name(c.name))
            for c in (*changes.removed, *changes.replaced)
            if not c.parent.removed
        ]
        inodes = [ino for ino, node in self._known.items() if not node.removed]
        log.debug(
            "invalidating %d entries and %d inodes (wait=%s)", len(entries), len(inodes), wait
        )
        try:
            await self._notifier.invalidate(entries, inodes, wait=wait)
        except Exception:
            log.exception("cache invalidation failed")

    # -- lifecycle -------------------------------------------------------------------

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Must never raise: there is no request to answer.
        try:
            for ino, nlookup in inode_list:
                left = self._lookups.get(ino, 0) - nlookup
                if left > 0:
                    self._lookups[ino] = left
                    continue
                self._lookups.pop(ino, None)
                if ino != ROOT_INO:
                    self._known.pop(ino, None)
        except Exception:
            log.exception("forget(%r) failed", inode_list)

    # -- attributes ------------------------------------------------------------------

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        await self._sync()
        parent = self._node(parent_inode)
        text = decode_name(name)
        node: Node | None
        if text == ".":
            node = parent
        elif text == "..":
            node = self.tree.parent(parent) or self.tree.root
        else:
            node = self.tree.lookup(parent, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)  # not cached by the kernel
        self._remember(node)
        return self._attrs(node)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        await self._sync()
        return self._attrs(self._node(inode))

    @_guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        await self._sync()
        node = self._file(fh).node if fh is not None else self._node(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        try:
            if fields.update_size:
                if not isinstance(node, File):
                    raise pyfuse3.FUSEError(errno.EISDIR)
                node.truncate(attr.st_size)
            # Time updates (touch) are accepted and ignored, as kernfs keeps no times.
        finally:
            await self._sync(wait=True)
        return self._attrs(node)

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # What sysfs answers (simple_statfs); f_type is always FUSE_SUPER_MAGIC and
        # cannot be set from user space.
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = PAGE_SIZE
        stats.f_frsize = PAGE_SIZE
        stats.f_blocks = stats.f_bfree = stats.f_bavail = 0
        stats.f_files = stats.f_ffree = stats.f_favail = 0
        stats.f_namemax = 255
        return stats

    # -- directories -----------------------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        await self._sync()
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        parent = self.tree.parent(node) or self.tree.root
        listing = [(b".", node), (b"..", parent)]
        listing += [(encode_name(name), child) for name, child in self.tree.children(node)]
        fh = next(self._handles)
        self._dirs[fh] = listing
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        try:
            listing = self._dirs[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        await self._sync()
        directory = listing[0][1]
        for index in range(start_id, len(listing)):
            name, node = listing[index]
            if node.removed and name not in (b".", b".."):
                # The listing was taken at opendir; the kernel links every entry of a
                # READDIRPLUS reply into its dcache (for an hour), after the invalidation
                # of the removed entry was already sent.  So list what is there now.
                current = self.tree.lookup(directory, decode_name(name))
                if current is None:
                    continue
                node = current
            if not pyfuse3.readdir_reply(token, name, self._attrs(node), index + 1):
                break
            # The kernel links (and later forgets) every entry but "." and "..".
            if name not in (b".", b".."):
                self._remember(node)

    @_guarded
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -----------------------------------------------------------------------

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        await self._sync()
        node = self._node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            handle = node.open(flags, ctx.uid)
        finally:
            await self._sync(wait=True)
        fh = next(self._handles)
        self._files[fh] = handle
        return pyfuse3.FileInfo(fh=fh, direct_io=node.direct_io, keep_cache=False)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._file(fh)
        await self._sync()
        return handle.read(off, size)

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._file(fh)
        await self._sync()
        try:
            return handle.write(off, buf)
        finally:
            await self._sync(wait=True)

    @_guarded
    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)
        await self._sync()

    # -- what sysfs refuses ----------------------------------------------------------

    @_guarded
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EACCES)  # kernfs directories have no create op

    @_guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)
