"""``kho-fs kexec``: kexec-tools' command line, driving an emulated machine.

It accepts the kexec-tools options users already script against (``-l``, ``-s``,
``--initrd``, ``--append``, ``--command-line``, ``--reuse-cmdline``, ``-u``, ``-e``),
reads the image files itself (as the invoking user), streams them into the mount's
``machine/kexec/`` staging files, and issues the load through ``machine/kexec/control``.
Failures print like kexec-tools and exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
EXIT_FAILURE = 255  # kexec-tools returns -1 from main on a failed syscall
DROP_FROM_REUSED = ("BOOT_IMAGE", "crashkernel")  # what kexec-tools strips on --reuse-cmdline


def add_arguments(p: argparse.ArgumentParser) -> None:
    """kexec-tools' options (the subset kho-fs models)."""
    p.epilog = "The machine is the mountpoint given with --root or in KHO_FS_ROOT."
    p.add_argument(
        "image", nargs="?", help="kernel image (any file; see README: kernel segment rule)"
    )
    p.add_argument(
        "--root",
        default=os.environ.get("KHO_FS_ROOT"),
        help="kho-fs mountpoint (default: $KHO_FS_ROOT)",
    )
    p.add_argument("-l", "--load", metavar="IMAGE", dest="load", help="load IMAGE for a later -e")
    p.add_argument(
        "-s",
        "--kexec-file-syscall",
        action="store_true",
        help="use kexec_file_load (needed for KHO)",
    )
    p.add_argument(
        "-c", "--kexec-syscall", action="store_true", help="use kexec_load (the default)"
    )
    p.add_argument(
        "-a",
        "--kexec-syscall-auto",
        action="store_true",
        help="try kexec_file_load, fall back to kexec_load",
    )
    p.add_argument("--initrd", "--ramdisk", dest="initrd", metavar="FILE", help="initial ramdisk")
    p.add_argument("--append", metavar="STR", help="append STR to the command line")
    p.add_argument("--command-line", metavar="STR", help="the new kernel's command line")
    p.add_argument(
        "--reuse-cmdline", action="store_true", help="start from the running kernel's /proc/cmdline"
    )
    p.add_argument("-u", "--unload", action="store_true", help="unload the loaded image")
    p.add_argument(
        "-e", "--exec", action="store_true", dest="exec_", help="boot the loaded image now"
    )
    p.add_argument("-p", "--load-panic", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-d", "--debug", action="store_true", help="print what is done")


class KexecError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _root(args: argparse.Namespace) -> Path:
    if not args.root:
        raise KexecError("kexec: no machine: pass --root MOUNTPOINT or set KHO_FS_ROOT", 1)
    root = Path(args.root)
    if not (root / "machine" / "kexec" / "control").exists():
        raise KexecError(f"kexec: {root} is not a kho-fs mount", 1)
    return root


def _open_source(path: str, stack: contextlib.ExitStack) -> BinaryIO:
    """Open an image file named on the command line, before anything is staged."""
    try:
        return stack.enter_context(open(path, "rb"))
    except OSError as exc:
        raise KexecError(f"kexec: Cannot open `{path}': {exc.strerror}", 1) from exc


def _stage(src: BinaryIO | None, name: str | None, dst: Path) -> None:
    """Copy an open source (or nothing) into a staging file in 1 MiB writes.

    The staging file is sized first, so a too large image fails at once (EFBIG) instead
    of after copying a gigabyte.
    """
    try:
        with open(dst, "r+b") as out:
            size = os.fstat(src.fileno()).st_size if src is not None else 0
            os.ftruncate(out.fileno(), size)
            if src is None:
                return
            while chunk := src.read(CHUNK):
                out.write(chunk)
            out.truncate()
    except OSError as exc:
        what = f"`{name}'" if name else "nothing"
        raise KexecError(f"kexec: cannot stage {what} into {dst}: {exc.strerror}", 1) from exc


def _cmdline(args: argparse.Namespace, root: Path) -> bytes:
    """The new command line as bytes: arguments keep the bytes the shell passed."""
    parts: list[bytes] = []
    if args.reuse_cmdline:
        reused = (root / "proc" / "cmdline").read_bytes().strip()
        parts += [
            w
            for w in reused.split()
            if w.split(b"=", 1)[0].decode("latin-1") not in DROP_FROM_REUSED
        ]
    for extra in (args.command_line, args.append):
        if extra is not None:
            parts.append(os.fsencode(extra))
    return b" ".join(p for p in parts if p)


def _control(root: Path, command: str) -> None:
    fd = os.open(root / "machine" / "kexec" / "control", os.O_WRONLY)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def _is_loaded(root: Path) -> bool:
    return (root / "sys" / "kernel" / "kexec_loaded").read_text().strip() == "1"


def load(args: argparse.Namespace, root: Path, image: str) -> None:
    kexec_dir = root / "machine" / "kexec"
    with contextlib.ExitStack() as stack:  # both files open before the first is staged
        kernel = _open_source(image, stack)
        initrd = _open_source(args.initrd, stack) if args.initrd else None
        _stage(kernel, image, kexec_dir / "kernel")
        _stage(initrd, args.initrd, kexec_dir / "initrd")
    cmdline = _cmdline(args, root)
    try:
        (kexec_dir / "cmdline").write_bytes(cmdline)
    except OSError as exc:
        raise KexecError(
            f"kexec: cannot stage the command line ({len(cmdline)} bytes): {exc.strerror}", 1
        ) from exc
    syscalls = ["kexec_file_load"] if args.kexec_file_syscall else ["kexec_load"]
    if args.kexec_syscall_auto:
        syscalls = ["kexec_file_load", "kexec_load"]
    for i, syscall in enumerate(syscalls):
        try:
            _control(root, syscall)
            return
        except OSError as exc:
            if i + 1 == len(syscalls):
                raise KexecError(
                    f"{syscall} failed: {os.strerror(exc.errno or errno.EIO)}"
                ) from exc


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kho-fs kexec``: returns kexec-tools' exit status."""
    if args.load_panic:
        print("kexec: crash kernels (-p) are not modelled by kho-fs", file=sys.stderr)
        return 1
    image = args.load or args.image
    try:
        root = _root(args)
        if args.unload:
            try:
                _control(root, "unload")
            except OSError as exc:
                raise KexecError(
                    f"kexec_file_load failed: {os.strerror(exc.errno or errno.EIO)}"
                ) from exc
            return 0
        if image is not None:
            load(args, root, image)
            if args.load:
                return 0
        if args.exec_ or (image is not None and not args.load):
            if not _is_loaded(root):
                raise KexecError("Nothing has been loaded!")
            try:
                _control(root, "exec")
            except OSError as exc:
                raise KexecError(f"kexec failed: {os.strerror(exc.errno or errno.EIO)}") from exc
            return 0
        if image is None:
            print(
                "kexec: nothing to do: give -l IMAGE, -e or -u (see kho-fs kexec --help)",
                file=sys.stderr,
            )
            return 1
    except KexecError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except OSError as exc:  # the mount itself failed us (permissions, a dead mount...)
        print(f"kexec: {exc.filename or args.root}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
