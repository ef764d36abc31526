"""Driving a kernel's LUO in-process, for the LUO model tests of every release
(test_luo.py: 6.19 and 7.0; test_luo_v5.py: 7.2).

The helpers speak the uAPI as a transport would: ioctl numbers and argument structures,
files as :class:`Source` objects. They compute no expected values; each test module
decodes what the model wrote with its own decoder. Test modules import them as
``from luo_model_helpers import ...`` (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from kho_fs.model.errors import KernelError
from kho_fs.model.luo import (
    FD_ARG,
    FILE_KIND_MEMFD,
    FINISH_ARG,
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
    SESSION_ARG,
    Luo,
    LuoDevice,
    LuoFile,
    LuoSession,
    RestoredFile,
    UserArg,
)
from kho_fs.model.machine import Machine

F_SEAL_SEAL = 0x1  # include/uapi/linux/fcntl.h


class Source:
    """A file as a transport hands it over (what the daemon builds from a descriptor).
    ``seals`` and ``ident`` (the inode, ``file_id``) are what 7.2 also asks; 6.19 and
    7.0 never do."""

    def __init__(
        self,
        data: bytes = b"",
        pos: int = 0,
        seals: int | None = None,
        ident: object = None,
        kind: str = FILE_KIND_MEMFD,
    ) -> None:
        self.data = bytearray(data)
        self._pos = pos
        self._seals = seals
        self._ident = ident if ident is not None else object()
        self._kind = kind
        self.released = 0

    def kind(self) -> str:
        return self._kind

    def size(self) -> int:
        return len(self.data)

    def pos(self) -> int:
        return self._pos

    def seals(self) -> int:
        return F_SEAL_SEAL if self._seals is None else self._seals

    def file_id(self) -> object:
        return self._ident

    def readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def release(self) -> None:
        self.released += 1


class BusyHandler:
    """A file handler whose files refuse to finish (memfd never does, docs/luo.md); it
    takes sources of kind ``busy``."""

    compatible = "test-busy-v1"

    def can_preserve(self, source: Source) -> bool:
        return source.kind() == "busy"

    def preserve(self, luo: Luo, f: LuoFile) -> None:
        f.serialized_data = 0

    def unpreserve(self, luo: Luo, f: LuoFile) -> None:
        pass

    def freeze(self, luo: Luo, f: LuoFile) -> int:
        return 0

    def unfreeze(self, luo: Luo, f: LuoFile) -> None:
        pass

    def retrieve(self, luo: Luo, f: LuoFile) -> RestoredFile:
        return RestoredFile(0, 0, [])

    def can_finish(self, luo: Luo, f: LuoFile) -> bool:
        return False

    def finish(self, luo: Luo, f: LuoFile) -> None:
        pass


def luo_of(m: Machine) -> Luo:
    assert m.kernel.luo is not None
    return m.kernel.luo


def arg(raw: bytes) -> UserArg:
    return UserArg.from_buffer(raw)


def create(luo: Luo, dev: LuoDevice, name: bytes) -> LuoSession:
    reply = luo.ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, arg(SESSION_ARG.pack(72, 0, name)))
    assert isinstance(reply.obj, LuoSession)
    assert struct.unpack_from("<i", reply.data, 4)[0] == -1  # the transport writes the fd
    return reply.obj


def retrieve(luo: Luo, dev: LuoDevice, name: bytes) -> LuoSession:
    reply = luo.ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, arg(SESSION_ARG.pack(72, 0, name)))
    assert isinstance(reply.obj, LuoSession)
    return reply.obj


def preserve(luo: Luo, s: LuoSession, token: int, src: Source | None) -> None:
    luo.ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, arg(FD_ARG.pack(16, 3, token)), src)


def retrieve_fd(luo: Luo, s: LuoSession, token: int) -> RestoredFile:
    reply = luo.ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, arg(FD_ARG.pack(16, 0, token)))
    assert isinstance(reply.obj, RestoredFile)
    return reply.obj


def finish(luo: Luo, s: LuoSession, reserved: int = 0) -> None:
    luo.ioctl(s, LIVEUPDATE_SESSION_FINISH, arg(FINISH_ARG.pack(8, reserved)))


def contents(m: Machine, f: RestoredFile) -> bytes:
    """A retrieved file's bytes, read from its extents in emulated RAM."""
    out = bytearray(f.size)
    for offset, phys, length in f.extents:
        out[offset : offset + length] = m.mem.read(phys, length)
    return bytes(out)


def errno_of(call: Callable[..., object], *args: object) -> int:
    with pytest.raises(KernelError) as info:
        call(*args)
    return info.value.errno
