"""The messages of the ``/dev/liveupdate`` socket (DESIGN §6, docs/luo.md "Transport").

pyfuse3 has no ioctl and a file system cannot hand out descriptors, so the daemon serves
LUO on a Unix ``SOCK_SEQPACKET`` socket beside the mount. One connection is one open of
``/dev/liveupdate``; each session is a socket pair whose far end the client receives as
its session descriptor. Every request is one message, every answer one message:

request (client -> daemon), little-endian::

    u32 magic   'LUO1'
    u32 op      1 = open (on a fresh connection), 2 = ioctl
    u32 cmd     open: the open flags; ioctl: the ioctl number
    u32 size    ioctl: the structure's first u32
    u32 flags   bit 0: reading the size faulted; bits 1-2: what follows the data
                (0 zeros, 1 a non-zero byte, 2 a fault) up to ``size``
    u32 len     bytes of data that follow
    u8  data[]  the first min(size, 4096) bytes at the argument pointer that could be read
    + SCM_RIGHTS: for LIVEUPDATE_SESSION_PRESERVE_FD, the descriptor the structure names
      (none when that number is not an open descriptor: the kernel's fget fails)

answer (daemon -> client)::

    u32 magic   'LUO1'
    u32 error   0 or the positive errno of the call
    u32 fd_at   offset in data of the s32 that must hold the returned descriptor's
                number, 0xffffffff when none is returned
    u32 len
    u8  data[]  the bytes the kernel copies back to the argument (success only)
    + SCM_RIGHTS: the returned descriptor (a session, or a retrieved memfd)

The C preload library (csrc/liveupdate_preload.c) speaks the same format.
"""

from __future__ import annotations

import array
import socket
import struct
from typing import NamedTuple

MAGIC = 0x314F554C  # "LUO1"
OP_OPEN = 1
OP_IOCTL = 2
FLAG_SIZE_FAULT = 0x1
TAIL_SHIFT = 1
TAIL_MASK = 0x3
NO_FD = 0xFFFFFFFF
REQUEST = struct.Struct("<6I")
ANSWER = struct.Struct("<4I")
MAX_DATA = 4096
MAX_REQUEST = REQUEST.size + MAX_DATA
MAX_ANSWER = ANSWER.size + MAX_DATA
MAX_FDS = 253  # SCM_MAX_FD: what one message can carry
#: Environment of a process started by ``kho-fs run``: the socket, the daemon's pid.
ENV_SOCKET = "KHO_FS_LIVEUPDATE"
ENV_PID = "KHO_FS_LIVEUPDATE_PID"


class Request(NamedTuple):
    op: int
    cmd: int
    size: int | None  # None: reading the size faulted
    tail: int
    data: bytes


class WireError(ValueError):
    """A message that is not a request of this protocol."""


def encode_request(op: int, cmd: int, size: int | None, tail: int, data: bytes) -> bytes:
    flags = (FLAG_SIZE_FAULT if size is None else 0) | ((tail & TAIL_MASK) << TAIL_SHIFT)
    return REQUEST.pack(MAGIC, op, cmd & 0xFFFFFFFF, size or 0, flags, len(data)) + data


def decode_request(msg: bytes) -> Request:
    if len(msg) < REQUEST.size:
        raise WireError("short request")
    magic, op, cmd, size, flags, length = REQUEST.unpack_from(msg)
    if magic != MAGIC or op not in (OP_OPEN, OP_IOCTL) or flags & ~0x7:
        raise WireError("not a request")
    tail = (flags >> TAIL_SHIFT) & TAIL_MASK
    if length > MAX_DATA or len(msg) != REQUEST.size + length or tail == 3:
        raise WireError("bad length")
    return Request(op, cmd, None if flags & FLAG_SIZE_FAULT else size, tail, msg[REQUEST.size :])


def encode_answer(error: int, data: bytes = b"", fd_at: int = NO_FD) -> bytes:
    return ANSWER.pack(MAGIC, error, fd_at, len(data)) + data


def decode_answer(msg: bytes) -> tuple[int, int, bytes]:
    """``(errno, fd_at, data)``; WireError for anything else."""
    if len(msg) < ANSWER.size:
        raise WireError("short answer")
    magic, error, fd_at, length = ANSWER.unpack_from(msg)
    if magic != MAGIC or len(msg) != ANSWER.size + length:
        raise WireError("not an answer")
    return error, fd_at, msg[ANSWER.size :]


def received_fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors of a message's SCM_RIGHTS ancillary data (both ends: the daemon's
    requests, the client's answers); a truncated trailing int is dropped."""
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(data[: len(data) - len(data) % got.itemsize])
            fds.extend(got)
    return fds
