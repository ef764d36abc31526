"""The KHO v4 ABI profile: which paths exist when, with which mode, bound to which model call.

The profile is data over the model: ``entries()`` asks the machine what exists now, and
``version()`` is the machine's change counter, so the tree rebuilds only after something
happened (activation, abort, kexec load, exec, reboot). Files owned by the running kernel
are keyed by the boot they belong to, so after a kexec every one of them is a new
instance and old descriptors get ENODEV, as on a kernel that rebooted.

Emulator-only files live under ``machine/`` and nowhere else, and they are always
served: a failure while listing the running kernel's files leaves those out (logged), so
the user can still reboot out of any state.

Region files are named after their label (the ``reserve_mem=`` name, a driver's name and
its region's name) by :func:`region_file_name`: the label's bytes, except that ``%`` and
``/`` are percent-escaped and a label that is exactly ``.`` or ``..`` is spelled ``%2E``
or ``%2E%2E``; :func:`region_label` reverses it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from kho_fs.memory_map import machine_layout
from kho_fs.model.cmdline import isspace, kstrtoull
from kho_fs.model.errors import KernelError
from kho_fs.model.kernel import Kernel
from kho_fs.model.kho import Kho
from kho_fs.model.kho_mainline import KhoMainline
from kho_fs.model.machine import Machine
from kho_fs.model.memblock import memblock_debug_show
from kho_fs.staging_limits import KEXEC_CMDLINE_STAGING_MAX, KEXEC_STAGING_MAX
from kho_fs.tree.kho_debugfs import kho_debugfs_entries
from kho_fs.tree.nodes import (
    BinaryAttribute,
    ControlFile,
    DebugfsSeqFile,
    Directory,
    LogFile,
    Node,
    OpenFile,
    RegionFile,
    StagingFile,
    TextAttribute,
)
from kho_fs.tree.tree import Entry, decode_name, encode_name

log = logging.getLogger(__name__)

KEXEC_COMMANDS = ("kexec_file_load", "kexec_load", "unload", "exec")


def region_file_name(label: str) -> str:
    """The file name (tree text) of a region labelled ``label``, latin-1 text for bytes.

    Every byte of the label stays itself (so a UTF-8 label reads as that text and any
    other byte is that byte in the file name), except ``%`` -> ``%25`` and ``/`` ->
    ``%2F``; the whole labels ``.`` and ``..`` become ``%2E`` and ``%2E%2E``.  ValueError
    for a label that is no byte string (a character above U+00FF).
    """
    if label in (".", ".."):
        spelled = label.replace(".", "%2E")
    else:
        spelled = label.replace("%", "%25").replace("/", "%2F")
    try:
        raw = spelled.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"label {label!r} is no byte string") from None
    return decode_name(raw)


def region_label(file_name: str) -> str:
    """The label (latin-1 text for bytes) of the region file ``file_name``: the reverse
    of :func:`region_file_name`."""
    raw = encode_name(file_name)
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"%":
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("latin-1")


class ProcFile(DebugfsSeqFile):
    """A procfs seq_file (``/proc/cmdline``): st_size 0, snapshot reads, writes fail
    with EIO (no write handler), opening for writing is left to the permission bits."""

    removed_errno = errno.EIO

    def write(self, handle: OpenFile, offset: int, data: bytes) -> int:
        raise KernelError(errno.EIO, "no write handler")


def _window(
    mem_read: Callable[[int, int], bytes],
    mem_write: Callable[[int, bytes], None],
    start: int,
    size: int,
) -> RegionFile:
    """A 0600 file over ``[start, start + size)`` of physical memory."""

    def write(offset: int, data: bytes) -> int:
        mem_write(start + offset, data)
        return len(data)

    return RegionFile(0o600, lambda: size, lambda off, n: mem_read(start + off, n), write)


class V4Profile:
    """Paths of the v4 series (spec section 3.1) plus the emulator's ``machine/`` files."""

    def __init__(self, machine: Machine, state_path: Path | None = None) -> None:
        self.machine = machine
        self.state_path = state_path
        # Staging files belong to user space (what kexec-tools would read), so they
        # survive kexec; the kernel never sees them until a load command.
        self.kexec_kernel = StagingFile(0o600, KEXEC_STAGING_MAX)
        self.kexec_initrd = StagingFile(0o600, KEXEC_STAGING_MAX)
        self.kexec_cmdline = StagingFile(0o600, KEXEC_CMDLINE_STAGING_MAX)

    def version(self) -> int:
        return self.machine.version

    @property
    def kernel(self) -> Kernel:
        return self.machine.kernel

    # -- entries ---------------------------------------------------------------------------
    def entries(self) -> Iterator[Entry]:
        m, k = self.machine, self.machine.kernel
        boot = m.boots
        yield from self._machine_entries(k, boot)
        if k.panic is None:
            try:
                kernel_entries = list(self._kernel_entries(k, boot))
            except Exception:
                log.exception("listing the running kernel's files failed; serving machine/ only")
                return
            yield from kernel_entries

    def _kernel_entries(self, k: Kernel, boot: int) -> Iterator[Entry]:
        kho, mem = k.kho, self.machine.mem

        def entry(path: str, make: Callable[[], Node], key: object = None) -> Entry:
            return Entry(path, make, (boot, key))

        if isinstance(kho, KhoMainline):
            yield from kho_debugfs_entries(kho, entry)
        elif isinstance(kho, Kho) and kho.sysfs:
            yield entry("sys/kernel/kho", lambda: Directory(0o755))
            yield entry(
                "sys/kernel/kho/active",
                lambda: TextAttribute(0o600, kho.active_show, kho.active_store),
            )
            yield entry(
                "sys/kernel/kho/dt_max",
                lambda: TextAttribute(0o600, kho.dt_max_show, kho.dt_max_store),
            )
            yield entry(
                "sys/kernel/kho/scratch_phys", lambda: TextAttribute(0o400, kho.scratch_phys_show)
            )
            yield entry(
                "sys/kernel/kho/scratch_len", lambda: TextAttribute(0o400, kho.scratch_len_show)
            )
            fdt = kho.fdt
            if fdt is not None:
                yield entry(
                    "sys/kernel/kho/dt", lambda: BinaryAttribute(0o400, lambda: fdt), kho.fdt_serial
                )
            dt_fw = kho.dt_fw
            if dt_fw is not None:
                yield entry("sys/firmware/kho", lambda: Directory(0o755))
                yield entry("sys/firmware/kho/dt_fw", lambda: BinaryAttribute(0o444, lambda: dt_fw))
        yield entry(
            "sys/kernel/kexec_loaded", lambda: TextAttribute(0o444, k.kexec.kexec_loaded_show)
        )
        yield entry("sys/kernel/debug", lambda: Directory(0o700))
        mb = k.memblock
        # the kernel shows memblock's arrays only with ARCH_KEEP_MEMBLOCK; where it does
        # not (7.2 on x86), the emulator keeps the same view under machine/memblock
        arrays = "sys/kernel/debug" if k.release.memblock_debugfs_arrays else "machine"
        yield entry(
            f"{arrays}/memblock/memory",
            lambda: DebugfsSeqFile(0o444, lambda: memblock_debug_show(mb.memory)),
        )
        yield entry(
            f"{arrays}/memblock/reserved",
            lambda: DebugfsSeqFile(0o444, lambda: memblock_debug_show(mb.reserved)),
        )
        if k.release.reserve_mem_param and k.reserve_mem.table:  # Linux 7.1+ (spec §9)
            yield entry(
                "sys/kernel/debug/memblock/reserve_mem_param",
                lambda: DebugfsSeqFile(0o444, k.reserve_mem.reserve_mem_param_show),
            )
        yield entry("proc/cmdline", lambda: ProcFile(0o444, lambda: k.cmdline + "\n"))
        yield entry("proc/version", lambda: ProcFile(0o444, lambda: k.linux_banner + "\n"))
        yield entry(
            "dev/mem",
            lambda: RegionFile(0o600, lambda: mem.end, mem.read, _dev_mem_write(mem.write)),
        )
        windows: list[tuple[tuple[str, ...], int, int]] = [
            (("reserve_mem", r.name), r.start, r.size) for r in k.reserve_mem.table
        ]
        for d in k.drivers:  # plug-in code: a regions() that raises has no files (dmesg)
            windows += [(("drivers", d.name, r.name), r.start, r.size) for r in k.driver_regions(d)]
        for (top, *labels), start, size in windows:
            try:
                path = "/".join(["machine", top, *map(region_file_name, labels)])
            except ValueError as exc:
                log.error("region %r left out: %s", "/".join(labels), exc)
                continue
            yield entry(path, partial(_window, mem.read, mem.write, start, size), (start, size))

    def _status(self) -> str:
        """``machine/status``: the machine's summary and where ``/dev/liveupdate`` is."""
        text = self.machine.status()
        socket_path = getattr(self, "liveupdate_socket", None)
        if socket_path:
            text += f"liveupdate socket: {socket_path} (kho-fs run, kho_fs.liveupdate)\n"
        return text

    def _machine_entries(self, k: Kernel, boot: int) -> Iterator[Entry]:
        m = self.machine
        yield Entry("machine/dmesg", lambda: LogFile(0o444, lambda: m.kernel.log.render()), boot)
        yield Entry(
            "machine/dmesg.raw",
            lambda: LogFile(0o444, lambda: m.kernel.log.render_raw(), direct_io=False),
            boot,
        )
        yield Entry("machine/status", lambda: DebugfsSeqFile(0o444, self._status))
        socket_path = getattr(self, "liveupdate_socket", None)
        if socket_path:  # /dev/liveupdate is served beside the mount (docs/luo.md)
            line = socket_path + "\n"
            yield Entry("machine/liveupdate", lambda: DebugfsSeqFile(0o444, lambda: line))
        yield Entry("machine/layout", lambda: DebugfsSeqFile(0o444, lambda: machine_layout(m)))
        yield Entry("machine/map.svg", lambda: DebugfsSeqFile(0o444, lambda: _map_svg(m)))
        yield Entry(
            "machine/cmdline",
            lambda: ControlFile(0o600, self._set_cold_cmdline, lambda: m.cold_cmdline + "\n"),
        )
        yield Entry("machine/reboot", lambda: ControlFile(0o200, self._reboot))
        yield Entry("machine/kexec/kernel", lambda: self.kexec_kernel)
        yield Entry("machine/kexec/initrd", lambda: self.kexec_initrd)
        yield Entry("machine/kexec/cmdline", lambda: self.kexec_cmdline)
        yield Entry("machine/kexec/control", lambda: ControlFile(0o200, self._kexec_control))
        if self.state_path is not None:
            yield Entry("machine/save", lambda: ControlFile(0o200, lambda _buf: self.save()))

    # -- persistence ----------------------------------------------------------------------
    def save(self) -> None:
        """Write the state file now (``machine/save``, ``kho-fs save``)."""
        from kho_fs.state import save_machine

        if self.state_path is None:
            raise KernelError(errno.ENOENT, "mounted without --state")
        try:
            save_machine(self.machine, self.state_path)
        except OSError as exc:
            log.error("saving %s failed: %s", self.state_path, exc)
            raise KernelError(exc.errno or errno.EIO, str(exc)) from exc
        log.info("machine saved to %s", self.state_path)

    def shutdown(self) -> None:
        """Called once the mount is gone: save the machine if it has a state file."""
        if self.state_path is not None:
            self.save()

    # -- emulator controls ----------------------------------------------------------------
    def _set_cold_cmdline(self, buf: bytes) -> None:
        text = _c_string(buf).rstrip("\n")
        if len(text) >= 2048:
            raise KernelError(errno.EINVAL, "command line too long")
        self.machine.cold_cmdline = text

    def _reboot(self, buf: bytes) -> None:
        self.machine.reboot()

    def _kexec_control(self, buf: bytes) -> None:
        """``kexec_file_load [FLAGS]``, ``kexec_load``, ``unload`` or ``exec``."""
        words = _words(_c_string(buf))
        if not words or words[0] not in KEXEC_COMMANDS:
            raise KernelError(errno.EINVAL, f"expected one of {', '.join(KEXEC_COMMANDS)}")
        cmd = words[0]
        if len(words) > (2 if cmd == "kexec_file_load" else 1):
            raise KernelError(errno.EINVAL, f"{cmd}: too many arguments")
        kexec = self.kernel.kexec
        if cmd == "exec":
            self.machine.kexec_exec()
            return
        if cmd == "unload":
            kexec.kexec_unload()
            return
        kernel, initrd = self.kexec_kernel.contents(), self.kexec_initrd.contents() or None
        cmdline = _c_string(self.kexec_cmdline.contents()).rstrip("\n")
        if cmd == "kexec_load":
            kexec.kexec_load(kernel, initrd, cmdline)
            return
        flags = kstrtoull(words[1], 0) if len(words) > 1 else 0
        kexec.kexec_file_load(kernel, initrd, cmdline, flags)


def _map_svg(machine: Machine) -> str:
    """``machine/map.svg``: the picture ``kho-fs map`` draws, built from the model."""
    from kho_fs.memory_map import picture_from_machine, render_svg

    return render_svg(picture_from_machine(machine))


def _c_string(buf: bytes) -> str:
    return buf.split(b"\0", 1)[0].decode("latin-1")


def _words(text: str) -> list[str]:
    """Split at the kernel's ``isspace`` (Python's ``str.split`` also splits at
    0x1c-0x1f and 0x85, which would accept ``unload\\x85``)."""
    spaced = "".join(" " if isspace(c) else c for c in text)
    return [w for w in spaced.split(" ") if w]


def _dev_mem_write(write: Callable[[int, bytes], None]) -> Callable[[int, bytes], int]:
    """``write_mem``: all or nothing; any byte outside RAM fails the write (EFAULT)."""

    def dev_mem_write(offset: int, data: bytes) -> int:
        write(offset, data)
        return len(data)

    return dev_mem_write
