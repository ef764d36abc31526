"""``pip install .`` into a clean virtualenv, as a user installs any Python tool.

The source is copied first (the files a fresh clone has: tracked and new, nothing git
ignores), so the build cannot lean on ``build/``, ``*.egg-info`` or an editable install of
the work tree. The virtualenv starts empty (``--without-pip``; the project's pip installs
into it with ``--python``); dependencies come through pip's ordinary channels (its wheel
cache has pyfuse3 and pylibfdt built already, the registries the rest). Everything is then
used from the installed copy, with the work tree out of reach: the console script mounts
a machine, the package data is there, the pytest plugin runs a test with a mounted
machine, and an installed driver package is found through its entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.mount]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 900


def run(*command: str | os.PathLike[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def _source_copy(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        name = os.fsdecode(raw)
        src = ROOT / name
        if src.is_file():  # deleted but still in the index: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


class Installed:
    """A fresh virtualenv with kho-fs installed, and a way to run commands in it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.venv = base / "venv"
        self.python = self.venv / "bin" / "python"
        self.bin = self.venv / "bin"
        self.home = base / "work"  # cwd of everything: nowhere near the source tree
        self.home.mkdir()
        keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR", "PIP_CONFIG_FILE")
        self.env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
        self.env["PATH"] = f"{self.bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin"

    def pip_install(self, *args: str | os.PathLike[str], cwd: Path | None = None) -> str:
        pip = [sys.executable, "-m", "pip", "--python", self.python, "install", "-q"]
        return run(*pip, *args, cwd=cwd or self.home, env=self.env)

    def __call__(self, *command: str | os.PathLike[str]) -> str:
        return run(*command, cwd=self.home, env=self.env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    source = _source_copy(base / "src")
    it = Installed(base)
    run(sys.executable, "-m", "venv", "--without-pip", it.venv, cwd=base, env=it.env)
    it.pip_install(".", cwd=source)  # `pip install .`: a wheel build, not editable
    # what the tests below use besides: pytest, and the example driver as a package
    it.pip_install("pytest", source / "examples" / "vmm")
    return it


def test_the_package_is_installed_from_a_wheel_with_its_data(installed):
    out = installed(
        installed.python,
        "-c",
        "import importlib.metadata as md, pathlib, kho_fs, kho_fs.drivers;"
        "p = pathlib.Path(kho_fs.__file__).parent;"
        "print(p); print((p / 'py.typed').is_file());"
        "print(sorted(e.value for e in md.entry_points(group='pytest11')));"
        "print(md.distribution('kho-fs').read_text('direct_url.json'))",
    )
    package, typed, plugins, direct_url = out.splitlines()[:4]
    assert (
        Path(package)
        == installed.venv
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
        / "kho_fs"
    )
    assert typed == "True"
    assert plugins == "['kho_fs.pytest_plugin']"
    assert '"editable": true' not in direct_url  # a real install, not a link to the tree
    assert "usage: kho-fs" in installed(installed.bin / "kho-fs", "--help")


def test_the_console_script_mounts_a_machine(installed):
    mountpoint = installed.home / "m"
    mountpoint.mkdir()
    kho_fs = installed.bin / "kho-fs"
    installed(
        kho_fs, "mount", mountpoint, "--memory", "1G", "--release", "6.19", "--driver", "test_kho"
    )
    try:
        status = installed(kho_fs, "status", mountpoint)
        assert "release:     6.19" in status
        assert "kho_test" in status  # test_kho's sub-FDT: the built-in driver ran
    finally:
        installed(kho_fs, "umount", mountpoint)


def test_the_pytest_plugin_is_active_once_installed(installed):
    (installed.home / "test_with_kho_fs.py").write_text(
        textwrap.dedent(
            """
            import kho_fs
            import pytest

            @pytest.mark.kho_machine(release="6.19", memory="1G",
                                     cmdline="console=ttyS0 kho=on reserve_mem=1M:4096:oops")
            def test_oops_survives(kho_machine):
                assert "site-packages" in kho_fs.__file__
                kho_machine.region("oops").write_bytes(b"oops")
                kho_machine.finalize()
                kho_machine.kexec()
                assert kho_machine.region("oops").read_bytes()[:4] == b"oops"
            """
        )
    )
    out = installed(installed.python, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers")
    assert "1 passed" in out


def test_an_installed_driver_package_is_found_by_its_entry_point(installed):
    mountpoint = installed.home / "vmm"
    mountpoint.mkdir()
    kho_fs = installed.bin / "kho-fs"
    installed(kho_fs, "mount", mountpoint, "--memory", "1G", "--driver", "vmm")
    try:
        assert (mountpoint / "machine" / "drivers" / "vmm" / "guest_mem").stat().st_size == 16 << 20
    finally:
        installed(kho_fs, "umount", mountpoint)
