"""Bad input on the ``/dev/liveupdate`` socket (docs/luo.md): random and mutated messages.

Clients speak the wire format of :mod:`kho_fs.luo_wire` directly: random bytes, valid
requests with mutated fields (short and oversized structures, non-zero tails, faulting
sizes, every command number of the LUO range and others), descriptors of every kind
(memfds, /dev/null, a directory, O_PATH, pipes, sockets, a file on the mount itself,
several at once, the session sockets themselves), messages on session sockets, clients
that close or die in the middle of a call. Every answer must be a well-formed message
with an errno the uAPI allows (or the daemon hanging up a connection that never became
a device), and afterwards the daemon must be alive, answering, and hold exactly the
descriptors it held before.
"""

from __future__ import annotations

import array
import errno
import os
import random
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kho_fs import luo_wire as wire
from kho_fs.model.luo import FD_ARG, FINISH_ARG, SESSION_ARG

#: errnos an answer may carry: the uAPI's and the kernel's for these calls
ALLOWED = frozenset(
    {0, errno.EINVAL, errno.ENOTTY, errno.E2BIG, errno.EFAULT, errno.EBADF, errno.EEXIST,
     errno.ENOENT, errno.ENOSPC, errno.ENOMEM, errno.EBUSY}
)  # fmt: skip
COMMANDS = [0xBA00, 0xBA01, 0xBA02, 0xBA40, 0xBA41, 0xBA42, 0xBA43, 0xBAFF, 0xC048BA00,
            0x5401, 0x5421, 0x5451, 0x5460, 0, 0xFFFFFFFF]  # fmt: skip
CMDLINE = "console=ttyS0 kho=on liveupdate=on"
MEMORY = "1G"


@dataclass
class FuzzReport:
    messages: int = 0
    answers: dict[int, int] = field(default_factory=dict)
    killed_clients: int = 0
    fds_before: int = 0
    fds_after: int = 0
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unexpected and self.fds_before == self.fds_after

    def summary(self) -> str:
        names = ", ".join(
            f"{errno.errorcode.get(e, e) if e else 'ok'}: {n}"
            for e, n in sorted(self.answers.items())
        )
        lines = [
            f"luo fuzz: {self.messages} messages, {self.killed_clients} clients killed mid-call",
            f"  answers: {names}",
            f"  daemon descriptors: {self.fds_before} before, {self.fds_after} after",
        ]
        lines += [f"  UNEXPECTED: {u}" for u in self.unexpected[:10]]
        return "\n".join(lines)


class _Fuzzer:
    def __init__(self, path: str, mountpoint: Path, rng: random.Random, report: FuzzReport) -> None:
        self.path = path
        self.mountpoint = mountpoint
        self.rng = rng
        self.report = report
        self.device: socket.socket | None = None
        self.sessions: list[socket.socket] = []
        self.spare: list[int] = []  # descriptors to pass: memfd, /dev/null, a directory…

    # -- descriptors to hand over -------------------------------------------------------------
    def make_spares(self) -> None:
        r, w = os.pipe()
        a, b = socket.socketpair()
        self.spare = [
            os.memfd_create("fuzz"),
            os.open("/dev/null", os.O_RDWR),
            os.open("/", os.O_RDONLY | os.O_DIRECTORY),
            os.open("/", os.O_PATH),
            r,
            w,
            a.detach(),
            b.detach(),
            os.open(self.mountpoint / "machine" / "status", os.O_RDONLY),  # on this very mount
            os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY),
        ]
        os.write(self.spare[0], os.urandom(10000))

    def close_all(self) -> None:
        for fd in self.spare:
            os.close(fd)
        self.spare = []
        for s in self.sessions:
            s.close()
        self.sessions = []
        if self.device is not None:
            self.device.close()
            self.device = None

    # -- messages -------------------------------------------------------------------------------
    def request(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.08:
            return os.urandom(rng.choice([0, 1, 5, 23, 24, 25, 100, 4120, 4121, 5000]))
        cmd = rng.choice(COMMANDS)
        template = {
            0xBA00: SESSION_ARG.pack(72, -1, b"f%d" % rng.randrange(50)),
            0xBA01: SESSION_ARG.pack(72, -1, b"f%d" % rng.randrange(50)),
            0xBA40: FD_ARG.pack(16, rng.randrange(-2, 300), rng.randrange(200)),
            0xBA41: FD_ARG.pack(16, -1, rng.randrange(200)),
            0xBA42: FINISH_ARG.pack(8, 0),
        }.get(cmd, os.urandom(rng.randrange(0, 100)))
        data = bytearray(template)
        size: int | None = len(data)
        if rng.random() < 0.5:  # oversized, maybe with a non-zero tail
            data += bytes(rng.randrange(1, 200))
            if rng.random() < 0.5:
                data[rng.randrange(len(template), len(data))] = rng.randrange(1, 256)
            size = len(data)
        if rng.random() < 0.3:  # a size that lies
            size = rng.choice([0, 1, 4, 7, 8, 15, 16, 71, 72, 73, 4096, 4097, 1 << 20, 0xFFFFFFFF])
        if rng.random() < 0.05:
            size = None
        if rng.random() < 0.3 and data:  # bit flips
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        if size is not None and len(data) >= 4:
            struct.pack_into("<I", data, 0, size & 0xFFFFFFFF)
        data = data[: wire.MAX_DATA]
        tail = rng.choice([0, 0, 0, 1, 2])
        op = wire.OP_IOCTL if rng.random() < 0.95 else rng.choice([wire.OP_OPEN, 0, 3, 99])
        msg = bytearray(wire.encode_request(wire.OP_IOCTL, cmd, size, tail, bytes(data)))
        struct.pack_into("<I", msg, 4, op)
        if rng.random() < 0.05:  # a lying length, a bad magic, garbage flags
            field_at = rng.choice([0, 16, 20])
            struct.pack_into("<I", msg, field_at, rng.getrandbits(32))
        if rng.random() < 0.05:
            msg = msg[: rng.randrange(len(msg) + 1)]
        return bytes(msg)

    def descriptors(self) -> list[int]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6 or not self.spare:
            return []
        pool = self.spare + [s.fileno() for s in self.sessions[-3:]]
        if self.device is not None:
            pool.append(self.device.fileno())
        return rng.sample(pool, k=min(len(pool), rng.choice([1, 1, 1, 2, 5, 12])))

    def exchange(
        self, sock: socket.socket, msg: bytes, fds: list[int]
    ) -> tuple[int, int | None] | None:
        """Send, read the answer: ``(errno, descriptor)``; None when the daemon hung up."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            sock.sendmsg([msg], anc, socket.MSG_NOSIGNAL)
            answer, ancdata, _flags, _ = sock.recvmsg(
                wire.MAX_ANSWER + 16, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC
            )
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                return None
            raise
        got: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(data[: len(data) - len(data) % 4])
                got.extend(arr)
        if not answer and not got:
            return None
        try:
            error, fd_at, _data = wire.decode_answer(answer)
        except wire.WireError:
            self.report.unexpected.append(f"malformed answer {answer[:32]!r}")
            error, fd_at = -1, wire.NO_FD
        if len(got) > 1 or (got and fd_at == wire.NO_FD) or (got and error):
            self.report.unexpected.append(f"descriptors {got} with errno {error}")
        return error, (got[0] if got else None)

    def note(self, error: int, what: str) -> None:
        self.report.answers[error] = self.report.answers.get(error, 0) + 1
        if error not in ALLOWED:
            self.report.unexpected.append(
                f"{what}: errno {error} ({os.strerror(error) if error > 0 else '?'})"
            )

    # -- one step ---------------------------------------------------------------------------------
    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.connect(self.path)
        return sock

    def step(self) -> None:
        rng = self.rng
        if self.device is None or rng.random() < 0.02:
            if self.device is not None:
                self.device.close()
            self.device = self.connect()
            first = (
                wire.encode_request(wire.OP_OPEN, 2, 0, 0, b"")
                if rng.random() < 0.9
                else self.request()
            )
            res = self.exchange(self.device, first, self.descriptors())
            self.report.messages += 1
            if res is None:  # a refused open (EBUSY...): the daemon hangs up after answering
                self.device.close()
                self.device = None
                return
            self.note(res[0], "open")
            if res[0]:
                self.device.close()
                self.device = None
            return
        target = self.device
        if self.sessions and rng.random() < 0.5:
            target = rng.choice(self.sessions)
        res = self.exchange(target, self.request(), self.descriptors())
        self.report.messages += 1
        if res is None:
            if target is self.device:
                self.device.close()
                self.device = None
            else:
                self.sessions.remove(target)
                target.close()
            return
        error, fd = res
        self.note(error, "ioctl")
        if fd is not None:
            if len(self.sessions) < 40 and target is self.device:
                self.sessions.append(socket.socket(fileno=fd))
            else:
                os.close(fd)
        if self.sessions and rng.random() < 0.03:
            self.sessions.pop(rng.randrange(len(self.sessions))).close()

    def killed_mid_call(self) -> None:
        """A child connects, sends one request (maybe with descriptors) and dies."""
        pid = os.fork()
        if pid == 0:
            try:
                sock = self.connect()
                sock.sendmsg([wire.encode_request(wire.OP_OPEN, 2, 0, 0, b"")])
                if self.rng.random() < 0.5:
                    sock.recv(100)
                    msg = self.request()
                    fds = self.descriptors()
                    anc = (
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                        if fds
                        else []
                    )
                    sock.sendmsg([msg], anc, socket.MSG_NOSIGNAL)
                if self.rng.random() < 0.5:
                    os.kill(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        self.report.killed_clients += 1


def daemon_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_luo_fuzz(
    mountpoint: Path,
    daemon_pid: int,
    messages: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    kill_every: int = 200,
) -> FuzzReport:
    """Fuzz the socket of the machine mounted at ``mountpoint`` (its device must be free)."""
    from kho_fs.liveupdate import open_device, socket_path

    report = FuzzReport()
    path = socket_path(mountpoint)
    rng = random.Random(seed)
    report.fds_before = daemon_fd_count(daemon_pid)
    fuzzer = _Fuzzer(path, mountpoint, rng, report)
    fuzzer.make_spares()
    try:
        while report.messages < messages:
            fuzzer.step()
            if kill_every and report.messages % kill_every == 0:
                fuzzer.killed_mid_call()
            if progress is not None and report.messages % 1000 == 0:
                progress(report.messages)
    finally:
        fuzzer.close_all()
    # the daemon is alive and answers: the device opens, a session works
    deadline = time.monotonic() + 10
    while True:
        try:
            with open_device(mountpoint) as dev, dev.create_session("after-fuzz") as s:
                fd = os.memfd_create("after")
                s.preserve_fd(fd, 1)
                os.close(fd)
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                report.unexpected.append(f"the daemon does not serve after the fuzz: {exc}")
                break
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while daemon_fd_count(daemon_pid) != report.fds_before and time.monotonic() < deadline:
        time.sleep(0.05)
    report.fds_after = daemon_fd_count(daemon_pid)
    return report
