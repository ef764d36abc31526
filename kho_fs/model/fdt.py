"""A thin adapter over libfdt (pylibfdt), the kernel's own FDT library.

Writing goes through libfdt's sequential-write calls into a buffer of a fixed size, so
the bytes and the negative error numbers are exactly the kernel's. Reading untrusted
blobs goes through libfdt too, and only ever on a buffer of exactly ``totalsize``
bytes, so a lying header cannot make libfdt read past the Python buffer.

The pure-Python ``fdt`` package is not used: its parser guesses property types, leaks
memory-reservation entries across instances and rejects NOP tags (see docs/decisions.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

import libfdt

FDT_MAGIC = 0xD00DFEED
FDT_HEADER_AREA = 48  # libfdt reserves this much for the header in sequential-write mode
FDT_ERR_NOTFOUND = 1
FDT_ERR_NOSPACE = 3
FDT_ERR_BADSTATE = 7
FDT_ERR_TRUNCATED = 8
FDT_ERR_BADMAGIC = 9
FDT_SW_INITIAL = 64 << 10  # first buffer of a sequential-write tree (grows up to dt_max)


def fdt_strerror(err: int) -> str:
    return str(libfdt.fdt_strerror(err))


class FdtSw:
    """A tree being written with libfdt's sequential-write API into ``size`` bytes.

    Every method returns 0 or a negative libfdt error, like the C functions, so callers
    (the KHO core and its participants) can reproduce the kernel's error reporting.

    The kernel allocates all ``size`` bytes (``dt_max``, up to 2 GiB) up front; the model
    starts with at most :data:`FDT_SW_INITIAL` bytes and moves the tree into a buffer twice
    as large (``fdt_resize``, capped at ``size``) whenever a call reports no space. libfdt
    changes nothing when it reports no space, and whether a call fits depends only on the
    bytes already written, never on where the free space lies, so every result and every
    byte is the one a ``size``-byte buffer gives, without allocating and zeroing ``dt_max``
    bytes on each activation.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        first = min(size, FDT_SW_INITIAL)
        self._buf = bytearray(first)
        self.create_error = int(libfdt.fdt_create(self._buf, first))

    def _sw(self, call: Callable[[], int]) -> int:
        """Run one sequential-write call, growing the buffer while it runs out of space."""
        err = int(call())
        while err == -FDT_ERR_NOSPACE and len(self._buf) < self.size:
            bigger = bytearray(min(self.size, 2 * len(self._buf)))
            if libfdt.fdt_resize(self._buf, bigger, len(bigger)):
                break
            self._buf = bigger
            err = int(call())
        return err

    def finish_reservemap(self) -> int:
        return self._sw(lambda: libfdt.fdt_finish_reservemap(self._buf))

    def begin_node(self, name: str) -> int:
        """``fdt_begin_node``; ``name`` is latin-1 text standing for raw bytes."""
        if name.isascii():
            return self._sw(lambda: libfdt.fdt_begin_node(self._buf, name))
        # The binding encodes text as UTF-8; write a same-length placeholder and patch
        # the raw bytes in, so a name from the command line lands byte for byte.
        raw = name.encode("latin-1")
        err = self._sw(lambda: libfdt.fdt_begin_node(self._buf, "x" * len(raw)))
        if err == 0:
            end = libfdt.fdt_off_dt_struct(self._buf) + libfdt.fdt_size_dt_struct(self._buf)
            start = end - ((len(raw) + 1 + 3) & ~3)
            self._buf[start : start + len(raw)] = raw
        return err

    def property(self, name: str, value: bytes) -> int:
        """``fdt_property``: a raw byte value, written as given."""
        return self._sw(lambda: libfdt.fdt_property_stub(self._buf, name, value, len(value)))

    def property_string(self, name: str, value: str) -> int:
        """``fdt_property_string``: the string plus its NUL terminator."""
        return self.property(name, value.encode("latin-1") + b"\0")

    def end_node(self) -> int:
        return self._sw(lambda: libfdt.fdt_end_node(self._buf))

    def finish(self) -> int:
        return self._sw(lambda: libfdt.fdt_finish(self._buf))

    def check_header(self) -> int:
        return int(libfdt.fdt_check_header(self._buf))

    def blob(self) -> bytes:
        """The finished tree: its first ``totalsize`` bytes."""
        return bytes(self._buf[: libfdt.fdt_totalsize(self._buf)])


def fdt_header_totalsize(header: bytes) -> int:
    """Total size from a header's first 8 bytes (0 when too short)."""
    if len(header) < 8:
        return 0
    return int(struct.unpack_from(">I", header, 4)[0])


def fdt_check_header(blob: bytes | bytearray) -> int:
    """libfdt's header check, made safe for short buffers; 0 or a negative error."""
    if len(blob) < FDT_HEADER_AREA - 8:  # struct fdt_header is 40 bytes
        return -FDT_ERR_TRUNCATED
    buf = bytearray(blob)
    err = int(libfdt.fdt_check_header(buf))
    if err == 0 and libfdt.fdt_totalsize(buf) > len(buf):
        return -FDT_ERR_TRUNCATED
    return err


def fdt_check_full(blob: bytes | bytearray) -> int:
    """libfdt's full structural check of a whole blob; 0 or a negative error."""
    buf = bytearray(blob)
    return int(libfdt.fdt_check_full(buf, len(buf)))


class FdtProperty(NamedTuple):
    name: str
    value: bytes


class Fdt:
    """Read-only access to a blob that passed :func:`fdt_check_header`.

    Lookups return ``None`` instead of raising: callers model kernel code that checks
    every libfdt return value.
    """

    def __init__(self, blob: bytes) -> None:
        if fdt_check_header(blob):
            raise ValueError("not a valid FDT")
        self.blob = bytes(blob[: fdt_header_totalsize(blob)])
        self._ro = libfdt.FdtRo(bytearray(self.blob))

    @property
    def totalsize(self) -> int:
        return len(self.blob)

    def path_offset(self, path: str) -> int | None:
        off = self._ro.path_offset(path, quiet=(FDT_ERR_NOTFOUND, *range(2, 20)))
        return None if off < 0 else int(off)

    def getprop(self, offset: int, name: str) -> bytes | None:
        try:
            prop = self._ro.getprop(offset, name, quiet=tuple(range(1, 20)))
        except libfdt.FdtException:
            return None
        if isinstance(prop, int):
            return None
        return bytes(prop)

    def get_name(self, offset: int) -> str:
        """The node's name as latin-1 text (raw bytes; libfdt's binding would insist on UTF-8)."""
        start = libfdt.fdt_off_dt_struct(self._ro._fdt) + offset + 4
        end = self.blob.find(b"\0", start)
        return self.blob[start:end].decode("latin-1") if end >= start else ""

    def subnodes(self, offset: int) -> Iterator[int]:
        quiet = tuple(range(1, 20))
        sub = self._ro.first_subnode(offset, quiet=quiet)
        guard = 0
        while sub >= 0 and guard < 1_000_000:
            yield int(sub)
            sub = self._ro.next_subnode(sub, quiet=quiet)
            guard += 1

    def node_compatible(self, offset: int, compat: str) -> bool:
        """``fdt_node_check_compatible`` == 0: ``compat`` is one of the listed strings."""
        value = self.getprop(offset, "compatible")
        if value is None:
            return False
        return compat.encode("latin-1") in value.split(b"\0")

    def node_check_compatible(self, offset: int, compat: str) -> int:
        """``fdt_node_check_compatible``: 0 on a match, 1 when the list lacks ``compat``,
        ``-FDT_ERR_NOTFOUND`` without a ``compatible`` property (the kernel prints it)."""
        value = self.getprop(offset, "compatible")
        if value is None:
            return -FDT_ERR_NOTFOUND
        return 0 if compat.encode("latin-1") in value.split(b"\0") else 1

    def prop_value_offset(self, node: int, name: str) -> int | None:
        """Offset in the blob of the value of property ``name`` of ``node`` (for code that
        patches a value in place, as the kernel does through ``fdt_getprop_w``)."""
        quiet = tuple(range(1, 20))
        off = self._ro.first_property_offset(node, quiet=quiet)
        while off >= 0:
            prop = self._ro.get_property_by_offset(off, quiet=quiet)
            if not isinstance(prop, int) and prop.name == name:
                return int(libfdt.fdt_off_dt_struct(self._ro._fdt)) + int(off) + 12
            off = self._ro.next_property_offset(off, quiet=quiet)
        return None

    def walk(self) -> Iterator[tuple[str, list[FdtProperty]]]:
        """Every node in FDT order, as (path, properties in order)."""
        quiet = tuple(range(1, 20))
        stack: list[str] = []
        offset, depth = 0, 0
        steps = 0
        while offset >= 0 and steps < 1_000_000:
            steps += 1
            name = self.get_name(offset)
            del stack[depth:]
            stack.append(name)
            path = "/" + "/".join(s for s in stack[1:]) if depth else "/"
            yield path, list(self._props(offset))
            try:
                offset, depth = self._ro.next_node(offset, depth, quiet=quiet)
            except libfdt.FdtException:
                return
            if depth < 0:
                return

    def _props(self, node: int) -> Iterator[FdtProperty]:
        quiet = tuple(range(1, 20))
        try:
            off = self._ro.first_property_offset(node, quiet=quiet)
            while off >= 0:
                prop = self._ro.get_property_by_offset(off, quiet=quiet)
                if isinstance(prop, int):
                    return
                yield FdtProperty(str(prop.name), bytes(prop))
                off = self._ro.next_property_offset(off, quiet=quiet)
        except (libfdt.FdtException, UnicodeDecodeError):
            return
