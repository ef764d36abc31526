"""Helpers of the real-mount tests: run shell commands and ``kho-fs`` against a mount.

Test modules import them as ``from mount_helpers import ...`` (pytest puts this directory
on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kho_fs.testing import MountedMachine

NOBODY = 65534
BIN = Path(sys.executable).parent  # the virtualenv's bin/, where `kho-fs` lives
ENV = {k: v for k, v in os.environ.items() if k != "KHO_FS_ROOT"}
ENV["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def sh(
    m: MountedMachine, script: str, *args: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``sh -c script sh args…`` in the mountpoint (paths in scripts are relative), as
    ``user`` (via setpriv) when given."""
    command = ["sh", "-c", script, "sh", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(
        command, cwd=m.mountpoint, capture_output=True, text=True, timeout=60, env=ENV
    )


def ok(m: MountedMachine, script: str, *args: str, user: int | None = None) -> str:
    r = sh(m, script, *args, user=user)
    assert r.returncode == 0, f"{script!r} failed ({r.returncode}): {r.stderr}"
    return r.stdout


def fails(
    m: MountedMachine, script: str, message: str, *args: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    r = sh(m, script, *args, user=user)
    assert r.returncode != 0, f"{script!r} succeeded: {r.stdout}"
    assert message in r.stderr, f"{script!r}: expected {message!r}, got {r.stderr!r}"
    return r


def kho_fs(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The ``kho-fs`` command of the virtualenv, with ``KHO_FS_ROOT=root`` when given."""
    env = dict(ENV)
    if root is not None:
        env["KHO_FS_ROOT"] = str(root)
    return subprocess.run(
        ["kho-fs", *args], capture_output=True, text=True, timeout=60, env=env, cwd="/"
    )
