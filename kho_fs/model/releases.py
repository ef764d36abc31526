"""Kernel releases the emulated machine can boot: one row of data each.

A release names its ``Linux version`` string and the traits in which its KHO differs from
the others (spec ``kho-mainline.md`` §0 and §15.1). Code asks a trait
(``release.finalize_repeatable``), never a version number, so adding a release is a new
row here and, at most, a new strategy class where an algorithm changes (the KHO
implementation: ``none``, ``v4`` or ``mainline``).
"""

from __future__ import annotations

from typing import NamedTuple

#: KHO implementations (strategies) a release can use.
KHO_NONE = "none"  # a kernel without KHO (6.12): kho= and kho_scratch= are unknown
KHO_V4 = "v4"  # the KHO v4 patch series: sysfs, one FDT written by notifiers
KHO_MAINLINE = "mainline"  # 6.16 and later: debugfs, preserved-memory map, sub-FDTs
KHO_BLOB = "blob"  # 7.2: no finalize, radix-tree map, sized sub-blobs, kexec-metadata

#: LUO formats (strategies; kho_fs/model/luo.py, luo_v5.py, docs/luo.md)
LUO_FORMAT_FDT = "fdt"  # 6.19, 7.0: the `LUO` sub-FDT `luo-v1`, fixed session/file arrays
LUO_FORMAT_V5 = "v5"  # 7.2: raw `struct luo_ser` (`luo-v5`), kho_block chains, memfd-v2


class Release(NamedTuple):
    """One kernel release and the traits of its KHO era (spec §0)."""

    name: str  # what `--release` takes
    uts_release: str  # first word of `Linux version …` and of /proc/version
    kho: str  # KHO_NONE, KHO_V4 or KHO_MAINLINE
    era: str  # era label of spec §0
    #: parameters unknown to this kernel are logged once (init/main.c, spec §15.2)
    reports_unknown_params: bool = True
    # -- mainline traits (spec §2–§7, §10) -------------------------------------------
    #: bytes per preservation bitmap: 512 (6.16/6.17) or 4096 (6.18+) (§6.1)
    bitmap_bytes: int = 4096
    #: `finalize` re-serializes every time, never EEXIST; 0 is EINVAL (6.19, §2.3)
    finalize_repeatable: bool = False
    #: kexec_file_load attaches KHO data only when finalized (6.16-fix, 6.18; §4.1)
    kimage_needs_finalize: bool = False
    #: root FDT built at init, subtrees added at any time, newest first (6.19, §5.1)
    subtrees_at_init: bool = False
    #: folio and range preservation return EBUSY while finalized (6.16–6.18, §2.4)
    preserve_busy_when_finalized: bool = True
    #: scratch sizes: single zeros allowed, trailing text refused (6.18+, §3.1)
    scratch_strict_parse: bool = False
    #: `Failed to reserve scratch area, disabling kexec handover` (6.16-fix+, §3.3)
    scratch_fail_message: bool = True
    #: per-step scratch messages `Failed to reserve … scratch buffer` (6.19+, §3.3)
    scratch_step_messages: bool = False
    #: suffix of the populate success line (§4.3 step 8)
    populate_found_suffix: str = ""
    #: the root's `preserved-memory-map` must be 8 bytes and non-zero (6.19+, §4.3)
    require_mem_map: bool = False
    #: restore the root FDT folio at memory init (6.16–6.18, §4.4)
    restore_root_folio: bool = False
    #: preserved head pages carry the `KHOP` magic (6.18+, §4.4)
    page_magic: bool = False
    #: wording of incoming debugfs failures: "6.16", "6.18" or "6.19" (§2.1)
    debugfs_messages: str = "6.19"
    #: how memblock preserves reserve_mem regions: "phys" (6.16, alignment checked at
    #: finalize), "pages" (6.18, whole pages at finalize) or "init" (6.19, at init) (§7.1)
    memblock_preserve: str = "init"
    #: test_kho's `folios_info` is a vmalloc descriptor (6.18+), else a u64 array (§10)
    test_kho_vmalloc: bool = True
    #: test_kho logs `KHO restore failed` (6.19+, §10)
    test_kho_fail_message: bool = True
    #: the Live Update Orchestrator is built in (6.19+, §12; docs/luo.md)
    liveupdate: bool = False
    #: compatible of the `LUO` FDT's `luo-session` node (include/linux/kho/abi/luo.h)
    luo_session_compatible: str = "luo-session-v2"
    #: the `LUO` FDT carries the File-Lifecycle-Bound node `luo-flb` and the incoming
    #: side requires it (luo_flb.c, 7.0)
    luo_flb: bool = False
    # -- blob era and Linux 7.1+ traits (spec §0, §8, §9; Linux 7.2 source) -----------
    #: debugfs `out/finalize` exists (6.16 – 7.0); the blob era has none (§2.1)
    has_finalize: bool = True
    #: reserve_mem= logs its failures (`reserve_mem: empty or malformed parameter`, …; 7.1+)
    reserve_mem_messages: bool = False
    #: debugfs `memblock/reserve_mem_param` lists the regions (7.1+, §9)
    reserve_mem_param: bool = False
    #: debugfs `memblock/memory` and `memblock/reserved` exist (ARCH_KEEP_MEMBLOCK). x86
    #: selects it only with TDX host support; kho-fs keeps them for 6.16 – 7.0 (its
    #: reservation view) and follows the real x86 kernel for 7.2 (§16)
    memblock_debugfs_arrays: bool = True
    #: LUO's KHO entry: the compatible of its `LUO` subtree (6.19/7.0 FDT: `luo-v1`; 7.2
    #: raw `struct luo_ser`: `luo-v5`) and the strategy that writes and reads it,
    #: LUO_FORMAT_FDT or LUO_FORMAT_V5 (§12, §16; docs/luo.md)
    luo_compatible: str = "luo-v1"
    luo_format: str = LUO_FORMAT_FDT

    @property
    def linux_version(self) -> str:
        """The banner (``Linux version …``) without the boot counter."""
        return f"Linux version {self.uts_release} (kho-fs@kho-fs) (gcc (Debian 12.2.0-14) 12.2.0)"


_ERA_6_16 = {
    "bitmap_bytes": 512,
    "populate_found_suffix": " Will skip init for some devices",
    "restore_root_folio": True,
    "debugfs_messages": "6.16",
    "memblock_preserve": "phys",
    "test_kho_vmalloc": False,
    "test_kho_fail_message": False,
    "scratch_fail_message": False,
}
_ERA_6_16_FIX = {**_ERA_6_16, "kimage_needs_finalize": True, "scratch_fail_message": True}
_ERA_6_18 = {
    "populate_found_suffix": " Will skip init for some devices",
    "restore_root_folio": True,
    "page_magic": True,
    "debugfs_messages": "6.18",
    "memblock_preserve": "pages",
    "kimage_needs_finalize": True,
    "scratch_strict_parse": True,
    "test_kho_fail_message": False,
}
_ERA_6_19 = {
    "page_magic": True,
    "finalize_repeatable": True,
    "subtrees_at_init": True,
    "preserve_busy_when_finalized": False,
    "scratch_strict_parse": True,
    "scratch_step_messages": True,
    "require_mem_map": True,
    "liveupdate": True,
}

_ERA_BLOB = {
    **_ERA_6_19,
    "finalize_repeatable": False,
    "has_finalize": False,
    "debugfs_messages": "blob",
    "memblock_preserve": "blob",
    "reserve_mem_messages": True,
    "reserve_mem_param": True,
    "memblock_debugfs_arrays": False,
    "luo_compatible": "luo-v5",
    "luo_format": LUO_FORMAT_V5,
}
#: 7.0: era 6.19 plus LUO's File-Lifecycle-Bound node (luo_flb.c, docs/luo.md)
_ERA_7_0 = {**_ERA_6_19, "luo_flb": True}

RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("6.12", "6.12.0", KHO_NONE, "none"),
        Release("v4", "6.14.0-rc1-kho-v4", KHO_V4, "v4", reports_unknown_params=False),
        Release("6.16", "6.16.0", KHO_MAINLINE, "6.16", **_ERA_6_16),  # type: ignore[arg-type]
        Release("6.17", "6.17.0", KHO_MAINLINE, "6.16-fix", **_ERA_6_16_FIX),  # type: ignore[arg-type]
        Release("6.18", "6.18.0", KHO_MAINLINE, "6.18", **_ERA_6_18),  # type: ignore[arg-type]
        Release("6.19", "6.19.0", KHO_MAINLINE, "6.19", **_ERA_6_19),  # type: ignore[arg-type]
        Release("7.0", "7.0.0", KHO_MAINLINE, "6.19", **_ERA_7_0),  # type: ignore[arg-type]
        # checked against a real Linux 7.2.13 (tests/data/golden), hence its full release
        Release("7.2", "7.2.13", KHO_BLOB, "blob", **_ERA_BLOB),  # type: ignore[arg-type]
    )
}
DEFAULT_RELEASE = "v4"


def get_release(name: str) -> Release:
    """The release called ``name``; ValueError listing the valid names otherwise."""
    try:
        return RELEASES[name]
    except KeyError:
        valid = ", ".join(RELEASES)
        raise ValueError(f"unknown release {name!r} (valid: {valid})") from None
