"""``kho-fs mount --state`` with every release, through the real CLI and shell commands.

Per release: create the machine (``--release R``, test_kho on mainline), finalize (debugfs
``out/finalize``, where the release has it; v4: ``active``), write a region, unmount
(which saves), mount the file again, then ``kho-fs kexec -l … -s`` and ``-e``: the
handover prepared before the save completes (regions revived, ``test_kho: KHO restore
succeeded``, ``in/`` files), and the machine after the kexec is saved and restored again
with its ``in/`` files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kho_fs.model.releases import KHO_NONE, KHO_V4, RELEASES
from kho_fs.testing import MountedMachine, mounted

CMDLINE = "console=ttyS0 kho=on liveupdate=on reserve_mem=4M:4096:oops test_kho.max_mem=1M"
PAYLOAD = b"bytes written before the save"
DEBUGFS = "sys/kernel/debug/kho"
SELFTEST = Path(__file__).resolve().parents[2] / "scripts" / "kho-selftest"
#: the selftest runs `kho-fs kexec`: the one of this interpreter's environment
ENV = {k: v for k, v in os.environ.items() if k != "KHO_FS_ROOT"}
ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def kho_fs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kho_fs", *args], capture_output=True, text=True, timeout=120
    )


def sh(m: MountedMachine, script: str) -> str:
    r = subprocess.run(
        ["sh", "-c", script], cwd=m.mountpoint, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, (script, r.stderr)
    return r.stdout


def status(m: MountedMachine) -> list[str]:
    """``machine/status`` without the line naming the mount's LUO socket (its path follows
    the mountpoint, which is new for every mount)."""
    lines = m.read_text("machine/status").splitlines()
    return [line for line in lines if not line.startswith("liveupdate socket:")]


def sub_fdts(m: MountedMachine, where: str) -> set[str]:
    return set(sh(m, f"ls {DEBUGFS}/{where}/sub_fdts").split())


def restore(mnt: Path, state: Path):  # type: ignore[no-untyped-def]
    return mounted(mnt, memory=None, nodes=None, extra_args=("--state", str(state)))


@pytest.mark.parametrize("release", list(RELEASES))
def test_a_saved_machine_of_every_release_hands_over_after_the_restore(
    release: str, tmp_path: Path
) -> None:
    kind = RELEASES[release].kho
    debugfs = kind not in (KHO_NONE, KHO_V4)  # 6.16 – 7.0 and the blob era (7.2)
    finalize = debugfs and RELEASES[release].has_finalize
    state, mnt, image = tmp_path / "m.state", tmp_path / "mnt", tmp_path / "Image"
    mnt.mkdir()
    image.write_bytes(b"\x90" * 8192)
    create = ["--state", str(state), "--create", "--release", release]
    if debugfs:
        create += ["--driver", "test_kho"]
    with mounted(mnt, memory="1G", nodes=2, cmdline=CMDLINE, extra_args=create) as m:
        if finalize:
            sh(m, f"printf '1\\0' > {DEBUGFS}/out/finalize")
        elif kind == KHO_V4:
            sh(m, "echo 1 > sys/kernel/kho/active")
        sh(m, f"printf '{PAYLOAD.decode()}' | dd of=machine/reserve_mem/oops conv=notrunc")
        before = status(m)
    assert state.exists()  # the unmount saved it

    with restore(mnt, state) as m:
        assert RELEASES[release].uts_release in m.read_text("proc/version")
        assert status(m) == before
        assert m.read_bytes("machine/reserve_mem/oops")[: len(PAYLOAD)] == PAYLOAD
        if debugfs:
            if finalize:
                assert m.read_text(f"{DEBUGFS}/out/finalize") == "1\n"
            assert {"kho_test", "memblock"} <= sub_fdts(m, "out")
            assert m.read_bytes(f"{DEBUGFS}/out/fdt")[:4] == b"\xd0\x0d\xfe\xed"
        elif kind == KHO_V4:
            assert m.read_text("sys/kernel/kho/active") == "1\n"
        root = str(m.mountpoint)
        load = kho_fs("kexec", "--root", root, "-l", str(image), "-s", "--reuse-cmdline")
        assert load.returncode == 0, load.stderr
        boot = kho_fs("kexec", "--root", root, "-e")
        assert boot.returncode == 0, boot.stderr
        dmesg = m.read_text("machine/dmesg")
        assert "generation:  1 kexec(s)" in m.read_text("machine/status")
        if debugfs:
            assert "test_kho: KHO restore succeeded" in dmesg, dmesg
            assert "Revived memory reservation 'oops' from KHO" in dmesg, dmesg
            incoming = sub_fdts(m, "in")
            assert {"kho_test", "memblock"} <= incoming
            in_fdt = m.read_bytes(f"{DEBUGFS}/in/fdt")
            assert in_fdt[:4] == b"\xd0\x0d\xfe\xed"
        elif kind == KHO_V4:
            assert "Revived memory reservation 'oops' from KHO" in dmesg, dmesg
            assert m.read_bytes("sys/firmware/kho/dt_fw")[:4] == b"\xd0\x0d\xfe\xed"
        else:  # 6.12: no KHO, the region is allocated afresh
            assert "Revived" not in dmesg
        if kind != KHO_NONE:
            assert m.read_bytes("machine/reserve_mem/oops")[: len(PAYLOAD)] == PAYLOAD
        after = status(m)

    with restore(mnt, state) as m:  # the machine after the kexec came back too
        assert status(m) == after
        assert m.read_text("machine/dmesg") == dmesg
        if debugfs:
            assert m.read_bytes(f"{DEBUGFS}/in/fdt") == in_fdt
            assert sub_fdts(m, "in") == incoming


@pytest.mark.parametrize("release", ["6.16", "6.18", "6.19"])
def test_the_kernel_selftest_passes_on_a_restored_machine(release: str, tmp_path: Path) -> None:
    """scripts/kho-selftest against a machine that was saved right after its boot."""
    state, mnt = tmp_path / "m.state", tmp_path / "mnt"
    mnt.mkdir()
    create = ("--state", str(state), "--create", "--release", release, "--driver", "test_kho")
    with mounted(mnt, memory="1G", cmdline="console=ttyS0 kho=on", extra_args=create):
        pass
    with restore(mnt, state) as m:
        r = subprocess.run(
            [str(SELFTEST), str(m.mountpoint)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "option", [("--release", "6.19"), ("--release", "v4"), ("--driver", "test_kho")]
)
def test_release_and_driver_with_an_existing_state_file_are_usage_errors(
    option: tuple[str, str], tmp_path: Path
) -> None:
    state, mnt, empty = tmp_path / "m.state", tmp_path / "mnt", tmp_path / "empty"
    mnt.mkdir()
    empty.mkdir()
    with mounted(mnt, memory="1G", extra_args=("--state", str(state), "--create")):
        pass
    r = kho_fs("mount", str(empty), "--state", str(state), *option)
    assert r.returncode == 2, r.stderr
    assert "the state file already describes the machine" in r.stderr
    assert "--release/--driver" in r.stderr and r.stderr.count("\n") == 1
