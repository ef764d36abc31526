"""Benchmarks of ``kho-fs inspect`` and ``kho-fs map`` (``scripts/bench --only tools``).

- ``inspect``: a mounted 6.18 machine whose outgoing handover preserves 100,000 separate
  ranges (random orders, finalized), decoded by ``kho-fs inspect M`` (text and ``--json``,
  the whole command as a user runs it), next to ``dtc -I dtb -O dts`` of the same root FDT
  and to ``dd`` of as many bytes from ``dev/mem`` as the map occupies (chunks + bitmaps).
- ``map``: a mounted 4 TiB, 4-node machine with 1,000 preserved ranges, drawn by
  ``kho-fs map M -o FILE.svg``, next to ``cat`` of the files the command reads; plus the
  SVG's size and the in-process time of the picture the mount serves (``machine/map.svg``).

The mounted machines come from :func:`profile`, loaded by the daemon through the hidden
``--profile FILE.py:CALLABLE`` option; ``KHO_FS_BENCH_RANGES`` and ``KHO_FS_BENCH_RELEASE``
say what it preserves.
"""

from __future__ import annotations

import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
TIB = 1 << 40
PAGE = 4096
BASE = 8 * GIB  # preserved ranges start here (below: the low RAM, the first kernel)


def preserve_ranges(m: Machine, count: int, seed: int = 1) -> int:
    """Preserve ``count`` separate blocks (random orders) spread over free RAM, then
    finalize; returns how many were preserved (blocks that would touch scratch or a
    reservation are skipped)."""
    kho = m.kernel.kho
    assert isinstance(kho, KhoMainline), m.kernel.release.name
    base = BASE if m.mem.end > 4 * BASE else 4 * GIB  # small machines: their RAM above 4 GiB
    end = m.mem.end - 64 * GIB if m.mem.end > 128 * GIB else m.mem.end - GIB
    slots = count + count // 4  # some land on scratch or reservations: skipped
    stride = (end - base) // slots // PAGE * PAGE
    if stride < 4 * PAGE:
        raise ValueError(f"{count} ranges do not fit in {m.mem.end:#x} bytes of RAM")
    max_order = min(9, int(math.log2(stride // 2 // PAGE)))
    busy = sorted(
        [(a.addr, a.end) for a in kho.scratch]
        + [(r.base, r.base + r.size) for r in m.kernel.memblock.reserved]
    )
    rng = random.Random(seed)
    done = 0
    for i in range(slots):
        if done == count:
            break
        order = rng.randrange(max_order + 1)
        size = PAGE << order
        phys = (base + i * stride + size - 1) // size * size
        if any(a < phys + size and phys < b for a, b in busy) or not m.mem.is_ram(phys, size):
            continue
        kho.kho_preserve_folio(phys, order)
        done += 1
    if done != count:
        raise ValueError(f"only {done} of {count} ranges found room")
    kho.finalize_store(1)
    return done


def big_machine(memory: int, nodes: int, ranges: int, release: str = "6.18") -> Machine:
    m = Machine.create(
        memory,
        nodes,
        "console=ttyS0 kho=on reserve_mem=64M:4096:trace",
        drivers=[],
        release=release,
    )
    preserve_ranges(m, ranges)
    return m


def profile(memory: int, nodes: int, cmdline: str | None) -> Any:
    """``kho-fs mount --profile scripts/bench_tools.py:profile``: a machine with
    ``KHO_FS_BENCH_RANGES`` preserved ranges (release ``KHO_FS_BENCH_RELEASE``)."""
    from kho_fs.tree.profile_v4 import V4Profile

    ranges = int(os.environ.get("KHO_FS_BENCH_RANGES", "1000"))
    release = os.environ.get("KHO_FS_BENCH_RELEASE", "6.18")
    return V4Profile(big_machine(memory, nodes, ranges, release))


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "min": round(min(samples), 4),
        "median": round(statistics.median(samples), 4),
        "max": round(max(samples), 4),
    }


def _timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _stats(samples)


def _cpu(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """CPU seconds (user + system) of the child processes ``fn`` runs: what the command
    costs, whatever else the machine is doing."""
    samples = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        fn()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        samples.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return _stats(samples)


def calibration(repeats: int) -> dict[str, float]:
    """Seconds of ``sum(range(10**7))`` in a fresh interpreter, in this run: how fast (and
    how busy) the machine is while the figures are taken."""
    code = "import time; t = time.perf_counter(); sum(range(10**7)); print(time.perf_counter() - t)"
    samples = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        samples.append(float(out.stdout))
    return _stats(samples)


def _kho_fs() -> list[str]:
    script = Path(sys.executable).parent / "kho-fs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kho_fs"]


def _run(command: list[str], stdout: Any = subprocess.DEVNULL) -> None:
    subprocess.run(command, check=True, stdout=stdout, stderr=subprocess.PIPE)


def _mount(tmp: str, memory: str, nodes: int, ranges: int) -> Any:
    from kho_fs.testing import mounted

    os.environ["KHO_FS_BENCH_RANGES"] = str(ranges)
    os.environ["KHO_FS_BENCH_RELEASE"] = "6.18"
    return mounted(
        tmp, memory=memory, nodes=nodes, profile=f"{HERE / 'bench_tools.py'}:profile", timeout=300
    )


def bench_inspect(ranges: int, memory: str, repeats: int) -> dict[str, Any]:
    import json

    kho_fs = _kho_fs()
    with (
        tempfile.TemporaryDirectory(prefix="kho-fs-bench-") as tmp,
        _mount(tmp, memory, 1, ranges) as m,
    ):
        root = m.mountpoint
        fdt = root / "sys/kernel/debug/kho/out/fdt"
        report = json.loads(
            subprocess.run(
                [*kho_fs, "inspect", str(root), "--json"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        pres = report["preserved"]
        map_bytes = pres["chunks"] * PAGE + pres["bitmaps"] * pres["bitmap_bytes"]
        first = pres["map_address"]
        dd = [
            "dd",
            f"if={root / 'dev/mem'}",
            "of=/dev/null",
            "bs=128k",
            "iflag=skip_bytes,count_bytes",
            f"skip={first}",
            f"count={map_bytes}",
            "status=none",
        ]
        return {
            "ranges": len(pres["ranges"]),
            "blocks": pres["total_blocks"],
            "chunks": pres["chunks"],
            "bitmaps": pres["bitmaps"],
            "map_bytes": map_bytes,
            "inspect_text": _timed(lambda: _run([*kho_fs, "inspect", str(root)]), repeats),
            "inspect_text_cpu": _cpu(lambda: _run([*kho_fs, "inspect", str(root)]), repeats),
            "inspect_json": _timed(
                lambda: _run([*kho_fs, "inspect", str(root), "--json"]), repeats
            ),
            "dtc": _timed(lambda: _run(["dtc", "-I", "dtb", "-O", "dts", str(fdt)]), repeats),
            "dd_map_bytes": _timed(lambda: _run(dd), repeats),
        }


def bench_map(ranges: int, memory: str, nodes: int, repeats: int) -> dict[str, Any]:
    from kho_fs.memory_map import picture_from_machine, render_svg

    kho_fs = _kho_fs()
    with (
        tempfile.TemporaryDirectory(prefix="kho-fs-bench-") as tmp,
        _mount(tmp, memory, nodes, ranges) as m,
    ):
        root = m.mountpoint
        svg = Path(tmp) / "map.svg"
        inputs = [
            str(root / p)
            for p in (
                "machine/status",
                "machine/layout",
                "proc/version",
                "sys/kernel/debug/memblock/memory",
                "sys/kernel/debug/memblock/reserved",
                "sys/kernel/debug/kho/out/scratch_phys",
                "sys/kernel/debug/kho/out/scratch_len",
            )
        ]
        out: dict[str, Any] = {
            "map_cli": _timed(lambda: _run([*kho_fs, "map", str(root), "-o", str(svg)]), repeats),
            "map_cli_cpu": _cpu(lambda: _run([*kho_fs, "map", str(root), "-o", str(svg)]), repeats),
            "map_text_cli": _timed(lambda: _run([*kho_fs, "map", str(root), "--text"]), repeats),
            "cat_inputs": _timed(lambda: _run(["cat", *inputs]), repeats),
            "served_svg": _timed(lambda: (root / "machine/map.svg").read_bytes(), repeats),
        }
        out["machine"] = f"{memory}, {nodes} nodes, {ranges} ranges"
        out["svg_bytes"] = svg.stat().st_size
        out["svg_regions"] = svg.read_text().count('<g class="region')
    with big_machine(_size(memory), nodes, ranges) as machine:
        out["in_process"] = _timed(lambda: render_svg(picture_from_machine(machine)), repeats)
    return out


def _size(text: str) -> int:
    from kho_fs.model.cmdline import memparse

    return memparse(text)[0]


def section_tools(args: Any, results: dict[str, object]) -> None:
    """The ``tools`` section of scripts/bench.py."""
    load = os.getloadavg()[0]
    if args.smoke:
        inspect = bench_inspect(1000, "4G", args.repeats)
        drawn = bench_map(100, "4G", 2, args.repeats)
    else:
        inspect = bench_inspect(100_000, "64G", args.repeats)
        drawn = bench_map(1000, "4T", 4, args.repeats)
    results["tools"] = {
        "inspect": inspect,
        "map": drawn,
        "calibration": calibration(args.repeats),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def tool_rows(results: dict[str, object]) -> list[dict[str, Any]]:
    """Rows for scripts/bench.py's table: figure, value, unit, baseline, baseline value,
    target, passed (plain dicts: bench.py turns them into its Row)."""
    tools = results.get("tools")
    if not isinstance(tools, dict):
        return []
    rows: list[dict[str, Any]] = []
    ins, mp = tools["inspect"], tools["map"]

    def ratio(a: dict[str, float], b: dict[str, float]) -> float:
        return round(a["median"] / b["median"], 3)

    what = f"{ins['ranges']} ranges, {ins['bitmaps']} bitmaps"
    for key, label in (
        ("inspect_text", "kho-fs inspect M"),
        ("inspect_json", "kho-fs inspect M --json"),
    ):
        s = ins[key]
        rows.append(
            {
                "figure": f"{label} ({what})",
                "value": s,
                "unit": "s",
                "baseline": "dtc -O dts",
                "base_value": ins["dtc"],
                "ratio": ratio(s, ins["dtc"]),
                "target": "≤ 1 s",
                "passed": s["median"] <= 1.0,
            }
        )
    cal = tools["calibration"]
    rows.append({"figure": "  (same, CPU seconds)", "value": ins["inspect_text_cpu"], "unit": "s",
                 "baseline": "sum(range(10**7))", "base_value": cal,
                 "ratio": ratio(ins["inspect_text_cpu"], cal)})  # fmt: skip
    rows.append(
        {
            "figure": f"  dd of the map's {ins['map_bytes'] >> 10} KiB from dev/mem",
            "value": ins["dd_map_bytes"],
            "unit": "s",
            "baseline": "dtc -O dts",
            "base_value": ins["dtc"],
            "ratio": ratio(ins["dd_map_bytes"], ins["dtc"]),
        }
    )
    s = mp["map_cli"]
    rows.append(
        {
            "figure": f"kho-fs map M -o FILE.svg ({mp['machine']})",
            "value": s,
            "unit": "s",
            "baseline": "cat of its inputs",
            "base_value": mp["cat_inputs"],
            "ratio": ratio(s, mp["cat_inputs"]),
            "target": "≤ 1 s",
            "passed": s["median"] <= 1.0,
        }
    )
    rows.append({"figure": "  (same, CPU seconds)", "value": mp["map_cli_cpu"], "unit": "s",
                 "baseline": "sum(range(10**7))", "base_value": cal,
                 "ratio": ratio(mp["map_cli_cpu"], cal)})  # fmt: skip
    rows.append({"figure": "  kho-fs map M --text", "value": mp["map_text_cli"], "unit": "s"})
    rows.append({"figure": "  read machine/map.svg", "value": mp["served_svg"], "unit": "s"})
    rows.append({"figure": "  picture + SVG in-process", "value": mp["in_process"], "unit": "s"})
    kib = mp["svg_bytes"] / 1024
    fixed = {"min": kib, "median": kib, "max": kib}
    rows.append(
        {
            "figure": f"  SVG size ({mp['svg_regions']} regions)",
            "value": fixed,
            "unit": "KiB",
            "target": "< 1 MiB",
            "passed": mp["svg_bytes"] < 1 << 20,
        }
    )
    load = tools.get("load_average") or ["?", "?"]
    rows.append({"figure": f"  python sum(range(10**7)) (load average {load[0]} → {load[1]}, "
                 f"{os.cpu_count()} CPUs)", "value": cal, "unit": "s"})  # fmt: skip
    return rows
