"""kexec between releases (issue 10): the image names the next kernel, and each of the 64
ordered pairs behaves as spec kho-mainline.md §13 and §15 say those two kernels would.

The expectations below are written from the spec's rules, not from the model's output:
- 6.12 has no KHO: it neither hands over nor accepts a handover (§15.2).
- v4 and 6.16–7.0 all say ``kho-v1`` with different schemas (§13): a v4 receiver accepts
  a mainline FDT and finds nothing of its own; 6.16–6.18 accept a v4 FDT and log
  ``failed to get preserved memory bitmaps``; 6.19+ refuse it (``disabling KHO revival:
  -2``).
- Between mainline releases the handover is accepted and the ``memblock`` sub-FDT
  revives both regions. test_kho restores only between releases with the same
  ``folios_info`` encoding (6.16/6.17: a u64 array; 6.18+: a vmalloc descriptor, §10).
- Bitmaps (§6.1, §13, derived): a 512-byte-bitmap receiver (6.16/6.17) reading a
  4096-byte sender's map sees only the first eighth of each bitmap, so the regions
  (preserved above it) are not reserved; the other direction over-reads but still covers
  every preserved block.
- 7.2 (blob era, §5.1, §13) writes and requires ``kho-v4``: with every ``kho-v1`` kernel
  (v4 series, 6.16–7.0) the receiver refuses the handover with the "incompatible" line,
  except a v4 receiver, which checks only the FDT header and finds nothing of its own;
  test_kho then saves again. 7.2 → 7.2 keeps everything (no finalize: the radix tree is
  live until exec).
"""

from __future__ import annotations

import errno
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kho_fs.matrix import MATRIX_RELEASES, run_cell
from kho_fs.model.bzimage import bzimage_version, image_release, make_bzimage
from kho_fs.model.errors import KernelError
from kho_fs.model.machine import Machine
from kho_fs.model.releases import RELEASES

MAINLINE = {"6.16", "6.17", "6.18", "6.19", "7.0"}
KHO_V1 = {"v4", *MAINLINE}  # every release whose root compatible is `kho-v1`
SMALL_BITMAPS = {"6.16", "6.17"}
ARRAY_TEST_KHO = {"6.16", "6.17"}


def expected(sender: str, receiver: str) -> dict[str, object]:
    if "6.12" in (sender, receiver):
        return {"handover": False, "revived": 0, "test_kho": "-"}
    if "7.2" in (sender, receiver) and receiver != "v4" and sender != receiver:
        want = "kho-v4" if receiver == "7.2" else "kho-v1"
        line = "KHO: disabling KHO revival" + ("" if receiver == "7.2" else ": -22")
        return {
            "handover": False,
            "revived": 0,
            "test_kho": "-" if "v4" in (sender, receiver) else "saved again",
            "line": line,
            "incompatible": f"is incompatible with '{want}': 1",
        }
    if sender == "7.2" and receiver == "7.2":
        return {"handover": True, "revived": 2, "intact": 2, "reserved": 2, "test_kho": "restored"}
    if sender == "v4" and receiver == "v4":
        return {"handover": True, "revived": 2, "test_kho": "-"}
    if sender == "v4":
        accepted = receiver not in {"6.19", "7.0"}
        line = (
            "KHO: failed to get preserved memory bitmaps"
            if accepted
            else "KHO: disabling KHO revival: -2"
        )
        return {"handover": accepted, "revived": 0, "test_kho": "-", "line": line}
    if receiver == "v4":
        return {"handover": True, "revived": 0, "test_kho": "-"}
    same_encoding = (sender in ARRAY_TEST_KHO) == (receiver in ARRAY_TEST_KHO)
    reserved = 0 if receiver in SMALL_BITMAPS and sender not in SMALL_BITMAPS else 2
    return {
        "handover": True,
        "revived": 2,
        "intact": 2,
        "reserved": reserved,
        "test_kho": "restored" if same_encoding else "failed",
    }


@pytest.mark.parametrize(
    ("sender", "receiver"), list(itertools.product(MATRIX_RELEASES, MATRIX_RELEASES))
)
def test_matrix_cell(sender: str, receiver: str) -> None:
    cell = run_cell(sender, receiver)
    want = expected(sender, receiver)
    assert cell.handover == want["handover"]
    assert cell.revived == want["revived"]
    assert cell.test_kho == want["test_kho"]
    if "intact" in want:
        assert cell.intact == want["intact"]
        assert cell.reserved == want["reserved"]
    if "line" in want:
        assert want["line"] in cell.log
    if "incompatible" in want:
        assert any(str(want["incompatible"]) in line for line in cell.log)


def test_the_image_names_the_next_kernel() -> None:
    with Machine.create(memory=1 << 30, cmdline="console=ttyS0 kho=on", release="v4") as m:
        for name in ["7.0", "6.17", "6.12", "v4", "6.19"]:
            k = m.kernel
            k.kexec.kexec_file_load(make_bzimage(RELEASES[name], 16 << 10), None, k.cmdline)
            assert f"next kernel: {name} " in m.status()
            m.kexec_exec()
            assert m.kernel.release.name == name
            assert m.kernel.log.lines()[0].startswith(
                f"Linux version {RELEASES[name].uts_release} "
            )


@pytest.mark.parametrize(
    ("version", "note"),
    [
        ("7.2.13-amd64", None),
        ("7.3.0-rc1", "kho-fs: kernel 7.3.0-rc1 is newer than the releases modelled; booting 7.2"),
        ("7.1.4", "kho-fs: kernel 7.1.4 is not modelled; booting 7.2"),
    ],
)
def test_newer_kernels_boot_7_2(version: str, note: str | None) -> None:
    image = bytearray(make_bzimage(RELEASES["7.0"], 16 << 10))
    at = image.index(b"7.0.0")
    text = f"{version} (debian-kernel@lists.debian.org) #1 SMP Debian\0".encode()
    image[at : at + len(text)] = text
    with Machine.create(memory=1 << 30, release="6.19") as m:
        m.kernel.kexec.kexec_file_load(bytes(image), None, m.kernel.cmdline)
        m.kexec_exec()
        assert m.kernel.release.name == "7.2"
        second = m.kernel.log.lines()[1]
        assert second == note if note else second.startswith("Command line:")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:0x205],  # truncated header
        lambda b: b[:0x1FE] + b"\x00\x00" + b[0x200:],  # no boot flag
        lambda b: b[:0x20E] + (0x2000).to_bytes(2, "little") + b[0x210:],  # pointer past setup
        lambda b: random.Random(3).randbytes(len(b)),  # random bytes
    ],
)
def test_images_without_a_valid_header_boot_the_running_release(mutate) -> None:  # type: ignore[no-untyped-def]
    image = mutate(make_bzimage(RELEASES["6.12"], 16 << 10))
    assert image_release(image) is None
    with Machine.create(memory=1 << 30, release="6.18") as m:
        m.kernel.kexec.kexec_file_load(image, None, m.kernel.cmdline)
        m.kexec_exec()
        assert m.kernel.release.name == "6.18" and m.kernel.panic is None


def test_version_string_is_what_file_reads() -> None:
    image = make_bzimage(RELEASES["6.19"], 8 << 10)
    assert bzimage_version(image) == "6.19.0 (kho-fs@kho-fs) #1 SMP PREEMPT_DYNAMIC"


@pytest.mark.parametrize("sender", ["v4", "6.16", "6.19"])
def test_kexec_load_carries_no_handover(sender: str) -> None:
    cmd = "console=ttyS0 kho=on reserve_mem=16M:4096:oops"
    with Machine.create(memory=1 << 30, cmdline=cmd, release=sender) as m:
        kho = m.kernel.kho
        if sender == "v4":
            kho.active_store(b"1")  # type: ignore[union-attr]
        else:
            kho.finalize_store(1)  # type: ignore[union-attr]
        m.kernel.kexec.kexec_load(make_bzimage(RELEASES["6.18"], 16 << 10), None, cmd)
        m.kexec_exec()
        assert m.kernel.release.name == "6.18"
        assert not m.kernel.handover
        assert "Revived memory reservation 'oops' from KHO" not in m.kernel.log.lines()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(MATRIX_RELEASES), min_size=2, max_size=6))
def test_random_release_chains_never_crash_and_keep_compatible_bytes(chain: list[str]) -> None:
    """Hypothesis draws the release of every boot of a chain of kexecs: no exception ever,
    and where both kernels share the reserve_mem handover (same family), the region keeps
    its address and bytes."""
    cmd = "console=ttyS0 kho=on reserve_mem=4M:4096:log"
    family = {"v4": "v4", "7.2": "blob", **{r: "mainline" for r in MAINLINE}}
    first, targets = chain[0], chain[1:]
    with Machine.create(memory=1 << 30, cmdline=cmd, release=first) as m:
        for step, target in enumerate(targets):
            k = m.kernel
            region = m.region("log")
            assert region is not None
            payload = f"step {step} of {k.release.name}".encode()
            k.mem.write(region.start, payload)
            kho = k.kho
            activated = True
            try:
                if kho.kind == "v4" and kho.kho_enable:  # type: ignore[union-attr]
                    kho.active_store(b"1")  # type: ignore[union-attr]
                elif (
                    kho.kind == "mainline"
                    and kho.kho_enable  # type: ignore[union-attr]
                    and k.release.has_finalize
                ):
                    kho.finalize_store(1)  # type: ignore[union-attr]
            except KernelError as exc:
                # A region allocated afresh inside scratch on a handover boot (its
                # revival failed) cannot be preserved from 6.18 on (spec §7.2, derived)
                assert exc.errno == errno.EINVAL
                assert any(
                    "Failed to convert KHO state tree: -22" in line for line in k.log.lines()
                )
                activated = False
            k.kexec.kexec_file_load(make_bzimage(RELEASES[target], 16 << 10), None, cmd)
            m.kexec_exec()
            assert m.kernel.panic is None and m.kernel.release.name == target
            after = m.region("log")
            assert after is not None
            same = family.get(k.release.name) == family.get(target) is not None
            if same and activated:
                assert after.start == region.start
                assert m.kernel.mem.read(after.start, len(payload)) == payload
