"""The public driver API (``kho_fs.drivers``) in-process: which API each release offers,
how specs resolve and are named (what state files record), and run-time failures of a
driver as dmesg lines rather than exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from kho_fs.drivers import (
    API_6_16,
    API_6_19,
    API_NONE,
    API_V4,
    DriverFactory,
    DriverLoadError,
    KhoDriver,
    kho_api,
    load_driver,
    load_drivers,
)
from kho_fs.model.drivers import KhoExampleDriver
from kho_fs.model.machine import Machine

PLUGINS = Path(__file__).parents[1] / "mount" / "plugin_drivers.py"


@pytest.mark.parametrize(
    ("release", "api"),
    [
        ("6.12", API_NONE),
        ("v4", API_V4),
        ("6.16", API_6_16),
        ("6.17", API_6_16),
        ("6.18", API_6_16),
        ("6.19", API_6_19),
        ("7.0", API_6_19),
    ],
)
def test_each_release_offers_its_eras_api(release, api):
    with Machine.create(memory=1 << 30, release=release, drivers=[]) as m:
        assert kho_api(m.kernel) == api


def test_a_builtin_name_gives_the_builtin_class():
    assert load_driver("kho_example") is KhoExampleDriver


def test_a_relative_file_spec_is_named_by_its_absolute_path(monkeypatch):
    monkeypatch.chdir(PLUGINS.parent)
    factory = load_driver("plugin_drivers.py:FileDriver")
    assert isinstance(factory, DriverFactory)
    assert factory.name == f"{PLUGINS}:FileDriver"
    # the machine keeps the factory, so a state file can record the spec
    with Machine.create(memory=1 << 30, drivers=[factory]) as m:
        assert [d.name for d in m.drivers] == [f"{PLUGINS}:FileDriver"]
        assert [d.name for d in m.kernel.drivers] == ["file_driver"]


def test_a_module_spec_keeps_its_text_and_may_name_a_nested_attribute():
    factory = load_driver("kho_fs.model.builtin_drivers:DRIVERS.get")
    assert isinstance(factory, DriverFactory)
    assert factory.name == "kho_fs.model.builtin_drivers:DRIVERS.get"


def test_an_entry_point_is_found_on_sys_path(tmp_path, monkeypatch):
    (tmp_path / "ep_plugin.py").write_text(
        "from kho_fs.drivers import KhoDriver\nclass Driver(KhoDriver):\n    name = 'ep'\n"
    )
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kho_fs.drivers]\nep = ep_plugin:Driver\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = load_driver("ep")
    assert isinstance(factory, DriverFactory) and factory.name == "ep"
    assert issubclass(factory.factory, KhoDriver)  # type: ignore[arg-type]
    with pytest.raises(DriverLoadError, match=r"entry points in group kho_fs.drivers: ep;"):
        load_driver("epp")


def test_the_same_driver_twice_is_refused():
    with pytest.raises(DriverLoadError, match="given twice") as info:
        load_drivers(["kho_example", "test_kho", "kho_example"])
    assert info.value.exit_code == 2


@pytest.mark.parametrize("release", ["6.19", "v4"])
def test_an_init_that_raises_is_a_dmesg_line_and_the_boot_goes_on(release):
    class Preserver(KhoDriver):
        name = "preserver"
        kho_kinds = frozenset({"v4", "mainline"})

        def init(self) -> None:
            super().init()
            raise RuntimeError("after registering")

    cmdline = "console=ttyS0 kho=on reserve_mem=1M:4096:oops"
    with Machine.create(memory=1 << 30, release=release, cmdline=cmdline, drivers=[Preserver]) as m:
        k = m.kernel
        assert k.panic is None
        assert "kho-fs: driver 'preserver': init() raised RuntimeError: after registering" in (
            k.log.render()
        )
        assert not any(nb is k.drivers[0] for nb in k.kho.notifiers.chain)  # dropped
        assert k.reserve_mem.table  # the rest of the boot ran
