"""``kho-fs mount --driver SPEC`` through real mounts: the four ways to name a driver,
drivers that cannot be loaded (mount errors naming them, exit 2 or 1), and drivers that
raise at run time (failing kernel participants with the era's errno and dmesg lines; the
daemon lives on)."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from mount_helpers import ENV, fails, ok
from test_faults import alive

from kho_fs.daemon import mount_type
from kho_fs.testing import mounted

PLUGINS = Path(__file__).with_name("plugin_drivers.py")
KHO = "sys/kernel/kho"
DEBUGFS = "sys/kernel/debug/kho"


def _site(tmp_path: Path) -> Path:
    """A directory on PYTHONPATH with a plug-in package installed the way pip installs
    one: the module plus a ``.dist-info`` whose ``entry_points.txt`` registers a driver
    in the group ``kho_fs.drivers``."""
    site = tmp_path / "site"
    package = site / "kho_plugin_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from kho_fs.model.drivers import KhoExampleDriver

            class EntryPointDriver(KhoExampleDriver):
                name, compatible, param = "ep_driver", "ep-driver-v1", "ep_driver.size"

            class ModuleDriver(KhoExampleDriver):
                name, compatible, param = "mod_driver", "mod-driver-v1", "mod_driver.size"

            def make_module_driver(kernel):
                return ModuleDriver(kernel)
            """
        )
    )
    (site / "kho_plugin_broken.py").write_text("raise ImportError('needs libvirt')\n")
    dist = site / "kho_plugin_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kho-plugin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[kho_fs.drivers]\n"
        "ep_driver = kho_plugin_pkg:EntryPointDriver\n"
        "ep_broken = kho_plugin_broken:Driver\n"
    )
    return site


def kho_fs_mount(
    mountpoint: Path, *args: str, site: Path | None = None
) -> subprocess.CompletedProcess:
    """``kho-fs mount MOUNTPOINT ARGS`` with ``site`` on PYTHONPATH."""
    env = dict(ENV, PYTHONPATH=str(site)) if site is not None else ENV
    return subprocess.run(
        ["kho-fs", "mount", str(mountpoint), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )


def test_four_spec_forms_load_and_survive_a_kexec(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(_site(tmp_path)))
    specs = [
        "kho_example",  # built in
        "ep_driver",  # entry point
        "kho_plugin_pkg:make_module_driver",  # package.module:factory
        f"{PLUGINS}:FileDriver",  # path/file.py:factory
    ]
    names = ["kho_example", "ep_driver", "mod_driver", "file_driver"]
    cmdline = "console=ttyS0 kho=on " + " ".join(f"{n}.size=64K" for n in names)
    with mounted(tmp_path, memory="1G", cmdline=cmdline, drivers=specs) as m:
        for name in names:
            m.region("buffer", driver=name).write_bytes(f"bytes of {name}".encode())
        m.activate()
        for name in names:
            assert ok(m, f"fdtget -t s {KHO}/dt /{name} compatible").strip()
        m.kexec()
        dmesg = m.dmesg()
        for name in names:
            assert f"{name}: buffer restored from KHO" in dmesg
            data = m.region("buffer", driver=name).read_bytes()
            assert data.startswith(f"bytes of {name}".encode())
        assert "kho-fs: driver" not in dmesg


@pytest.mark.parametrize(
    ("spec", "code", "reason"),
    [
        ("nope", 2, "no built-in driver or entry point of that name (built in: kho_example"),
        ("no_such_module_xyz:Driver", 2, "no module named 'no_such_module_xyz'"),
        ("{tmp}/missing.py:Driver", 2, "no such file {tmp}/missing.py"),
        (f"{PLUGINS}:Missing", 2, "has no attribute 'Missing'"),
        (f"{PLUGINS}:NotADriver", 2, "NotADriver is no KhoDriver subclass"),
        ("kho_example:", 2, "expected NAME, MODULE:FACTORY or FILE.py:FACTORY"),
        ("{tmp}/syntax.py:Driver", 1, "syntax.py raised SyntaxError"),
        (
            "kho_plugin_broken:Driver",
            1,
            "importing kho_plugin_broken raised ImportError: needs libvirt",
        ),
        ("ep_broken", 1, "entry point kho_plugin_broken:Driver raised ImportError: needs libvirt"),
    ],
)
def test_a_driver_that_cannot_be_loaded_is_a_mount_error(tmp_path, spec, code, reason):
    site = _site(tmp_path)
    (tmp_path / "syntax.py").write_text("class Driver(:\n")
    spec, reason = spec.format(tmp=tmp_path), reason.format(tmp=tmp_path)
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    r = kho_fs_mount(mountpoint, "--driver", spec, site=site)
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith(f"kho-fs: cannot load driver {spec!r}: "), r.stderr
    assert reason in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert mount_type(str(mountpoint)) is None and not os.listdir(mountpoint)


def test_a_driver_given_twice_is_a_mount_error(tmp_path):
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    spec = f"{PLUGINS}:FileDriver"
    r = kho_fs_mount(mountpoint, "--driver", spec, "--driver", spec)
    assert r.returncode == 2
    assert r.stderr == f"kho-fs: cannot load driver {spec!r}: given twice\n"


def test_drivers_that_raise_are_failing_participants_on_v4(tmp_path):
    bugs = ["early_bug", "init_bug", "regions_bug", "dump_bug"]  # tracebacks in the log
    specs = [f"{PLUGINS}:{cls}" for cls in ("EarlyInitBug", "InitBug", "RegionsBug", "BadRegion")]
    specs += [f"{PLUGINS}:{f}" for f in ("probe_bug", "not_a_driver", "DumpBug")]
    cmdline = "console=ttyS0 kho=on reserve_mem=1M:4096:oops"
    with mounted(tmp_path, memory="1G", cmdline=cmdline, drivers=specs) as m:
        listing = ok(m, "ls machine/drivers; ls machine/drivers/bad_region")
        assert listing.split() == ["bad_region", "page"]
        # activation: DUMP raises -> NOTIFY_BAD -> -EPERM, the write fails with EINVAL
        fails(m, f"/bin/echo 1 > {KHO}/active", "Invalid argument")
        assert ok(m, f"cat {KHO}/active") == "0\n"
        dmesg = m.dmesg()
        for line in (
            "kho-fs: driver 'early_bug': early_init() raised RuntimeError: early_init bug",
            "kho-fs: driver 'init_bug': init() raised ValueError: init bug",
            f"kho-fs: driver '{PLUGINS}:probe_bug': probe raised OSError: probe bug",
            f"kho-fs: driver '{PLUGINS}:not_a_driver': probe raised TypeError: the factory "
            "returned int, no KhoDriver",
            "kho-fs: driver 'regions_bug': regions() raised KeyError: 'regions bug'",
            "kho-fs: driver 'bad_region': region DriverRegion(name='outside', "
            "start=1152921504606846976, size=4096) is no range of RAM; no file for it",
            "kho-fs: driver 'dump_bug': notifier_call() raised RuntimeError: dump bug",
            "KHO: failed to serialize state: -1",
        ):
            assert line in dmesg, line
        assert "AssertionError" not in dmesg  # init_bug's notifier was dropped
        assert ok(m, "dmesg -F machine/dmesg.raw --level=err | grep -c 'kho-fs: driver'") == "6\n"
        log = m.log()
        assert all(f"driver '{bug}': " in log for bug in bugs), log
        assert "probe bug" in log and "Traceback" in log
        # everything else keeps working: regions, a kexec, the next boot's drivers
        ok(m, "printf abc | dd of=machine/reserve_mem/oops conv=notrunc status=none")
        m.kexec()
        assert m.dmesg().count("early_init() raised") == 1  # a new boot, a new log
        assert alive(m.pid)


def test_a_finalize_notifier_that_raises_fails_finalize_with_eperm_on_6_18(tmp_path):
    with mounted(
        tmp_path,
        memory="1G",
        release="6.18",
        cmdline="console=ttyS0 kho=on reserve_mem=1M:4096:oops",
        drivers=[f"{PLUGINS}:FinalizeBug"],
    ) as m:
        fails(m, f"/usr/bin/printf 1 > {DEBUGFS}/out/finalize", "Operation not permitted")
        assert ok(m, f"cat {DEBUGFS}/out/finalize") == "0\n"
        dmesg = m.dmesg()
        assert (
            "kho-fs: driver 'finalize_bug': notifier_call() raised RuntimeError: finalize bug"
            in dmesg
        )
        assert "KHO: Failed to convert KHO state tree: -1" in dmesg
        assert alive(m.pid)
