"""kexec: loading the next kernel into segments, and the x86 boot parameters it gets.

``kexec_file_load`` runs the KHO step (two extra segments) before the x86 loader, and
while KHO is active every segment must land inside a scratch area (v4 patches 07, 12).
``kexec_load`` is the user-space path: kexec-tools builds and places the segments itself
and never carries KHO data.

Segments are placed in System RAM *resources*: contiguous e820 ranges, which a NUMA node
boundary does not split. A kernel that stopped at boot runs no system call at all: every
entry point here fails with EHOSTDOWN until a cold reboot (emulator decision).
"""

from __future__ import annotations

import errno
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kho_fs.model.bzimage import ImageRelease, image_release
from kho_fs.model.dmesg import KERN_INFO
from kho_fs.model.errors import KernelError
from kho_fs.model.kho import KhoMem
from kho_fs.model.units import PAGE_SIZE, SZ_1M, SZ_2M, SZ_4K, SZ_16M, SZ_64K, round_down, round_up

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel
    from kho_fs.model.physmem import PhysicalMemory

KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_NO_INITRAMFS = 0x4
KEXEC_FILE_DEBUG = 0x8  # v6.7+: the load prints its kexec_dprintk() lines
KEXEC_FILE_FLAGS = (
    KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS | KEXEC_FILE_DEBUG
)
KEXEC_TYPE_DEFAULT = 0
E820_TYPE_RAM = 1
# pr_fmt() of the files whose kexec_dprintk() lines a KEXEC_FILE_DEBUG load prints.
KEXEC_FILE_PR = "kexec_file: "  # kernel/kexec_file.c
BZIMAGE64_PR = "kexec-bzImage64: "  # arch/x86/kernel/kexec-bzimage64.c
COMMAND_LINE_SIZE = 2048  # x86, including the terminating NUL
SETUP_KEXEC_KHO = 10
KHO_SETUP_DATA_LEN = 32
PURGATORY_SIZE = 16 * 1024
BOOT_PARAMS_SIZE = 8 * 1024

# Offsets in struct boot_params / setup_header (Documentation/arch/x86/boot.rst).
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_HDR_MAGIC = 0x202
BP_HDR_VERSION = 0x206
BP_CMD_LINE_PTR = 0x228
BP_SETUP_DATA = 0x250
BP_INIT_SIZE = 0x260
BP_SETUP_SECTS = 0x1F1
# Emulator layout of the 8 KiB boot-parameter segment: zero page, command line, setup_data.
BP_CMDLINE_OFFSET = 0x1000
BP_KHO_NODE_OFFSET = 0x1800
PURGATORY_TEXT = b"kho-fs purgatory\n"


@dataclass(slots=True)
class KexecBuf:
    """``struct kexec_buf``: one segment being placed."""

    name: str
    buffer: bytes
    memsz: int
    buf_align: int
    buf_min: int = 0
    buf_max: int = (1 << 64) - 1
    top_down: bool = True
    mem: int = -1

    @property
    def end(self) -> int:
        return self.mem + self.memsz


@dataclass(slots=True)
class Kimage:
    """A loaded image: its placed segments and what the next kernel is told."""

    segments: list[KexecBuf]
    cmdline: str
    file_mode: bool
    kho_fdt: KexecBuf | None = None
    kho_fdt_phys: int = 0  # mainline: the root FDT page, read where it is at exec time
    kho_scratch: KexecBuf | None = None
    boot_params: KexecBuf | None = None
    kernel: KexecBuf | None = None
    initrd: KexecBuf | None = None
    extra: dict[str, int] = field(default_factory=dict)
    #: the release the image's boot header names (None: the running release again)
    release: ImageRelease | None = None

    def segment(self, name: str) -> KexecBuf | None:
        return next((s for s in self.segments if s.name == name), None)


def kernel_segment_size(image: bytes) -> tuple[bytes, int]:
    """What of a kernel file is loaded and how much memory it claims.

    An x86 bzImage (``HdrS`` at 0x202, boot protocol 2.10+) loads its protected-mode part
    and claims its declared ``init_size``; any other file is loaded whole and claims its
    size rounded up to a page. An empty file is not a kernel (ENOEXEC).
    """
    if not image:
        raise KernelError(errno.ENOEXEC, "empty kernel image")
    if len(image) >= BP_INIT_SIZE + 4 and image[BP_HDR_MAGIC : BP_HDR_MAGIC + 4] == b"HdrS":
        version = struct.unpack_from("<H", image, BP_HDR_VERSION)[0]
        setup_sects = image[BP_SETUP_SECTS] or 4
        kern16 = (setup_sects + 1) * 512
        init_size = struct.unpack_from("<I", image, BP_INIT_SIZE)[0]
        if version >= 0x20A and kern16 < len(image) and init_size:
            body = image[kern16:]
            return body, round_up(max(init_size, len(body)), PAGE_SIZE)
    return image, round_up(len(image), PAGE_SIZE)


def locate_mem_hole_top_down(start: int, end: int, kbuf: KexecBuf, placed: list[KexecBuf]) -> bool:
    """Highest aligned spot in ``[start, end]`` (inclusive) free of placed segments."""
    temp_end = min(end, kbuf.buf_max)
    temp_start = temp_end - kbuf.memsz + 1
    while True:
        temp_start = round_down(temp_start, kbuf.buf_align) if temp_start >= 0 else -1
        if temp_start < start or temp_start < kbuf.buf_min:
            return False
        clash = _overlap(placed, temp_start, temp_start + kbuf.memsz)
        if clash is None:
            kbuf.mem = temp_start
            return True
        # The kernel steps one page lower at a time; every candidate above the clashing
        # segment's start minus memsz overlaps it too, so jump straight past them.
        temp_start = min(temp_start - PAGE_SIZE, clash.mem - kbuf.memsz)


def locate_mem_hole_bottom_up(start: int, end: int, kbuf: KexecBuf, placed: list[KexecBuf]) -> bool:
    temp_start = max(start, kbuf.buf_min)
    while True:
        temp_start = round_up(temp_start, kbuf.buf_align)
        temp_end = temp_start + kbuf.memsz - 1
        if temp_end > end or temp_end > kbuf.buf_max:
            return False
        clash = _overlap(placed, temp_start, temp_end + 1)
        if clash is None:
            kbuf.mem = temp_start
            return True
        temp_start = max(temp_start + PAGE_SIZE, clash.end)


def _overlap(placed: list[KexecBuf], start: int, end: int) -> KexecBuf | None:
    return next((s for s in placed if s.mem < end and start < s.end), None)


def walk_system_ram_res(ram: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """System RAM resources, ``(start, end exclusive)`` in address order: touching ranges
    are one resource (e820 knows no NUMA nodes), holes separate them."""
    out: list[tuple[int, int]] = []
    for start, end in ram:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def hashed_ptr(what: str) -> str:
    """``%p`` of a kernel pointer: 16 hex digits, the upper 32 bits zero (a 32-bit hash on
    64-bit kernels). kho-fs has no kernel pointers; it hashes a name for a stable value."""
    return f"{zlib.crc32(what.encode()):016x}"


def locate_mem_hole_callback(start: int, end: int, kbuf: KexecBuf, placed: list[KexecBuf]) -> bool:
    """Try one resource ``[start, end]`` (inclusive), as the kernel's callback does."""
    start = max(start, kbuf.buf_min)
    end = min(end, kbuf.buf_max)
    if end < start or end - start + 1 < kbuf.memsz:
        return False
    if kbuf.top_down:
        return locate_mem_hole_top_down(start, end, kbuf, placed)
    return locate_mem_hole_bottom_up(start, end, kbuf, placed)


class Kexec:
    """One kernel's kexec state: the loaded image and the two load paths."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.kexec_image: Kimage | None = None

    @property
    def mem(self) -> PhysicalMemory:
        return self.kernel.mem

    def _running(self) -> None:
        """A kernel that stopped at boot never reached user space: it runs no system call.

        The emulator still accepts writes to ``machine/kexec/control``; they fail with
        EHOSTDOWN ("Host is down") until ``machine/reboot`` (emulator decision).
        """
        if self.kernel.panic is not None:
            raise KernelError(errno.EHOSTDOWN, f"the kernel stopped at boot: {self.kernel.panic}")

    # -- placement -----------------------------------------------------------------------
    def kexec_add_buffer(
        self, kbuf: KexecBuf, placed: list[KexecBuf], scratch: list[KhoMem] | None
    ) -> None:
        """Place one segment: inside scratch areas (table order) while KHO is active,
        else in System RAM. EADDRNOTAVAIL when nothing fits."""
        kbuf.memsz = round_up(kbuf.memsz, PAGE_SIZE)
        kbuf.buf_align = max(kbuf.buf_align, PAGE_SIZE)
        if scratch is not None:  # kho_locate_mem_hole
            for area in scratch:
                # an inherited table patched through /dev/mem may name memory the bus
                # does not have: such an area is never used (emulator decision)
                usable = area.size and self.mem.is_ram(area.addr, area.size)
                if usable and locate_mem_hole_callback(area.addr, area.end - 1, kbuf, placed):
                    break
            else:
                raise KernelError(errno.EADDRNOTAVAIL, f"no scratch area fits segment {kbuf.name}")
        else:  # kexec_walk_resources: walk_system_ram_res(_rev)
            res = walk_system_ram_res([(r.start, r.end) for r in self.mem.ram])
            walk = reversed(res) if kbuf.top_down else iter(res)
            if not any(locate_mem_hole_callback(a, b - 1, kbuf, placed) for a, b in walk):
                raise KernelError(errno.EADDRNOTAVAIL, f"no RAM fits segment {kbuf.name}")
        placed.append(kbuf)

    # -- loading -------------------------------------------------------------------------
    def kexec_file_load(
        self, kernel_image: bytes, initrd: bytes | None, cmdline: str, flags: int = 0
    ) -> None:
        """The ``kexec_file_load`` syscall; a failure leaves the loaded image in place.

        ``KEXEC_FILE_ON_CRASH`` selects the crash image slot (kernel/kexec_file.c), so no
        combination with it touches the normal image: with ``KEXEC_FILE_UNLOAD`` it empties
        the crash slot (always empty: crash images are not modelled), without it the load
        fails with EOPNOTSUPP. ``KEXEC_FILE_DEBUG`` logs the load's kexec_dprintk lines.
        """
        self._running()
        if flags & ~KEXEC_FILE_FLAGS:
            raise KernelError(errno.EINVAL, "unknown flags")
        if flags & KEXEC_FILE_ON_CRASH:
            if flags & KEXEC_FILE_UNLOAD:
                return  # xchg(&kexec_crash_image, NULL): there is none
            raise KernelError(errno.EOPNOTSUPP, "crash images are not modelled")
        if flags & KEXEC_FILE_UNLOAD:
            self.kexec_unload()
            return
        if flags & KEXEC_FILE_NO_INITRAMFS:
            initrd = None
        debug = bool(flags & KEXEC_FILE_DEBUG)
        if debug:
            self.kernel.printk(
                f"{KEXEC_FILE_PR}kernel: {hashed_ptr('kernel_buf')} "
                f"kernel_size: {_lx(len(kernel_image))}"
            )
        self._check_cmdline(cmdline)
        body, memsz = kernel_segment_size(kernel_image)
        kho = self.kernel.kho
        placed: list[KexecBuf] = []
        image = Kimage(placed, cmdline, file_mode=True, release=image_release(kernel_image))
        scratch = kho.kho_scratch_ranges()
        filled = kho.kho_fill_kimage()
        if filled is not None and isinstance(filled[0], int):
            # mainline kho_fill_kimage: the root FDT by address, the scratch table a segment
            image.kho_fdt_phys, table = filled
            image.kho_scratch = KexecBuf("kho-scratch", table, len(table), SZ_64K)
            self.kexec_add_buffer(image.kho_scratch, placed, scratch)
        elif filled is not None:
            fdt, table = filled
            image.kho_fdt = KexecBuf("kho-fdt", fdt, len(fdt), SZ_64K)
            image.kho_scratch = KexecBuf("kho-scratch", table, len(table), SZ_64K)
            try:
                self.kexec_add_buffer(image.kho_fdt, placed, scratch)
            except KernelError:
                self.kernel.printk("KHO: ===> kho_fill_kimage: kexec_add_buffer", KERN_INFO)
                raise
            self.kexec_add_buffer(image.kho_scratch, placed, scratch)
        self._x86_load(image, body, memsz, initrd, placed, scratch, debug=debug)
        if debug:
            self._dprintk_segments(image, flags)
        self.kexec_image = image
        self.kernel.changed()

    def kexec_load(self, kernel_image: bytes, initrd: bytes | None, cmdline: str) -> None:
        """User-space ``kexec_load``: kexec-tools places the same x86 segments itself,
        bottom-up from 16 MiB (emulator decision), and never adds KHO data."""
        self._running()
        self._check_cmdline(cmdline)
        body, memsz = kernel_segment_size(kernel_image)
        placed: list[KexecBuf] = []
        image = Kimage(placed, cmdline, file_mode=False, release=image_release(kernel_image))
        self._x86_load(image, body, memsz, initrd, placed, None, top_down=False, floor=SZ_16M)
        self.kexec_image = image
        self.kernel.changed()

    def kexec_unload(self) -> None:
        self._running()
        self.kexec_image = None
        self.kernel.changed()

    def _check_cmdline(self, cmdline: str) -> None:
        if len(cmdline) + 1 > COMMAND_LINE_SIZE:
            raise KernelError(
                errno.EINVAL, f"command line longer than {COMMAND_LINE_SIZE - 1} bytes"
            )
        if "\0" in cmdline:
            raise KernelError(errno.EINVAL, "NUL byte in the command line")
        if not all(ord(c) < 256 for c in cmdline):
            # The model's text stands for bytes (latin-1); anything else cannot be a byte.
            raise KernelError(errno.EINVAL, "command line characters must be bytes (latin-1)")

    def _x86_load(
        self,
        image: Kimage,
        body: bytes,
        memsz: int,
        initrd: bytes | None,
        placed: list[KexecBuf],
        scratch: list[KhoMem] | None,
        *,
        top_down: bool = True,
        floor: int = 0,
        debug: bool = False,
    ) -> None:
        """bzImage64_load: purgatory, boot parameters, kernel, initrd, in that order;
        ``debug`` prints its kexec_dprintk lines as each step succeeds."""
        purgatory = KexecBuf(
            "purgatory", PURGATORY_TEXT, PURGATORY_SIZE, SZ_4K, floor, top_down=top_down
        )
        params = KexecBuf("boot_params", b"", BOOT_PARAMS_SIZE, SZ_4K, floor, top_down=top_down)
        kernel = KexecBuf("kernel", body, memsz, SZ_2M, max(floor, SZ_1M), top_down=top_down)
        bufs = [purgatory, params, kernel]
        if initrd:
            image.initrd = KexecBuf("initrd", initrd, len(initrd), SZ_4K, floor, top_down=top_down)
            bufs.append(image.initrd)
        printk = self.kernel.printk
        for kbuf in bufs:
            self.kexec_add_buffer(kbuf, placed, scratch)
            if debug:
                printk(BZIMAGE64_PR + _loaded_line(kbuf))
        params.buffer = self._boot_params(params.mem, image)
        image.boot_params, image.kernel = params, kernel
        if debug:
            printk(f"{BZIMAGE64_PR}Final command line is: {image.cmdline}")
            printk(f"{BZIMAGE64_PR}E820 memmap:")
            for start, end in walk_system_ram_res([(r.start, r.end) for r in self.mem.ram]):
                printk(f"{BZIMAGE64_PR}{start:016x}-{end - 1:016x} ({E820_TYPE_RAM})")

    def _dprintk_segments(self, image: Kimage, flags: int) -> None:
        """What the syscall prints once the image is built (kernel/kexec_file.c). ``start``
        is the purgatory's entry, its first byte in kho-fs; kho-fs allocates no
        indirection pages, so ``head`` is 0."""
        printk = self.kernel.printk
        printk(f"{KEXEC_FILE_PR}nr_segments = {len(image.segments)}")
        for i, seg in enumerate(image.segments):
            printk(
                f"{KEXEC_FILE_PR}segment[{i}]: buf=0x{hashed_ptr(seg.name)} "
                f"bufsz={len(seg.buffer):#x} mem={seg.mem:#x} memsz={seg.memsz:#x}"
            )
        purgatory = image.segment("purgatory")
        start = purgatory.mem if purgatory is not None else 0
        printk(
            f"{KEXEC_FILE_PR}kexec_file_load: type:{KEXEC_TYPE_DEFAULT}, start:{start:#x} "
            f"head:0x0 flags:{flags:#x}"
        )

    def _boot_params(self, addr: int, image: Kimage) -> bytes:
        """The zero page, the command line, and (file loads with KHO data) the type-10 node."""
        bp = bytearray(BOOT_PARAMS_SIZE)
        bp[BP_HDR_MAGIC : BP_HDR_MAGIC + 4] = b"HdrS"
        struct.pack_into("<H", bp, BP_HDR_VERSION, 0x020F)
        cmd_addr = addr + BP_CMDLINE_OFFSET
        struct.pack_into("<I", bp, BP_CMD_LINE_PTR, cmd_addr & 0xFFFFFFFF)
        struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, cmd_addr >> 32)
        raw = image.cmdline.encode("latin-1") + b"\0"
        bp[BP_CMDLINE_OFFSET : BP_CMDLINE_OFFSET + len(raw)] = raw
        fdt_addr, fdt_size = image.kho_fdt_phys, PAGE_SIZE  # mainline: one page by address
        if image.kho_fdt is not None:
            fdt_addr, fdt_size = image.kho_fdt.mem, len(image.kho_fdt.buffer)
        if fdt_addr and image.kho_scratch is not None:
            node = struct.pack(
                "<QIIQQQQ",
                0,
                SETUP_KEXEC_KHO,
                KHO_SETUP_DATA_LEN,
                fdt_addr,
                fdt_size,
                image.kho_scratch.mem,
                len(image.kho_scratch.buffer),
            )
            bp[BP_KHO_NODE_OFFSET : BP_KHO_NODE_OFFSET + len(node)] = node
            struct.pack_into("<Q", bp, BP_SETUP_DATA, addr + BP_KHO_NODE_OFFSET)
        return bytes(bp)

    # -- sysfs and exec ------------------------------------------------------------------
    def kexec_loaded_show(self) -> str:
        return "1\n" if self.kexec_image is not None else "0\n"

    def kernel_kexec(self) -> Kimage:
        """``reboot(LINUX_REBOOT_CMD_KEXEC)``: hand the loaded image to the machine.

        With LUO (6.19+) ``liveupdate_reboot`` runs first: it freezes the sessions and
        finalizes KHO, and its failure fails the call (EAGAIN for ``kho_finalize``).
        """
        self._running()
        if self.kexec_image is None:
            raise KernelError(errno.EINVAL, "no kexec image loaded")
        luo = getattr(self.kernel, "luo", None)
        if luo is not None:
            luo.liveupdate_reboot()
        return self.kexec_image

    def machine_kexec(self, image: Kimage) -> None:
        """Copy every segment to its destination, zero-filling up to its memory size
        (relocate_kernel + purgatory); the rest of RAM is left as it is."""
        for seg in image.segments:
            self.mem.write(seg.mem, seg.buffer[: seg.memsz])
            self.mem.zero(seg.mem + len(seg.buffer), seg.memsz - len(seg.buffer))


def _lx(value: int) -> str:
    """The kernel's ``%#lx``: ``0x`` and lower-case hex, but a bare ``0`` for zero."""
    return f"{value:#x}" if value else "0"


def _loaded_line(kbuf: KexecBuf) -> str:
    """bzImage64_load's kexec_dprintk line for a segment it just placed: the boot
    parameters and the initrd print their buffer size twice, the kernel its file part
    and its in-memory size."""
    if kbuf.name == "purgatory":
        return f"Loaded purgatory at {kbuf.mem:#x}"
    if kbuf.name == "boot_params":  # its buffer is written once every address is known
        what, bufsz, memsz = "boot_param, command line and misc", BOOT_PARAMS_SIZE, BOOT_PARAMS_SIZE
    elif kbuf.name == "kernel":
        what, bufsz, memsz = "64bit kernel", len(kbuf.buffer), kbuf.memsz
    else:
        what, bufsz, memsz = kbuf.name, len(kbuf.buffer), len(kbuf.buffer)
    return f"Loaded {what} at {kbuf.mem:#x} bufsz={bufsz:#x} memsz={memsz:#x}"
