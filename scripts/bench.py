"""kho-fs benchmarks: every figure next to a baseline measured in the same run.

Run through ``scripts/bench`` (which installs what is missing); ``--help`` lists the
options.  ``--smoke`` uses tiny sizes so CI can check that the benchmark still runs; its
numbers mean nothing.

Sections (``--only`` picks some):

- ``model``: the in-process activate + kexec_file_load + exec cycle, and the RSS of a
  4 TiB machine after 1 GiB was written.
- ``region``: ``dd`` sequential write and read (bs=1M and bs=128k) of a 1 GiB
  ``reserve_mem`` region through a mount, against the same-size file on tmpfs (/dev/shm)
  and on the floor (below: a minimal pyfuse3 file over an mmap, the FUSE ceiling).
- ``attr``: open+read+close of ``sys/kernel/kho/active`` and ``scratch_phys`` and ``stat``
  per second, by a small C loop (no fork per operation), against the same files on tmpfs
  and against a *floor*: ``scripts/bench_floor.py``, the smallest pyfuse3 file system with
  kho-fs' mount options, serving one 2-byte file at the same path.
- ``seed``: the whole flow driven by shell commands (dd into the region, ``echo 1 >
  active``, ``kho-fs kexec -l IMG -s``, ``kho-fs kexec -e``, read back and compare).
- ``state``: saving and restoring a 64 GiB machine with 1 GiB written (``--state``),
  against ``cp`` + ``sync`` of the same file.
- ``startup``: ``kho-fs mount`` wall time until it returns and until ``os.path.ismount``,
  next to the floor's time to the same point.

Every figure is repeated ``--repeats`` times (min/median/max); ratios are of medians taken
in the same run, and every target is printed next to its figure with PASS or MISS.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kho_fs.daemon import unmount_command
from kho_fs.model.machine import Machine

MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
HERE = Path(__file__).resolve().parent
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
            k.kho_v4.active_store(b"1")
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


def ratio(a: dict[str, float], b: dict[str, float]) -> float:
    """Same-run ratio of two figures' medians."""
    return round(a["median"] / b["median"], 3)


# -- helpers for the mounted sections ---------------------------------------------------
def kho_fs_command() -> list[str]:
    """How a user starts kho-fs: the virtualenv's console script, else ``python -m``."""
    script = Path(sys.executable).parent / "kho-fs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kho_fs"]


@contextlib.contextmanager
def scratch_dir(base: str | None = None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kho-fs-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def kho_mount(memory: str, cmdline: str) -> Iterator[Path]:
    """A real ``kho-fs mount`` (daemon) for the duration of the block."""
    from kho_fs.testing import mounted

    with scratch_dir() as tmp, mounted(tmp, memory=memory, cmdline=cmdline) as m:
        yield m.mountpoint


def _wait_mounted(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """Poll ``os.path.ismount`` (every 0.5 ms) and return the monotonic time it turned true."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() not in (None, 0) or time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not mounted (exit status {proc.returncode})")
        time.sleep(0.0005)
    return time.perf_counter()


@contextlib.contextmanager
def floor_mount(relpath: str, data_size: int = 0) -> Iterator[tuple[Path, float]]:
    """Mount ``bench_floor.py`` (with a ``data`` file of ``data_size`` bytes if non-zero);
    yields the mountpoint and the seconds until ismount."""
    with scratch_dir() as tmp:
        mountpoint = tmp / "floor"
        mountpoint.mkdir()
        ready = tmp / "ready"
        t = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "bench_floor.py"),
                str(mountpoint),
                relpath,
                str(ready),
                str(data_size),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            elapsed = _wait_mounted(mountpoint, proc) - t
            yield mountpoint, elapsed
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if os.path.ismount(mountpoint):
                subprocess.run(unmount_command(str(mountpoint), lazy=True), check=False)


def run_timed(command: list[str], **kwargs: object) -> float:
    t = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - t


# -- region: dd through the mount vs tmpfs ----------------------------------------------
def dd_write(path: Path, size: int, bs: int) -> list[str]:
    return [
        "dd", "if=/dev/zero", f"of={path}", f"bs={bs}", f"count={size // bs}",
        "conv=notrunc", "status=none",
    ]  # fmt: skip


def dd_read(path: Path, size: int, bs: int) -> list[str]:
    return ["dd", f"if={path}", "of=/dev/null", f"bs={bs}", f"count={size // bs}", "status=none"]


def section_region(args: argparse.Namespace, results: dict[str, object]) -> None:
    size = 16 * MIB if args.smoke else GIB
    memory = "1G" if args.smoke else "4G"
    cmdline = f"reserve_mem={size >> 20}M:4096:big kho=on"
    out: dict[str, object] = {"size_mib": size >> 20, "unit": "MiB/s"}
    with (
        kho_mount(memory, cmdline) as m,
        floor_mount("active", size) as (floor, _),
        scratch_dir("/dev/shm") as shm,
    ):
        files = {
            "kho_fs": m / "machine" / "reserve_mem" / "big",
            "floor": floor / "data",
            "tmpfs": shm / "big",
        }
        for path in files.values():  # populate: the timed runs overwrite resident pages
            subprocess.run(dd_write(path, size, MIB), check=True)
        for bs, label in ((MIB, "1M"), (128 << 10, "128k")):
            for op, build in (("write", dd_write), ("read", dd_read)):
                samples: dict[str, list[float]] = {k: [] for k in files}
                for _ in range(args.repeats):
                    for name, path in files.items():  # interleaved: same load for both
                        seconds = run_timed(build(path, size, bs))
                        samples[name].append(size / MIB / seconds)
                s = {k: stats(v) for k, v in samples.items()}
                out[f"{op}_{label}"] = {
                    **s,
                    "ratio": ratio(s["kho_fs"], s["tmpfs"]),
                    "ratio_floor": ratio(s["kho_fs"], s["floor"]),
                    "floor_ratio_tmpfs": ratio(s["floor"], s["tmpfs"]),
                }
    results["region"] = out


# -- attr: small attribute reads vs tmpfs and the floor -------------------------------------
ATTR_LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* attr_loop N (read|stat PATH)... : prints the seconds each job took for N operations. */
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char buf[4096];
    struct stat st;
    for (int j = 2; j + 1 < argc; j += 2) {
        int is_read = argv[j][0] == 'r';
        const char *path = argv[j + 1];
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) {
            if (is_read) {
                int fd = open(path, O_RDONLY);
                if (fd < 0 || read(fd, buf, sizeof buf) <= 0) { perror(path); return 1; }
                close(fd);
            } else if (stat(path, &st) != 0) { perror(path); return 1; }
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.9f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    }
    return 0;
}
"""

ATTR_LOOP_PY = """
import os, sys, time
n = int(sys.argv[1])
for kind, path in zip(sys.argv[2::2], sys.argv[3::2]):
    t = time.perf_counter()
    for _ in range(n):
        if kind == "read":
            fd = os.open(path, os.O_RDONLY); os.read(fd, 4096); os.close(fd)
        else:
            os.stat(path)
    print(time.perf_counter() - t)
"""


def attr_loop_command(workdir: Path) -> tuple[list[str], str]:
    """The C loop built on the spot with gcc, or the same loop in Python without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        src, exe = workdir / "attr_loop.c", workdir / "attr_loop"
        src.write_text(ATTR_LOOP_C)
        subprocess.run([gcc, "-O2", "-o", str(exe), str(src)], check=True)
        return [str(exe)], "C (gcc)"
    return [sys.executable, "-c", ATTR_LOOP_PY], "Python"


def section_attr(args: argparse.Namespace, results: dict[str, object]) -> None:
    ops = 300 if args.smoke else 5000
    rel = "sys/kernel/kho"
    with (
        kho_mount("16G", SEED_CMDLINE) as m,
        floor_mount(f"{rel}/active") as (floor, _),
        scratch_dir("/dev/shm") as shm,
        scratch_dir() as work,
    ):
        loop, loop_kind = attr_loop_command(work)
        (shm / rel).mkdir(parents=True)
        for name in ("active", "scratch_phys"):
            (shm / rel / name).write_bytes((m / rel / name).read_bytes())
        jobs = {
            "read_active.kho_fs": ("read", m / rel / "active"),
            "read_active.floor": ("read", floor / rel / "active"),
            "read_active.tmpfs": ("read", shm / rel / "active"),
            "read_scratch_phys.kho_fs": ("read", m / rel / "scratch_phys"),
            "read_scratch_phys.tmpfs": ("read", shm / rel / "scratch_phys"),
            "stat_active.kho_fs": ("stat", m / rel / "active"),
            "stat_active.floor": ("stat", floor / rel / "active"),
            "stat_active.tmpfs": ("stat", shm / rel / "active"),
        }
        argv = [str(x) for kind, path in jobs.values() for x in (kind, path)]
        subprocess.run([*loop, str(min(ops, 200)), *argv], check=True, capture_output=True)
        samples: dict[str, list[float]] = {k: [] for k in jobs}
        for _ in range(args.repeats):
            out = subprocess.run(
                [*loop, str(ops), *argv], check=True, capture_output=True, text=True
            ).stdout.split()
            for key, seconds in zip(jobs, out, strict=True):
                samples[key].append(ops / float(seconds))
    figures: dict[str, object] = {"unit": "ops/s", "ops": ops, "loop": loop_kind}
    for key, values in samples.items():
        test, fs = key.split(".")
        figure = figures.setdefault(test, {})
        assert isinstance(figure, dict)
        figure[fs] = stats(values)
    for test in ("read_active", "read_scratch_phys", "stat_active"):
        figure = figures[test]
        assert isinstance(figure, dict)
        figure["ratio_tmpfs"] = ratio(figure["kho_fs"], figure["tmpfs"])
        # scratch_phys has no twin on the floor: compared with the floor's one file.
        floor_key = "stat_active" if test.startswith("stat") else "read_active"
        floor_fig = figures[floor_key]
        assert isinstance(floor_fig, dict)
        figure["ratio_floor"] = ratio(figure["kho_fs"], floor_fig["floor"])
    results["attr"] = figures


# -- seed flow: shell commands end to end ------------------------------------------------
SEED_SCRIPT = r"""
set -euo pipefail
t() { echo "$EPOCHREALTIME"; }
t
dd if="$PAYLOAD" of="$M/machine/reserve_mem/trace" bs=1M conv=notrunc status=none
t
echo 1 > "$M/sys/kernel/kho/active"
t
"$KHO" kexec -l "$IMG" -s --reuse-cmdline
t
"$KHO" kexec -e
t
head -c "$(stat -c %s "$PAYLOAD")" "$M/machine/reserve_mem/trace" | cmp -s - "$PAYLOAD"
t
"""
SEED_STEPS = ("dd_write", "activate", "kexec_load", "kexec_exec", "read_back")


def section_seed(args: argparse.Namespace, results: dict[str, object]) -> None:
    payload_size, image_size = (1 * MIB, 1 * MIB) if args.smoke else (4 * MIB, 8 * MIB)
    kho = kho_fs_command()
    with kho_mount("16G", SEED_CMDLINE) as m, scratch_dir() as work:
        payload, image, wrapper = work / "payload", work / "Image", work / "kho-fs"
        payload.write_bytes(os.urandom(payload_size))
        image.write_bytes(os.urandom(image_size))
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(f'"{a}"' for a in kho) + ' "$@"\n')
        wrapper.chmod(0o755)
        env = dict(
            os.environ, M=str(m), KHO_FS_ROOT=str(m), PAYLOAD=str(payload), IMG=str(image),
            KHO=str(wrapper),
        )  # fmt: skip
        totals: list[float] = []
        steps: dict[str, list[float]] = {s: [] for s in SEED_STEPS}
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = subprocess.run(
                ["bash", "-c", SEED_SCRIPT], env=env, check=True, capture_output=True, text=True
            ).stdout.split()
            totals.append(time.perf_counter() - t)
            marks = [float(x) for x in out]
            for name, (a, b) in zip(SEED_STEPS, itertools.pairwise(marks), strict=True):
                steps[name].append(b - a)
    results["seed"] = {
        "unit": "s",
        "payload_mib": payload_size / MIB,
        "image_mib": image_size / MIB,
        "total": stats(totals),
        "steps_ms": {k: repeat_ms(stats(v)) for k, v in steps.items()},
    }


# -- startup: kho-fs mount until ready ---------------------------------------------------
def section_startup(args: argparse.Namespace, results: dict[str, object]) -> None:
    from kho_fs.daemon import unmount

    returned: list[float] = []
    mounted: list[float] = []
    floor: list[float] = []
    for _ in range(args.repeats):
        with scratch_dir() as tmp:
            mountpoint = tmp / "m"
            mountpoint.mkdir()
            command = [*kho_fs_command(), "mount", str(mountpoint), "--memory", "16G"]
            command += ["--cmdline", SEED_CMDLINE, "--log", str(tmp / "log")]
            t = time.perf_counter()
            proc = subprocess.Popen(command)
            try:
                mounted.append(_wait_mounted(mountpoint, proc) - t)
                if proc.wait(30) != 0:
                    raise RuntimeError(f"kho-fs mount exited with {proc.returncode}")
                returned.append(time.perf_counter() - t)
            finally:
                if os.path.ismount(mountpoint):
                    unmount(str(mountpoint))
        with floor_mount("active") as (_, seconds):
            floor.append(seconds)
    results["startup"] = {
        "unit": "s",
        "mount_returned": stats(returned),
        "ismount": stats(mounted),
        "floor_ismount": stats(floor),
    }


# -- state: save and restore a --state machine -------------------------------------------
def section_state(args: argparse.Namespace, results: dict[str, object]) -> None:
    """``kho-fs save`` / ``mount --state`` work: a big machine with some data written,
    saved (sparse, fsynced) and restored, next to copying the same bytes with ``cp``."""
    from kho_fs.state import load_machine, save_machine

    memory, written = (4 * GIB, 64 * MIB) if args.smoke else (64 * GIB, GIB)
    saves: list[float] = []
    loads: list[float] = []
    copies: list[float] = []
    with (
        Machine.create(memory, 1, f"reserve_mem={written >> 20}M:4096:big kho=on") as m,
        scratch_dir() as work,
    ):
        region = m.region("big")
        assert region is not None
        chunk = os.urandom(MIB)
        for off in range(0, written, MIB):
            m.mem.write(region.start + off, chunk)
        path = work / "machine.state"
        for _ in range(args.repeats):
            t = time.perf_counter()
            save_machine(m, path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            load_machine(path).close()
            loads.append(time.perf_counter() - t)
            t = time.perf_counter()  # baseline: the same bytes copied and fsynced
            subprocess.run(["cp", str(path), str(work / "copy")], check=True)
            subprocess.run(["sync", str(work / "copy")], check=True)
            copies.append(time.perf_counter() - t)
            (work / "copy").unlink()
        size = path.stat().st_size
    results["state"] = {
        "unit": "s",
        "machine": f"{memory // GIB} GiB",
        "written_mib": written >> 20,
        "file_mib": round(size / MIB, 1),
        "save": stats(saves),
        "restore": stats(loads),
        "cp_and_sync": stats(copies),
    }


# -- the table -----------------------------------------------------------------------------
@dataclass
class Row:
    figure: str
    value: dict[str, float]
    unit: str
    baseline: str = ""
    base_value: dict[str, float] | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None


def fmt(s: dict[str, float] | None, unit: str) -> str:
    if s is None:
        return ""
    digits = 0 if s["median"] >= 100 else 3
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}] {unit}"


def rows_of(results: dict[str, object]) -> list[Row]:
    rows: list[Row] = []
    region = results.get("region")
    if isinstance(region, dict):
        size = region["size_mib"]
        for op in ("write", "read"):
            for bs in ("1M", "128k"):
                f = region[f"{op}_{bs}"]
                row = Row(f"dd {op} {size} MiB region, bs={bs}", f["kho_fs"], "MiB/s",
                          "tmpfs", f["tmpfs"], f["ratio"])  # fmt: skip
                if bs == "1M":
                    limit = 0.35 if op == "write" else 0.33
                    row.target, row.passed = f"≥ {limit}× tmpfs", f["ratio"] >= limit
                rows.append(row)
                rows.append(Row("  (same, vs floor)", f["kho_fs"], "MiB/s", "floor", f["floor"],
                                f["ratio_floor"]))  # fmt: skip
                rows.append(Row("  (floor vs tmpfs)", f["floor"], "MiB/s", "tmpfs", f["tmpfs"],
                                f["floor_ratio_tmpfs"]))  # fmt: skip
    attr = results.get("attr")
    if isinstance(attr, dict):
        for test, label in (
            ("read_active", "open+read+close active"),
            ("read_scratch_phys", "open+read+close scratch_phys"),
            ("stat_active", "stat active"),
        ):
            f = attr[test]
            floor = attr["stat_active" if test.startswith("stat") else "read_active"]["floor"]
            rows.append(Row(label, f["kho_fs"], "ops/s", "floor", floor, f["ratio_floor"],
                            "≥ 0.8× floor", f["ratio_floor"] >= 0.8))  # fmt: skip
            rows.append(Row("  (same, vs tmpfs)", f["kho_fs"], "ops/s", "tmpfs",
                            f["tmpfs"], f["ratio_tmpfs"]))  # fmt: skip
    seed = results.get("seed")
    if isinstance(seed, dict):
        total = seed["total"]
        rows.append(Row(f"seed flow by shell ({seed['payload_mib']:g} MiB data, "
                        f"{seed['image_mib']:g} MiB image)", total, "s",
                        target="≤ 0.5 s", passed=total["median"] <= 0.5))  # fmt: skip
        for step, s in seed["steps_ms"].items():
            rows.append(Row(f"  {step}", s, "ms"))
    state = results.get("state")
    if isinstance(state, dict):
        what = f"{state['machine']} machine, {state['written_mib']} MiB written"
        copy = state["cp_and_sync"]
        for key in ("save", "restore"):
            rows.append(Row(f"state {key} ({what}, {state['file_mib']} MiB file)", state[key],
                            "s", "cp + sync", copy, ratio(state[key], copy)))  # fmt: skip
    startup = results.get("startup")
    if isinstance(startup, dict):
        floor = startup["floor_ismount"]
        for key, label in (("mount_returned", "kho-fs mount returned"),
                           ("ismount", "kho-fs mount → ismount")):  # fmt: skip
            s = startup[key]
            rows.append(Row(label, s, "s", "floor → ismount", floor, ratio(s, floor),
                            "≤ 0.3 s", s["median"] <= 0.3))  # fmt: skip
    return rows


def print_table(results: dict[str, object]) -> None:
    rows = rows_of(results)
    if rows:
        if results.get("smoke"):
            print("SMOKE RUN: tiny sizes, the numbers mean nothing")
        print("figure: median [min–max] over repeats; ratio = kho-fs / baseline (medians)")
        w = max(len(r.figure) for r in rows)
        wv = max(len(fmt(r.value, r.unit)) for r in rows)
        wb = max(len(fmt(r.base_value, r.unit)) for r in rows)
        for r in rows:
            base = f"{r.baseline:>15s} {fmt(r.base_value, r.unit):{wb}s}" if r.baseline else ""
            rat = f"{r.ratio:6.2f}×" if r.ratio is not None else ""
            verdict = ""
            if r.passed is not None:
                verdict = f"target {r.target}: {'PASS' if r.passed else 'MISS'}"
            line = f"{r.figure:{w}s}  {fmt(r.value, r.unit):{wv}s}  {base:{16 + wb}s} {rat:7s}"
            print(f"{line}  {verdict}".rstrip())
    results["targets"] = [
        {"figure": r.figure, "target": r.target, "pass": r.passed}
        for r in rows
        if r.passed is not None
    ]
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
    "region": section_region,
    "attr": section_attr,
    "seed": section_seed,
    "startup": section_startup,
    "state": section_state,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="runs of every figure (default 5; smoke 2)"
    )
    p.add_argument(
        "--only", choices=sorted(SECTIONS), action="append", help="run only these sections"
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.smoke else 5
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    results: dict[str, object] = {"smoke": args.smoke, "repeats": args.repeats}
    for name in args.only or list(SECTIONS):
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        SECTIONS[name](args, results)
        print(f"bench: {name} took {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
