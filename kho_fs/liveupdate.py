"""``/dev/liveupdate`` of an emulated machine, from Python (docs/luo.md).

The calls mirror the kernel's uAPI (include/uapi/linux/liveupdate.h) and fail with
:class:`OSError` carrying the kernel's errno::

    from kho_fs import liveupdate

    with liveupdate.open_device(root="/tmp/machine") as dev:
        session = dev.create_session("vm-42")
        fd = os.memfd_create("guest-ram")
        os.write(fd, b"...")
        session.preserve_fd(fd, token=1)
        # keep `session` open until the kexec (closing it unpreserves everything)

    # after `kho-fs kexec -e`, in a new process:
    with liveupdate.open_device(root="/tmp/machine") as dev:
        session = dev.retrieve_session("vm-42")
        fd = session.retrieve_fd(1)      # a new memfd with the same size, bytes, position
        session.finish()

Descriptors are real: :meth:`Device.fileno` and :meth:`Session.fileno` are sockets
connected to the daemon (pass them to another process with SCM_RIGHTS, or inherit
them), retrieved files are memfds. The socket is found from ``root`` (the mountpoint),
``$KHO_FS_LIVEUPDATE`` (set by ``kho-fs run``), or ``$KHO_FS_ROOT``.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import threading
from pathlib import Path
from types import TracebackType

from kho_fs import luo_wire as wire
from kho_fs.model.luo import (
    FD_ARG,
    FINISH_ARG,
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_NAME_LENGTH,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
    SESSION_ARG,
    UserArg,
)

__all__ = [
    "LIVEUPDATE_IOCTL_CREATE_SESSION",
    "LIVEUPDATE_IOCTL_RETRIEVE_SESSION",
    "LIVEUPDATE_SESSION_FINISH",
    "LIVEUPDATE_SESSION_GET_NAME",
    "LIVEUPDATE_SESSION_PRESERVE_FD",
    "LIVEUPDATE_SESSION_RETRIEVE_FD",
    "Device",
    "Session",
    "open_device",
    "socket_path",
]

#: struct liveupdate_session_get_name (after 7.0): u32 size, u32 reserved, u8 name[64]
GET_NAME_ARG = struct.Struct("<II64s")


def socket_path(root: str | os.PathLike[str] | None = None) -> str:
    """The daemon's liveupdate socket: ``root/machine/liveupdate`` names it; without
    ``root``, ``$KHO_FS_LIVEUPDATE``, then ``$KHO_FS_ROOT``. OSError(ENOENT) if none."""
    if root is None:
        env = os.environ.get(wire.ENV_SOCKET)
        if env:
            return env
        env_root = os.environ.get("KHO_FS_ROOT")
        if not env_root:
            raise OSError(errno.ENOENT, "no machine: give root, or set KHO_FS_ROOT")
        root = env_root
    try:
        text = (Path(root) / "machine" / "liveupdate").read_text()
    except OSError as exc:
        raise OSError(exc.errno or errno.ENOENT, f"{root}: no liveupdate socket") from None
    return text.strip()


class _Channel:
    """A socket to the daemon that carries ioctls (one request, one answer)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        self._sock.close()

    def detach(self) -> int:
        """Give up the descriptor without closing it (the caller owns it now)."""
        return self._sock.detach()

    def _call(
        self, op: int, cmd: int, arg: UserArg, fd: int | None = None
    ) -> tuple[bytes, int | None]:
        """Send one request; the answer's bytes and the descriptor it carries (ENODEV when
        the daemon closed this descriptor's end: a previous boot's descriptor)."""
        msg = wire.encode_request(op, cmd, arg.size, arg.tail, arg.data)
        anc = []
        if fd is not None:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        with self._lock:
            try:
                self._sock.sendmsg([msg], anc, socket.MSG_NOSIGNAL)
                reply, ancdata, flags, _ = self._sock.recvmsg(
                    wire.MAX_ANSWER, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
                )
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise OSError(errno.ENODEV, os.strerror(errno.ENODEV)) from None
                raise
        fds = wire.received_fds(ancdata)
        if not reply and not fds:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        try:
            error, fd_at, data = wire.decode_answer(reply)
        except wire.WireError:
            error, fd_at, data = errno.EIO, wire.NO_FD, b""
        if flags & socket.MSG_CTRUNC and not fds:
            error = error or errno.EMFILE  # no room in our descriptor table
        new_fd = fds.pop(0) if fds and fd_at != wire.NO_FD and not error else None
        for extra in fds:
            os.close(extra)
        if error:
            if new_fd is not None:
                os.close(new_fd)
            raise OSError(error, os.strerror(error))
        return data, new_fd

    def ioctl(self, cmd: int, buf: bytearray, fd: int | None = None) -> int | None:
        """The raw ioctl on this descriptor with ``buf`` as the caller's memory at the
        argument pointer (past its end, the memory faults). On success the kernel's
        answer is copied into ``buf`` and a returned descriptor's number is written at
        its ``fd`` field and returned. ``fd`` is the descriptor PRESERVE_FD names (by
        default the number in the structure)."""
        arg = UserArg.from_buffer(buf)
        if cmd == LIVEUPDATE_SESSION_PRESERVE_FD and fd is None and len(buf) >= 8:
            named = struct.unpack_from("<i", buf, 4)[0]
            fd = named if named >= 0 and _is_open(named) else None
        data, new_fd = self._call(wire.OP_IOCTL, cmd, arg, fd)
        buf[: len(data)] = data
        if new_fd is not None and len(buf) >= 8:
            struct.pack_into("<i", buf, 4, new_fd)
        return new_fd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)  # fcntl would do too; any cheap call that fails with EBADF
    except OSError as exc:
        return exc.errno != errno.EBADF
    return True


def _name_bytes(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if len(raw) > LIVEUPDATE_SESSION_NAME_LENGTH:
        raise OSError(errno.EINVAL, "session names are at most 64 bytes")
    return raw


class Session(_Channel):
    """A session descriptor (``[luo_session] <name>`` in the kernel)."""

    @classmethod
    def from_fd(cls, fd: int) -> Session:
        """Wrap a session descriptor received from another process (takes ownership)."""
        return cls(socket.socket(fileno=fd))

    def preserve_fd(self, fd: int, token: int) -> None:
        """LIVEUPDATE_SESSION_PRESERVE_FD: preserve the file ``fd`` under ``token``."""
        buf = bytearray(FD_ARG.pack(FD_ARG.size, fd, token & 0xFFFFFFFFFFFFFFFF))
        self.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, buf, fd if _is_open(fd) else None)

    def retrieve_fd(self, token: int) -> int:
        """LIVEUPDATE_SESSION_RETRIEVE_FD: a new descriptor (close-on-exec) of the file
        preserved under ``token``; the caller owns it."""
        buf = bytearray(FD_ARG.pack(FD_ARG.size, -1, token & 0xFFFFFFFFFFFFFFFF))
        fd = self.ioctl(LIVEUPDATE_SESSION_RETRIEVE_FD, buf)
        assert fd is not None
        return fd

    def finish(self) -> None:
        """LIVEUPDATE_SESSION_FINISH."""
        self.ioctl(LIVEUPDATE_SESSION_FINISH, bytearray(FINISH_ARG.pack(FINISH_ARG.size, 0)))

    def get_name(self) -> str:
        """LIVEUPDATE_SESSION_GET_NAME, added after 7.0: on 6.19 and 7.0 it fails with
        EINVAL (a command number outside the table), as there."""
        buf = bytearray(GET_NAME_ARG.pack(GET_NAME_ARG.size, 0, b""))
        self.ioctl(LIVEUPDATE_SESSION_GET_NAME, buf)
        return bytes(buf[8:72]).split(b"\0", 1)[0].decode(errors="surrogateescape")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Device(_Channel):
    """An open ``/dev/liveupdate`` (exclusive: a second open fails with EBUSY)."""

    def create_session(self, name: str | bytes) -> Session:
        """LIVEUPDATE_IOCTL_CREATE_SESSION."""
        return self._session(LIVEUPDATE_IOCTL_CREATE_SESSION, name)

    def retrieve_session(self, name: str | bytes) -> Session:
        """LIVEUPDATE_IOCTL_RETRIEVE_SESSION."""
        return self._session(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, name)

    def _session(self, cmd: int, name: str | bytes) -> Session:
        buf = bytearray(SESSION_ARG.pack(SESSION_ARG.size, -1, _name_bytes(name)))
        fd = self.ioctl(cmd, buf)
        assert fd is not None
        return Session.from_fd(fd)

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_device(
    root: str | os.PathLike[str] | None = None, *, path: str | None = None, flags: int = os.O_RDWR
) -> Device:
    """``open("/dev/liveupdate", flags)`` on the machine mounted at ``root`` (or the
    socket ``path``): ENOENT when the running kernel has no such device."""
    where = path or socket_path(root)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(where)
        except OSError as exc:
            raise OSError(errno.ENOENT, f"{where}: {exc.strerror}") from None
        dev = Device(sock)
        dev._call(wire.OP_OPEN, flags, UserArg(0))
    except BaseException:
        sock.close()
        raise
    return dev
