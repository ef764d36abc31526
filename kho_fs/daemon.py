"""The daemon: mount, readiness, signals, unmount.

``kho-fs mount`` checks the mountpoint, builds the machine and its profile in the calling
process (so configuration errors are reported at once), then forks.  The child becomes a
session leader, sends its output to the log file, mounts with ``pyfuse3.init`` and starts
the trio main loop; only then does it write ``ok`` to a readiness pipe.  The parent
waits for that line, confirms with ``os.path.ismount`` and exits 0 without printing
anything.  If the child fails it writes ``error: <reason>`` instead (or just dies), and
the parent prints one line and exits non-zero.

State per mountpoint lives in :func:`runtime_dir` (``$XDG_RUNTIME_DIR/kho-fs``, else
``/run/kho-fs`` for root, else ``$TMPDIR/kho-fs-<uid>``), named by a hash of the
mountpoint's real path: ``<hash>.pid`` (pid, process start time, mountpoint) while the
daemon runs, and ``<hash>.log``, the daemon's log (appended to; ``--log`` overrides).

Signals: SIGTERM and SIGINT end the main loop with ``pyfuse3.terminate()`` and unmount
cleanly; SIGUSR1 dumps every thread's stack to the log (faulthandler).

``kho-fs umount`` checks that the path is a kho-fs mount, unmounts it with
``fusermount3 -u`` (``umount`` if fusermount3 is missing) and waits, through a pidfd,
until the daemon process has exited, so the next mount can start at once.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import hashlib
import importlib
import importlib.util
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kho_fs.cli import (
    EXIT_FAILURE,
    EXIT_MOUNTPOINT,
    EXIT_NO_FUSE,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
)

if TYPE_CHECKING:
    from kho_fs.tree.tree import Profile

log = logging.getLogger(__name__)

FSNAME = "kho-fs"
FSTYPE = "fuse.kho-fs"  # what /proc/self/mountinfo shows for subtype=kho-fs
FUSE_DEVICE = "/dev/fuse"
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"

#: ``factory(memory=bytes, nodes=count, cmdline=str or None) -> Profile``
ProfileFactory = Callable[..., "Profile"]


class MountError(Exception):
    """The FUSE mount itself failed (reported by the command that asked for it)."""


# -- the machine behind the mount ----------------------------------------------------


DEFAULT_MEMORY = 16 << 30


def build_profile(
    memory: int | None,
    nodes: int | None,
    cmdline: str | None,
    state: str | None = None,
    create: bool = False,
) -> Profile:
    """Cold-boot (or restore) a machine and wrap it in the v4 profile.

    ValueError on a bad configuration; CommandError for state-file problems.
    """
    from kho_fs.model.machine import DEFAULT_CMDLINE, Machine
    from kho_fs.tree.profile_v4 import V4Profile

    if cmdline is not None:  # the model's text stands for the bytes the shell passed
        cmdline = os.fsencode(cmdline).decode("latin-1")
    state_path = Path(state).resolve() if state else None
    if state_path is not None and state_path.exists():
        if memory is not None or nodes is not None or cmdline is not None:
            raise CommandError(
                f"{state}: the state file already describes the machine; "
                "drop --memory/--nodes/--cmdline (or remove the file)",
                EXIT_USAGE,
            )
        from kho_fs.state import StateError, load_machine  # only a --state mount needs it

        try:
            return V4Profile(load_machine(state_path), state_path=state_path)
        except StateError as exc:
            raise CommandError(f"cannot restore {state}: {exc}") from None
    if state_path is not None and not create:
        raise CommandError(
            f"{state}: no such state file (add --create to start a fresh machine there)",
            EXIT_USAGE,
        )
    if create and state_path is None:
        raise CommandError("--create goes with --state FILE", EXIT_USAGE)
    machine = Machine.create(
        memory=memory or DEFAULT_MEMORY,
        nodes=nodes or 1,
        cmdline=DEFAULT_CMDLINE if cmdline is None else cmdline,
    )
    return V4Profile(machine, state_path=state_path)


def load_profile_factory(spec: str) -> ProfileFactory:
    """Resolve the hidden ``--profile`` option: ``module:callable`` or ``file.py:callable``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise CommandError(f"--profile wants MODULE:CALLABLE or FILE.py:CALLABLE, not {spec!r}")
    try:
        if target.endswith(".py"):
            digest = hashlib.sha256(target.encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(
                f"_kho_fs_profile_{digest}", target
            )
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot load {target}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        factory: ProfileFactory = getattr(module, name)
    except (ImportError, OSError, AttributeError) as exc:
        raise CommandError(f"cannot load profile {spec!r}: {exc}", EXIT_USAGE) from None
    return factory


# -- per-mountpoint state ------------------------------------------------------------


def runtime_dir() -> Path:
    """Where pid and log files live (created on demand, mode 0700)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        path = Path(xdg) / "kho-fs"
    elif os.geteuid() == 0:
        path = Path("/run/kho-fs")
    else:
        path = Path(tempfile.gettempdir()) / f"kho-fs-{os.geteuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def state_paths(mountpoint: str) -> tuple[Path, Path]:
    """``(pid file, default log file)`` of a mountpoint given as a real path."""
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:16]
    base = runtime_dir()
    return base / f"{digest}.pid", base / f"{digest}.log"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (tells a live daemon from a recycled pid); None when the
    process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def write_pid_file(path: Path, mountpoint: str) -> None:
    pid = os.getpid()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n{_start_time(pid)}\n{mountpoint}\n")
    tmp.replace(path)


def read_pid_file(mountpoint: str) -> int | None:
    """The pid of the daemon serving ``mountpoint`` if it is still that process."""
    pid_path, _ = state_paths(mountpoint)
    try:
        pid_text, started, recorded = pid_path.read_text().splitlines()[:3]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if recorded != mountpoint or _start_time(pid) != started:
        return None
    return pid


def remove_stale_pid_file(mountpoint: str) -> None:
    """Drop the pid file of a daemon that died without cleaning up (SIGKILL)."""
    if read_pid_file(mountpoint) is None:
        state_paths(mountpoint)[0].unlink(missing_ok=True)


def _unescape_mountinfo(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def mount_type(mountpoint: str) -> str | None:
    """The filesystem type mounted at ``mountpoint`` (topmost mount), or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape_mountinfo(fields[4]) == mountpoint:
                found = fields[sep + 1]
    return found


# -- mount ----------------------------------------------------------------------------


def unmount_command(mountpoint: str, *, lazy: bool = False) -> list[str]:
    """``fusermount3 -u [-z] MOUNTPOINT`` (an unprivileged user's way), else ``umount``."""
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount:
        return [fusermount, "-u", *(["-z"] if lazy else []), mountpoint]
    return ["umount", *(["-l"] if lazy else []), mountpoint]


def is_dead_mount(mountpoint: str) -> bool:
    """True when the mount at ``mountpoint`` has lost its daemon ("Transport endpoint is
    not connected"): what a killed FUSE daemon leaves if its auto_unmount helper died too."""
    try:
        os.statvfs(mountpoint)  # always a request to the daemon; stat may hit the cache
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def recover_dead_mount(path: str, real: str) -> None:
    """Lazily unmount a dead kho-fs mount left at ``real``, or say exactly what to do."""
    command = unmount_command(real, lazy=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or mount_type(real) is not None:
        raise CommandError(
            f"{path} is a dead kho-fs mount (its daemon is gone) and `{' '.join(command)}` "
            f"failed: {result.stderr.strip() or 'still mounted'}; unmount it as its owner "
            f"(`fusermount3 -u -z {real}` or, as root, `umount -l {real}`) and mount again",
            EXIT_MOUNTPOINT,
        )
    remove_stale_pid_file(real)
    print(
        f"{PROG}: {path} was a dead kho-fs mount (its daemon is gone); unmounted it",
        file=sys.stderr,
    )


def check_mountpoint(path: str) -> str:
    """Return the real path of a usable mountpoint, or raise CommandError.

    A dead kho-fs mount (the daemon was killed and its auto_unmount helper too) is
    unmounted and reused; any other mount is left alone with a message saying what it is.
    """
    real = os.path.realpath(path)
    kind = mount_type(real)
    if kind == FSTYPE and read_pid_file(real) is None and is_dead_mount(real):
        recover_dead_mount(path, real)
    elif kind is not None:
        state = "a dead" if is_dead_mount(real) else "a live"
        hint = f"; run `umount -l {real}` first" if state == "a dead" else ""
        raise CommandError(
            f"{path} is already a mountpoint ({state} {kind} mount{hint})", EXIT_MOUNTPOINT
        )
    if not os.path.exists(real):
        raise CommandError(f"mountpoint {path} does not exist", EXIT_MOUNTPOINT)
    if not os.path.isdir(real):
        raise CommandError(f"mountpoint {path} is not a directory", EXIT_MOUNTPOINT)
    try:
        if os.listdir(real):
            raise CommandError(f"mountpoint {path} is not empty", EXIT_MOUNTPOINT)
    except OSError as exc:
        raise CommandError(f"mountpoint {path}: {exc.strerror}", EXIT_MOUNTPOINT) from None
    return real


def check_fuse() -> None:
    if not os.path.exists(FUSE_DEVICE):
        raise CommandError(f"{FUSE_DEVICE} does not exist: FUSE is not available", EXIT_NO_FUSE)
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise CommandError(
            f"{FUSE_DEVICE} is not readable and writable for this user", EXIT_NO_FUSE
        )


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
        force=True,
    )


def mount_command(args: argparse.Namespace) -> int:
    """``kho-fs mount``: see the module docstring."""
    mountpoint = check_mountpoint(args.mountpoint)
    check_fuse()
    try:
        if args.profile:
            factory = load_profile_factory(args.profile)
            profile = factory(
                memory=args.memory or DEFAULT_MEMORY, nodes=args.nodes or 1, cmdline=args.cmdline
            )
        else:
            profile = build_profile(
                args.memory, args.nodes, args.cmdline, state=args.state, create=args.create
            )
    except ValueError as exc:
        raise CommandError(f"bad machine configuration: {exc}", EXIT_USAGE) from None
    try:
        pid_path, default_log = state_paths(mountpoint)
    except OSError as exc:
        raise CommandError(f"cannot create the runtime directory: {exc}") from None
    options = {"fsname=" + FSNAME, "subtype=kho-fs", "default_permissions", "auto_unmount"}
    if args.allow_other:
        options.add("allow_other")
    if args.foreground:
        configure_logging(args.debug)
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        try:
            return serve(profile, mountpoint, options, pid_path, on_ready=lambda: None)
        except MountError as exc:
            raise CommandError(f"mount failed: {exc}") from None
    log_path = Path(args.log).resolve() if args.log else default_log
    return _start_daemon(profile, mountpoint, options, pid_path, log_path, args.debug)


def _start_daemon(
    profile: Profile,
    mountpoint: str,
    options: set[str],
    pid_path: Path,
    log_path: Path,
    debug: bool,
) -> int:
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot open log file {log_path}: {exc.strerror}", EXIT_USAGE) from None
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = EXIT_FAILURE
        try:
            os.close(ready_r)
            code = _daemon_main(profile, mountpoint, options, pid_path, log_fd, ready_w, debug)
        except BaseException:
            logging.getLogger(__name__).exception("daemon failed")
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(log_fd)
    return _await_ready(pid, ready_r, mountpoint, log_path)


def _daemon_main(
    profile: Profile,
    mountpoint: str,
    options: set[str],
    pid_path: Path,
    log_fd: int,
    ready_w: int,
    debug: bool,
) -> int:
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    configure_logging(debug)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

    def ready() -> None:
        os.write(ready_w, b"ok\n")
        os.close(ready_w)

    try:
        return serve(profile, mountpoint, options, pid_path, on_ready=ready)
    except MountError as exc:
        log.error("mount failed: %s", exc)
        os.write(ready_w, f"error: {exc}\n".encode())
        return EXIT_FAILURE


def _await_ready(pid: int, ready_r: int, mountpoint: str, log_path: Path) -> int:
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    with os.fdopen(ready_r, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise CommandError(f"mount timed out after {READY_TIMEOUT:.0f} s (log: {log_path})")
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    if data.startswith(b"ok"):
        if os.path.ismount(mountpoint):
            return EXIT_OK
        raise CommandError(
            f"daemon reported ready but {mountpoint} is not mounted (log: {log_path})"
        )
    _, status = os.waitpid(pid, 0)
    reason = data.decode(errors="replace").strip().removeprefix("error: ")
    if not reason:
        reason = f"daemon exited with status {os.waitstatus_to_exitcode(status)}"
    raise CommandError(f"mount failed: {reason} (log: {log_path})")


def serve(
    profile: Profile,
    mountpoint: str,
    options: set[str],
    pid_path: Path,
    *,
    on_ready: Callable[[], None],
) -> int:
    """Mount ``profile`` on ``mountpoint`` and serve until unmounted or signalled."""
    import pyfuse3
    import trio

    from kho_fs.fuse_adapter import Operations
    from kho_fs.tree.tree import NodeTree

    ops = Operations(NodeTree(profile))
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        raise MountError(f"{exc} (options: {','.join(sorted(options))})") from None
    code = EXIT_OK
    try:
        write_pid_file(pid_path, mountpoint)
        log.info("kho-fs serving %s (pid %d)", mountpoint, os.getpid())
        trio.run(_main_loop, on_ready)
    except BaseException:
        log.exception("main loop failed")
        code = EXIT_FAILURE
    finally:
        pyfuse3.close(unmount=True)
        log.info("kho-fs unmounted %s", mountpoint)
        if not _shutdown_profile(profile):
            code = EXIT_FAILURE
        pid_path.unlink(missing_ok=True)
    return code


def _shutdown_profile(profile: Profile) -> bool:
    """Let the profile finish (e.g. save its state file); False when that failed."""
    shutdown = getattr(profile, "shutdown", None)
    if shutdown is None:
        return True
    try:
        shutdown()
    except Exception:
        log.exception("saving the machine on unmount failed")
        return False
    return True


async def _main_loop(on_ready: Callable[[], None]) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals)
        on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _watch_signals() -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()


# -- umount ---------------------------------------------------------------------------


def unmount(mountpoint: str, *, timeout: float = EXIT_TIMEOUT) -> None:
    """Unmount a kho-fs mount and wait until its daemon has exited."""
    real = os.path.realpath(mountpoint)
    kind = mount_type(real)
    if kind != FSTYPE:
        what = "nothing is mounted" if kind is None else f"it is a {kind} mount"
        raise CommandError(f"{mountpoint} is not a kho-fs mount ({what})", EXIT_MOUNTPOINT)
    pid = read_pid_file(real)
    pidfd = None
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None
    try:
        _run_unmount(real)
        if pidfd is not None and not select.select([pidfd], [], [], timeout)[0]:
            raise CommandError(f"daemon (pid {pid}) did not exit within {timeout:.0f} s")
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _run_unmount(mountpoint: str) -> None:
    command = unmount_command(mountpoint)
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CommandError(f"cannot run {command[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"{command[0]} exited with {result.returncode}"
        raise CommandError(f"cannot unmount {mountpoint}: {detail}")


def umount_command(args: argparse.Namespace) -> int:
    """``kho-fs umount``: see the module docstring."""
    unmount(args.mountpoint)
    return EXIT_OK


def status_command(args: argparse.Namespace) -> int:
    """``kho-fs status``: print the machine summary the mount serves."""
    if mount_type(args.mountpoint) != FSTYPE:
        raise CommandError(f"{args.mountpoint}: not a kho-fs mount", EXIT_MOUNTPOINT)
    try:
        text = (Path(args.mountpoint) / "machine" / "status").read_text("latin-1")
    except OSError as exc:
        raise CommandError(f"{args.mountpoint}: cannot read status: {exc.strerror}") from exc
    sys.stdout.write(text)
    return 0


def save_command(args: argparse.Namespace) -> int:
    """``kho-fs save``: ask the daemon to write its state file now."""
    if mount_type(args.mountpoint) != FSTYPE:
        raise CommandError(f"{args.mountpoint}: not a kho-fs mount", EXIT_MOUNTPOINT)
    control = Path(args.mountpoint) / "machine" / "save"
    if not control.exists():
        raise CommandError(f"{args.mountpoint} was mounted without --state: nothing to save to")
    try:
        fd = os.open(control, os.O_WRONLY)
        try:
            os.write(fd, b"1\n")
        finally:
            os.close(fd)
    except OSError as exc:
        raise CommandError(f"saving failed: {exc.strerror} (see the daemon log)") from None
    return EXIT_OK
