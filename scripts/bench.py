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
- ``tools``: ``kho-fs inspect`` of a handover with 100,000 preserved ranges and ``kho-fs
  map`` of a 4 TiB machine, next to ``dtc`` and ``cat``/``dd`` of the same bytes
  (``scripts/bench_tools.py``).
- ``startup``: ``kho-fs mount`` wall time until it returns and until ``os.path.ismount``,
  next to the floor's time to the same point.
- ``releases``: the mainline releases (issue 9). In process: the finalize +
  kexec_file_load + exec cycle of 6.16 – 7.0 on a 64 GiB machine next to the v4 cycle
  (activate + load + exec); finalize and exec with 1 TiB preserved as 2 MiB folios
  (2 TiB machine) and 1 GiB as 4 KiB pages (64 GiB machine), for a release of each bitmap
  size (6.16: 512 bytes, 6.18: 4096), next to the same cycle with nothing preserved (the
  preservation calls are set-up, timed apart); the bytes of bitmaps + chunk pages for the
  same set on a 64 GiB and a 4 TiB machine, and for a set 4× smaller. Through real mounts:
  ``scripts/kho-selftest`` on each release (the script alone is timed), next to the v4
  seed flow by shell on a v4 mount (both a whole handover by shell commands with two
  ``kho-fs kexec`` processes).

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
from typing import Any

from bench_differential import section_differential
from bench_luo import luo_rows, section_luo
from bench_tools import section_tools, tool_rows

from kho_fs.daemon import unmount_command
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.kho_mem_map import walk_chunks
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import MEMBLOCK_RSRV_NOINIT
from kho_fs.model.releases import RELEASES
from kho_fs.model.units import PAGE_SIZE

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


# -- releases: mainline KHO (issue 9) ------------------------------------------------------
MAINLINE = ("6.16", "6.17", "6.18", "6.19", "7.0")
BITMAP_RELEASES = ("6.16", "6.18")  # one release of each bitmap size: 512 and 4096 bytes
RELEASE_CMDLINE = "reserve_mem=16M:4096:trace kho=on"
SELFTEST_CMDLINE = "console=ttyS0 kho=on panic=-1"
PRESERVE_BASE = 4 * GIB  # preserved sets start here: free RAM on every machine used below
KEXEC_IMAGE = b"\x90" * 65536


def _mainline(m: Machine) -> KhoMainline:
    kho = m.kernel.kho
    assert isinstance(kho, KhoMainline), m.kernel.release.name
    return kho


def kho_cycle(m: Machine) -> tuple[float, float]:
    """Finalize (v4: ``echo 1 > active``) + kexec_file_load + exec; returns the seconds of
    the finalize and of the exec (the boot of the next kernel, deserialization included)."""
    k = m.kernel
    t0 = time.perf_counter()
    if isinstance(k.kho, KhoMainline):
        k.kho.finalize_store(1)
    else:
        k.kho_v4.active_store(b"1")
    t1 = time.perf_counter()
    k.kexec.kexec_file_load(KEXEC_IMAGE, None, k.cmdline)
    t2 = time.perf_counter()
    m.kexec_exec()
    t3 = time.perf_counter()
    if not m.kernel.handover or m.kernel.panic:
        raise RuntimeError(f"{k.release.name}: the exec did not hand over: {m.kernel.panic}")
    return t1 - t0, t3 - t2


def release_cycles(names: list[str], batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per release, ms per cycle: median [min–max] over ``repeats`` samples, each the mean of
    ``batch`` cycles on a 64 GiB machine with one reserve_mem region (1 MiB written).
    The releases take turns cycle by cycle, so a burst of load hits them all alike."""
    samples: dict[str, list[float]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        machines = {
            n: stack.enter_context(Machine.create(64 * GIB, 1, RELEASE_CMDLINE, release=n))
            for n in names
        }
        regions = {}
        for n, m in machines.items():
            region = m.region("trace")
            assert region is not None
            m.mem.write(region.start, os.urandom(MIB))
            kho_cycle(m)  # warm-up, and the first exec turns the cold boot into a handover
            regions[n] = region
        for _ in range(repeats):
            spent = dict.fromkeys(machines, 0.0)
            for _ in range(batch):
                for n, m in machines.items():
                    t = time.perf_counter()
                    kho_cycle(m)
                    spent[n] += time.perf_counter() - t
            for n, m in machines.items():
                samples[n].append(spent[n] / batch)
                if m.region("trace") != regions[n]:
                    raise RuntimeError(f"{n}: reserve_mem region not revived in place")
    return {n: repeat_ms(stats(v)) for n, v in samples.items()}


def _check_free(m: Machine, base: int, size: int) -> None:
    """The preserved set must be ordinary free RAM: no scratch, nothing reserved."""
    k = m.kernel
    busy = [(a.addr, a.size) for a in k.kho.scratch]
    busy += [(r.base, r.size) for r in k.memblock.reserved]
    for start, length in busy:
        if start < base + size and base < start + length:
            raise RuntimeError(f"[{base:#x}, +{size:#x}) overlaps [{start:#x}, +{length:#x})")


def preserve_folios(m: Machine, base: int, size: int, order: int) -> float:
    """``kho_preserve_folio`` for every folio of ``order`` in ``[base, base + size)``."""
    kho = _mainline(m)
    step = PAGE_SIZE << order
    t = time.perf_counter()
    for phys in range(base, base + size, step):
        kho.kho_preserve_folio(phys, order)
    return time.perf_counter() - t


def _reserved_noinit(m: Machine, base: int, size: int) -> bool:
    """Whether the running kernel reserved ``[base, base + size)`` as preserved memory."""
    covered = base
    for r in m.kernel.memblock.reserved:
        if r.base <= covered < r.end and r.flags & MEMBLOCK_RSRV_NOINIT:
            covered = r.end
    return covered >= base + size


def map_finalize(
    release: str, memory: int, size: int, order: int, repeats: int
) -> dict[str, object]:
    """Finalize and exec with ``size`` bytes preserved as folios of ``order``, next to the
    same cycle with nothing preserved (same machine, same release, same repeat)."""
    samples: dict[str, list[float]] = {
        k: [] for k in ("setup", "finalize", "exec", "empty_finalize", "empty_exec")
    }
    with Machine.create(memory, 1, "console=ttyS0 kho=on", release=release) as m:
        _check_free(m, PRESERVE_BASE, size)
        for _ in range(repeats):
            fin, exe = kho_cycle(m)  # baseline: the map holds nothing but KHO's own pages
            samples["empty_finalize"].append(fin)
            samples["empty_exec"].append(exe)
            samples["setup"].append(preserve_folios(m, PRESERVE_BASE, size, order))
            fin, exe = kho_cycle(m)
            samples["finalize"].append(fin)
            samples["exec"].append(exe)
            if not _reserved_noinit(m, PRESERVE_BASE, size):
                raise RuntimeError(f"{release}: the next kernel did not reserve the set")
    out: dict[str, object] = {
        "bitmap_bytes": RELEASES[release].bitmap_bytes,
        "setup_s": stats(samples.pop("setup")),
    }
    out.update({k: repeat_ms(stats(v)) for k, v in samples.items()})
    return out


def map_bytes(release: str, memory: int, size: int) -> dict[str, int]:
    """RAM the preserved-memory map takes (bitmaps + chunk pages, as the page allocator
    counts it) for ``size`` bytes preserved as 4 KiB pages, after finalize."""
    with Machine.create(memory, 1, "console=ttyS0 kho=on", drivers=[], release=release) as m:
        _check_free(m, PRESERVE_BASE, size)
        kho = _mainline(m)
        free = m.kernel.pages.free_bytes()
        preserve_folios(m, PRESERVE_BASE, size, 0)
        kho.finalize_store(1)
        used = free - m.kernel.pages.free_bytes()
        return {
            "bytes": used,
            "bitmaps": sum(len(v) for v in kho.track.orders.values()),
            "chunks": sum(1 for _ in walk_chunks(m.mem.read, kho.preserved_mem_map)),
        }


def _size_label(size: int) -> str:
    if size >= TIB:
        return f"{size // TIB} TiB"
    if size >= GIB:
        return f"{size // GIB} GiB"
    return f"{size // MIB} MiB" if size >= MIB else f"{size >> 10} KiB"


def selftest_flows(names: list[str], repeats: int) -> dict[str, object]:
    """``scripts/kho-selftest`` through a fresh mount of each release (the script alone is
    timed), next to the v4 seed flow by shell on a fresh v4 mount: both are a whole KHO
    handover driven by shell commands with two ``kho-fs kexec`` processes."""
    from kho_fs.testing import mounted

    kho = kho_fs_command()
    samples: dict[str, list[float]] = {n: [] for n in [*names, "v4_seed_flow"]}
    with scratch_dir() as work:
        bindir = work / "bin"
        bindir.mkdir()
        wrapper = bindir / "kho-fs"
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(f'"{a}"' for a in kho) + ' "$@"\n')
        wrapper.chmod(0o755)
        payload, image = work / "payload", work / "Image"
        payload.write_bytes(os.urandom(MIB))
        image.write_bytes(KEXEC_IMAGE)
        path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        for _ in range(repeats):
            for name in names:
                extra = ("--release", name, "--driver", "test_kho")
                with mounted(work, memory="1G", cmdline=SELFTEST_CMDLINE, extra_args=extra) as mp:
                    t = time.perf_counter()
                    r = subprocess.run(
                        ["bash", str(HERE / "kho-selftest"), str(mp.mountpoint)],
                        env=dict(os.environ, PATH=path), capture_output=True, text=True,
                    )  # fmt: skip
                    samples[name].append(time.perf_counter() - t)
                    if r.returncode != 0 or not r.stdout.rstrip().endswith("PASS"):
                        raise RuntimeError(f"kho-selftest on {name} failed:\n{r.stdout}{r.stderr}")
            v4_cmdline = f"{SELFTEST_CMDLINE} reserve_mem=16M:4096:trace"
            with mounted(work, memory="1G", cmdline=v4_cmdline) as mp:
                env = dict(
                    os.environ, M=str(mp.mountpoint), KHO_FS_ROOT=str(mp.mountpoint),
                    PAYLOAD=str(payload), IMG=str(image), KHO=str(wrapper),
                )  # fmt: skip
                t = time.perf_counter()
                subprocess.run(["bash", "-c", SEED_SCRIPT], env=env, check=True,
                               capture_output=True)  # fmt: skip
                samples["v4_seed_flow"].append(time.perf_counter() - t)
    return {"unit": "s", **{n: stats(v) for n, v in samples.items()}}


def section_releases(args: argparse.Namespace, results: dict[str, object]) -> None:
    """Issue 9: the mainline releases in process (cycle, finalize with big preserved sets,
    the map's size) and the kernel's selftest through real mounts."""
    smoke = args.smoke
    out: dict[str, object] = {}
    batch = 2 if smoke else 20
    out["cycle"] = {
        "machine": "64 GiB",
        "batch": batch,
        "unit": "ms",
        **release_cycles(["v4", *MAINLINE], batch, args.repeats),
    }
    big_set, small_set = (GIB, 16 * MIB) if smoke else (TIB, GIB)
    for key, memory, size, order in (
        ("finalize_2m", 2 * TIB, big_set, 9),
        ("finalize_4k", 64 * GIB, small_set, 0),
    ):
        out[key] = {
            "machine": _size_label(memory),
            "preserved": _size_label(size),
            "order": order,
            "folios": size // (PAGE_SIZE << order),
            **{r: map_finalize(r, memory, size, order, args.repeats) for r in BITMAP_RELEASES},
        }
    one, other = (256 * MIB, 16 * MIB) if smoke else (GIB, 256 * MIB)
    out["map_size"] = {
        "sets": [_size_label(one), _size_label(other)],
        **{
            r: {
                "64 GiB": map_bytes(r, 64 * GIB, one),
                "4 TiB": map_bytes(r, 4 * TIB, one),
                "small_set_64 GiB": map_bytes(r, 64 * GIB, other),
            }
            for r in BITMAP_RELEASES
        },
    }
    out["selftest"] = selftest_flows(["6.16", "7.0"] if smoke else list(MAINLINE), args.repeats)
    out["matrix"] = matrix_timing(["v4", "6.19"] if smoke else None, args.repeats)
    results["releases"] = out


def matrix_timing(names: list[str] | None, repeats: int) -> dict[str, object]:
    """Issue 10: the whole ``kho-fs matrix`` in-process (every ordered pair)."""
    from kho_fs.matrix import MATRIX_RELEASES, run_matrix

    releases = names or list(MATRIX_RELEASES)

    def once() -> float:
        t = time.perf_counter()
        run_matrix(releases, releases)
        return time.perf_counter() - t

    return {"pairs": len(releases) ** 2, "size": len(releases), **repeat(once, repeats)}


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
    releases = results.get("releases")
    if isinstance(releases, dict):
        rows += release_rows(releases)
    startup = results.get("startup")
    if isinstance(startup, dict):
        floor = startup["floor_ismount"]
        for key, label in (("mount_returned", "kho-fs mount returned"),
                           ("ismount", "kho-fs mount → ismount")):  # fmt: skip
            s = startup[key]
            rows.append(Row(label, s, "s", "floor → ismount", floor, ratio(s, floor),
                            "≤ 0.3 s", s["median"] <= 0.3))  # fmt: skip
    rows += [Row(**r) for r in tool_rows(results)]
    rows += [Row(**r) for r in luo_rows(results)]
    return rows


def _fixed(value: float) -> dict[str, float]:
    """A figure measured once (a byte count): min = median = max."""
    return {"min": value, "median": value, "max": value}


def release_rows(rel: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    cycle = rel["cycle"]
    v4 = cycle["v4"]
    for name in MAINLINE:
        s = cycle[name]
        r = ratio(s, v4)
        rows.append(Row(f"{name} cycle: finalize + load + exec ({cycle['machine']})", s, "ms",
                        "v4 cycle", v4, r, "≤ 10 ms, ≤ 2× v4",
                        s["median"] <= 10 and r <= 2))  # fmt: skip
    for key, limit in (("finalize_2m", 100), ("finalize_4k", 300)):
        f = rel[key]
        what = f"{f['preserved']} as {_size_label(PAGE_SIZE << f['order'])} folios"
        for name in BITMAP_RELEASES:
            g = f[name]
            fin, exe = g["finalize"], g["exec"]
            rows.append(Row(f"{name} finalize, {what} ({f['machine']}, {g['bitmap_bytes']} B "
                            "bitmaps)", fin, "ms", "nothing preserved", g["empty_finalize"],
                            ratio(fin, g["empty_finalize"]), f"≤ {limit} ms",
                            fin["median"] <= limit))  # fmt: skip
            rows.append(Row("  exec: boot + deserialize", exe, "ms", "nothing preserved",
                            g["empty_exec"], ratio(exe, g["empty_exec"])))  # fmt: skip
            rows.append(Row(f"  setup: {f['folios']} kho_preserve_folio (not timed above)",
                            g["setup_s"], "s"))  # fmt: skip
    sizes = rel["map_size"]
    one, other = sizes["sets"]
    for name in BITMAP_RELEASES:
        g = sizes[name]
        kib = {k: _fixed(v["bytes"] / 1024) for k, v in g.items()}
        r = ratio(kib["4 TiB"], kib["64 GiB"])
        rows.append(Row(f"{name} map bytes, {one} as 4 KiB pages, 4 TiB machine", kib["4 TiB"],
                        "KiB", "64 GiB machine", kib["64 GiB"], r, "≈ 1× (0.95–1.05)",
                        0.95 <= r <= 1.05))  # fmt: skip
        r = ratio(kib["64 GiB"], kib["small_set_64 GiB"])
        rows.append(Row(f"{name} map bytes, {one} set vs {other} set (64 GiB)", kib["64 GiB"],
                        "KiB", f"{other} set", kib["small_set_64 GiB"], r,
                        "grows with the set (> 1×)", r > 1))  # fmt: skip
    matrix = rel.get("matrix")
    if matrix is not None:
        v4_s = {k: v / 1000 for k, v in v4.items()}
        n = matrix["size"]
        rows.append(Row(f"kho-fs matrix, {n} × {n} releases in process", matrix, "s",
                        "one v4 cycle", v4_s, ratio(matrix, v4_s), "≤ 5 s",
                        matrix["median"] <= 5))  # fmt: skip
    selftest = rel["selftest"]
    base = selftest["v4_seed_flow"]
    for name in MAINLINE:
        if name in selftest:
            s = selftest[name]
            rows.append(Row(f"kho-selftest via a mount, {name}", s, "s", "v4 seed flow", base,
                            ratio(s, base), "≤ 1 s", s["median"] <= 1))  # fmt: skip
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
    "releases": section_releases,
    "tools": section_tools,  # scripts/bench_tools.py: kho-fs inspect and map
    "luo": section_luo,  # scripts/bench_luo.py: /dev/liveupdate (memfd handover, ioctls)
    "differential": section_differential,  # scripts/bench_differential.py: 7.2 vs QEMU
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
