"""Faults and security on real mounts: a crashing participant, a dead leftover mount,
vanished or unusable kexec images, and exactly the kernel's permissions for other users.

The crashing participant is injected through the hidden ``--profile`` option: the daemon
loads ``crashing_profile.py`` next to this file, the real v4 machine with one more driver
whose DUMP raises.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mount_helpers import ENV, NOBODY, kho_fs, ok, sh

from kho_fs.daemon import FSTYPE, mount_type
from kho_fs.testing import MountedMachine, mounted

KHO = "sys/kernel/kho"
LOADED = "sys/kernel/kexec_loaded"
CMDLINE = "kho=on reserve_mem=1M:4096:oops"


CRASHING = f"{Path(__file__).with_name('crashing_profile.py')}:crashing_profile"


def alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie does not count: nobody may reap it here)."""
    assert pid is not None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- a participant that raises ------------------------------------------------------------


def test_crashing_participant_fails_activation_and_the_mount_lives_on(tmp_path):
    with mounted(tmp_path, memory="4G", cmdline=CMDLINE, profile=CRASHING) as m:
        r = sh(m, f"/bin/echo 1 > {KHO}/active")
        assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
        assert ok(m, f"cat {KHO}/active") == "0\n"
        assert sh(m, f"test -e {KHO}/dt").returncode != 0
        assert "KHO: failed to serialize state: -1" in ok(m, "cat machine/dmesg")
        assert "participant bug injected by test_faults" in m.log()
        assert "Traceback" in m.log()
        # State unchanged: dt_max still writable (no FDT), the region file still works.
        ok(m, f"echo 0x100000 > {KHO}/dt_max")
        assert ok(m, f"cat {KHO}/dt_max") == "0x100000\n"
        ok(m, "printf abc | dd of=machine/reserve_mem/oops conv=notrunc status=none")
        assert ok(m, "head -c 3 machine/reserve_mem/oops") == "abc"
        assert alive(m.pid)


# -- a dead leftover mountpoint -------------------------------------------------------------


def _auto_unmount_helper(mountpoint: Path) -> int:
    """The pid of the ``fusermount3 … auto_unmount`` watcher of a mount."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"fusermount3") and os.fsencode(mountpoint) in argv:
            return int(entry)
    raise AssertionError(f"no fusermount3 watcher for {mountpoint}")


def _make_dead_mount(m: MountedMachine) -> None:
    """Kill the auto_unmount watcher, then the daemon: the mount stays, dead."""
    os.kill(_auto_unmount_helper(m.mountpoint), signal.SIGKILL)
    time.sleep(0.1)
    assert m.pid is not None
    os.kill(m.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(m.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(OSError) as info:
        os.statvfs(m.mountpoint)
    # "Transport endpoint is not connected", or "Software caused connection abort" when the
    # kernel aborted the connection itself; either is a dead mount to `kho-fs mount`
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert mount_type(str(m.mountpoint)) == FSTYPE


def test_mount_recovers_a_dead_leftover_mount(tmp_path):
    with mounted(tmp_path, memory="1G", cmdline="kho=on") as m:
        _make_dead_mount(m)
        command = [sys.executable, "-m", "kho_fs", "mount", str(m.mountpoint), "--memory", "1G"]
        r = subprocess.run(command, capture_output=True, text=True, timeout=60, env=ENV)
        assert r.returncode == 0, r.stderr
        assert "was a dead kho-fs mount" in r.stderr and "unmounted it" in r.stderr
        assert (m.mountpoint / KHO / "active").read_text() == "0\n"
        # `mounted` unmounts the new daemon on the way out.


def test_umount_clears_a_dead_mount(tmp_path):
    with mounted(tmp_path, memory="1G", cmdline="kho=on") as m:
        _make_dead_mount(m)
        r = kho_fs("umount", str(m.mountpoint))
        assert r.returncode == 0, r.stderr
        assert mount_type(str(m.mountpoint)) is None


def test_a_live_mount_is_never_taken_over(tmp_path):
    with mounted(tmp_path, memory="1G", cmdline="kho=on") as m:
        r = kho_fs("mount", str(m.mountpoint), "--memory", "1G")
        assert r.returncode == 3
        assert "already a mountpoint (a live fuse.kho-fs mount)" in r.stderr, r.stderr
        assert alive(m.pid) and ok(m, f"cat {KHO}/active") == "0\n"


# -- kexec images that vanish or cannot be read --------------------------------------------


def test_unusable_kexec_images_change_nothing(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(os.urandom(256 << 10))
    with mounted(tmp_path, memory="4G", cmdline=CMDLINE) as m:
        r = kho_fs("kexec", "-l", str(image), "-s", "--reuse-cmdline", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        staged = (m.mountpoint / "machine/kexec/kernel").read_bytes()
        image.unlink()  # the image vanished after the load: the loaded image is unaffected
        for bad, reason in (
            (str(image), "No such file or directory"),
            (str(tmp_path), "Is a directory"),
        ):
            r = kho_fs("kexec", "-l", bad, "-s", root=m.mountpoint)
            assert r.returncode != 0 and r.stdout == ""
            assert r.stderr == f"kexec: Cannot open `{bad}': {reason}\n", r.stderr
            r = kho_fs("kexec", "-l", "/dev/null", f"--initrd={bad}", "-s", root=m.mountpoint)
            assert r.stderr == f"kexec: Cannot open `{bad}': {reason}\n", r.stderr
            assert ok(m, f"cat {LOADED}") == "1\n"
            assert (m.mountpoint / "machine/kexec/kernel").read_bytes() == staged
        # An image larger than the staging limit fails at once, before any copying.
        huge = tmp_path / "huge"
        with open(huge, "wb") as f:
            f.truncate((1 << 30) + 1)
        r = kho_fs("kexec", "-l", str(huge), "-s", root=m.mountpoint)
        assert r.returncode != 0 and "File too large" in r.stderr, r.stderr
        assert ok(m, f"cat {LOADED}") == "1\n"
        # The image loaded first still boots.
        r = kho_fs("kexec", "-e", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        assert "generation:  1 " in ok(m, "cat machine/status")


# -- permissions for other users ------------------------------------------------------------


ROOT_ONLY = (
    "dev/mem",
    "machine/reserve_mem/oops",
    "machine/cmdline",
    "machine/reboot",
    "machine/kexec/control",
    "machine/kexec/kernel",
    "machine/kexec/initrd",
    "machine/kexec/cmdline",
    f"{KHO}/active",
    f"{KHO}/dt_max",
    f"{KHO}/scratch_phys",
    f"{KHO}/scratch_len",
)
READABLE = (LOADED, "proc/cmdline", "machine/dmesg", "machine/status")


def test_other_users_get_exactly_the_kernels_permissions(tmp_path):
    with mounted(tmp_path, memory="4G", cmdline=CMDLINE, allow_other=True) as m:
        os.chmod(m.mountpoint.parent, 0o755)
        for path in ROOT_ONLY:
            for op in (f"cat {path} > /dev/null", f"printf 1 >> {path}"):
                r = sh(m, op, user=NOBODY)
                assert r.returncode != 0 and "Permission denied" in r.stderr, (op, r.stderr)
        for path in READABLE:
            r = sh(m, f"cat {path} > /dev/null", user=NOBODY)
            assert r.returncode == 0, (path, r.stderr)
            r = sh(m, f"printf 1 >> {path}", user=NOBODY)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.stderr)
        r = sh(m, "ls sys/kernel/debug", user=NOBODY)  # debugfs root is 0700
        assert r.returncode != 0 and "Permission denied" in r.stderr
        ok(m, f"echo 1 > {KHO}/active")
        r = sh(m, f"cat {KHO}/dt", user=NOBODY)  # dt is 0400
        assert r.returncode != 0 and "Permission denied" in r.stderr
        image = tmp_path / "Image"
        image.write_bytes(os.urandom(64 << 10))
        r = kho_fs("kexec", "-l", str(image), "-s", "--reuse-cmdline", root=m.mountpoint)
        assert r.returncode == 0, r.stderr
        r = sh(m, "echo exec > machine/kexec/control", user=NOBODY)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert ok(m, f"cat {LOADED}") == "1\n"
        assert kho_fs("kexec", "-e", root=m.mountpoint).returncode == 0
        # After the handover, dt_fw (0444) is world-readable.
        r = sh(m, "od -An -tx1 -N4 sys/firmware/kho/dt_fw", user=NOBODY)
        assert r.stdout.split() == ["d0", "0d", "fe", "ed"], r.stderr


def test_region_and_dev_mem_never_reach_outside_their_range(tmp_path):
    with mounted(tmp_path, memory="4G", cmdline=CMDLINE) as m:
        region = m.path("machine/reserve_mem/oops")
        size = region.stat().st_size
        assert size == 1 << 20
        status = ok(m, "cat machine/status")
        line = next(x for x in status.splitlines() if x.startswith("reserve_mem:"))
        start = int(line.split()[2], 16)
        end_of_ram = m.path("dev/mem").stat().st_size
        fd = os.open(region, os.O_RDWR)
        mem = os.open(m.path("dev/mem"), os.O_RDWR)
        try:
            assert os.pwrite(fd, b"\xaa" * 16, size - 8) == 8  # cut at the end
            for offset in (size, size + 1, 1 << 40, (1 << 62) - 1):
                with pytest.raises(OSError) as info:
                    os.pwrite(fd, b"x", offset)
                assert info.value.errno == errno.ENOSPC
                assert os.pread(fd, 16, offset) == b""
            assert os.pread(fd, 32, size - 8) == b"\xaa" * 8
            # The bytes on either side of the region were not touched.
            assert os.pread(mem, 8, start + size) == bytes(8)
            assert os.pread(mem, 8, start - 8) == bytes(8)
            assert os.pread(mem, 8, start + size - 8) == b"\xaa" * 8
            with pytest.raises(OSError) as info:
                os.pwrite(mem, b"x", end_of_ram)
            assert info.value.errno == errno.ENOSPC
            with pytest.raises(OSError) as info:
                os.pwrite(mem, b"x", 0xA0000)  # the legacy VGA hole is not RAM
            assert info.value.errno == errno.EFAULT
            assert os.pread(mem, 16, 0xA0000) == bytes(16)
            assert os.pread(mem, 16, end_of_ram) == b""
        finally:
            os.close(fd)
            os.close(mem)
