"""``kho-fs kexec``: kexec-tools' command line, driving an emulated machine.

It accepts the kexec-tools options users already script against (``-l``, ``-e``, ``-u``,
``-s``, ``-c``, ``-a``, ``-d``, ``--initrd``, ``--append``, ``--command-line``,
``--reuse-cmdline``) with kexec-tools' semantics (``kexec/kexec.c`` and
``kexec/arch/x86_64/kexec-bzImage64.c``): options apply in order, so the last of ``-l`` and
``-e`` wins and ``--command-line``/``--append`` are one option; ``-a`` falls back to
``kexec_load`` only when the kernel cannot load the file; ``--reuse-cmdline`` is
``get_command_line()``. It reads the image files itself (as the invoking user), checks
that everything fits before it stages anything, streams them into the mount's
``machine/kexec/`` staging files, and issues the call through ``machine/kexec/control``.
Failures print like kexec-tools and exit 255; usage errors exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from kho_fs.staging_limits import KEXEC_CMDLINE_STAGING_MAX, KEXEC_STAGING_MAX

CHUNK = 1 << 20
EXIT_FAILURE = 255  # kexec-tools returns -1 from main on a failed syscall
EXIT_USAGE = 1  # kexec-tools: a bad option (usage(); return 1)
EXIT_DIE = 1  # kexec-tools' die(): unreadable input, "Nothing has been loaded!"
C_SPACE = b" \t\n\v\f\r"  # C's isspace() in the "C" locale
KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_NO_INITRAMFS = 0x4
KEXEC_FILE_DEBUG = 0x8
# kexec-tools' do_kexec_file_load(): these errnos mean the kernel cannot load this file
# ("not implemented", "image type not supported"), so -a retries with kexec_load; any
# other errno is a real failure, reported as it is (ENOTSUP is EOPNOTSUPP on Linux).
FALLBACK_ERRNOS = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOEXEC, errno.EOPNOTSUPP})
STOPPED_HINT = (
    "kexec: the emulated kernel stopped at boot and runs no system calls;"
    " only a cold reboot (machine/reboot) leaves that state"
)


class _Set(argparse.Action):
    """A flag that assigns several of kexec-tools' ``do_*`` variables, in option order."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        for name, value in self.const.items():
            setattr(namespace, name, value)


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
    # kexec-tools' main(): each of these sets its do_* variables; the last one wins.
    p.set_defaults(do_load=True, do_exec=False, do_unload=False, do_shutdown=True)
    p.add_argument(
        "-l",
        "--load",
        action=_Set,
        const={"do_load": True, "do_exec": False, "do_shutdown": False},
        help="load IMAGE for a later -e",
    )
    p.add_argument(
        "-e",
        "--exec",
        action=_Set,
        const={"do_load": False, "do_exec": True, "do_shutdown": False},
        help="boot the loaded image now",
    )
    p.add_argument(
        "-u",
        "--unload",
        action=_Set,
        const={"do_load": False, "do_unload": True, "do_shutdown": False},
        help="unload the loaded image",
    )
    p.set_defaults(file_syscall=False, fallback=False)  # kexec-tools <= 2.0.26's default
    p.add_argument(
        "-s",
        "--kexec-file-syscall",
        action=_Set,
        const={"file_syscall": True, "fallback": False},
        help="use kexec_file_load (needed for KHO)",
    )
    p.add_argument(
        "-c",
        "--kexec-syscall",
        action=_Set,
        const={"file_syscall": False, "fallback": False},
        help="use kexec_load (the default)",
    )
    p.add_argument(
        "-a",
        "--kexec-syscall-auto",
        action=_Set,
        const={"file_syscall": True, "fallback": True},
        help="use kexec_file_load; fall back to kexec_load when the kernel cannot load the file",
    )
    p.add_argument("--initrd", "--ramdisk", dest="initrd", metavar="FILE", help="initial ramdisk")
    p.add_argument(
        "--command-line",
        "--append",
        dest="append",
        metavar="STR",
        help="the new kernel's command line (after the reused one); the last one wins",
    )
    p.add_argument(
        "--reuse-cmdline",
        action="store_true",
        help="start from the running kernel's /proc/cmdline (without BOOT_IMAGE=)",
    )
    p.add_argument("-p", "--load-panic", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "-d", "--debug", action="store_true", help="print what is done; the kernel logs the load"
    )
    _usage_errors_exit_1(p)


def _usage_errors_exit_1(p: argparse.ArgumentParser) -> None:
    """kexec-tools exits 1 on a bad option (``usage(); return 1``), where the other kho-fs
    commands exit 2: this subcommand's parser reports its own errors, leftover arguments
    included (argparse would hand those to the top-level parser)."""
    parse_known_args = p.parse_known_args

    def error(message: str) -> NoReturn:
        p.exit(EXIT_USAGE, f"{p.prog}: {message}\n")

    def parse_all(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = parse_known_args(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, []

    setattr(p, "error", error)  # noqa: B010 - instance attributes shadow the methods
    setattr(p, "parse_known_args", parse_all)  # noqa: B010


class KexecError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _syscall_failed(prefix: str, exc: OSError) -> KexecError:
    """kexec-tools' ``<prefix>: <strerror>``; a stopped kernel gets a hint line."""
    err = exc.errno or errno.EIO
    message = f"{prefix}: {os.strerror(err)}"
    if err == errno.EHOSTDOWN:
        message += "\n" + STOPPED_HINT
    return KexecError(message)


def _root(args: argparse.Namespace) -> Path:
    if not args.root:
        raise KexecError("kexec: no machine: pass --root MOUNTPOINT or set KHO_FS_ROOT", EXIT_USAGE)
    root = Path(args.root)
    if not (root / "machine" / "kexec" / "control").exists():
        raise KexecError(f"kexec: {root} is not a kho-fs mount", EXIT_USAGE)
    return root


# -- the command line ----------------------------------------------------------------------------


def remove_parameter(line: bytes, name: bytes) -> bytes:
    """kexec-tools' ``remove_parameter()``: drop the first occurrence of ``name`` (a
    prefix match, as ``strstr`` finds it) when it starts the line or follows whitespace,
    up to and including the next space; at the end of the line, up to the end."""
    start = line.find(name)
    if start < 0 or (start > 0 and line[start - 1] not in C_SPACE):
        return line
    end = line.find(b" ", start)
    return line[:start] if end < 0 else line[:start] + line[end + 1 :]


def reused_command_line(proc_cmdline: bytes) -> bytes:
    """kexec-tools' ``get_command_line()`` on the bytes of ``/proc/cmdline``: drop the
    last byte (the newline), cut at the first CR or LF, remove the first ``BOOT_IMAGE``
    parameter. Everything else stays verbatim: quotes, repeated spaces, ``crashkernel=``
    (dropped only for crash kernels, which kho-fs does not load)."""
    line = proc_cmdline[:-1]
    for stop in (line.find(b"\r"), line.find(b"\n")):
        if stop >= 0:
            line = line[:stop]
    return remove_parameter(line, b"BOOT_IMAGE")


def _cmdline(args: argparse.Namespace, root: Path) -> bytes:
    """bzImage64_load's ``concat_cmdline(reused, append)``: either alone, or both joined
    by one space. Arguments keep the bytes the shell passed."""
    reused = None
    if args.reuse_cmdline:
        reused = reused_command_line((root / "proc" / "cmdline").read_bytes())
    append = os.fsencode(args.append) if args.append is not None else None
    if reused is not None and append is not None:
        return reused + b" " + append
    return reused if reused is not None else append or b""


# -- staging -----------------------------------------------------------------------------------


def _open(path: str, stack: contextlib.ExitStack) -> BinaryIO:
    return stack.enter_context(open(path, "rb"))


class _Source:
    """An input file named on the command line, opened (and sized) before any staging."""

    def __init__(self, path: str, stack: contextlib.ExitStack) -> None:
        self.path = path
        try:
            self.file = _open(path, stack)
            st = os.fstat(self.file.fileno())
            # A pipe or character device has no size until read: read it now (at most
            # one byte more than a staging file holds), so it is checked like a file.
            regular = stat.S_ISREG(st.st_mode)
            self.data = None if regular else self.file.read(KEXEC_STAGING_MAX + 1)
        except OSError as exc:
            raise KexecError(f"kexec: Cannot open `{path}': {exc.strerror}", EXIT_DIE) from exc
        self.size = st.st_size if self.data is None else len(self.data)

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        while chunk := self.file.read(CHUNK):
            yield chunk


def _too_large(what: str, dst: Path) -> KexecError:
    return KexecError(
        f"kexec: cannot stage {what} into {dst}: {os.strerror(errno.EFBIG)}", EXIT_DIE
    )


def _stage(src: _Source | None, dst: Path) -> None:
    """Copy a source (or nothing) into a staging file in 1 MiB writes."""
    try:
        with open(dst, "r+b") as out:
            os.ftruncate(out.fileno(), src.size if src is not None else 0)
            if src is None:
                return
            for chunk in src.chunks():
                out.write(chunk)
            out.truncate()
    except OSError as exc:
        what = f"`{src.path}'" if src is not None else "nothing"
        raise KexecError(
            f"kexec: cannot stage {what} into {dst}: {exc.strerror}", EXIT_DIE
        ) from exc


def _control(root: Path, command: str) -> None:
    fd = os.open(root / "machine" / "kexec" / "control", os.O_WRONLY)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def _kexec_loaded(root: Path) -> int:
    """kexec-tools' ``kexec_loaded()``: the number in ``kexec_loaded``, -1 when unreadable
    (a kernel that stopped at boot has no ``sys/``)."""
    try:
        return int((root / "sys" / "kernel" / "kexec_loaded").read_text().strip() or "-1")
    except (OSError, ValueError):
        return -1


class _Tool:
    """One ``kho-fs kexec`` run: kexec-tools' main() after option parsing."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root

    def say(self, text: str) -> None:
        """``-d``: what is done, on stderr (kexec-tools' dbgprintf)."""
        if self.args.debug:
            print(text, file=sys.stderr)

    def load(self, image: str) -> None:
        """Check everything, stage the files, then make the call; a check that fails
        leaves the staging files as they were."""
        args, kexec_dir = self.args, self.root / "machine" / "kexec"
        with contextlib.ExitStack() as stack:
            kernel = _Source(image, stack)
            initrd = _Source(args.initrd, stack) if args.initrd else None
            cmdline = _cmdline(args, self.root)
            for src, name in ((kernel, "kernel"), (initrd, "initrd")):
                if src is not None and src.size > KEXEC_STAGING_MAX:
                    raise _too_large(f"`{src.path}'", kexec_dir / name)
            if len(cmdline) > KEXEC_CMDLINE_STAGING_MAX:
                what = f"the command line ({len(cmdline)} bytes)"
                raise _too_large(what, kexec_dir / "cmdline")
            self.say(f"kernel: {kernel.path} kernel_size: {kernel.size:#x}")
            self.say(
                f"initrd: {initrd.path} initrd_size: {initrd.size:#x}"
                if initrd is not None
                else "initrd: none"
            )
            self.say(f'command line: "{os.fsdecode(cmdline)}"')
            _stage(kernel, kexec_dir / "kernel")
            _stage(initrd, kexec_dir / "initrd")
            _stage_bytes(cmdline, kexec_dir / "cmdline")
        if args.file_syscall:
            flags = (0 if initrd is not None else KEXEC_FILE_NO_INITRAMFS) | self.debug_flag
            self.say(f"kexec_file_load: flags {flags:#x}")
            try:
                _control(self.root, f"kexec_file_load {flags:#x}")
                return
            except OSError as exc:
                if not (args.fallback and exc.errno in FALLBACK_ERRNOS):
                    raise _syscall_failed("kexec_file_load failed", exc) from exc
                self.say(f"kexec_file_load: {os.strerror(exc.errno or 0)}: trying kexec_load")
        self.say("kexec_load")
        try:
            _control(self.root, "kexec_load")
        except OSError as exc:
            raise _syscall_failed("kexec_load failed", exc) from exc

    @property
    def debug_flag(self) -> int:
        return KEXEC_FILE_DEBUG if self.args.debug else 0

    def unload(self) -> None:
        """``kexec_file_unload()`` (with -s/-a) or ``k_unload()``."""
        if self.args.file_syscall:
            flags = KEXEC_FILE_UNLOAD | self.debug_flag
            self.say(f"kexec_file_load: flags {flags:#x}")
            try:
                _control(self.root, f"kexec_file_load {flags:#x}")
                return
            except OSError as exc:
                if not (self.args.fallback and exc.errno in FALLBACK_ERRNOS):
                    # kexec-tools' message, its line break included
                    raise _syscall_failed("kexec_file_load(unload) failed\n", exc) from exc
        self.say("unload")
        try:
            _control(self.root, "unload")
        except OSError as exc:
            raise _syscall_failed("kexec unload failed", exc) from exc

    def exec_(self) -> None:
        """``reboot(LINUX_REBOOT_CMD_KEXEC)``, after kexec-tools' "Nothing has been
        loaded!" check (which passes when ``kexec_loaded`` cannot be read)."""
        if _kexec_loaded(self.root) == 0:
            raise KexecError("Nothing has been loaded!", EXIT_DIE)
        self.say("exec")
        try:
            _control(self.root, "exec")
        except OSError as exc:
            raise _syscall_failed("kexec failed", exc) from exc


def _stage_bytes(data: bytes, dst: Path) -> None:
    try:
        with open(dst, "r+b") as out:
            out.write(data)
            out.truncate()
    except OSError as exc:
        raise KexecError(
            f"kexec: cannot stage the command line ({len(data)} bytes) into {dst}: {exc.strerror}",
            EXIT_DIE,
        ) from exc


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kho-fs kexec``: returns kexec-tools' exit status."""
    if args.load_panic:
        print("kexec: crash kernels (-p) are not modelled by kho-fs", file=sys.stderr)
        return EXIT_USAGE
    try:
        tool = _Tool(args, _root(args))
        if args.do_unload:
            tool.unload()
        if args.do_load:
            if args.image is None:
                raise KexecError(
                    "No kernel specified\nkexec: give -l IMAGE, -e or -u (see kho-fs kexec --help)",
                    EXIT_USAGE,
                )
            tool.load(args.image)
        if args.do_exec or args.do_shutdown:  # kho-fs has no shutdown: `kexec IMAGE` boots it
            tool.exec_()
    except KexecError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except OSError as exc:  # the mount itself failed us (permissions, a dead mount...)
        print(f"kexec: {exc.filename or args.root}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
