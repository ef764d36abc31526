"""Region names the kernel accepts, through a real mount (issue 8, items 1 and 6).

Spec 2.4: a ``reserve_mem=`` name is 1-15 bytes and is not checked against FDT node-name
rules, so ``.``, ``..``, names with ``/``, a name and that name plus ``/…``, and names
with bytes above 0x7f (UTF-8 or not) all make regions.  Each must get its file
``machine/reserve_mem/<spelling>`` and the rest of the mount must keep working, however
the name arrived: ``--cmdline``, ``machine/cmdline`` plus ``machine/reboot``, a kexec
command line, a ``--state`` file.  The spelling (README, decisions.md): the name's bytes,
with ``%`` -> ``%25``, ``/`` -> ``%2F`` and the whole names ``.``/``..`` -> ``%2E``/
``%2E%2E``.  Expected values are written out below as bytes.

Everything is driven by real processes (``sh``, ``ls``, ``dd``, ``cat``, ``printf``,
``kho-fs kexec``) with byte arguments, so no locale re-encodes a name on the way.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mount_helpers import ENV

from kho_fs.testing import MountedMachine, mounted

SZ_1M = 1 << 20
AWKWARD = f"{Path(__file__).with_name('awkward_driver_profile.py')}:awkward_profile"

# (name on the command line, its file name under machine/reserve_mem), as bytes.
SPELLINGS = [
    (b".", b"%2E"),
    (b"..", b"%2E%2E"),
    (b"a", b"a"),
    (b"a/b", b"a%2Fb"),
    (b"/", b"%2F"),
    (b"100%", b"100%25"),
    (b"\xc3\xa9", b"\xc3\xa9"),  # "é" typed in a UTF-8 shell
    (b"x\xffy", b"x\xffy"),  # not UTF-8
]
EIGHT = b"kho=on " + b" ".join(b"reserve_mem=1M:4096:" + n for n, _ in SPELLINGS)


# -- helpers ------------------------------------------------------------------------------


def run(m: MountedMachine, script: str, *args: bytes) -> subprocess.CompletedProcess[bytes]:
    """``sh -c script sh args…`` in the mountpoint; arguments and output stay bytes."""
    return subprocess.run(
        ["sh", "-c", script, "sh", *args], cwd=m.mountpoint, capture_output=True, env=ENV,
        timeout=60,
    )  # fmt: skip


def ok(m: MountedMachine, script: str, *args: bytes) -> bytes:
    r = run(m, script, *args)
    assert r.returncode == 0, f"{script!r} {args!r} failed ({r.returncode}): {r.stderr!r}"
    return r.stdout


def arg(raw: bytes) -> str:
    """Bytes as a command-line argument of ``kho-fs mount`` (Python's argv convention)."""
    return os.fsdecode(raw)


def listing(m: MountedMachine, directory: str) -> list[bytes]:
    return ok(m, 'ls -a "$1"', directory.encode()).splitlines()


def assert_machine_answers(m: MountedMachine) -> None:
    """``machine/`` works: the user can always look, change the command line, reboot."""
    names = listing(m, "machine")
    assert {b"cmdline", b"reboot", b"status", b"dmesg", b"kexec"} <= set(names), names
    ok(m, "cat machine/cmdline machine/status machine/dmesg > /dev/null")


def assert_regions(m: MountedMachine, spellings: list[tuple[bytes, bytes]]) -> None:
    """One file per region under its spelling, 1 MiB each, each its own memory."""
    want = sorted([b".", b"..", *(s for _, s in spellings)])
    assert listing(m, "machine/reserve_mem") == want
    for i, (_, spelled) in enumerate(spellings):
        path = b"machine/reserve_mem/" + spelled
        assert ok(m, 'stat -c %s "$1"', path) == b"1048576\n"
        tag = b"region-%d" % i
        ok(m, 'printf "%s" "$2" | dd of="$1" bs=512 seek=1 conv=notrunc 2>/dev/null', path, tag)
    for i, (_, spelled) in enumerate(spellings):
        path = b"machine/reserve_mem/" + spelled
        got = ok(m, 'dd if="$1" bs=512 skip=1 count=1 2>/dev/null | head -c 8', path)
        assert got == b"region-%d" % i


def cold_boot(m: MountedMachine, cmdline: bytes) -> None:
    """The issue's steps: the firmware command line, then a reboot, by shell."""
    ok(m, 'printf "%s\\n" "$1" > machine/cmdline && echo x > machine/reboot', cmdline)
    assert m.read_bytes("proc/cmdline") == cmdline + b"\n"
    assert m.read_bytes("machine/cmdline") == cmdline + b"\n"


def fdt_node_names(blob: bytes) -> list[bytes]:
    """Names of BEGIN_NODE tokens in the FDT's structure block (spec 5.2)."""
    off, size = int.from_bytes(blob[8:12], "big"), int.from_bytes(blob[36:40], "big")
    struct_block, names, i = blob[off : off + size], [], 0
    while i < len(struct_block):
        token = int.from_bytes(struct_block[i : i + 4], "big")
        i += 4
        if token == 1:
            end = struct_block.index(b"\0", i)
            names.append(struct_block[i:end])
            i = (end + 4) & ~3
        elif token == 3:
            length = int.from_bytes(struct_block[i : i + 4], "big")
            i = (i + 8 + length + 3) & ~3
        elif token == 9:
            break
    return names


# -- item 6: bytes above 0x7f -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label"), [(b"\xc3\xa9", "utf8"), (b"caf\xc3\xa9", "utf8-word"), (b"x\xffy", "raw")]
)
def test_item6_names_above_0x7f_are_listed_with_the_command_lines_bytes(tmp_path, name, label):
    cmdline = b"kho=on reserve_mem=1M:4096:" + name
    with mounted(tmp_path, memory="4G", cmdline=arg(cmdline)) as m:
        assert m.read_bytes("proc/cmdline") == cmdline + b"\n"
        assert ok(m, "ls machine/reserve_mem") == name + b"\n"
        path = b"machine/reserve_mem/" + name
        ok(m, 'printf hello | dd of="$1" conv=notrunc 2>/dev/null', path)
        assert ok(m, 'head -c 5 "$1"', path) == b"hello"
        assert ok(m, 'cat "$1" | wc -c', path) == b"1048576\n"
        ok(m, "echo 1 > sys/kernel/kho/active")
        assert fdt_node_names(m.read_bytes("sys/kernel/kho/dt")) == [b"", b"reserve_mem", name]


# -- item 1: every accepted name keeps the mount working ------------------------------------


def test_item1_names_on_the_mount_command_line(tmp_path):
    with mounted(tmp_path, memory="4G", cmdline=arg(EIGHT)) as m:
        assert_regions(m, SPELLINGS)
        assert_machine_answers(m)
        ok(m, "echo 1 > sys/kernel/kho/active")
        names = fdt_node_names(m.read_bytes("sys/kernel/kho/dt"))
        assert names == [b"", b"reserve_mem", *(n for n, _ in SPELLINGS)]  # verbatim (5.4)


@pytest.mark.parametrize(
    "names",
    [[b".."], [b"."], [b"a/b"], [b"a", b"a/b"], [b"a/b", b"a"], [b"/"], [b"a", b"a/", b"a//b"]],
    ids=["dotdot", "dot", "slash", "prefix-then-slash", "slash-then-prefix", "root", "slashes"],
)
def test_item1_cmdline_and_reboot_into_such_names_and_back(tmp_path, names):
    with mounted(tmp_path, memory="4G", cmdline="kho=on reserve_mem=1M:4096:ok") as m:
        cmdline = b"kho=on " + b" ".join(b"reserve_mem=1M:4096:" + n for n in names)
        cold_boot(m, cmdline)
        spelled = [n.replace(b"/", b"%2F") if n not in (b".", b"..") else
                   n.replace(b".", b"%2E") for n in names]  # fmt: skip
        assert_regions(m, list(zip(names, spelled, strict=True)))
        assert_machine_answers(m)
        cold_boot(m, b"kho=on reserve_mem=1M:4096:ok")
        assert listing(m, "machine/reserve_mem") == [b".", b"..", b"ok"]


def test_item1_kexec_with_such_names_keeps_every_region(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(b"\x7fELF" + bytes(60000))
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m:
        cold_boot(m, EIGHT)
        assert_regions(m, SPELLINGS)  # tags region-N at offset 512 of each
        # A kexec through the machine/kexec files, the command line from printf.
        ok(m, "echo 1 > sys/kernel/kho/active")
        ok(m, 'cat "$1" > machine/kexec/kernel', str(image).encode())
        ok(m, 'printf "%s\\n" "$1" > machine/kexec/cmdline', EIGHT)
        ok(m, "echo kexec_file_load > machine/kexec/control && echo exec > machine/kexec/control")
        assert m.read_bytes("proc/cmdline") == EIGHT + b"\n"
        assert_machine_answers(m)
        for i, (name, spelled) in enumerate(SPELLINGS):
            path = b"machine/reserve_mem/" + spelled
            assert ok(m, 'dd if="$1" bs=512 skip=1 count=1 2>/dev/null | head -c 8', path) == (
                b"region-%d" % i
            )
            revived = b"] Revived memory reservation '" + name + b"' from KHO\n"
            assert revived in m.read_bytes("machine/dmesg")
        # A second one with kho-fs kexec, reusing the command line; then reboot out of it.
        ok(m, "echo 1 > sys/kernel/kho/active")
        env = {**ENV, "KHO_FS_ROOT": str(m.mountpoint)}
        for args in (["-l", str(image), "-s", "--reuse-cmdline"], ["-e"]):
            r = subprocess.run(["kho-fs", "kexec", *args], capture_output=True, env=env)
            assert r.returncode == 0, r.stderr
        assert m.read_bytes("proc/cmdline") == EIGHT + b"\n"
        assert_regions(m, SPELLINGS)
        assert_machine_answers(m)
        cold_boot(m, b"kho=on reserve_mem=1M:4096:ok")
        assert listing(m, "machine/reserve_mem") == [b".", b"..", b"ok"]


def test_item1_driver_region_names(tmp_path):
    with mounted(tmp_path, memory="4G", profile=AWKWARD) as m:
        assert listing(m, "machine/drivers") == [b".", b"..", b"my%2Fdrv"]
        want = [b"%25", b"%2E", b"%2E%2E", b"a", b"a%2Fb", b"dup", b"x\xffy", b"\xc3\xa9"]
        assert listing(m, "machine/drivers/my%2Fdrv") == sorted([b".", b"..", *want])
        for i, spelled in enumerate(want):
            path = b"machine/drivers/my%2Fdrv/" + spelled
            assert ok(m, 'stat -c %s "$1"', path) == b"4096\n"
            ok(m, 'printf "%s" "$2" | dd of="$1" conv=notrunc 2>/dev/null', path, b"drv-%d" % i)
        for i, spelled in enumerate(want):
            path = b"machine/drivers/my%2Fdrv/" + spelled
            assert ok(m, 'head -c 5 "$1"', path) == b"drv-%d" % i
        assert_machine_answers(m)
        log = m.log()
        assert "regions() bug injected" in log  # the broken driver is left out, logged
        assert "component ''" in log and "declares this path twice" in log
