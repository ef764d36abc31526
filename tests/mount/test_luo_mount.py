"""LUO through a real mount (docs/luo.md): the two-stage flow the kernel's own LUO tests
use, with C programs compiled here and run through ``kho-fs run`` (the preload library),
and with the Python API; every errno of spec kho-mainline.md §12 through both; sessions
across kexecs between releases; no descriptor leaks in the daemon.

gcc is required: without it these tests fail (they are never skipped).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mount_helpers import ENV

from kho_fs import liveupdate
from kho_fs.model.luo import (
    FINISH_ARG,
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
    SESSION_ARG,
)
from kho_fs.preload import build
from kho_fs.testing import MountedMachine, mounted

C_DIR = Path(__file__).parent / "luo_c"
CMDLINE = "console=ttyS0 kho=on liveupdate=on"
MiB = 1 << 20
#: sessions of the two-stage flow: several sessions and files, 64 MiB, empty, a hole
SPECS = ["vm:1=0,2=67108864,3=3145733h,4=5", "db:7=12345,8=4096", "empty:"]


def kho_fs(m: MountedMachine, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(ENV, KHO_FS_ROOT=str(m.mountpoint))
    return subprocess.run(
        [sys.executable, "-m", "kho_fs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[arg-type]
    )


def run_bg(m: MountedMachine, *command: str) -> subprocess.Popen[str]:
    """A background process (under ``kho-fs run`` for a C program) that prints ``ready``
    when its sessions are set up."""
    env = dict(ENV, KHO_FS_ROOT=str(m.mountpoint))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            return proc
    proc.wait()
    raise AssertionError("background stage failed:\n" + "".join(lines))


def kexec_to(m: MountedMachine, release: str, tmp_path: Path) -> None:
    image = tmp_path / f"vmlinuz-{release}"
    if not image.exists():
        assert kho_fs(m, "mkimage", "--release", release, "-o", str(image)).returncode == 0
    r = kho_fs(m, "kexec", "-l", str(image), "-s", "--reuse-cmdline")
    assert r.returncode == 0, r.stderr
    r = kho_fs(m, "kexec", "-e")
    assert r.returncode == 0, r.stderr


def daemon_fds(m: MountedMachine, expect: int | None = None) -> int:
    """The daemon's open descriptors; with ``expect``, wait (up to 5 s) for the daemon to
    handle the hang-ups of clients that just exited before counting."""
    assert m.pid is not None
    deadline = time.monotonic() + 5
    while True:
        count = len(os.listdir(f"/proc/{m.pid}/fd"))
        if expect is None or count == expect or time.monotonic() > deadline:
            if expect is not None and count != expect:
                print(
                    sorted(
                        os.readlink(f"/proc/{m.pid}/fd/{fd}")
                        for fd in os.listdir(f"/proc/{m.pid}/fd")
                    )
                )
            return count
        time.sleep(0.05)


@pytest.fixture(scope="module")
def c_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test programs, compiled warning-free (no gcc: the test fails)."""
    out = tmp_path_factory.mktemp("luo-c")
    built = {}
    for name in ("luo_stage1", "luo_stage2", "luo_errnos"):
        exe = out / name
        subprocess.run(
            ["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe), str(C_DIR / f"{name}.c")],
            check=True,
        )
        built[name] = str(exe)
    build()  # the preload library (kho-fs run would build it too)
    return built


# -- the C programs through the preload library ------------------------------------------------
@pytest.mark.parametrize("release", ["6.19", "7.0", "7.2"])
def test_c_two_stage_flow(tmp_path: Path, c_programs: dict[str, str], release: str) -> None:
    with mounted(tmp_path, memory="2G", cmdline=CMDLINE, extra_args=["--release", release]) as m:
        before = daemon_fds(m)
        stage1 = run_bg(
            m, sys.executable, "-m", "kho_fs", "run", "--", c_programs["luo_stage1"], *SPECS
        )
        kexec_to(m, release, tmp_path)
        assert "luo: Retrieved live update data, liveupdate number: 1" in m.read_text(
            "machine/dmesg"
        )
        # the process that held the sessions across the kexec finds its descriptors dead
        stage1.send_signal(signal.SIGUSR1)
        out, _ = stage1.communicate(timeout=30)
        assert "after kexec: No such device" in out
        r = kho_fs(m, "run", "--", c_programs["luo_stage2"], *SPECS)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
        assert daemon_fds(m, before) == before


C_ERRNOS_BEFORE = {
    "open": "0", "open-again": "EBUSY", "create": "0", "create-duplicate": "EEXIST",
    "retrieve-unknown": "ENOENT", "nr-outside-table": "EINVAL",
    "session-nr-on-device": "EINVAL", "unknown-command": "ENOTTY",
    "size-too-small": "EINVAL", "nonzero-tail": "E2BIG", "bad-pointer": "EFAULT",
    "null-pointer": "EFAULT", "preserve": "0", "preserve-token-again": "EEXIST",
    "preserve-bad-fd": "EBADF", "preserve-dev-null": "ENOENT",
    "preserve-directory": "ENOENT", "preserve-o-path": "EBADF",
    "retrieve-fd-outgoing": "EINVAL", "finish-outgoing": "EINVAL", "get-name": "EINVAL",
    "tcgets-on-session": "EINVAL", "preserve-129th": "ENOSPC", "session-820": "ENOMEM",
    "session-after-close": "0", "reopen": "0",
}  # fmt: skip
#: 7.2 (docs/luo.md): no fixed limits (record chains), GET_NAME in the session table (this
#: program's 96-byte buffer has a non-zero byte past the 72 the kernel knows: E2BIG), and
#: the 820th session exists, so creating it again is EEXIST
C_ERRNOS_BEFORE_7_2 = {
    **C_ERRNOS_BEFORE, "get-name": "E2BIG", "preserve-129th": "0", "session-820": "0",
    "session-after-close": "EEXIST",
}  # fmt: skip
C_ERRNOS_AFTER = {
    "open": "0", "retrieve": "0", "retrieve-again": "EINVAL", "retrieve-fd-unknown": "ENOENT",
    "preserve-incoming": "EINVAL", "retrieve-fd": "0", "read-back": "0", "finish": "0",
    "retrieve-fd-after-finish": "ENOENT", "retrieve-after-close": "ENOENT",
}  # fmt: skip


def results(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if line and line != "ready")


@pytest.mark.parametrize("release", ["6.19", "7.2"])
def test_c_errnos(tmp_path: Path, c_programs: dict[str, str], release: str) -> None:
    want_before = C_ERRNOS_BEFORE_7_2 if release == "7.2" else C_ERRNOS_BEFORE
    with mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=["--release", release]) as m:
        before = daemon_fds(m)
        exe = c_programs["luo_errnos"]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kho_fs",
                "run",
                "--root",
                str(m.mountpoint),
                "--",
                exe,
                "before",
                "keep",
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        text = ""
        for line in proc.stdout:
            text += line
            if line.strip() == "ready":
                break
        assert results(text) == want_before
        kexec_to(m, release, tmp_path)
        proc.kill()
        proc.wait()
        r = kho_fs(m, "run", "--", exe, "after")
        assert results(r.stdout) == C_ERRNOS_AFTER, r.stdout + r.stderr
        assert daemon_fds(m, before) == before


def test_kho_fs_run_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "KHO_FS_ROOT"}
    r = subprocess.run(
        [sys.executable, "-m", "kho_fs", "run", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no machine" in r.stderr
    with mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=["--release", "6.19"]) as m:
        assert kho_fs(m, "run", "--", "/nonexistent/program").returncode == 127
        r = kho_fs(m, "run", "--", "sh", "-c", 'echo "$KHO_FS_LIVEUPDATE $LD_PRELOAD"')
        assert r.stdout.split()[0] == m.read_text("machine/liveupdate").strip()
        assert r.stdout.split()[1].endswith("liveupdate_preload.so")
        status = kho_fs(m, "status", str(m.mountpoint)).stdout
        assert "liveupdate:  enabled" in status and "liveupdate socket: " in status
        # a program that never opens /dev/liveupdate runs as usual with the library in
        assert kho_fs(
            m, "run", "--", "sh", "-c", "stty -a </dev/null; ls / >/dev/null"
        ).returncode in (0, 1)


# -- the Python API ----------------------------------------------------------------------------
STAGE1_PY = textwrap.dedent(
    """
    import os, sys, signal
    from kho_fs import liveupdate

    def data(token, size, hole):
        out = bytearray(size)
        for at in range(0, size, 1 << 20):
            n = min(1 << 20, size - at)
            first = range(at, at + min(n, 4096))
            chunk = bytes((token * 131 + o * 7 + (o >> 12) + 1) & 0xFF for o in first)
            out[at:at + n] = (chunk * (n // len(chunk) + 1))[:n] if n else b""
        if hole:
            out[4096:size - 4096] = bytes(size - 8192)
        return out

    dev = liveupdate.open_device()
    sessions = []
    for spec in sys.argv[1:]:
        name, _, files = spec.partition(":")
        s = dev.create_session(name)
        sessions.append(s)
        for item in filter(None, files.split(",")):
            token, _, size = item.partition("=")
            hole = size.endswith("h")
            fd = os.memfd_create("py")
            payload = data(int(token), int(size.rstrip("h")), hole)
            os.ftruncate(fd, len(payload))
            os.pwrite(fd, payload, 0)
            os.lseek(fd, int(token) * 3, 0)
            s.preserve_fd(fd, int(token))
            os.close(fd)
    dev.close()
    print("ready", flush=True)
    signal.pause()
    """
)


def expected_data(token: int, size: int, hole: bool) -> bytes:
    ns: dict[str, object] = {}
    exec(STAGE1_PY.split("dev = liveupdate")[0].split("from kho_fs import liveupdate")[1], ns)
    return bytes(ns["data"](token, size, hole))  # type: ignore[operator]


PY_SPECS = ["vm:1=0,2=67108864,3=3145733h,4=5", "db:7=12345,8=4096", "empty:"]


@pytest.mark.parametrize("release", ["7.0", "7.2"])
def test_python_two_stage_flow(tmp_path: Path, release: str) -> None:
    with mounted(tmp_path, memory="2G", cmdline=CMDLINE, extra_args=["--release", release]) as m:
        before = daemon_fds(m)
        script = tmp_path / "stage1.py"
        script.write_text(STAGE1_PY)
        env_cmd = ["env", f"KHO_FS_ROOT={m.mountpoint}", sys.executable, str(script), *PY_SPECS]
        stage1 = run_bg(m, *env_cmd)
        kexec_to(m, release, tmp_path)
        stage1.kill()
        stage1.wait()
        with liveupdate.open_device(m.mountpoint) as dev:
            for spec in PY_SPECS:
                name, _, files = spec.partition(":")
                with dev.retrieve_session(name) as s:
                    for item in filter(None, files.split(",")):
                        token, _, size = item.partition("=")
                        fd = s.retrieve_fd(int(token))
                        try:
                            size_n = int(size.rstrip("h"))
                            assert os.fstat(fd).st_size == size_n
                            assert os.lseek(fd, 0, os.SEEK_CUR) == int(token) * 3
                            assert os.get_inheritable(fd) is False
                            got = os.pread(fd, size_n, 0) if size_n else b""
                            assert got == expected_data(int(token), size_n, size.endswith("h"))
                            assert os.readlink(f"/proc/self/fd/{fd}") == "/memfd: (deleted)"
                        finally:
                            os.close(fd)
                    s.finish()
        assert daemon_fds(m, before) == before


def err(call: object, *args: object) -> int:
    """The errno of the OSError ``call(*args)`` raises (it must raise)."""
    with pytest.raises(OSError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.errno or 0


def test_python_errnos(tmp_path: Path) -> None:
    with mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=["--release", "6.19"]) as m:
        before = daemon_fds(m)
        dev = liveupdate.open_device(m.mountpoint)
        assert err(liveupdate.open_device, m.mountpoint) == errno.EBUSY
        s = dev.create_session("e")
        assert err(dev.create_session, "e") == errno.EEXIST
        assert err(dev.retrieve_session, "nope") == errno.ENOENT
        buf = bytearray(SESSION_ARG.pack(72, 0, b"x"))
        assert err(dev.ioctl, 0xBA02, buf) == errno.EINVAL
        assert err(dev.ioctl, 0xC048BA00, buf) == errno.ENOTTY
        assert (
            err(
                dev.ioctl, LIVEUPDATE_IOCTL_CREATE_SESSION, bytearray(SESSION_ARG.pack(71, 0, b"x"))
            )
            == errno.EINVAL
        )
        tail = bytearray(SESSION_ARG.pack(80, 0, b"x") + bytes(7) + b"\1")
        assert err(dev.ioctl, LIVEUPDATE_IOCTL_CREATE_SESSION, tail) == errno.E2BIG
        assert err(dev.ioctl, LIVEUPDATE_IOCTL_CREATE_SESSION, bytearray(b"\x48\0")) == errno.EFAULT
        fd = os.memfd_create("e")
        os.write(fd, b"kept")
        s.preserve_fd(fd, 1)
        assert err(s.preserve_fd, fd, 1) == errno.EEXIST
        closed = os.memfd_create("closed")
        os.close(closed)
        assert err(s.preserve_fd, closed, 2) == errno.EBADF
        null = os.open("/dev/null", os.O_RDONLY)
        assert err(s.preserve_fd, null, 2) == errno.ENOENT
        os.close(null)
        unlinked = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR)  # an unlinked tmpfs file
        s.preserve_fd(unlinked, 3)  # memfd's handler takes any link-less shmem file
        os.close(unlinked)
        assert err(s.retrieve_fd, 1) == errno.EINVAL
        assert err(s.finish) == errno.EINVAL
        assert err(s.get_name) == errno.EINVAL  # no GET_NAME before 7.1
        files = [os.memfd_create("f") for _ in range(126)]  # with tokens 1 and 3: 128
        for token, f in enumerate(files, start=4):
            s.preserve_fd(f, token)
        assert err(s.preserve_fd, files[0], 999) == errno.ENOSPC
        for f in files:
            os.close(f)
        sessions = [dev.create_session(f"cap{i}") for i in range(818)]
        assert err(dev.create_session, "one-too-many") == errno.ENOMEM
        for extra in sessions:
            extra.close()
        dev.create_session("one-too-many").close()
        dev.close()
        # "e" is open at the kexec: preserved; this process's descriptors die with the kernel
        kexec_to(m, "6.19", tmp_path)
        assert err(s.preserve_fd, fd, 5) == errno.ENODEV
        s.close()
        os.close(fd)
        dev = liveupdate.open_device(m.mountpoint)
        assert err(dev.retrieve_session, "one-too-many") == errno.ENOENT  # closed before
        s = dev.retrieve_session("e")
        assert err(dev.retrieve_session, "e") == errno.EINVAL
        assert err(s.retrieve_fd, 2) == errno.ENOENT
        assert err(s.preserve_fd, 0, 2) == errno.EINVAL
        kept = s.retrieve_fd(1)
        assert os.pread(kept, 4, 0) == b"kept"
        os.close(kept)
        s.finish()
        s.close()
        dev.close()
        assert daemon_fds(m, before) == before


def test_python_uapi_of_7_2(tmp_path: Path) -> None:
    """7.2 through the daemon (docs/luo.md): GET_NAME, names of 1 to 63 bytes, a memfd
    preserved once (its inode), seals kept across the kexec, FINISH's ``reserved``, and a
    retrieved memfd that cannot be preserved again before its session finishes."""
    with mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=["--release", "7.2"]) as m:
        before = daemon_fds(m)
        dev = liveupdate.open_device(m.mountpoint)
        assert err(dev.create_session, "") == errno.EINVAL
        assert err(dev.create_session, "n" * 64) == errno.EINVAL
        a = dev.create_session("n" * 63)
        assert a.get_name() == "n" * 63
        b = dev.create_session("b")
        sealed = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
        os.write(sealed, b"sealed!")
        fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        a.preserve_fd(sealed, 1)
        assert err(b.preserve_fd, sealed, 1) == errno.EBUSY  # the same inode
        again = os.open(f"/proc/self/fd/{sealed}", os.O_RDWR)  # another open file, same inode
        assert err(a.preserve_fd, again, 2) == errno.EBUSY
        os.close(again)
        plain = os.memfd_create("plain")
        os.write(plain, b"plain")
        b.preserve_fd(plain, 2)
        for fd in (sealed, plain):
            os.close(fd)
        dev.close()
        kexec_to(m, "7.2", tmp_path)
        a.close()
        b.close()
        dev = liveupdate.open_device(m.mountpoint)
        a = dev.retrieve_session("n" * 63)
        assert a.get_name() == "n" * 63
        got = a.retrieve_fd(1)
        assert os.pread(got, 16, 0) == b"sealed!"
        assert fcntl.fcntl(got, fcntl.F_GET_SEALS) == fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        assert err(os.ftruncate, got, 1) == errno.EPERM
        b = dev.retrieve_session("b")
        kept = b.retrieve_fd(2)
        assert fcntl.fcntl(kept, fcntl.F_GET_SEALS) == fcntl.F_SEAL_SEAL
        out = dev.create_session("next")
        assert err(out.preserve_fd, kept, 1) == errno.EBUSY  # "b" is not finished yet
        assert err(b.ioctl, LIVEUPDATE_SESSION_FINISH, bytearray(FINISH_ARG.pack(8, 1))) == (
            errno.EINVAL
        )
        b.finish()
        out.preserve_fd(kept, 1)
        for fd in (got, kept):
            os.close(fd)
        for s in (a, b, out):
            s.close()
        dev.close()
        assert daemon_fds(m, before) == before


# -- across kexecs, through the mount ------------------------------------------------------------
@pytest.mark.parametrize(
    ("sender", "receiver"), [("6.19", "6.18"), ("7.0", "6.19"), ("7.2", "7.0"), ("7.0", "7.2")]
)
def test_sessions_across_releases(tmp_path: Path, sender: str, receiver: str) -> None:
    with mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=["--release", sender]) as m:
        dev = liveupdate.open_device(m.mountpoint)
        s = dev.create_session("x")
        fd = os.memfd_create("x")
        os.write(fd, b"across")
        s.preserve_fd(fd, 1)
        dev.close()
        kexec_to(m, receiver, tmp_path)
        s.close()
        os.close(fd)
        if receiver == "6.18":  # no LUO: no /dev/liveupdate, the subtree is ignored
            with pytest.raises(OSError) as info:
                liveupdate.open_device(m.mountpoint)
            assert info.value.errno == errno.ENOENT
            return
        if "7.2" in (sender, receiver):  # kho-v4 vs kho-v1 roots: the handover is refused
            with liveupdate.open_device(m.mountpoint) as dev2, pytest.raises(OSError) as info:
                dev2.retrieve_session("x")
            assert info.value.errno == errno.ENOENT
            return
        with liveupdate.open_device(m.mountpoint) as dev2, dev2.retrieve_session("x") as s2:
            got = s2.retrieve_fd(1)
            assert os.pread(got, 10, 0) == b"across"
            os.close(got)


def test_raw_ioctls_of_the_python_api(tmp_path: Path) -> None:
    """The raw form writes the returned descriptor into the caller's structure."""
    with (
        mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=["--release", "6.19"]) as m,
        liveupdate.open_device(m.mountpoint) as dev,
    ):
        buf = bytearray(SESSION_ARG.pack(72, -1, b"raw"))
        fd = dev.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, buf)
        assert fd is not None and SESSION_ARG.unpack(buf)[1] == fd
        s = liveupdate.Session.from_fd(fd)
        memfd = os.memfd_create("raw")
        pbuf = bytearray(struct.pack("<IiQ", 24, memfd, 9) + bytes(8))
        s.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, pbuf)  # 24 bytes, zero tail: accepted
        pbuf[20] = 1
        with pytest.raises(OSError) as info:
            s.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, pbuf)
        assert info.value.errno == errno.E2BIG
        assert (LIVEUPDATE_IOCTL_RETRIEVE_SESSION, LIVEUPDATE_SESSION_RETRIEVE_FD) == (
            0xBA01,
            0xBA41,
        )
        assert LIVEUPDATE_SESSION_FINISH == 0xBA42
        s.close()
        os.close(memfd)
