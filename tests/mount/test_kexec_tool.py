"""``kho-fs kexec`` and ``machine/kexec/`` on real mounts, as kexec-tools users meet them.

Issue 8 ("Hardening the v4 emulator"): the ``-a`` fallback, a kernel that stopped at boot,
``kexec_file_load`` flags and ``-d``, ``--reuse-cmdline`` verbatim, placement across NUMA
node boundaries, a failed load that leaves the staging files alone, ``kho-fs status``
after a ``kho=off`` handover, option order, usage exit codes and short staging writes.
Expected values come from kexec-tools' ``kexec/kexec.c`` and
``kexec/arch/x86_64/kexec-bzImage64.c``, the kernel's ``kernel/kexec_file.c`` and
``arch/x86/kernel/kexec-bzimage64.c`` (v6.14) and the spec, never from the model.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
from mount_helpers import fails, kho_fs, ok, sh

from kho_fs.kexec_tool import reused_command_line
from kho_fs.testing import MountedMachine, mounted

KHO = "sys/kernel/kho"
LOADED = "sys/kernel/kexec_loaded"
KEXEC = "machine/kexec"
SZ_1M = 1 << 20
SZ_2M = 2 << 20
PANIC_LINE = "kho-fs: early allocation failed in scratch-only mode"


def kexec(m: MountedMachine, *args: str) -> None:
    r = kho_fs("kexec", *args, root=m.mountpoint)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), f"kexec {args}: {r.stderr}"


def activate(m: MountedMachine) -> None:
    ok(m, f"echo 1 > {KHO}/active")


def dmesg(m: MountedMachine) -> list[str]:
    return [line.split("] ", 1)[1] for line in ok(m, "cat machine/dmesg").splitlines()]


def status_line(m: MountedMachine, field: str) -> str:
    r = kho_fs("status", str(m.mountpoint))
    assert r.returncode == 0, r.stderr
    return next(line for line in r.stdout.splitlines() if line.startswith(field + ":"))


def staged(m: MountedMachine) -> dict[str, bytes]:
    return {name: m.read_bytes(f"{KEXEC}/{name}") for name in ("kernel", "initrd", "cmdline")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")

    def make(name: str, size: int) -> Path:
        data = bytearray(os.urandom(size))
        data[0x202:0x206] = b"\0\0\0\0"  # never "HdrS": the file is its own segment
        (d / name).write_bytes(data)
        return d / name

    huge = d / "huge"
    with open(huge, "wb") as f:  # sparse: one byte more than a staging file holds
        f.truncate((1 << 30) + 1)
    big300 = d / "big300"
    with open(big300, "wb") as f:
        f.truncate(300 << 20)
    return {
        "image": make("image", 64 << 10),
        "other": make("other", 96 << 10),
        "big": make("big", 16 << 20),
        "initrd": make("initrd", 100_000),
        "huge": huge,
        "big300": big300,
    }


# -- item 4: -a falls back only when the file load is unsupported ------------------------------


def test_auto_falls_back_only_for_unsupported_file_loads(tmp_path, files):
    """kexec-tools' do_kexec_file_load: ENOSYS, EINVAL, ENOEXEC and ENOTSUP mean "try
    kexec_load"; any other errno is reported and nothing is loaded (exit 255)."""
    with mounted(tmp_path, memory="16G", cmdline="kho=on kho_scratch=2M,2M") as m:
        activate(m)
        r = kho_fs("kexec", "-a", "-l", str(files["big"]), "--reuse-cmdline", root=m.mountpoint)
        assert (r.returncode, r.stdout) == (255, "")
        assert r.stderr == "kexec_file_load failed: Cannot assign requested address\n"
        assert ok(m, f"cat {LOADED}") == "0\n"
        assert status_line(m, "kexec") == "kexec:       nothing loaded"
        # An empty file is no kernel (ENOEXEC): -a tries kexec_load, which refuses it too.
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        r = kho_fs("kexec", "-a", "-l", str(empty), root=m.mountpoint)
        assert (r.returncode, r.stderr) == (255, "kexec_load failed: Exec format error\n")
        # A file load that works is used as it is, with the KHO data.
        kexec(m, "-a", "-l", str(files["image"]), "--reuse-cmdline")
        assert status_line(m, "kexec") == "kexec:       loaded with KHO data"


# -- item 5: a kernel that stopped at boot runs no syscalls ------------------------------------


def test_stopped_kernel_refuses_loads_and_exec(tmp_path, files):
    with mounted(tmp_path, memory="16G", cmdline="kho=on kho_scratch=2M,2M") as m:
        activate(m)
        kexec(m, "-l", str(files["image"]), "-s", "--reuse-cmdline")
        kexec(m, "-e")  # the handover boot cannot fit its page tables into 2 MiB areas
        assert status_line(m, "state") == f"state:       PANICKED: {PANIC_LINE}"
        assert not os.path.exists(m.path("sys"))
        for command in ("kexec_file_load", "kexec_load", "unload", "exec"):
            fails(m, f"/bin/echo {command} > {KEXEC}/control", "Host is down")
        for args in (["-l", str(files["image"]), "-s"], ["-l", str(files["image"])], ["-e"]):
            r = kho_fs("kexec", *args, root=m.mountpoint)
            assert r.returncode == 255, (args, r.stderr)
            first, hint = r.stderr.splitlines()
            assert first.endswith(" failed: Host is down"), r.stderr
            assert "stopped at boot" in hint and "machine/reboot" in hint, r.stderr
        r = kho_fs("kexec", "-u", root=m.mountpoint)
        assert r.returncode == 255 and "Host is down" in r.stderr
        assert status_line(m, "state") == f"state:       PANICKED: {PANIC_LINE}"
        assert "generation:  1 " in status_line(m, "generation")
        ok(m, "echo 1 > machine/reboot")  # the only way out
        assert status_line(m, "state") == "state:       running"
        kexec(m, "-l", str(files["image"]), "-s", "--reuse-cmdline")


# -- item 7: kexec_file_load flags, -d -------------------------------------------------------


def test_crash_flag_combinations_leave_the_normal_image(tmp_path, files):
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        kexec(m, "-l", str(files["image"]), "-s", "--command-line=first")
        # KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH targets the (empty) crash slot.
        ok(m, f"/bin/echo 'kexec_file_load 0x3' > {KEXEC}/control")
        assert ok(m, f"cat {LOADED}") == "1\n"
        for flags in ("0x2", "0x6", "0xa"):
            fails(m, f"/bin/echo 'kexec_file_load {flags}' > {KEXEC}/control", "not supported")
            assert ok(m, f"cat {LOADED}") == "1\n"
        fails(m, f"/bin/echo 'kexec_file_load 0x10' > {KEXEC}/control", "Invalid argument")
        kexec(m, "-e")
        assert ok(m, "cat proc/cmdline") == "first\n"


def debug_lines(log: list[str]) -> list[str]:
    return [line for line in log if line.startswith(("kexec_file: ", "kexec-bzImage64: "))]


P = "[0-9a-f]{16}"  # a hashed %p


def test_debug_flag_through_control_logs_the_load(tmp_path, files):
    """KEXEC_FILE_DEBUG (0x8, valid since v6.7) makes the load print its kexec_dprintk
    lines; 16 GiB and inactive, so segments go top-down from 18 GiB (spec 9.2, 9.1)."""
    with mounted(tmp_path, memory="16G", cmdline="kho=on") as m:
        ok(m, f'cat "$1" > {KEXEC}/kernel', str(files["image"]))
        ok(m, f"printf 'console=ttyS0 quiet' > {KEXEC}/cmdline")
        ok(m, f"/bin/echo kexec_file_load > {KEXEC}/control")
        assert debug_lines(dmesg(m)) == []
        ok(m, f"/bin/echo 'kexec_file_load 0x8' > {KEXEC}/control")
        assert ok(m, f"cat {LOADED}") == "1\n"
        top = 18 << 30
        want = [
            f"kexec_file: kernel: {P} kernel_size: 0x10000",
            f"kexec-bzImage64: Loaded purgatory at {top - 0x4000:#x}",
            "kexec-bzImage64: Loaded boot_param, command line and misc at "
            f"{top - 0x6000:#x} bufsz=0x2000 memsz=0x2000",
            f"kexec-bzImage64: Loaded 64bit kernel at {top - SZ_2M:#x} bufsz=0x10000 memsz=0x10000",
            "kexec-bzImage64: Final command line is: console=ttyS0 quiet",
            "kexec-bzImage64: E820 memmap:",
            r"kexec-bzImage64: 0000000000000000-000000000009efff \(1\)",
            r"kexec-bzImage64: 0000000000100000-000000007fffffff \(1\)",
            r"kexec-bzImage64: 0000000100000000-000000047fffffff \(1\)",
            "kexec_file: nr_segments = 3",
            rf"kexec_file: segment\[0\]: buf=0x{P} bufsz=0x11 mem={top - 0x4000:#x} memsz=0x4000",
            rf"kexec_file: segment\[1\]: buf=0x{P} bufsz=0x2000 mem={top - 0x6000:#x} memsz=0x2000",
            rf"kexec_file: segment\[2\]: buf=0x{P} bufsz=0x10000 mem={top - SZ_2M:#x} "
            "memsz=0x10000",
            f"kexec_file: kexec_file_load: type:0, start:{top - 0x4000:#x} head:0x0 flags:0x8",
        ]
        got = debug_lines(dmesg(m))
        assert len(got) == len(want), got
        for line, pattern in zip(got, want, strict=True):
            assert re.fullmatch(pattern, line), (line, pattern)


def test_kexec_d_sets_the_debug_flag_and_says_what_it_does(tmp_path, files):
    with mounted(tmp_path, memory="16G", cmdline="kho=on") as m:
        image, initrd = files["image"], files["initrd"]
        r = kho_fs(
            "kexec",
            "-d",
            "-l",
            str(image),
            "-s",
            f"--initrd={initrd}",
            "--command-line=a=1",
            root=m.mountpoint,
        )
        assert r.returncode == 0 and r.stdout == "", r.stderr
        said = r.stderr.splitlines()
        assert f"kernel: {image} kernel_size: 0x10000" in said
        assert f"initrd: {initrd} initrd_size: 0x186a0" in said
        assert 'command line: "a=1"' in said
        assert "kexec_file_load: flags 0x8" in said  # an initrd: no KEXEC_FILE_NO_INITRAMFS
        got = debug_lines(dmesg(m))
        assert got[-1].endswith(" flags:0x8") and "kexec_file: nr_segments = 4" in got
        assert "kexec-bzImage64: Final command line is: a=1" in got
        r = kho_fs("kexec", "-d", "-l", str(image), "-s", root=m.mountpoint)
        assert r.returncode == 0 and "kexec_file_load: flags 0xc" in r.stderr.splitlines()
        assert debug_lines(dmesg(m))[-1].endswith(" flags:0xc")
        assert "initrd: none" in r.stderr.splitlines()
        r = kho_fs("kexec", "-d", "-e", root=m.mountpoint)
        assert r.returncode == 0 and r.stderr.splitlines() == ["exec"]
        r = kho_fs("kexec", "-l", str(image), "-s", root=m.mountpoint)  # without -d: silent
        assert (r.returncode, r.stderr) == (0, "")
        assert debug_lines(dmesg(m)) == []


# -- item 8: --reuse-cmdline reuses the command line verbatim -----------------------------------


@pytest.mark.parametrize(
    ("running", "reused"),
    [
        ("BOOT_IMAGE=/vmlinuz root=/dev/vda ro", "root=/dev/vda ro"),
        ("root=/dev/vda BOOT_IMAGE=/vmlinuz ro", "root=/dev/vda ro"),
        ("root=/dev/vda BOOT_IMAGE=/vmlinuz", "root=/dev/vda "),  # the space before stays
        ("BOOT_IMAGE=/vmlinuz", ""),
        ("xBOOT_IMAGE=1 BOOT_IMAGE=2 a", "xBOOT_IMAGE=1 BOOT_IMAGE=2 a"),  # first hit only
        ("a BOOT_IMAGE=1 BOOT_IMAGE=2", "a BOOT_IMAGE=2"),
        ("a\tBOOT_IMAGE=1 b", "a\tb"),
        ("a BOOT_IMAGEX=1 b", "a b"),  # a prefix match, as strstr finds it
        ('crashkernel=256M  x="a  b"  ', 'crashkernel=256M  x="a  b"  '),
        ("a b\nc", "a b"),  # get_command_line stops at the first newline
    ],
)
def test_reused_command_line_is_kexec_tools_get_command_line(running, reused):
    """kexec-tools' get_command_line(): /proc/cmdline without its last byte, cut at the
    first CR or LF, minus the first BOOT_IMAGE parameter (remove_parameter); crashkernel=
    is dropped only for crash kernels (-p)."""
    assert reused_command_line((running + "\n").encode()) == reused.encode()


def test_reuse_cmdline_keeps_quoted_spaces_and_revives_the_region(tmp_path, files):
    cold = (
        'BOOT_IMAGE=/boot/vmlinuz console=ttyS0  reserve_mem="16M:4096:a  b" crashkernel=256M'
        " kho=on"
    )
    with mounted(tmp_path, memory="16G", cmdline=cold) as m:
        region = "machine/reserve_mem/a  b"
        ok(m, f'printf hello | dd of="{region}" conv=notrunc status=none')
        activate(m)
        kexec(m, "-l", str(files["image"]), "-s", "--reuse-cmdline")
        assert m.read_bytes(f"{KEXEC}/cmdline").rstrip(b"\0") == cold.split(" ", 1)[1].encode()
        kexec(m, "-e")
        assert ok(m, "cat proc/cmdline") == cold.split(" ", 1)[1] + "\n"
        assert "Revived memory reservation 'a  b' from KHO" in dmesg(m)
        assert m.read_bytes(region)[:5] == b"hello"
        # --append adds one space and its text after the reused line, verbatim
        kexec(m, "-l", str(files["image"]), "-s", "--reuse-cmdline", "--append=x  y")
        kexec(m, "-e")
        assert ok(m, "cat proc/cmdline") == cold.split(" ", 1)[1] + " x  y\n"


# -- item 9: RAM is contiguous across NUMA nodes -----------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2])
def test_big_image_loads_across_a_node_boundary(tmp_path, files, nodes):
    with mounted(tmp_path, memory="512M", nodes=nodes, cmdline="console=ttyS0 kho=on") as m:
        for syscall in (["-s"], []):
            kexec(m, "-l", str(files["big300"]), *syscall, "--command-line=x")
            assert ok(m, f"cat {LOADED}") == "1\n"
            kexec(m, "-u")


# -- item 10: a failed load leaves the staging files as they were -----------------------------


def test_failed_load_stages_nothing(tmp_path, files):
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        kexec(m, "-l", str(files["image"]), "-s", f"--initrd={files['initrd']}", "--command-line=a")
        before = staged(m)
        for args, message in (
            ([f"--initrd={files['huge']}"], f"`{files['huge']}'"),
            (["--append=" + "x" * 5000], "command line"),
        ):
            r = kho_fs("kexec", "-l", str(files["other"]), "-s", *args, root=m.mountpoint)
            assert r.returncode == 1 and "File too large" in r.stderr and message in r.stderr
            assert staged(m) == before
        r = kho_fs("kexec", "-l", str(files["huge"]), "-s", root=m.mountpoint)
        assert r.returncode == 1 and "File too large" in r.stderr
        assert staged(m) == before and ok(m, f"cat {LOADED}") == "1\n"


# -- item 11: no dt_fw after a kho=off handover ----------------------------------------------------


def test_status_after_a_kho_off_handover(tmp_path, files):
    with mounted(tmp_path, memory="16G", cmdline="kho=on reserve_mem=16M:4096:oops") as m:
        activate(m)
        kexec(
            m, "-l", str(files["image"]), "-s", "--command-line=kho=off reserve_mem=16M:4096:oops"
        )
        kexec(m, "-e")
        assert "Revived memory reservation 'oops' from KHO" in dmesg(m)
        assert not os.path.exists(m.path("sys/firmware/kho"))
        line = status_line(m, "handover")
        assert line.startswith("handover:    yes") and "dt_fw present" not in line, line
        assert "no /sys/firmware/kho" in line


# -- item 12: option order -----------------------------------------------------------------------


def test_last_of_load_and_exec_wins(tmp_path, files):
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        r = kho_fs("kexec", "-l", str(files["image"]), "-s", "-e", root=m.mountpoint)
        assert (r.returncode, r.stderr) == (1, "Nothing has been loaded!\n")
        assert ok(m, f"cat {LOADED}") == "0\n" and staged(m)["kernel"] == b""
        kexec(m, "-e", "-l", str(files["image"]), "-s")
        assert ok(m, f"cat {LOADED}") == "1\n"
        assert "generation:  0 " in status_line(m, "generation")


@pytest.mark.parametrize(
    ("options", "cmdline"),
    [
        (["--command-line=a", "--append=b"], "b"),
        (["--append=b", "--command-line=a"], "a"),
        (["--reuse-cmdline", "--command-line=a", "--append=b"], "kho=on b"),
        (["--append=b", "--reuse-cmdline"], "kho=on b"),
        (["--reuse-cmdline"], "kho=on"),
    ],
)
def test_command_line_and_append_are_one_option(tmp_path, files, options, cmdline):
    """x86_64 bzImage64_load: --command-line and --append both set ``append`` (the last
    one wins); --reuse-cmdline puts the running line first and one space between."""
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        kexec(m, "-l", str(files["image"]), "-s", *options)
        kexec(m, "-e")
        assert ok(m, "cat proc/cmdline") == cmdline + "\n"


# -- item 13: usage errors exit 1 --------------------------------------------------------------


def test_usage_errors_exit_1(tmp_path, files):
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        for args in (
            ["--bogus"],
            ["-l", str(files["image"]), "extra"],
            ["-l", str(files["image"]), "--initrd"],
            ["-l"],
            [],
        ):
            r = kho_fs("kexec", *args, root=m.mountpoint)
            assert r.returncode == 1 and r.stderr, (args, r.returncode, r.stderr)
            assert ok(m, f"cat {LOADED}") == "0\n"


# -- item 16: staging writes stop at the limit ----------------------------------------------------


def test_staging_write_straddling_the_limit_is_short(tmp_path):
    """generic_write_checks: a write starting below the file-size limit is cut at it (short
    count); one starting at or past it fails with EFBIG."""
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        fd = os.open(m.path(f"{KEXEC}/cmdline"), os.O_WRONLY)
        try:
            assert os.pwrite(fd, b"x" * 10, 4090) == 6
            with pytest.raises(OSError) as exc:
                os.pwrite(fd, b"y", 4096)
            assert exc.value.errno == errno.EFBIG
        finally:
            os.close(fd)
        assert m.read_bytes(f"{KEXEC}/cmdline") == bytes(4090) + b"x" * 6
        r = sh(
            m,
            f"printf 0123456789 | dd of={KEXEC}/cmdline bs=10 seek=4090 oflag=seek_bytes"
            " conv=notrunc",
        )
        assert r.returncode != 0 and "File too large" in r.stderr
        assert m.read_bytes(f"{KEXEC}/cmdline")[-6:] == b"012345"
