"""The kernel log files through a real mount, read by ``cat``, ``stat`` and util-linux ``dmesg``.

``machine/dmesg`` is the console form (``[    1.234567] text``) for ``cat`` and ``grep``;
``machine/dmesg.raw`` is the raw syslog(2) form (``<3>[    1.234567] text``) that
``dmesg -F`` parses, with the level the kernel prints each message at
(docs/decisions.md, "Kernel log (dmesg)").  Both report their real ``st_size``: util-linux
maps ``st_size`` bytes of the file, so a size of 0 shows nothing.

util-linux is essential on Debian (scripts/setup installs Debian packages): a missing
``dmesg`` fails these tests, it never skips them.
"""

from __future__ import annotations

import shutil
import subprocess

from mount_helpers import ENV, fails, kho_fs, ok

from kho_fs.testing import MountedMachine, mounted

KHO = "sys/kernel/kho"
FIRST = (
    "console=ttyS0 kho=maybe kho=on kho_scratch=150% "
    "reserve_mem=16M:4096:oops reserve_mem=8M:4096:trace"
)
SECOND = "kho=on reserve_mem=16M:4096:oops reserve_mem=4M:4096:trace"

LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warn": 4, "notice": 5, "info": 6}

# (level name as `dmesg -x` prints it, message) in log order.
FIRST_BOOT = [
    ("notice", "Linux version 6.14.0-rc1-kho-v4 (kho-fs) #1 SMP PREEMPT_DYNAMIC"),
    ("info", f"Command line: {FIRST}"),
    ("warn", "Malformed early option 'kho'"),
    ("notice", "KHO: scratch scale is 150 percent"),
]
SERIALIZE_ERROR = ("err", "KHO: failed to serialize state: -1")  # dt_max 110, one participant
HANDOVER_BOOT = [
    ("notice", "Linux version 6.14.0-rc1-kho-v4 (kho-fs) #2 SMP PREEMPT_DYNAMIC"),
    ("info", f"Command line: {SECOND}"),
    ("info", "KHO: setup: Found kexec handover data. Will skip init for some devices"),
    ("info", "Revived memory reservation 'oops' from KHO"),
    ("warn", "KHO reserved_mem 'trace' has wrong size (0x800000 != 0x400000)"),
]


def util_linux_dmesg(m: MountedMachine, *args: str) -> str:
    """``/usr/bin/dmesg args…`` in the mountpoint (util-linux, never the kho-fs files)."""
    binary = shutil.which("dmesg", path="/usr/bin:/bin")
    assert binary, "util-linux dmesg is missing: install util-linux (scripts/setup)"
    r = subprocess.run(
        [binary, "--color=never", *args],
        cwd=m.mountpoint,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert r.returncode == 0, f"dmesg {args}: {r.stderr}"
    return r.stdout


def check_log(m: MountedMachine, expected: list[tuple[str, str]]) -> None:
    """Both files hold exactly ``expected``, their sizes are what ``cat`` reads, and
    ``dmesg -F`` on the raw file shows every message with its level."""
    console = ok(m, "cat machine/dmesg")
    raw = ok(m, "cat machine/dmesg.raw")
    lines = console.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [text for _, text in expected]
    for path, content in (("machine/dmesg", console), ("machine/dmesg.raw", raw)):
        size = len(content.encode("latin-1"))
        assert ok(m, f"stat -c %s {path}") == f"{size}\n", path
        assert ok(m, f"wc -c < {path}") == f"{size}\n", path
    # Raw form: "<level>" + the console line, one record per line.
    assert raw.splitlines() == [
        f"<{LEVELS[level]}>{line}" for (level, _), line in zip(expected, lines, strict=True)
    ]
    # util-linux prints every message, timestamps included, as cat shows them ...
    assert util_linux_dmesg(m, "-F", "machine/dmesg.raw") == console
    # ... decodes each message's level ...
    decoded = util_linux_dmesg(m, "-F", "machine/dmesg.raw", "--decode", "--notime")
    assert decoded.splitlines() == [f"kern  :{level:<6}: {text}" for level, text in expected]
    # ... and filters by level.
    for name in ("err", "warn", "notice", "info"):
        got = util_linux_dmesg(m, "-F", "machine/dmesg.raw", f"--level={name}")
        want = [line for (level, _), line in zip(expected, lines, strict=True) if level == name]
        assert got.splitlines() == want, name


def test_dmesg_files_sizes_and_util_linux_dmesg(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"K" * 5000)
    with mounted(tmp_path, memory="16G", cmdline=FIRST) as m:
        assert ok(m, "stat -c %a machine/dmesg machine/dmesg.raw") == "444\n444\n"
        check_log(m, FIRST_BOOT)

        # A failed activation logs a pr_err line and changes no file: the sizes that
        # stat reports (cached by the kernel) must still follow the log.
        ok(m, f"echo 110 > {KHO}/dt_max")
        fails(m, f"/bin/echo 1 > {KHO}/active", "Invalid argument")
        check_log(m, [*FIRST_BOOT, SERIALIZE_ERROR])
        errors = util_linux_dmesg(m, "-F", "machine/dmesg.raw", "--level=err")
        assert errors.endswith("] KHO: failed to serialize state: -1\n")
        assert errors.count("\n") == 1

        # A handover boot: a new log with the revival messages.
        ok(m, f"echo 0xa00000 > {KHO}/dt_max && echo 1 > {KHO}/active")
        r = kho_fs("kexec", "-l", str(image), "-s", f"--command-line={SECOND}", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        r = kho_fs("kexec", "-e", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        check_log(m, HANDOVER_BOOT)
        assert util_linux_dmesg(m, "-F", "machine/dmesg.raw", "--level=err") == ""
