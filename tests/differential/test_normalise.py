"""The differential harness's own rules (scripts/differential.py, docs/differential.md):
scenario files, the normaliser on real bytes, and the golden transcripts' consistency.
No QEMU, no mount."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import differential as d  # noqa: E402

# a copy of shared/spec/transcripts/linux-7.2.13-kho-luo.txt
TRANSCRIPT = ROOT / "tests" / "data" / "transcripts" / "linux-7.2.13-kho-luo.txt"
GOLDENS = [p.stem for p in sorted(d.GOLDEN_DIR.glob("*.txt"))]


def test_every_scenario_parses() -> None:
    scenarios = d.load_scenarios()
    assert {s.name for s in scenarios} >= {"default", "reserve-mem-sizes", "debugfs-writes"}
    for s in scenarios:
        assert s.cmdline.startswith("console=ttyS0") and "panic=-1" in s.cmdline
        assert s.stages[0].strip() and s.stages[1].strip()
        assert s.script().startswith("#!/bin/sh\n") and 'if [ "$BOOT" = 1 ]' in s.script()


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_text_is_the_normalised_raw_log(name: str) -> None:
    """The stored transcript is what today's rules make of the stored serial log."""
    raw = d.golden_raw(name)
    assert raw is not None, f"raw/{name}.log.gz missing"
    scenario = d.load_scenarios([name])[0]
    assert d.golden_lines(name) == d.normalise(raw, scenario)


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_was_recorded_for_this_scenario_text(name: str) -> None:
    header = (d.GOLDEN_DIR / f"{name}.txt").read_text().splitlines()
    recorded = next(
        line.split(":", 1)[1].strip() for line in header if line.startswith("# script:")
    )
    assert recorded == d.scenario_digest(name), f"scenario {name} changed: run --refresh"


def test_kernel_of_the_goldens_is_7_2_13() -> None:
    for name in GOLDENS:
        header = (d.GOLDEN_DIR / f"{name}.txt").read_text().splitlines()
        assert any(line.startswith("# kernel: Linux version 7.2.13 ") for line in header), name


def test_symbols_keep_relations() -> None:
    sym = d.Symbols()
    assert [sym(0x1000), sym(0x2000), sym(0x1000), sym(0)] == ["@1", "@2", "@1", "0"]


def test_fdt_renderer_on_the_recordings_root() -> None:
    lines = TRANSCRIPT.read_text().splitlines()
    at = lines.index("=== HEX /sys/kernel/debug/kho/in/fdt") + 1
    out = d.render_fdt(bytes.fromhex(lines[at]), d.Symbols())
    assert out[0].startswith("fdt totalsize=405 ")
    assert "strings preserved-memory-map compatible preserved-data blob-size" in out
    assert out[3:6] == [
        'prop compatible [7] "kho-v4"',
        "prop preserved-memory-map [8] @1",
        "node /memblock",
    ]
    assert out[-1] == "fdt-end"
    truncated = d.render_fdt(
        bytes.fromhex(lines[lines.index("=== HEX /sys/kernel/debug/kho/out/fdt") + 1]), d.Symbols()
    )
    assert truncated[0].endswith("file=233") and "fdt-end" not in truncated


def test_dmesg_and_reserved_rules() -> None:
    raw = "\n".join(
        [
            "=== STAGE 1",
            "=== KEXEC",
            "kexec_file_load: ok",
            "=== STAGE 1",  # init.sh's name for a second boot without a handover
            "@@ RESERVED oops free 0 used 0 other 4096",
            "@@ RESERVED x covered",
            "@@ RESERVED y free 3 used 0 other 1",
            "noise from the console",
            "=== DMESG",
            "Linux version 7.2.13 (root@vm) (gcc) #2 SMP PREEMPT",
            "KHO: setup: handover FDT (0x7ffe0000) is incompatible with 'kho-v4': 1",
            "random: crng init done",
            "=== KEXEC",
            "kexec_file_load: Bad file descriptor",  # init.sh's second attempt: dropped
            "=== END",
        ]
    )
    assert d.normalise(raw) == [
        "STAGE 1",
        "KEXEC",
        "kexec_file_load: ok",
        "STAGE 2",
        "RESERVED oops yes",
        "RESERVED x yes",
        "RESERVED y no",
        "DMESG",
        "Linux version 7.2.13",
        "KHO: setup: handover FDT (@1) is incompatible with 'kho-v4': 1",
        "END",
    ]


def test_luo_blob_rules() -> None:
    """7.2's raw ``LUO`` blob (struct luo_ser): fields by name, addresses symbolised; the
    incoming one is freed by the kernel after reading, so only its size is compared."""
    lines = TRANSCRIPT.read_text().splitlines()
    out = bytes.fromhex(lines[lines.index("=== HEX /sys/kernel/debug/kho/out/sub_fdts/LUO") + 1])
    sym = d.Symbols()
    assert d.render_blob("kho/out/sub_fdts/LUO", out, sym) == [
        'luo_ser compatible="luo-v5" liveupdate_num=1 sessions_pa=0 flbs_pa=@1'
    ]
    freed = bytes.fromhex(lines[lines.index("=== HEX /sys/kernel/debug/kho/in/sub_fdts/LUO") + 1])
    assert d.render_blob("kho/in/sub_fdts/LUO", freed, sym) == [
        "raw size=32 (freed after reading: bytes not compared)"
    ]
    assert d.render_blob("kho/out/sub_fdts/LUO", out[:24], sym) == [
        "raw size=24 head=6c756f2d76350000"
    ]


def test_only_luo_scenarios_carry_the_client() -> None:
    """luoc goes into the initramfs (and into the golden's digest) only for a scenario that
    calls it: the others keep the initramfs they were recorded with."""
    used = {s.name for s in d.load_scenarios() if s.uses_luoc()}
    assert used == {"luo"}
    other = d.Scenario("x", "console=ttyS0", ("say luoc\n", "khx show f # luoc\n"))
    assert not other.uses_luoc()
