"""kho-fs robustness campaigns, long form (the CI runs the same code with bounded sizes).

Run through ``scripts/stress`` (which installs what is missing); ``--help`` lists the
options.  Three campaigns, each on a fresh mount of its own (the stateful one needs none):

- ``fuzz``: random payloads to every writable file through the real mount; every answer
  must be success or the errno the spec prescribes (:mod:`kho_fs.stress.fuzz`): the v4
  machine, then the debugfs files of every mainline release (``--mainline-writes`` each).
- ``stateful``: random sequences of activate/abort/dt_max/region writes/loads/exec/reboot
  on the in-process model against a reference model (``tests/model/test_stateful.py``,
  run by pytest with ``KHO_FS_STATEFUL_EXAMPLES``).
- ``concurrency``: parallel readers and writers while activate/kexec cycles run, every
  region verified by sha256 after every cycle (:mod:`kho_fs.stress.concurrency`).
- ``luo``: random and mutated messages, descriptors and dying clients on the
  ``/dev/liveupdate`` socket (:mod:`kho_fs.stress.luo_fuzz`).

It prints writes fuzzed, sequences run, cycles under load, bytes verified and daemon
restarts (a daemon that died or was replaced during a campaign; must be 0), and exits
non-zero if any campaign found a problem.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kho_fs.daemon import read_pid_file
from kho_fs.testing import MountedMachine, mounted

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Totals:
    writes_fuzzed: int = 0
    mainline_writes: int = 0
    sequences: int = 0
    cycles: int = 0
    bytes_verified: int = 0
    daemon_restarts: int = 0
    failures: list[str] = field(default_factory=list)


def status(text: str) -> None:
    """A progress line that overwrites itself on a terminal (nothing in a log)."""
    if sys.stdout.isatty():
        print(f"\r  {text:<60}", end="" if text else "\r", flush=True)


def _daemon_survived(m: MountedMachine) -> bool:
    """The daemon that mounted ``m`` still serves it (same pid, mount answering)."""
    return (
        m.pid is not None
        and read_pid_file(str(m.mountpoint)) == m.pid
        and os.path.ismount(m.mountpoint)
    )


def run_fuzz(args: argparse.Namespace, totals: Totals, work: Path) -> None:
    from kho_fs.stress import fuzz

    for round_ in range(args.fuzz_rounds):
        seed = args.seed + round_
        with mounted(
            work, memory=fuzz.FUZZ_MEMORY, nodes=fuzz.FUZZ_NODES, cmdline=fuzz.FUZZ_CMDLINE
        ) as m:

            def progress(done: int, seed: int = seed) -> None:
                status(f"fuzz seed {seed}: {done}/{args.writes} writes")

            report = fuzz.run_fuzz(m.mountpoint, args.writes, seed, progress)
            survived = _daemon_survived(m)
        status("")
        print(report.summary(limit=10))
        totals.writes_fuzzed += report.writes
        totals.daemon_restarts += not survived
        if not report.ok:
            totals.failures.append(f"fuzz seed {seed}: {len(report.unexpected)} unexpected")
    mainline_writes = args.mainline_writes
    if mainline_writes is None:
        mainline_writes = args.writes // 10
    for release in fuzz.MAINLINE_ERAS if mainline_writes else ():
        with mounted(
            work,
            memory=fuzz.MAINLINE_FUZZ_MEMORY,
            cmdline=fuzz.MAINLINE_FUZZ_CMDLINE,
            extra_args=["--release", release, *fuzz.MAINLINE_FUZZ_ARGS],
        ) as m:

            def ml_progress(done: int, release: str = release) -> None:
                status(f"fuzz {release}: {done}/{mainline_writes} writes")

            report = fuzz.run_mainline_fuzz(
                m.mountpoint, release, mainline_writes, args.seed, ml_progress
            )
            survived = _daemon_survived(m)
        status("")
        print(f"release {release}: " + report.summary(limit=10))
        totals.mainline_writes += report.writes
        totals.daemon_restarts += not survived
        if not report.ok:
            totals.failures.append(f"fuzz {release}: {len(report.unexpected)} unexpected")


def run_stateful(args: argparse.Namespace, totals: Totals, work: Path) -> None:
    env = dict(os.environ, KHO_FS_STATEFUL_EXAMPLES=str(args.sequences))
    if args.releases:  # the stateful campaign draws a release per sequence
        env["KHO_FS_STATEFUL_RELEASES"] = args.releases
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "model" / "test_stateful.py")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if result.returncode == 0:
        totals.sequences += args.sequences
    else:
        totals.failures.append(f"stateful: pytest exited with {result.returncode}")


def run_concurrency(args: argparse.Namespace, totals: Totals, work: Path) -> None:
    from kho_fs.stress import concurrency

    with mounted(
        work, memory=concurrency.MEMORY, nodes=concurrency.NODES, cmdline=concurrency.CMDLINE
    ) as m:

        def progress(cycle: int, _report: object) -> None:
            status(f"concurrency: cycle {cycle}/{args.cycles}")

        report = concurrency.run_concurrency(
            m.mountpoint, args.cycles, workers=args.workers, seed=args.seed, progress=progress
        )
        survived = _daemon_survived(m)
    status("")
    print(report.summary())
    totals.cycles += report.cycles
    totals.bytes_verified += report.bytes_verified
    totals.daemon_restarts += not survived
    if not report.ok:
        totals.failures.append(f"concurrency: {len(report.unexpected)} unexpected")


def run_luo(args: argparse.Namespace, totals: Totals, work: Path) -> None:
    """Random and mutated messages on the /dev/liveupdate socket (kho_fs.stress.luo_fuzz)."""
    from kho_fs.stress import luo_fuzz

    with mounted(work, memory=luo_fuzz.MEMORY, cmdline=luo_fuzz.CMDLINE,
                 extra_args=["--release", "6.19"]) as m:  # fmt: skip
        assert m.pid is not None
        report = luo_fuzz.run_luo_fuzz(
            m.mountpoint, m.pid, args.luo_messages, args.seed,
            lambda done: status(f"luo: {done}/{args.luo_messages} messages"),
        )  # fmt: skip
        survived = _daemon_survived(m)
    status("")
    print(report.summary())
    totals.daemon_restarts += not survived
    if not report.ok:
        totals.failures.append(f"luo seed {args.seed}: {len(report.unexpected)} unexpected")


CAMPAIGNS = {
    "fuzz": run_fuzz,
    "stateful": run_stateful,
    "concurrency": run_concurrency,
    "luo": run_luo,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=sorted(CAMPAIGNS), action="append", help="run only these")
    p.add_argument("--writes", type=int, default=200_000, help="writes per fuzz round")
    p.add_argument("--fuzz-rounds", type=int, default=5, help="fuzz rounds (seeds) to run")
    p.add_argument(
        "--mainline-writes",
        type=int,
        default=None,
        help="fuzz writes per mainline release (default: a tenth of --writes)",
    )
    p.add_argument(
        "--releases", default="", help="stateful: releases to draw from (e.g. 6.16,6.19)"
    )
    p.add_argument("--sequences", type=int, default=20_000, help="stateful sequences")
    p.add_argument("--cycles", type=int, default=1000, help="activate/kexec cycles under load")
    p.add_argument("--workers", type=int, default=8, help="parallel clients during the cycles")
    p.add_argument(
        "--luo-messages", type=int, default=200_000, help="messages to the liveupdate socket"
    )
    p.add_argument("--seed", type=int, default=int(time.time()), help="first random seed")
    p.add_argument(
        "--ci", action="store_true", help="the CI's bounded sizes (20k writes, 1k sequences…)"
    )
    args = p.parse_args(argv)
    if args.ci:
        args.writes, args.fuzz_rounds, args.sequences, args.cycles = 20_000, 1, 700, 100
        args.luo_messages = 10_000
    totals = Totals()
    print(f"stress: seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kho-fs-stress-") as tmp:
        for name in args.only or list(CAMPAIGNS):
            print(f"== {name}", flush=True)
            started = time.monotonic()
            CAMPAIGNS[name](args, totals, Path(tmp))
            print(f"== {name} took {time.monotonic() - started:.1f} s", flush=True)
    print()
    print(f"debugfs writes:     {totals.mainline_writes} (mainline releases)")
    print(f"writes fuzzed:      {totals.writes_fuzzed}")
    print(f"sequences run:      {totals.sequences}")
    print(f"cycles under load:  {totals.cycles}")
    print(f"bytes verified:     {totals.bytes_verified}")
    print(f"daemon restarts:    {totals.daemon_restarts}")
    for failure in totals.failures:
        print(f"FAILED: {failure}")
    return 1 if totals.failures or totals.daemon_restarts else 0


if __name__ == "__main__":
    raise SystemExit(main())
