"""The mainline KHO debugfs interface (``/sys/kernel/debug/kho``), spec kho-mainline.md §2.

Two debugfs file kinds that the v4 interface did not need, and the entries of the
interface as the running kernel's KHO reports them: ``out/`` always, ``out/fdt`` and
``out/sub_fdts/*`` when the model has created them, ``in/`` on a handover boot. Blob
files are windows on emulated RAM: reading shows the bytes there now, and root's writes
patch them (debugfs' blob write handler), so a patched ``out/fdt`` is what a later kexec
hands over.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

from kho_fs.model.cmdline import kstrtoull
from kho_fs.model.errors import KernelError
from kho_fs.model.kho_mainline import KhoBlob, KhoMainline
from kho_fs.tree.nodes import DebugfsSeqFile, Directory, File, Node, OpenFile
from kho_fs.tree.tree import Entry

KHO_DEBUGFS = "sys/kernel/debug/kho"
SIMPLE_ATTR_BUF = 24  # struct simple_attr: char set_buf[24]


class DebugfsAttribute(DebugfsSeqFile):
    """A ``DEFINE_DEBUGFS_ATTRIBUTE`` file (``simple_attr``): the value formatted at an
    offset-0 read; a write parses its first 23 bytes with kstrtoull (base 0) and, if
    that succeeds, calls ``store`` and returns the full length written."""

    has_write = True

    def __init__(self, mode: int, show: Callable[[], str], store: Callable[[int], None]) -> None:
        super().__init__(mode, show)
        self._store_value = store

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        if not data:
            return 0
        text = bytes(data[: SIMPLE_ATTR_BUF - 1]).split(b"\0", 1)[0]
        try:
            value = kstrtoull(text, 0)
        except KernelError as exc:
            raise KernelError(exc.errno or errno.EINVAL, "not a number") from exc
        self._store_value(value)
        return len(data)


class DebugfsBlobFile(File):
    """``debugfs_create_blob``: ``size`` bytes captured at creation, read from RAM at
    every read; writes patch the bytes (``write_file_blob``), bounded by the size."""

    sysfs_open_check = False
    removed_errno = errno.EIO
    open_removed_errno = errno.ENOENT
    has_write = True

    def __init__(
        self,
        mode: int,
        read: Callable[[int, int], bytes],
        write: Callable[[int, bytes], int],
    ) -> None:
        super().__init__(mode)
        self._read = read
        self._write = write

    def read(self, handle: OpenFile, offset: int, size: int) -> bytes:
        return self._read(offset, size)

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        return self._write(offset, bytes(data))


def kho_debugfs_entries(
    kho: KhoMainline, entry: Callable[[str, Callable[[], Node], object], Entry]
) -> Iterator[Entry]:
    """Entries of ``sys/kernel/debug/kho`` for one mainline kernel (spec §2.1)."""
    if not kho.debugfs:
        return

    def directory(path: str) -> Entry:
        return entry(f"{KHO_DEBUGFS}/{path}".rstrip("/"), lambda: Directory(0o755), None)

    def blob(path: str, b: KhoBlob) -> Entry:
        return entry(
            f"{KHO_DEBUGFS}/{path}",
            lambda: DebugfsBlobFile(
                0o400,
                lambda off, n: kho.blob_read(b, off, n),
                lambda off, data: kho.blob_write(b, off, data),
            ),
            ("blob", b.serial),
        )

    yield directory("")
    yield directory("out")
    yield directory("out/sub_fdts")
    yield entry(
        f"{KHO_DEBUGFS}/out/scratch_phys",
        lambda: DebugfsSeqFile(0o400, kho.scratch_phys_show),
        None,
    )
    yield entry(
        f"{KHO_DEBUGFS}/out/scratch_len", lambda: DebugfsSeqFile(0o400, kho.scratch_len_show), None
    )
    if kho.release.has_finalize:  # the blob era (7.2) has none
        yield entry(
            f"{KHO_DEBUGFS}/out/finalize",
            lambda: DebugfsAttribute(0o600, kho.finalize_show, kho.finalize_store),
            None,
        )
    if kho.out_fdt is not None:
        yield blob("out/fdt", kho.out_fdt)
    for b in kho.out_sub_fdts:
        yield blob(f"out/sub_fdts/{b.name}", b)
    if kho.in_fdt is not None:
        yield directory("in")
        yield directory("in/sub_fdts")
        yield blob("in/fdt", kho.in_fdt)
        for b in kho.in_sub_fdts:
            yield blob(f"in/sub_fdts/{b.name}", b)
