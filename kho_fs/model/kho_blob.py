"""Kexec HandOver of the blob era, as Linux 7.2 does it (spec kho-mainline.md §0 "blob").

Read from Linux 7.2.13 kernel/liveupdate/kexec_handover.c, kexec_handover_debugfs.c,
include/linux/kho/abi/{kexec_handover,kexec_metadata}.h and mm/memblock.c, and checked
against a real 7.2.13 kernel booted in QEMU (``tests/data/golden/linux-7.2.13``). What
differs from 6.16 – 7.0 (:mod:`kho_fs.model.kho_mainline`):

- no ``finalize``: ``kho_init`` (a filesystem initcall) builds the root FDT at once,
  compatible ``kho-v4``, with ``preserved-memory-map`` pointing at the root of a radix
  tree (:mod:`kho_fs.model.kho_radix`) that every preservation updates in RAM until exec;
- subtrees are sized blobs: each root child has ``preserved-data`` (address) and
  ``blob-size``; ``out/sub_fdts/<name>`` has the caller's size;
- the ``kexec-metadata`` blob (a 73-byte record: version 1, the sending kernel's release,
  the kexec count) is added at init, and a handover boot logs
  ``KHO: exec from: <release> (count N)``;
- scratch areas are rounded to 4 MiB (``PAGE_SIZE << MAX_PAGE_ORDER``), explicit sizes too;
- the receiving side logs ``KHO: disabling KHO revival`` without a number;
- memblock preserves its sub-FDT page first, adds the subtree, then the regions
  (:class:`MemblockKhoBlob`).

Everything the next kernel reads is in emulated RAM, so a kexec to or from another release
misreads or refuses these bytes exactly as that release's code would (``kho-v1`` ≠
``kho-v4``: the "incompatible" line).
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import FdtSw, fdt_check_header, fdt_header_totalsize
from kho_fs.model.kho_mainline import (
    ARCH_LOW_ADDRESS_LIMIT,
    FDT_ERR_TRUNCATED,
    KHO_SCRATCH_SIZE,
    MAX_PAGE_ORDER,
    PROP_PRESERVED_MEMORY_MAP,
    KhoMainline,
    errname,
)
from kho_fs.model.kho_radix import KhoRadixTree, walk_radix_runs
from kho_fs.model.memblock import NUMA_NO_NODE
from kho_fs.model.memblock_kho import MEMBLOCK_KHO_FDT, MemblockKho, build_memblock_fdt
from kho_fs.model.units import PAGE_SIZE, U64_MASK, hex_, round_up

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel
    from kho_fs.model.reserve_mem import ReserveMem, ReserveMemRegion

KHO_FDT_COMPATIBLE_V4 = "kho-v4"
KHO_SUB_TREE_PROP_NAME = "preserved-data"
KHO_SUB_TREE_SIZE_PROP_NAME = "blob-size"
#: ``PAGE_SIZE * MAX_ORDER_NR_PAGES``: scratch sizes and alignment (7.2 SCRATCH_ALIGNMENT_BYTES)
SCRATCH_ALIGNMENT_BYTES = PAGE_SIZE << MAX_PAGE_ORDER
KHO_METADATA_NODE_NAME = "kexec-metadata"
KHO_KEXEC_METADATA_VERSION = 1
NEW_UTS_LEN = 64
#: ``struct kho_kexec_metadata`` (packed): u32 version, char[65] release, u32 kexec_count
KEXEC_METADATA = struct.Struct(f"<I{NEW_UTS_LEN + 1}sI")
#: LUO's KHO entry (``include/linux/kho/abi/luo.h``): a raw blob ``struct luo_ser`` whose
#: first 8 bytes are the compatible (``luo-v5`` in 7.2). The LUO model adds and finds it
#: with :meth:`KhoBlobEra.kho_add_subtree` / :meth:`KhoBlobEra.kho_retrieve_blob`.
LUO_KHO_ENTRY_NAME = "LUO"


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value & U64_MASK)


class KhoBlobEra(KhoMainline):
    """One 7.2 kernel's KHO: ``kho_out`` (root FDT, radix tree), ``kho_in``, scratch."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.radix: KhoRadixTree | None = None
        self.kexec_count = 0  # kho_in.kexec_count: 0 on a cold boot
        self.previous_release = ""  # kho_in.previous_release
        self.metadata_phys = 0

    # -- preservation API (radix tree) ------------------------------------------------
    def _tree(self) -> KhoRadixTree:
        if self.radix is None:  # WARN_ON_ONCE(!tree->root): KHO never initialised
            raise KernelError(errno.EINVAL, "KHO radix tree has no root")
        return self.radix

    def _pfn_to_nid(self, pfn: int) -> int:
        phys = pfn << 12
        for r in self.kernel.mem.ram:
            if r.start <= phys < r.end:
                return r.nid
        return -1

    def _pages_order(self, pfn: int, end_pfn: int) -> int:
        """``__kho_preserve_pages_order``: maximal aligned block, not spanning two nodes."""
        order = min(
            ((pfn & -pfn).bit_length() - 1) if pfn else 64, (end_pfn - pfn).bit_length() - 1
        )
        while order > 0 and self._pfn_to_nid(pfn) != self._pfn_to_nid(pfn + (1 << order) - 1):
            order -= 1
        return order

    def kho_preserve_folio(self, phys: int, order: int) -> None:
        if self._scratch_overlap(phys, PAGE_SIZE << order):
            raise KernelError(errno.EINVAL, "folio overlaps KHO scratch")
        err = self._tree().add_page(phys >> 12, order)
        if err:
            raise KernelError(-err)

    def kho_unpreserve_folio(self, phys: int, order: int) -> None:
        if self.radix is not None:
            self.radix.del_page(phys >> 12, order)

    def kho_preserve_pages(self, phys: int, nr_pages: int) -> None:
        if self._scratch_overlap(phys, nr_pages * PAGE_SIZE):
            raise KernelError(errno.EINVAL, "pages overlap KHO scratch")
        tree = self._tree()
        start = pfn = phys >> 12
        end = start + nr_pages
        while pfn < end:
            order = self._pages_order(pfn, end)
            err = tree.add_page(pfn, order)
            if err:
                self._unpreserve_range(start, pfn)
                raise KernelError(-err)
            pfn += 1 << order

    def _unpreserve_range(self, pfn: int, end_pfn: int) -> None:
        if self.radix is None:
            return
        while pfn < end_pfn:
            order = self._pages_order(pfn, end_pfn)
            self.radix.del_page(pfn, order)
            pfn += 1 << order

    def kho_unpreserve_pages(self, phys: int, nr_pages: int) -> None:
        self._unpreserve_range(phys >> 12, (phys >> 12) + nr_pages)

    def kho_preserve_phys(self, phys: int, size: int) -> None:
        """Not in 7.2; kept for drivers written against 6.16: whole pages of the range."""
        if phys % PAGE_SIZE or size % PAGE_SIZE:
            raise KernelError(errno.EINVAL, "range is not page aligned")
        self.kho_preserve_pages(phys, size // PAGE_SIZE)

    def kho_alloc_preserve(self, size: int) -> int:
        if not size:
            raise KernelError(errno.EINVAL)
        return super().kho_alloc_preserve(size)

    def kho_unpreserve_free(self, phys: int) -> None:
        order = self.pages.allocated.get(phys, 0)
        self.kho_unpreserve_folio(phys, order)
        self.pages.free_pages(phys)

    def kho_restore_free(self, phys: int) -> None:
        """``kho_restore_free``: restore the folio the previous kernel preserved (with
        ``kho_alloc_preserve``) and free it to this kernel's page allocator, so later
        allocations reuse it (the recording's stage-2 ``in/sub_fdts/LUO`` shows such
        reused bytes). Not a preserved folio head: nothing (the kernel's ``WARN_ON``)."""
        order = self.kho_restore_folio(phys)
        if order is not None:
            self.pages.free_restored(phys, order)

    def preserved_blocks(self) -> list[tuple[int, int]]:
        return list(self.radix.blocks()) if self.radix is not None else []

    def make_memblock_kho(self, reserve_mem: ReserveMem) -> MemblockKho:
        """reserve_mem's KHO side for this era (``ReserveMem.reserve_mem_init`` asks)."""
        return MemblockKhoBlob(reserve_mem, self)

    # -- finalize: gone in this era ----------------------------------------------------
    def finalize_store(self, value: int) -> None:
        raise KernelError(errno.ENOENT, "no finalize in this release")

    def kho_finalize(self) -> int:
        return -errno.ENOENT

    # -- subtrees (sized blobs) ----------------------------------------------------------
    def kho_add_subtree(
        self, name: str, fdt_phys: int, ser: object = None, size: int | None = None
    ) -> None:
        """``kho_add_subtree(name, blob, size)``: a root child (inserted first) with
        ``preserved-data`` and ``blob-size``, and ``out/sub_fdts/<name>``. ``size`` None:
        the blob is an FDT and its header gives the size (callers written for 6.19)."""
        import libfdt  # pylibfdt

        mem = self.kernel.mem
        if size is None:
            size = fdt_header_totalsize(mem.read(fdt_phys, 40))
        page = mem.read(self.fdt_page, PAGE_SIZE)
        try:
            tree = libfdt.Fdt(page)
            tree.resize(PAGE_SIZE)  # fdt_open_into(root, root, PAGE_SIZE)
        except libfdt.FdtException as exc:
            raise KernelError(errno.ENOMEM) from exc
        off = tree.add_subnode(0, name, [libfdt.EXISTS, libfdt.NOSPACE, libfdt.BADVALUE])
        err = 0
        if off == -libfdt.EXISTS:
            err = errno.EEXIST
        elif off < 0:
            err = errno.ENOMEM
        elif (
            tree.setprop(off, KHO_SUB_TREE_PROP_NAME, _u64(fdt_phys), [libfdt.NOSPACE]) < 0
            or tree.setprop(off, KHO_SUB_TREE_SIZE_PROP_NAME, _u64(size), [libfdt.NOSPACE]) < 0
        ):
            tree.del_node(off)
            err = errno.ENOMEM
        tree.pack()
        mem.write(self.fdt_page, bytes(tree.as_bytearray()))
        if err:
            raise KernelError(err, f"kho_add_subtree({name})")
        if not any(b.name == name for b in self.out_sub_fdts):  # WARN_ON_ONCE otherwise
            self.out_sub_fdts.append(self._blob(name, fdt_phys, size))
        self.kernel.changed()

    def kho_remove_subtree(self, phys: int) -> None:
        """``kho_remove_subtree(blob)``: drop the child that points at ``phys``."""
        import libfdt

        mem = self.kernel.mem
        try:
            tree = libfdt.Fdt(mem.read(self.fdt_page, PAGE_SIZE))
            tree.resize(PAGE_SIZE)
        except libfdt.FdtException:
            return
        off = tree.first_subnode(0, [libfdt.NOTFOUND])
        while off >= 0:
            value = tree.getprop(off, KHO_SUB_TREE_PROP_NAME, [libfdt.NOTFOUND])
            if (
                not isinstance(value, int)
                and len(value) == 8
                and struct.unpack("<Q", bytes(value))[0] == phys
            ):
                tree.del_node(off)
                self.out_sub_fdts = [b for b in self.out_sub_fdts if b.phys != phys]
                break
            off = tree.next_subnode(off, [libfdt.NOTFOUND])
        tree.pack()
        mem.write(self.fdt_page, bytes(tree.as_bytearray()))
        self.kernel.changed()

    def kho_retrieve_blob(self, name: str) -> tuple[int, int]:
        """``kho_retrieve_subtree(name, &phys, &size)``: ENOENT, EINVAL (and a warning for
        a missing or malformed ``blob-size``)."""
        fdt = self.incoming_fdt()
        if fdt is None:
            raise KernelError(errno.ENOENT)
        node = fdt.path_offset("/" + name) if "/" not in name and name else None
        if node is None:
            raise KernelError(errno.ENOENT)
        value = fdt.getprop(node, KHO_SUB_TREE_PROP_NAME)
        if value is None or len(value) != 8:
            raise KernelError(errno.EINVAL)
        size = fdt.getprop(node, KHO_SUB_TREE_SIZE_PROP_NAME)
        if size is None or len(size) != 8:
            self.printk(
                f"KHO: broken KHO subnode '{name}': missing or invalid blob-size property",
                KERN_WARNING,
            )
            raise KernelError(errno.EINVAL)
        return int(struct.unpack("<Q", value)[0]), int(struct.unpack("<Q", size)[0])

    def kho_retrieve_subtree(self, name: str) -> int:
        return self.kho_retrieve_blob(name)[0]

    # -- scratch (4 MiB granules) ------------------------------------------------------------
    def _scratch_size_update(self) -> None:
        if self.scratch_scale:
            mb = self.kernel.memblock
            size = mb.memblock_reserved_kern_size(ARCH_LOW_ADDRESS_LIMIT, NUMA_NO_NODE)
            self.scratch_size_lowmem = (size * self.scratch_scale & U64_MASK) // 100
            size = mb.memblock_reserved_kern_size(nid=NUMA_NO_NODE) * self.scratch_scale
            size = (size & U64_MASK) // 100
            self.scratch_size_global = (size - self.scratch_size_lowmem) & U64_MASK
        self.scratch_size_lowmem = round_up(self.scratch_size_lowmem, SCRATCH_ALIGNMENT_BYTES)
        self.scratch_size_global = round_up(self.scratch_size_global, SCRATCH_ALIGNMENT_BYTES)

    def _scratch_size_node(self, nid: int) -> int:
        if self.scratch_scale:
            size = self.kernel.memblock.memblock_reserved_kern_size(nid=nid)
            size = (size * self.scratch_scale & U64_MASK) // 100
        else:
            size = self.scratch_size_pernode
        return round_up(size, SCRATCH_ALIGNMENT_BYTES)

    scratch_align = SCRATCH_ALIGNMENT_BYTES

    def _scratch_nodes(self) -> list[int]:
        """7.2 gives scratch to nodes with memory only."""
        return [n for n in self.kernel.online_nodes() if self.kernel.mem.node_size(n)]

    def kho_init(self) -> None:
        if not self.kho_enable:
            return
        root = self.pages.alloc_pages(0)  # kzalloc(PAGE_SIZE)
        if not root:
            self._kho_init_failed()
            return
        self.radix = KhoRadixTree(self.kernel.mem, self.pages, root)
        try:
            self.fdt_page = self.kho_alloc_preserve(PAGE_SIZE)
        except KernelError:
            self.pages.free_pages(root)
            self.radix = None
            self._kho_init_failed()
            return
        self.debugfs = True  # kho/, out/, out/sub_fdts, out/scratch_phys, out/scratch_len
        fdt = FdtSw(PAGE_SIZE)
        err = (
            fdt.finish_reservemap()
            | fdt.begin_node("")
            | fdt.property_string("compatible", KHO_FDT_COMPATIBLE_V4)
            | fdt.property(PROP_PRESERVED_MEMORY_MAP, _u64(root))
            | fdt.end_node()
            | fdt.finish()
        )
        if not err:
            self.kernel.mem.write(self.fdt_page, fdt.blob())
            err = self._kexec_metadata_init()
        if err:
            self.kho_unpreserve_free(self.fdt_page)
            self.radix.destroy()
            self.pages.free_pages(root)
            self.radix = None
            self.fdt_page = 0
            self._kho_init_failed()
            return
        if self.fdt_in_phys:
            self._kho_in_debugfs_init()
            return
        size = fdt_header_totalsize(self.kernel.mem.read(self.fdt_page, 40))
        self.out_fdt = self._blob("fdt", self.fdt_page, size)

    def _kho_init_failed(self) -> None:
        """``err_free_scratch``: the scratch areas go back to the allocator, KHO is off."""
        self.kho_enable = False

    # -- kexec-metadata ------------------------------------------------------------------------
    def _kexec_metadata_init(self) -> int:
        if self.fdt_in_phys:
            self._kho_in_kexec_metadata()
        err = 0
        try:
            phys = self.kho_alloc_preserve(KEXEC_METADATA.size)
        except KernelError as exc:
            err = -exc.errno
        else:
            release = self.release.uts_release.encode("latin-1")[:NEW_UTS_LEN]
            record = KEXEC_METADATA.pack(
                KHO_KEXEC_METADATA_VERSION, release, (self.kexec_count + 1) & 0xFFFFFFFF
            )
            self.kernel.mem.write(phys, record)
            try:
                self.kho_add_subtree(KHO_METADATA_NODE_NAME, phys, size=KEXEC_METADATA.size)
            except KernelError as exc:
                self.kho_unpreserve_free(phys)
                err = -exc.errno
            else:
                self.metadata_phys = phys
        if err:
            self.printk(f"KHO: failed to initialize kexec-metadata subtree: {err}", KERN_WARNING)
        return err

    def _kho_in_kexec_metadata(self) -> None:
        try:
            phys, size = self.kho_retrieve_blob(KHO_METADATA_NODE_NAME)
        except KernelError:
            return  # the previous kernel did not export metadata
        if size < 4:
            self.printk(f"KHO: kexec-metadata blob too small ({size} bytes)", KERN_WARNING)
            return
        mem = self.kernel.mem
        version = struct.unpack("<I", mem.read(phys, 4))[0]
        if version != KHO_KEXEC_METADATA_VERSION:
            self.printk(
                f"KHO: kexec-metadata version {version} not supported "
                f"(expected {KHO_KEXEC_METADATA_VERSION})",
                KERN_WARNING,
            )
            return
        if size < KEXEC_METADATA.size:
            self.printk(
                f"KHO: kexec-metadata blob too small for v{version} "
                f"({size} < {KEXEC_METADATA.size})",
                KERN_WARNING,
            )
            return
        _, raw, count = KEXEC_METADATA.unpack(mem.read(phys, KEXEC_METADATA.size))
        self.kexec_count = count
        self.previous_release = raw[:NEW_UTS_LEN].split(b"\0", 1)[0].decode("latin-1")
        self.printk(f"KHO: exec from: {self.previous_release} (count {count})", KERN_INFO)

    # -- incoming debugfs -------------------------------------------------------------------
    def _kho_in_debugfs_init(self) -> None:
        fdt = self.incoming_fdt()
        if fdt is None:
            return
        self.in_fdt = self._blob("fdt", self.fdt_in_phys, fdt.totalsize)
        for child in fdt.subnodes(0):
            name = fdt.get_name(child)
            value = fdt.getprop(child, KHO_SUB_TREE_PROP_NAME)
            if value is None:
                continue
            if len(value) != 8:
                self.printk(
                    f"KHO: node {name} prop {KHO_SUB_TREE_PROP_NAME} has invalid length: "
                    f"{len(value)}",
                    KERN_WARNING,
                )
                continue
            size = fdt.getprop(child, KHO_SUB_TREE_SIZE_PROP_NAME)
            if size is None or len(size) != 8:
                self.printk(
                    f"KHO: node {name} missing or invalid {KHO_SUB_TREE_SIZE_PROP_NAME} property",
                    KERN_WARNING,
                )
                continue
            if any(b.name == name for b in self.in_sub_fdts):
                self.printk(
                    f"KHO: failed to add blob {name} to debugfs: {errname(-errno.EEXIST)}",
                    KERN_WARNING,
                )
                continue
            phys = struct.unpack("<Q", value)[0]
            self.in_sub_fdts.append(self._blob(name, phys, struct.unpack("<Q", size)[0]))

    # -- handover boot ---------------------------------------------------------------------
    def kho_populate(
        self, fdt_phys: int, fdt_len: int, scratch_phys: int, scratch_len: int
    ) -> None:
        """7.2 ``kho_populate``: header, ``kho-v4``, a non-zero map, the scratch table."""
        k = self.kernel
        scratch_cnt = scratch_len // KHO_SCRATCH_SIZE
        ok = False
        blob = b""
        if not k.mem.is_ram(fdt_phys, max(fdt_len, 1)):
            self.printk(f"KHO: setup: failed to memremap FDT ({hex_(fdt_phys)})", KERN_WARNING)
        else:
            blob = k.mem.read(fdt_phys, fdt_len)
            ferr = fdt_check_header(blob) if len(blob) >= 40 else -FDT_ERR_TRUNCATED
            if not ferr and fdt_header_totalsize(blob) > fdt_len:
                ferr = -FDT_ERR_TRUNCATED
            if ferr:
                self.printk(
                    f"KHO: setup: handover FDT ({hex_(fdt_phys)}) is invalid: {ferr}", KERN_WARNING
                )
            else:
                ok = self._populate_checked(blob, fdt_phys, scratch_phys, scratch_len, scratch_cnt)
        if not ok:
            self.printk("KHO: disabling KHO revival", KERN_WARNING)

    def _populate_checked(
        self, blob: bytes, fdt_phys: int, scratch_phys: int, scratch_len: int, scratch_cnt: int
    ) -> bool:
        from kho_fs.model.fdt import Fdt

        k = self.kernel
        fdt = Fdt(blob[: fdt_header_totalsize(blob)])
        cerr = fdt.node_check_compatible(0, KHO_FDT_COMPATIBLE_V4)
        if cerr:
            self.printk(
                f"KHO: setup: handover FDT ({hex_(fdt_phys)}) is incompatible with "
                f"'{KHO_FDT_COMPATIBLE_V4}': {cerr}",
                KERN_WARNING,
            )
            return False
        value = fdt.getprop(0, PROP_PRESERVED_MEMORY_MAP)
        if value is None or len(value) != 8:
            self.printk("KHO: failed to get preserved memory map", KERN_ERR)
            return False
        if not struct.unpack("<Q", value)[0]:
            return False
        if scratch_cnt == 0 or not k.mem.is_ram(scratch_phys, scratch_len):
            self.printk(
                f"KHO: setup: failed to memremap scratch (phys={hex_(scratch_phys)}, "
                f"len={scratch_len})",
                KERN_WARNING,
            )
            return False
        self._adopt_scratch(scratch_phys, scratch_len)
        self.fdt_in_phys = fdt_phys
        self.fdt_in_len = fdt.totalsize
        self.printk("KHO: found kexec handover data.")
        return True

    def kho_memory_init(self) -> None:
        """Walk the incoming radix tree, reserving every preserved block (``RSRV_NOINIT``);
        a missing or zero map drops the handover (``kho_mem_retrieve``)."""
        k = self.kernel
        if not self.fdt_in_phys:
            self.kho_reserve_scratch()
            return
        fdt = self.incoming_fdt()
        value = fdt.getprop(0, PROP_PRESERVED_MEMORY_MAP) if fdt is not None else None
        if value is None or len(value) != 8:
            self.printk("KHO: failed to get preserved KHO memory tree", KERN_ERR)
            self.fdt_in_phys = 0
            return
        root = struct.unpack("<Q", value)[0]
        if not root:
            self.fdt_in_phys = 0
            return
        self.mem_map_in_phys = root
        runs = [
            (phys, min(size, U64_MASK + 1 - phys), order)
            for phys, size, order in walk_radix_runs(k.mem.read, root)
            if phys <= U64_MASK
        ]
        k.memblock.memblock_reserve_noinit_many((p, s) for p, s, _ in runs if s > 0)
        self._preserved_runs.extend(runs)

    # -- views --------------------------------------------------------------------------------
    def status_lines(self) -> list[str]:
        if not self.debugfs:
            return ["KHO:         disabled (no /sys/kernel/debug/kho)"]
        blocks = self.preserved_blocks()
        total = sum(PAGE_SIZE << o for _, o in blocks)
        names = ", ".join(b.name for b in self.out_sub_fdts) or "none"
        lines = [
            f"KHO:         enabled, preserved {len(blocks)} block(s) {total:#x} bytes, "
            f"sub-blobs: {names}"
        ]
        if self.previous_release:
            lines.append(f"kexec from:  {self.previous_release} (count {self.kexec_count})")
        return lines


class MemblockKhoBlob(MemblockKho):
    """7.2 ``prepare_kho_fdt``: preserve the page, build the FDT, add the subtree, then
    preserve every region's whole pages (undoing all of it on failure)."""

    def reserve_mem_init(self) -> None:
        kho, table = self.kho, self.reserve_mem.table
        if not kho.kho_enable or not table:
            return
        page = kho.pages.alloc_pages(0, zero=False)
        if not page:
            self._report(-errno.ENOMEM)
            return
        err = self._errno(lambda: kho.kho_preserve_pages(page, 1))
        if err:
            kho.pages.free_pages(page)
            self._report(err)
            return
        blob = build_memblock_fdt([(r.name, r.start, r.size) for r in table])
        if isinstance(blob, int):
            err = blob
        else:
            kho.kernel.mem.write(page, blob)
            err = self._errno(lambda: kho.kho_add_subtree(MEMBLOCK_KHO_FDT, page, size=len(blob)))  # type: ignore[call-arg]
        if not err:
            err = self._reserved_mem_preserve()
            if err:
                assert isinstance(kho, KhoBlobEra)
                kho.kho_remove_subtree(page)
        if err:
            kho.kho_unpreserve_pages(page, 1)
            kho.pages.free_pages(page)
            self._report(err)
            return
        self.fdt_page = page

    def _reserved_mem_preserve(self) -> int:
        kho = self.kho
        done: list[ReserveMemRegion] = []
        for r in self.reserve_mem.table:
            err = self._errno(lambda r=r: kho.kho_preserve_pages(r.start, r.size >> 12))
            if err:
                for d in done:
                    kho.kho_unpreserve_pages(d.start, d.size >> 12)
                return err
            done.append(r)
        return 0


__all__ = [
    "KHO_FDT_COMPATIBLE_V4",
    "KHO_METADATA_NODE_NAME",
    "LUO_KHO_ENTRY_NAME",
    "KhoBlobEra",
    "MemblockKhoBlob",
]
