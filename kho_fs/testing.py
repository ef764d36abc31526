"""Mount an emulated machine from your own tests.

::

    from kho_fs.testing import mounted

    def test_activation(tmp_path):
        with mounted(tmp_path, memory="16G", cmdline="kho=on reserve_mem=16M:4K:oops") as m:
            m.write("sys/kernel/kho/active", "1")
            assert m.path("sys/kernel/kho/dt").stat().st_size > 0

``mounted`` runs the real ``kho-fs mount`` in a subprocess on a fresh directory inside the
one you give, and always unmounts (waiting for the daemon to exit) when the block ends.
A failed mount raises :class:`MountFailed` with the command's message and the daemon log:
it never skips, so a machine without FUSE fails loudly instead of passing quietly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MountFailed", "MountedMachine", "mounted"]


class MountFailed(RuntimeError):
    """``kho-fs mount`` failed, or the mount could not be cleaned up."""


@dataclass
class MountedMachine:
    """A live kho-fs mount: paths inside it, a few file helpers and the daemon's log."""

    mountpoint: Path
    log_path: Path
    pid: int | None

    def path(self, relative: str) -> Path:
        return self.mountpoint / relative.lstrip("/")

    def read_bytes(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()

    def read_text(self, relative: str) -> str:
        return self.path(relative).read_text()

    def write(self, relative: str, data: str | bytes) -> int:
        """One ``write(2)`` on a fresh descriptor, like ``echo -n``; OSError on failure."""
        raw = data.encode() if isinstance(data, str) else data
        fd = os.open(self.path(relative), os.O_WRONLY)
        try:
            return os.write(fd, raw)
        finally:
            os.close(fd)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _mount_command(
    mountpoint: Path,
    log_path: Path,
    memory: str | None,
    nodes: int | None,
    cmdline: str | None,
    allow_other: bool,
    profile: str | None,
    extra_args: Sequence[str],
) -> list[str]:
    command = [sys.executable, "-m", "kho_fs", "mount", str(mountpoint)]
    command += ["--log", str(log_path)]
    if memory is not None:
        command += ["--memory", memory]
    if nodes is not None:
        command += ["--nodes", str(nodes)]
    if cmdline is not None:
        command += ["--cmdline", cmdline]
    if allow_other:
        command.append("--allow-other")
    if profile is not None:
        command += ["--profile", profile]
    command += list(extra_args)
    return command


@contextmanager
def mounted(
    directory: str | os.PathLike[str],
    *,
    memory: str | None = "16G",
    nodes: int | None = 1,
    cmdline: str | None = None,
    allow_other: bool = False,
    profile: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Iterator[MountedMachine]:
    """Mount a machine on a new directory inside ``directory`` for the ``with`` block.

    ``cmdline=None`` boots the model's default command line; ``memory=None`` and
    ``nodes=None`` leave those options out (to restore a ``--state`` file).  ``profile`` is
    the hidden
    ``--profile`` option (``module:callable`` or ``file.py:callable``) for tests of the
    FUSE layers with a profile of their own.
    """
    from kho_fs.cli import CommandError
    from kho_fs.daemon import mount_type, read_pid_file, remove_stale_pid_file, unmount

    mountpoint = Path(tempfile.mkdtemp(prefix="kho-fs-", dir=directory)).resolve()
    log_path = mountpoint.with_name(mountpoint.name + ".log")
    command = _mount_command(
        mountpoint, log_path, memory, nodes, cmdline, allow_other, profile, extra_args
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not os.path.ismount(mountpoint):
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        raise MountFailed(
            f"`{' '.join(command)}` exited with {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}\n--- daemon log ---\n{log}"
        )
    pid = read_pid_file(str(mountpoint))
    machine = MountedMachine(mountpoint, log_path, pid)
    body_failed = False
    try:
        yield machine
    except BaseException:
        body_failed = True
        raise
    finally:
        try:
            if mount_type(str(mountpoint)) is not None:  # the test may have unmounted it
                unmount(str(mountpoint))
        except CommandError as exc:
            _force_unmount(mountpoint, pid)
            if not body_failed:
                raise MountFailed(f"unmounting {mountpoint} failed: {exc}") from None
        remove_stale_pid_file(str(mountpoint))
        with suppress(OSError):
            mountpoint.rmdir()


def _force_unmount(mountpoint: Path, pid: int | None) -> None:
    """After a failed unmount (a state file that cannot be written, a busy mount): unmount
    without saving; as a last resort lazily unmount and kill the daemon."""
    from kho_fs.cli import CommandError
    from kho_fs.daemon import unmount, unmount_command

    with suppress(CommandError, OSError):
        unmount(str(mountpoint), discard=True)
    if os.path.ismount(mountpoint):
        subprocess.run(unmount_command(str(mountpoint), lazy=True), capture_output=True)
    if pid is not None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
