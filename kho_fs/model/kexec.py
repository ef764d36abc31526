"""kexec: loading the next kernel into segments, and the x86 boot parameters it gets.

``kexec_file_load`` runs the KHO step (two extra segments) before the x86 loader, and
while KHO is active every segment must land inside a scratch area (v4 patches 07, 12).
``kexec_load`` is the user-space path: kexec-tools builds and places the segments itself
and never carries KHO data.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kho_fs.model.errors import KernelError
from kho_fs.model.kho import KhoMem
from kho_fs.model.units import PAGE_SIZE, SZ_1M, SZ_2M, SZ_4K, SZ_16M, SZ_64K, round_down, round_up

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel
    from kho_fs.model.physmem import PhysicalMemory

KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_NO_INITRAMFS = 0x4
KEXEC_FILE_FLAGS = KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS
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
    kho_scratch: KexecBuf | None = None
    boot_params: KexecBuf | None = None
    kernel: KexecBuf | None = None
    initrd: KexecBuf | None = None
    extra: dict[str, int] = field(default_factory=dict)

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
                if area.size and locate_mem_hole_callback(area.addr, area.end - 1, kbuf, placed):
                    break
            else:
                raise KernelError(errno.EADDRNOTAVAIL, f"no scratch area fits segment {kbuf.name}")
        else:
            ram = reversed(self.mem.ram) if kbuf.top_down else iter(self.mem.ram)
            if not any(locate_mem_hole_callback(r.start, r.end - 1, kbuf, placed) for r in ram):
                raise KernelError(errno.EADDRNOTAVAIL, f"no RAM fits segment {kbuf.name}")
        placed.append(kbuf)

    # -- loading -------------------------------------------------------------------------
    def kexec_file_load(
        self, kernel_image: bytes, initrd: bytes | None, cmdline: str, flags: int = 0
    ) -> None:
        """The ``kexec_file_load`` syscall; a failure leaves the loaded image in place."""
        if flags & ~KEXEC_FILE_FLAGS:
            raise KernelError(errno.EINVAL, "unknown flags")
        if flags & KEXEC_FILE_UNLOAD:
            self.kexec_unload()
            return
        if flags & KEXEC_FILE_ON_CRASH:
            raise KernelError(errno.EOPNOTSUPP, "crash images are not modelled")
        if flags & KEXEC_FILE_NO_INITRAMFS:
            initrd = None
        self._check_cmdline(cmdline)
        body, memsz = kernel_segment_size(kernel_image)
        kho = self.kernel.kho
        placed: list[KexecBuf] = []
        image = Kimage(placed, cmdline, file_mode=True)
        scratch = kho.kho_scratch_ranges()
        filled = kho.kho_fill_kimage()
        if filled is not None:
            fdt, table = filled
            image.kho_fdt = KexecBuf("kho-fdt", fdt, len(fdt), SZ_64K)
            image.kho_scratch = KexecBuf("kho-scratch", table, len(table), SZ_64K)
            try:
                self.kexec_add_buffer(image.kho_fdt, placed, scratch)
            except KernelError:
                self.kernel.printk("KHO: ===> kho_fill_kimage: kexec_add_buffer")
                raise
            self.kexec_add_buffer(image.kho_scratch, placed, scratch)
        self._x86_load(image, body, memsz, initrd, placed, scratch)
        self.kexec_image = image
        self.kernel.changed()

    def kexec_load(self, kernel_image: bytes, initrd: bytes | None, cmdline: str) -> None:
        """User-space ``kexec_load``: kexec-tools places the same x86 segments itself,
        bottom-up from 16 MiB (emulator decision), and never adds KHO data."""
        self._check_cmdline(cmdline)
        body, memsz = kernel_segment_size(kernel_image)
        placed: list[KexecBuf] = []
        image = Kimage(placed, cmdline, file_mode=False)
        self._x86_load(image, body, memsz, initrd, placed, None, top_down=False, floor=SZ_16M)
        self.kexec_image = image
        self.kernel.changed()

    def kexec_unload(self) -> None:
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
    ) -> None:
        """bzImage64_load: purgatory, boot parameters, kernel, initrd, in that order."""
        purgatory = KexecBuf(
            "purgatory", PURGATORY_TEXT, PURGATORY_SIZE, SZ_4K, floor, top_down=top_down
        )
        params = KexecBuf("boot_params", b"", BOOT_PARAMS_SIZE, SZ_4K, floor, top_down=top_down)
        kernel = KexecBuf("kernel", body, memsz, SZ_2M, max(floor, SZ_1M), top_down=top_down)
        bufs = [purgatory, params, kernel]
        if initrd:
            image.initrd = KexecBuf("initrd", initrd, len(initrd), SZ_4K, floor, top_down=top_down)
            bufs.append(image.initrd)
        for kbuf in bufs:
            self.kexec_add_buffer(kbuf, placed, scratch)
        params.buffer = self._boot_params(params.mem, image)
        image.boot_params, image.kernel = params, kernel

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
        if image.kho_fdt is not None and image.kho_scratch is not None:
            node = struct.pack(
                "<QIIQQQQ",
                0,
                SETUP_KEXEC_KHO,
                KHO_SETUP_DATA_LEN,
                image.kho_fdt.mem,
                len(image.kho_fdt.buffer),
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
        """``reboot(LINUX_REBOOT_CMD_KEXEC)``: hand the loaded image to the machine."""
        if self.kexec_image is None:
            raise KernelError(errno.EINVAL, "no kexec image loaded")
        return self.kexec_image

    def machine_kexec(self, image: Kimage) -> None:
        """Copy every segment to its destination, zero-filling up to its memory size
        (relocate_kernel + purgatory); the rest of RAM is left as it is."""
        for seg in image.segments:
            self.mem.write(seg.mem, seg.buffer[: seg.memsz])
            self.mem.zero(seg.mem + len(seg.buffer), seg.memsz - len(seg.buffer))
