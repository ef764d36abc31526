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

If anything after that fails -- no ``ok`` in time, or a mount that does not answer
(:func:`_readiness_problem`) -- the parent tears down what it started before it reports:
SIGUSR2 (unmount without saving), SIGKILL if that is not enough, waits for the daemon and
lazily unmounts a mount it left.  A failed ``kho-fs mount`` leaves nothing behind.

Signals: SIGTERM and SIGINT save a ``--state`` machine while it is still mounted, then end
the main loop with ``pyfuse3.terminate()`` and unmount; when that save fails the daemon
logs why and keeps serving, so the machine is not lost.  SIGUSR2 unmounts without saving
(``kho-fs umount --discard``).  SIGUSR1 dumps every thread's stack to the log
(faulthandler).  See :class:`Persistence`.

``kho-fs umount`` checks that the path is a kho-fs mount of this user (or that it is
root), saves a ``--state`` machine through ``machine/save`` while it is mounted (a
failure stops the unmount: the machine stays mounted), unmounts it with
``fusermount3 -u`` (``umount`` if fusermount3 is missing) and waits, through a pidfd,
until the daemon process has exited, so the next mount can start at once.

Every command that takes a mountpoint resolves it with :func:`resolve_mountpoint`
(``M/``, ``M/.`` and symlinks name the same mount).
"""

from __future__ import annotations

import argparse
import contextvars
import errno
import faulthandler
import hashlib
import importlib
import importlib.util
import logging
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

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
    from kho_fs.fuse_adapter import Operations
    from kho_fs.tree.tree import NodeTree, Profile

log = logging.getLogger(__name__)

FSNAME = "kho-fs"
FSTYPE = "fuse.kho-fs"  # what /proc/self/mountinfo shows for subtype=kho-fs
FUSE_DEVICE = "/dev/fuse"
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # a failed mount's daemon gets this long to unmount before SIGKILL
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
    release: str | None = None,
    drivers: list[str] | None = None,
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
        # The file names the release (firmware and running kernel) and the drivers too.
        machine_options = (memory, nodes, cmdline, release, drivers)
        if any(option is not None for option in machine_options):
            raise CommandError(
                f"{state}: the state file already describes the machine; "
                "drop --memory/--nodes/--cmdline/--release/--driver (or remove the file)",
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
    from kho_fs.drivers import DriverLoadError, load_drivers
    from kho_fs.model.releases import DEFAULT_RELEASE

    try:  # built-in names, entry points, MODULE:FACTORY, FILE.py:FACTORY (kho_fs.drivers)
        factories = None if drivers is None else load_drivers(drivers)
    except DriverLoadError as exc:
        raise CommandError(str(exc), exc.exit_code) from None
    machine = Machine.create(
        memory=memory or DEFAULT_MEMORY,
        nodes=nodes or 1,
        cmdline=DEFAULT_CMDLINE if cmdline is None else cmdline,
        drivers=factories,
        release=release or DEFAULT_RELEASE,
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


def write_pid_file(path: Path, mountpoint: str, state: Path | None = None) -> None:
    """pid, start time, mountpoint and the ``--state`` file (empty line: none)."""
    pid = os.getpid()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n{_start_time(pid)}\n{mountpoint}\n{state or ''}\n")
    tmp.replace(path)


class DaemonRecord(NamedTuple):
    pid: int
    state: str | None  # the --state file it saves to


def read_daemon_record(mountpoint: str) -> DaemonRecord | None:
    """The daemon serving ``mountpoint`` (a real path) if its pid file is this user's and
    the process is still the one that wrote it."""
    pid_path, _ = state_paths(mountpoint)
    try:
        lines = pid_path.read_text().splitlines()
        pid_text, started, recorded = lines[:3]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if recorded != mountpoint or _start_time(pid) != started:
        return None
    return DaemonRecord(pid, lines[3] if len(lines) > 3 and lines[3] else None)


def read_pid_file(mountpoint: str) -> int | None:
    """The pid of the daemon serving ``mountpoint`` if it is still that process."""
    record = read_daemon_record(mountpoint)
    return None if record is None else record.pid


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


class MountEntry(NamedTuple):
    fstype: str
    super_options: str


def mount_entry(mountpoint: str) -> MountEntry | None:
    """The topmost mount at ``mountpoint`` (a real path), or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape_mountinfo(fields[4]) == mountpoint:
                found = MountEntry(
                    fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
                )
    return found


def mount_type(mountpoint: str) -> str | None:
    """The filesystem type mounted at ``mountpoint`` (topmost mount), or None."""
    entry = mount_entry(mountpoint)
    return None if entry is None else entry.fstype


def resolve_mountpoint(path: str) -> str:
    """The real path every command uses for a mountpoint: ``M``, ``M/``, ``M/.`` and a
    symlink to ``M`` are the same mount."""
    return os.path.realpath(path)


def _mount_owner(entry: MountEntry) -> int | None:
    """The uid a FUSE mount belongs to (its ``user_id=`` option)."""
    for option in entry.super_options.split(","):
        name, _, value = option.partition("=")
        if name == "user_id" and value.isdigit():
            return int(value)
    return None


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


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


def _log_boot_crashes() -> None:
    """Tracebacks of drivers that raised during the cold boot (it ran before the log was
    open) go to the daemon log now."""
    from kho_fs.model.errors import log_pending_crashes

    log_pending_crashes()


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
                args.memory,
                args.nodes,
                args.cmdline,
                state=args.state,
                create=args.create,
                release=args.release,
                drivers=args.driver,
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
        _log_boot_crashes()
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
    _log_boot_crashes()

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
    """Wait for the daemon's readiness line, then check the mount answers.

    Exit 0 only when all is well; on any failure nothing is left behind (see
    :func:`_abort_mount`) and the reason is raised as CommandError.
    """
    data = b""
    timeout = _ready_timeout()
    deadline = time.monotonic() + timeout
    with os.fdopen(ready_r, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                _abort_mount(pid, mountpoint, f"timed out after {timeout:g} s", log_path)
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    if data.startswith(b"ok"):
        problem = _readiness_problem(mountpoint)
        if problem is None:
            return EXIT_OK
        _abort_mount(pid, mountpoint, problem, log_path)
    # The daemon gave up by itself (or died): it is exiting, reap it.
    _, status = os.waitpid(pid, 0)
    reason = data.decode(errors="replace").strip().removeprefix("error: ")
    if not reason:
        reason = f"daemon exited with status {os.waitstatus_to_exitcode(status)}"
    left_over = _clear_dead_mount(mountpoint)
    remove_stale_pid_file(mountpoint)
    raise CommandError(f"mount failed: {reason}{left_over} (log: {log_path})")


def _ready_timeout() -> float:
    """:data:`READY_TIMEOUT`, or ``$KHO_FS_READY_TIMEOUT`` seconds (a hook for tests)."""
    try:
        value = float(os.environ.get("KHO_FS_READY_TIMEOUT", ""))
    except ValueError:
        return READY_TIMEOUT
    return value if value > 0 else READY_TIMEOUT


def _readiness_problem(mountpoint: str) -> str | None:
    """Why a mount whose daemon said ``ok`` is not usable, or None: it must be the
    kho-fs mount at ``mountpoint`` and its root must answer as a directory."""
    kind = mount_type(mountpoint)
    if kind != FSTYPE:
        what = "nothing is mounted" if kind is None else f"a {kind} mount is"
        return f"the daemon reported ready but {what} at {mountpoint}"
    try:
        st = os.stat(mountpoint)
    except OSError as exc:
        return f"{mountpoint} was mounted but does not answer (stat: {exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{mountpoint} was mounted but its root is not a directory"
    return None


def _abort_mount(pid: int, mountpoint: str, reason: str, log_path: Path) -> NoReturn:
    """Undo a mount that failed after the fork, then report it.

    The daemon is asked to unmount without saving (SIGUSR2: a machine that never served
    must not write its state file), given :data:`STOP_TIMEOUT` seconds, then killed;
    it is reaped (it is our child), and a mount it left is lazily unmounted.
    """
    how = "stopped the daemon"
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR2)
    if not _wait_child(pid, STOP_TIMEOUT):
        how = "killed the daemon"
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    left_over = _clear_dead_mount(mountpoint)
    remove_stale_pid_file(mountpoint)
    raise CommandError(f"mount failed: {reason}; {how}{left_over} (log: {log_path})")


def _wait_child(pid: int, timeout: float) -> bool:
    """Reap child ``pid`` if it exits within ``timeout`` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            return False
    finally:
        os.close(pidfd)
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def _clear_dead_mount(mountpoint: str) -> str:
    """Lazily unmount the mount a dead daemon left at ``mountpoint`` (auto_unmount
    usually has), and say so if that failed ("" when nothing is left).  A live mount
    is someone else's and is never touched."""
    if mount_type(mountpoint) != FSTYPE or not is_dead_mount(mountpoint):
        return ""
    command = unmount_command(mountpoint, lazy=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if mount_type(mountpoint) == FSTYPE and is_dead_mount(mountpoint):
        detail = result.stderr.strip().splitlines()[-1:] or ["still mounted"]
        return f"; its dead mount is left: `{' '.join(command)}` failed: {detail[0]}"
    return ""


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

    from kho_fs.tree.tree import NodeTree

    persistence = Persistence(profile)
    ops = _operations(NodeTree(profile), persistence)
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        raise MountError(f"{exc} (options: {','.join(sorted(options))})") from None
    code = EXIT_OK
    try:
        write_pid_file(pid_path, mountpoint, persistence.state_path)
        log.info("kho-fs serving %s (pid %d)", mountpoint, os.getpid())
        luo = _liveupdate_server(profile, mountpoint, options)
        trio.run(_main_loop, on_ready, persistence, luo)
    except BaseException:
        log.exception("main loop failed")
        code = EXIT_FAILURE
    finally:
        pyfuse3.close(unmount=True)
        log.info("kho-fs unmounted %s", mountpoint)
        if not persistence.finish():
            code = EXIT_FAILURE
        pid_path.unlink(missing_ok=True)
    return code


def _operations(tree: NodeTree, persistence: Persistence) -> Operations:
    """The adapter's request handlers, with the requests that can change the machine
    (write, setattr) counted for :class:`Persistence`."""
    from kho_fs.fuse_adapter import Operations

    class CountingOperations(Operations):
        async def write(self, fh: int, off: int, buf: bytes) -> int:
            with persistence.change():
                return await super().write(fh, off, buf)

        async def setattr(self, *args: Any) -> Any:
            with persistence.change():
                return await super().setattr(*args)

    return CountingOperations(tree)


#: True inside a request that :class:`Persistence` counts (a save it runs is part of it).
_IN_CHANGE: contextvars.ContextVar[bool] = contextvars.ContextVar("kho_fs_change", default=False)


class Persistence:
    """When the machine of a ``--state`` mount must be saved, and by whom.

    The final save happens while the machine is still mounted, so that a failing save
    (a removed or read-only directory) keeps the machine instead of losing it:
    ``kho-fs umount`` writes ``machine/save`` before it unmounts, and SIGTERM/SIGINT
    save before the daemon unmounts itself (:meth:`save_before_unmount`).  After the
    unmount the daemon saves once more only if the machine may have changed since the
    last save (:meth:`finish`): if a write or setattr request started after it or was
    still running during it (requests run on one event loop, so this is exact).  SIGUSR2
    (``kho-fs umount --discard``) unmounts without saving.

    Profiles without a state file (``save``/``state_path``) just get their ``shutdown``.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.state_path: Path | None = getattr(profile, "state_path", None)
        self.changes = 0  # counted requests started
        self.running = 0  # ... and not finished yet
        self.saved_at: int | None = None  # `changes` when a save covered everything
        self.discard = False
        save = getattr(profile, "save", None)
        if self.state_path is None or not callable(save):
            self.state_path = None
            return

        def save_and_note() -> None:
            save()
            others = self.running - (1 if _IN_CHANGE.get() else 0)
            self.saved_at = self.changes if others == 0 else None

        # Every save goes through here: machine/save (`kho-fs save`, `kho-fs umount`),
        # the signal handler and the profile's own shutdown.
        profile.save = save_and_note  # type: ignore[attr-defined]

    @contextmanager
    def change(self) -> Iterator[None]:
        """Around a request that may change the machine."""
        self.changes += 1
        self.running += 1
        token = _IN_CHANGE.set(True)
        try:
            yield
        finally:
            self.running -= 1
            _IN_CHANGE.reset(token)

    @property
    def unsaved(self) -> bool:
        return self.state_path is not None and self.saved_at != self.changes

    def save_before_unmount(self, signame: str) -> bool:
        """Save now if needed; False (and the reason in the log) if that failed, in which
        case the machine must stay mounted."""
        if not self.unsaved:
            return True
        try:
            self.profile.save()  # type: ignore[attr-defined]
        except Exception as exc:
            log.error(
                "%s received: cannot save the machine to %s (%s); it stays mounted and "
                "serving. Fix that and unmount again (`kho-fs umount` or %s), or drop the "
                "changes since the last save with `kho-fs umount --discard` (SIGUSR2)",
                signame,
                self.state_path,
                getattr(exc, "detail", None) or exc,
                signame,
            )
            return False
        return True

    def finish(self) -> bool:
        """After the unmount: save if still needed; False when that failed."""
        if self.discard:
            if self.unsaved:
                log.warning("changes since the last save of %s discarded", self.state_path)
            return True
        if self.state_path is not None and not self.unsaved:
            log.info("%s is up to date", self.state_path)
            return True
        return _shutdown_profile(self.profile)


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


def liveupdate_socket_path(mountpoint: str) -> Path:
    """Where the daemon of ``mountpoint`` (a real path) serves ``/dev/liveupdate``."""
    return state_paths(mountpoint)[0].with_suffix(".luo")


def _liveupdate_server(profile: Profile, mountpoint: str, options: set[str]) -> Any:
    """The ``/dev/liveupdate`` socket beside the mount (DESIGN §6, docs/luo.md) for a
    profile that has a machine; the profile shows its path in ``machine/liveupdate``."""
    machine = getattr(profile, "machine", None)
    if machine is None:
        return None
    from kho_fs.luo_server import LuoServer

    path = str(liveupdate_socket_path(mountpoint))
    profile.liveupdate_socket = path  # type: ignore[attr-defined]
    mode = 0o666 if "allow_other" in options else 0o600
    return LuoServer(machine, path, mode)


async def _main_loop(
    on_ready: Callable[[], None], persistence: Persistence, liveupdate: Any = None
) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        # Signals are ours before anyone hears "ready" (a SIGTERM right after the
        # mount must not find the default action).
        await nursery.start(_watch_signals, persistence)
        if liveupdate is not None:
            await nursery.start(liveupdate.run)
        on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _watch_signals(persistence: Persistence, *, task_status: Any = None) -> None:
    """SIGTERM/SIGINT: save (if needed) while mounted, then unmount -- or, when the save
    fails, log why and keep serving.  SIGUSR2: unmount without saving."""
    import pyfuse3
    import trio

    stopping = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR2) as signals:
        if task_status is not None:
            task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping:
                continue
            if signum == signal.SIGUSR2:
                log.warning("%s received: unmounting without saving", name)
                persistence.discard = True
            elif persistence.save_before_unmount(name):
                log.info("%s received: unmounting", name)
            else:
                continue
            stopping = True
            pyfuse3.terminate()


# -- umount ---------------------------------------------------------------------------


def unmount(mountpoint: str, *, discard: bool = False, timeout: float = EXIT_TIMEOUT) -> None:
    """Unmount a kho-fs mount and wait until its daemon has exited.

    A ``--state`` machine is saved first, through the mount: if that fails, nothing is
    unmounted and the CommandError says why.  With ``discard`` it is not saved: the
    daemon is told to unmount without saving (SIGUSR2) and the state file keeps what
    the last save wrote.
    """
    real = resolve_mountpoint(mountpoint)
    entry = mount_entry(real)
    if entry is None or entry.fstype != FSTYPE:
        what = "nothing is mounted" if entry is None else f"it is a {entry.fstype} mount"
        raise CommandError(f"{mountpoint} is not a kho-fs mount ({what})", EXIT_MOUNTPOINT)
    owner = _mount_owner(entry)
    uid = os.geteuid()
    if uid != 0 and owner is not None and owner != uid:
        raise CommandError(
            f"cannot unmount {mountpoint}: it was mounted by {_user(owner)}; only that "
            f"user or root can unmount it (you are {_user(uid)})"
        )
    if is_dead_mount(real):  # nothing to save: the daemon is gone
        _run_unmount(real)
        remove_stale_pid_file(real)
        return
    record = read_daemon_record(real)
    has_state = (
        record.state is not None
        if record is not None
        else os.path.exists(os.path.join(real, "machine", "save"))
    )
    pid = None if record is None else record.pid
    pidfd = None
    if pid is not None:
        with suppress(ProcessLookupError):
            pidfd = os.pidfd_open(pid)
    try:
        if has_state and discard:
            if pid is None:
                raise CommandError(
                    f"cannot unmount {mountpoint} without saving: no pid file of its daemon "
                    "for this user (run it as the user who mounted it)"
                )
            try:
                os.kill(pid, signal.SIGUSR2)  # the daemon unmounts itself
            except ProcessLookupError:  # it just died: auto_unmount, or clear the mount
                _clear_dead_mount(real)
            except OSError as exc:
                raise CommandError(
                    f"cannot signal the daemon (pid {pid}): {exc.strerror}"
                ) from None
        else:
            if has_state:
                _save_through_mount(mountpoint, real, record, unmounting=True)
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


def _save_through_mount(
    mountpoint: str, real: str, record: DaemonRecord | None, *, unmounting: bool
) -> None:
    """Have the daemon save its state file now (a write to ``machine/save``)."""
    try:
        fd = os.open(os.path.join(real, "machine", "save"), os.O_WRONLY)
        try:
            os.write(fd, b"1\n")
        finally:
            os.close(fd)
    except OSError as exc:
        target = f" to {record.state}" if record is not None and record.state else ""
        if not unmounting:
            raise CommandError(
                f"saving{target} failed: {exc.strerror} (see the daemon log)"
            ) from None
        raise CommandError(
            f"cannot unmount {mountpoint}: saving the machine{target} failed: "
            f"{exc.strerror}; it stays mounted. Fix that and run `kho-fs umount` again, or "
            f"drop the changes since the last save with `kho-fs umount --discard {mountpoint}`"
        ) from None


def umount_command(args: argparse.Namespace) -> int:
    """``kho-fs umount``: see the module docstring."""
    unmount(args.mountpoint, discard=args.discard)
    return EXIT_OK


def _kho_fs_mount(path: str) -> str:
    """The real path of the kho-fs mount ``path`` names, or CommandError (exit 3)."""
    real = resolve_mountpoint(path)
    if mount_type(real) != FSTYPE:
        raise CommandError(f"{path}: not a kho-fs mount", EXIT_MOUNTPOINT)
    return real


def status_command(args: argparse.Namespace) -> int:
    """``kho-fs status``: print the machine summary the mount serves."""
    real = _kho_fs_mount(args.mountpoint)
    try:
        text = (Path(real) / "machine" / "status").read_text("latin-1")
    except OSError as exc:
        raise CommandError(f"{args.mountpoint}: cannot read status: {exc.strerror}") from exc
    sys.stdout.write(text)
    return 0


def save_command(args: argparse.Namespace) -> int:
    """``kho-fs save``: ask the daemon to write its state file now."""
    real = _kho_fs_mount(args.mountpoint)
    if not (Path(real) / "machine" / "save").exists():
        raise CommandError(f"{args.mountpoint} was mounted without --state: nothing to save to")
    _save_through_mount(args.mountpoint, real, read_daemon_record(real), unmounting=False)
    return EXIT_OK
