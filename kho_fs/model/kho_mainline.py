"""Kexec HandOver as mainline kernels do it (6.16 – 7.0): scratch, preservation, sub-FDTs.

Function names follow kernel/kexec_handover.c (6.16) and kernel/liveupdate/
kexec_handover.c (6.19): ``kho_parse_scratch_size``, ``kho_reserve_scratch``,
``kho_preserve_folio``, ``kho_add_subtree``, ``kho_finalize``, ``kho_abort``,
``kho_populate``, ``kho_memory_init``, ``kho_fill_kimage``. What differs between the
releases of this family is a trait of :class:`~kho_fs.model.releases.Release`.

Everything the next kernel needs lives in emulated RAM: the root FDT page (read at exec
time through its address, never copied), the sub-FDT pages, the bitmaps and the chunk
list of the preserved-memory map, the scratch table. The receiving side reads only those
bytes, so a handover between two releases behaves as on hardware.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from kho_fs.model.cmdline import kstrtobool, kstrtoull, memparse
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING
from kho_fs.model.errors import KernelError, report_crash
from kho_fs.model.fdt import FDT_MAGIC, Fdt, FdtSw, fdt_check_header, fdt_header_totalsize
from kho_fs.model.kho import KhoMem, kho_mem_pack, kho_mem_unpack
from kho_fs.model.kho_mem_map import KhoMemTrack, deserialize_runs
from kho_fs.model.memblock import MEMBLOCK_ALLOC_ACCESSIBLE, NUMA_NO_NODE
from kho_fs.model.notifier import NOTIFY_BAD, BlockingNotifierHead, NotifierBlock, notifier_to_errno
from kho_fs.model.units import PAGE_SIZE, PAGEBLOCK_SIZE, U64_MASK, hex_, round_up

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel
    from kho_fs.model.page_alloc import PageAllocator

log = logging.getLogger(__name__)

KHO_FDT_COMPATIBLE = "kho-v1"
PROP_PRESERVED_MEMORY_MAP = "preserved-memory-map"
PROP_SUB_FDT = "fdt"
KEXEC_KHO_FINALIZE = 0
KEXEC_KHO_ABORT = 1
ARCH_LOW_ADDRESS_LIMIT = 0xFFFFFFFF  # x86-64
CMA_MIN_ALIGNMENT_BYTES = PAGEBLOCK_SIZE
KHO_SCRATCH_SIZE = 16  # struct kho_scratch: u64 addr, u64 size
MAX_PAGE_ORDER = 10
FDT_ERR_NOTFOUND = 1
FDT_ERR_EXISTS = 2
FDT_ERR_NOSPACE = 3
FDT_ERR_BADMAGIC = 9
FDT_ERR_BADVERSION = 10
FDT_ERR_TRUNCATED = 8
FDT_ERR_BADSTRUCTURE = 11
U32_MAX = 0xFFFFFFFF

_ERRNO_NAMES = {
    getattr(errno, n): n
    for n in (
        "ENOMEM",
        "EINVAL",
        "ENOENT",
        "EEXIST",
        "EFAULT",
        "EBUSY",
        "ENOSPC",
        "E2BIG",
        "EOPNOTSUPP",
    )
}


def errname(err: int) -> str:
    """``%pe`` of ERR_PTR(err): ``-ENOMEM`` for known codes, the number otherwise."""
    name = _ERRNO_NAMES.get(-err)
    return f"-{name}" if name else str(err)


class KhoBlob(NamedTuple):
    """A debugfs blob of KHO: ``name`` over ``size`` bytes of RAM at ``phys``.

    ``serial`` distinguishes a blob from an earlier one at the same path (a file that was
    removed and created again is a new file)."""

    name: str
    phys: int
    size: int
    serial: int


class KhoSerialization:
    """``struct kho_serialization`` (6.16–6.18): what the FINALIZE notifier receives."""

    def __init__(self, kho: KhoMainline, fdt: FdtSw) -> None:
        self.kho = kho
        self.fdt = fdt


class KhoMainline:
    """One mainline kernel's KHO: ``kho_out``, ``kho_in`` and the scratch areas."""

    kind = "mainline"
    scratch_names: tuple[str, ...] = ("lowmem", "global")  # labels of the first scratch areas

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.release = kernel.release
        self.kho_enable = False  # Decision: CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=n
        self.scratch_scale = 200
        self.scratch_size_lowmem = 0
        self.scratch_size_global = 0
        self.scratch_size_pernode = 0
        self.scratch: list[KhoMem] = []
        self.scratch_table = 0  # physical address of the table (kho_scratch)
        self.notifiers = BlockingNotifierHead()
        self._track: KhoMemTrack | None = None
        # kho_out
        self.debugfs = False  # /sys/kernel/debug/kho exists
        self.finalized = False
        self.fdt_page = 0  # the root FDT page
        self.preserved_mem_map = 0  # first chunk of the serialized map (6.16–6.18)
        self.out_fdt: KhoBlob | None = None
        self.out_sub_fdts: list[KhoBlob] = []
        self._serial = 0
        # kho_in
        self.fdt_in_phys = 0
        self.fdt_in_len = 0
        self.scratch_in_phys = 0
        self.mem_map_in_phys = 0
        self.in_fdt: KhoBlob | None = None
        self.in_sub_fdts: list[KhoBlob] = []
        self._preserved_runs: list[tuple[int, int, int]] = []  # (phys, size, order) heads
        self._restored: set[int] = set()

    # -- helpers ----------------------------------------------------------------
    def printk(self, text: str, level: int = KERN_INFO) -> None:
        self.kernel.printk(text, level)

    @property
    def pages(self) -> PageAllocator:
        return self.kernel.pages

    @property
    def track(self) -> KhoMemTrack:
        if self._track is None:
            self._track = KhoMemTrack(self.kernel.mem, self.pages, self.release.bitmap_bytes)
        return self._track

    def _blob(self, name: str, phys: int, size: int) -> KhoBlob:
        self._serial += 1
        return KhoBlob(name, phys, size, self._serial)

    @property
    def init_level(self) -> str:
        """``kho_init`` is a late initcall in 6.16–6.18, a filesystem one from 6.19."""
        return "fs" if self.release.subtrees_at_init else "late"

    def core_initcalls(self) -> None:
        pass

    # -- early parameters ---------------------------------------------------------
    def early_params(self) -> dict[str, Callable[[str | None], bool]]:
        return {"kho": self.kho_parse_enable, "kho_scratch": self.kho_parse_scratch_size}

    def kho_parse_enable(self, value: str | None) -> bool:
        if value is None:
            return False
        try:
            self.kho_enable = kstrtobool(value)
        except KernelError:
            return False
        return True

    def kho_parse_scratch_size(self, value: str | None) -> bool:
        """``kho_scratch=N%`` or ``L,G,P`` (spec §3.1); False means malformed."""
        if not value:
            return False
        text = value.split("\0", 1)[0]
        if not text:
            return False
        if text.endswith("%"):
            if len(text) > 11:
                return False
            try:
                scale = kstrtoull(text[:-1], 10)
            except KernelError:
                return False
            if scale > U32_MAX:
                return False
            self.scratch_scale = scale
            signed = scale - (1 << 32) if scale & 0x80000000 else scale
            self.printk(f"KHO: scratch scale is {signed}%", KERN_NOTICE)
            return True
        sizes: list[int] = []
        pos = 0
        for i in range(3):
            if i:
                if text[pos : pos + 1] != ",":
                    return False
                pos += 1
            size, end = memparse(text, pos)
            if end == pos or (not size and not self.release.scratch_strict_parse):
                return False
            sizes.append(size)
            pos = end
        if self.release.scratch_strict_parse and (not sum(sizes) & U64_MASK or pos < len(text)):
            return False
        self.scratch_size_lowmem, self.scratch_size_global, self.scratch_size_pernode = sizes
        self.scratch_scale = 0
        pernode = sizes[2] >> 20
        pernode = pernode - (1 << 64) if pernode >> 63 else pernode
        self.printk(
            f"KHO: scratch areas: lowmem: {sizes[0] >> 20}MiB global: {sizes[1] >> 20}MiB "
            f"pernode: {pernode}MiB",
            KERN_NOTICE,
        )
        return True

    # -- first boot: scratch (kho_reserve_scratch) --------------------------------------
    def _scratch_size_update(self) -> None:
        if not self.scratch_scale:
            return
        mb = self.kernel.memblock
        size = mb.memblock_reserved_kern_size(ARCH_LOW_ADDRESS_LIMIT, NUMA_NO_NODE)
        size = size * self.scratch_scale // 100
        self.scratch_size_lowmem = round_up(size, CMA_MIN_ALIGNMENT_BYTES) & U64_MASK
        size = mb.memblock_reserved_kern_size(nid=NUMA_NO_NODE) * self.scratch_scale // 100
        size = (size - self.scratch_size_lowmem) & U64_MASK
        self.scratch_size_global = round_up(size, CMA_MIN_ALIGNMENT_BYTES) & U64_MASK

    def _scratch_size_node(self, nid: int) -> int:
        if self.scratch_scale:
            size = self.kernel.memblock.memblock_reserved_kern_size(nid=nid)
            size = size * self.scratch_scale // 100
        else:
            size = self.scratch_size_pernode
        return round_up(size, CMA_MIN_ALIGNMENT_BYTES) & U64_MASK

    #: alignment of every scratch area (a pageblock; 7.2: a MAX_PAGE_ORDER block)
    scratch_align = CMA_MIN_ALIGNMENT_BYTES

    def _scratch_nodes(self) -> list[int]:
        """The nodes that get a scratch area."""
        return self.kernel.online_nodes()

    def kho_reserve_scratch(self) -> None:
        """Table, low-memory area, global area, one area per node; any failure frees
        everything and disables KHO (spec §3.3)."""
        if not self.kho_enable:
            return
        self._scratch_size_update()
        mb = self.kernel.memblock
        nodes = self._scratch_nodes()
        count = len(nodes) + 2
        steps = self.release.scratch_step_messages
        table = mb.memblock_phys_alloc(count * KHO_SCRATCH_SIZE, PAGE_SIZE)
        areas: list[KhoMem] = []
        failure = None
        if not table:
            failure = "KHO: Failed to reserve scratch array"
        else:
            plan: list[tuple[int, Callable[[int], int], str]] = [
                (
                    self.scratch_size_lowmem,
                    lambda s: mb.memblock_phys_alloc_range(
                        s, self.scratch_align, 0, ARCH_LOW_ADDRESS_LIMIT
                    ),
                    "KHO: Failed to reserve lowmem scratch buffer",
                ),
                (
                    self.scratch_size_global,
                    lambda s: mb.memblock_phys_alloc(s, self.scratch_align),
                    "KHO: Failed to reserve global scratch buffer",
                ),
            ]
            for nid in nodes:
                plan.append(
                    (
                        self._scratch_size_node(nid),
                        lambda s, nid=nid: mb.memblock_alloc_range_nid(  # type: ignore[misc]
                            s, self.scratch_align, 0, MEMBLOCK_ALLOC_ACCESSIBLE, nid, True
                        ),
                        f"KHO: Failed to reserve nid {nid} scratch buffer",
                    )
                )
            for size, alloc, message in plan:
                addr = alloc(size)
                if not addr:
                    failure = message
                    break
                areas.append(KhoMem(addr, size))
        if failure is not None:
            if steps:
                self.printk(failure, KERN_ERR)
            for area in reversed(areas):
                mb.memblock_phys_free(area.addr, area.size)
            if table:
                mb.memblock_phys_free(table, count * KHO_SCRATCH_SIZE)
            if self.release.scratch_fail_message:
                self.printk(
                    "KHO: Failed to reserve scratch area, disabling kexec handover", KERN_WARNING
                )
            self.kho_enable = False
            return
        self.scratch = areas
        self.scratch_table = table
        self.kernel.mem.write(table, kho_mem_pack(areas))

    # -- preservation API (what KHO users call) -----------------------------------------
    def _check_busy(self) -> None:
        if self.finalized and self.release.preserve_busy_when_finalized:
            raise KernelError(errno.EBUSY, "KHO is finalized")

    def kho_preserve_folio(self, phys: int, order: int) -> None:
        self._check_busy()
        err = self.track.preserve_order(phys >> 12, order)
        if err:
            raise KernelError(-err)

    def kho_unpreserve_folio(self, phys: int, order: int) -> None:
        self.track.unpreserve_order(phys >> 12, order)

    def kho_preserve_phys(self, phys: int, size: int) -> None:
        """A page-aligned range as maximal aligned blocks (6.16 ``kho_preserve_phys``)."""
        self._check_busy()
        if phys % PAGE_SIZE or size % PAGE_SIZE:
            raise KernelError(errno.EINVAL, "range is not page aligned")
        err = self.track.preserve_pfn_range(phys >> 12, (phys + size) >> 12)
        if err:
            raise KernelError(-err)

    def kho_preserve_pages(self, phys: int, nr_pages: int) -> None:
        self._check_busy()
        if self._scratch_overlap(phys, nr_pages * PAGE_SIZE):
            raise KernelError(errno.EINVAL, "pages overlap KHO scratch")
        err = self.track.preserve_pfn_range(phys >> 12, (phys >> 12) + nr_pages)
        if err:
            raise KernelError(-err)

    def kho_unpreserve_pages(self, phys: int, nr_pages: int) -> None:
        self.track.unpreserve_pfn_range(phys >> 12, (phys >> 12) + nr_pages)

    def _scratch_overlap(self, phys: int, size: int) -> bool:
        return any(a.addr < phys + size and phys < a.end for a in self.scratch)

    def kho_alloc_preserve(self, size: int) -> int:
        """Zeroed pages for ``size`` bytes, preserved as one folio (6.19)."""
        order = max(0, (size - 1).bit_length() - 12) if size > PAGE_SIZE else 0
        if order > MAX_PAGE_ORDER:
            raise KernelError(errno.E2BIG)
        phys = self.pages.alloc_pages(order)
        if not phys:
            raise KernelError(errno.ENOMEM)
        try:
            self.kho_preserve_folio(phys, order)
        except KernelError:
            self.pages.free_pages(phys)
            raise
        return phys

    def register_kho_notifier(self, nb: NotifierBlock) -> None:
        self.notifiers.register(nb)

    def unregister_kho_notifier(self, nb: NotifierBlock) -> None:
        self.notifiers.unregister(nb)

    # -- subtrees ----------------------------------------------------------------------
    def kho_add_subtree(
        self, name: str, fdt_phys: int, ser: KhoSerialization | None = None
    ) -> None:
        """Record a user's sub-FDT in the root and create ``out/sub_fdts/<name>``.

        6.16–6.18 (``ser`` given): a child appended to the root being written at finalize.
        6.19+: the finished root page is opened, a child inserted first, then packed.
        """
        size = fdt_header_totalsize(self.kernel.mem.read(fdt_phys, 40))
        prop = struct.pack("<Q", fdt_phys)
        if ser is not None:
            fdt = ser.fdt
            err = fdt.begin_node(name) or fdt.property(PROP_SUB_FDT, prop) or fdt.end_node()
            if err:
                raise KernelError(errno.EINVAL if err != -FDT_ERR_NOSPACE else errno.ENOMEM)
            if any(b.name == name for b in self.out_sub_fdts):
                # debugfs_create_blob: the file a failed finalize left behind (spec §2.4)
                # still exists, so creating it again fails (6.16 kho_debugfs_fdt_add)
                raise KernelError(errno.EEXIST, f"out/sub_fdts/{name} exists")
        else:
            self._root_add_child(name, prop)
        self.out_sub_fdts.append(self._blob(name, fdt_phys, size))
        self.kernel.changed()

    def _root_add_child(self, name: str, prop: bytes) -> None:
        import libfdt  # pylibfdt

        page = self.kernel.mem.read(self.fdt_page, PAGE_SIZE)
        try:
            tree = libfdt.Fdt(page)
            tree.resize(PAGE_SIZE)
        except libfdt.FdtException as exc:
            raise KernelError(errno.ENOMEM) from exc
        off = tree.add_subnode(0, name, [libfdt.EXISTS, libfdt.NOSPACE])
        if off == -libfdt.EXISTS:
            raise KernelError(errno.EEXIST, f"subtree {name} exists")
        if off < 0:
            raise KernelError(errno.ENOMEM)
        if tree.setprop(off, PROP_SUB_FDT, prop, [libfdt.NOSPACE]) < 0:
            tree.del_node(off)
            tree.pack()
            self.kernel.mem.write(self.fdt_page, bytes(tree.as_bytearray()))
            raise KernelError(errno.ENOMEM)
        tree.pack()
        self.kernel.mem.write(self.fdt_page, bytes(tree.as_bytearray()))

    def kho_retrieve_subtree(self, name: str) -> int:
        """Physical address of the incoming sub-FDT ``name`` (ENOENT, EINVAL)."""
        fdt = self.incoming_fdt()
        if fdt is None:
            raise KernelError(errno.ENOENT)
        node = fdt.path_offset("/" + name) if "/" not in name else None
        if node is None:
            raise KernelError(errno.ENOENT)
        value = fdt.getprop(node, PROP_SUB_FDT)
        if value is None or len(value) != 8:
            raise KernelError(errno.EINVAL)
        return int(struct.unpack("<Q", value)[0])

    def incoming_fdt(self) -> Fdt | None:
        """The incoming root FDT as it is in RAM now."""
        if not self.fdt_in_phys:
            return None
        blob = self.kernel.mem.read(self.fdt_in_phys, self.fdt_in_len)
        try:
            return Fdt(blob)
        except Exception:  # overwritten through /dev/mem since boot
            return None

    # -- restore (receiving side) -------------------------------------------------------
    def kho_restore_folio(self, phys: int) -> int | None:
        """The order of the preserved folio at ``phys`` (its page info), or None."""
        if phys in self._restored:
            return None if self.release.page_magic else 0
        order = self._head_order(phys)
        if order is None:
            if self.release.page_magic:
                return None
            order = 0  # 6.16: page->private is 0 on a page nobody preserved
        self._restored.add(phys)
        return order

    def _head_order(self, phys: int) -> int | None:
        for start, size, order in self._preserved_runs:
            if start <= phys < start + size and (phys - start) % (PAGE_SIZE << order) == 0:
                return order
        return None

    # -- finalize / abort -----------------------------------------------------------------
    def _participant_crashed(self, nb: NotifierBlock, exc: BaseException) -> int:
        """A participant that raises fails its notifier call (NOTIFY_BAD, -EPERM)."""
        report_crash(self.kernel, nb, "notifier_call()", exc)
        return NOTIFY_BAD

    def kho_finalize(self) -> int:
        """0 or a negative errno (6.16–6.18: builds the root; 6.19: serializes the map)."""
        if self.release.subtrees_at_init:
            first = self.track.serialize()
            if first < 0:
                return first
            self._update_memory_map(first)
            self.finalized = True
            return 0
        fdt = FdtSw(PAGE_SIZE)
        err = (
            fdt.finish_reservemap()
            or fdt.begin_node("")
            or fdt.property_string("compatible", KHO_FDT_COMPATIBLE)
            or fdt.property(PROP_PRESERVED_MEMORY_MAP, bytes(8))
        )
        if not err:
            err = self._preserve_or_errno(lambda: self.kho_preserve_folio(self.fdt_page, 0))
        if not err:
            ser = KhoSerialization(self, fdt)
            err = notifier_to_errno(
                self.notifiers.call_chain(
                    KEXEC_KHO_FINALIZE, ser, on_error=self._participant_crashed
                )
            )
        if not err:
            first = self.track.serialize()
            if first < 0:
                err = first
            else:
                self.preserved_mem_map = first
                err = fdt.end_node() or fdt.finish()
                if not err:
                    blob = bytearray(fdt.blob())
                    at = _prop_offset(bytes(blob), PROP_PRESERVED_MEMORY_MAP)
                    blob[at : at + 8] = struct.pack("<Q", first)
                    self.kernel.mem.write(self.fdt_page, bytes(blob))
        if err:
            self.printk(f"KHO: Failed to convert KHO state tree: {err}", KERN_ERR)
            self.kho_abort()
            return err
        return 0

    def _preserve_or_errno(self, call: Callable[[], None]) -> int:
        try:
            call()
        except KernelError as exc:
            return -exc.errno
        return 0

    def _update_memory_map(self, first: int) -> None:
        """6.19 ``kho_update_memory_map``: swap the root's map address, free the old list."""
        page = bytearray(self.kernel.mem.read(self.fdt_page, PAGE_SIZE))
        at = _prop_offset(bytes(page), PROP_PRESERVED_MEMORY_MAP)
        old = struct.unpack_from("<Q", page, at)[0]
        if old:  # an address patched through out/fdt may not be a chunk list
            with contextlib.suppress(KernelError):
                self.track.free_chunks(old)
        self.kernel.mem.write(self.fdt_page + at, struct.pack("<Q", first))

    def kho_abort(self) -> int:
        """Drop every preservation, free the map, run ABORT (6.16–6.18, spec §2.4)."""
        self.track.destroy()
        if self.preserved_mem_map:
            self.track.free_chunks(self.preserved_mem_map)
            self.preserved_mem_map = 0
        err = notifier_to_errno(
            self.notifiers.call_chain(KEXEC_KHO_ABORT, None, on_error=self._participant_crashed)
        )
        if err:
            self.printk(f"KHO: Failed to abort KHO finalization: {err}", KERN_ERR)
        return err

    # -- debugfs: out/finalize, scratch_phys, scratch_len ----------------------------------
    def finalize_show(self) -> str:
        return f"{int(self.finalized)}\n"

    def finalize_store(self, value: int) -> None:
        """The parsed value of a ``finalize`` write (spec §2.3)."""
        rel = self.release
        if not self.kho_enable or not self.fdt_page:
            # 6.18+ answer so; in 6.16/6.17 the file exists only with KHO enabled
            raise KernelError(errno.EOPNOTSUPP)
        if rel.finalize_repeatable:
            if not value:
                raise KernelError(errno.EINVAL, "abort no longer exists")
            err = self.kho_finalize()
            if err:
                raise KernelError(-err)
            self.kernel.changed()
            return
        val = bool(value)
        if val == self.finalized:
            raise KernelError(errno.EEXIST if val else errno.ENOENT)
        err = self.kho_finalize() if val else self.kho_abort()
        if err:
            raise KernelError(-err if err < 0 else errno.EINVAL)
        self.finalized = val
        if val:
            size = fdt_header_totalsize(self.kernel.mem.read(self.fdt_page, 40))
            self.out_fdt = self._blob("fdt", self.fdt_page, size)
        else:
            self.out_fdt = None
            self.out_sub_fdts = []
        self.kernel.changed()

    def scratch_phys_show(self) -> str:
        return "".join(f"{hex_(a.addr)}\n" for a in self.scratch)

    def scratch_len_show(self) -> str:
        return "".join(f"{hex_(a.size)}\n" for a in self.scratch)

    def blob_read(self, blob: KhoBlob, offset: int, size: int) -> bytes:
        if offset >= blob.size:
            return b""
        return self.kernel.mem.read(blob.phys + offset, min(size, blob.size - offset))

    def blob_write(self, blob: KhoBlob, offset: int, data: bytes) -> int:
        """``write_file_blob``: patch the blob's bytes in RAM, bounded by its size."""
        if offset >= blob.size:
            return 0
        data = data[: blob.size - offset]
        self.kernel.mem.write(blob.phys + offset, data)
        return len(data)

    # -- late init (kho_init) -----------------------------------------------------------
    def kho_init(self) -> None:
        if not self.kho_enable:
            return
        rel = self.release
        if rel.subtrees_at_init:
            try:
                self.fdt_page = self.kho_alloc_preserve(PAGE_SIZE)
            except KernelError:
                self.kho_enable = False
                return
        else:
            self.fdt_page = self.pages.alloc_pages(0, zero=False)
            if not self.fdt_page:
                self.kho_enable = False
                return
        self.debugfs = True
        if rel.subtrees_at_init:
            fdt = FdtSw(PAGE_SIZE)
            fdt.finish_reservemap()
            fdt.begin_node("")
            fdt.property_string("compatible", KHO_FDT_COMPATIBLE)
            fdt.property(PROP_PRESERVED_MEMORY_MAP, bytes(8))
            fdt.end_node()
            fdt.finish()
            root = fdt.blob()
            self.kernel.mem.write(self.fdt_page, root)
        if self.fdt_in_phys:
            self._kho_in_debugfs_init()
        elif rel.subtrees_at_init:
            self.out_fdt = self._blob("fdt", self.fdt_page, len(root))

    def _kho_in_debugfs_init(self) -> None:
        fdt = self.incoming_fdt()
        if fdt is None:
            return
        self.in_fdt = self._blob("fdt", self.fdt_in_phys, fdt.totalsize)
        style = self.release.debugfs_messages
        for child in fdt.subnodes(0):
            name = fdt.get_name(child)
            value = fdt.getprop(child, PROP_SUB_FDT)
            if value is None:
                continue
            if len(value) != 8:
                text = (
                    f"KHO: node `{name}`'s prop `fdt` has invalid length: {len(value)}"
                    if style == "6.16"
                    else f"KHO: node {name} prop fdt has invalid length: {len(value)}"
                )
                self.printk(text, KERN_WARNING)
                continue
            phys = struct.unpack("<Q", value)[0]
            size = fdt_header_totalsize(self.kernel.mem.read(phys, 40))
            self.in_sub_fdts.append(self._blob(name, phys, size))

    # -- handover boot: populate (setup_arch) and memory init ------------------------------
    def kho_populate(
        self, fdt_phys: int, fdt_len: int, scratch_phys: int, scratch_len: int
    ) -> None:
        """Validate the handover (spec §4.3); on success enter scratch-only mode."""
        k = self.kernel
        rel = self.release
        err = 0
        scratch_cnt = scratch_len // KHO_SCRATCH_SIZE
        mem_map = 0
        if not k.mem.is_ram(fdt_phys, max(fdt_len, 1)):
            k.printk(f"KHO: setup: failed to memremap FDT ({hex_(fdt_phys)})", KERN_WARNING)
            err = -errno.EFAULT
        if not err:
            blob = k.mem.read(fdt_phys, fdt_len)
            ferr = fdt_check_header(blob) if len(blob) >= 40 else -FDT_ERR_TRUNCATED
            if not ferr and fdt_header_totalsize(blob) > fdt_len:
                ferr = -FDT_ERR_TRUNCATED
            if ferr:
                k.printk(
                    f"KHO: setup: handover FDT ({hex_(fdt_phys)}) is invalid: {ferr}",
                    KERN_WARNING,
                )
                err = -errno.EINVAL
        if not err:
            fdt = Fdt(blob[: fdt_header_totalsize(blob)])
            cerr = fdt.node_check_compatible(0, KHO_FDT_COMPATIBLE)
            if cerr:
                k.printk(
                    f"KHO: setup: handover FDT ({hex_(fdt_phys)}) is incompatible with "
                    f"'{KHO_FDT_COMPATIBLE}': {cerr}",
                    KERN_WARNING,
                )
                err = -errno.EINVAL
        if not err and rel.require_mem_map:
            mem_map = _get_mem_map_phys(fdt, k)
            if not mem_map:
                err = -errno.ENOENT
        if not err and (scratch_cnt == 0 or not k.mem.is_ram(scratch_phys, scratch_len)):
            k.printk(
                f"KHO: setup: failed to memremap scratch (phys={hex_(scratch_phys)}, "
                f"len={scratch_len})",
                KERN_WARNING,
            )
            err = -errno.EFAULT
        if err:
            k.printk(f"KHO: disabling KHO revival: {err}", KERN_WARNING)
            return
        self._adopt_scratch(scratch_phys, scratch_len)
        self.fdt_in_phys = fdt_phys
        self.fdt_in_len = fdt_header_totalsize(blob)
        self.mem_map_in_phys = mem_map
        k.printk(f"KHO: found kexec handover data.{rel.populate_found_suffix}")

    def _adopt_scratch(self, scratch_phys: int, scratch_len: int) -> None:
        """Populate's common end: the inherited areas become memory marked KHO_SCRATCH,
        the table is reserved, and memblock allocates from scratch only (spec §4.3)."""
        mb = self.kernel.memblock
        count = scratch_len // KHO_SCRATCH_SIZE
        table = kho_mem_unpack(self.kernel.mem.read(scratch_phys, count * KHO_SCRATCH_SIZE))
        for area in table:
            if area.size == 0 or area.addr + area.size > U64_MASK:
                continue
            mb.memblock_add(area.addr, area.size)
            mb.memblock_mark_kho_scratch(area.addr, area.size)
        mb.memblock_reserve(scratch_phys, scratch_len)
        mb.kho_scratch_only = True
        self.scratch_in_phys = scratch_phys
        self.scratch = table
        self.scratch_table = scratch_phys

    def kho_memory_init(self) -> None:
        """Walk the incoming map (reserve preserved blocks) or reserve scratch (§4.4)."""
        k = self.kernel
        if not self.fdt_in_phys:
            self.kho_reserve_scratch()
            return
        first = self.mem_map_in_phys
        if not self.release.require_mem_map:
            fdt = self.incoming_fdt()
            first = _get_mem_map_phys(fdt, k) if fdt is not None else 0
        runs = [
            (phys, min(size, U64_MASK + 1 - phys), order)
            for phys, size, order in deserialize_runs(k.mem.read, first, self.release.bitmap_bytes)
            if phys <= U64_MASK
        ]
        k.memblock.memblock_reserve_noinit_many((phys, size) for phys, size, _ in runs if size > 0)
        self._preserved_runs.extend(runs)
        if self.release.restore_root_folio and self.kho_restore_folio(self.fdt_in_phys) is None:
            k.printk("KHO: failed to restore folio for KHO fdt", KERN_WARNING)

    # -- kexec_file_load -----------------------------------------------------------------
    def kho_fill_kimage(self) -> tuple[int, bytes] | None:  # (root FDT address, table)
        """The root FDT's address and the scratch table a file load carries, or None."""
        if not self.kho_enable or not self.fdt_page:
            return None
        if self.release.kimage_needs_finalize and not self.finalized:
            return None
        # the segment is a copy of the kho_scratch array as RAM holds it at load time
        # (kimage_load_segment), so a table patched through /dev/mem is what is handed over
        size = KHO_SCRATCH_SIZE * len(self.scratch)
        table = self.kernel.mem.read(self.scratch_table, size) if self.scratch_table else b""
        return self.fdt_page, table or kho_mem_pack(self.scratch)

    def kho_scratch_ranges(self) -> list[KhoMem] | None:
        """While KHO is enabled every segment goes into scratch (``kho_locate_mem_hole``)."""
        return list(self.scratch) if self.kho_enable else None

    # -- views ----------------------------------------------------------------------------
    @property
    def handover(self) -> bool:
        return bool(self.fdt_in_phys)

    def preserved_blocks(self) -> list[tuple[int, int]]:
        return list(self.track.blocks()) if self._track is not None else []

    def status_lines(self) -> list[str]:
        if not self.debugfs:
            return ["KHO:         disabled (no /sys/kernel/debug/kho)"]
        blocks = self.preserved_blocks()
        total = sum(PAGE_SIZE << o for _, o in blocks)
        names = ", ".join(b.name for b in self.out_sub_fdts) or "none"
        return [
            f"KHO:         enabled, finalized={int(self.finalized)}, "
            f"preserved {len(blocks)} block(s) {total:#x} bytes, sub-FDTs: {names}"
        ]


def _prop_offset(blob: bytes, name: str) -> int:
    """File offset of the value of root property ``name`` in an FDT."""
    try:
        fdt = Fdt(blob)
    except ValueError as exc:  # a root patched through out/fdt (a real kernel would oops)
        raise KernelError(errno.EINVAL, f"the root FDT is not valid: {exc}") from None
    off = fdt.prop_value_offset(0, name)
    if off is None:
        raise KernelError(errno.EINVAL, f"no {name} in the root FDT")
    return off


def _get_mem_map_phys(fdt: Fdt, kernel: Any) -> int:
    value = fdt.getprop(0, PROP_PRESERVED_MEMORY_MAP)
    if value is None or len(value) != 8:
        kernel.printk("KHO: failed to get preserved memory bitmaps", KERN_ERR)
        return 0
    return int(struct.unpack("<Q", value)[0])


__all__ = ["FDT_MAGIC", "KhoBlob", "KhoMainline", "KhoSerialization", "errname"]
