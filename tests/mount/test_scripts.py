"""The long-form scripts run in CI at tiny sizes, so they cannot rot: ``scripts/bench``
(``--smoke``: every section, real mounts, numbers meaningless) and ``scripts/stress``
(every campaign, a few hundred writes, a few cycles and sequences)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_bench_smoke_prints_every_figure_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = run_script("bench.py", "--smoke", "--repeats", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    for figure in (
        "dd write 16 MiB region, bs=1M",
        "dd read 16 MiB region, bs=128k",
        "open+read+close active",
        "stat active",
        "seed flow by shell",
        "kho-fs mount → ismount",
        "state save (4 GiB machine",
        "state restore (4 GiB machine",
        "in-process cycle",
        "RSS of a 4 GiB machine",
        "6.16 cycle: finalize + load + exec",
        "7.0 cycle: finalize + load + exec",
        "6.18 finalize, 1 GiB as 2 MiB folios",
        "6.16 finalize, 16 MiB as 4 KiB folios",
        "6.18 map bytes, 256 MiB as 4 KiB pages, 4 TiB machine",
        "kho-selftest via a mount, 6.16",
        "kho-selftest via a mount, 7.0",
    ):
        assert figure in r.stdout, (figure, r.stdout)
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    assert {
        "region", "attr", "seed", "startup", "state", "model_cycle_ms", "rss_mib", "releases",
    } <= set(results)  # fmt: skip
    assert results["releases"]["selftest"]["7.0"]["median"] > 0
    assert results["region"]["write_1M"]["ratio"] > 0
    assert results["attr"]["read_active"]["ratio_floor"] > 0


def test_stress_runs_every_campaign_and_reports_totals():
    r = run_script(
        "stress.py", "--writes", "600", "--fuzz-rounds", "1", "--sequences", "5",
        "--cycles", "2", "--luo-messages", "300", "--mainline-writes", "100", "--seed", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    totals = dict(line.split(":", 1) for line in r.stdout.splitlines()[-5:] if ":" in line)
    assert totals["writes fuzzed"].strip() == "600"
    assert totals["sequences run"].strip() == "5"
    assert totals["cycles under load"].strip() == "2"
    assert int(totals["bytes verified"]) > 0
    assert totals["daemon restarts"].strip() == "0"
