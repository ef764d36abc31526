"""The pytest plugin (``kho_fs.pytest_plugin``, entry point ``pytest11``) as its users see
it: pytester writes test files outside the package and runs pytest on them in a
subprocess, where the plugin is active only because kho-fs is installed."""

from __future__ import annotations

import pytest

from kho_fs.daemon import FSTYPE

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.mount

PASSING = """
import pytest

OOPS = "console=ttyS0 kho=on reserve_mem=1M:4096:oops"


@pytest.mark.kho_machine(release="6.19", memory="1G", cmdline=OOPS)
def test_a_region_survives_a_kexec(kho_machine):
    kho_machine.region("oops").write_bytes(b"panic trace")
    kho_machine.finalize()
    kho_machine.kexec()
    assert "KHO: found kexec handover data." in kho_machine.dmesg()
    assert kho_machine.region("oops").read_bytes()[:11] == b"panic trace"


@pytest.mark.kho_machine(memory="1G", cmdline=OOPS)
def test_v4_upgrade_keeps_nothing_on_6_19(kho_machine):
    assert kho_machine.release == "v4"
    kho_machine.activate()
    assert kho_machine.path("sys/kernel/kho/dt").stat().st_size > 0
    kho_machine.kexec("6.19")
    assert kho_machine.release == "6.19"
    assert "disabling KHO revival: -2" in kho_machine.dmesg()
    assert "release:     6.19" in kho_machine.status()


def test_several_machines(kho_machine_factory):
    old = kho_machine_factory(release="6.12", memory="1G")
    new = kho_machine_factory(release="6.18", memory="1G", nodes=2, drivers=["test_kho"])
    assert (old.release, new.release) == ("6.12", "6.18")
    assert old.mountpoint != new.mountpoint
    assert "node 1:" in new.status()
    with pytest.raises(Exception, match="no KHO interface"):
        old.activate()


def test_no_marker_means_kho_fs_defaults(kho_machine):
    assert kho_machine.release == "v4"
    assert kho_machine.read_text("proc/cmdline") == "console=ttyS0 kho=on\\n"
"""

BUGGY_DRIVER = """
from kho_fs.drivers import KhoDriver


class Buggy(KhoDriver):
    name = "buggy"

    def kho_dump(self, fdt):
        raise RuntimeError("bug in my driver's DUMP")
"""

FAILING = """
import pytest


@pytest.mark.kho_machine(memory="1G", drivers=["drivers/buggy.py:Buggy"])
def test_activation_with_my_driver(kho_machine):
    kho_machine.activate()
"""


def _mounts_under(path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {path}" in line and FSTYPE in line]


def test_passing_tests_mount_each_machine_and_unmount_it(pytester):
    pytester.makepyfile(test_passing=PASSING)
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert not _mounts_under(pytester.path)


def test_a_failure_shows_the_daemon_log_and_dmesg(pytester):
    pytester.mkdir("drivers")
    (pytester.path / "drivers" / "buggy.py").write_text(BUGGY_DRIVER)
    pytester.makepyfile(test_failing=FAILING)
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*OSError: [[]Errno 22[]] Invalid argument*",
            "*- kho-fs daemon log (*/kho-fs-*) -*",
            "*kho_fs.drivers ERROR: driver 'buggy': notifier_call() raised",
            "*RuntimeError: bug in my driver's DUMP",
            "*- kho-fs dmesg (*/kho-fs-*) -*",
            "*kho-fs: driver 'buggy': notifier_call() raised RuntimeError: bug in my driver's DUMP",
            "*KHO: failed to serialize state: -1",
        ]
    )
    assert not _mounts_under(pytester.path)


def test_the_marker_is_checked(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.kho_machine(ram="1G")
        def test_typo(kho_machine):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kho_machine: unknown option(s) ram (known: release, memory*"])


def test_the_marker_is_registered(pytester):
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.kho_machine(release=None, memory=None, *"])
