"""Differential harness: the same scenarios on a real Linux 7.2 in QEMU and on kho-fs.

Each scenario (``tests/differential/scenarios/NAME.sh``) is a command line and two shell
stages. On the real side they become ``/stage1.sh`` and ``/stage2.sh`` of the oracle's
initramfs (``../shared/oracle/run.sh``: boot, stage 1, ``kexec_file_load`` of the same
kernel and reboot, stage 2); on the emulated side the same text runs under the same
busybox against a kho-fs mount with ``--release 7.2``, and this script plays init.sh's
part (markers, dmesg, the kexec through ``kho-fs kexec``). Both outputs are turned into
transcripts by one normaliser (:func:`normalise`, rules in docs/differential.md) and
compared line by line.

    scripts/differential [NAME...]            real (QEMU) and emulated, compared
    scripts/differential --golden [NAME...]   emulated against tests/data/golden (no QEMU)
    scripts/differential --refresh [NAME...]  rerun the real side, rewrite the goldens
    scripts/differential --build-kernel       build the differential kernel (the oracle's
                                              config plus /dev/mem), print its path
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIFF_DIR = ROOT / "tests" / "differential"
SCENARIO_DIR = DIFF_DIR / "scenarios"
PRELUDE = DIFF_DIR / "prelude.sh"
KHX_SOURCE = DIFF_DIR / "khx.c"
LUOC_SOURCE = DIFF_DIR / "luoc.c"
GOLDEN_DIR = ROOT / "tests" / "data" / "golden" / "linux-7.2.13"
ORACLE_DIR = ROOT.parent / "shared" / "oracle"
KERNEL_WORK = Path(os.environ.get("KHO_DIFF_KERNEL_WORK", "/tmp/kho-oracle-devmem"))
ORACLE_WORK = Path(os.environ.get("KHO_ORACLE_WORK", "/tmp/kho-oracle"))
#: what the differential kernel adds to the oracle's kho.frag: /dev/mem over all of RAM, so
#: a scenario can put known bytes into a reserve_mem region and read them after the kexec
DEVMEM_FRAGMENT = "CONFIG_DEVMEM=y\n# CONFIG_STRICT_DEVMEM is not set\n"
MEMORY = "2G"  # run.sh's QEMU default (QEMU_MEM)
RELEASE = "7.2"
KERNEL_VERSION = "7.2.13"
SZ_4M = 4 << 20
SZ_4G = 1 << 32

# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    cmdline: str
    stages: tuple[str, str]
    exact: frozenset[str] = frozenset()
    about: str = ""

    def uses_luoc(self) -> bool:
        """Does a stage call the LUO client (tests/differential/luoc.c)?"""
        return any(re.search(r"(?m)^\s*luoc\b|[;&|(]\s*luoc\b", st) for st in self.stages)

    def script(self) -> str:
        """The text of both ``/stage1.sh`` and ``/stage2.sh``: the prelude, then each
        stage's body under ``$BOOT`` (see prelude.sh)."""
        return (
            "#!/bin/sh\n"
            + PRELUDE.read_text()
            + f"# --- scenario {self.name}\n"
            + 'if [ "$BOOT" = 1 ]; then\n:\n'
            + self.stages[0]
            + "else\n:\n"
            + self.stages[1]
            + "fi\n"
        )


def load_scenarios(names: list[str] | None = None) -> list[Scenario]:
    found = []
    for path in sorted(SCENARIO_DIR.glob("*.sh")):
        if names and path.stem not in names:
            continue
        found.append(parse_scenario(path))
    if names:
        missing = set(names) - {s.name for s in found}
        if missing:
            raise SystemExit(f"differential: unknown scenario(s): {', '.join(sorted(missing))}")
    return found


def parse_scenario(path: Path) -> Scenario:
    cmdline, exact, about = "", set[str](), list[str]()
    parts: dict[str, list[str]] = {"stage1": [], "stage2": []}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            continue
        if current is None:
            if line.startswith("# cmdline:"):
                cmdline = line.split(":", 1)[1].strip()
            elif line.startswith("# exact:"):
                exact.update(w.strip() for w in line.split(":", 1)[1].split(","))
            elif line.startswith("#"):
                about.append(line[1:].strip())
            continue
        parts[current].append(line)
    if not cmdline:
        raise SystemExit(f"{path}: no '# cmdline:' line")
    return Scenario(
        path.stem,
        cmdline,
        ("\n".join(parts["stage1"]) + "\n", "\n".join(parts["stage2"]) + "\n"),
        frozenset(exact),
        " ".join(about),
    )


# -- tools shared by both sides ------------------------------------------------------------------


def compile_tool(source: Path, out: Path, *, static: bool = True) -> None:
    """gcc -O1 (-static unless told otherwise), when OUT is older than SOURCE."""
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    link = ["-static"] if static else []
    subprocess.run(["gcc", *link, "-O1", "-o", str(out), str(source)], check=True)


def tools_dir() -> Path:
    """Static ``khx``, ``luoc`` and ``wr`` (the oracle's), and ``luoc-dyn`` (the same
    ``luoc`` linked dynamically, for the preload library on the emulated side), built once
    per checkout."""
    d = Path(os.environ.get("KHO_DIFF_TOOLS", Path(tempfile.gettempdir()) / "kho-diff-tools"))
    compile_tool(KHX_SOURCE, d / "khx")
    compile_tool(LUOC_SOURCE, d / "luoc")
    compile_tool(LUOC_SOURCE, d / "luoc-dyn", static=False)
    wr = ORACLE_DIR / "wr.c"
    if not wr.exists():  # a checkout without ../shared: the same program, kept here
        wr = DIFF_DIR / "wr.c"
    compile_tool(wr, d / "wr")
    return d


def busybox() -> str | None:
    return shutil.which("busybox")


# -- the real side --------------------------------------------------------------------------------


def build_kernel() -> Path:
    """The differential kernel: the oracle's build with DEVMEM_FRAGMENT added (reusing the
    oracle's source tree and, when present, its build tree for an incremental build)."""
    bz = KERNEL_WORK / "build" / "arch" / "x86" / "boot" / "bzImage"
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        shutil.copy(ORACLE_DIR / "build-kernel.sh", here / "build-kernel.sh")
        (here / "kho.frag").write_text((ORACLE_DIR / "kho.frag").read_text() + DEVMEM_FRAGMENT)
        KERNEL_WORK.mkdir(parents=True, exist_ok=True)
        if (ORACLE_WORK / "src").is_dir() and not (KERNEL_WORK / "src").exists():
            (KERNEL_WORK / "src").symlink_to(ORACLE_WORK / "src")
        if (ORACLE_WORK / "build").is_dir() and not (KERNEL_WORK / "build").exists():
            subprocess.run(
                ["cp", "-a", str(ORACLE_WORK / "build"), str(KERNEL_WORK / "build")], check=True
            )
        out = subprocess.run(
            ["bash", str(here / "build-kernel.sh"), str(KERNEL_WORK)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.strip()
    return Path(out) if out else bz


def default_kernel() -> Path | None:
    for cand in (
        os.environ.get("KHO_DIFF_KERNEL"),
        KERNEL_WORK / "build" / "arch" / "x86" / "boot" / "bzImage",
    ):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def run_real(scenario: Scenario, bzimage: Path, log: Path) -> str:
    """One QEMU run (both stages) through the oracle's run.sh; the serial log's text."""
    tools = tools_dir()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n in (1, 2):
            p = d / f"stage{n}.sh"
            p.write_text(scenario.script())
            p.chmod(0o755)
        shutil.copy(tools / "khx", d / "khx")
        programs = [d / "khx"]
        if scenario.uses_luoc():  # only then: the other scenarios keep their recorded initramfs
            shutil.copy(tools / "luoc", d / "luoc")
            programs.append(d / "luoc")
        subprocess.run(
            [
                "bash",
                str(ORACLE_DIR / "run.sh"),
                str(bzimage),
                scenario.cmdline,
                str(log),
                *(str(p) for p in programs),
                str(d / "stage1.sh"),
                str(d / "stage2.sh"),
            ],
            check=True,
        )
    return log.read_text(errors="replace")


# -- the emulated side ----------------------------------------------------------------------------


def kho_fs_command() -> list[str]:
    exe = Path(sys.executable).with_name("kho-fs")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kho_fs"]


KX_SHIM = """#!/bin/sh
# kx KERNEL INITRD|- CMDLINE [load-only]: the oracle's kx on a kho-fs mount
k=$1; i=$2; c=$3; load_only=$4
set -- --root "$KHO_FS_ROOT" -l -s "$k" --command-line "$c"
[ "$i" != - ] && set -- "$@" --initrd "$i"
if out=$($KHO_FS kexec "$@" 2>&1); then echo "kexec_file_load: ok"
else echo "kexec_file_load: ${out##*: }"; exit 1; fi   # strerror(errno), as kx prints
[ -n "$load_only" ] && exit 0
$KHO_FS kexec --root "$KHO_FS_ROOT" -e || echo "reboot(RB_KEXEC): failed"
"""


LUOC_SHIM = """#!/bin/sh
# luoc on a kho-fs mount: the dynamic build under the preload library, whose
# open("/dev/liveupdate") and LUO ioctls reach the mount's daemon (docs/luo.md)
exec $KHO_FS run --root "$KHO_FS_ROOT" -- "$(dirname "$0")/luoc-dyn" "$@"
"""


@dataclass
class EmuEnv:
    bin: Path
    shell: list[str]
    kernel: Path
    initrd: Path
    kho_fs: list[str]
    work: Path
    extra: dict[str, str] = field(default_factory=dict)


KERNEL_FACTS = GOLDEN_DIR / "kernel.json"
DEFAULT_INITRD_SIZE = 0x34D000  # the second boot's initramfs in run.sh (RAMDISK line)


def image_facts(bzimage: Path) -> dict[str, object]:
    """What of the real bzImage matters to kexec placement: its size, its boot header's
    ``init_size`` (the memory the kernel segment claims) and its version string."""
    from kho_fs.model.bzimage import bzimage_version

    data = bzimage.read_bytes()
    return {
        "version": bzimage_version(data),
        "size": len(data),
        "init_size": struct.unpack_from("<I", data, 0x260)[0],
    }


def initrd_size_from_log(raw: str) -> int | None:
    """The kexec'd boot's ``RAMDISK: [mem A-B]`` line: the size of run.sh's initrd2."""
    after = raw.split("=== KEXEC", 1)
    hits = re.findall(r"RAMDISK: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]", after[-1])
    if len(after) < 2 or not hits:
        return None
    start, end = (int(x, 16) for x in hits[0])
    return end + 1 - start


def stand_in_kernel(path: Path, facts: dict[str, object]) -> None:
    """An image with the real kernel's version, size and init_size (no QEMU needed)."""
    from kho_fs.model.bzimage import make_bzimage
    from kho_fs.model.releases import RELEASES

    image = bytearray(make_bzimage(RELEASES[RELEASE], int(str(facts["size"]))))
    text = str(facts["version"]).encode() + b"\0"
    image[0x400 : 0x400 + len(text)] = text
    struct.pack_into("<I", image, 0x260, int(str(facts["init_size"])))
    path.write_bytes(bytes(image))


def emu_env(work: Path, kernel: Path | None = None) -> EmuEnv:
    """A bin directory: busybox applets (the guest's tools), khx, wr, the kx shim and the
    luoc shim (the dynamic luoc under ``kho-fs run``); the
    kernel image (the real one, else a stand-in with its header facts) and an initrd of the
    size run.sh's second initramfs has."""
    tools = tools_dir()
    bindir = work / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    bb = busybox()
    shell = ["/bin/sh"]
    if bb:
        subprocess.run([bb, "--install", "-s", str(bindir)], check=False, capture_output=True)
        shell = [bb, "sh"]
    for name in ("khx", "wr", "luoc-dyn"):
        target = bindir / name
        if target.exists() or target.is_symlink():
            target.unlink()
        shutil.copy(tools / name, target)
    for name, text in (("kx", KX_SHIM), ("luoc", LUOC_SHIM)):
        if (bindir / name).is_symlink():
            (bindir / name).unlink()
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    khofs = kho_fs_command()
    facts: dict[str, object] = json.loads(KERNEL_FACTS.read_text()) if KERNEL_FACTS.exists() else {}
    if kernel is None:
        kernel = work / "bzImage"
        if facts:
            stand_in_kernel(kernel, facts)
        else:
            subprocess.run(
                [*khofs, "mkimage", "--release", RELEASE, "-o", str(kernel)],
                check=True,
                capture_output=True,
            )
    initrd = work / "initrd2.cpio"
    initrd.write_bytes(b"\0" * int(str(facts.get("initrd_size", DEFAULT_INITRD_SIZE))))
    return EmuEnv(bindir, shell, kernel, initrd, khofs, work)


def run_emu(scenario: Scenario, env: EmuEnv) -> str:
    """The scenario on a fresh kho-fs mount, with init.sh's markers; the raw transcript."""
    mp = Path(tempfile.mkdtemp(prefix="kho-diff-", dir=env.work))
    khofs = env.kho_fs
    subprocess.run(
        [
            *khofs,
            "mount",
            str(mp),
            "--memory",
            MEMORY,
            "--release",
            RELEASE,
            "--driver",
            "test_kho",
            "--cmdline",
            scenario.cmdline,
        ],
        check=True,
        capture_output=True,
    )
    dbg = mp / "sys" / "kernel" / "debug"
    vars_ = {
        "SIDE": "emu",
        "DBG": str(dbg),
        "K": str(dbg / "kho"),
        "PROCDIR": str(mp / "proc"),
        "DEVMEM": str(mp / "dev" / "mem"),
        "MEMBLOCK_RESERVED": str(mp / "machine" / "memblock" / "reserved"),
        "KHO_FS_ROOT": str(mp),
        "KHO_FS": " ".join(khofs),
        "PATH": f"{env.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    environ = {**os.environ, **vars_, **env.extra}
    out: list[str] = []
    script = mp.parent / f"{mp.name}-stage.sh"
    script.write_text(scenario.script())
    try:
        for stage in (1, 2):
            out.append(f"=== STAGE {stage}\n")
            res = subprocess.run(
                [*env.shell, str(script)],
                env={**environ, "BOOT": str(stage)},
                capture_output=True,
                text=True,
            )
            out.append(res.stdout)
            out.append("=== DMESG\n")
            out.append(_strip_times((mp / "machine" / "dmesg").read_text(errors="replace")))
            if stage == 2:
                break
            out.append("=== KEXEC\n")
            cmdline = (mp / "proc" / "cmdline").read_text().rstrip("\n")
            res = subprocess.run(
                [*env.shell, str(env.bin / "kx"), str(env.kernel), str(env.initrd), cmdline],
                env=environ,
                capture_output=True,
                text=True,
            )
            out.append(res.stdout)
            if res.returncode:  # init.sh: kx failed, the guest leaves init
                break
        out.append("=== END\n")
    finally:
        subprocess.run([*khofs, "umount", str(mp)], check=False, capture_output=True)
        shutil.rmtree(mp, ignore_errors=True)
    return "".join(out)


def _strip_times(text: str) -> str:
    return re.sub(r"(?m)^\[\s*\d+\.\d+\] ", "", text)


# -- normalisation ---------------------------------------------------------------------------------

#: dmesg lines compared (in order): KHO and what it hands over, and the boot facts around it
RELEVANT = (
    "KHO",
    "Revived memory reservation",
    "FDT '",
    "Node '",
    "failed to retrieve FDT",
    "failed to prepare memblock",
    "reserve_mem:",
    "test_kho:",
    "luo:",
    "memfd_luo:",
    "Malformed early option",
    "Unknown kernel command line",
    "Linux version",
    "Command line:",
    "kho-fs:",
)
#: struct luo_ser (include/linux/kho/abi/luo.h, 7.2): compatible, liveupdate_num,
#: sessions_pa, flbs_pa
LUO_SER = struct.Struct("<8sQQQ")
ADDRESS_PROPS = frozenset({"preserved-memory-map", "preserved-data", "start"})
RANDOM_PROPS = frozenset({"nr_folios", "csum"})  # test_kho's random data


class Symbols:
    """Physical addresses become ``@1``, ``@2``, … in order of first appearance, so two
    transcripts agree exactly when their addresses are in the same relations (the region
    revived at its old address, the map the next kernel reads is the one announced …)."""

    def __init__(self) -> None:
        self.table: dict[int, str] = {}

    def __call__(self, value: int) -> str:
        if value == 0:
            return "0"
        if value not in self.table:
            self.table[value] = f"@{len(self.table) + 1}"
        return self.table[value]


def _u32(b: bytes, at: int) -> int:
    return int(struct.unpack_from(">I", b, at)[0])


def render_fdt(data: bytes, sym: Symbols) -> list[str]:
    """A flattened device tree as lines: header fields, every node and property in order,
    addresses symbolised, test_kho's random values masked. Tolerates a blob shorter than
    its ``totalsize`` (``out/fdt`` keeps its first size): names whose strings are not in the
    file show their offset, and 8-byte values are taken for addresses when page-aligned."""
    hdr = [_u32(data, 4 * i) for i in range(10)]
    _magic, total, off_struct, off_strings, off_rsv, ver, last, _cpu, sz_strings, sz_struct = hdr
    lines = [
        f"fdt totalsize={total} struct={off_struct}+{sz_struct} strings={off_strings}+{sz_strings}"
        f" rsvmap={off_rsv} version={ver}/{last} file={len(data)}"
    ]
    truncated = len(data) < total
    strings_ok = off_strings + sz_strings <= len(data)
    if strings_ok:
        names = data[off_strings : off_strings + sz_strings].split(b"\0")[:-1]
        lines.append("strings " + " ".join(n.decode("latin-1") for n in names))
    p, path = off_struct, [""]
    while p + 4 <= len(data):
        tok = _u32(data, p)
        p += 4
        if tok == 1:
            end = data.find(b"\0", p)
            if end < 0:
                lines.append("cut")
                break
            name = data[p:end].decode("latin-1")
            path.append(name)
            lines.append(f"node /{'/'.join(n for n in path[2:])}" if len(path) > 2 else "node /")
            p = (end + 4) & ~3
        elif tok == 2:
            path.pop()
            lines.append("end")
        elif tok == 3:
            if p + 8 > len(data):
                lines.append("cut")
                break
            length, nameoff = _u32(data, p), _u32(data, p + 4)
            p += 8
            value = data[p : p + length]
            p = (p + length + 3) & ~3
            name = f"?{nameoff}"
            if strings_ok:
                at = off_strings + nameoff
                name = data[at : data.find(b"\0", at)].decode("latin-1")
            lines.append(f"prop {name} [{length}] {_render_value(name, value, sym, truncated)}")
            if len(value) < length:
                lines.append("cut")
                break
        elif tok == 4:
            continue
        elif tok == 9:
            lines.append("fdt-end")
            break
        else:
            lines.append(f"bad-token {tok}")
            break
    return lines


def _render_value(name: str, value: bytes, sym: Symbols, truncated: bool) -> str:
    if name in ADDRESS_PROPS and len(value) == 8:
        return sym(struct.unpack("<Q", value)[0])
    if name in RANDOM_PROPS:
        return "<random>"
    if name == "folios_info" and len(value) == 16:  # struct kho_vmalloc (§6.4)
        first, pages, flags, order = struct.unpack("<QIHH", value)
        return f"first={sym(first)} pages={pages} flags={flags:#x} order={order}"
    if name == "compatible" or (
        value.endswith(b"\0") and all(32 <= c < 127 for c in value[:-1]) and len(value) > 1
    ):
        return '"' + value.decode("latin-1").rstrip("\0").replace("\0", '","') + '"'
    if truncated and name.startswith("?") and len(value) == 8:
        v = struct.unpack("<Q", value)[0]
        if v >= 1 << 20 and v % 4096 == 0:
            return sym(v)
    return value.hex()


def render_blob(path: str, data: bytes, sym: Symbols) -> list[str]:
    name = path.rsplit("/", 1)[-1]
    if name == "LUO" and "in" in path.split("/"):
        # luo_early_startup frees the incoming blob right after reading it (kho_restore_free):
        # debugfs then shows whatever reuses the memory; only the size is the handover's
        return [f"raw size={len(data)} (freed after reading: bytes not compared)"]
    if data[:4] == b"\xd0\x0d\xfe\xed" and len(data) >= 40:
        return render_fdt(data, sym)
    if name == "kexec-metadata" and len(data) >= 73:
        version, raw, count = struct.unpack("<I65sI", data[:73])
        release = raw.split(b"\0", 1)[0].decode("latin-1")
        return [
            f"kexec-metadata version={version} release={release} count={count} size={len(data)}"
        ]
    if name == "LUO" and len(data) == LUO_SER.size:  # struct luo_ser (7.2)
        compatible, number, sessions, flbs = LUO_SER.unpack(data)
        text = compatible.split(b"\0", 1)[0].decode("latin-1")
        return [
            f'luo_ser compatible="{text}" liveupdate_num={number} sessions_pa={sym(sessions)}'
            f" flbs_pa={sym(flbs)}"
        ]
    if name == "LUO":
        return [f"raw size={len(data)} head={data[:8].hex()}"]
    return [f"raw size={len(data)} {data.hex()}"]


def _scratch_value(text: str, kind: str, index: int) -> str:
    try:
        v = int(text, 16)
    except ValueError:
        return text
    if kind == "len" and v == 0:
        return "0x0"
    tags = ["4MiB-aligned" if v % SZ_4M == 0 else "unaligned"]
    if kind == "phys" and index == 0:
        tags.append("below-4GiB" if v < SZ_4G else "above-4GiB")
    what = "addr" if kind == "phys" else "size"
    return f"<{what} {' '.join(tags)}>"


def _render_dmesg(line: str, sym: Symbols) -> str:
    if line.startswith("Linux version"):
        return " ".join(line.split()[:3])
    line = re.sub(
        r"handover FDT \((0x[0-9a-f]+)\)", lambda m: f"handover FDT ({sym(int(m[1], 16))})", line
    )
    line = re.sub(r"phys=(0x[0-9a-f]+)", lambda m: f"phys={sym(int(m[1], 16))}", line)
    line = re.sub(
        r"has wrong alignment \((0x[0-9a-f]+), (0x[0-9a-f]+)\)",
        lambda m: f"has wrong alignment ({m[1]}, {sym(int(m[2], 16))})",
        line,
    )
    return line


def normalise(raw: str, scenario: Scenario | None = None) -> list[str]:
    """A serial log (real) or a raw emulated transcript as comparable lines (see
    docs/differential.md for every rule)."""
    exact = scenario.exact if scenario else frozenset()
    sym = Symbols()
    out: list[str] = []
    mode: str | None = None
    current_file = ""
    file_line = 0
    boot = 0
    for line in raw.replace("\r", "").splitlines():
        if line.startswith("=== STAGE "):
            # init.sh calls a second boot without a handover "stage 1": number the boots
            boot += 1
            mode = "script"
            out.append(f"STAGE {boot}")
            continue
        if line == "=== DMESG":
            mode = "dmesg"
            out.append("DMESG")
            continue
        if line == "=== KEXEC":
            # the second boot's own kexec attempt (init.sh, no handover) is not the scenario's
            mode = "kexec" if boot == 1 else None
            if boot == 1:
                out.append("KEXEC")
            continue
        if line == "=== END":
            mode = None
            out.append("END")
            continue
        if mode == "kexec" and line.startswith(("kexec_file_load:", "reboot(")):
            out.append(line)
        elif mode == "dmesg" and line.startswith(RELEVANT):
            out.append(_render_dmesg(line, sym))
        elif mode == "script" and line.startswith("@@ "):
            body = line[3:]
            if body.startswith("FILE "):
                current_file, file_line = body[5:], 0
                out.append(body)
            elif body.startswith("| "):
                text = body[2:]
                kind = (
                    "phys"
                    if current_file.endswith("scratch_phys")
                    else "len"
                    if current_file.endswith("scratch_len") and "scratch_len" not in exact
                    else ""
                )
                if kind and text.endswith("$"):
                    text = _scratch_value(text[:-1], kind, file_line) + "$"
                file_line += 1
                out.append("| " + text)
            elif body.startswith("end ") and current_file.endswith(("scratch_phys", "scratch_len")):
                out.append(
                    "end" if "scratch_len" not in exact or current_file.endswith("phys") else body
                )
            elif body.startswith("HEX "):
                _, path, *rest = body.split(" ", 2)
                payload = rest[0] if rest else ""
                if payload.startswith("err ") or not re.fullmatch(r"[0-9a-f]*", payload):
                    out.append(f"HEX {path} {payload}")
                else:
                    data = bytes.fromhex(payload)
                    out.append(f"HEX {path}")
                    out.extend("  " + x for x in render_blob(path, data, sym))
            elif body.startswith("REGION "):
                words = body.split()
                out.append(" ".join(sym(int(w, 16)) if w.startswith("0x") else w for w in words))
            elif body.startswith("RESERVED "):
                words = body.split()
                verdict = _reserved_verdict(words[2:])
                out.append(f"RESERVED {words[1]} {verdict}")
            else:
                out.append(body)
    return out


def _reserved_verdict(words: list[str]) -> str:
    if words[:1] == ["covered"]:
        return "yes"
    if words[:1] == ["not"]:
        return "no"
    if words[:1] == ["free"] and len(words) >= 4:
        return "yes" if words[1] == "0" and words[3] == "0" else "no"
    return " ".join(words)


# -- comparison ------------------------------------------------------------------------------------


@dataclass
class Comparison:
    name: str
    compared: int
    differing: int
    diff: list[str]


def compare(name: str, real: list[str], emu: list[str]) -> Comparison:
    sm = difflib.SequenceMatcher(a=real, b=emu, autojunk=False)
    differing = sum(
        max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal"
    )
    diff = list(
        difflib.unified_diff(
            real, emu, f"{name} (Linux {KERNEL_VERSION})", f"{name} (kho-fs)", n=2, lineterm=""
        )
    )
    return Comparison(name, max(len(real), len(emu)), differing, diff)


# -- goldens ---------------------------------------------------------------------------------------


def golden_raw(name: str) -> str | None:
    path = GOLDEN_DIR / "raw" / f"{name}.log.gz"
    return gzip.decompress(path.read_bytes()).decode(errors="replace") if path.exists() else None


def write_golden(scenario: Scenario, raw: str, version_line: str) -> None:
    (GOLDEN_DIR / "raw").mkdir(parents=True, exist_ok=True)
    (GOLDEN_DIR / "raw" / f"{scenario.name}.log.gz").write_bytes(
        gzip.compress(raw.encode(), mtime=0)
    )
    header = [
        f"# golden transcript: scenario {scenario.name}",
        f"# kernel: {version_line}",
        f"# cmdline: {scenario.cmdline}",
        f"# script: {scenario_digest(scenario.name)}",
        "# normalised by scripts/differential (docs/differential.md); raw serial log in raw/",
    ]
    (GOLDEN_DIR / f"{scenario.name}.txt").write_text(
        "\n".join(header + normalise(raw, scenario)) + "\n"
    )


def golden_lines(name: str) -> list[str] | None:
    path = GOLDEN_DIR / f"{name}.txt"
    if not path.exists():
        return None
    return [line for line in path.read_text().splitlines() if not line.startswith("# ")]


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/differential",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("scenarios", nargs="*", help="scenario names (default: all)")
    ap.add_argument(
        "--golden", action="store_true", help="compare kho-fs with the stored goldens only"
    )
    ap.add_argument(
        "--refresh", action="store_true", help="rerun the real kernel and rewrite the goldens"
    )
    ap.add_argument(
        "--build-kernel", action="store_true", help="build the differential kernel and exit"
    )
    ap.add_argument("--kernel", type=Path, help="bzImage to boot (default: the built one)")
    ap.add_argument("--show", action="store_true", help="print both normalised transcripts")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    if args.build_kernel:
        print(build_kernel())
        return 0
    scenarios = load_scenarios(args.scenarios or None)
    kernel = args.kernel or default_kernel()
    real_wanted = not args.golden
    if real_wanted and kernel is None:
        print(
            "differential: no kernel; run scripts/differential --build-kernel "
            "(or use --golden to compare with the stored transcripts)",
            file=sys.stderr,
        )
        return 2
    results: list[Comparison] = []
    timing = {"real": 0.0, "emu": 0.0}
    version_line = ""
    with tempfile.TemporaryDirectory(prefix="kho-diff-") as tmp:
        work = Path(tmp)
        env = emu_env(work, kernel if real_wanted else None)
        for sc in scenarios:
            if real_wanted:
                t0 = time.monotonic()
                raw_real = run_real(sc, kernel, work / f"{sc.name}.serial.log")  # type: ignore[arg-type]
                timing["real"] += time.monotonic() - t0
                version_line = next(
                    (
                        line.strip()
                        for line in raw_real.splitlines()
                        if line.startswith("Linux version")
                    ),
                    "",
                )
                if args.refresh:
                    write_golden(sc, raw_real, version_line)
                    facts = image_facts(kernel)  # type: ignore[arg-type]
                    facts["initrd_size"] = initrd_size_from_log(raw_real) or DEFAULT_INITRD_SIZE
                    if sc.name == "default" or not KERNEL_FACTS.exists():
                        KERNEL_FACTS.write_text(json.dumps(facts, indent=1) + "\n")
                real = normalise(raw_real, sc)
            else:
                golden = golden_lines(sc.name)
                if golden is None:
                    print(f"{sc.name}: no golden transcript (run --refresh)", file=sys.stderr)
                    continue
                real = golden
            t0 = time.monotonic()
            emu = normalise(run_emu(sc, env), sc)
            timing["emu"] += time.monotonic() - t0
            if args.show:
                print(f"--- {sc.name}: real\n" + "\n".join(real))
                print(f"--- {sc.name}: kho-fs\n" + "\n".join(emu))
            res = compare(sc.name, real, emu)
            results.append(res)
            status = "same" if not res.differing else f"{res.differing} differ"
            print(f"{sc.name:24s} {res.compared:5d} lines  {status}")
            for line in res.diff:
                print("    " + line)
    compared = sum(r.compared for r in results)
    differing = sum(r.differing for r in results)
    side = "real" if real_wanted else "golden"
    print(
        f"total: {len(results)} scenarios, {compared} lines compared, {differing} differ "
        f"({side} side {timing['real']:.1f} s, kho-fs side {timing['emu']:.1f} s)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "scenarios": len(results),
                    "compared": compared,
                    "differing": differing,
                    "real_seconds": timing["real"],
                    "emu_seconds": timing["emu"],
                    "against": side,
                    "per_scenario": {r.name: [r.compared, r.differing] for r in results},
                },
                indent=1,
            )
            + "\n"
        )
    return 1 if differing else 0


def scenario_digest(name: str) -> str:
    """A digest of a scenario and the prelude (and of the LUO client when a stage calls it):
    a golden is valid for exactly this text."""
    h = hashlib.sha256(PRELUDE.read_bytes())
    h.update((SCENARIO_DIR / f"{name}.sh").read_bytes())
    if parse_scenario(SCENARIO_DIR / f"{name}.sh").uses_luoc():  # its output is the client's
        h.update(LUOC_SOURCE.read_bytes())
    return h.hexdigest()[:16]


def iter_goldens() -> Iterator[str]:
    yield from (p.stem for p in sorted(GOLDEN_DIR.glob("*.txt")))


if __name__ == "__main__":
    sys.exit(main())
