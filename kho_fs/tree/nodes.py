"""Pseudo-files with kernel semantics: the nodes of the tree a profile declares.

Each class reproduces one kind of kernel file (a sysfs text attribute, a sysfs binary
attribute, a debugfs seq_file, ...) and answers with the kernel's errno by default, so a
profile only supplies callbacks into the model.  Nothing here knows pyfuse3 or the model:
errors are raised as :class:`~kho_fs.model.errors.KernelError` and the FUSE adapter turns
them into ``FUSEError``.

An open file is an :class:`OpenFile`; it remembers the node *instance* it opened.  When the
tree drops that instance (the file was removed, or re-created as a new instance), the node
is marked ``removed`` and every later read or write through the old handle fails with the
node's ``removed_errno`` (ENODEV in sysfs, EIO in debugfs).

Decisions where the kernel leaves a choice:

- sysfs open check (kernfs ``KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK``): opening for writing
  fails with EACCES when the mode has no write bit or the file has no write handler, and
  opening for reading fails with EACCES when the mode has no read bit or there is no read
  handler -- even for root.  Debugfs files skip this check.
- A text attribute with a write bit but no ``store`` answers writes with EIO and one
  without ``show`` answers reads with EIO: that is what ``kobj_attr_store`` and
  ``kobj_attr_show`` return for a missing callback (the open itself succeeds).
- ``show`` output of a sysfs text attribute is clamped to PAGE_SIZE - 1 bytes, as
  ``sysfs_kf_seq_show`` does; debugfs seq files are not clamped.
- A region-file write that starts at or past the end fails with ENOSPC; a write that
  straddles the end is truncated to the end and returns the short count (block-device
  semantics, ``blkdev_write_iter``), so ``dd`` reports exactly what was written.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import ClassVar

from kho_fs.model.errors import KernelError
from kho_fs.model.units import PAGE_SIZE

__all__ = [
    "BinaryAttribute",
    "ControlFile",
    "DebugfsBlob",
    "DebugfsSeqFile",
    "Directory",
    "File",
    "LogFile",
    "Node",
    "OpenFile",
    "RegionFile",
    "StagingFile",
    "TextAttribute",
]


class Node:
    """Base of every pseudo-file: mode, owner, inode number and removal state.

    ``ino`` is assigned by the :class:`~kho_fs.tree.tree.NodeTree` that owns the node;
    ``removed`` is set by the tree when the instance leaves the tree for good.
    """

    #: S_IFDIR or S_IFREG, or-ed into ``mode``.
    file_type: ClassVar[int] = stat.S_IFREG
    #: errno for I/O through a handle whose node was removed (sysfs: ENODEV).
    removed_errno: ClassVar[int] = errno.ENODEV
    #: errno for opening a removed node through a cached path (kernfs: ENODEV;
    #: debugfs' ``full_proxy_open`` turns its EIO into ENOENT).
    open_removed_errno: ClassVar[int] = errno.ENODEV

    def __init__(self, mode: int) -> None:
        if mode & ~0o7777:
            raise ValueError(f"mode {mode:#o} has bits outside the permission bits")
        self.mode = self.file_type | mode
        self.uid = 0
        self.gid = 0
        self.ino = 0
        self.removed = False
        self.ctime_ns = time.time_ns()
        self._last_size = 0

    @property
    def is_dir(self) -> bool:
        return self.file_type == stat.S_IFDIR

    def st_size(self) -> int:
        """The size ``stat`` reports; a removed node keeps its last known size."""
        if not self.removed:
            self._last_size = self._current_size()
        return self._last_size

    def _current_size(self) -> int:
        return 0

    def check_live(self) -> None:
        if self.removed:
            raise KernelError(self.removed_errno, "file was removed")

    def __repr__(self) -> str:
        state = " removed" if self.removed else ""
        return f"<{type(self).__name__} ino={self.ino} mode={self.mode:o}{state}>"


class Directory(Node):
    """A directory; its children are the tree's business, not the node's."""

    file_type = stat.S_IFDIR

    def __init__(self, mode: int = 0o755) -> None:
        super().__init__(mode)


class File(Node):
    """A regular pseudo-file.  Subclasses override ``read``/``write``/``truncate``.

    The base class answers like a kernel file without handlers: reads and writes fail
    with EINVAL, truncation is accepted and ignored (kernfs ignores size changes).
    """

    #: sysfs "even root" open check; debugfs files turn it off.
    sysfs_open_check: ClassVar[bool] = True
    #: whether the kernel file has a read / write handler at all (kernfs ``has_read``).
    has_read: bool = True
    has_write: bool = False
    #: serve with FOPEN_DIRECT_IO (no page cache, reads end where the content ends).
    direct_io: bool = True

    def open(self, flags: int, uid: int) -> OpenFile:
        """Open the file with ``open(2)`` flags for a caller with ``uid``.

        Ordinary permission bits were already checked by the kernel (the mount uses
        ``default_permissions``); ``uid`` is passed for nodes that want more.  The sysfs
        check applies to everyone, root included.
        """
        if self.removed:
            raise KernelError(self.open_removed_errno, "file was removed")
        accmode = flags & os.O_ACCMODE
        wants_write = accmode in (os.O_WRONLY, os.O_RDWR)
        wants_read = accmode in (os.O_RDONLY, os.O_RDWR)
        if self.sysfs_open_check:
            if wants_write and not (self.mode & 0o222 and self.has_write):
                raise KernelError(errno.EACCES, "opened for writing without write permission")
            if wants_read and not (self.mode & 0o444 and self.has_read):
                raise KernelError(errno.EACCES, "opened for reading without read permission")
        handle = OpenFile(self, flags)
        if wants_write and flags & os.O_TRUNC:
            self.truncate(0)
        return handle

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        raise KernelError(errno.EINVAL, "no read handler")

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        raise KernelError(errno.EINVAL, "no write handler")

    def truncate(self, size: int) -> None:
        """``O_TRUNC`` or ``truncate(2)``: pseudo-files accept it and do nothing."""


class OpenFile:
    """One open file description: the node instance it opened plus per-handle state."""

    __slots__ = ("flags", "node", "snapshot")

    def __init__(self, node: File, flags: int) -> None:
        self.node = node
        self.flags = flags
        #: content generated at the last offset-0 read (snapshot files only).
        self.snapshot: bytes | None = None

    def read(self, offset: int, size: int) -> bytes:
        self.node.check_live()
        return self.node.read(self, offset, size)

    def write(self, offset: int, data: bytes) -> int:
        self.node.check_live()
        return self.node.write(self, offset, data)


class _SnapshotFile(File):
    """Content generated when a read starts at offset 0 and served as slices after that.

    A read at another offset on a handle that has no snapshot yet generates one too (the
    kernel's seq_file does the same when a process starts with ``pread`` at offset N).
    """

    def __init__(self, mode: int, show: Callable[[], str] | None) -> None:
        super().__init__(mode)
        self._show = show

    def _render(self) -> bytes:
        if self._show is None:
            raise KernelError(errno.EIO, "attribute has no show callback")
        # Model text stands for bytes one-to-one (latin-1), like the kernel's char buffers.
        return self._show().encode("latin-1", errors="replace")

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        if offset == 0 or handle.snapshot is None:
            handle.snapshot = self._render()
        return handle.snapshot[offset : offset + size]


class TextAttribute(_SnapshotFile):
    """A sysfs text attribute (``show``/``store``), st_size 4096.

    Reads: snapshot at offset 0, clamped to PAGE_SIZE - 1 bytes.  Writes: each write is
    one complete store of its first min(len, 4096) bytes, the offset is ignored, and the
    call returns the number of bytes stored.  The bytes reach ``store`` unchanged (an
    embedded NUL included): parsing them as a C string is the model's job, as it is the
    store function's in the kernel.
    """

    has_write = True

    def __init__(
        self,
        mode: int,
        show: Callable[[], str] | None = None,
        store: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(mode, show)
        self._store = store

    def _current_size(self) -> int:
        return PAGE_SIZE

    def _render(self) -> bytes:
        return super()._render()[: PAGE_SIZE - 1]

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        if self._store is None:
            raise KernelError(errno.EIO, "attribute has no store callback")
        chunk = bytes(data[:PAGE_SIZE])
        if not chunk:
            return 0
        self._store(chunk)
        return len(chunk)


class ControlFile(TextAttribute):
    """An emulator control: text-attribute semantics, root-only mode (0200 or 0600).

    Without ``show`` the file has no read handler, so opening it for reading fails with
    EACCES whatever the mode says.
    """

    def __init__(
        self,
        mode: int,
        store: Callable[[bytes], None],
        show: Callable[[], str] | None = None,
    ) -> None:
        if mode & 0o077:
            raise ValueError(f"control files are root-only; mode {mode:#o} is not")
        super().__init__(mode, show, store)
        self.has_read = show is not None


class BinaryAttribute(File):
    """A sysfs binary attribute: st_size is the blob size, reads are EOF-correct slices.

    It has no write handler: opening it for writing fails with EACCES.  The blob is asked
    for at every read; the model owns the bytes.
    """

    def __init__(self, mode: int, blob: Callable[[], bytes]) -> None:
        super().__init__(mode)
        self._blob = blob

    def _current_size(self) -> int:
        return len(self._blob())

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        return bytes(self._blob()[offset : offset + size])


class DebugfsSeqFile(_SnapshotFile):
    """A debugfs seq_file: snapshot reads, st_size 0, writes fail with EINVAL.

    debugfs has no "even root" open check, so root may open it for writing; there is no
    write handler.  I/O through a handle of a removed file fails with EIO.
    """

    sysfs_open_check = False
    removed_errno = errno.EIO
    open_removed_errno = errno.ENOENT

    def __init__(self, mode: int, show: Callable[[], str]) -> None:
        super().__init__(mode, show)


class LogFile(DebugfsSeqFile):
    """An emulator log (``machine/dmesg``): debugfs seq_file semantics, but st_size is the
    length of what a read returns now, not 0, because tools that map ``st_size`` bytes
    (util-linux ``dmesg -F``) would otherwise see nothing.

    The content only grows while the node lives, so every read renders it afresh (no
    snapshot): reads at increasing offsets stay consistent and a reader that goes on past
    its first EOF sees the new lines, never a short read below the size ``stat`` reported.
    ``direct_io=False`` serves the file through the page cache (still dropped at every
    open), which shared mappings need: util-linux maps the file ``MAP_SHARED``.
    """

    def __init__(self, mode: int, show: Callable[[], str], *, direct_io: bool = True) -> None:
        super().__init__(mode, show)
        self.direct_io = direct_io

    def _current_size(self) -> int:
        return len(self._render())

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        return self._render()[offset : offset + size]


class DebugfsBlob(BinaryAttribute):
    """A debugfs blob: like a binary attribute but st_size 0 and EIO once removed.

    Writes are refused at open with EACCES (kho-fs decision for mainline blobs).
    """

    removed_errno = errno.EIO
    open_removed_errno = errno.ENOENT

    def _current_size(self) -> int:
        return 0


class RegionFile(File):
    """A window on physical memory (e.g. a ``reserve_mem`` region or ``dev/mem``).

    ``read(offset, length)`` and ``write(offset, data) -> count`` receive offsets relative
    to the window and never go past ``size()``.  Reads past the end return b"".  A write
    starting at or past the end fails with ENOSPC; one straddling the end is cut at the
    end and returns the short count.  Without ``write`` the file has no write handler.
    """

    def __init__(
        self,
        mode: int,
        size: Callable[[], int],
        read: Callable[[int, int], bytes],
        write: Callable[[int, bytes], int] | None = None,
    ) -> None:
        super().__init__(mode)
        self._size = size
        self._read = read
        self._write = write
        self.has_write = write is not None

    def _current_size(self) -> int:
        return self._size()

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        end = self._size()
        if offset >= end:
            return b""
        return bytes(self._read(offset, min(size, end - offset)))

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        if self._write is None:
            raise KernelError(errno.EINVAL, "region is read-only")
        end = self._size()
        if offset >= end:
            raise KernelError(errno.ENOSPC, "write past the end of the region")
        return self._write(offset, bytes(data[: end - offset]))


class StagingFile(File):
    """A plain in-memory regular file: positioned writes, truncation, read back.

    Used to stream data into the emulator (for example a kernel image for kexec).
    ``max_size`` is a file-size limit with the kernel's semantics (``generic_write_checks``):
    a write starting at or past it fails with EFBIG, one straddling it is cut at the limit
    and returns the short count; truncating past it fails with EFBIG.
    """

    has_write = True

    def __init__(self, mode: int = 0o600, max_size: int | None = None) -> None:
        super().__init__(mode)
        self._data = bytearray()
        self._max_size = max_size

    def contents(self) -> bytes:
        return bytes(self._data)

    def _current_size(self) -> int:
        return len(self._data)

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        return bytes(self._data[offset : offset + size])

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        if not data:
            return 0
        if self._max_size is not None:
            if offset >= self._max_size:
                raise KernelError(errno.EFBIG, f"staging file is limited to {self._max_size} bytes")
            data = data[: self._max_size - offset]
        end = offset + len(data)
        if offset > len(self._data):
            self._data.extend(bytes(offset - len(self._data)))
        self._data[offset:end] = data
        return len(data)

    def truncate(self, size: int) -> None:
        if self._max_size is not None and size > self._max_size:
            raise KernelError(errno.EFBIG, f"staging file is limited to {self._max_size} bytes")
        if size < len(self._data):
            del self._data[size:]
        else:
            self._data.extend(bytes(size - len(self._data)))
