"""Mainline releases through a real mount: the debugfs tree (spec kho-mainline.md §2, §14)
and the kernel's KHO selftest as a shell script (§11), driven by sh, cat, printf, dtc,
fdtget, stat and kho-fs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mount_helpers import ENV, ok, sh

from kho_fs.testing import MountedMachine, mounted

ROOT = Path(__file__).resolve().parents[2]
MAINLINE = ["6.16", "6.17", "6.18", "6.19", "7.0"]
SELFTEST_CMDLINE = "console=ttyS0 kho=on panic=-1"
K = "sys/kernel/debug/kho"


def selftest(m: MountedMachine) -> subprocess.CompletedProcess[str]:
    """``scripts/kho-selftest`` against the mount."""
    return subprocess.run(
        [str(ROOT / "scripts/kho-selftest"), str(m.mountpoint)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )


@pytest.mark.parametrize("release", MAINLINE)
def test_kernel_selftest_script_passes(tmp_path: Path, release: str) -> None:
    with mounted(
        tmp_path,
        memory="1G",
        cmdline=SELFTEST_CMDLINE,
        extra_args=["--release", release, "--driver", "test_kho"],
    ) as m:
        r = selftest(m)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.rstrip().endswith("PASS")
        assert "test_kho: KHO restore succeeded" in m.read_bytes("machine/dmesg").decode()


def test_selftest_script_fails_without_test_kho(tmp_path: Path) -> None:
    with mounted(
        tmp_path, memory="1G", cmdline=SELFTEST_CMDLINE, extra_args=["--release", "6.19"]
    ) as m:
        r = selftest(m)
        assert r.returncode == 1 and "FAIL: no out/sub_fdts/kho_test" in r.stdout


@pytest.mark.parametrize("release", ["6.16", "6.19"])
def test_debugfs_tree_modes_and_interfaces(tmp_path: Path, release: str) -> None:
    cmd = "console=ttyS0 kho=on reserve_mem=16M:4096:oops"
    with mounted(tmp_path, memory="2G", cmdline=cmd, extra_args=["--release", release]) as m:
        listing = ok(
            m, f"stat -c '%A %s %n' {K}/out/finalize {K}/out/scratch_phys {K}/out/scratch_len"
        )
        assert listing.splitlines() == [
            f"-rw------- 0 {K}/out/finalize",
            f"-r-------- 0 {K}/out/scratch_phys",
            f"-r-------- 0 {K}/out/scratch_len",
        ]
        assert ok(m, f"stat -c %A {K} {K}/out {K}/out/sub_fdts").split() == ["drwxr-xr-x"] * 3
        assert not (m.mountpoint / "sys/kernel/kho").exists()  # no v4 sysfs under mainline
        assert ok(m, "cat proc/version").startswith(f"Linux version {release}.0 ")
        assert ok(m, f"cat {K}/out/finalize") == "0\n"
        # seq files have no write handler: EINVAL even for root
        r = sh(m, f"printf 1 | dd of={K}/out/scratch_phys 2>&1")
        assert r.returncode != 0 and "Invalid argument" in r.stdout
        ok(m, f"printf '1\\0' > {K}/out/finalize")
        assert ok(m, f"cat {K}/out/finalize") == "1\n"
        dts = ok(m, f"dtc -I dtb -O dts {K}/out/fdt 2>/dev/null || true")
        if release == "6.16":
            assert 'compatible = "kho-v1";' in dts and "memblock {" in dts
            assert ok(m, f"fdtget -t s {K}/out/sub_fdts/memblock / compatible") == "memblock-v1\n"
            assert ok(m, f"fdtget -t x {K}/out/fdt /memblock fdt").strip()
            # abort: blobs disappear; an open descriptor then reads EIO
            r = sh(m, f"exec 3< {K}/out/fdt; printf 0 > {K}/out/finalize; cat <&3")
            assert r.returncode != 0 and "Input/output error" in r.stderr
            assert not (m.mountpoint / K / "out/fdt").exists()
            ok(m, f"printf 1 > {K}/out/finalize")
        else:
            # out/fdt keeps its first size (152 bytes), truncated after subtrees were added
            assert len(m.read_bytes(f"{K}/out/fdt")) == 152
            r = sh(m, f"printf 0 | dd of={K}/out/finalize 2>&1")
            assert r.returncode != 0 and "Invalid argument" in r.stdout
        region = m.mountpoint / "machine/reserve_mem/oops"
        ok(m, "printf 'kept bytes' | dd of=machine/reserve_mem/oops conv=notrunc 2>/dev/null")
        subprocess.run(
            ["kho-fs", "kexec", "-l", "/bin/sh", "-s", "--reuse-cmdline"],
            check=True,
            env={**ENV, "KHO_FS_ROOT": str(m.mountpoint)},
            timeout=60,
        )
        subprocess.run(
            ["kho-fs", "kexec", "-e"],
            check=True,
            env={**ENV, "KHO_FS_ROOT": str(m.mountpoint)},
            timeout=60,
        )
        assert "Revived memory reservation 'oops' from KHO" in ok(m, "cat machine/dmesg")
        assert region.read_bytes()[:10] == b"kept bytes"
        assert ok(m, f"ls {K}/in/sub_fdts").split() == ["memblock"]
        assert ok(m, f"fdtget -t s {K}/in/fdt / compatible") == "kho-v1\n"
        # a handover boot: 6.16 is not finalized yet, 6.19 creates no out/fdt (spec §2.1)
        assert not (m.mountpoint / K / "out/fdt").exists()
