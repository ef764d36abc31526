"""x86 kernel images: which release a bzImage is, and images that say so (spec §15.3).

The loaded image decides the next kernel. Its boot header (Documentation/arch/x86/boot.rst)
carries a version string; its first word is the kernel release, mapped to a modelled
release by major.minor (§15.1 Decision). An image without a valid header is "the same
kernel again". ``make_bzimage`` writes an image with a valid header that ``file(1)``
recognises, so scripts can stage "the 6.19 kernel" without building one.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from kho_fs.model.releases import KHO_V4, RELEASES, Release

SETUP_SECTS = 0x1F1
BOOT_FLAG = 0x1FE
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
KERNEL_VERSION = 0x20E
LOADFLAGS = 0x211
INIT_SIZE = 0x260
SECTOR = 512
LOADED_HIGH = 0x01  # loadflags bit 0: a bzImage
PROTOCOL = 0x020F
V4_SUFFIX = "-kho-v4"
_VERSION = re.compile(r"(\d+)\.(\d+)")


def bzimage_version(image: bytes) -> str | None:
    """The version string of an x86 boot header, or None when there is no valid one.

    Valid: boot flag ``55 AA`` at 0x1FE, ``HdrS`` at 0x202, a non-zero ``kernel_version``
    whose NUL-terminated string lies inside the setup code (``0x200 × setup_sects``).
    """
    if len(image) < KERNEL_VERSION + 2:
        return None
    if (
        image[BOOT_FLAG : BOOT_FLAG + 2] != b"\x55\xaa"
        or image[HDR_MAGIC : HDR_MAGIC + 4] != b"HdrS"
    ):
        return None
    pointer = struct.unpack_from("<H", image, KERNEL_VERSION)[0]
    if not pointer:
        return None
    setup_end = SECTOR * (image[SETUP_SECTS] or 4)
    start = SECTOR + pointer
    if start >= min(setup_end, len(image)):
        return None
    end = image.find(b"\0", start, min(setup_end, len(image)))
    if end < 0:
        return None
    return image[start:end].decode("latin-1")


class ImageRelease(NamedTuple):
    """The release an image boots, and a note for dmesg when the mapping was not exact."""

    release: Release
    note: str | None = None


def release_for_version(version: str) -> ImageRelease | None:
    """§15.1: ``-kho-v4`` names the v4 series; else major.minor picks the release; below
    6.16 boots 6.12, above the newest modelled release (7.2) boots that one (with a note),
    and a version between two modelled ones (7.1) boots the next newer one, with a note
    (Decision: 7.1's KHO is the stateless or blob era, closer to 7.2 than to 7.0).
    None: no version number."""
    word = version.split(" ", 1)[0]
    if V4_SUFFIX in word:
        return ImageRelease(RELEASES["v4"])
    match = _VERSION.match(word)
    if match is None:
        return None
    key = (int(match.group(1)), int(match.group(2)))
    mainline = sorted(
        (
            (tuple(int(x) for x in r.name.split(".")), r)
            for r in RELEASES.values()
            if r.kho != KHO_V4
        ),
        key=lambda item: item[0],
    )
    for numbers, release in mainline:
        if numbers == key:
            return ImageRelease(release)
    newest_numbers, newest = mainline[-1]
    if key > newest_numbers:
        return ImageRelease(
            newest,
            f"kho-fs: kernel {word} is newer than the releases modelled; booting {newest.name}",
        )
    if key < (6, 16):
        return ImageRelease(RELEASES["6.12"])
    newer = next(r for numbers, r in mainline if numbers > key)
    return ImageRelease(
        newer, f"kho-fs: kernel {word} is not modelled; booting {newer.name}"
    )


def image_release(image: bytes) -> ImageRelease | None:
    """The release a kernel image boots, or None for "the running release again"."""
    version = bzimage_version(image)
    return release_for_version(version) if version is not None else None


def version_string(release: Release) -> str:
    """What ``make_bzimage`` writes: the release, then builder and build as kernels do."""
    return f"{release.uts_release} (kho-fs@kho-fs) #1 SMP PREEMPT_DYNAMIC"


def make_bzimage(release: Release, size: int = 1 << 20) -> bytes:
    """A kernel image with a valid x86 boot header naming ``release``; ``size`` bytes
    (at least the header: 2.5 KiB), the protected-mode part filled with NOPs."""
    setup_sects = 4
    setup = SECTOR * (setup_sects + 1)
    size = max(size, setup + SECTOR)
    image = bytearray(b"\x90" * size)
    image[:setup] = bytes(setup)
    image[SETUP_SECTS] = setup_sects
    image[BOOT_FLAG : BOOT_FLAG + 2] = b"\x55\xaa"
    image[HDR_MAGIC : HDR_MAGIC + 4] = b"HdrS"
    struct.pack_into("<H", image, HDR_VERSION, PROTOCOL)
    image[LOADFLAGS] = LOADED_HIGH
    text = version_string(release).encode() + b"\0"
    at = 0x400  # inside the setup code, after the header
    image[at : at + len(text)] = text
    struct.pack_into("<H", image, KERNEL_VERSION, at - SECTOR)
    struct.pack_into("<I", image, INIT_SIZE, size - setup)
    return bytes(image)
