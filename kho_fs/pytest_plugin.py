"""pytest plugin of kho-fs (entry point ``pytest11``): a mounted machine per test.

Active wherever kho-fs is installed; nothing is mounted unless a test asks for a fixture::

    @pytest.mark.kho_machine(release="6.19", cmdline="kho=on reserve_mem=4M:4096:oops")
    def test_oops_survives(kho_machine):
        kho_machine.region("oops").write_bytes(b"panic log")
        kho_machine.finalize()
        kho_machine.kexec()
        assert kho_machine.region("oops").read_bytes()[:9] == b"panic log"

``kho_machine`` is a :class:`kho_fs.testing.MountedMachine` mounted (by the real
``kho-fs mount``) in a temporary directory for one test and unmounted after it, configured
by the ``kho_machine`` marker: ``release``, ``memory`` (``"2G"`` or bytes), ``nodes``,
``cmdline``, ``drivers`` (``--driver`` specs; a relative ``FILE.py:FACTORY`` is looked up
next to the test file first) and ``extra_args`` (more ``kho-fs mount`` options).
``kho_machine_factory(**same keywords)`` mounts as many machines as a test needs.

When a test that used them fails, the report shows each machine's daemon log and dmesg.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kho_fs.testing import MountedMachine

MARKER = "kho_machine"
OPTIONS = ("release", "memory", "nodes", "cmdline", "drivers", "extra_args")
LOG_LINES = 400  # the tail of a daemon log shown in a failure report

_MACHINES = pytest.StashKey[list["MountedMachine"]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(release=None, memory=None, nodes=None, cmdline=None, drivers=(), "
        "extra_args=()): the machine the kho_machine fixture mounts (kho-fs)",
    )


def _driver_specs(drivers: Sequence[str], test_dir: Path | None) -> list[str]:
    """``--driver`` specs; a relative ``FILE.py:FACTORY`` found next to the test file is
    made absolute (the daemon's working directory is pytest's)."""
    if isinstance(drivers, str):
        raise pytest.UsageError(f"{MARKER}: drivers is a list of specs, not {drivers!r}")
    specs = []
    for spec in drivers:
        target, sep, attr = spec.rpartition(":")
        if sep and test_dir is not None and (target.endswith(".py") or os.sep in target):
            candidate = test_dir / target
            if not os.path.isabs(target) and candidate.is_file():
                spec = f"{candidate}:{attr}"
        specs.append(spec)
    return specs


def _mount(
    stack: ExitStack,
    node: pytest.Item | pytest.Collector,
    directory: Path,
    options: dict[str, Any],
) -> MountedMachine:
    from kho_fs.testing import mounted

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise pytest.UsageError(
            f"{MARKER}: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})"
        )
    memory = options.get("memory")
    nodes = options.get("nodes")
    path = getattr(node, "path", None)
    machine = stack.enter_context(
        mounted(
            directory,
            memory=None if memory is None else str(memory),
            nodes=None if nodes is None else int(nodes),
            cmdline=options.get("cmdline"),
            release=options.get("release"),
            drivers=_driver_specs(options.get("drivers", ()), path.parent if path else None),
            extra_args=list(options.get("extra_args", ())),
        )
    )
    node.stash.setdefault(_MACHINES, []).append(machine)
    return machine


@pytest.fixture
def kho_machine_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., MountedMachine]]:
    """``make(release=…, memory=…, nodes=…, cmdline=…, drivers=[…], extra_args=[…])``
    mounts one more machine; all of them are unmounted when the test ends."""
    with ExitStack() as stack:

        def make(**options: Any) -> MountedMachine:
            directory = tmp_path_factory.mktemp("kho-fs")
            return _mount(stack, request.node, directory, options)

        yield make


@pytest.fixture
def kho_machine(
    kho_machine_factory: Callable[..., MountedMachine], request: pytest.FixtureRequest
) -> MountedMachine:
    """A machine mounted for this test, as ``@pytest.mark.kho_machine(...)`` says (no
    marker: kho-fs' defaults, the v4 release with ``console=ttyS0 kho=on``)."""
    marker = request.node.get_closest_marker(MARKER)
    options: dict[str, Any] = {}
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(f"{MARKER}: takes keyword arguments only")
        options = dict(marker.kwargs)
    return kho_machine_factory(**options)


def _tail(text: str, lines: int) -> str:
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return f"[… {len(parts) - lines} earlier lines]\n" + "\n".join(parts[-lines:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for machine in item.stash.get(_MACHINES, []):
            where = machine.mountpoint
            log = machine.log()
            report.sections.append(
                (f"kho-fs daemon log ({where})", _tail(log, LOG_LINES) if log else "(empty)")
            )
            try:
                dmesg = machine.dmesg()
            except OSError:
                continue  # unmounted already (a teardown failure)
            report.sections.append((f"kho-fs dmesg ({where})", _tail(dmesg, LOG_LINES)))
    return report
