"""``kho-fs matrix`` and ``kho-fs mkimage``: what survives a kexec between two releases.

The matrix runs the whole flow in-process for every ordered pair of releases: cold-boot
the sender, write known bytes into its reserve_mem regions, activate (v4) or finalize
(mainline), load an image of the receiving release with ``kexec_file_load``, exec, and
look at what the receiver made of the bytes it found in RAM. Nothing but RAM crosses
(DESIGN §5), so every cell is what those two kernels would do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from kho_fs.cli import EXIT_USAGE, CommandError
from kho_fs.drivers import DriverLoadError, load_drivers
from kho_fs.model.bzimage import make_bzimage, version_string
from kho_fs.model.kho import Kho
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine
from kho_fs.model.releases import RELEASES, get_release

MATRIX_RELEASES = ["6.12", "v4", "6.16", "6.17", "6.18", "6.19", "7.0", "7.2"]
MATRIX_CMDLINE = (
    "console=ttyS0 kho=on reserve_mem=16M:4096:oops reserve_mem=8M:4096:trace test_kho.max_mem=1M"
)
MATRIX_MEMORY = 1 << 30
RELEVANT = ("KHO", "Revived", "test_kho", "FDT '", "Node '", "kho-fs:", "Unknown kernel")


class Cell(NamedTuple):
    """One ordered pair: what the receiving kernel did with the sender's handover."""

    sender: str
    receiver: str
    handover: bool  # the receiver accepted the handover (populate succeeded)
    revived: int  # regions revived at their old address
    regions: int  # regions the sender had
    intact: int  # revived regions whose bytes are unchanged
    reserved: int  # revived regions the receiver's memblock keeps reserved
    test_kho: str  # "restored", "failed", "saved again", "-" (no test_kho on one side)
    first_line: str  # first relevant line of the receiver's log after its banner
    log: tuple[str, ...] = ()  # every relevant line of the receiver's log

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def _activate(machine: Machine) -> None:
    kho = machine.kernel.kho
    if isinstance(kho, Kho) and kho.sysfs:
        kho.active_store(b"1")
    elif isinstance(kho, KhoMainline) and kho.debugfs and kho.release.has_finalize:
        kho.finalize_store(1)  # the blob era (7.2) has nothing to activate


def run_cell(
    sender: str,
    receiver: str,
    cmdline: str = MATRIX_CMDLINE,
    drivers: Sequence[str] = ("test_kho",),
) -> Cell:
    """Cold boot ``sender``, fill, activate, load a ``receiver`` image with -s, exec."""
    factories = load_drivers(drivers)
    with Machine.create(
        memory=MATRIX_MEMORY, cmdline=cmdline, release=sender, drivers=factories
    ) as m:
        k = m.kernel
        before = {}
        for r in k.reserve_mem.table:
            pattern = hashlib.sha256(f"{sender}:{r.name}".encode()).digest() * 2
            k.mem.write(r.start, pattern)
            before[r.name] = (r.start, pattern)
        sender_test_kho = any(d.name == "test_kho" for d in k.drivers)
        _activate(m)
        image = make_bzimage(RELEASES[receiver], 64 << 10)
        k.kexec.kexec_file_load(image, None, k.cmdline)
        m.kexec_exec()
        k = m.kernel
        revived = intact = reserved = 0
        lines = k.log.lines()
        for name, (start, pattern) in before.items():
            region = m.region(name)
            if (
                f"Revived memory reservation '{name}' from KHO" in lines
                and region is not None
                and region.start == start
            ):
                revived += 1
                intact += k.mem.read(start, len(pattern)) == pattern
                reserved += k.memblock.memblock_is_region_reserved(start, region.size) and all(
                    k.memblock.memblock_is_reserved(a)
                    for a in range(start, region.end, 1 << 20)
                )
        receiver_test_kho = any(d.name == "test_kho" for d in k.drivers)
        if not (sender_test_kho and receiver_test_kho):
            test_kho = "-"
        elif "test_kho: KHO restore succeeded" in lines:
            test_kho = "restored"
        elif k.kho.handover and _has_subtree(k.kho, "kho_test"):
            test_kho = "failed"
        else:
            test_kho = "saved again"
        relevant = [line for line in lines[2:] if line.startswith(RELEVANT)]
        return Cell(
            sender,
            receiver,
            k.kho.handover,
            revived,
            len(before),
            intact,
            reserved,
            test_kho,
            relevant[0] if relevant else "",
            tuple(relevant),
        )


def _has_subtree(kho: object, name: str) -> bool:
    if isinstance(kho, KhoMainline):
        return any(b.name == name for b in kho.in_sub_fdts)
    return False


def run_matrix(
    senders: Sequence[str],
    receivers: Sequence[str],
    cmdline: str = MATRIX_CMDLINE,
    drivers: Sequence[str] = ("test_kho",),
) -> list[Cell]:
    return [run_cell(a, b, cmdline, drivers) for a in senders for b in receivers]


def format_table(cells: Sequence[Cell]) -> str:
    header = (
        "from",
        "to",
        "handover",
        "revived",
        "intact",
        "reserved",
        "test_kho",
        "first relevant line",
    )
    rows = [
        (
            c.sender,
            c.receiver,
            "yes" if c.handover else "no",
            f"{c.revived}/{c.regions}",
            f"{c.intact}/{c.regions}",
            f"{c.reserved}/{c.regions}",
            c.test_kho,
            c.first_line,
        )
        for c in cells
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for row in [header, *rows]:
        cols = [str(v).ljust(w) for v, w in zip(row, widths, strict=False)]
        out.append("  ".join([*cols, row[-1]]).rstrip())
    return "\n".join(out) + "\n"


# -- commands ---------------------------------------------------------------------------
def _releases(values: list[str] | None) -> list[str]:
    if not values:
        return list(MATRIX_RELEASES)
    names = [v for value in values for v in value.replace(",", " ").split()]
    try:
        return [get_release(n).name for n in names]
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def matrix_command(args: argparse.Namespace) -> int:
    cmdline = MATRIX_CMDLINE if args.cmdline is None else args.cmdline
    drivers = args.driver if args.driver is not None else ["test_kho"]
    try:
        load_drivers(drivers)  # fail before the first cell, with the driver named
    except DriverLoadError as exc:
        raise CommandError(str(exc), exc.exit_code) from None
    cells = run_matrix(_releases(args.sender), _releases(args.receiver), cmdline, drivers)
    if args.json:
        json.dump([c.as_dict() for c in cells], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(cells))
    return 0


def mkimage_command(args: argparse.Namespace) -> int:
    release = RELEASES[args.release]
    data = make_bzimage(release, args.size)
    try:
        Path(args.output).write_bytes(data)
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"{args.output}: {len(data)} bytes, version {version_string(release)}")
    return 0
