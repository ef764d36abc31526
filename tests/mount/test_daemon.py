"""Real mounts of a toy profile, driven by real processes (sh, cat, dd, stat).

The daemon loads ``toy_profile`` from this very file (hidden ``--profile`` option), so the
module must stay cheap to import: no pytest import here, fixtures come by name.  When
mounting is impossible these tests fail (``MountFailed``); they never skip.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from kho_fs.daemon import state_paths
from kho_fs.model.errors import KernelError
from kho_fs.testing import MountedMachine, mounted
from kho_fs.tree.nodes import (
    BinaryAttribute,
    DebugfsSeqFile,
    Directory,
    RegionFile,
    StagingFile,
    TextAttribute,
)
from kho_fs.tree.tree import Entry

FDT = b"\xd0\x0d\xfe\xed" + bytes(107)
REGION_SIZE = 8192


class ToyProfile:
    """KHO-shaped files without a machine: ``active`` makes ``dt`` appear."""

    def __init__(self) -> None:
        self.active = False
        self.activations = 0
        self._version = 0
        self.region = bytearray(REGION_SIZE)

    def version(self) -> int:
        return self._version

    def _store_active(self, data: bytes) -> None:
        if data[:1] not in (b"0", b"1"):
            raise KernelError(errno.EINVAL)
        value = data[:1] == b"1"
        if value != self.active:
            self.active = value
            self.activations += value
            self._version += 1

    def _region_write(self, offset: int, data: bytes) -> int:
        self.region[offset : offset + len(data)] = data
        return len(data)

    @staticmethod
    def _explode() -> str:
        raise RuntimeError("toy callback bug")

    def entries(self):
        yield Entry(
            "sys/kernel/kho/active",
            lambda: TextAttribute(0o600, lambda: f"{int(self.active)}\n", self._store_active),
        )
        yield Entry("sys/kernel/kho/scratch_phys", lambda: TextAttribute(0o400, lambda: "0x1000\n"))
        if self.active:
            yield Entry(
                "sys/kernel/kho/dt", lambda: BinaryAttribute(0o400, lambda: FDT), self.activations
            )
        yield Entry("sys/kernel/kexec_loaded", lambda: TextAttribute(0o444, lambda: "0\n"))
        yield Entry("sys/kernel/debug", lambda: Directory(0o700))
        yield Entry(
            "sys/kernel/debug/memblock/memory",
            lambda: DebugfsSeqFile(0o444, lambda: "   0: 0x0..0xfff    0 NONE\n"),
        )
        yield Entry(
            "machine/region",
            lambda: RegionFile(
                0o600,
                lambda: REGION_SIZE,
                lambda off, n: bytes(self.region[off : off + n]),
                self._region_write,
            ),
        )
        yield Entry("machine/boom", lambda: TextAttribute(0o444, self._explode))
        yield Entry("machine/kexec/kernel", lambda: StagingFile(0o600))


class EioProfile(ToyProfile):
    """A profile whose every request fails: the mount comes up but answers EIO."""

    def version(self) -> int:
        raise RuntimeError("toy: every request fails")


def toy_profile(memory: int, nodes: int, cmdline: str | None) -> ToyProfile:
    """The factory the daemon calls; some command lines simulate failures."""
    if cmdline == "invalid":
        raise ValueError("toy: this command line is invalid")
    if cmdline == "answers-eio":
        return EioProfile()
    if cmdline == "never-ready":
        import pyfuse3

        mount = pyfuse3.init

        def init_and_hang(*args: object) -> None:
            mount(*args)  # mounted, but the daemon never gets to say "ok"
            print(f"kho-fs serving (never ready, pid {os.getpid()})", file=sys.stderr, flush=True)
            time.sleep(3600)

        pyfuse3.init = init_and_hang
    if cmdline in ("fail-mount", "crash"):
        import pyfuse3

        def init(*args: object) -> None:
            if cmdline == "crash":
                os._exit(7)
            raise RuntimeError("fuse_session_mount failed")

        pyfuse3.init = init  # the daemon is forked from this process
    return ToyProfile()


TOY = f"{Path(__file__).resolve()}:toy_profile"
KHO = "sys/kernel/kho"


def toy(tmp_path: Path, **kwargs):
    return mounted(tmp_path, profile=TOY, **kwargs)


def sh(script: str, m: MountedMachine, *, user: int | None = None) -> subprocess.CompletedProcess:
    command = ["sh", "-c", script]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, cwd=m.mountpoint, capture_output=True, text=True, timeout=30)


def kho_fs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kho_fs", *args], capture_output=True, text=True, timeout=60
    )


def running(pid: int) -> bool:
    """False once the process has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_exit(pid: int, timeout: float = 10.0) -> None:
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], timeout)[0], f"pid {pid} still running"
    finally:
        os.close(fd)


def mount_entry(mountpoint: Path) -> list[str] | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mountpoint):
                return fields
    return None


# -- mount and umount ------------------------------------------------------------------------


def test_mount_umount_round_trip(tmp_path):
    result = kho_fs("mount", str(tmp_path / "missing"))  # warm the interpreter's caches
    assert result.returncode == 3
    with toy(tmp_path) as m:
        fields = mount_entry(m.mountpoint)
        assert fields is not None
        sep = fields.index("-")
        assert fields[sep + 1 : sep + 3] == ["fuse.kho-fs", "kho-fs"]
        assert "default_permissions" in fields[sep + 3]
        assert "allow_other" not in fields[sep + 3]
        assert m.pid is not None and running(m.pid)
        assert sorted(os.listdir(m.mountpoint)) == ["machine", "sys"]
        pid = m.pid
        mountpoint = m.mountpoint
        result = kho_fs("umount", str(mountpoint))
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert not running(pid), "umount returned before the daemon exited"
        assert not os.path.ismount(mountpoint)
        # The next mount can start at once, on the same directory.
        started = time.monotonic()
        result = kho_fs("mount", str(mountpoint), "--profile", TOY, "--log", str(m.log_path))
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert time.monotonic() - started < 5
        assert os.path.ismount(mountpoint)
    assert not os.path.ismount(mountpoint)
    assert "serving" in m.log() and "unmounted" in m.log()


def test_mount_errors(tmp_path):
    missing = kho_fs("mount", str(tmp_path / "nowhere"), "--profile", TOY)
    assert missing.returncode == 3
    assert missing.stderr == f"kho-fs: mountpoint {tmp_path / 'nowhere'} does not exist\n"

    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_text("x")
    result = kho_fs("mount", str(full), "--profile", TOY)
    assert result.returncode == 3 and result.stderr.endswith("is not empty\n")

    file = tmp_path / "plain"
    file.write_text("")
    result = kho_fs("mount", str(file), "--profile", TOY)
    assert result.returncode == 3 and "not a directory" in result.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, code, words in [
        (["--memory", "16Q"], 2, "bad size '16Q'"),
        (["--memory", ""], 2, "bad size"),
        (["--nodes", "0"], 2, "bad count"),
        (["--bogus"], 2, "unrecognized arguments: --bogus"),
        (["--cmdline", "invalid"], 2, "bad machine configuration: toy: this command line"),
        (["--profile", "no_such_module:factory"], 2, "cannot load profile"),
        (["--log", str(tmp_path / "no/such/dir.log")], 2, "cannot open log file"),
    ]:
        profile = [] if "--profile" in args else ["--profile", TOY]
        result = kho_fs("mount", str(empty), *profile, *args)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not os.path.ismount(empty)

    for cmdline, words in [("fail-mount", "fuse_session_mount failed"), ("crash", "status 7")]:
        log = tmp_path / f"{cmdline}.log"
        result = kho_fs(
            "mount", str(empty), "--profile", TOY, "--cmdline", cmdline, "--log", str(log)
        )
        assert result.returncode == 1
        assert result.stderr.startswith("kho-fs: mount failed: ") and words in result.stderr
        assert str(log) in result.stderr and result.stderr.count("\n") == 1
        assert not os.path.ismount(empty)


def fusermount_watchers(mountpoint: Path) -> list[int]:
    """Pids of the ``fusermount3 … auto_unmount`` helpers of ``mountpoint``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"fusermount3") and os.fsencode(mountpoint) in argv:
            found.append(int(entry))
    return found


def assert_nothing_left(mountpoint: Path, log: Path) -> None:
    """No daemon, no mount, no pid file, no auto_unmount helper of ``mountpoint``."""
    serving = [line for line in log.read_text().splitlines() if "kho-fs serving" in line]
    assert serving, log.read_text()
    pid = int(serving[-1].rsplit("pid ", 1)[1].rstrip(")"))
    assert not running(pid), f"daemon {pid} still running"
    assert mount_entry(mountpoint) is None and not os.path.ismount(mountpoint)
    assert not state_paths(str(mountpoint))[0].exists()
    deadline = time.monotonic() + 5
    while fusermount_watchers(mountpoint):  # it exits once the daemon's fd is closed
        assert time.monotonic() < deadline, "an auto_unmount helper was left"
        time.sleep(0.01)
    assert os.listdir(mountpoint) == []  # the directory is usable again


def test_a_mount_that_answers_badly_is_torn_down(tmp_path):
    """Issue 8 item A: the daemon said "ok" but every path gives EIO.  `kho-fs mount`
    reports it and leaves no daemon, no mount and no helper behind (it used to exit 1
    saying "not mounted" while both stayed up)."""
    mountpoint = (tmp_path / "mnt").resolve()
    mountpoint.mkdir()
    log = tmp_path / "eio.log"
    args = ("--profile", TOY, "--cmdline", "answers-eio", "--log", str(log))
    result = kho_fs("mount", str(mountpoint), *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"kho-fs: mount failed: {mountpoint} was mounted but ")
    assert "does not answer (stat: Input/output error); stopped the daemon" in result.stderr
    assert str(log) in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "toy: every request fails" in log.read_text()
    assert "unmounting without saving" in log.read_text()
    assert_nothing_left(mountpoint, log)
    # And the directory takes a good mount at once.
    result = kho_fs("mount", str(mountpoint), "--profile", TOY, "--log", str(log))
    assert result.returncode == 0, result.stderr
    result = kho_fs("umount", str(mountpoint))
    assert result.returncode == 0, result.stderr


def test_a_mount_that_never_gets_ready_is_torn_down(tmp_path):
    """Issue 8 item A: mounted, but the daemon never says "ok" (readiness timeout)."""
    mountpoint = (tmp_path / "mnt").resolve()
    mountpoint.mkdir()
    log = tmp_path / "hang.log"
    command = [sys.executable, "-m", "kho_fs", "mount", str(mountpoint), "--profile", TOY]
    command += ["--cmdline", "never-ready", "--log", str(log)]
    env = {**os.environ, "KHO_FS_READY_TIMEOUT": "2"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("kho-fs: mount failed: timed out after 2 s; ")
    assert "the daemon" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert_nothing_left(mountpoint, log)


def test_already_mounted_and_not_a_kho_fs_mount(tmp_path):
    with toy(tmp_path) as m:
        result = kho_fs("mount", str(m.mountpoint), "--profile", TOY)
        assert result.returncode == 3
        assert result.stderr == (
            f"kho-fs: {m.mountpoint} is already a mountpoint (a live fuse.kho-fs mount)\n"
        )
    result = kho_fs("umount", str(tmp_path))
    assert result.returncode == 3
    assert "is not a kho-fs mount (nothing is mounted)" in result.stderr
    result = kho_fs("umount", "/proc")
    assert result.returncode == 3 and "it is a proc mount" in result.stderr


def test_no_fuse_device(tmp_path, monkeypatch, capsys):
    from kho_fs import cli, daemon

    monkeypatch.setattr(daemon, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    (tmp_path / "mnt").mkdir()
    assert cli.main(["mount", str(tmp_path / "mnt"), "--profile", TOY]) == 4
    assert (
        capsys.readouterr().err
        == f"kho-fs: {tmp_path / 'no-fuse'} does not exist: FUSE is not available\n"
    )


def test_foreground_mode_and_sigint(tmp_path):
    mountpoint = tmp_path / "fg"
    mountpoint.mkdir()
    command = [sys.executable, "-m", "kho_fs", "mount", "-f", str(mountpoint), "--profile", TOY]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        assert (mountpoint / "sys/kernel/kho/active").read_text() == "0\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.ismount(mountpoint)
    assert "SIGINT received" in proc.stderr.read()


def test_sigterm_unmounts_cleanly(tmp_path):
    with toy(tmp_path) as m:
        assert m.pid is not None
        os.kill(m.pid, signal.SIGTERM)
        wait_exit(m.pid)
        assert not os.path.ismount(m.mountpoint)
        assert mount_entry(m.mountpoint) is None
        assert "SIGTERM received" in m.log()
        assert "unmounted" in m.log()


def test_killed_daemon_leaves_no_dead_mount(tmp_path):
    with toy(tmp_path) as m:
        assert m.pid is not None
        os.kill(m.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while mount_entry(m.mountpoint) is not None:  # auto_unmount
            assert time.monotonic() < deadline, "dead mount left behind"
            time.sleep(0.01)
    pid_file, _ = state_paths(str(m.mountpoint))
    assert not pid_file.exists()


def test_sigusr1_dumps_stacks_to_the_log(tmp_path):
    with toy(tmp_path) as m:
        assert m.pid is not None
        os.kill(m.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while "most recent call first" not in m.log():
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.01)
        assert m.read_text(f"{KHO}/active") == "0\n"  # still serving


# -- files through real processes ---------------------------------------------------------


def test_sysfs_semantics_from_the_shell(tmp_path):
    with toy(tmp_path) as m:
        r = sh(f"cat {KHO}/active && echo 1 > {KHO}/active && cat {KHO}/active", m)
        assert (r.returncode, r.stdout) == (0, "0\n1\n"), r.stderr
        r = sh(f"stat -c '%s %a %U' {KHO}/active {KHO}/dt {KHO}/scratch_phys", m)
        assert r.stdout.split("\n")[:3] == ["4096 600 root", "111 400 root", "4096 400 root"]
        r = sh(f"od -An -tx1 -N4 {KHO}/dt", m)
        assert r.stdout.split() == ["d0", "0d", "fe", "ed"]
        assert m.read_bytes(f"{KHO}/dt") == FDT
        # Read-only sysfs files refuse write opens even for root.
        r = sh(f"echo 1 > {KHO}/scratch_phys", m)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        r = sh(f"echo 1 > {KHO}/dt", m)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        # Store errors reach the writer (dash's echo builtin says "I/O error" for all).
        r = sh(f"/bin/echo 2 > {KHO}/active", m)
        assert r.returncode != 0 and "Invalid argument" in r.stderr
        # Debugfs: st_size 0, but cat reads the content; writes fail with EINVAL.
        r = sh(
            "stat -c %s sys/kernel/debug/memblock/memory; cat sys/kernel/debug/memblock/memory", m
        )
        assert r.stdout == "0\n   0: 0x0..0xfff    0 NONE\n"
        r = sh("/bin/echo x > sys/kernel/debug/memblock/memory", m)
        assert r.returncode != 0 and "Invalid argument" in r.stderr
        r = sh("ls sys/kernel/kho; ls -a sys/kernel/kho | head -2", m)
        assert r.stdout == "active\ndt\nscratch_phys\n.\n..\n"


def test_stat_polling_is_never_stale(tmp_path):
    with toy(tmp_path) as m:
        script = f"""
        set -e
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            stat {KHO}/active > /dev/null
            test ! -e {KHO}/dt
            echo 1 > {KHO}/active
            test -e {KHO}/dt
            stat -c %i {KHO}/dt
            echo 0 > {KHO}/active
            if test -e {KHO}/dt; then echo "stale dt" >&2; exit 1; fi
        done
        """
        r = sh(script, m)
        assert r.returncode == 0, r.stderr
        inodes = r.stdout.split()
        assert len(inodes) == 20 and len(set(inodes)) == 20  # every dt is a new inode


def test_removed_file_gives_enodev_through_an_old_descriptor(tmp_path):
    with toy(tmp_path) as m:
        m.write(f"{KHO}/active", "1")
        r = sh(f"exec 3< {KHO}/dt && echo 0 > {KHO}/active && cat <&3", m)
        assert r.returncode != 0 and "No such device" in r.stderr
        fd = os.open(m.path(f"{KHO}/active"), os.O_RDONLY)
        try:
            os.read(fd, 10)
            m.write(f"{KHO}/active", "1")
            m.write(f"{KHO}/active", "0")
            assert os.pread(fd, 10, 0) == b"0\n"  # active itself was never removed
        finally:
            os.close(fd)


def test_region_file_with_dd(tmp_path):
    with toy(tmp_path) as m:
        r = sh("printf oops | dd of=machine/region bs=1 seek=4096 conv=notrunc status=none", m)
        assert r.returncode == 0, r.stderr
        r = sh("dd if=machine/region bs=1 skip=4096 count=4 status=none", m)
        assert r.stdout == "oops"
        assert m.path("machine/region").stat().st_size == REGION_SIZE
        # 5000-byte blocks: the first fits, the second is cut at the end, then ENOSPC.
        r = sh(
            "head -c 10000 /dev/zero | tr '\\0' z | dd of=machine/region bs=5000 conv=notrunc", m
        )
        assert r.returncode != 0 and "No space left on device" in r.stderr
        assert m.read_bytes("machine/region") == b"z" * REGION_SIZE
        r = sh("dd if=machine/region bs=4096 skip=2 status=none | wc -c", m)
        assert r.stdout.strip() == "0"


def test_staging_file_is_a_regular_file(tmp_path):
    with toy(tmp_path) as m:
        r = sh(
            "head -c 100000 /dev/urandom > /tmp/kho-fs-image.$$ && "
            "cp /tmp/kho-fs-image.$$ machine/kexec/kernel && "
            "cmp /tmp/kho-fs-image.$$ machine/kexec/kernel && "
            "stat -c %s machine/kexec/kernel; rm -f /tmp/kho-fs-image.$$",
            m,
        )
        assert (r.returncode, r.stdout) == (0, "100000\n"), r.stderr
        r = sh("truncate -s 10 machine/kexec/kernel && stat -c %s machine/kexec/kernel", m)
        assert r.stdout == "10\n"
        r = sh("echo hi > machine/kexec/kernel && stat -c %s machine/kexec/kernel", m)
        assert r.stdout == "3\n"
        assert m.read_bytes("machine/kexec/kernel") == b"hi\n"


def test_unexpected_exception_is_eio_and_the_mount_lives_on(tmp_path):
    with toy(tmp_path) as m:
        for _ in range(3):
            r = sh("cat machine/boom", m)
            assert r.returncode != 0 and "Input/output error" in r.stderr
        r = sh(f"cat {KHO}/active && echo 1 > {KHO}/active && cat {KHO}/active", m)
        assert r.stdout == "0\n1\n", r.stderr
        assert "toy callback bug" in m.log() and "Traceback" in m.log()
        assert m.pid is not None and running(m.pid)


def test_mmap_is_refused(tmp_path):
    with toy(tmp_path) as m:
        fd = os.open(m.path(f"{KHO}/active"), os.O_RDWR)
        try:
            try:
                mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED)
                raise AssertionError("shared mmap succeeded")
            except OSError as exc:
                assert exc.errno == errno.ENODEV
            # Documented limitation: FUSE has no mmap request, so a private mapping is
            # set up by the kernel and filled through ordinary reads.
            with mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE) as private:
                assert private[:2] == b"0\n"
        finally:
            os.close(fd)


def test_permissions_for_other_users(tmp_path):
    nobody = 65534
    with toy(tmp_path) as m:
        os.chmod(m.mountpoint.parent, 0o755)
        r = sh(f"cat {KHO.replace('kho', 'kexec_loaded')}", m, user=nobody)
        assert r.returncode != 0 and "Permission denied" in r.stderr  # no allow_other
    with toy(tmp_path, allow_other=True) as m:
        os.chmod(m.mountpoint.parent, 0o755)
        r = sh("cat sys/kernel/kexec_loaded", m, user=nobody)
        assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr
        for path in (f"{KHO}/active", f"{KHO}/scratch_phys"):
            r = sh(f"cat {path}", m, user=nobody)
            assert r.returncode != 0 and "Permission denied" in r.stderr
        r = sh("ls sys/kernel/debug", m, user=nobody)
        assert r.returncode != 0 and "Permission denied" in r.stderr


# -- the real machine --------------------------------------------------------------------------


def test_default_profile_is_the_v4_machine(tmp_path):
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        assert m.read_text(f"{KHO}/active") == "0\n"
        r = sh(f"echo 1 > {KHO}/active && od -An -tx1 -N4 {KHO}/dt", m)
        assert r.stdout.split() == ["d0", "0d", "fe", "ed"], r.stderr
        r = sh(f"exec 3< {KHO}/dt && echo 0 > {KHO}/active && test ! -e {KHO}/dt && cat <&3", m)
        assert r.returncode != 0 and "No such device" in r.stderr
