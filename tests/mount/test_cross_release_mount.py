"""Cross-release kexec through a real mount (issue 10): images made by ``kho-fs mkimage``,
loaded with ``kho-fs kexec`` and the staging files, checked with cat, ls, file and dd."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mount_helpers import ENV, kho_fs, ok

from kho_fs.testing import mounted

CMD = "console=ttyS0 kho=on reserve_mem=16M:4096:oops"
V4 = "sys/kernel/kho"
DBG = "sys/kernel/debug/kho"


def test_mkimage_is_a_bzimage_for_file(tmp_path: Path) -> None:
    out = tmp_path / "vmlinuz-6.19"
    r = kho_fs("mkimage", "--release", "6.19", "--size", "2M", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == 2 << 20
    described = subprocess.run(["file", str(out)], capture_output=True, text=True).stdout
    assert "Linux kernel x86 boot executable bzImage, version 6.19.0 " in described
    bad = kho_fs("mkimage", "--release", "6.15", "-o", str(out))
    assert bad.returncode == 2 and "valid: 6.12, v4, 6.16" in bad.stderr


def test_a_chain_of_kexecs_across_releases(tmp_path: Path) -> None:
    images = {}
    for name in ["7.0", "6.17", "6.12"]:
        images[name] = tmp_path / f"vmlinuz-{name}"
        assert kho_fs("mkimage", "--release", name, "-o", str(images[name])).returncode == 0
    with mounted(tmp_path, memory="2G", cmdline=CMD) as m:
        root = {"KHO_FS_ROOT": str(m.mountpoint)}

        def kexec(*args: str) -> None:
            r = subprocess.run(
                ["kho-fs", "kexec", *args], capture_output=True, text=True, env={**ENV, **root}
            )
            assert r.returncode == 0, r.stderr

        # v4: activate, then a KHO kexec into 7.0 (a mainline kernel: it finds no
        # preserved-memory map in the v4 FDT and refuses the handover, spec §13)
        ok(m, "printf 'v4 bytes' | dd of=machine/reserve_mem/oops conv=notrunc 2>/dev/null")
        ok(m, f"echo 1 > {V4}/active")
        kexec("-l", str(images["7.0"]), "-s", "--reuse-cmdline")
        assert "next kernel: 7.0 (7.0.0)" in ok(m, "cat machine/status")
        kexec("-e")
        assert ok(m, "cat proc/version").startswith("Linux version 7.0.0 ")
        dmesg = ok(m, "cat machine/dmesg")
        assert "KHO: disabling KHO revival: -2" in dmesg
        assert not (m.mountpoint / V4).exists() and (m.mountpoint / DBG / "out").is_dir()
        assert not (m.mountpoint / DBG / "in").exists()

        # 7.0 → 6.17 through the staging files: the handover is accepted and the region
        # revived at its old address with its bytes
        ok(m, "printf '7.0 bytes' | dd of=machine/reserve_mem/oops conv=notrunc 2>/dev/null")
        start = ok(m, "grep '^reserve_mem: oops' machine/status").split()[2]
        ok(m, f"printf 1 > {DBG}/out/finalize")
        ok(m, f"cat {images['6.17']} > machine/kexec/kernel")
        ok(m, "cat proc/cmdline > machine/kexec/cmdline")
        ok(m, "echo kexec_file_load > machine/kexec/control")
        ok(m, "echo exec > machine/kexec/control")
        assert ok(m, "cat proc/version").startswith("Linux version 6.17.0 ")
        assert "Revived memory reservation 'oops' from KHO" in ok(m, "cat machine/dmesg")
        assert ok(m, "grep '^reserve_mem: oops' machine/status").split()[2] == start
        assert ok(m, "head -c 9 machine/reserve_mem/oops") == "7.0 bytes"
        assert ok(m, f"ls {DBG}/in/sub_fdts").split() == ["memblock"]

        # 6.17 → 6.12: a kernel without KHO ignores the handover; the preserved memory
        # is ordinary free memory to it
        ok(m, f"printf 1 > {DBG}/out/finalize")
        kexec("-l", str(images["6.12"]), "-s", "--reuse-cmdline")
        kexec("-e")
        assert ok(m, "cat proc/version").startswith("Linux version 6.12.0 ")
        dmesg = ok(m, "cat machine/dmesg")
        assert 'Unknown kernel command line parameters "kho=on"' in dmesg
        assert "Revived" not in dmesg and not (m.mountpoint / DBG).exists()
        assert (m.mountpoint / "machine/reserve_mem/oops").exists()

        # 6.12 → v4 with an image of no known header: the running release boots again
        kexec("-l", "/bin/sh", "-s", "--reuse-cmdline")
        kexec("-e")
        assert ok(m, "cat proc/version").startswith("Linux version 6.12.0 ")
        assert "release:     6.12 (6.12.0)" in ok(m, "cat machine/status")
