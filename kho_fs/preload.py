"""The ``/dev/liveupdate`` preload library and ``kho-fs run`` (docs/luo.md).

``csrc/liveupdate_preload.c`` makes ``open("/dev/liveupdate")`` and the LUO ioctls of
unmodified programs (C, Rust, Go through libc) talk to a kho-fs daemon. ``scripts/setup``
builds it into ``build/liveupdate_preload.so``; :func:`library_path` rebuilds it when the
source is newer, so a fresh clone works too (gcc is required: without it the build fails
with the reason -- it is never silently skipped).

``kho-fs run [--root MP] -- COMMAND…`` runs COMMAND with the library preloaded and the
machine's socket in ``$KHO_FS_LIVEUPDATE``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from kho_fs import luo_wire as wire
from kho_fs.cli import EXIT_USAGE, CommandError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "liveupdate_preload.c"
LIBRARY = ROOT / "build" / "liveupdate_preload.so"
CFLAGS = ["-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC"]
LIBS = ["-ldl", "-pthread"]


class BuildError(RuntimeError):
    """The preload library cannot be built (no gcc, or the compiler failed)."""


def build(output: Path = LIBRARY, *, force: bool = False) -> Path:
    """Compile the preload library into ``output`` unless it is newer than the source."""
    if not force and output.exists() and output.stat().st_mtime >= SOURCE.stat().st_mtime:
        return output
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BuildError(
            "cannot build the liveupdate preload library: no gcc (scripts/setup installs it)"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=output.name, suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [cc, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise BuildError(f"building {SOURCE.name} failed:\n{result.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def library_path() -> Path:
    """The built library (built now if missing or stale)."""
    return build()


def daemon_pid(path: str) -> int:
    """The pid of the daemon serving the socket ``path`` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.connect(path)
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[:4], sys.byteorder, signed=True)


def run_command(args: argparse.Namespace) -> int:
    """``kho-fs run``: exec COMMAND with the preload library and the socket."""
    from kho_fs.liveupdate import socket_path

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CommandError("run: no command given (kho-fs run [--root MP] -- COMMAND…)", EXIT_USAGE)
    root = args.root or os.environ.get("KHO_FS_ROOT")
    if not root:
        raise CommandError("run: no machine: give --root MOUNTPOINT or set KHO_FS_ROOT", EXIT_USAGE)
    try:
        path = socket_path(root)
        pid = daemon_pid(path)
    except OSError as exc:
        raise CommandError(f"run: {root}: no liveupdate socket ({exc.strerror})") from None
    try:
        lib = library_path()
    except BuildError as exc:
        raise CommandError(str(exc)) from None
    env = dict(os.environ)
    env[wire.ENV_SOCKET] = path
    env[wire.ENV_PID] = str(pid)
    env["KHO_FS_ROOT"] = os.path.realpath(root)
    preload = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{lib} {preload}".strip()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"kho-fs: run: {command[0]}: command not found", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"kho-fs: run: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    return 0  # not reached


if __name__ == "__main__":  # scripts/setup: python -m kho_fs.preload
    try:
        print(build())
    except BuildError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        sys.exit(1)
