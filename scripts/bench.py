"""kho-fs benchmarks: every figure next to a baseline measured in the same run.

Run through ``scripts/bench`` (which installs what is missing). ``--smoke`` uses tiny sizes
so CI can check that the benchmark still runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kho_fs.model.machine import Machine

GIB = 1 << 30
TIB = 1 << 40
SEED_CMDLINE = "reserve_mem=64M:4096:trace kho=on kho_scratch=512M,256M"


def stats(samples: list[float]) -> dict[str, float]:
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples)}


def repeat(fn: Callable[[], float], times: int) -> dict[str, float]:
    return stats([fn() for _ in range(times)])


# -- in-process model -------------------------------------------------------------------
def model_cycle(memory: int, repeats: int) -> dict[str, float]:
    """One activate → kexec_file_load → exec cycle on a machine with ``memory`` bytes."""
    with Machine.create(memory, 1, "reserve_mem=16M:4096:trace kho=on") as m:
        region = m.region("trace")
        assert region is not None
        m.mem.write(region.start, os.urandom(1 << 20))
        image = b"\x90" * 65536

        def cycle() -> float:
            t = time.perf_counter()
            k = m.kernel
            k.kho.active_store(b"1")
            k.kexec.kexec_file_load(image, None, k.cmdline)
            m.kexec_exec()
            elapsed = time.perf_counter() - t
            assert m.kernel.handover and m.region("trace") == region
            return elapsed

        return repeat(cycle, repeats)


def rss_after_write(memory: int, written: int) -> float:
    """Peak RSS (MiB) of a fresh process holding a ``memory`` machine with ``written`` bytes."""
    code = (
        "import resource\n"
        "from kho_fs.model.machine import Machine\n"
        f"m = Machine.create({memory}, 1, 'reserve_mem={written}:4096:big kho=on')\n"
        "r = m.region('big'); chunk = b'\\xa5' * (1 << 20)\n"
        "for off in range(0, r.size, len(chunk)):\n"
        "    m.mem.write(r.start + off, chunk[: r.size - off])\n"
        "k = m.kernel; k.kho.active_store(b'1')\n"
        "k.kexec.kexec_file_load(b'K' * 65536, None, k.cmdline); m.kexec_exec()\n"
        "assert m.region('big') == r\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def section_model(args: argparse.Namespace, results: dict[str, object]) -> None:
    sizes = [GIB, 64 * GIB, 4 * TIB] if not args.smoke else [GIB, 4 * GIB]
    cycles = {}
    for size in sizes:
        label = f"{size // GIB} GiB" if size < TIB else f"{size // TIB} TiB"
        cycles[label] = repeat_ms(model_cycle(size, args.repeats))
    results["model_cycle_ms"] = cycles
    big, written = (4 * TIB, GIB) if not args.smoke else (4 * GIB, 64 << 20)
    results["rss_mib"] = {
        "machine": f"{big // GIB} GiB",
        "written_mib": written >> 20,
        "rss": rss_after_write(big, written),
        "baseline_empty_python": rss_after_write(GIB, 2 << 20),
    }


def repeat_ms(s: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in s.items()}


def print_table(results: dict[str, object]) -> None:
    cycles = results.get("model_cycle_ms")
    if isinstance(cycles, dict):
        print("in-process cycle (activate + kexec_file_load + exec), ms")
        print(f"  {'machine':10s} {'min':>8s} {'median':>8s} {'max':>8s}")
        for label, s in cycles.items():
            print(f"  {label:10s} {s['min']:8.3f} {s['median']:8.3f} {s['max']:8.3f}")
        labels = list(cycles)
        for a, b in itertools.pairwise(labels):
            print(f"  ratio {b} / {a} (median): {cycles[b]['median'] / cycles[a]['median']:.2f}x")
    rss = results.get("rss_mib")
    if isinstance(rss, dict):
        print(
            f"RSS of a {rss['machine']} machine with {rss['written_mib']} MiB written: "
            f"{rss['rss']:.0f} MiB "
            f"(same process with 2 MiB written on 1 GiB: {rss['baseline_empty_python']:.0f} MiB)"
        )


SECTIONS: dict[str, Callable[[argparse.Namespace, dict[str, object]], None]] = {
    "model": section_model,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--only", choices=sorted(SECTIONS), action="append", help="run only these sections"
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    results: dict[str, object] = {"smoke": args.smoke}
    for name in args.only or list(SECTIONS):
        SECTIONS[name](args, results)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
