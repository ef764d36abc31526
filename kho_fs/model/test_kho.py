"""lib/test_kho.c as a built-in driver of mainline kernels (spec kho-mainline.md §10).

On a first boot it fills ``test_kho.max_mem`` bytes (default 8 MiB) of folios of random
orders with random bytes, keeps their checksum and hands them over in the sub-FDT
``kho_test``; on a handover boot that carries ``kho_test`` it restores every folio and
checks the sum: ``test_kho: KHO restore succeeded``. What is saved when follows the era:
folios at init and the FDT at FINALIZE (6.16–6.18; 6.18 keeps the folio list in a
vmalloc area), everything at init (6.19+).
"""

from __future__ import annotations

import array
import os
import random
import struct
from typing import TYPE_CHECKING, Any

from kho_fs.model.cmdline import memparse, parameq
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.drivers import KhoDriver
from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import Fdt, FdtSw
from kho_fs.model.kho_mainline import (
    KEXEC_KHO_ABORT,
    KEXEC_KHO_FINALIZE,
    MAX_PAGE_ORDER,
    KhoMainline,
    KhoSerialization,
)
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE
from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel

KHO_TEST_MAGIC = 0x4B484F21  # "KHO!"
KHO_TEST_FDT = "kho_test"
KHO_TEST_COMPAT = "kho-test-v1"
DEFAULT_MAX_MEM = (PAGE_SIZE << MAX_PAGE_ORDER) * 2
PAGE_MASK = ~(PAGE_SIZE - 1)
U64_MAX = (1 << 64) - 1
MAX_BLOCK_ORDER = 64 - 12  # what a state file may name (the FDT's order follows max_mem)


def csum_partial(data: bytes, csum: int) -> int:
    """The 32-bit partial Internet checksum (``__wsum``) as x86-64 accumulates it: the
    little-endian 32-bit words summed with end-around carry into ``csum``."""
    words = array.array("I")
    words.frombytes(data[: len(data) & ~3])
    total = sum(words) + csum
    if len(data) & 3:
        total += int.from_bytes(data[len(data) & ~3 :], "little")
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def get_order(size: int) -> int:
    return max(0, (size - 1).bit_length() - 12) if size > PAGE_SIZE else 0


class TestKhoDriver(KhoDriver):
    """The kernel's KHO test module, built in (``--driver test_kho``)."""

    __test__ = False  # not a pytest test class
    name = "test_kho"
    kho_kinds = frozenset({"mainline"})
    param = "test_kho.max_mem"

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.max_mem = DEFAULT_MAX_MEM
        self.folios: list[tuple[int, int]] = []  # (phys, order)
        self.csum = 0
        self.fdt_phys = 0
        self.fdt_order = 0
        self.restored: bool | None = None

    @property
    def kho(self) -> KhoMainline:
        kho = self.kernel.kho
        assert isinstance(kho, KhoMainline)
        return kho

    def early_init(self, args: list[tuple[str, str | None]]) -> None:
        for key, value in args:
            if parameq(key, self.param) and value:
                parsed, end = memparse(value)
                if end == len(value):
                    self.max_mem = parsed

    # -- module_init --------------------------------------------------------------
    def init(self) -> None:
        kho = self.kho
        if not kho.kho_enable:
            return
        try:
            phys = kho.kho_retrieve_subtree(KHO_TEST_FDT)
        except KernelError as exc:
            if exc.errno != 2:  # ENOENT
                self.kernel.printk(
                    f"test_kho: failed to retrieve {KHO_TEST_FDT} FDT: {-exc.errno}", KERN_WARNING
                )
                return
        else:
            self.restored = self._restore(phys)
            if self.restored:
                self.kernel.printk("test_kho: KHO restore succeeded", KERN_INFO)
            elif self.kho.release.test_kho_fail_message:
                self.kernel.printk("test_kho: KHO restore failed", KERN_ERR)
            return
        try:
            self._save()
        except KernelError:
            return

    # -- save ------------------------------------------------------------------------
    def _generate_data(self) -> None:
        pages, rng = self.kho.pages, random.Random()
        max_mem = -(-self.max_mem // PAGE_SIZE) * PAGE_SIZE
        alloc = 0
        while alloc < max_mem:
            order = rng.randrange(MAX_PAGE_ORDER + 1)
            if alloc + (PAGE_SIZE << order) > max_mem:
                order = get_order(max_mem - alloc)
                if order:
                    order -= 1
            size = PAGE_SIZE << order
            phys = pages.alloc_pages(order, zero=False)
            if not phys:
                raise KernelError(12, "test_kho: out of memory")
            data = os.urandom(size)
            self.kernel.mem.write(phys, data)
            self.csum = csum_partial(data, self.csum)
            self.folios.append((phys, order))
            alloc += size

    def _save(self) -> None:
        kho = self.kho
        self._generate_data()
        info = b"".join(struct.pack("<Q", phys | order) for phys, order in self.folios)
        for phys, order in self.folios:
            kho.kho_preserve_folio(phys, order)
        if kho.release.test_kho_vmalloc:
            info = self._preserve_vmalloc(info)
        fdt_size = len(self.folios) * 8 + PAGE_SIZE
        fdt = FdtSw(fdt_size)
        err = (
            fdt.finish_reservemap()
            or fdt.begin_node("")
            or fdt.property("compatible", KHO_TEST_COMPAT.encode() + b"\0")
            or fdt.property("magic", struct.pack("<I", KHO_TEST_MAGIC))
            or fdt.begin_node("data")
            or fdt.property("nr_folios", struct.pack("<I", len(self.folios)))
            or fdt.property("folios_info", info)
            or fdt.property("csum", struct.pack("<I", self.csum))
            or fdt.end_node()
            or fdt.end_node()
            or fdt.finish()
        )
        if err:
            raise KernelError(22, "test_kho: FDT")
        self.fdt_order = get_order(fdt_size)
        self.fdt_phys = kho.pages.alloc_pages(self.fdt_order, zero=False)
        kho.kernel.mem.write(self.fdt_phys, fdt.blob())
        if kho.release.subtrees_at_init:
            kho.kho_preserve_folio(self.fdt_phys, self.fdt_order)
            kho.kho_add_subtree(KHO_TEST_FDT, self.fdt_phys)
        else:
            kho.register_kho_notifier(self)

    def _preserve_vmalloc(self, data: bytes) -> bytes:
        """``kho_preserve_vmalloc`` of the folio list: its pages and chunk pages preserved;
        the 16-byte descriptor (spec §6.4) goes into the FDT."""
        kho, mem = self.kho, self.kernel.mem
        nr_pages = -(-len(data) // PAGE_SIZE)
        pages = []
        for i in range(nr_pages):
            page = kho.pages.alloc_pages(0)
            mem.write(page, data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
            pages.append(page)
        first = chunk = 0
        per_chunk = (PAGE_SIZE - 8) // 8
        for i in range(0, max(len(pages), 1), per_chunk):
            new = kho.pages.alloc_pages(0)
            kho.kho_preserve_pages(new, 1)
            if chunk:
                mem.write(chunk, struct.pack("<Q", new))
            first = first or new
            chunk = new
            entries = pages[i : i + per_chunk]
            mem.write(chunk + 8, b"".join(struct.pack("<Q", p) for p in entries))
        for page in pages:
            kho.kho_preserve_pages(page, 1)
        return struct.pack("<QIHH", first, nr_pages, 0x1, 0)

    def notifier_call(self, event: int, data: Any) -> int:
        if event == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        if event != KEXEC_KHO_FINALIZE or not isinstance(data, KhoSerialization):
            return NOTIFY_BAD
        try:
            self.kho.kho_preserve_folio(self.fdt_phys, self.fdt_order)
            self.kho.kho_add_subtree(KHO_TEST_FDT, self.fdt_phys, data)
        except KernelError:
            return NOTIFY_BAD
        return NOTIFY_DONE

    # -- kho-fs mount --state ------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "max_mem": self.max_mem,
            "folios": [[phys, order] for phys, order in self.folios],
            "csum": self.csum,
            "fdt_phys": self.fdt_phys,
            "fdt_order": self.fdt_order,
            "restored": self.restored,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """What :meth:`get_state` saved, checked as untrusted input: ValueError naming the
        field. The folios and the FDT are blocks the page allocator handed out."""
        pages = self.kernel._pages

        def integer(key: str, value: object, hi: int) -> int:
            if type(value) is not int or not 0 <= value <= hi:
                raise ValueError(f"{key} is not an integer in [0, {hi:#x}]")
            return value

        def block(key: str, phys: object, order: object) -> tuple[int, int]:
            phys = integer(key, phys, U64_MAX)
            order = integer(f"{key} order", order, MAX_BLOCK_ORDER)
            if pages is None or pages.allocated.get(phys) != order:
                raise ValueError(f"{key} {phys:#x} is not a block of order {order} in use")
            return phys, order

        missing = {"max_mem", "folios", "csum", "fdt_phys", "fdt_order", "restored"} - set(state)
        if missing:
            raise ValueError(f"{', '.join(sorted(missing))} missing")
        folios = state["folios"]
        if not isinstance(folios, list):
            raise ValueError("folios is not a list")
        parsed = []
        for i, folio in enumerate(folios):
            if not isinstance(folio, list) or len(folio) != 2:
                raise ValueError(f"folios[{i}] is not [phys, order]")
            parsed.append(block(f"folios[{i}]", folio[0], folio[1]))
        if len({phys for phys, _ in parsed}) != len(parsed):
            raise ValueError("folios repeat a block")
        fdt_order = integer("fdt_order", state["fdt_order"], MAX_BLOCK_ORDER)
        fdt_phys = integer("fdt_phys", state["fdt_phys"], U64_MAX)
        if fdt_phys:
            block("fdt_phys", fdt_phys, fdt_order)
        restored = state["restored"]
        if restored is not None and type(restored) is not bool:
            raise ValueError("restored is not null, true or false")
        self.max_mem = integer("max_mem", state["max_mem"], U64_MAX)
        self.csum = integer("csum", state["csum"], 0xFFFFFFFF)
        self.folios, self.fdt_phys, self.fdt_order, self.restored = (
            parsed,
            fdt_phys,
            fdt_order,
            restored,
        )

    # -- restore ---------------------------------------------------------------------
    def _restore(self, fdt_phys: int) -> bool:
        mem = self.kernel.mem
        try:
            fdt = Fdt(mem.read(fdt_phys, PAGE_SIZE << MAX_PAGE_ORDER))
        except ValueError:
            return False
        if fdt.node_check_compatible(0, KHO_TEST_COMPAT):
            return False
        magic = fdt.getprop(0, "magic")
        if magic is None or len(magic) != 4 or struct.unpack("<I", magic)[0] != KHO_TEST_MAGIC:
            return False
        node = fdt.path_offset("/data")
        if node is None:
            return False
        nr, old, info = (fdt.getprop(node, p) for p in ("nr_folios", "csum", "folios_info"))
        if nr is None or len(nr) != 4 or old is None or len(old) != 4 or info is None:
            return False
        count = struct.unpack("<I", nr)[0]
        if self.kho.release.test_kho_vmalloc:
            if len(info) != 16:
                return False
            restored = self._restore_vmalloc(info)
            if restored is None:
                return False
            info = restored[: count * 8]
        if len(info) != count * 8:
            return False
        csum = 0
        for i in range(count):
            value = struct.unpack_from("<Q", info, 8 * i)[0]
            order, phys = value & ~PAGE_MASK, value & PAGE_MASK
            if self.kho.kho_restore_folio(phys) != order:
                break
            csum = csum_partial(mem.read(phys, PAGE_SIZE << order), csum)
        return csum == struct.unpack("<I", old)[0]

    def _restore_vmalloc(self, desc: bytes) -> bytes | None:
        first, total, _flags, order = struct.unpack("<QIHH", desc)
        mem, out = self.kernel.mem, list[bytes]()
        chunk, seen = first, set()
        while chunk and chunk not in seen and len(out) <= total:
            seen.add(chunk)
            page = mem.read(chunk, PAGE_SIZE)
            for (phys,) in struct.iter_unpack("<Q", page[8:]):
                if not phys:
                    break
                if self.kho.kho_restore_folio(phys) is None:
                    return None
                out.append(mem.read(phys, PAGE_SIZE << order))
            chunk = struct.unpack_from("<Q", page, 0)[0]
        if len(out) != total:
            return None
        return b"".join(out)
