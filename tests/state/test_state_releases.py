"""State files of every release, in-process: what a kernel keeps outside RAM comes back.

Two properties, checked after every step of a scenario (boot, finalize/activate, abort,
load, exec, finalize again, load again):

* **Save, load, save gives the same file**, byte for byte (metadata, blobs and RAM).
* **A restored machine is the machine**: from that step on, the original and a twin
  restored from the file run the same remaining steps and end in the same state (the
  same file, dmesg timestamps aside) -- so a handover prepared before a save completes
  after the restore, on every release.

test_kho's random folios are made deterministic here so that a twin which boots a fresh
test_kho (no handover) generates the same data as the original.
"""

from __future__ import annotations

import errno
import json
import random
import struct
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kho_fs.model import test_kho as test_kho_module
from kho_fs.model.builtin_drivers import DRIVERS
from kho_fs.model.bzimage import make_bzimage
from kho_fs.model.kho import Kho
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine
from kho_fs.model.releases import KHO_NONE, KHO_V4, RELEASES
from kho_fs.state import FORMAT_VERSION, MAGIC, StateError, load_machine, save_machine

DATA = Path(__file__).parent.parent / "data"
#: releases with test_kho and the debugfs interface (6.16 – 7.0, and the blob era)
MAINLINE = [name for name, r in RELEASES.items() if r.kho not in (KHO_NONE, KHO_V4)]
CMDLINE = "console=ttyS0 kho=on liveupdate=on reserve_mem=1M:4096:oops test_kho.max_mem=256K"
Step = tuple[str, Callable[[Machine], object]]


@pytest.fixture(autouse=True)
def deterministic_test_kho(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folio orders from a fixed seed; a folio's bytes follow its size."""
    monkeypatch.setattr(
        test_kho_module, "random", types.SimpleNamespace(Random=lambda: random.Random(3))
    )
    monkeypatch.setattr(
        test_kho_module,
        "os",
        types.SimpleNamespace(urandom=lambda n: random.Random(n).randbytes(n)),
    )


def make(release: str) -> Machine:
    drivers = [DRIVERS["test_kho"]] if release in MAINLINE else None
    return Machine.create(1 << 30, 2, CMDLINE, drivers=drivers, release=release)


def finalize(m: Machine) -> None:
    """``finalize`` where the release has it (not in the blob era); v4: ``active``."""
    kho = m.kernel.kho
    if isinstance(kho, KhoMainline):
        if kho.release.has_finalize:
            kho.finalize_store(1)
    elif isinstance(kho, Kho):
        kho.active_store(b"1")


def abort(m: Machine) -> None:
    """6.16–6.18 and v4: undo the finalization; 6.19/7.0: finalize again (no abort)."""
    kho = m.kernel.kho
    if isinstance(kho, KhoMainline) and kho.release.has_finalize:
        kho.finalize_store(1 if kho.release.finalize_repeatable else 0)
    elif isinstance(kho, Kho):
        kho.active_store(b"0")


def load(m: Machine) -> None:
    m.kernel.kexec.kexec_file_load(b"K" * 5000, b"I" * 300, m.kernel.cmdline)


def write_region(m: Machine) -> None:
    region = m.region("oops")
    if region is not None:
        m.mem.write(region.start + 100, b"bytes of generation %d" % m.generation)


def preserve_pages(m: Machine) -> None:
    """A KHO user preserving memory after the save (6.19: even while finalized)."""
    kho = m.kernel.kho
    if isinstance(kho, KhoMainline) and kho.kho_enable:
        phys = kho.pages.alloc_pages(2)
        kho.kho_preserve_folio(phys, 2)


SCENARIOS: dict[str, list[Step]] = {
    # straight to the handover: test_kho's folios are restored by the next kernel
    "straight": [
        ("boot", lambda m: None),
        ("write", write_region),
        ("preserve", preserve_pages),
        ("finalize", finalize),
        ("load", load),
        ("exec", Machine.kexec_exec),
        ("write", write_region),
        ("finalize", finalize),
        ("load", load),
        ("exec", Machine.kexec_exec),
    ],
    # with an abort (6.16–6.18 drop every preservation then) and a second finalize
    "abort": [
        ("boot", lambda m: None),
        ("finalize", finalize),
        ("abort", abort),
        ("preserve", preserve_pages),
        ("finalize again", finalize),
        ("load", load),
        ("exec", Machine.kexec_exec),
        ("reboot", Machine.reboot),
        ("finalize", finalize),
    ],
}


def run(m: Machine, step: Step) -> None:
    try:
        step[1](m)
    except Exception as exc:  # a step the release refuses is part of the scenario
        if not hasattr(exc, "errno"):
            raise


def split(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (meta_len,) = struct.unpack_from("<Q", data, len(MAGIC) + 4)
    start = len(MAGIC) + 12
    return json.loads(data[start : start + meta_len]), data[start + meta_len : -32]


def without_times(meta: dict[str, Any]) -> dict[str, Any]:
    meta["kernel"]["log"] = [record[1:] for record in meta["kernel"]["log"]]
    return meta


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("release", list(RELEASES))
def test_save_load_save_is_the_same_file(release: str, scenario: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first.state", tmp_path / "second.state"
    with make(release) as m:
        for step in SCENARIOS[scenario]:
            run(m, step)
            save_machine(m, first)
            with load_machine(first) as restored:
                save_machine(restored, second)
            assert first.read_bytes() == second.read_bytes(), f"{release} after {step[0]}"
    meta, _ = split(first)
    assert meta["machine"]["cold_release"] == meta["kernel"]["release"] == release


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("release", list(RELEASES))
def test_a_restored_machine_carries_on_like_the_original(
    release: str, scenario: str, tmp_path: Path
) -> None:
    path = tmp_path / "at.state"
    steps = SCENARIOS[scenario]
    for at in range(len(steps)):
        with make(release) as original:
            for step in steps[: at + 1]:
                run(original, step)
            save_machine(original, path)
            with load_machine(path) as twin:
                for step in steps[at + 1 :]:
                    run(original, step)
                    run(twin, step)
                save_machine(original, tmp_path / "original.state")
                save_machine(twin, tmp_path / "twin.state")
        (meta_o, rest_o), (meta_t, rest_t) = (
            split(tmp_path / f"{name}.state") for name in ("original", "twin")
        )
        where = f"{release}, {scenario}, restored after step {at} ({steps[at][0]})"
        assert without_times(meta_t) == without_times(meta_o), where
        assert rest_t == rest_o, where


@pytest.mark.parametrize("release", MAINLINE)
def test_finalized_before_the_save_hands_over_after_the_restore(
    release: str, tmp_path: Path
) -> None:
    """(The blob era has no finalize: everything is preserved from boot on.)"""
    path = tmp_path / "m.state"
    with make(release) as m:
        write_region(m)
        finalize(m)
        save_machine(m, path)
    with load_machine(path) as m:
        kho = m.kernel.kho
        assert isinstance(kho, KhoMainline)
        assert kho.finalized == kho.release.has_finalize
        load(m)
        m.kexec_exec()
        log = m.kernel.log.lines()
        kho = m.kernel.kho
        assert isinstance(kho, KhoMainline)
        assert "test_kho: KHO restore succeeded" in log, log
        assert "Revived memory reservation 'oops' from KHO" in log, log
        assert kho.in_fdt is not None
        assert {"kho_test", "memblock"} <= {b.name for b in kho.in_sub_fdts}
        region = m.region("oops")
        assert region is not None
        assert m.mem.read(region.start + 100, 21) == b"bytes of generation 0"


def test_the_loaded_image_keeps_the_release_it_names(tmp_path: Path) -> None:
    """An image that names another release boots that release after a restore too."""
    path = tmp_path / "m.state"
    with make("6.16") as m:
        finalize(m)
        m.kernel.kexec.kexec_file_load(make_bzimage(RELEASES["6.19"]), None, m.kernel.cmdline)
        save_machine(m, path)
    with load_machine(path) as m:
        image = m.kernel.kexec.kexec_image
        assert image is not None and image.release is not None
        assert image.release.release.name == "6.19"
        m.kexec_exec()
        assert m.kernel.release.name == "6.19"
        assert m.cold_release.name == "6.16"


def test_a_format_1_file_loads_as_a_v4_machine(tmp_path: Path) -> None:
    """tests/data/state-format1-v4.state was written by kho-fs before releases (format 1,
    no release, page allocator or boot notes): it is a v4 machine, active, with an image
    loaded; it hands over, and is saved back in the current format."""
    with load_machine(DATA / "state-format1-v4.state") as m:
        assert m.cold_release.name == m.kernel.release.name == "v4"
        assert isinstance(m.kernel.kho, Kho) and m.kernel.kho.active
        assert m.kernel.pages.free_bytes() > 0
        m.kexec_exec()
        log = m.kernel.log.lines()
        assert "Revived memory reservation 'oops' from KHO" in log
        region = m.region("oops")
        assert region is not None and m.mem.read(region.start, 21) == b"format-1 region bytes"
        save_machine(m, tmp_path / "new.state")
    data = (tmp_path / "new.state").read_bytes()
    assert struct.unpack_from("<I", data, len(MAGIC))[0] == FORMAT_VERSION
    with load_machine(tmp_path / "new.state") as again:
        assert again.kernel.generation == 1


def test_a_driver_that_is_not_built_in_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.state"
    with make("6.19") as m:
        save_machine(m, path)
    with pytest.raises(StateError, match="driver 'test_kho', which is not available"):
        load_machine(path, drivers={})


def test_luo_comes_back_and_open_sessions_are_not_saved(tmp_path: Path) -> None:
    """6.19 with ``liveupdate=on``: luo_global (the outgoing LUO FDT, the incoming one
    after a handover) is kept; a machine with LUO sessions is not saved (EBUSY, with the
    reason) -- their files belong to processes connected to the daemon."""
    path = tmp_path / "m.state"
    with make("6.19") as m:
        load(m)
        m.kexec_exec()
        luo = m.kernel.luo
        assert luo is not None and luo.incoming_active and luo.deserialized is None
        session = luo.luo_session_create(b"vm-1")
        with pytest.raises(OSError, match="1 outgoing and 0 incoming session") as refused:
            save_machine(m, path)
        assert refused.value.errno == errno.EBUSY and not path.exists()
        luo.release_session(session)
        save_machine(m, path)
        with load_machine(path) as restored:
            again = restored.kernel.luo
            assert again is not None
            assert (again.enabled, again.liveupdate_num, again.fdt_in, again.in_header) == (
                True,
                1,
                luo.fdt_in,
                luo.in_header,
            )
            assert again.misc_registered and [h.compatible for h in again.handlers] == [
                h.compatible for h in luo.handlers
            ]
            assert again.luo_session_deserialize() == 0  # the incoming sessions, from RAM


class _Memfd:
    """A memfd as the LUO model sees one (kho_fs.model.luo.LuoFileSource)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def kind(self) -> str:
        return "memfd"

    def size(self) -> int:
        return len(self.data)

    def pos(self) -> int:
        return 0

    def readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def release(self) -> None:
        pass


def test_luo_v5_sessions_not_yet_read_survive_a_save(tmp_path: Path) -> None:
    """7.2 (``luo-v5``): the session record chain the boot restored (the kernel's list of
    block addresses) is kept with the rest of LUO's globals; the sessions come out of RAM
    at the first open after the restore."""
    path = tmp_path / "m.state"
    with make("7.2") as m:
        luo = m.kernel.luo
        assert luo is not None
        session = luo.luo_session_create(b"vm-1")
        luo.luo_preserve_file(session, 7, _Memfd(b"state of vm-1"))
        load(m)
        m.kexec_exec()
        luo = m.kernel.luo
        assert luo is not None and luo.incoming_active and luo.deserialized is None
        blocks = list(luo.sessions_in.blocks)  # type: ignore[attr-defined]
        assert blocks
        save_machine(m, path)
        with load_machine(path) as restored:
            again = restored.kernel.luo
            assert again is not None
            assert again.sessions_in.blocks == blocks  # type: ignore[attr-defined]
            assert again.luo_session_deserialize() == 0
            got = again.luo_retrieve_file(again.luo_session_retrieve(b"vm-1"), 7)
            data = b"".join(restored.mem.read(phys, n) for _, phys, n in got.extents)
            assert data == b"state of vm-1"


PLUGIN = """
from kho_fs.drivers import KhoDriver


class Counter(KhoDriver):
    name = "counter"
    kho_kinds = frozenset({"v4", "mainline"})

    def __init__(self, kernel):
        super().__init__(kernel)
        self.count = 0

    def get_state(self):
        return {"count": self.count}

    def set_state(self, state):
        if type(state.get("count")) is not int:
            raise ValueError("count is not an integer")
        self.count = state["count"]
"""


def test_plug_in_drivers_are_loaded_again_by_their_spec(tmp_path: Path) -> None:
    """A driver given as FILE.py:FACTORY is recorded by its spec (an absolute path) and
    loaded again at restore, with its own state; when it is gone, the file is refused
    with the reason."""
    from kho_fs.drivers import load_driver

    plugin = tmp_path / "counter.py"
    plugin.write_text(PLUGIN)
    path = tmp_path / "m.state"
    factory = load_driver(f"{plugin}:Counter")
    with Machine.create(1 << 30, 1, CMDLINE, drivers=[factory], release="6.19") as m:
        driver = m.kernel.drivers[0]
        driver.count = 42  # type: ignore[attr-defined]
        save_machine(m, path)
    meta, _ = split(path)
    assert meta["machine"]["drivers"] == [f"{plugin}:Counter"]
    with load_machine(path) as restored:
        assert [d.name for d in restored.kernel.drivers] == ["counter"]
        assert restored.kernel.drivers[0].count == 42  # type: ignore[attr-defined]
    plugin.unlink()
    with pytest.raises(StateError, match=r"driver '.*counter.py:Counter', which cannot be loaded"):
        load_machine(path)
