"""The ``differential`` section of ``scripts/bench`` (``--only differential``).

One differential run (scripts/differential.py) over every scenario: the real Linux 7.2
kernel in QEMU (both stages of each scenario, through ../shared/oracle/run.sh) plus the
emulated side on kho-fs mounts, next to the emulated side alone (what CI runs against the
golden transcripts). Also the lines compared and the lines that differ. ``--smoke`` runs
the ``default`` scenario only. Without a built differential kernel
(``scripts/differential --build-kernel``) the real side is reported as not run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import differential as d


def section_differential(args: argparse.Namespace, results: dict[str, object]) -> None:
    scenarios = d.load_scenarios(["default"] if args.smoke else None)
    kernel = d.default_kernel()
    out: dict[str, object] = {"scenarios": [s.name for s in scenarios]}
    emu_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kho-bench-diff-") as tmp:
        work = Path(tmp)
        env = d.emu_env(work, kernel)
        compared = differing = 0
        for _ in range(max(1, args.repeats if not args.smoke else 1)):
            t0 = time.perf_counter()
            emu = {s.name: d.normalise(d.run_emu(s, env), s) for s in scenarios}
            emu_times.append(time.perf_counter() - t0)
        out["emulated_s"] = {
            "min": min(emu_times),
            "median": statistics.median(emu_times),
            "max": max(emu_times),
        }
        # the real side (QEMU) only in a full run, and only where the oracle scripts are
        if kernel is not None and not args.smoke and (d.ORACLE_DIR / "run.sh").exists():
            t0 = time.perf_counter()
            for s in scenarios:
                real = d.normalise(d.run_real(s, kernel, work / f"{s.name}.log"), s)
                res = d.compare(s.name, real, emu[s.name])
                compared += res.compared
                differing += res.differing
            real_s = time.perf_counter() - t0
            out["real_s"] = real_s
            out["differential_run_s"] = real_s + statistics.median(emu_times)
            out["compared"], out["differing"] = compared, differing
        else:
            for s in scenarios:
                golden = d.golden_lines(s.name)
                if golden is not None:
                    res = d.compare(s.name, golden, emu[s.name])
                    compared += res.compared
                    differing += res.differing
            out["real_s"] = None
            out["compared_with_goldens"], out["differing"] = compared, differing
    results["differential"] = out
    emu_med = statistics.median(emu_times)
    line = f"differential: {len(scenarios)} scenario(s), kho-fs side {emu_med:.1f} s"
    if out["real_s"] is not None:
        line += (
            f"; one differential run (real QEMU + kho-fs) {out['differential_run_s']:.1f} s "
            f"({float(out['differential_run_s']) / emu_med:.0f}x the emulated run alone); "  # type: ignore[arg-type]
            f"{compared} lines compared, {differing} differ"
        )
    else:
        line += (
            "; no kernel built (real side not run); "
            f"vs goldens: {compared} lines, {differing} differ"
        )
    print(line)
