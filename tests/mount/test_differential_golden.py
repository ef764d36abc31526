"""Release 7.2 against a real Linux 7.2.13: every differential scenario's emulated side
(a kho-fs mount driven by the scenario's shell stages) must produce the golden transcript
recorded from the real kernel in QEMU (tests/data/golden/linux-7.2.13). No QEMU here;
``scripts/differential --refresh`` rebuilds the goldens from a real run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import differential as d  # noqa: E402

GOLDENS = [p.stem for p in sorted(d.GOLDEN_DIR.glob("*.txt"))]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> d.EmuEnv:
    return d.emu_env(tmp_path_factory.mktemp("differential"))


@pytest.mark.parametrize("name", GOLDENS)
def test_kho_fs_transcript_equals_the_real_kernels(name: str, env: d.EmuEnv) -> None:
    scenario = d.load_scenarios([name])[0]
    golden = d.golden_lines(name)
    assert golden is not None
    emu = d.normalise(d.run_emu(scenario, env), scenario)
    result = d.compare(name, golden, emu)
    assert result.differing == 0, "\n".join(result.diff)
