"""Command line: argument parsing only.

Subcommands are registered with :func:`subcommand`: a cheap function that adds the
arguments, plus the ``"module:function"`` that runs the command.  That module is imported
only when its command runs, so ``kho-fs --help`` stays fast.  To add a command (for
example ``kexec`` or ``status``)::

    @subcommand("status", "show the emulated machine's state", run="kho_fs.daemon:status_command")
    def _status_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("mountpoint")

``run(args: argparse.Namespace) -> int`` returns the exit code, or raises
:class:`CommandError` with a one-line message and a code.

Exit codes (all commands):

== =========================================================================
0  success
1  the operation failed (mount, unmount, daemon start, daemon exit, the save
   before an unmount, unmounting another user's mount)
2  usage: unknown option, bad size or count, bad kernel command line
3  mountpoint: missing, not a directory, not empty, already mounted, or
   (umount) not a kho-fs mount
4  FUSE unavailable (/dev/fuse missing or not accessible)
== =========================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MOUNTPOINT = 3
EXIT_NO_FUSE = 4

PROG = "kho-fs"


class CommandError(Exception):
    """A failure to report as one line ``kho-fs: <message>`` and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Subcommand(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: str  # "module:function"


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, help: str, *, run: str
) -> Callable[
    [Callable[[argparse.ArgumentParser], None]], Callable[[argparse.ArgumentParser], None]
]:
    """Register a subcommand whose arguments the decorated function adds."""

    def register(
        add_arguments: Callable[[argparse.ArgumentParser], None],
    ) -> Callable[[argparse.ArgumentParser], None]:
        SUBCOMMANDS[name] = Subcommand(name, help, add_arguments, run)
        return add_arguments

    return register


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def parse_size(text: str) -> int:
    """A byte count as the kernel's ``memparse`` reads it (``16G``, ``0x4000_0000``...)."""
    from kho_fs.model.cmdline import memparse

    value, end = memparse(text)
    if not text or end != len(text) or value == 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 512M, 16G, 0x40000000)")
    return value


def parse_count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"bad count {text!r} (a positive integer)")
    return value


def parse_release(value: str) -> str:
    """``--release NAME``: a usage error lists the valid names."""
    from kho_fs.model.releases import get_release

    try:
        return get_release(value).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_driver(value: str) -> str:
    """``--driver SPEC``: checked for form only; the mount loads it (``kho_fs.drivers``)
    and reports a driver that cannot be loaded by its spec."""
    if not value or value != value.strip():
        raise argparse.ArgumentTypeError(f"bad driver spec {value!r}")
    return value


@subcommand("mount", "mount an emulated machine", run="kho_fs.daemon:mount_command")
def _mount_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", help="an empty directory")
    parser.add_argument(
        "--memory",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="RAM size, kernel memparse syntax (default: 16G)",
    )
    parser.add_argument(
        "--nodes", type=parse_count, default=None, metavar="N", help="NUMA nodes (default: 1)"
    )
    parser.add_argument(
        "--cmdline",
        default=None,
        metavar="CMDLINE",
        help='kernel command line of the cold boot (default: the model\'s, "console=ttyS0 kho=on")',
    )
    parser.add_argument(
        "--release",
        type=parse_release,
        default=None,
        metavar="NAME",
        help="kernel the machine boots: v4 (default), 6.12, 6.16, 6.17, 6.18, 6.19, 7.0, 7.2",
    )
    parser.add_argument(
        "--driver",
        action="append",
        type=parse_driver,
        default=None,
        metavar="SPEC",
        help="KHO driver to build in (repeatable): a built-in name, kho_example (the default "
        "on v4) or test_kho (the kernel's KHO test module, mainline releases); an entry "
        "point of group kho_fs.drivers; MODULE:FACTORY; or FILE.py:FACTORY",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="serve in this process, log to stderr"
    )
    parser.add_argument(
        "--allow-other", action="store_true", help="let other users access the mount"
    )
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    parser.add_argument(
        "--log",
        metavar="FILE",
        default=None,
        help="daemon log file (default: <runtime dir>/<mountpoint hash>.log)",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        default=None,
        help="restore the machine saved in FILE and save it there on unmount and on "
        "`kho-fs save` (without --memory/--nodes/--cmdline)",
    )
    parser.add_argument(
        "--create",
        action="store_true",
        help="with --state: start a fresh machine when FILE does not exist yet",
    )
    # Hidden, for tests: serve another profile, "module:callable" or "file.py:callable",
    # called as callable(memory=..., nodes=..., cmdline=...).
    parser.add_argument("--profile", default=None, help=argparse.SUPPRESS)


@subcommand(
    "matrix",
    "kexec between every pair of releases in-process and tabulate what survives",
    run="kho_fs.matrix:matrix_command",
)
def _matrix_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="sender",
        action="append",
        metavar="R",
        help="sending releases (repeatable or comma-separated; default: all eight)",
    )
    parser.add_argument(
        "--to",
        dest="receiver",
        action="append",
        metavar="R",
        help="receiving releases (default: all eight)",
    )
    parser.add_argument(
        "--cmdline",
        default=None,
        help="command line of both kernels (default: two reserve_mem regions, kho=on, "
        "test_kho.max_mem=1M)",
    )
    parser.add_argument(
        "--driver",
        action="append",
        type=parse_driver,
        default=None,
        metavar="SPEC",
        help="driver, as for mount --driver (default: test_kho)",
    )
    parser.add_argument("--json", action="store_true", help="print the cells as JSON")


@subcommand(
    "mkimage",
    "write a kernel image whose x86 boot header names a release",
    run="kho_fs.matrix:mkimage_command",
)
def _mkimage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", required=True, type=parse_release, metavar="NAME")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=1 << 20,
        metavar="SIZE",
        help="image size (default 1M; at least 3K)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE")


@subcommand(
    "inspect",
    "decode a KHO handover: annotated FDTs, sub-FDTs and the preserved memory",
    run="kho_fs.tool_commands:inspect_command",
)
def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a kho-fs mount, a debugfs kho/, kho/out or kho/in directory, or an FDT file",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--side",
        choices=("out", "in"),
        default=None,
        help="outgoing or incoming handover (default: outgoing when there is one)",
    )
    parser.add_argument(
        "--bitmap-bytes",
        type=int,
        choices=(512, 4096),
        default=None,
        help="preservation bitmap size (default: from the mount's proc/version)",
    )


@subcommand(
    "map",
    "draw a mounted machine's physical memory (SVG, or text with --text)",
    run="kho_fs.tool_commands:map_command",
)
def _map_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-o", "--output", metavar="FILE.svg", help="write the SVG here")
    parser.add_argument("--text", action="store_true", help="print a text rendering")


@subcommand("umount", "unmount and wait for the daemon to exit", run="kho_fs.daemon:umount_command")
def _umount_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint")
    parser.add_argument(
        "--discard",
        action="store_true",
        help="a --state machine: unmount without saving it (the state file keeps what the "
        "last save wrote); without it a failing save keeps the machine mounted",
    )


@subcommand("kexec", "load or boot the next kernel, like kexec(8)", run="kho_fs.kexec_tool:run")
def _kexec_arguments(parser: argparse.ArgumentParser) -> None:
    from kho_fs.kexec_tool import add_arguments

    add_arguments(parser)


@subcommand("save", "save a --state machine now (atomically)", run="kho_fs.daemon:save_command")
def _save_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint")


@subcommand("status", "show the emulated machine's state", run="kho_fs.daemon:status_command")
def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint")


@subcommand(
    "run",
    "run a command whose open(\"/dev/liveupdate\") and LUO ioctls reach the machine",
    run="kho_fs.preload:run_command",
)
def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", metavar="MP", default=None, help="the machine's mountpoint (or $KHO_FS_ROOT)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND…")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="A FUSE-mounted emulator of Linux Kexec HandOver.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, _, function_name = args._run.partition(":")
    run: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    try:
        return run(args)
    except CommandError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def entry() -> NoReturn:
    """The ``kho-fs`` console script: :func:`main`, then exit without interpreter teardown.

    Tearing down a process that built a machine (or imported the whole model) costs tens
    of milliseconds, which ``kho-fs mount`` and every ``kho-fs kexec`` in a script would
    pay; everything worth keeping is flushed or closed by then.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a closed pipe (`kho-fs status M | head -1`)
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
