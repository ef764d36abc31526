"""Unmounting without losing a machine, and the mountpoint as every command names it.

Issue 8: a ``--state`` machine is saved while it is still mounted, so a save that fails
(a removed or read-only state directory) keeps it mounted with the reason on stderr;
dropping it takes ``kho-fs umount --discard``.  SIGTERM does the same save and keeps
the mount when it fails.  ``M/``, ``M/.`` and symlinks name the same mount for every
subcommand, and a user who does not own a mount is told so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mount_helpers import ENV, NOBODY, kho_fs, ok

import kho_fs as package
from kho_fs.daemon import FSTYPE, mount_type, read_pid_file
from kho_fs.testing import MountedMachine, mounted

CMDLINE = "kho=on reserve_mem=1M:4096:oops"
REGION = "machine/reserve_mem/oops"


def alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} still running"
        time.sleep(0.01)


def write_region(m: MountedMachine, data: bytes) -> None:
    fd = os.open(m.path(REGION), os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, 0) == len(data)
    finally:
        os.close(fd)


def state_mount(tmp_path: Path, state: Path, *, create: bool = True):
    extra = ("--state", str(state), *(["--create"] if create else []))
    if create:
        return mounted(tmp_path, memory="1G", cmdline=CMDLINE, extra_args=extra)
    return mounted(tmp_path, memory=None, nodes=None, extra_args=extra)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("kho-fs: "), r.stderr
    return r.stderr


class ReadOnly:
    """``directory`` bind-mounted read-only onto itself for the ``with`` block."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def __enter__(self) -> None:
        subprocess.run(["mount", "--bind", self.directory, self.directory], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", self.directory], check=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", self.directory], check=True)


# -- B: a save that fails at unmount keeps the machine ----------------------------------


def test_umount_keeps_the_machine_when_its_state_directory_is_gone(tmp_path):
    directory = tmp_path / "S"
    directory.mkdir()
    state = directory / "m.state"
    with state_mount(tmp_path, state) as m:
        write_region(m, b"precious bytes")
        shutil.rmtree(directory)
        err = one_line_error(kho_fs("save", str(m.mountpoint)))
        assert f"saving to {state} failed: No such file or directory" in err, err
        err = one_line_error(kho_fs("umount", str(m.mountpoint)))
        assert f"cannot unmount {m.mountpoint}: saving the machine to {state} failed: " in err
        assert "No such file or directory; it stays mounted" in err
        assert f"`kho-fs umount --discard {m.mountpoint}`" in err
        # Nothing was lost: still mounted, same daemon, same bytes.
        assert mount_type(str(m.mountpoint)) == FSTYPE and alive(m.pid)
        assert m.read_bytes(REGION)[:14] == b"precious bytes"
        # The user fixes the directory and unmounts again: saved exactly once.
        directory.mkdir()
        saves = m.log().count("machine saved to")
        r = kho_fs("umount", str(m.mountpoint))
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r.stderr
        wait_gone(m.pid)
        assert mount_type(str(m.mountpoint)) is None
        assert m.log().count("machine saved to") == saves + 1, m.log()
        assert f"{state} is up to date" in m.log()
    with state_mount(tmp_path, state, create=False) as m:
        assert m.read_bytes(REGION)[:14] == b"precious bytes"


def test_umount_on_a_read_only_state_directory_and_discard(tmp_path):
    directory = tmp_path / "S"
    directory.mkdir()
    state = directory / "m.state"
    with state_mount(tmp_path, state) as m:
        write_region(m, b"saved")
        assert kho_fs("save", str(m.mountpoint)).returncode == 0
        saved = state.read_bytes()
        write_region(m, b"later")
        with ReadOnly(directory):
            err = one_line_error(kho_fs("umount", str(m.mountpoint)))
            assert "failed: Read-only file system; it stays mounted" in err, err
            assert alive(m.pid) and m.read_bytes(REGION)[:5] == b"later"
            # Dropping the changes is an explicit choice.
            r = kho_fs("umount", "--discard", str(m.mountpoint))
            assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r.stderr
            wait_gone(m.pid)
            assert mount_type(str(m.mountpoint)) is None
        assert state.read_bytes() == saved
        assert "SIGUSR2 received: unmounting without saving" in m.log()
        assert f"changes since the last save of {state} discarded" in m.log()
    with state_mount(tmp_path, state, create=False) as m:
        assert m.read_bytes(REGION)[:5] == b"saved"


def test_sigterm_with_a_failing_save_keeps_the_mount(tmp_path):
    """Decision (docs/decisions.md): SIGTERM saves before unmounting; when that fails the
    daemon logs why and keeps serving; the next SIGTERM after the fix saves and exits."""
    directory = tmp_path / "S"
    directory.mkdir()
    state = directory / "m.state"
    with state_mount(tmp_path, state) as m:
        write_region(m, b"kept by SIGTERM")
        shutil.rmtree(directory)
        os.kill(m.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "cannot save the machine" not in m.log():
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.01)
        assert "SIGTERM received: cannot save the machine to " in m.log()
        assert "it stays mounted and serving" in m.log()
        assert alive(m.pid) and mount_type(str(m.mountpoint)) == FSTYPE
        assert m.read_bytes(REGION)[:15] == b"kept by SIGTERM"
        directory.mkdir()
        os.kill(m.pid, signal.SIGTERM)
        wait_gone(m.pid)
        assert mount_type(str(m.mountpoint)) is None
    with state_mount(tmp_path, state, create=False) as m:
        assert m.read_bytes(REGION)[:15] == b"kept by SIGTERM"


def test_a_write_after_the_last_save_is_saved_after_the_unmount(tmp_path):
    """The save at unmount happens while mounted; if anything was written after it
    (another process between `kho-fs save` and an external `fusermount3 -u`), the
    daemon saves once more after the unmount."""
    state = tmp_path / "m.state"
    with state_mount(tmp_path, state) as m:
        assert kho_fs("save", str(m.mountpoint)).returncode == 0
        write_region(m, b"written after the save")
        subprocess.run(["fusermount3", "-u", str(m.mountpoint)], check=True)
        wait_gone(m.pid)
        assert m.log().count("machine saved to") == 2, m.log()
    with state_mount(tmp_path, state, create=False) as m:
        assert m.read_bytes(REGION)[:22] == b"written after the save"


# -- C: every subcommand resolves the mountpoint the same way --------------------------


def test_status_save_and_umount_accept_any_spelling_of_the_mountpoint(tmp_path):
    state = tmp_path / "m.state"
    with state_mount(tmp_path, state) as m:
        link = tmp_path / "link"
        link.symlink_to(m.mountpoint, target_is_directory=True)
        expected = ok(m, "cat machine/status")
        for spelling in (f"{m.mountpoint}/", f"{m.mountpoint}/.", str(link), f"{link}/"):
            r = kho_fs("status", spelling)
            assert (r.returncode, r.stdout, r.stderr) == (0, expected, ""), spelling
            r = kho_fs("save", spelling)
            assert (r.returncode, r.stderr) == (0, ""), (spelling, r.stderr)
        r = kho_fs("umount", f"{link}/.")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        wait_gone(m.pid)
        assert mount_type(str(m.mountpoint)) is None
    r = kho_fs("status", f"{tmp_path}/")
    assert r.returncode == 3 and r.stderr == f"kho-fs: {tmp_path}/: not a kho-fs mount\n"


# -- E: a user who does not own the mount -------------------------------------------------


def _readable_root() -> str:
    """A copy of this ``kho_fs`` any user can read: the checkout (CI's clone) may live
    under a 0700 directory other users cannot enter."""
    import atexit
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix="kho-fs-pkg-", dir="/tmp"))
    atexit.register(shutil.rmtree, copy, True)
    shutil.copytree(
        Path(package.__file__).resolve().parent,
        copy / "kho_fs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for p in [copy, *copy.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return str(copy)


def _python_for(uid: int) -> list[str]:
    """An interpreter ``uid`` can run, importing this very ``kho_fs`` (the virtualenv's
    may live under a directory other users cannot enter; `kho-fs umount` needs only the
    standard library)."""
    root = ROOT_COPY
    candidates = [sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
    for python in filter(None, candidates):
        command = [python, "-c", "import kho_fs.daemon"]
        if subprocess.run(_as(uid, command), env=_env(root), capture_output=True).returncode == 0:
            return [python, "-m", "kho_fs"]
    raise AssertionError(f"no Python interpreter that uid {uid} can run kho_fs with")


def _as(uid: int, command: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]


def _env(root: str) -> dict[str, str]:
    env = {k: v for k, v in ENV.items() if k != "XDG_RUNTIME_DIR"}
    return {**env, "PYTHONPATH": root, "HOME": "/", "TMPDIR": "/tmp"}


ROOT_COPY = _readable_root()


def test_umount_by_another_user_says_who_owns_the_mount(tmp_path):
    root = ROOT_COPY
    with mounted(tmp_path, memory="1G", cmdline="kho=on", allow_other=True) as m:
        os.chmod(m.mountpoint.parent, 0o755)
        command = _as(NOBODY, [*_python_for(NOBODY), "umount", str(m.mountpoint)])
        r = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_env(root))
        assert r.stderr == (
            f"kho-fs: cannot unmount {m.mountpoint}: it was mounted by root (uid 0); only that "
            "user or root can unmount it (you are nobody (uid 65534))\n"
        ), r.stderr
        assert r.returncode == 1
        assert mount_type(str(m.mountpoint)) == FSTYPE and alive(m.pid)
        assert read_pid_file(str(m.mountpoint)) == m.pid
