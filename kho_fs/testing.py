"""Mount an emulated machine from your own tests.

::

    from kho_fs.testing import mounted

    def test_activation(tmp_path):
        with mounted(tmp_path, memory="16G", cmdline="kho=on reserve_mem=16M:4K:oops") as m:
            m.activate()                      # echo 1 > sys/kernel/kho/active (v4)
            assert m.path("sys/kernel/kho/dt").stat().st_size > 0
            m.kexec()                         # kexec_file_load of the same release, exec
            assert "Revived memory reservation 'oops'" in m.dmesg()

``mounted`` runs the real ``kho-fs mount`` in a subprocess on a fresh directory inside the
one you give, and always unmounts (waiting for the daemon to exit) when the block ends.
A failed mount raises :class:`MountFailed` with the command's message and the daemon log:
it never skips, so a machine without FUSE fails loudly instead of passing quietly.
With pytest, the ``kho_machine`` fixture (``kho_fs.pytest_plugin``) does the same per test.
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

__all__ = ["KexecFailed", "KhoUnavailable", "MountFailed", "MountedMachine", "mounted"]


class MountFailed(RuntimeError):
    """``kho-fs mount`` failed, or the mount could not be cleaned up."""


class KhoUnavailable(RuntimeError):
    """The running kernel has no KHO interface (a release without KHO, no ``kho=on``,
    or a kernel that stopped at boot)."""


class KexecFailed(OSError):
    """A step of :meth:`MountedMachine.kexec` failed: ``errno`` is the system call's."""


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
        """The daemon's log (Python tracebacks of driver bugs land here)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- what every KHO test does --------------------------------------------------------
    def dmesg(self) -> str:
        """The emulated kernel log (``machine/dmesg``)."""
        return self.read_text("machine/dmesg")

    def status(self) -> str:
        """What ``kho-fs status`` prints (``machine/status``)."""
        return self.read_text("machine/status")

    @property
    def release(self) -> str:
        """The running kernel's release name (``v4``, ``6.19``…), from ``machine/status``."""
        for line in self.status().splitlines():
            key, _, value = line.partition(":")
            if key == "release":
                return value.split()[0]
        raise RuntimeError(f"no release line in {self.path('machine/status')}")

    def region(self, name: str, *, driver: str | None = None) -> Path:
        """The file of a ``reserve_mem=`` region, or with ``driver`` of that driver's region
        (``machine/drivers/<driver>/<name>``), names spelled as the mount spells them
        (``/`` is ``%2F``, ``%`` is ``%25``, ``.`` and ``..`` are ``%2E`` and ``%2E%2E``)."""
        from kho_fs.tree.profile_v4 import region_file_name

        if driver is None:
            return self.path(f"machine/reserve_mem/{region_file_name(name)}")
        return self.path(f"machine/drivers/{region_file_name(driver)}/{region_file_name(name)}")

    def _kho_control(self) -> tuple[str, str]:
        """``(file, era)`` that serializes KHO on the running kernel."""
        if self.path("sys/kernel/kho/active").exists():
            return "sys/kernel/kho/active", "v4"
        if self.path("sys/kernel/debug/kho/out/finalize").exists():
            return "sys/kernel/debug/kho/out/finalize", "mainline"
        raise KhoUnavailable(
            f"the running kernel ({self.release}) has no KHO interface: a release without KHO, "
            "no kho=on on its command line, or it stopped at boot (see dmesg)"
        )

    def activate(self) -> None:
        """Serialize KHO as the running kernel does it: ``echo 1 > sys/kernel/kho/active``
        on v4, ``printf 1 > sys/kernel/debug/kho/out/finalize`` on mainline releases.
        OSError with the kernel's errno and the file on failure (dmesg says why)."""
        self._kho_write(b"1")

    def _kho_write(self, value: bytes) -> None:
        path, _ = self._kho_control()
        try:
            self.write(path, value)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path(path))) from None

    def finalize(self) -> None:
        """The same as :meth:`activate` (mainline calls the step ``finalize``)."""
        self.activate()

    def abort(self) -> None:
        """Undo :meth:`activate`: ``echo 0 > active`` (v4), ``printf 0 > finalize``
        (6.16–6.18; 6.19+ answers EINVAL, as the kernel does)."""
        self._kho_write(b"0")

    def kexec(
        self,
        image: str | os.PathLike[str] | bytes | None = None,
        cmdline: str | None = None,
        reuse_cmdline: bool = True,
    ) -> None:
        """``kexec -s -l IMAGE [--reuse-cmdline] [--append=CMDLINE]``, then ``kexec -e``.

        ``image``: None boots the running release again; a release name (``"6.19"``) an
        image whose boot header names it; a path a kernel file; bytes the image itself.
        The command line is the running one (without ``BOOT_IMAGE=``) followed by
        ``cmdline``, or only ``cmdline`` with ``reuse_cmdline=False``.  KHO data goes
        along when KHO was activated/finalized before (see :meth:`activate`).
        :class:`KexecFailed` (with the errno) when the load or the exec fails.
        """
        from kho_fs.kexec_tool import reused_command_line
        from kho_fs.model.bzimage import make_bzimage
        from kho_fs.model.releases import RELEASES

        if image is None:
            image = self.release
        if isinstance(image, bytes):
            data = image
        elif isinstance(image, str) and image in RELEASES:
            data = make_bzimage(RELEASES[image])
        else:
            data = Path(image).read_bytes()
        line = reused_command_line(self.read_bytes("proc/cmdline")) if reuse_cmdline else None
        extra = None if cmdline is None else os.fsencode(cmdline)
        if line is not None and extra is not None:
            line += b" " + extra
        elif line is None:
            line = extra or b""
        self._stage("machine/kexec/kernel", data)
        self._stage("machine/kexec/initrd", b"")
        self._stage("machine/kexec/cmdline", line)
        for command in ("kexec_file_load", "exec"):
            try:
                self.write("machine/kexec/control", command + "\n")
            except OSError as exc:
                raise KexecFailed(
                    exc.errno, f"{command} failed: {exc.strerror} (see dmesg)"
                ) from None

    def _stage(self, relative: str, data: bytes) -> None:
        with open(self.path(relative), "r+b") as out:
            out.write(data)
            out.truncate()


def _mount_command(
    mountpoint: Path,
    log_path: Path,
    memory: str | None,
    nodes: int | None,
    cmdline: str | None,
    allow_other: bool,
    profile: str | None,
    extra_args: Sequence[str],
    release: str | None = None,
    drivers: Sequence[str] = (),
) -> list[str]:
    command = [sys.executable, "-m", "kho_fs", "mount", str(mountpoint)]
    command += ["--log", str(log_path)]
    if release is not None:
        command += ["--release", release]
    for spec in drivers:
        command += ["--driver", spec]
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
    release: str | None = None,
    drivers: Sequence[str] = (),
) -> Iterator[MountedMachine]:
    """Mount a machine on a new directory inside ``directory`` for the ``with`` block.

    ``cmdline=None`` boots the model's default command line; ``memory=None`` and
    ``nodes=None`` leave those options out (to restore a ``--state`` file).  ``release``
    and ``drivers`` are ``--release`` and one ``--driver SPEC`` each.  ``profile`` is the
    hidden ``--profile`` option (``module:callable`` or ``file.py:callable``) for tests of
    the FUSE layers with a profile of their own.
    """
    from kho_fs.cli import CommandError
    from kho_fs.daemon import mount_type, read_pid_file, remove_stale_pid_file, unmount

    mountpoint = Path(tempfile.mkdtemp(prefix="kho-fs-", dir=directory)).resolve()
    log_path = mountpoint.with_name(mountpoint.name + ".log")
    command = _mount_command(
        mountpoint,
        log_path,
        memory,
        nodes,
        cmdline,
        allow_other,
        profile,
        extra_args,
        release,
        drivers,
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
