"""The daemon's ``/dev/liveupdate``: a Unix socket beside the mount (DESIGN §6).

One connection is one open of the device; each session is a socket pair whose far end
the client gets as its session descriptor, so closing it -- or the process dying --
releases the session as the kernel's ``luo_session_release`` would. Messages are those
of :mod:`kho_fs.luo_wire`; the meaning of every ioctl, and every errno, comes from the
model's :meth:`kho_fs.model.luo.Luo.ioctl`.

Descriptors:

- a file to preserve arrives with SCM_RIGHTS; the daemon keeps it (the kernel's ``fget``
  reference) while the model holds it, and reads a memfd's bytes from it only at the
  reboot call;
- a retrieved file is a NEW memfd filled from emulated RAM, sent with SCM_RIGHTS; the
  daemon keeps its own reference until the session finishes (LUO's reference);
- when the kernel that served a connection is gone (kexec, reboot) the daemon closes its
  ends: the client's descriptors are dead and its calls fail with ENODEV.

Nothing a client sends may stop the daemon: every failure is an errno answer, unused
descriptors are closed (those that may live on this very FUSE mount in a worker thread:
closing them sends FUSE requests this loop must answer).

Speed (``scripts/bench --only luo``, docs/luo.md): a request is taken straight off the
socket and answered straight onto it, a memfd is recognised with two system calls
(``F_GET_SEALS``, ``fstat``: :func:`classify`), and between two requests of a busy client
the task sleeps in ``poll()`` on its socket and trio's epoll set instead of going round
trio's run loop (:meth:`Connection.wait_quietly`). What is left of a ``PRESERVE_FD`` is
mostly the model's memfd preserve (four pages allocated and KHO-preserved).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import socket
import stat
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from kho_fs import luo_wire as wire
from kho_fs.model.errors import KernelError
from kho_fs.model.luo import (
    FD_FIELD_OFFSET,
    FILE_KIND_MEMFD,
    FILE_KIND_OTHER,
    FIOQSIZE,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    VFS_DESCRIPTOR_IOCTLS,
    Luo,
    LuoDevice,
    LuoSession,
    RestoredFile,
    UserArg,
)

if TYPE_CHECKING:
    from kho_fs.model.machine import Machine

log = logging.getLogger(__name__)

TMPFS_MAGIC = 0x01021994
MSG_NOSIGNAL = socket.MSG_NOSIGNAL
O_PATH = getattr(os, "O_PATH", 0o10000000)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
ANC_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * 4)
RECV_SIZE = wire.MAX_REQUEST + 1  # one byte more: a longer message is MSG_TRUNC
#: requests a connection may have answered in a row, from messages already queued, before
#: its task yields to the others (the FUSE loop, other clients)
FAIR_SHARE = 32
QUIET_WAIT_MS = 1  # Connection.wait_quietly
#: requests met by Connection.wait_quietly before the task yields to trio: a task that is
#: already in trio's current batch is invisible to it (neither runnable nor in epoll), and
#: must get its turn too. Unbounded, a client preserving flat out made each FUSE read of
#: machine/status take ~40 ms instead of ~5; with 2 it takes ~6 ms.
QUIET_SHARE = 2
ACCEPT_BACKOFF = 0.05  # after accept() fails (EMFILE): let connections close first


# -- files a client hands over ---------------------------------------------------------------
_LIBC: ctypes.CDLL | None = None
_STATFS = ctypes.create_string_buffer(256)  # struct statfs (f_type is its first long)


def _fstatfs_type(fd: int) -> int | None:
    """``f_type`` of ``fstatfs(fd)`` (only called on files that cannot be FUSE files)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if _LIBC.fstatfs(fd, _STATFS) != 0:
        return None
    return int(ctypes.c_long.from_buffer(_STATFS).value)


def _mount_fstype(mnt_id: int) -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == str(mnt_id):
                    return fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        pass
    return None


def _fdinfo_mnt_id(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memfd_dev() -> int | None:
    """``st_dev`` of the kernel's internal shmem mount, where every ``memfd_create``
    file without ``MFD_HUGETLB`` lives (it is never unmounted, so the number is stable)."""
    try:
        fd = os.memfd_create("kho-fs-probe", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    try:
        return os.fstat(fd).st_dev if _fstatfs_type(fd) == TMPFS_MAGIC else None
    except OSError:
        return None
    finally:
        os.close(fd)


MEMFD_DEV = _memfd_dev()


def _classify_sealable(fd: int) -> tuple[str, os.stat_result] | None:
    """The fast path of :func:`classify`, two system calls for a memfd: ``(kind, the
    file's stat)``, or None for a file it cannot tell (the slow path can).

    ``F_GET_SEALS`` only succeeds on shmem and hugetlbfs files (``memfd_file_seals_ptr``;
    an ``O_PATH`` descriptor gets EBADF) and never reaches a file system's own code, so
    it cannot ask this daemon anything; once it has succeeded the file is no FUSE file,
    ``fstat``/``fstatfs`` are safe and so is closing it here. The memfds' own mount is
    known (:data:`MEMFD_DEV`): for them no ``fstatfs`` either.
    """
    try:
        fcntl.fcntl(fd, F_GET_SEALS)
        st = os.fstat(fd)
    except OSError:
        return None
    if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 0):
        return FILE_KIND_OTHER, st
    if st.st_dev != MEMFD_DEV and _fstatfs_type(fd) != TMPFS_MAGIC:
        return FILE_KIND_OTHER, st  # hugetlbfs: no shmem_file()
    return FILE_KIND_MEMFD, st


def classify(fd: int) -> tuple[str | None, bool]:
    """What the memfd handler's ``can_preserve`` would say of this descriptor, found
    without touching a file of a FUSE mount (that would ask this very daemon):
    ``(kind, safe_to_close_here)``, kind None for an ``O_PATH`` descriptor (the
    kernel's ``fget`` refuses those: EBADF).

    memfd's rule (``shmem_file(file) && !inode->i_nlink``): a regular shmem file with
    no links -- memfd_create, or an unlinked / O_TMPFILE file on tmpfs.
    """
    fast = _classify_sealable(fd)
    if fast is not None:
        return fast[0], True
    return _classify_slow(fd)


def _classify_slow(fd: int) -> tuple[str | None, bool]:
    """:func:`classify` for descriptors ``F_GET_SEALS`` refuses: find the file system
    from the descriptor's path and mount without asking the file system itself."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return FILE_KIND_OTHER, False
    if flags & O_PATH:
        return None, not target.startswith("/")
    if target.startswith("/memfd:"):
        shmem = _fstatfs_type(fd) == TMPFS_MAGIC
    elif target.startswith("/"):
        mnt_id = _fdinfo_mnt_id(fd)
        if mnt_id is None or _mount_fstype(mnt_id) != "tmpfs":
            return FILE_KIND_OTHER, False  # maybe a FUSE file: never touch it here
        shmem = True
    else:  # socket:[…], pipe:[…], anon_inode:[…]
        return FILE_KIND_OTHER, True
    try:
        st = os.fstat(fd)
    except OSError:
        return FILE_KIND_OTHER, True
    if shmem and stat.S_ISREG(st.st_mode) and st.st_nlink == 0:
        return FILE_KIND_MEMFD, True
    return FILE_KIND_OTHER, True


class FdSource:
    """A received descriptor as :class:`kho_fs.model.luo.LuoFileSource`: the daemon's
    reference shares the client's open file (its position too)."""

    def __init__(self, fd: int, kind: str, st: os.stat_result | None = None) -> None:
        self.fd = fd
        self._kind = kind
        self._read_fd: int | None = None
        #: an ``fstat`` taken while handling the request that brought the descriptor;
        #: it answers ``size()`` until that request is answered (then ``None``)
        self.st = st

    def kind(self) -> str:
        return self._kind

    def size(self) -> int:
        return (self.st or os.fstat(self.fd)).st_size

    def pos(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def seals(self) -> int:
        """``memfd_get_seals``: the ``F_SEAL_*`` bits (7.2's memfd-v2 preserves them)."""
        return int(fcntl.fcntl(self.fd, F_GET_SEALS))

    def file_id(self) -> object:
        """memfd's ``get_id``, the inode: 7.2 preserves a file once at a time (EBUSY)."""
        st = self.st or os.fstat(self.fd)
        return ("inode", st.st_dev, st.st_ino)

    def _reader(self) -> int:
        """A descriptor that can read: the client's, or the same file reopened read-only
        when the client's is write-only."""
        if self._read_fd is None:
            if fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                self._read_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
            else:
                self._read_fd = self.fd
        return self._read_fd

    def readinto(self, offset: int, buf: memoryview) -> int:
        fd, done = self._reader(), 0
        while done < len(buf):
            got = os.preadv(fd, [buf[done:]], offset + done)
            if got <= 0:
                break
            done += got
        return done

    def release(self) -> None:
        for fd in {self.fd, self._read_fd}:
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd, self._read_fd = -1, None


def _pwrite_all(fd: int, view: memoryview, *, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


# -- connections --------------------------------------------------------------------------------
def _trio_epoll_fd() -> int | None:
    """The epoll descriptor the running trio loop waits on (None: another backend, or a
    trio whose internals moved: the caller then does without)."""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT

        epoll = getattr(GLOBAL_RUN_CONTEXT.runner.io_manager, "_epoll", None)
        return None if epoll is None else int(epoll.fileno())
    except (ImportError, AttributeError, ValueError, OSError):
        return None


class Connection:
    """One client socket: a device open or a session descriptor."""

    def __init__(self, sock: socket.socket, luo: Luo | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.served = 0  # requests answered since the last scheduling point
        self.luo = luo
        self.target: LuoDevice | LuoSession | None = None
        self.closed = False
        self._quiet: select.poll | None = None  # see wait_quietly
        self.quiet_served = 0  # requests met by wait_quietly since the last scheduling point

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)  # wakes its task's wait_readable
            self.sock.close()

    async def recvmsg(self) -> tuple[bytes, list[tuple[int, int, bytes]], int]:
        """The next message. Straight on the socket (trio's wrapper yields to the
        scheduler twice per call, which halves the request rate): a message already
        queued is taken at once; when there is none yet, :meth:`wait_quietly` first,
        then the task waits in trio. A scheduling point at least every
        :data:`FAIR_SHARE` requests keeps a busy client from starving the FUSE loop and
        the other clients."""
        self.served += 1
        if self.served >= FAIR_SHARE:
            self.served = 0
            await trio.lowlevel.checkpoint()
        recvmsg = self.sock.recvmsg
        quiet = True
        while True:
            try:
                msg, anc, flags, _ = recvmsg(RECV_SIZE, ANC_SPACE, socket.MSG_CMSG_CLOEXEC)
                return msg, anc, flags
            except BlockingIOError:
                if quiet:
                    quiet = False
                    if self.wait_quietly():
                        self.quiet_served += 1
                        if self.quiet_served >= QUIET_SHARE:
                            self.quiet_served = self.served = 0
                            await trio.lowlevel.checkpoint()
                        continue
                self.served = self.quiet_served = 0
                await trio.lowlevel.wait_readable(self.sock)

    def wait_quietly(self) -> bool:
        """Wait up to :data:`QUIET_WAIT_MS` for the client's next request while trio has
        nothing else to do, without the trip through trio's run loop (skipping it makes
        PRESERVE_FD round trips ~20% faster on the reference VM). True: it came.

        The poll set holds this socket and trio's own epoll descriptor, which is
        readable as soon as anything trio waits for is (the FUSE device, other clients,
        signals, threads handing back results): then, or when a task is runnable, or
        after the timeout, the caller waits in trio as usual; and after
        :data:`QUIET_SHARE` requests it yields anyway. The thread sleeps in poll(), so
        no CPU is taken from the client; only trio's timers can be late, by at most the
        timeout. Not on trio's epoll backend: False, always.
        """
        poller = self._quiet
        if poller is None:
            epoll_fd = _trio_epoll_fd()
            if epoll_fd is None:
                return False
            poller = self._quiet = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            poller.register(epoll_fd, select.POLLIN)
        if trio.lowlevel.current_statistics().tasks_runnable:
            return False
        ready = poller.poll(QUIET_WAIT_MS)
        return len(ready) == 1 and ready[0][0] == self.sock.fileno()

    async def sendmsg(self, data: bytes, anc: list[tuple[int, int, array.array[int]]]) -> None:
        """Send one message (:meth:`LuoServer._send` tries without waiting first)."""
        while True:
            try:
                self.sock.sendmsg([data], anc, socket.MSG_NOSIGNAL)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)


class Reply:
    def __init__(self, error: int, data: bytes = b"", fd: int | None = None) -> None:
        self.error = error
        self.data = data
        self.fd = fd  # sent with SCM_RIGHTS; ``close_fd`` says whether we close it after
        self.close_fd = False


class LuoServer:
    """Serves ``/dev/liveupdate`` of ``machine``'s running kernel at ``path``."""

    def __init__(self, machine: Machine, path: str, mode: int = 0o600) -> None:
        self.machine = machine
        self.path = path
        self.mode = mode
        self._nursery: trio.Nursery | None = None
        self._conns: dict[int, set[Connection]] = {}  # id(luo) -> its connections
        self._watched: set[int] = set()
        self._hangups = select.epoll()  # every tracked connection, for hang-ups
        self._by_fd: dict[int, Connection] = {}
        self.requests = 0  # answered requests (for tests and status)

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            await listener.bind(self.path)
            os.chmod(self.path, self.mode)
            listener.listen(128)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    try:
                        sock, _ = await listener.accept()
                    except OSError as exc:
                        log.warning("liveupdate socket: accept failed: %s", exc)
                        await trio.sleep(ACCEPT_BACKOFF)
                        continue
                    nursery.start_soon(self._serve, Connection(socket.socket(fileno=sock.detach())))
        finally:
            self._hangups.close()
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _track(self, conn: Connection, luo: Luo) -> None:
        conn.luo = luo
        self._conns.setdefault(id(luo), set()).add(conn)
        self._by_fd[conn.sock.fileno()] = conn
        self._hangups.register(conn.sock.fileno(), select.EPOLLRDHUP | select.EPOLLHUP)
        if id(luo) not in self._watched:
            self._watched.add(id(luo))
            luo.on_shutdown.append(lambda: self._kernel_gone(luo))

    def _kernel_gone(self, luo: Luo) -> None:
        """Descriptors of a kernel that is gone are dead: close our ends."""
        self._watched.discard(id(luo))
        for conn in self._conns.pop(id(luo), set()):
            self._forget(conn)
            conn.close()

    # -- one connection -----------------------------------------------------------------
    async def _serve(self, conn: Connection) -> None:
        try:
            while not conn.closed:
                try:
                    msg, anc, flags = await conn.recvmsg()
                except (OSError, trio.ClosedResourceError):
                    break
                fds = wire.received_fds(anc) if anc else []
                if not msg and not fds and _hung_up(conn.sock):
                    break
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    reply = Reply(errno.EINVAL)
                else:
                    reply = self._handle(conn, msg, fds)
                if fds:
                    await self._close_unused(fds)
                sent = self._send_now(conn, reply)
                if sent is None:
                    sent = await self._send(conn, reply)
                if not sent:
                    break
                if reply.error and conn.target is None:
                    break  # a failed open: the connection was never a device
        except Exception:
            log.exception("liveupdate connection failed")
        finally:
            self._release(conn)

    def _forget(self, conn: Connection) -> None:
        """Stop watching a connection's socket (before it is closed)."""
        if not conn.closed and self._by_fd.get(conn.sock.fileno()) is conn:
            del self._by_fd[conn.sock.fileno()]
            self._hangups.unregister(conn.sock.fileno())

    def _release(self, conn: Connection) -> None:
        luo, target = conn.luo, conn.target
        conn.target = None  # released once: here or by its task (whichever comes first)
        self._forget(conn)
        conn.close()
        if luo is not None:
            self._conns.get(id(luo), set()).discard(conn)
        try:
            if luo is not None and isinstance(target, LuoDevice):
                luo.release_device(target)
            elif luo is not None and isinstance(target, LuoSession):
                luo.release_session(target)
        except Exception:
            log.exception("releasing a liveupdate descriptor failed")

    def _reap_hangups(self, current: Connection) -> None:
        """Release every descriptor whose last copy was closed before this request.

        In the kernel the last ``close()`` releases a session or the device before it
        returns, so ``close(s); ioctl(dev, RETRIEVE_SESSION, …)`` finds the session gone.
        Here the hang-up is noticed by another task, maybe later: each request first
        handles the hang-ups that already happened (the client's close() came first).
        Every connection's socket sits in one epoll set for this (one syscall per request).
        """
        for fd, _events in self._hangups.poll(0):
            conn = self._by_fd.get(fd)
            if conn is not None and conn is not current:
                self._release(conn)

    def _send_now(self, conn: Connection, reply: Reply) -> bool | None:
        """Send the answer if the socket takes it at once (it nearly always does: the
        client is waiting for it), without a trip through the scheduler: True when
        sent, False when the client is gone, None when it is left to :meth:`_send`."""
        data, anc = _encode_reply(reply)
        try:
            conn.sock.sendmsg([data], anc, MSG_NOSIGNAL)
            ok = True
        except BlockingIOError:
            return None
        except OSError:
            ok = False
        self._sent(reply)
        return ok

    async def _send(self, conn: Connection, reply: Reply) -> bool:
        data, anc = _encode_reply(reply)
        try:
            await conn.sendmsg(data, anc)
            ok = True
        except (OSError, trio.ClosedResourceError):
            ok = False
        finally:
            self._sent(reply)
        return ok

    def _sent(self, reply: Reply) -> None:
        """The answer went out (or could not): drop the descriptor it carried if it was
        only ours to give."""
        if reply.close_fd and reply.fd is not None:
            os.close(reply.fd)
        self.requests += 1

    async def _close_unused(self, fds: list[int]) -> None:
        for fd in fds:
            if fd < 0:
                continue
            if _safe_to_close(fd):
                os.close(fd)
            else:
                await trio.to_thread.run_sync(os.close, fd)

    # -- one request ----------------------------------------------------------------------
    def _handle(self, conn: Connection, msg: bytes, fds: list[int]) -> Reply:
        """The answer to one message; the descriptors the model keeps are taken out of
        ``fds`` (set to -1), the rest the caller closes."""
        self._reap_hangups(conn)
        try:
            req = wire.decode_request(msg)
        except wire.WireError:
            return Reply(errno.EINVAL)
        try:
            if conn.target is None:
                if req.op != wire.OP_OPEN:
                    return Reply(errno.EINVAL)
                return self._open(conn)
            if req.op != wire.OP_IOCTL:
                return Reply(errno.EINVAL)
            return self._ioctl(conn, req, fds)
        except KernelError as exc:
            return Reply(exc.errno or errno.EIO)
        except Exception:
            log.exception("liveupdate request failed")
            return Reply(errno.EIO)

    def _open(self, conn: Connection) -> Reply:
        kernel = self.machine.kernel
        if kernel.panic is not None:
            return Reply(errno.EHOSTDOWN)
        luo = kernel.luo
        if luo is None:
            return Reply(errno.ENOENT)  # this kernel has no /dev/liveupdate
        dev = luo.open_device()
        self._track(conn, luo)
        conn.target = dev
        return Reply(0)

    def _ioctl(self, conn: Connection, req: wire.Request, fds: list[int]) -> Reply:
        luo, target = conn.luo, conn.target
        assert luo is not None and target is not None
        if luo.gone:
            return Reply(errno.ENODEV)
        cmd = req.cmd & 0xFFFFFFFF
        if cmd in VFS_DESCRIPTOR_IOCTLS:
            return Reply(0)  # FIOCLEX & co act on the client's descriptor, not here
        if cmd == FIOQSIZE:
            return Reply(errno.ENOTTY)
        source: FdSource | None = None
        if cmd == LIVEUPDATE_SESSION_PRESERVE_FD and fds:
            fast = _classify_sealable(fds[0])
            kind, st = fast if fast is not None else (_classify_slow(fds[0])[0], None)
            if kind is not None:
                source = FdSource(fds[0], kind, st)
                fds[0] = -1
        try:
            reply = luo.ioctl(target, cmd, UserArg(req.size, req.data, req.tail), source)
        except BaseException:
            if source is not None:
                source.release()
            raise
        finally:
            if source is not None:
                source.st = None  # from now on size() asks the file
        if isinstance(reply.obj, LuoSession):
            return self._new_session(luo, reply.obj, reply.data)
        if isinstance(reply.obj, RestoredFile):
            return Reply(0, reply.data, self._memfd_for(reply.obj))
        return Reply(0, reply.data)

    def _new_session(self, luo: Luo, session: LuoSession, data: bytes) -> Reply:
        ours, theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        conn = Connection(ours)
        conn.target = session
        self._track(conn, luo)
        fd = theirs.detach()
        reply = Reply(0, data, fd)
        reply.close_fd = True
        assert self._nursery is not None
        self._nursery.start_soon(self._serve, conn)
        return reply

    def _memfd_for(self, restored: RestoredFile) -> int:
        """The host memfd standing for a retrieved file, built once (the kernel hands
        out the same ``struct file`` for a second retrieve)."""
        if isinstance(restored.handle, int):
            return restored.handle
        # memfd_alloc_file("", 0) (memfd-v1: no sealing) or, for 7.2's memfd-v2,
        # MFD_ALLOW_SEALING and the preserved seals added once the bytes are in
        sealing = restored.seals is not None
        fd = os.memfd_create("", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0))
        try:
            os.ftruncate(fd, restored.size)
            mem = self.machine.mem
            for offset, phys, length in restored.extents:
                mem.export(phys, length, partial(_pwrite_all, fd, offset=offset))
            if 0 <= restored.pos < 1 << 63:
                os.lseek(fd, restored.pos, os.SEEK_SET)
            if restored.seals:
                fcntl.fcntl(fd, F_ADD_SEALS, restored.seals)
            st = os.fstat(fd)
            restored.file_id = ("inode", st.st_dev, st.st_ino)
        except OSError as exc:
            os.close(fd)
            raise KernelError(errno.ENOMEM, f"cannot build the memfd: {exc}") from exc
        restored.handle = fd
        restored.on_release = _close_handle
        return fd


def _close_handle(restored: RestoredFile) -> None:
    if isinstance(restored.handle, int):
        os.close(restored.handle)
    restored.handle = None


def _encode_reply(reply: Reply) -> tuple[bytes, list[tuple[int, int, array.array[int]]]]:
    """The answer message and its ancillary data (SCM_RIGHTS with the descriptor)."""
    if reply.fd is None:
        return wire.encode_answer(reply.error, reply.data), []
    data = wire.encode_answer(reply.error, reply.data, FD_FIELD_OFFSET)
    return data, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [reply.fd]))]


def _hung_up(sock: socket.socket) -> bool:
    """After a 0-byte read: the peer closed (rather than sending an empty message)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP) for _, ev in poller.poll(0))


def _safe_to_close(fd: int) -> bool:
    """A descriptor whose close() cannot send a FUSE request to this daemon."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True
    if not target.startswith("/") or target.startswith("/memfd:"):
        return True
    mnt_id = _fdinfo_mnt_id(fd)
    fstype = None if mnt_id is None else _mount_fstype(mnt_id)
    return fstype is not None and not fstype.startswith("fuse")
