"""Persistence: a saved machine comes back whole; bad files are refused with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kho_fs.model.machine import Machine
from kho_fs.model.memblock import memblock_debug_show
from kho_fs.state import StateError, load_machine, save_machine
from kho_fs.testing import mounted

CMDLINE = "reserve_mem=16M:4096:oops kho=on kho_example.size=1M"


@pytest.fixture
def machine() -> Machine:
    m = Machine.create(8 << 30, 2, CMDLINE)
    yield m
    m.close()


def _saved(m: Machine, tmp_path: Path) -> Path:
    path = tmp_path / "machine.state"
    save_machine(m, path)
    return path


def test_round_trip_keeps_ram_memblock_kho_and_log(machine: Machine, tmp_path: Path) -> None:
    region = machine.region("oops")
    assert region is not None
    payload = os.urandom(region.size)
    machine.mem.write(region.start, payload)
    k = machine.kernel
    k.kho.active_store(b"1")
    k.kexec.kexec_file_load(b"K" * 5000, b"I" * 300, k.cmdline)
    restored = load_machine(_saved(machine, tmp_path))
    try:
        r = restored.kernel
        assert restored.mem.read(region.start, region.size) == payload
        assert r.kho.fdt == k.kho.fdt and r.kho.active
        for name in ("memory", "reserved"):
            assert memblock_debug_show(getattr(r.memblock, name)) == memblock_debug_show(
                getattr(k.memblock, name)
            )
        assert r.log.lines() == k.log.lines()
        assert r.kexec.kexec_loaded_show() == "1\n"
        assert restored.generation == machine.generation and restored.boots == machine.boots
        # The restored machine carries on: exec hands the region over intact.
        restored.kexec_exec()
        assert restored.region("oops") == region
        assert restored.mem.read(region.start, region.size) == payload
        assert "Revived memory reservation 'oops' from KHO" in restored.kernel.log.lines()
        assert restored.kernel.drivers[0].regions()  # the example driver came back too
    finally:
        restored.close()


def test_restored_log_keeps_growing_monotonically(machine: Machine, tmp_path: Path) -> None:
    restored = load_machine(_saved(machine, tmp_path))
    try:
        last = restored.kernel.log.records[-1].usec
        restored.kernel.printk("after restore")
        assert restored.kernel.log.records[-1].usec > last
    finally:
        restored.close()


def test_only_written_ram_is_stored(tmp_path: Path) -> None:
    with Machine.create(64 << 30, 1, "reserve_mem=64M:4096:big kho=on") as m:
        region = m.region("big")
        assert region is not None
        m.mem.write(region.start, b"\xa5" * (8 << 20))
        size = save_machine(m, tmp_path / "s")
    assert 8 << 20 <= size < 12 << 20


def test_state_file_is_private_and_replaced_atomically(machine: Machine, tmp_path: Path) -> None:
    path = _saved(machine, tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    save_machine(machine, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["machine.state"]  # no temp left


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:], "corrupted"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (lambda d: b"ELF\x7f" + d[4:], "not a kho-fs state file"),
        (lambda d: d[:8] + b"\x09\x00\x00\x00" + d[12:], "format 9 is not supported"),
        (lambda d: b"", "too short"),
    ],
)
def test_bad_files_give_a_reason(machine: Machine, tmp_path: Path, mangle, reason: str) -> None:
    path = _saved(machine, tmp_path)
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(StateError, match=reason):
        load_machine(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="No such file"):
        load_machine(tmp_path / "absent")


def _kho_fs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kho_fs", *args], capture_output=True, text=True, timeout=120
    )


def test_mount_state_create_save_and_restore(tmp_path: Path) -> None:
    state = tmp_path / "m.state"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = _kho_fs("mount", str(empty), "--state", str(state))
    assert refused.returncode == 2 and "--create" in refused.stderr
    extra = ("--state", str(state), "--create")
    with mounted(
        mnt, memory="4G", cmdline="reserve_mem=1M:4096:oops kho=on", extra_args=extra
    ) as m:
        root = m.path("")
        subprocess.run(
            [
                "sh",
                "-c",
                f"printf saved-bytes | dd of={root}/machine/reserve_mem/oops conv=notrunc",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(["sh", "-c", f"echo 1 > {root}/sys/kernel/kho/active"], check=True)
        assert _kho_fs("save", str(root)).returncode == 0
        assert state.exists()
    # unmount saved it again; now restore without machine options
    with mounted(mnt, memory=None, nodes=None, extra_args=("--state", str(state))) as m:
        assert m.read_bytes("machine/reserve_mem/oops")[:11] == b"saved-bytes"
        assert m.read_text("sys/kernel/kho/active") == "1\n"
        assert m.path("sys/kernel/kho/dt").stat().st_size == 239


def test_mount_state_with_region_names_that_are_no_file_names(tmp_path: Path) -> None:
    """Issue 8: a saved machine whose regions are named ``..``, ``a/b``, ``é`` or
    non-UTF-8 bytes mounts again with every region under its spelling (README: ``%`` and
    ``/`` percent-escaped, whole ``.``/``..`` as ``%2E``/``%2E%2E``, other bytes as they
    are) -- it used to make every later mount of the state file fail with EIO."""
    spellings = [(b"..", b"%2E%2E"), (b"a/b", b"a%2Fb"), (b"\xc3\xa9", b"\xc3\xa9"),
                 (b"x\xffy", b"x\xffy")]  # fmt: skip
    cmdline = b"kho=on " + b" ".join(b"reserve_mem=1M:4096:" + n for n, _ in spellings)
    state = tmp_path / "names.state"
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def sh(m, script: str, *args: bytes) -> bytes:
        r = subprocess.run(
            ["sh", "-c", script, "sh", *args], cwd=m.mountpoint, capture_output=True, timeout=60
        )
        assert r.returncode == 0, (script, args, r.stderr)
        return r.stdout

    def ls(m) -> list[bytes]:
        return sh(m, "ls machine/reserve_mem").splitlines()

    extra = ("--state", str(state), "--create")
    with mounted(mnt, memory="4G", cmdline="kho=on", extra_args=extra) as m:
        # The way in: a new firmware command line and a reboot, by shell.
        sh(m, 'printf "%s\\n" "$1" > machine/cmdline && echo x > machine/reboot', cmdline)
        assert sorted(ls(m)) == sorted(s for _, s in spellings)
        for i, (_, spelled) in enumerate(spellings):
            path = b"machine/reserve_mem/" + spelled
            sh(m, 'printf "%s" "$2" | dd of="$1" conv=notrunc 2>/dev/null', path, b"keep-%d" % i)
        assert _kho_fs("save", str(m.mountpoint)).returncode == 0
    for _ in range(2):  # restored, unmounted (saved again), restored again
        with mounted(mnt, memory=None, nodes=None, extra_args=("--state", str(state))) as m:
            assert m.read_bytes("proc/cmdline") == cmdline + b"\n"
            assert sorted(ls(m)) == sorted(s for _, s in spellings)
            for i, (_, spelled) in enumerate(spellings):
                path = b"machine/reserve_mem/" + spelled
                assert sh(m, 'head -c 6 "$1"', path) == b"keep-%d" % i
            assert sh(m, "cat machine/cmdline") == cmdline + b"\n"


def test_mount_refuses_corrupt_state_without_mounting(tmp_path: Path) -> None:
    state = tmp_path / "bad.state"
    state.write_bytes(b"KHOFS-ST" + b"\0" * 100)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = _kho_fs("mount", str(mnt), "--state", str(state))
    assert result.returncode == 1
    assert "cannot restore" in result.stderr
    assert not os.path.ismount(mnt)


def test_save_without_state_is_a_clear_error(tmp_path: Path) -> None:
    with mounted(tmp_path) as m:
        result = _kho_fs("save", str(m.path("")))
        assert result.returncode == 1 and "without --state" in result.stderr
