"""The README's first command must keep working: run scripts/demo end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_runs_the_seed_flow() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Revived memory reservation 'trace' from KHO" in out
    assert "OK: the region kept its bytes at the same physical address across kexec." in out
    before = next(line for line in out.splitlines() if line.startswith("sha256 before"))
    after = next(line for line in out.splitlines() if line.startswith("sha256 after"))
    assert before.split()[-1] == after.split()[-1]
    assert "reserve_mem-v1" in out  # dtc decoded the FDT
