"""Plug-in KHO drivers: the public API, and what ``kho-fs mount --driver SPEC`` loads.

A driver is kernel code that keeps something across a kexec: it allocates memory at boot,
tells KHO what to preserve and how to find it again, and finds it again on the next boot.
Write one as a subclass of :class:`KhoDriver`; kho-fs builds it into every kernel the
machine boots (one instance per boot, like built-in code), and the instance sees **the
running kernel's API** — the one of the release that booted, as kernel code would
(``docs/drivers.md`` has the whole guide and a walkthrough)::

    from kho_fs.drivers import KhoDriver, DriverRegion

    class MyDriver(KhoDriver):
        name = "mine"                           # machine/drivers/mine/<region>
        kho_kinds = frozenset({"v4", "mainline"})  # KHO implementations it speaks

What the running kernel offers, by :func:`kho_api` (a release trait, never a number):

``"v4"`` (``--release v4``, ``kernel.kho`` is a :class:`Kho`)
    ``init()`` registers the driver on the KHO notifier chain (the default).  ``echo 1 >
    sys/kernel/kho/active`` calls ``notifier_call(KEXEC_KHO_DUMP, fdt)`` with the open
    :class:`FdtSw` of the one handover FDT, positioned inside the root node: add complete
    subnodes; every ``mem`` property (little-endian u64 ``addr``, u64 ``size``; only the
    first pair counts) is memory the next kernel reserves for you.  ``echo 0`` calls
    ``notifier_call(KEXEC_KHO_ABORT, None)``.  The base class routes those to
    :meth:`KhoDriver.kho_dump` and :meth:`KhoDriver.kho_abort`.  On the next boot
    ``kernel.kho.fdt_in`` (an :class:`Fdt`) is the FDT, readable from ``early_init``.

``"6.16"`` (6.16, 6.17, 6.18: ``kernel.kho`` is a :class:`KhoMainline`)
    Preserve memory with ``kho_preserve_folio(phys, order)``, ``kho_preserve_pages(phys,
    nr_pages)`` or ``kho_preserve_phys(phys, size)`` (6.16) and describe it in a sub-FDT
    of your own (a page you write an FDT into).  Register on the notifier chain
    (``kernel.kho.register_kho_notifier(self)``); ``printf 1 > …/out/finalize`` calls
    ``notifier_call(KEXEC_KHO_FINALIZE, ser)`` with a :class:`KhoSerialization`: call
    ``kernel.kho.kho_add_subtree(name, fdt_phys, ser)`` there.  Abort (``printf 0``)
    drops every preservation and calls ``notifier_call(KEXEC_KHO_ABORT, None)``.

``"6.19"`` (6.19, 7.0)
    No notifiers: preserve and ``kho_add_subtree(name, fdt_phys)`` at any time, usually
    in ``init()``; ``kho_alloc_preserve(size)`` allocates preserved zeroed pages.
    ``finalize`` only writes the memory map.

On a handover boot of a mainline kernel, ``kernel.kho.kho_retrieve_subtree(name)`` gives
your sub-FDT's address (``KernelError`` ENOENT when there is none) and
``kho_restore_folio(phys)`` the order of a preserved block.  Every preserved block is
reserved in memblock before your ``init()`` runs.

Hooks (all optional; the defaults do nothing and succeed):

* ``early_init(args)`` — boot options are parsed (``args``: ``(name, value)`` pairs of the
  command line; use :func:`parameq` and :func:`memparse`), memblock allocates
  (``kernel.memblock.memblock_phys_alloc(size, align)``; scratch only on a handover boot).
* ``init()`` — an initcall; the page allocator (``kernel.pages``) exists.
* ``notifier_call(event, data)`` — see above; return ``NOTIFY_DONE``, ``NOTIFY_BAD`` or
  ``notifier_from_errno(-errno)``.
* ``regions()`` — :class:`DriverRegion` windows on RAM, served read-write as
  ``machine/drivers/<name>/<region>``.
* ``get_state()``/``set_state(state)`` — JSON-able state for ``kho-fs mount --state``.
* ``supports(kernel)`` — whether the driver is built into this kernel (default: its
  ``kho_kinds`` contains ``kernel.kho.kind``).

Whatever a hook raises makes the driver a failing participant, never a dead daemon: dmesg
gets ``kho-fs: driver 'NAME': HOOK raised TYPE: MESSAGE`` (the traceback goes to the daemon
log); a notifier that raises answers ``NOTIFY_BAD``, so the activation or finalize fails
as the kernel's would (v4: ``KHO: failed to serialize state: -1``, ``EINVAL``; 6.16–6.18:
``KHO: Failed to convert KHO state tree: -1``, ``EPERM``); an ``early_init``/``init``
that raises ends that driver's part in the boot (its notifier is dropped); a ``regions()``
that raises (or a region outside RAM) has no files.

``--driver SPEC`` (repeatable) names a driver four ways, tried in this order:

1. a built-in name: ``kho_example``, ``test_kho``;
2. an entry point name in the group ``kho_fs.drivers`` of an installed distribution
   (``[project.entry-points."kho_fs.drivers"] vmm = "vmm_kho:VmmDriver"``);
3. ``package.module:factory`` (an importable module);
4. ``path/file.py:factory`` (a file, relative to the current directory).

``factory`` is a :class:`KhoDriver` subclass or any callable ``factory(kernel) ->
KhoDriver`` (a dotted attribute path is allowed).  A spec that cannot be loaded is a
:class:`DriverLoadError`: ``kho-fs mount`` prints ``kho-fs: cannot load driver 'SPEC':
REASON`` and exits 2 when the spec names nothing usable (unknown name, no such module,
file or attribute, not a driver factory, given twice) or 1 when the driver's own code
raised while it was imported.

State files (``--state``) record a machine's drivers by their spec (files as absolute
paths), so a restore loads them again with :func:`load_driver`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kho_fs.model.cmdline import memparse, parameq
from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_NOTICE, KERN_WARNING
from kho_fs.model.drivers import DriverRegion, KhoDriver
from kho_fs.model.errors import KernelError
from kho_fs.model.fdt import Fdt, FdtSw
from kho_fs.model.kho import KEXEC_KHO_ABORT, KEXEC_KHO_DUMP, Kho
from kho_fs.model.kho_mainline import KEXEC_KHO_FINALIZE, KhoMainline, KhoSerialization
from kho_fs.model.notifier import NOTIFY_BAD, NOTIFY_DONE, NOTIFY_OK, notifier_from_errno
from kho_fs.model.units import PAGE_SIZE

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel

__all__ = [
    "API_6_16",
    "API_6_19",
    "API_NONE",
    "API_V4",
    "ENTRY_POINT_GROUP",
    "KERN_ERR",
    "KERN_INFO",
    "KERN_NOTICE",
    "KERN_WARNING",
    "KEXEC_KHO_ABORT",
    "KEXEC_KHO_DUMP",
    "KEXEC_KHO_FINALIZE",
    "NOTIFY_BAD",
    "NOTIFY_DONE",
    "NOTIFY_OK",
    "PAGE_SIZE",
    "DriverFactory",
    "DriverLoadError",
    "DriverRegion",
    "Fdt",
    "FdtSw",
    "KernelError",
    "Kho",
    "KhoDriver",
    "KhoMainline",
    "KhoSerialization",
    "kho_api",
    "load_driver",
    "load_drivers",
    "memparse",
    "notifier_from_errno",
    "parameq",
]

ENTRY_POINT_GROUP = "kho_fs.drivers"

#: What :func:`kho_api` answers.
API_NONE = "none"  # no KHO (6.12): kho_kinds never contains "none" unless you mean it
API_V4 = "v4"  # the v4 series: DUMP notifier with the open FDT
API_6_16 = "6.16"  # 6.16–6.18: FINALIZE notifier, kho_add_subtree(name, phys, ser)
API_6_19 = "6.19"  # 6.19+: preserve and kho_add_subtree at any time


def kho_api(kernel: Kernel) -> str:
    """Which KHO API the running kernel offers its drivers: :data:`API_V4`,
    :data:`API_6_16`, :data:`API_6_19` or :data:`API_NONE` (asked of the release's
    traits, so a future release answers without a change here)."""
    kho = kernel.kho
    if isinstance(kho, Kho):
        return API_V4
    if isinstance(kho, KhoMainline):
        return API_6_19 if kernel.release.subtrees_at_init else API_6_16
    return API_NONE


class DriverLoadError(Exception):
    """``--driver SPEC`` cannot be loaded; ``exit_code`` is 2 when the spec names no
    usable driver, 1 when the driver's code raised while it was loaded."""

    def __init__(self, spec: str, reason: str, exit_code: int = 2) -> None:
        super().__init__(f"cannot load driver {spec!r}: {reason}")
        self.spec = spec
        self.reason = reason
        self.exit_code = exit_code


class DriverFactory:
    """A loaded plug-in: ``factory(kernel) -> KhoDriver``, named by its spec (what a state
    file records; files as absolute paths)."""

    def __init__(self, name: str, factory: Callable[[Kernel], KhoDriver]) -> None:
        self.name = name
        self.factory = factory

    def __call__(self, kernel: Kernel) -> KhoDriver:
        return self.factory(kernel)

    def __repr__(self) -> str:
        return f"DriverFactory({self.name!r})"


def _builtin_drivers() -> dict[str, Callable[[Kernel], KhoDriver]]:
    from kho_fs.model.builtin_drivers import DRIVERS

    return DRIVERS


def _entry_points(name: str | None = None) -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return [ep for ep in eps if name is None or ep.name == name]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attribute(spec: str, module: Any, path: str) -> Any:
    obj = module
    for part in path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = getattr(module, "__file__", None) or module.__name__
            raise DriverLoadError(spec, f"{where} has no attribute {path!r}") from None
    return obj


def _import_file(spec: str, path: str) -> Any:
    if not os.path.isfile(path):
        raise DriverLoadError(spec, f"no such file {path}")
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    name = f"_kho_fs_driver_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise DriverLoadError(spec, f"{path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise DriverLoadError(spec, f"{path} raised {_one_line(exc)}", 1) from exc
    return module


def _import_module(spec: str, target: str) -> Any:
    try:
        found = importlib.util.find_spec(target)
    except ModuleNotFoundError:
        found = None
    except Exception as exc:  # a parent package raised while it was imported
        raise DriverLoadError(spec, f"importing {target} raised {_one_line(exc)}", 1) from exc
    if found is None:
        raise DriverLoadError(spec, f"no module named {target!r}")
    try:
        return importlib.import_module(target)
    except Exception as exc:
        raise DriverLoadError(spec, f"importing {target} raised {_one_line(exc)}", 1) from exc


def _check_factory(spec: str, obj: Any) -> Callable[[Kernel], KhoDriver]:
    if isinstance(obj, type):
        if not issubclass(obj, KhoDriver):
            raise DriverLoadError(spec, f"{obj.__qualname__} is no KhoDriver subclass")
        return obj
    if not callable(obj):
        raise DriverLoadError(spec, f"{type(obj).__name__} object is no driver factory")
    return obj


def load_driver(spec: str) -> Callable[[Kernel], KhoDriver]:
    """The driver factory ``spec`` names (see the module docstring for the four forms).

    A built-in name gives the built-in class itself; anything else a
    :class:`DriverFactory` whose ``name`` is the spec (file paths made absolute).
    :class:`DriverLoadError` when it cannot be loaded.
    """
    if not spec or spec != spec.strip():
        raise DriverLoadError(spec, "empty or surrounded by white space")
    target, sep, attr = spec.rpartition(":")
    if not sep:
        builtin = _builtin_drivers()
        if spec in builtin:
            return builtin[spec]
        eps = _entry_points(spec)
        if not eps:
            plugins = sorted({ep.name for ep in _entry_points()})
            raise DriverLoadError(
                spec,
                f"no built-in driver or entry point of that name (built in: "
                f"{', '.join(builtin)}; entry points in group {ENTRY_POINT_GROUP}: "
                f"{', '.join(plugins) or 'none'}; or MODULE:FACTORY, FILE.py:FACTORY)",
            )
        try:
            obj = eps[0].load()
        except Exception as exc:
            raise DriverLoadError(
                spec, f"entry point {eps[0].value} raised {_one_line(exc)}", 1
            ) from exc
        return DriverFactory(spec, _check_factory(spec, obj))
    if not target or not attr:
        raise DriverLoadError(spec, "expected NAME, MODULE:FACTORY or FILE.py:FACTORY")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        module = _import_file(spec, path)
        name = f"{path}:{attr}"
    else:
        module = _import_module(spec, target)
        name = spec
    return DriverFactory(name, _check_factory(spec, _attribute(spec, module, attr)))


def load_drivers(specs: Iterable[str]) -> list[Callable[[Kernel], KhoDriver]]:
    """:func:`load_driver` for each spec, in order; a driver named twice is an error."""
    factories: list[Callable[[Kernel], KhoDriver]] = []
    seen: set[str] = set()
    for spec in specs:
        factory = load_driver(spec)
        key = getattr(factory, "name", spec)
        if key in seen:
            raise DriverLoadError(spec, "given twice")
        seen.add(key)
        factories.append(factory)
    return factories
