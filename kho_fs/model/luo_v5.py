"""The Live Update Orchestrator of Linux 7.2: the ``luo-v5`` format (a strategy class).

Read from Linux 7.2.13: kernel/liveupdate/luo_core.c, luo_session.c, luo_file.c,
luo_flb.c, kho_block.c, luo_internal.h, include/linux/kho/abi/{luo,block,memfd}.h,
include/uapi/linux/liveupdate.h and mm/memfd_luo.c, and checked against a real 7.2.13
(shared/spec/transcripts/linux-7.2.13-kho-luo.txt). The LUO core of
:mod:`kho_fs.model.luo` (device, dispatch, session lists) is shared; what 7.2 does
differently is here:

- the ``LUO`` KHO entry is a raw 32-byte ``struct luo_ser`` {``char compatible[8]`` =
  ``luo-v5``, u64 ``liveupdate_num``, u64 ``sessions_pa``, u64 ``flbs_pa``}, added with
  ``kho_add_subtree("LUO", luo_ser, 32)`` at late init (``luo_state_setup``);
  ``sessions_pa`` stays 0 until the reboot serializes;
- session records (``luo_session_ser``, 80 bytes: 51 per block) and each session's file
  records (``luo_file_ser``, 64 bytes: 63 per block) are kho_block chains
  (:mod:`kho_fs.model.kho_block`) that grow as sessions and files are added, instead of
  6.19's 16-page session array (819 sessions, ENOMEM) and 2-page file arrays (128 files,
  ENOSPC). The limit is ``KHO_MAX_BLOCKS`` (10000) blocks per chain: ENOSPC;
- the receiving side checks the blob's size and compatible, restores the session chain
  at early boot (a bad chain panics), and frees the blob (``kho_restore_free``);
- the reboot path has no ``kho_finalize`` (7.2 has none): sessions, then the FLB count;
- uAPI: ``LIVEUPDATE_SESSION_GET_NAME``; a session name must be 1 to 63 bytes (EINVAL);
  ``FINISH`` refuses a non-zero ``reserved`` (EINVAL); a file is preserved once at a time
  across all sessions (the ``luo_preserved_files`` xarray: EBUSY), a retrieved one too
  until its session finishes; a failed retrieve is remembered and returned again;
- the next kernel refuses a session whose files it cannot all take (no handler for a
  compatible, a file count that does not match): the first open of ``/dev/liveupdate``
  fails with EIO, as 6.19 did not;
- memfd is ``memfd-v2``: ``memfd_luo_ser`` gains ``u32 seals; u32 flags`` (48 bytes) and
  the seals are preserved and applied again (the new memfd allows sealing).
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, cast

from kho_fs.model.dmesg import KERN_ERR, KERN_WARNING
from kho_fs.model.errors import KernelError
from kho_fs.model.kho_block import KHO_MAX_BLOCKS, KhoBlockSet, KhoBlockSetIt
from kho_fs.model.luo import (
    _DEVICE_OPS,
    _KSIZE,
    _SESSION_OPS,
    FILE_SER,
    LIVEUPDATE_CMD_SESSION_GET_NAME,
    LIVEUPDATE_HNDL_COMPAT_LENGTH,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_NAME_LENGTH,
    MAX_INCOMING_ITEMS,
    MEMFD_FOLIO_SER,
    MEMFD_LUO_PFN_MASK,
    SESSION_SER,
    FileHandler,
    Luo,
    LuoFile,
    LuoFileSource,
    LuoSession,
    MemfdLuo,
    RestoredFile,
    _memfd_luo_folios,
    _strscpy_name,
    _vmalloc_walk,
    errname,
    kho_unpreserve_free,
)
from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel
    from kho_fs.model.kho_blob import KhoBlobEra

# -- include/linux/kho/abi/luo.h (7.2) ----------------------------------------------------
LUO_KHO_ENTRY_NAME = "LUO"
LUO_ABI_COMPATIBLE = "luo-v5"
LUO_ABI_COMPAT_LEN = 8  # ALIGN(sizeof("luo-v5"), 8)
#: ``struct luo_ser`` (packed): compatible[8], liveupdate_num, sessions_pa, flbs_pa
LUO_SER = struct.Struct(f"<{LUO_ABI_COMPAT_LEN}sQQQ")
LUO_SER_SESSIONS_PA = 16  # offsetof(struct luo_ser, sessions_pa)
LUO_SER_FLBS_PA = 24
#: ``struct luo_flb_ser``: name[48], data, count
FLB_SER = struct.Struct("<48sQQ")
LUO_FLB_PGCNT = 1  # luo_flb.c
#: ``struct luo_session_ser``: name[64], then ``struct luo_file_set_ser`` {files, count}
SESSION_FILE_SET_OFFSET = LIVEUPDATE_SESSION_NAME_LENGTH
FILE_SET_SER = struct.Struct("<QQ")
#: ``struct luo_file_ser`` after its compatible: u64 data, u64 token
FILE_DATA_TOKEN = struct.Struct("<QQ")

# -- include/uapi/linux/liveupdate.h (7.2) --------------------------------------------------
#: ``struct liveupdate_session_get_name``: u32 size, u32 reserved, u8 name[64]
GET_NAME_ARG = struct.Struct("<II64s")
FINISH_RESERVED = struct.Struct("<II")

# -- include/linux/kho/abi/memfd.h (7.2) ----------------------------------------------------
MEMFD_LUO_FH_COMPATIBLE_V2 = "memfd-v2"
#: ``struct memfd_luo_ser`` (packed): pos, size, u32 seals, u32 flags, nr_folios, folios
MEMFD_SER_V2 = struct.Struct("<QQIIQ16s")
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
F_SEAL_FUTURE_WRITE, F_SEAL_EXEC = 0x10, 0x20
MEMFD_LUO_ALL_SEALS = (
    F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC
)
UINT_MAX = 0xFFFFFFFF

#: What the limits come to: records per block and the most a chain of
#: ``KHO_MAX_BLOCKS`` blocks holds (the next one is ENOSPC).
LUO_V5_SESSIONS_PER_BLOCK = (PAGE_SIZE - 16) // SESSION_SER.size  # 51
LUO_V5_FILES_PER_BLOCK = (PAGE_SIZE - 16) // FILE_SER.size  # 63
LUO_V5_SESSION_MAX = LUO_V5_SESSIONS_PER_BLOCK * KHO_MAX_BLOCKS
LUO_V5_FILE_MAX = LUO_V5_FILES_PER_BLOCK * KHO_MAX_BLOCKS

_U64 = struct.Struct("<Q")


def _strscpy_bytes(text: str | bytes, size: int) -> bytes:
    """What ``strscpy(dst, src, size)`` writes: at most ``size - 1`` bytes and a NUL (the
    rest of ``dst`` is left as it was)."""
    raw = text.encode("latin-1") if isinstance(text, str) else text
    return raw.split(b"\0", 1)[0][: size - 1] + b"\0"


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


# -- sessions and files ------------------------------------------------------------------------
class LuoSessionV5(LuoSession):
    """``struct luo_session`` of 7.2: its files' records are a kho_block chain
    (``struct luo_file_set``)."""

    def __init__(self, name: bytes, incoming: bool, file_set: KhoBlockSet) -> None:
        super().__init__(name, incoming)
        self.file_set = file_set


class LuoFileV5(LuoFile):
    """``struct luo_file`` of 7.2: ``retrieve_status`` (0 never tried, 1 retrieved, a
    negative errno: the retrieve failed and fails so again) and the id under which the
    file sits in ``luo_preserved_files``."""

    def __init__(self, handler: FileHandler, token: int, serialized_data: int) -> None:
        super().__init__(handler, token, serialized_data)
        self.retrieve_status = 0
        self.file_id: object = None


def luo_get_id(source: LuoFileSource) -> object:
    """``luo_get_id``: the handler's ``get_id`` -- memfd's is the inode -- which a
    transport gives as ``source.file_id()``; without it, the file object itself (the
    kernel's default, ``(unsigned long)file``)."""
    file_id = getattr(source, "file_id", None)
    return file_id() if callable(file_id) else ("file", id(source))


# -- KHO helpers of the receiving side --------------------------------------------------------
def kho_restore_free(kho: KhoBlobEra, phys: int) -> None:
    """``kho_restore_free``: restore the folio and free it to the page allocator."""
    kho.kho_restore_free(phys)


def kho_restore_vmalloc_free(kho: KhoBlobEra, desc: bytes) -> bytes | None:
    """``kho_restore_vmalloc`` and the ``vfree`` that follows its use: the area's bytes
    (None when a page is not preserved); the chunk pages and the data pages go back to
    the page allocator."""
    chunks, pages, total, order = _vmalloc_walk(kho, desc)
    if len(pages) != total or order > 10:
        return None
    mem = kho.kernel.mem
    out = []
    restored: list[tuple[int, int]] = []
    for phys in pages:
        if kho.kho_restore_folio(phys) is None:
            return None
        restored.append((phys, order))
        out.append(mem.read(phys, PAGE_SIZE << order))
    for chunk in chunks:
        if kho.kho_restore_folio(chunk) is None:
            return None
        kho.pages.free_restored(chunk, 0)
    for phys, o in restored:
        kho.pages.free_restored(phys, o)
    return b"".join(out)


# -- mm/memfd_luo.c of 7.2 ------------------------------------------------------------------------
class MemfdLuoV2(MemfdLuo):
    """mm/memfd_luo.c in 7.2 (``memfd-v2``): size, position, seals and contents.

    As in 6.19 (:class:`kho_fs.model.luo.MemfdLuo`, whose preserve, unpreserve, freeze,
    finish and folio walks this is) the folios covering the whole size are allocated and
    preserved at preserve time and the file's bytes copied into them at freeze. New: the
    seals (``memfd_get_seals``; a memfd created without ``MFD_ALLOW_SEALING`` has
    ``F_SEAL_SEAL``) are recorded -- unknown ones are EOPNOTSUPP -- and applied to the
    retrieved file; a file of more than ``UINT_MAX`` pages is EFBIG; ``flags`` is 0. What
    the receiving side restores and does not hand to the file goes back to the page
    allocator (``kho_restore_free``), and ``retrieve`` checks and unwinds as 7.2 does.
    """

    compatible = MEMFD_LUO_FH_COMPATIBLE_V2
    ser = MEMFD_SER_V2

    def _seals(self, source: LuoFileSource) -> int:
        seals = getattr(source, "seals", None)
        return int(seals()) if callable(seals) else F_SEAL_SEAL

    def _memfd_luo_ser_fields(self, source: LuoFileSource) -> tuple[int, ...]:
        """pos, size, seals, flags: seals this version does not know are EOPNOTSUPP, more
        than ``UINT_MAX`` pages EFBIG."""
        seals = self._seals(source)
        if seals & ~MEMFD_LUO_ALL_SEALS:
            raise KernelError(errno.EOPNOTSUPP, "seals this version cannot preserve")
        pos = source.pos()
        size = source.size()
        if -(-size // PAGE_SIZE) > UINT_MAX:
            raise KernelError(errno.EFBIG, "more than UINT_MAX pages")
        return pos, size, seals, 0

    def retrieve(self, luo: Luo, f: LuoFile) -> RestoredFile:
        """``memfd_luo_retrieve``: no serialized data is EINVAL, unknown seals EOPNOTSUPP,
        a folio list that cannot be restored EINVAL, a folio EIO; the serialization page
        is freed whatever happens."""
        if not f.serialized_data:
            raise KernelError(errno.EINVAL, "no serialized data")
        pos, size, seals, _flags, nr_folios, desc = self._memfd_luo_ser(luo, f)
        try:
            if seals & ~MEMFD_LUO_ALL_SEALS:
                raise KernelError(errno.EOPNOTSUPP, "seals this version cannot restore")
            extents: list[tuple[int, int, int]] = []
            if nr_folios:
                array = self._kho_restore_vmalloc(luo, desc)
                if array is None:
                    raise KernelError(errno.EINVAL, "folio list")
                count = min(nr_folios, MAX_INCOMING_ITEMS, len(array) // MEMFD_FOLIO_SER.size)
                entries = _memfd_luo_folios(array, count)
                extents = self._memfd_luo_retrieve_folios(luo, entries, size)
        finally:
            self._kho_restore_free(luo, f.serialized_data)
        return RestoredFile(size, pos, extents, seals)

    def _memfd_luo_retrieve_failed(
        self, luo: Luo, restored: list[tuple[int, int]], rest: list[tuple[int, int]]
    ) -> None:
        """The folios restored so far go with the file (freed at its ``fput``), the rest
        are restored and freed."""
        kho = _blob_kho(luo)
        for done, order in restored:
            kho.pages.free_restored(done, order)
        for later, _ in rest:
            later_pfn = later & MEMFD_LUO_PFN_MASK
            if later_pfn:
                kho.kho_restore_free(later_pfn << 12)

    def _memfd_luo_retrieve_tried(self, f: LuoFile) -> bool:
        """7.2 asks ``retrieve_status``: a retrieve that failed took the folios too (and
        a file without serialized data has none)."""
        return bool(getattr(f, "retrieve_status", 0)) or not f.serialized_data

    def _memfd_luo_discard_folio(self, luo: Luo, phys: int, order: int) -> None:
        luo.kho.pages.free_restored(phys, order)

    def _kho_restore_vmalloc(self, luo: Luo, desc: bytes) -> bytes | None:
        return kho_restore_vmalloc_free(_blob_kho(luo), desc)

    def _kho_restore_free(self, luo: Luo, phys: int) -> None:
        kho_restore_free(_blob_kho(luo), phys)


def _blob_kho(luo: Luo) -> KhoBlobEra:
    return cast("KhoBlobEra", luo.kernel.kho)


# -- the LUO core of 7.2 ----------------------------------------------------------------------
_SESSION_OPS_V5: dict[int, tuple[int, int, bool | None]] = {
    **_SESSION_OPS,
    # LUO_IOCTL_ALL: outgoing and incoming sessions; min size offsetofend(name) = 72
    LIVEUPDATE_CMD_SESSION_GET_NAME: (LIVEUPDATE_SESSION_GET_NAME, GET_NAME_ARG.size, None),
}
_KSIZE_V5 = {**_KSIZE, LIVEUPDATE_SESSION_GET_NAME: GET_NAME_ARG.size}


class LuoV5(Luo):
    """One 7.2 kernel's LUO. Reuses :class:`Luo`'s fields: ``fdt_out`` is the outgoing
    ``struct luo_ser``, ``fdt_in`` the incoming one (freed once read), ``out_flb_header``
    the FLB page; ``incoming_active`` is the incoming session header's ``active``."""

    device_ops = _DEVICE_OPS
    session_ops = _SESSION_OPS_V5
    ksize = _KSIZE_V5
    luo_entry_kind = "LUO state"
    memfd_handler = MemfdLuoV2

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        kho = cast("KhoBlobEra", kernel.kho)
        # luo_session_global.{outgoing,incoming}.block_set
        self.sessions_out = KhoBlockSet(kho, SESSION_SER.size)
        self.sessions_in = KhoBlockSet(kho, SESSION_SER.size)
        self.in_flb_header = 0  # luo_flb_global.incoming.header_ser
        #: ``luo_preserved_files``: get_id -> the file preserved (outgoing) under it; the
        #: retrieved incoming files, whose ids the transport sets once it built them
        self.preserved_files: dict[object, LuoFileV5] = {}
        self.retrieved_files: dict[int, LuoFileV5] = {}

    def new_file_set(self) -> KhoBlockSet:
        """``luo_file_set_init``: an empty chain of ``luo_file_ser`` records."""
        return KhoBlockSet(_blob_kho(self), FILE_SER.size)

    # -- boot: luo_early_startup ------------------------------------------------------
    def _kho_retrieve_luo(self) -> tuple[int, int]:
        """The ``LUO`` entry is a sized blob (``kho_retrieve_blob``)."""
        return _blob_kho(self).kho_retrieve_blob(LUO_KHO_ENTRY_NAME)

    def _luo_restore_incoming(self, phys: int, length: int) -> int:
        """Read the incoming ``struct luo_ser``: its size and compatible, the number, the
        session chain; then free it. 0 or a negative errno."""
        kho = _blob_kho(self)
        if length < LUO_SER.size:
            self.printk(f"luo: LUO state is too small ({length} < {LUO_SER.size})", KERN_ERR)
            return -errno.EINVAL
        compat, number, sessions_pa, flbs_pa = LUO_SER.unpack(self.mem.read(phys, LUO_SER.size))
        if _cstr(compat) != LUO_ABI_COMPATIBLE.encode():  # strncmp(…, LUO_ABI_COMPAT_LEN)
            self.printk(f"luo: LUO state is incompatible with '{LUO_ABI_COMPATIBLE}'", KERN_ERR)
            return -errno.EINVAL
        self._luo_retrieved(number, phys)
        err = self.luo_session_setup_incoming(sessions_pa)
        if not err:
            self.luo_flb_setup_incoming(flbs_pa)
        kho_restore_free(kho, phys)
        return err

    def luo_session_setup_incoming(self, sessions_pa: int) -> int:
        if not sessions_pa:
            return 0
        err = self.sessions_in.kho_block_set_restore(sessions_pa)
        if err:
            return err
        self.incoming_active = True
        return 0

    def luo_flb_setup_incoming(self, flbs_pa: int) -> None:
        """The FLB header is only remembered: no FLB is registered in kho-fs's kernels,
        so nothing reads it (and its page stays reserved)."""
        self.in_flb_header = flbs_pa

    # -- boot: late initcalls (Luo.late_init) ----------------------------------------------
    def luo_late_startup(self) -> int:
        """``luo_late_startup`` of 7.2 is ``luo_state_setup``."""
        return self.luo_state_setup()

    def luo_state_setup(self) -> int:
        """The outgoing ``struct luo_ser`` (number + 1, no sessions yet), the FLB page,
        and the ``LUO`` subtree of 32 bytes. 0 or a negative errno."""
        kho = _blob_kho(self)
        try:
            ser = kho.kho_alloc_preserve(LUO_SER.size)
        except KernelError as exc:
            self.printk("luo: failed to allocate/preserve LUO state memory", KERN_ERR)
            return -exc.errno
        self.mem.write(ser, _strscpy_bytes(LUO_ABI_COMPATIBLE, LUO_ABI_COMPAT_LEN))
        self.mem.write(ser + 8, _U64.pack((self.liveupdate_num + 1) & ((1 << 64) - 1)))
        err = self.luo_flb_setup_outgoing(ser)
        if not err:
            try:
                kho.kho_add_subtree(LUO_KHO_ENTRY_NAME, ser, size=LUO_SER.size)
            except KernelError as exc:
                err = -exc.errno
        if err:
            kho_unpreserve_free(kho, ser)
            self.printk(f"luo: failed to prepare LUO state: {err}", KERN_ERR)
            return err
        self.fdt_out = ser
        return 0

    def luo_flb_setup_outgoing(self, ser: int) -> int:
        try:
            header = self.kho.kho_alloc_preserve(LUO_FLB_PGCNT * PAGE_SIZE)
        except KernelError as exc:
            return -exc.errno
        self.mem.write(ser + LUO_SER_FLBS_PA, _U64.pack(header))
        self.mem.write(header, _U64.pack(LUO_FLB_PGCNT))
        self.out_flb_header = header
        return 0

    # -- the ioctls that differ ------------------------------------------------------------
    def luo_session_get_name(self, session: LuoSession, raw: bytes) -> bytes:
        _size, reserved, _name = GET_NAME_ARG.unpack(raw)
        if reserved:
            raise KernelError(errno.EINVAL, "reserved is not zero")
        out = bytearray(raw)  # strscpy: the rest of the field keeps the caller's bytes
        name = _strscpy_bytes(session.name, LIVEUPDATE_SESSION_NAME_LENGTH)
        out[8 : 8 + len(name)] = name
        return bytes(out)

    def luo_session_finish(self, session: LuoSession, raw: bytes) -> None:
        """7.2 refuses a non-zero ``reserved`` (EINVAL)."""
        if FINISH_RESERVED.unpack(raw)[1]:
            raise KernelError(errno.EINVAL, "reserved is not zero")
        self.luo_session_finish_one(session)

    # -- sessions ----------------------------------------------------------------------------
    def _luo_session_new(self, raw_name: bytes) -> LuoSession:
        """A name of 1 to 63 bytes (EINVAL)."""
        name = raw_name[:LIVEUPDATE_SESSION_NAME_LENGTH].split(b"\0", 1)[0]
        if not name or len(name) > LIVEUPDATE_SESSION_NAME_LENGTH - 1:
            raise KernelError(errno.EINVAL, "session name of 0 or 64 bytes")
        return LuoSessionV5(name, incoming=False, file_set=self.new_file_set())

    def _luo_session_reserve(self) -> None:
        """Room in the session chain: a new block when the last is full (ENOMEM,
        ENOSPC). The block grown for a duplicate name stays (the kernel grows before it
        compares)."""
        err = self.sessions_out.kho_block_set_grow(len(self.outgoing) + 1)
        if err:
            raise KernelError(-err, "no room for the session record")

    def luo_session_remove(self, session: LuoSession) -> None:
        super().luo_session_remove(session)
        if not session.retrieved:
            self.sessions_out.kho_block_set_shrink(len(self.outgoing))

    def _luo_file_finished(self, session: LuoSession, f: LuoFile) -> None:
        """``luo_file_finish`` of 7.2: the file leaves the retrieved ones, its record
        block is released as the count drops."""
        assert isinstance(session, LuoSessionV5)
        if f.restored is not None:
            self.retrieved_files.pop(id(f), None)
        super()._luo_file_finished(session, f)
        session.file_set.kho_block_set_shrink(len(session.files))

    def luo_file_set_destroy(self, session: LuoSession) -> None:
        """The session's record chain is freed (``kho_block_set_destroy``)."""
        assert isinstance(session, LuoSessionV5)
        session.file_set.kho_block_set_destroy()

    # -- files ---------------------------------------------------------------------------------
    def _file_in_use(self, file_id: object) -> bool:
        """``xa_insert(&luo_preserved_files, …)`` would say EBUSY: the file is preserved in
        some session, or retrieved and its session not finished yet."""
        if file_id in self.preserved_files:
            return True
        return any(
            f.restored is not None and f.restored.file_id == file_id
            for f in self.retrieved_files.values()
        )

    def luo_preserve_file(
        self, session: LuoSession, token: int, source: LuoFileSource | None
    ) -> None:
        """Checks in 7.2's order: token in use (EEXIST), room for the record (ENOMEM,
        ENOSPC), an open file (EBADF), a handler (ENOENT), the file not preserved
        elsewhere (EBUSY), then the handler's own errors."""
        assert isinstance(session, LuoSessionV5)
        for f in session.files:
            if f.token == token:
                raise KernelError(errno.EEXIST, "token in use")
        file_set = session.file_set
        err = file_set.kho_block_set_grow(len(session.files) + 1)
        if err:
            raise KernelError(-err, "no room for the file record")
        try:
            if source is None:
                raise KernelError(errno.EBADF, "not an open descriptor")
            handler = next((h for h in self.handlers if h.can_preserve(source)), None)
            if handler is None:
                raise KernelError(errno.ENOENT, "no handler accepts the file")
            file_id = luo_get_id(source)
            if self._file_in_use(file_id):
                raise KernelError(errno.EBUSY, "the file is preserved already")
            f = LuoFileV5(handler, token, 0)
            f.source = source
            handler.preserve(self, f)
        except BaseException:  # KernelError, or OSError from the transport's file
            file_set.kho_block_set_shrink(len(session.files))
            raise
        f.file_id = file_id
        self.preserved_files[file_id] = f
        session.files.append(f)
        self.kernel.changed()

    def _luo_file_retrieve(self, f: LuoFile) -> RestoredFile:
        """A retrieve that failed fails again with its errno (``retrieve_status``); one
        that succeeds puts the file among the retrieved ones."""
        assert isinstance(f, LuoFileV5)
        if f.retrieve_status < 0:
            raise KernelError(-f.retrieve_status, "the retrieve failed before")
        try:
            restored = f.handler.retrieve(self, f)
        except KernelError as exc:
            f.retrieve_status = -exc.errno
            raise
        f.retrieve_status = 1
        self.retrieved_files[id(f)] = f
        return restored

    def _luo_file_unpreserved(self, session: LuoSession, f: LuoFile) -> None:
        """The file leaves ``luo_preserved_files``; its record block is released as the
        count drops."""
        assert isinstance(session, LuoSessionV5)
        if isinstance(f, LuoFileV5):
            self.preserved_files.pop(f.file_id, None)
        session.file_set.kho_block_set_shrink(len(session.files))

    # -- the next kernel: deserialize at the first open ----------------------------------------
    def luo_session_deserialize(self) -> int:
        """Every session record of the chain restored at boot; the first failure (a
        duplicate name, files that cannot all be taken) is kept and returned at every
        later open. The session chain is freed either way."""
        if self.deserialized is not None:
            return self.deserialized
        self.deserialized = 0
        if not self.incoming_active:
            return 0
        it = KhoBlockSetIt(self.sessions_in)
        err = 0
        while True:
            ser = it.read_entry()
            if not ser:
                break
            err = self._luo_session_deserialize_one(ser)
            if err:
                break
        self.sessions_in.kho_block_set_destroy()
        self.deserialized = err
        self.kernel.changed()
        return err

    def _luo_session_deserialize_one(self, ser: int) -> int:
        name, files, count = SESSION_SER.unpack(self.mem.read(ser, SESSION_SER.size))
        session = LuoSessionV5(_strscpy_name(name), incoming=True, file_set=self.new_file_set())
        err = self._luo_session_insert(session)
        if err:
            return err
        err = self.luo_file_deserialize(session, files, count)
        if err:
            self.printk(
                f"luo: Failed to deserialize files for session [{session.display_name}] "
                f"{errname(err)}",
                KERN_WARNING,
            )
        return err

    def luo_file_deserialize(self, session: LuoSessionV5, files: int, count: int) -> int:
        if not files:
            return 0  # WARN_ON(count)
        file_set = session.file_set
        err = file_set.kho_block_set_restore(files)
        if err:
            return err
        it = KhoBlockSetIt(file_set)
        found = 0
        while True:
            at = it.read_entry()
            if not at:
                break
            compat, data, token = FILE_SER.unpack(self.mem.read(at, FILE_SER.size))
            handler = self._luo_file_handler(compat)
            if handler is None:
                err = -errno.ENOENT
                break
            session.files.append(LuoFileV5(handler, token, data))
            found += 1
        if not err and found != count:
            self.printk(f"luo: File count mismatch: expected {count}, found {found}", KERN_WARNING)
            err = -errno.EINVAL
        if err:
            session.files.clear()
            file_set.kho_block_set_destroy()
        return err

    # -- reboot(LINUX_REBOOT_CMD_KEXEC): Luo.liveupdate_reboot, without kho_finalize ------------
    def luo_flb_serialize(self) -> None:
        """No FLB is registered (memfd uses none): the header's count is 0."""
        if self.out_flb_header:
            self.mem.write(self.out_flb_header + 8, _U64.pack(0))

    def luo_session_serialize(self) -> int:
        """Each session's files frozen into their chain, then its record (name, file
        chain, count) in the session chain; ``sessions_pa`` set last. A failure undoes
        the sessions frozen so far (their names zeroed, file records cleared)."""
        mem = self.mem
        mem.write(self.fdt_out + LUO_SER_SESSIONS_PA, _U64.pack(0))
        it = KhoBlockSetIt(self.sessions_out)
        err = 0
        done: list[LuoSessionV5] = []
        for session in self.outgoing:
            assert isinstance(session, LuoSessionV5)
            ser = it.reserve_entry()
            if not ser:  # WARN_ON_ONCE: the blocks were grown at create
                err = -errno.ENOSPC
                break
            err = self.luo_file_freeze(session, ser + SESSION_FILE_SET_OFFSET)
            if err:
                it.prev()
                break
            mem.write(ser, _strscpy_bytes(session.name, LIVEUPDATE_SESSION_NAME_LENGTH))
            done.append(session)
        if err:
            for session in reversed(done):
                ser = it.prev()
                self.luo_file_unfreeze(session, ser + SESSION_FILE_SET_OFFSET)
                mem.write(ser, bytes(LIVEUPDATE_SESSION_NAME_LENGTH))
            return err
        if self.outgoing:
            mem.write(
                self.fdt_out + LUO_SER_SESSIONS_PA,
                _U64.pack(self.sessions_out.kho_block_set_head_pa()),
            )
        return 0

    def luo_file_freeze(self, session: LuoSessionV5, file_set_ser: int) -> int:
        if not session.files:
            return 0
        it = KhoBlockSetIt(session.file_set)
        for f in session.files:
            at = it.reserve_entry()
            if not at:  # WARN_ON_ONCE
                self._luo_file_unfreeze_until(session, f)
                return -errno.ENOSPC
            err = self._luo_file_freeze_one(f)
            if err:
                self._luo_file_unfreeze_until(session, f)
                return err
            compat = _strscpy_bytes(f.handler.compatible, LIVEUPDATE_HNDL_COMPAT_LENGTH)
            self.mem.write(at, compat)
            self.mem.write(
                at + LIVEUPDATE_HNDL_COMPAT_LENGTH, FILE_DATA_TOKEN.pack(f.serialized_data, f.token)
            )
        self.mem.write(
            file_set_ser,
            FILE_SET_SER.pack(session.file_set.kho_block_set_head_pa(), len(session.files)),
        )
        return 0

    def _luo_file_unfreeze_until(self, session: LuoSessionV5, failed: LuoFile | None) -> None:
        """``__luo_file_unfreeze``: unfreeze the files before ``failed`` (all: None), then
        clear the file records."""
        for f in session.files:
            if f is failed:
                break
            f.handler.unfreeze(self, f)
        session.file_set.kho_block_set_clear()

    def luo_file_unfreeze(self, session: LuoSessionV5, file_set_ser: int) -> None:
        if not session.files:
            return
        self._luo_file_unfreeze_until(session, None)
        self.mem.write(file_set_ser, bytes(FILE_SET_SER.size))


__all__ = [
    "LUO_ABI_COMPATIBLE",
    "LUO_SER",
    "LUO_V5_FILE_MAX",
    "LUO_V5_SESSION_MAX",
    "MEMFD_LUO_ALL_SEALS",
    "MEMFD_LUO_FH_COMPATIBLE_V2",
    "MEMFD_SER_V2",
    "LuoV5",
    "MemfdLuoV2",
]
