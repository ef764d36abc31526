"""The Live Update Orchestrator (LUO) of Linux 6.19 and 7.0 (spec kho-mainline.md §12).

This module is the LUO core and the ``LUO`` *FDT* format of 6.19/7.0 (``luo-v1``); 7.2's
raw ``struct luo_ser`` blob with kho_block chains (``luo-v5``) is the strategy class
:class:`kho_fs.model.luo_v5.LuoV5`, chosen by the release's ``luo_format`` trait.

A pure model of kernel/liveupdate/luo_core.c, luo_session.c, luo_file.c (luo_flb.c's
FDT node in 7.0) and mm/memfd_luo.c: ``liveupdate=``, the ``/dev/liveupdate`` device and
its session files, the ioctl dispatch with the kernel's errnos, the reboot path that
freezes every session into KHO-preserved memory, and the next kernel reading those bytes.

Nothing here touches a descriptor or a socket. A transport (the daemon's socket server,
tests) hands the model:

- the ioctl argument as a :class:`UserArg` (what the caller's memory holds at the
  pointer, and where it faults), so the dispatch -- EINVAL/ENOTTY/EFAULT/E2BIG -- lives
  in :meth:`Luo.ioctl` only;
- files to preserve as :class:`LuoFileSource` objects (kind, size, position, contents),
  and it gets back, for a retrieved file, a :class:`RestoredFile` that says which
  physical ranges of emulated RAM hold the bytes.

What crosses a kexec is RAM only (DESIGN §5): the ``LUO`` sub-FDT, the session array,
the file arrays, memfd's serialization page and folio list, and the folios themselves,
all preserved through the running kernel's KHO. The next kernel finds them through its
own KHO (``kho_retrieve_subtree``) and parses them as its release does.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from kho_fs.model.cmdline import kstrtobool
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import Fdt, FdtSw, fdt_check_header
from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel
    from kho_fs.model.kho_mainline import KhoMainline
    from kho_fs.model.physmem import PhysicalMemory

log = logging.getLogger(__name__)

# -- include/uapi/linux/liveupdate.h ------------------------------------------------
LIVEUPDATE_IOCTL_TYPE = 0xBA
LIVEUPDATE_SESSION_NAME_LENGTH = 64
LIVEUPDATE_CMD_BASE = 0x00
LIVEUPDATE_CMD_CREATE_SESSION = 0x00
LIVEUPDATE_CMD_RETRIEVE_SESSION = 0x01
LIVEUPDATE_CMD_SESSION_BASE = 0x40
LIVEUPDATE_CMD_SESSION_PRESERVE_FD = 0x40
LIVEUPDATE_CMD_SESSION_RETRIEVE_FD = 0x41
LIVEUPDATE_CMD_SESSION_FINISH = 0x42
LIVEUPDATE_CMD_SESSION_GET_NAME = 0x43  # added after 7.0 (liveupdate tree, 7.1 cycle)


def _IO(type_: int, nr: int) -> int:
    return (type_ << 8) | nr


LIVEUPDATE_IOCTL_CREATE_SESSION = _IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_CREATE_SESSION)
LIVEUPDATE_IOCTL_RETRIEVE_SESSION = _IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_RETRIEVE_SESSION)
LIVEUPDATE_SESSION_PRESERVE_FD = _IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_PRESERVE_FD)
LIVEUPDATE_SESSION_RETRIEVE_FD = _IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_RETRIEVE_FD)
LIVEUPDATE_SESSION_FINISH = _IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_FINISH)
LIVEUPDATE_SESSION_GET_NAME = _IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_GET_NAME)

#: struct liveupdate_ioctl_create_session / _retrieve_session: u32 size, s32 fd, u8 name[64]
SESSION_ARG = struct.Struct("<Ii64s")
#: struct liveupdate_session_preserve_fd / _retrieve_fd: u32 size, s32 fd, u64 token
FD_ARG = struct.Struct("<IiQ")
#: struct liveupdate_session_finish: u32 size, u32 reserved
FINISH_ARG = struct.Struct("<II")
#: Offset of the ``fd`` output field in the structures that return a descriptor.
FD_FIELD_OFFSET = 4

# -- include/linux/kho/abi/luo.h -----------------------------------------------------
LUO_FDT_SIZE = PAGE_SIZE
LUO_FDT_KHO_ENTRY_NAME = "LUO"
LUO_FDT_COMPATIBLE = "luo-v1"
LUO_FDT_LIVEUPDATE_NUM = "liveupdate-number"
LUO_FDT_SESSION_NODE_NAME = "luo-session"
LUO_FDT_SESSION_HEADER = "luo-session-header"
LUO_FDT_FLB_NODE_NAME = "luo-flb"
LUO_FDT_FLB_COMPATIBLE = "luo-flb-v1"
LUO_FDT_FLB_HEADER = "luo-flb-header"
LIVEUPDATE_HNDL_COMPAT_LENGTH = 48
SESSION_HEADER_SER = struct.Struct("<Q")  # luo_session_header_ser: u64 count
SESSION_SER = struct.Struct("<64sQQ")  # luo_session_ser: name, file_set_ser {files, count}
FILE_SER = struct.Struct("<48sQQ")  # luo_file_ser: compatible, data, token
FLB_HEADER_SER = struct.Struct("<QQ")  # luo_flb_header_ser: pgcnt, count
LUO_SESSION_PGCNT = 16
LUO_SESSION_MAX = (LUO_SESSION_PGCNT * PAGE_SIZE - SESSION_HEADER_SER.size) // SESSION_SER.size
LUO_FILE_PGCNT = 2
LUO_FILE_MAX = LUO_FILE_PGCNT * PAGE_SIZE // FILE_SER.size
LUO_FLB_PGCNT = 1

# -- include/linux/kho/abi/memfd.h ---------------------------------------------------
MEMFD_LUO_FH_COMPATIBLE = "memfd-v1"
MEMFD_LUO_FOLIO_DIRTY = 1 << 0
MEMFD_LUO_FOLIO_UPTODATE = 1 << 1
MEMFD_SER = struct.Struct("<QQQ16s")  # memfd_luo_ser: pos, size, nr_folios, folios (kho_vmalloc)
MEMFD_FOLIO_SER = struct.Struct("<QQ")  # memfd_luo_folio_ser: pfn:52 | flags:12, index
MEMFD_LUO_PFN_MASK = (1 << 52) - 1
#: Decision: the emulated shmem uses 2 MiB folios (what shmem with transparent huge pages
#: allocates) for the 2 MiB-aligned part of a memfd, order-0 folios for the rest.
MEMFD_LARGE_FOLIO_ORDER = 9
KHO_VMALLOC = struct.Struct("<QIHH")  # first chunk, total pages, flags, order (spec §6.4)
KHO_VMALLOC_ALLOC = 0x1

#: File kinds a transport reports for a descriptor (``LuoFileSource.kind``).
FILE_KIND_MEMFD = "memfd"  # a regular shmem file with no links: memfd_create, O_TMPFILE on tmpfs
FILE_KIND_OTHER = "other"

#: Bytes of the argument a transport captures; every LUO structure is smaller.
USER_ARG_CAPTURE = 4096
#: What lies in the caller's memory after the captured bytes, up to ``size``.
TAIL_ZERO = 0
TAIL_NONZERO = 1
TAIL_FAULT = 2

U64_MASK = (1 << 64) - 1
MAX_INCOMING_ITEMS = 1 << 16  # guard against counts written through /dev/mem


def errname(err: int) -> str:
    """``%pe`` of ``ERR_PTR(err)``: ``-ENOENT`` for a known errno."""
    name = errno.errorcode.get(-err)
    return f"-{name}" if name else str(err)


# -- what a transport hands the model ---------------------------------------------------
class UserArg(NamedTuple):
    """An ioctl argument as the caller's memory holds it.

    ``size`` is the structure's first u32 (None: reading it faults). ``data`` holds the
    bytes from the pointer on, as many as could be read of the first
    ``min(size, USER_ARG_CAPTURE)``; fewer means the memory faults right after them.
    ``tail`` says what follows the captured bytes up to ``size`` (zeros, a non-zero
    byte before any fault, or a fault before any non-zero byte).
    """

    size: int | None
    data: bytes = b""
    tail: int = TAIL_ZERO

    @classmethod
    def from_buffer(cls, buf: bytes | bytearray | memoryview) -> UserArg:
        """The argument for a caller whose readable memory is exactly ``buf`` (what the
        Python API passes): reading past its end faults."""
        raw = bytes(buf)
        if len(raw) < 4:
            return cls(None, raw)
        size = struct.unpack_from("<I", raw)[0]
        want = min(size, USER_ARG_CAPTURE)
        data = raw[:want]
        if len(raw) >= size:
            tail = TAIL_NONZERO if any(raw[USER_ARG_CAPTURE:size]) else TAIL_ZERO
        else:
            tail = TAIL_NONZERO if any(raw[USER_ARG_CAPTURE:]) else TAIL_FAULT
        return cls(size, data, tail)

    def copy_struct(self, ksize: int) -> bytes:
        """``copy_struct_from_user``: ``ksize`` bytes, zero-extended; E2BIG for a non-zero
        byte past ``ksize``, EFAULT where the memory faults first."""
        assert self.size is not None
        usize = self.size
        want = min(usize, USER_ARG_CAPTURE)
        if usize > ksize:
            extra = self.data[ksize:]
            if any(extra):
                raise KernelError(errno.E2BIG, "non-zero bytes past the known structure")
            if len(self.data) < want or (usize > USER_ARG_CAPTURE and self.tail == TAIL_FAULT):
                raise KernelError(errno.EFAULT, "argument faults")
            if usize > USER_ARG_CAPTURE and self.tail == TAIL_NONZERO:
                raise KernelError(errno.E2BIG, "non-zero bytes past the known structure")
        size = min(usize, ksize)
        if len(self.data) < size:
            raise KernelError(errno.EFAULT, "argument faults")
        return self.data[:size] + bytes(ksize - size)


class LuoFileSource(Protocol):
    """A file a process asked to preserve, as the model may look at it (no descriptor):
    what the kernel's ``struct file`` would tell the memfd handler.

    7.2 (:mod:`kho_fs.model.luo_v5`) also asks, when a source has them, ``seals()`` (the
    ``F_SEAL_*`` bits; without it: ``F_SEAL_SEAL``, a memfd created without
    ``MFD_ALLOW_SEALING``) and ``file_id()`` (what names the file -- memfd's inode -- for
    the preserve-once rule; without it: the source object)."""

    def kind(self) -> str:
        """:data:`FILE_KIND_MEMFD` or :data:`FILE_KIND_OTHER`."""
        ...

    def size(self) -> int: ...

    def pos(self) -> int:
        """The file position (``f_pos``) now."""
        ...

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; the count read (short at end of file)."""
        ...

    def release(self) -> None:
        """The kernel dropped its reference (``fput``)."""
        ...


class RestoredFile:
    """A file ``retrieve_fd`` rebuilt from preserved memory: ``size`` bytes whose
    contents are the ``extents`` ``(file offset, physical address, length)`` of RAM (the
    rest reads as zeros), with the file position ``pos``.

    LUO keeps a reference until finish; a transport that built a real file from it
    stores it in ``handle`` and learns of the release through ``on_release``. The same
    object comes back when the token is retrieved again (the kernel returns the same
    ``struct file``).

    ``seals`` (7.2's memfd-v2) are the ``F_SEAL_*`` bits to apply to the new file (it is
    created with ``MFD_ALLOW_SEALING``); None: the file allows no sealing (memfd-v1). A
    transport sets ``file_id`` to what names the file it built, as
    ``LuoFileSource.file_id()`` would (7.2 refuses to preserve a retrieved file before
    its session is finished: EBUSY).
    """

    def __init__(
        self,
        size: int,
        pos: int,
        extents: list[tuple[int, int, int]],
        seals: int | None = None,
    ) -> None:
        self.size = size
        self.pos = pos
        self.extents = extents
        self.seals = seals
        self.file_id: object = None
        self.handle: object = None
        self.on_release: Callable[[RestoredFile], None] | None = None

    def release(self) -> None:
        callback, self.on_release = self.on_release, None
        if callback is not None:
            callback(self)


class IoctlReply(NamedTuple):
    """What a successful ioctl copies back (``min(size, ksize)`` bytes, with ``fd``
    still -1 where a descriptor is returned) and the object the descriptor stands for."""

    data: bytes
    obj: LuoSession | RestoredFile | None = None


# -- files ----------------------------------------------------------------------------
class LuoFile:
    """``struct luo_file``: one preserved (outgoing) or deserialized (incoming) file."""

    def __init__(self, handler: FileHandler, token: int, serialized_data: int) -> None:
        self.handler = handler
        self.token = token
        self.serialized_data = serialized_data
        self.source: LuoFileSource | None = None  # outgoing: the file (fget reference)
        self.private: object = None
        self.retrieved = False
        self.restored: RestoredFile | None = None


class FileHandler(Protocol):
    """``struct liveupdate_file_handler`` with its ops."""

    compatible: str

    def can_preserve(self, source: LuoFileSource) -> bool: ...
    def preserve(self, luo: Luo, f: LuoFile) -> None: ...
    def unpreserve(self, luo: Luo, f: LuoFile) -> None: ...
    def freeze(self, luo: Luo, f: LuoFile) -> int: ...
    def unfreeze(self, luo: Luo, f: LuoFile) -> None: ...
    def retrieve(self, luo: Luo, f: LuoFile) -> RestoredFile: ...
    def can_finish(self, luo: Luo, f: LuoFile) -> bool: ...
    def finish(self, luo: Luo, f: LuoFile) -> None: ...


class MemfdLuo:
    """mm/memfd_luo.c: a memfd's size, position and contents.

    Preserve (``memfd_luo_preserve``): a serialization page, the folios covering the
    whole size (holes get pages, as ``memfd_pin_folios`` allocates them) and the folio
    list in a preserved vmalloc area. Decision: the contents are copied into those
    folios at freeze, during the reboot call -- the folios of a real memfd *are* its
    page cache, so what the next kernel sees is what the file held at that moment.
    Seals and FD_CLOEXEC are not preserved; the size is the one at preserve time.

    This is ``memfd-v1`` (6.19, 7.0). 7.2's ``memfd-v2``
    (:class:`kho_fs.model.luo_v5.MemfdLuoV2`) is the same handler with another
    ``struct memfd_luo_ser`` (:attr:`ser`) and its own hooks: the fields between
    ``size`` and ``nr_folios`` (:meth:`_memfd_luo_ser_fields`), what a restore leaves
    allocated, and its own ``retrieve``.
    """

    compatible = MEMFD_LUO_FH_COMPATIBLE
    #: ``struct memfd_luo_ser``: u64 pos, u64 size, the release's own fields, u64
    #: nr_folios, ``struct kho_vmalloc folios`` (last)
    ser: struct.Struct = MEMFD_SER

    def can_preserve(self, source: LuoFileSource) -> bool:
        return source.kind() == FILE_KIND_MEMFD

    def _memfd_luo_ser(self, luo: Luo, f: LuoFile) -> tuple[Any, ...]:
        """The file's ``struct memfd_luo_ser`` as it is in RAM: pos, size, …, nr_folios,
        and the folio list's descriptor (bytes) last."""
        return self.ser.unpack(luo.mem.read(f.serialized_data, self.ser.size))

    def _memfd_luo_ser_fields(self, source: LuoFileSource) -> tuple[int, ...]:
        """The fields of ``memfd_luo_ser`` before ``nr_folios``: the position and the
        size. KernelError (or OSError from the transport's file): the preserve fails."""
        return source.pos(), source.size()

    def preserve(self, luo: Luo, f: LuoFile) -> None:
        assert f.source is not None
        kho = luo.kho
        ser = kho.kho_alloc_preserve(self.ser.size)
        try:
            fields = self._memfd_luo_ser_fields(f.source)
            folios, desc = _memfd_luo_preserve_folios(luo, fields[1])
        except BaseException:  # KernelError, or OSError from the transport's file
            kho_unpreserve_free(kho, ser)
            raise
        luo.mem.write(ser, self.ser.pack(*fields, len(folios), desc))
        f.serialized_data = ser
        f.private = folios

    def unpreserve(self, luo: Luo, f: LuoFile) -> None:
        kho = luo.kho
        folios: list[tuple[int, int, int]] = f.private  # type: ignore[assignment]
        if folios:
            kho_unpreserve_vmalloc(kho, self._memfd_luo_ser(luo, f)[-1])
        for phys, order, _ in folios:
            kho.kho_unpreserve_folio(phys, order)
            kho.pages.free_pages(phys)
        kho_unpreserve_free(kho, f.serialized_data)
        f.private = []

    def freeze(self, luo: Luo, f: LuoFile) -> int:
        """``memfd_luo_freeze`` records the position; the model also copies the file's
        bytes into its folios here (docs/luo.md, "When the bytes move")."""
        assert f.source is not None
        source, mem = f.source, luo.mem
        size = self._memfd_luo_ser(luo, f)[1]
        folios: list[tuple[int, int, int]] = f.private  # type: ignore[assignment]
        try:
            for phys, order, index in folios:
                offset = index * PAGE_SIZE
                length = min(PAGE_SIZE << order, size - offset)
                got = mem.fill(phys, length, partial(_readinto_at, source, offset))
                if got < length:  # the file shrank: the rest of the folio reads as zeros
                    mem.zero(phys + got, (PAGE_SIZE << order) - got)
            mem.write(f.serialized_data, struct.pack("<Q", source.pos()))
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        return 0

    def unfreeze(self, luo: Luo, f: LuoFile) -> None:
        pass

    def retrieve(self, luo: Luo, f: LuoFile) -> RestoredFile:
        """``memfd_luo_retrieve`` of 6.19/7.0: a folio list shorter than ``nr_folios`` is
        EINVAL, a folio that cannot be restored EIO; the serialization page is restored
        on success only."""
        pos, size, nr_folios, desc = self._memfd_luo_ser(luo, f)
        extents: list[tuple[int, int, int]] = []
        if nr_folios:
            array = self._kho_restore_vmalloc(luo, desc)
            count = min(nr_folios, MAX_INCOMING_ITEMS)
            if array is None or len(array) < count * MEMFD_FOLIO_SER.size:
                raise KernelError(errno.EINVAL, "folio list")
            extents = self._memfd_luo_retrieve_folios(luo, _memfd_luo_folios(array, count), size)
        self._kho_restore_free(luo, f.serialized_data)
        return RestoredFile(size, pos, extents)

    def _memfd_luo_retrieve_folios(
        self, luo: Luo, entries: list[tuple[int, int]], size: int
    ) -> list[tuple[int, int, int]]:
        """``memfd_luo_retrieve_folios``: every listed folio restored into the new file,
        as the extents of the size it covers. A folio that cannot be restored is EIO
        (``Unable to restore folio …``), after :meth:`_memfd_luo_retrieve_failed`."""
        kho = luo.kho
        extents: list[tuple[int, int, int]] = []
        restored: list[tuple[int, int]] = []
        for i, (word, index) in enumerate(entries):
            pfn = word & MEMFD_LUO_PFN_MASK
            if not pfn:
                continue
            phys = pfn << 12
            order = kho.kho_restore_folio(phys)
            if order is None:
                luo.printk(
                    f"memfd_luo: Unable to restore folio at physical address: {phys:x}", KERN_ERR
                )
                self._memfd_luo_retrieve_failed(luo, restored, entries[i + 1 :])
                raise KernelError(errno.EIO, "folio")
            restored.append((phys, order))
            offset = index * PAGE_SIZE
            if offset < size:
                extents.append((offset, phys, min(PAGE_SIZE << order, size - offset)))
        return extents

    def _memfd_luo_retrieve_failed(
        self, luo: Luo, restored: list[tuple[int, int]], rest: list[tuple[int, int]]
    ) -> None:
        """A retrieve failed on a folio: ``restored`` are the folios restored before it,
        ``rest`` the entries after it. 6.19/7.0 leave them all as they are."""

    def can_finish(self, luo: Luo, f: LuoFile) -> bool:
        return True  # memfd_luo has no .can_finish

    def _memfd_luo_retrieve_tried(self, f: LuoFile) -> bool:
        """Whether ``finish`` leaves the folios alone: the file was retrieved."""
        return f.retrieved

    def finish(self, luo: Luo, f: LuoFile) -> None:
        """``memfd_luo_finish``: only a file whose retrieve was never tried still owns its
        folios; they are restored and dropped (``memfd_luo_discard_folios``)."""
        if self._memfd_luo_retrieve_tried(f):
            return
        kho = luo.kho
        nr_folios, desc = self._memfd_luo_ser(luo, f)[-2:]
        array = self._kho_restore_vmalloc(luo, desc) if nr_folios else None
        count = min(nr_folios, len(array or b"") // MEMFD_FOLIO_SER.size)
        for word, _ in _memfd_luo_folios(array or b"", count):
            phys = (word & MEMFD_LUO_PFN_MASK) << 12
            if not phys:
                continue
            order = kho.kho_restore_folio(phys)
            if order is None:
                luo.printk(
                    f"memfd_luo: Unable to restore folio at physical address: {phys:x}",
                    KERN_WARNING,
                )
                continue
            self._memfd_luo_discard_folio(luo, phys, order)
        self._kho_restore_free(luo, f.serialized_data)

    def _memfd_luo_discard_folio(self, luo: Luo, phys: int, order: int) -> None:
        """A folio ``finish`` restored: 6.19/7.0's model keeps it restored (not freed)."""

    def _kho_restore_vmalloc(self, luo: Luo, desc: bytes) -> bytes | None:
        """``kho_restore_vmalloc`` of the folio list (6.19/7.0: its pages stay restored)."""
        return kho_restore_vmalloc(luo.kho, desc)

    def _kho_restore_free(self, luo: Luo, phys: int) -> None:
        """``kho_restore_free(ser)``: 6.19/7.0's model restores the page and keeps it."""
        luo.kho.kho_restore_folio(phys)


def _memfd_luo_folios(array: bytes, count: int) -> list[tuple[int, int]]:
    """The first ``count`` ``memfd_luo_folio_ser`` entries of a folio list: (pfn and
    flags word, index)."""
    step = MEMFD_FOLIO_SER.size
    return [MEMFD_FOLIO_SER.unpack_from(array, i * step) for i in range(count)]


def _memfd_luo_preserve_folios(luo: Luo, size: int) -> tuple[list[tuple[int, int, int]], bytes]:
    """``memfd_luo_preserve_folios``: folios for every index (holes get pages; the
    emulated shmem's folio sizes, :data:`MEMFD_LARGE_FOLIO_ORDER`), each preserved and
    flagged DIRTY|UPTODATE, and their list in a preserved vmalloc area:
    ``([(phys, order, index)], descriptor)``; ``([], zeros)`` for an empty file (no
    folio list). On failure the folios preserved so far are unpreserved and freed."""
    kho = luo.kho
    folios: list[tuple[int, int, int]] = []
    if not size:
        return folios, bytes(KHO_VMALLOC.size)
    try:
        index, pages = 0, -(-size // PAGE_SIZE)
        while index < pages:
            order = MEMFD_LARGE_FOLIO_ORDER
            if index % (1 << order) or pages - index < (1 << order):
                order = 0
            phys = kho.pages.alloc_pages(order)
            if not phys:
                luo.printk(f"memfd_luo: failed to pin folios: {-errno.ENOMEM}", KERN_ERR)
                raise KernelError(errno.ENOMEM, "memfd folios")
            folios.append((phys, order, index))
            try:
                kho.kho_preserve_folio(phys, order)
            except KernelError:
                kho.pages.free_pages(phys)
                folios.pop()
                raise
            index += 1 << order
        flags = MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE
        array = b"".join(
            MEMFD_FOLIO_SER.pack((phys >> 12) | (flags << 52), idx) for phys, _, idx in folios
        )
        desc = kho_preserve_vmalloc(kho, array)
    except KernelError:
        for phys, order, _ in folios:
            kho.kho_unpreserve_folio(phys, order)
            kho.pages.free_pages(phys)
        raise
    return folios, desc


def _readinto_at(source: LuoFileSource, offset: int, buf: memoryview) -> int:
    return source.readinto(offset, buf)


# -- KHO helpers the LUO code uses ------------------------------------------------------
def kho_unpreserve_free(kho: KhoMainline, phys: int) -> None:
    """``kho_unpreserve_free``: undo :meth:`KhoMainline.kho_alloc_preserve`."""
    order = kho.pages.allocated.get(phys)
    if order is None:
        return
    kho.kho_unpreserve_folio(phys, order)
    kho.pages.free_pages(phys)


def kho_preserve_vmalloc(kho: KhoMainline, data: bytes) -> bytes:
    """``kho_preserve_vmalloc`` of ``data`` in order-0 pages: the pages and the chunk
    pages listing them are preserved; the 16-byte descriptor is returned (spec §6.4).
    Every page is written whole once (the kernel's zeroed pages, then filled)."""
    mem = kho.kernel.mem
    pages_alloc = kho.pages
    nr_pages = -(-len(data) // PAGE_SIZE)
    pages: list[int] = []
    chunks: list[int] = []
    try:
        for i in range(nr_pages):
            page = pages_alloc.alloc_pages(0, zero=False)
            if not page:
                raise KernelError(errno.ENOMEM, "vmalloc page")
            pages.append(page)
            mem.write(page, data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE].ljust(PAGE_SIZE, b"\0"))
            kho.kho_preserve_folio(page, 0)
        per_chunk = (PAGE_SIZE - 8) // 8
        starts = range(0, max(len(pages), 1), per_chunk)
        for _ in starts:
            chunk = pages_alloc.alloc_pages(0, zero=False)
            if not chunk:
                raise KernelError(errno.ENOMEM, "vmalloc chunk")
            chunks.append(chunk)
            kho.kho_preserve_folio(chunk, 0)
        for n, (chunk, start) in enumerate(zip(chunks, starts, strict=True)):
            nxt = chunks[n + 1] if n + 1 < len(chunks) else 0
            entries = pages[start : start + per_chunk]
            body = struct.pack(f"<{1 + len(entries)}Q", nxt, *entries)
            mem.write(chunk, body.ljust(PAGE_SIZE, b"\0"))
    except KernelError:
        for page in pages + chunks:
            kho.kho_unpreserve_folio(page, 0)
            pages_alloc.free_pages(page)
        raise
    return KHO_VMALLOC.pack(chunks[0], nr_pages, KHO_VMALLOC_ALLOC, 0)


def _vmalloc_walk(kho: KhoMainline, desc: bytes) -> tuple[list[int], list[int], int, int]:
    """Chunk pages and data pages a descriptor names (bounded against loops)."""
    first, total, _flags, order = KHO_VMALLOC.unpack(desc)
    mem = kho.kernel.mem
    chunks: list[int] = []
    pages: list[int] = []
    chunk, seen = first, set[int]()
    while chunk and chunk not in seen and len(pages) <= total and len(seen) < MAX_INCOMING_ITEMS:
        seen.add(chunk)
        chunks.append(chunk)
        page = mem.read(chunk, PAGE_SIZE)
        for (phys,) in struct.iter_unpack("<Q", page[8:]):
            if not phys:
                break
            pages.append(phys)
        chunk = struct.unpack_from("<Q", page, 0)[0]
    return chunks, pages, total, order


def kho_unpreserve_vmalloc(kho: KhoMainline, desc: bytes) -> None:
    chunks, pages, _, order = _vmalloc_walk(kho, desc)
    for phys, o in [(p, order) for p in pages] + [(c, 0) for c in chunks]:
        kho.kho_unpreserve_folio(phys, o)
        kho.pages.free_pages(phys)


def kho_restore_vmalloc(kho: KhoMainline, desc: bytes) -> bytes | None:
    """``kho_restore_vmalloc``: the area's bytes, or None when a page is not preserved."""
    chunks, pages, total, order = _vmalloc_walk(kho, desc)
    if len(pages) != total or order > 10:
        return None
    for chunk in chunks:
        if kho.kho_restore_folio(chunk) is None:
            return None
    out = []
    for phys in pages:
        if kho.kho_restore_folio(phys) is None:
            return None
        out.append(kho.kernel.mem.read(phys, PAGE_SIZE << order))
    return b"".join(out)


# -- sessions ----------------------------------------------------------------------------
class LuoSession:
    """``struct luo_session``: a named set of files; a session descriptor's private data."""

    def __init__(self, name: bytes, incoming: bool) -> None:
        self.name = name  # at most 63 bytes (strscpy into char[64])
        self.incoming = incoming
        self.retrieved = False
        self.files: list[LuoFile] = []
        self.files_mem = 0  # the 2-page luo_file_ser array (kho_alloc_preserve)
        self.file_set_files = 0  # incoming: the array's address from the previous kernel
        self.released = False

    @property
    def display_name(self) -> str:
        return self.name.decode("latin-1")


class LuoDevice:
    """One open of ``/dev/liveupdate``."""

    def __init__(self) -> None:
        self.released = False


def _strscpy_name(raw: bytes) -> bytes:
    """``strscpy(dst, src, 64)``: up to the first NUL, at most 63 bytes."""
    return raw[:LIVEUPDATE_SESSION_NAME_LENGTH].split(b"\0", 1)[0][
        : LIVEUPDATE_SESSION_NAME_LENGTH - 1
    ]


def _strncmp64(a: bytes, b: bytes) -> bool:
    """``!strncmp(a, b, 64)`` of two NUL-padded names."""
    n = LIVEUPDATE_SESSION_NAME_LENGTH
    return a[:n].split(b"\0", 1)[0] == b[:n].split(b"\0", 1)[0]


_DEVICE_OPS: dict[int, tuple[int, int]] = {
    # nr: (ioctl number, min size = offsetofend(last field))
    LIVEUPDATE_CMD_CREATE_SESSION: (LIVEUPDATE_IOCTL_CREATE_SESSION, SESSION_ARG.size),
    LIVEUPDATE_CMD_RETRIEVE_SESSION: (LIVEUPDATE_IOCTL_RETRIEVE_SESSION, SESSION_ARG.size),
}
_SESSION_OPS: dict[int, tuple[int, int, bool | None]] = {
    # nr: (ioctl number, min size, for incoming sessions? None = both)
    LIVEUPDATE_CMD_SESSION_PRESERVE_FD: (LIVEUPDATE_SESSION_PRESERVE_FD, FD_ARG.size, False),
    LIVEUPDATE_CMD_SESSION_RETRIEVE_FD: (LIVEUPDATE_SESSION_RETRIEVE_FD, FD_ARG.size, True),
    LIVEUPDATE_CMD_SESSION_FINISH: (LIVEUPDATE_SESSION_FINISH, FINISH_ARG.size, True),
}
_KSIZE = {
    LIVEUPDATE_IOCTL_CREATE_SESSION: SESSION_ARG.size,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION: SESSION_ARG.size,
    LIVEUPDATE_SESSION_PRESERVE_FD: FD_ARG.size,
    LIVEUPDATE_SESSION_RETRIEVE_FD: FD_ARG.size,
    LIVEUPDATE_SESSION_FINISH: FINISH_ARG.size,
}
#: ioctls the VFS answers before the driver (fs/ioctl.c do_vfs_ioctl) that a transport
#: must apply to the descriptor itself.
FIONCLEX, FIOCLEX, FIONBIO, FIOASYNC, FIOQSIZE = 0x5450, 0x5451, 0x5421, 0x5452, 0x5460
VFS_DESCRIPTOR_IOCTLS = frozenset({FIONCLEX, FIOCLEX, FIONBIO, FIOASYNC})


class Luo:
    """One kernel's LUO: ``luo_global``, the session lists, the device, the handlers."""

    #: ``luo_ioctl_ops`` / ``luo_session_ioctl_ops`` and the structure sizes: the uAPI a
    #: release's LUO answers (a strategy class may extend them)
    device_ops: dict[int, tuple[int, int]] = _DEVICE_OPS
    session_ops: dict[int, tuple[int, int, bool | None]] = _SESSION_OPS
    ksize: dict[int, int] = _KSIZE
    #: what the ``LUO`` KHO entry is, as the message of a failed retrieve names it
    luo_entry_kind = "FDT"
    #: the memfd file handler ``memfd_luo_init`` registers
    memfd_handler: type[MemfdLuo] = MemfdLuo

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.release = kernel.release
        self.enabled = False  # luo_global.enabled (liveupdate=, default off)
        self.liveupdate_num = 0
        self.fdt_out = 0
        self.fdt_in = 0
        self.misc_registered = False
        self.device_in_use = False
        self.handlers: list[FileHandler] = []
        self.outgoing: list[LuoSession] = []
        self.incoming: list[LuoSession] = []
        self.out_header = 0  # the 16-page session array
        self.out_flb_header = 0
        self.in_header = 0
        self.incoming_active = False
        self.deserialized: int | None = None  # None: not yet; else its result (0 or -errno)
        self.on_shutdown: list[Callable[[], None]] = []
        self.gone = False

    # -- helpers --------------------------------------------------------------------
    def printk(self, text: str, level: int = KERN_INFO) -> None:
        self.kernel.printk(text, level)

    @property
    def kho(self) -> KhoMainline:
        return self.kernel.kho  # type: ignore[return-value]  # a LUO release's KHO is mainline

    @property
    def mem(self) -> PhysicalMemory:
        return self.kernel.mem

    def _kho_is_enabled(self) -> bool:
        return bool(getattr(self.kernel.kho, "kho_enable", False))

    # -- boot --------------------------------------------------------------------------
    def early_params(self) -> dict[str, Callable[[str | None], bool]]:
        return {"liveupdate": self.early_liveupdate_param}

    def early_liveupdate_param(self, value: str | None) -> bool:
        if value is None:
            return False
        try:
            self.enabled = kstrtobool(value)
        except KernelError:
            return False
        return True

    def liveupdate_early_init(self) -> None:
        """early_initcall: read the incoming ``LUO`` subtree; a damaged one panics."""
        from kho_fs.model.kernel import BootFailed

        err = self._luo_early_startup()
        if err:
            self.enabled = False
            raise BootFailed(
                "Kernel panic - not syncing: The incoming tree failed to initialize "
                f"properly [{errname(err)}], disabling live update"
            )

    def _luo_early_startup(self) -> int:
        """``luo_early_startup``: without KHO, no live update; no ``LUO`` entry, a first
        boot; else the entry is read (:meth:`_luo_restore_incoming`). 0, or the errno the
        kernel panics with."""
        if not self._kho_is_enabled():
            if self.enabled:
                self.printk("luo: Disabling liveupdate because KHO is disabled", KERN_WARNING)
            self.enabled = False
            return 0
        try:
            phys, length = self._kho_retrieve_luo()
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                self.printk(
                    f"luo: failed to retrieve {self.luo_entry_kind} '{LUO_FDT_KHO_ENTRY_NAME}' "
                    f"from KHO: {errname(-exc.errno)}",
                    KERN_ERR,
                )
                return -exc.errno
            return 0
        return self._luo_restore_incoming(phys, length)

    def _kho_retrieve_luo(self) -> tuple[int, int]:
        """The ``LUO`` entry's address and size: a sub-FDT (``kho_retrieve_subtree``) of
        one page. KernelError: the entry cannot be had (ENOENT: there is none)."""
        return self.kho.kho_retrieve_subtree(LUO_FDT_KHO_ENTRY_NAME), LUO_FDT_SIZE

    def _luo_retrieved(self, number: int, phys: int) -> None:
        """The incoming live update number (logged signed, ``%lld``) and entry."""
        self.liveupdate_num = number
        signed = number - (1 << 64) if number >> 63 else number
        self.printk(f"luo: Retrieved live update data, liveupdate number: {signed}")
        self.fdt_in = phys

    def _luo_restore_incoming(self, fdt_phys: int, size: int) -> int:
        """The ``LUO`` FDT ``luo-v1``: its compatible, the live update number, the session
        node and (7.0) the FLB node. 0 or a negative errno."""
        blob = self.mem.read(fdt_phys, size)
        fdt: Fdt | None = None
        err = fdt_check_header(blob)
        if not err:
            try:
                fdt = Fdt(blob)
            except ValueError:
                err = -9  # FDT_ERR_BADMAGIC-style failure of the structure walk
        if fdt is not None:
            err = fdt.node_check_compatible(0, LUO_FDT_COMPATIBLE)
        if err or fdt is None:
            self.printk(
                f"luo: FDT '{LUO_FDT_KHO_ENTRY_NAME}' is incompatible with "
                f"'{LUO_FDT_COMPATIBLE}' [{err}]",
                KERN_ERR,
            )
            return -errno.EINVAL
        value = fdt.getprop(0, LUO_FDT_LIVEUPDATE_NUM)
        if value is None or len(value) != 8:
            size = -1 if value is None else len(value)
            self.printk(
                f"luo: Unable to get live update number '{LUO_FDT_LIVEUPDATE_NUM}' [{size}]",
                KERN_ERR,
            )
            return -errno.EINVAL
        self._luo_retrieved(struct.unpack("<Q", value)[0], fdt_phys)
        err = self._session_setup_incoming(fdt)
        if err:
            return err
        if self.release.luo_flb:
            return self._flb_setup_incoming(fdt)
        return 0

    def _session_setup_incoming(self, fdt: Fdt) -> int:
        node = next(
            (n for n in fdt.subnodes(0) if fdt.get_name(n) == LUO_FDT_SESSION_NODE_NAME), None
        )
        compat = self.release.luo_session_compatible
        if node is None:
            self.printk(f"luo: Unable to get session node: [{LUO_FDT_SESSION_NODE_NAME}]", KERN_ERR)
            return -errno.EINVAL
        if fdt.node_check_compatible(node, compat):
            self.printk(f"luo: Session node incompatible [{compat}]", KERN_ERR)
            return -errno.EINVAL
        value = fdt.getprop(node, LUO_FDT_SESSION_HEADER)
        if value is None or len(value) != 8:
            size = -1 if value is None else len(value)
            self.printk(
                f"luo: Unable to get session header '{LUO_FDT_SESSION_HEADER}' [{size}]", KERN_ERR
            )
            return -errno.EINVAL
        self.in_header = struct.unpack("<Q", value)[0]
        self.incoming_active = True
        return 0

    def _flb_setup_incoming(self, fdt: Fdt) -> int:
        node = next((n for n in fdt.subnodes(0) if fdt.get_name(n) == LUO_FDT_FLB_NODE_NAME), None)
        if node is None:
            self.printk(f"luo: Unable to get FLB node [{LUO_FDT_FLB_NODE_NAME}]", KERN_ERR)
            return -errno.ENOENT
        err = fdt.node_check_compatible(node, LUO_FDT_FLB_COMPATIBLE)
        if err:
            self.printk(
                f"luo: FLB node is incompatible with '{LUO_FDT_FLB_COMPATIBLE}' [{err}]", KERN_ERR
            )
            return -errno.EINVAL
        value = fdt.getprop(node, LUO_FDT_FLB_HEADER)
        if value is None or len(value) != 8:
            size = -1 if value is None else len(value)
            self.printk(
                f"luo: Unable to get FLB header property '{LUO_FDT_FLB_HEADER}' [{size}]", KERN_ERR
            )
            return -errno.EINVAL
        return 0

    def late_init(self) -> None:
        """late_initcalls: luo_late_startup, liveupdate_ioctl_init (kernel/liveupdate),
        then memfd_luo_init (mm/, after kernel/ in link order)."""
        if self.enabled and self.luo_late_startup():
            self.enabled = False
        self.misc_registered = self.enabled
        if self.enabled:
            self.handlers.append(self.memfd_handler())

    def luo_late_startup(self) -> int:
        """The outgoing ``LUO`` FDT (:meth:`_luo_fdt_setup`). 0 or a negative errno."""
        try:
            self._luo_fdt_setup()
        except KernelError as exc:
            self.printk(f"luo: failed to prepare LUO FDT: {-exc.errno}", KERN_ERR)
            return -exc.errno
        return 0

    def _luo_fdt_setup(self) -> None:
        kho = self.kho
        fdt_out = kho.kho_alloc_preserve(LUO_FDT_SIZE)
        try:
            header = kho.kho_alloc_preserve(LUO_SESSION_PGCNT * PAGE_SIZE)
        except KernelError:
            kho_unpreserve_free(kho, fdt_out)
            raise
        flb = 0
        if self.release.luo_flb:
            try:
                flb = kho.kho_alloc_preserve(LUO_FLB_PGCNT * PAGE_SIZE)
            except KernelError:
                kho_unpreserve_free(kho, header)
                kho_unpreserve_free(kho, fdt_out)
                raise
            self.mem.write(flb, FLB_HEADER_SER.pack(LUO_FLB_PGCNT, 0))
        sw = FdtSw(LUO_FDT_SIZE)
        err = (
            sw.finish_reservemap()
            or sw.begin_node("")
            or sw.property_string("compatible", LUO_FDT_COMPATIBLE)
            or sw.property(
                LUO_FDT_LIVEUPDATE_NUM, struct.pack("<Q", (self.liveupdate_num + 1) & U64_MASK)
            )
            or sw.begin_node(LUO_FDT_SESSION_NODE_NAME)
            or sw.property_string("compatible", self.release.luo_session_compatible)
            or sw.property(LUO_FDT_SESSION_HEADER, struct.pack("<Q", header))
            or sw.end_node()
        )
        if not err and flb:
            err = (
                sw.begin_node(LUO_FDT_FLB_NODE_NAME)
                or sw.property_string("compatible", LUO_FDT_FLB_COMPATIBLE)
                or sw.property(LUO_FDT_FLB_HEADER, struct.pack("<Q", flb))
                or sw.end_node()
            )
        err = err or sw.end_node() or sw.finish()
        if err:
            raise KernelError(errno.EINVAL, "LUO FDT")
        self.mem.write(fdt_out, sw.blob())
        kho.kho_add_subtree(LUO_FDT_KHO_ENTRY_NAME, fdt_out)
        self.fdt_out, self.out_header, self.out_flb_header = fdt_out, header, flb

    # -- /dev/liveupdate ------------------------------------------------------------------
    def _running(self) -> None:
        if self.kernel.panic is not None:
            raise KernelError(errno.EHOSTDOWN, "the kernel stopped at boot")
        if self.gone:
            raise KernelError(errno.ENODEV, "a descriptor of a previous boot")

    def open_device(self) -> LuoDevice:
        """``open("/dev/liveupdate")``: ENOENT without the device, EBUSY while open,
        EIO when the incoming sessions cannot be deserialized."""
        self._running()
        if not self.misc_registered:
            raise KernelError(errno.ENOENT, "no /dev/liveupdate")
        if self.device_in_use:
            raise KernelError(errno.EBUSY, "/dev/liveupdate is open")
        self.device_in_use = True
        if self.luo_session_deserialize():
            self.device_in_use = False
            raise KernelError(errno.EIO, "incoming sessions cannot be deserialized")
        return LuoDevice()

    def release_device(self, dev: LuoDevice) -> None:
        if dev.released:
            return
        dev.released = True
        if not self.gone:
            self.device_in_use = False

    def ioctl(
        self,
        target: LuoDevice | LuoSession,
        cmd: int,
        arg: UserArg,
        source: LuoFileSource | None = None,
    ) -> IoctlReply:
        """``luo_ioctl`` / ``luo_session_ioctl``: the dispatch and the operation.

        ``source`` is the file ``PRESERVE_FD`` names (None: not an open descriptor).
        Raises KernelError with the errno user space sees (ENOIOCTLCMD is ENOTTY).
        """
        self._running()
        cmd &= 0xFFFFFFFF
        nr = cmd & 0xFF
        if isinstance(target, LuoDevice):
            dev_op = self.device_ops.get(nr - LIVEUPDATE_CMD_BASE)
            if dev_op is None:
                raise KernelError(errno.EINVAL, "command number outside the table")
            number, min_size = dev_op
            incoming = None
        else:
            session_op = self.session_ops.get(nr) if nr >= LIVEUPDATE_CMD_SESSION_BASE else None
            if session_op is None:
                raise KernelError(errno.EINVAL, "command number outside the table")
            number, min_size, incoming = session_op
        if arg.size is None:
            raise KernelError(errno.EFAULT, "cannot read the size")
        if number != cmd:
            raise KernelError(errno.ENOTTY, "unknown command")
        if isinstance(target, LuoSession) and incoming is not None and incoming != target.retrieved:
            raise KernelError(errno.EINVAL, "command for the other kind of session")
        if arg.size < min_size:
            raise KernelError(errno.EINVAL, "structure too small")
        ksize = self.ksize[cmd]
        raw = arg.copy_struct(ksize)
        respond = min(arg.size, ksize)
        return self._execute(target, cmd, raw, respond, source)

    def _execute(
        self,
        target: LuoDevice | LuoSession,
        cmd: int,
        raw: bytes,
        respond: int,
        source: LuoFileSource | None,
    ) -> IoctlReply:
        """The operation of a dispatched command (``op->execute``): ``raw`` is the
        structure as copied from user space, ``respond`` the bytes to copy back."""
        if cmd in (LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_RETRIEVE_SESSION):
            size, _fd, name = SESSION_ARG.unpack(raw)
            if cmd == LIVEUPDATE_IOCTL_CREATE_SESSION:
                session = self.luo_session_create(name)
            else:
                session = self.luo_session_retrieve(name)
            return IoctlReply(SESSION_ARG.pack(size, -1, name)[:respond], session)
        assert isinstance(target, LuoSession)
        if cmd == LIVEUPDATE_SESSION_FINISH:
            self.luo_session_finish(target, raw)
            return IoctlReply(raw[:respond])
        if cmd == LIVEUPDATE_SESSION_GET_NAME:
            return IoctlReply(self.luo_session_get_name(target, raw)[:respond])
        size, _fd, token = FD_ARG.unpack(raw)
        if cmd == LIVEUPDATE_SESSION_PRESERVE_FD:
            self.luo_preserve_file(target, token, source)
            return IoctlReply(raw[:respond])
        restored = self.luo_retrieve_file(target, token)
        return IoctlReply(FD_ARG.pack(size, -1, token)[:respond], restored)

    def luo_session_finish(self, session: LuoSession, raw: bytes) -> None:
        """``LIVEUPDATE_SESSION_FINISH`` with its argument ``raw``."""
        self.luo_session_finish_one(session)

    def luo_session_get_name(self, session: LuoSession, raw: bytes) -> bytes:
        """``LIVEUPDATE_SESSION_GET_NAME`` (after 7.0): the argument to copy back. Only a
        release whose ``session_ops`` has the command gets here."""
        raise KernelError(errno.ENOTTY, "unknown command")

    # -- sessions ---------------------------------------------------------------------------
    def luo_session_create(self, raw_name: bytes) -> LuoSession:
        """A new outgoing session: room for it (:meth:`_luo_session_reserve`), then a name
        not in use (EEXIST)."""
        session = self._luo_session_new(raw_name)
        self._luo_session_reserve()
        if any(_strncmp64(s.name, session.name) for s in self.outgoing):
            raise KernelError(errno.EEXIST, "session name in use")
        self.outgoing.append(session)
        self.kernel.changed()
        return session

    def _luo_session_new(self, raw_name: bytes) -> LuoSession:
        """``luo_session_alloc``: the name as ``strscpy`` copies it."""
        return LuoSession(_strscpy_name(raw_name), incoming=False)

    def _luo_session_reserve(self) -> None:
        """Room for one more outgoing session: the session array holds
        :data:`LUO_SESSION_MAX` (ENOMEM)."""
        if len(self.outgoing) == LUO_SESSION_MAX:
            raise KernelError(errno.ENOMEM, "no room in the session array")

    def luo_session_retrieve(self, raw_name: bytes) -> LuoSession:
        session = next((s for s in self.incoming if _strncmp64(s.name, raw_name)), None)
        if session is None:
            raise KernelError(errno.ENOENT, "no such incoming session")
        if session.retrieved:
            raise KernelError(errno.EINVAL, "session already retrieved")
        session.retrieved = True
        self.kernel.changed()
        return session

    def release_session(self, session: LuoSession) -> None:
        """The last reference to a session descriptor went away (``luo_session_release``)."""
        if session.released or self.gone:
            session.released = True
            return
        if session.retrieved:
            try:
                self.luo_session_finish_one(session)
            except KernelError:
                self.printk(
                    f"luo: Unable to finish session [{session.display_name}] on release",
                    KERN_WARNING,
                )
                return
            session.released = True
        else:
            session.released = True
            self.luo_file_unpreserve_files(session)
        self.luo_session_remove(session)
        self.kernel.changed()

    def luo_session_remove(self, session: LuoSession) -> None:
        """Take a released session off its list (incoming once retrieved, else
        outgoing)."""
        (self.incoming if session.retrieved else self.outgoing).remove(session)

    def luo_session_finish_one(self, session: LuoSession) -> None:
        """``luo_file_finish``: every file must be able to finish (EBUSY otherwise), then
        each is finished and LUO gives up its references."""
        if not session.files:
            return
        for f in session.files:
            if not f.handler.can_finish(self, f):
                raise KernelError(errno.EBUSY, "a file cannot finish")
        while session.files:
            f = session.files.pop()
            f.handler.finish(self, f)
            self._luo_file_finished(session, f)
        self.luo_file_set_destroy(session)

    def _luo_file_finished(self, session: LuoSession, f: LuoFile) -> None:
        """A file finished and taken off its session: LUO drops the retrieved file."""
        if f.restored is not None:
            f.restored.release()

    def luo_file_set_destroy(self, session: LuoSession) -> None:
        """The session's file records once its files are gone: an outgoing session's
        array is unpreserved and freed, an incoming one's restored (``kho_restore_free``)."""
        if session.files_mem:
            kho_unpreserve_free(self.kho, session.files_mem)
            session.files_mem = 0
        if session.file_set_files:
            self.kho.kho_restore_folio(session.file_set_files)
            session.file_set_files = 0

    # -- files ------------------------------------------------------------------------------
    def luo_preserve_file(
        self, session: LuoSession, token: int, source: LuoFileSource | None
    ) -> None:
        """On success LUO holds ``source`` (``release()`` once it lets go: unpreserve,
        or the kernel going away); on failure the caller still owns it."""
        for f in session.files:
            if f.token == token:
                raise KernelError(errno.EEXIST, "token in use")
        if len(session.files) == LUO_FILE_MAX:
            raise KernelError(errno.ENOSPC, "the session holds 128 files")
        if source is None:
            raise KernelError(errno.EBADF, "not an open descriptor")
        kho = self.kho
        allocated = False
        if not session.files_mem:
            session.files_mem = kho.kho_alloc_preserve(LUO_FILE_PGCNT * PAGE_SIZE)
            allocated = True
        try:
            handler = next((h for h in self.handlers if h.can_preserve(source)), None)
            if handler is None:
                raise KernelError(errno.ENOENT, "no handler accepts the file")
            f = LuoFile(handler, token, 0)
            f.source = source
            handler.preserve(self, f)
        except KernelError:
            if allocated and not session.files:
                kho_unpreserve_free(kho, session.files_mem)
                session.files_mem = 0
            raise
        session.files.append(f)
        self.kernel.changed()

    def luo_retrieve_file(self, session: LuoSession, token: int) -> RestoredFile:
        f = next((f for f in session.files if f.token == token), None)
        if f is None:
            raise KernelError(errno.ENOENT, "no such token")
        if f.retrieved and f.restored is not None:
            return f.restored
        f.restored = self._luo_file_retrieve(f)
        f.retrieved = True
        return f.restored

    def _luo_file_retrieve(self, f: LuoFile) -> RestoredFile:
        """The handler's ``retrieve`` of a file not retrieved yet."""
        return f.handler.retrieve(self, f)

    def luo_file_unpreserve_files(self, session: LuoSession) -> None:
        while session.files:
            f = session.files.pop()
            f.handler.unpreserve(self, f)
            self._luo_file_unpreserved(session, f)
            if f.source is not None:
                f.source.release()
                f.source = None
        self.luo_file_set_destroy(session)

    def _luo_file_unpreserved(self, session: LuoSession, f: LuoFile) -> None:
        """A file unpreserved and taken off its session, before LUO lets go of it."""

    # -- the next kernel: deserialize at the first open ----------------------------------------
    def luo_session_deserialize(self) -> int:
        if self.deserialized is not None:
            return self.deserialized
        self.deserialized = 0
        if not self.incoming_active:
            return 0
        mem, kho = self.mem, self.kho
        count = SESSION_HEADER_SER.unpack(mem.read(self.in_header, 8))[0]
        for i in range(min(count, MAX_INCOMING_ITEMS)):
            at = self.in_header + SESSION_HEADER_SER.size + i * SESSION_SER.size
            name, files, nfiles = SESSION_SER.unpack(mem.read(at, SESSION_SER.size))
            session = LuoSession(_strscpy_name(name), incoming=True)
            err = self._luo_session_insert(session)
            if err:
                self.deserialized = err
                return err
            self._luo_file_deserialize(session, files, nfiles)
        kho.kho_restore_folio(self.in_header)  # kho_restore_free
        self.kernel.changed()
        return 0

    def _luo_session_insert(self, session: LuoSession) -> int:
        """An incoming session onto the list; a name already there is EEXIST."""
        if any(_strncmp64(s.name, session.name) for s in self.incoming):
            self.printk(
                f"luo: Failed to insert session [{session.display_name}] {errname(-errno.EEXIST)}",
                KERN_WARNING,
            )
            return -errno.EEXIST
        self.incoming.append(session)
        return 0

    def _luo_file_handler(self, compat: bytes) -> FileHandler | None:
        """The handler registered for a file record's ``compatible`` (None: logged)."""
        text = compat.split(b"\0", 1)[0]
        handler = next((h for h in self.handlers if h.compatible.encode() == text), None)
        if handler is None:
            self.printk(
                f"luo: No registered handler for compatible '{text.decode('latin-1')}'",
                KERN_WARNING,
            )
        return handler

    def _luo_file_deserialize(self, session: LuoSession, files: int, count: int) -> None:
        """Failures are logged and the session keeps the files read so far (the
        kernel ignores this function's result)."""
        if not files:
            return
        session.file_set_files = files
        for i in range(min(count, MAX_INCOMING_ITEMS)):
            compat, data, token = FILE_SER.unpack(
                self.mem.read(files + i * FILE_SER.size, FILE_SER.size)
            )
            handler = self._luo_file_handler(compat)
            if handler is None:
                return
            session.files.append(LuoFile(handler, token, data))

    # -- reboot(LINUX_REBOOT_CMD_KEXEC) ------------------------------------------------------
    def liveupdate_reboot(self) -> None:
        """Freeze every outgoing session into preserved memory, write the FLB count,
        then finalize KHO (a release without ``kho_finalize``, 7.2, stops before).
        KernelError: the freeze's errno, or EAGAIN when ``kho_finalize`` fails."""
        if not self.enabled:
            return
        err = self.luo_session_serialize()
        if err:
            raise KernelError(-err, "session serialization failed")
        self.luo_flb_serialize()
        if not self.release.has_finalize:
            return  # 7.2: no kho_finalize
        err = self.kho.kho_finalize()
        if err:
            self.printk(f"luo: kho_finalize failed {err}", KERN_ERR)
            raise KernelError(errno.EAGAIN, "kho_finalize failed")

    def luo_flb_serialize(self) -> None:
        """The FLB header: no FLB is registered, its count is 0."""
        if self.out_flb_header:
            self.mem.write(self.out_flb_header, FLB_HEADER_SER.pack(LUO_FLB_PGCNT, 0))

    def luo_session_serialize(self) -> int:
        mem = self.mem
        base = self.out_header + SESSION_HEADER_SER.size
        done: list[LuoSession] = []
        for i, session in enumerate(self.outgoing):
            err, ser = self._luo_file_freeze(session)
            if err:
                for j, prev in reversed(list(enumerate(done))):
                    for f in prev.files:
                        f.handler.unfreeze(self, f)
                    mem.write(base + j * SESSION_SER.size, bytes(SESSION_SER.size))
                return err
            name = session.name[: LIVEUPDATE_SESSION_NAME_LENGTH - 1]
            mem.write(base + i * SESSION_SER.size, SESSION_SER.pack(name, *ser))
            done.append(session)
        mem.write(self.out_header, SESSION_HEADER_SER.pack(len(self.outgoing)))
        return 0

    def _luo_file_freeze_one(self, f: LuoFile) -> int:
        """The handler's ``freeze``: 0, or its negative errno (logged)."""
        err = f.handler.freeze(self, f)
        if err:
            self.printk(
                f"luo: Freeze failed for token[{f.token:#x}] handler[{f.handler.compatible}] "
                f"err[{errname(err)}]",
                KERN_WARNING,
            )
        return err

    def _luo_file_freeze(self, session: LuoSession) -> tuple[int, tuple[int, int]]:
        if not session.files:
            return 0, (0, 0)
        records = []
        for i, f in enumerate(session.files):
            err = self._luo_file_freeze_one(f)
            if err:
                for prev in session.files[:i]:
                    prev.handler.unfreeze(self, prev)
                self.mem.write(session.files_mem, bytes(LUO_FILE_PGCNT * PAGE_SIZE))
                return err, (0, 0)
            compat = f.handler.compatible.encode()[: LIVEUPDATE_HNDL_COMPAT_LENGTH - 1]
            records.append(FILE_SER.pack(compat, f.serialized_data, f.token))
        self.mem.write(session.files_mem, b"".join(records))
        return 0, (session.files_mem, len(session.files))

    # -- the kernel is gone (kexec or reboot) ---------------------------------------------------
    def shutdown(self) -> None:
        """Drop every reference to user files and tell the transports: descriptors of
        this boot are dead from now on."""
        if self.gone:
            return
        self.gone = True
        for session in self.outgoing:
            for f in session.files:
                if f.source is not None:
                    f.source.release()
                    f.source = None
        for session in self.incoming:
            for f in session.files:
                if f.restored is not None:
                    f.restored.release()
        callbacks, self.on_shutdown = self.on_shutdown, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("LUO shutdown callback failed")

    # -- views -------------------------------------------------------------------------------
    def status_lines(self) -> list[str]:
        if not self.misc_registered:
            return ["liveupdate:  disabled (no /dev/liveupdate)"]
        out = ", ".join(s.display_name or '""' for s in self.outgoing) or "none"
        incoming = ", ".join(
            (s.display_name or '""') + (" (retrieved)" if s.retrieved else "")
            for s in self.incoming
        )
        if self.deserialized is None and self.incoming_active:
            incoming = "not yet read (first open of /dev/liveupdate)"
        return [
            f"liveupdate:  enabled ({self.release.luo_compatible}), liveupdate number "
            f"{self.liveupdate_num}, /dev/liveupdate "
            f"{'open' if self.device_in_use else 'closed'}",
            f"sessions:    outgoing: {out}; incoming: {incoming or 'none'}",
        ]
