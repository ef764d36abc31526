"""Fuzzing every writable file through a real mount (kho_fs.stress.fuzz), CI-sized.

The campaign predicts each outcome with its own oracle, written from the spec rather than
from the model; the tests without a mount pin that oracle to the examples the spec lists,
so a wrong oracle cannot make a wrong machine pass.  When mounting fails the test fails
(``MountFailed``); nothing here skips, and nothing asserts on timing.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from kho_fs.stress.fuzz import (
    AWKWARD_NAMES,
    FUZZ_CMDLINE,
    FUZZ_MEMORY,
    FUZZ_NODES,
    FUZZ_REGIONS,
    MAINLINE_ERAS,
    MAINLINE_FUZZ_ARGS,
    MAINLINE_FUZZ_CMDLINE,
    MAINLINE_FUZZ_MEMORY,
    Refused,
    blob_write_outcome,
    c_string,
    debugfs_attr_value,
    finalize_outcome,
    kho_fdt_size,
    kho_serialize_error,
    kstrtobool,
    kstrtoull,
    q35_ram_map,
    region_spelling,
    reserve_mem_table,
    run_fuzz,
    run_mainline_fuzz,
    sysfs_store_buffer,
)
from kho_fs.testing import mounted

SEED = 20250214
WRITES = 20_000
MAINLINE_WRITES = 3000  # per release: a few seconds each
INT_MAX = (1 << 31) - 1
GiB, MiB = 1 << 30, 1 << 20


# -- the campaign ---------------------------------------------------------------------------


def test_fuzz_campaign_through_the_mount(tmp_path):
    with mounted(tmp_path, memory=FUZZ_MEMORY, nodes=FUZZ_NODES, cmdline=FUZZ_CMDLINE) as m:
        report = run_fuzz(m.mountpoint, WRITES, SEED)
        print(report.summary())
        assert report.unexpected == [], report.summary()
        assert report.invariant_failures == [], report.summary()
        assert report.daemon_pid == m.pid and report.daemon_alive, report.summary()
        assert report.writes >= WRITES
    # Every target was hit, and the state machine really moved.
    targets = [
        "sys/kernel/kho/active", "sys/kernel/kho/dt_max", "dev/mem", "machine/cmdline",
        "machine/kexec/control", "machine/kexec/kernel", "machine/kexec/initrd",
        "machine/kexec/cmdline", "sys/kernel/kho/scratch_phys", "sys/kernel/kho/scratch_len",
        "sys/kernel/kexec_loaded", "sys/kernel/kho/dt", "sys/firmware/kho/dt_fw", "proc/cmdline",
        *(f"machine/reserve_mem/{name}" for name in FUZZ_REGIONS),
    ]  # fmt: skip
    assert all(report.per_file[t] > 0 for t in targets), report.per_file
    names = ["EINVAL", "EBUSY", "ENOSPC", "EFAULT", "EFBIG", "EACCES", "EIO", "ENOENT", "ENOEXEC"]
    assert all(report.per_result[n] > 0 for n in ["ok", *names]), report.per_result
    events = report.events
    assert events["activations"] > 50 and events["aborts"] > 50, events
    assert events["dt_max stores"] > 100 and events["loads"] > 50, events
    for err in (-1, -3, -22, -12):  # every failure row of spec 4.3
        assert events[f"failed activations ({err})"] > 0, events
    assert events["kexec exec"] == 1 and events["cold reboots"] == 1, events
    # Issue 8: awkward reserve_mem names by reboot and by kexec, every region checked.
    assert events["awkward cold boots"] == 1 and events["awkward kexecs"] == 1, events
    assert events["awkward regions checked"] >= 10 and events["awkward regions revived"], events


def test_regressions_found_by_fuzzing(tmp_path):
    with mounted(tmp_path, memory=FUZZ_MEMORY, nodes=FUZZ_NODES, cmdline=FUZZ_CMDLINE) as m:
        # dev/mem: node 1 starts at 6 GiB; a write across that boundary is all RAM...
        fd = os.open(m.path("dev/mem"), os.O_RDWR)
        try:
            assert os.pwrite(fd, b"x" * 32, 6 * GiB - 16) == 32
            assert os.pread(fd, 32, 6 * GiB - 16) == b"x" * 32
            # ... while one running from RAM into the hole at 2 GiB is not.
            with pytest.raises(OSError) as info:
                os.pwrite(fd, b"y" * 32, 2 * GiB - 16)
            assert info.value.errno == errno.EFAULT
        finally:
            os.close(fd)
        # machine/kexec/control: words end at the kernel's isspace, and only
        # kexec_file_load takes an argument.
        for command in (b"unload now\n", b"kexec_load 0\n", b"unload\x85\n", b"unload\x1c\n"):
            with pytest.raises(OSError) as info:
                m.write("machine/kexec/control", command)
            assert info.value.errno == errno.EINVAL, command
        assert m.write("machine/kexec/control", b"unload\xa0\n") == 8
        assert m.write("machine/kexec/control", b"kexec_file_load\v1\n") == 18


@pytest.mark.parametrize("release", list(MAINLINE_ERAS))
def test_mainline_debugfs_fuzz_through_the_mount(tmp_path, release):
    """Spec kho-mainline.md §2: ``out/finalize``, the seq files and every blob (``out/fdt``,
    ``out/sub_fdts/*``, after the campaign's KHO kexec ``in/fdt`` and ``in/sub_fdts/*``)."""
    with mounted(
        tmp_path,
        memory=MAINLINE_FUZZ_MEMORY,
        cmdline=MAINLINE_FUZZ_CMDLINE,
        extra_args=["--release", release, *MAINLINE_FUZZ_ARGS],
    ) as m:
        report = run_mainline_fuzz(m.mountpoint, release, MAINLINE_WRITES, SEED)
        print(report.summary())
        assert report.unexpected == [], report.summary()
        assert report.invariant_failures == [], report.summary()
        assert report.daemon_pid == m.pid and report.daemon_alive, report.summary()
        assert report.writes >= MAINLINE_WRITES
    k = "sys/kernel/debug/kho"
    targets = [
        f"{k}/out/finalize", f"{k}/out/scratch_phys", f"{k}/out/scratch_len", f"{k}/out/fdt",
        f"{k}/out/sub_fdts/memblock", f"{k}/in/fdt", f"{k}/in/sub_fdts/kho_test",
        f"{k}/in/sub_fdts/memblock", "sys/kernel/debug/memblock/reserved",
    ]  # fmt: skip
    assert all(report.per_file[t] > 0 for t in targets), report.per_file
    names = ["ok", "EINVAL", "ERANGE", "EISDIR", "EACCES"]
    names += ["EEXIST", "ENOENT"] if MAINLINE_ERAS[release] != "6.19" else []
    assert all(report.per_result[n] > 0 for n in names), report.per_result
    assert report.events["finalizes"] > 20, report.events
    if MAINLINE_ERAS[release] != "6.19":
        assert report.events["aborts"] > 20, report.events
    assert report.events["kexec exec"] == 1 and report.events["cold reboots"] == 1


def test_mainline_fuzz_refuses_a_machine_it_cannot_predict(tmp_path):
    with (
        mounted(tmp_path, memory="1G", cmdline="kho=on", extra_args=["--release", "6.19"]) as m,
        pytest.raises(ValueError),
    ):
        run_mainline_fuzz(m.mountpoint, "6.19", 10, SEED)


def test_fuzz_refuses_a_machine_it_cannot_predict(tmp_path):
    with mounted(tmp_path, memory="4G", cmdline="kho=on") as m, pytest.raises(ValueError):
        run_fuzz(m.mountpoint, 10, SEED)


# -- the oracle, pinned to the spec ---------------------------------------------------------


def refused(parse, value: bytes) -> int:
    with pytest.raises(Refused) as info:
        parse(value)
    return info.value.errno


@pytest.mark.parametrize(
    "text", [b"1\n", b"yes", b"true", b"on", b"On", b"1abc", b"y", b"Y", b"t", b"T", b"1\0x"]
)
def test_oracle_kstrtobool_true(text):
    assert kstrtobool(text) is True  # spec 2.6, 2.2, checklist items 2 and 10


@pytest.mark.parametrize("text", [b"0", b"OFF", b"off", b"n", b"N", b"f", b"F", b"no", b"0x"])
def test_oracle_kstrtobool_false(text):
    assert kstrtobool(text) is False


@pytest.mark.parametrize(
    "text",
    [b"enable", b"disable", b" 1", b"o", b"2", b"e", b"d", b"E", b"D", b"\n", b"", b"maybe",
     b"o\0n", b"\x001", b"\xff"],
)  # fmt: skip
def test_oracle_kstrtobool_invalid(text):
    assert refused(kstrtobool, text) == errno.EINVAL


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0xa00000", 0xA00000), (b"10485760", 10485760), (b"050000000", 0o50000000),
        (b"+4096", 4096), (b"4096\n", 4096), (b"0x100\n", 0x100), (b"+256", 256),
        (b"0400", 0o400), (b"0", 0), (b"0X1F", 31), (b"18446744073709551615", (1 << 64) - 1),
        (b"7\0garbage", 7),
    ],
)  # fmt: skip
def test_oracle_kstrtoull_valid(text, value):
    assert kstrtoull(text) == value  # spec 2.7 and checklist item 15


@pytest.mark.parametrize(
    "text",
    [b"0x", b"08", b" 4096", b"4096 ", b"4096\n\n", b"-1", b"4K", b" 1", b"", b"+", b"++1",
     b"+-1", b"0xg", b"\n"],
)  # fmt: skip
def test_oracle_kstrtoull_invalid(text):
    assert refused(kstrtoull, text) == errno.EINVAL


def test_oracle_kstrtoull_range_and_the_store_clamp():
    assert refused(kstrtoull, b"18446744073709551616") == errno.ERANGE
    assert refused(kstrtoull, b"0x10000000000000000\n\n") == errno.ERANGE  # before the tail
    # Checklist item 20: 5000 bytes of "0x1000" + NULs store 4096 bytes and mean 0x1000.
    buf = sysfs_store_buffer(b"0x1000" + b"\0" * 4994)
    assert len(buf) == 4096 and kstrtoull(buf) == 0x1000
    assert kstrtoull(sysfs_store_buffer(b"0" * 4095 + b"12")) == 1
    assert c_string(b"ab\0cd\0") == b"ab"


def test_oracle_fdt_sizes():
    assert kho_fdt_size([]) == 111  # spec 5.5
    assert kho_fdt_size(["oops"]) == 239
    assert kho_fdt_size(["oops", "trace"]) == 315
    assert kho_fdt_size(["x" * 15] * 8) == 835
    assert kho_fdt_size(FUZZ_REGIONS) == 163 + 2 * 72


def test_oracle_serialize_errors():
    none, oops = [], ["oops"]
    assert [kho_serialize_error(d, none) for d in (47, 48, 110, 111)] == [-22, -3, -3, 0]
    # Spec 4.3 and checklist items 16 and 17.
    assert kho_serialize_error(200, oops) == -1
    assert kho_serialize_error(235, oops) == -3
    assert kho_serialize_error(40, oops) == -22
    assert kho_serialize_error(2147483648, oops) == -12
    assert [kho_serialize_error(d, oops) for d in (102, 103, 230, 231, 238, 239)] == [
        -3, -1, -1, -3, -3, 0,
    ]  # fmt: skip
    assert kho_serialize_error(INT_MAX, oops) == 0


def test_oracle_ram_map():
    # decisions.md: lowmem is the size below 2.75 GiB, else 2 GiB; an 8G machine ends at 10G.
    assert q35_ram_map(8 * GiB) == [(0, 0x9F000), (MiB, 2 * GiB), (4 * GiB, 10 * GiB)]
    assert q35_ram_map(2 * GiB) == [(0, 0x9F000), (MiB, 2 * GiB)]
    assert q35_ram_map(3 * GiB) == [(0, 0x9F000), (MiB, 2 * GiB), (4 * GiB, 5 * GiB)]


def test_oracle_region_spelling():
    # README, Paths: % and / percent-escaped, whole . and .. spelled %2E and %2E%2E.
    assert region_spelling(b".") == b"%2E" and region_spelling(b"..") == b"%2E%2E"
    assert region_spelling(b"...") == b"..." and region_spelling(b"./") == b".%2F"
    assert region_spelling(b"a/b") == b"a%2Fb" and region_spelling(b"%2F") == b"%252F"
    assert region_spelling(b"\xc3\xa9") == b"\xc3\xa9" and region_spelling(b"\xff") == b"\xff"


def test_oracle_reserve_mem_table():
    # Spec 2.4: size not 0, 1-15 bytes, not only whitespace, first name wins, at most 8.
    options = [(1, b"a"), (2, b""), (3, b"x" * 16), (4, b"a"), (5, b" \t"), (6, b"x" * 15)]
    assert reserve_mem_table(options) == [(b"a", 1), (b"x" * 15, 6)]
    nine = [(i, b"%d" % i) for i in range(1, 10)]
    assert reserve_mem_table(nine) == [(b"%d" % i, i) for i in range(1, 9)]
    assert reserve_mem_table([(0, b"zero"), (1, b"zero")]) == [(b"zero", 1)]


@pytest.mark.parametrize("seed", range(20))
def test_awkward_command_lines_cover_every_name_class(seed):
    """The fuzzer's boots of issue 8 hold a name of every class and a prefix-plus-slash
    pair, and at most 8 of them become regions (spec 2.4)."""
    from kho_fs.stress.fuzz import _Payloads

    gen = _Payloads(random.Random(seed), 307)
    cmdline, options = gen.awkward_cmdline()
    names = [n for _, n in options]
    for cls, members in AWKWARD_NAMES.items():
        assert any(n in members for n in names), cls
    assert any(a + b"/" + t == b for a in names for b in names for t in (b"b", b"", b".", b"..",
               b"\xff"))  # fmt: skip
    assert cmdline.split(b" ").count(b"kho=on") == 1
    assert all(b" " not in n and b'"' not in n and b"\xa0" not in n for n in names)
    table = reserve_mem_table(options)
    assert 0 < len(table) <= 8 and len({n for n, _ in table}) == len(table)


# -- the mainline oracle, pinned to kho-mainline.md §2.2, §2.3, §11, §14 -----------------------


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"1\0", 1), (b"1", 1), (b"0x1", 1), (b"+1\n", 1), (b"0", 0), (b"010", 8),
        (b"0" * 23 + b"1", 0),  # only the first 23 bytes count
        (b"1" + b"\0" * 30, 1), (b"18446744073709551615", (1 << 64) - 1),
    ],
)  # fmt: skip
def test_oracle_debugfs_attribute_value(data, value):
    assert debugfs_attr_value(data) == value


@pytest.mark.parametrize("data", [b"abc", b" 1", b"-1", b"", b"1 ", b"0x", b"1\n\n"])
def test_oracle_debugfs_attribute_invalid(data):
    assert refused(debugfs_attr_value, data) == errno.EINVAL  # spec §11: all eras


def test_oracle_debugfs_attribute_range():
    assert refused(debugfs_attr_value, b"18446744073709551616") == errno.ERANGE


@pytest.mark.parametrize("era", ["6.16", "6.16-fix", "6.18"])
def test_oracle_finalize_toggle_eras(era):
    # spec §14 item 3 and §11: `1\0` returns 2; 1 again EEXIST; 0 aborts; 0 again ENOENT
    assert finalize_outcome(era, b"1\0", finalized=False) == 2
    assert finalize_outcome(era, b"1", finalized=True) == -errno.EEXIST
    assert finalize_outcome(era, b"0\n", finalized=True) == 2
    assert finalize_outcome(era, b"0", finalized=False) == -errno.ENOENT
    assert finalize_outcome(era, b"abc", finalized=False) == -errno.EINVAL
    assert finalize_outcome(era, b"", finalized=False) == 0  # FUSE never sends it


def test_oracle_finalize_6_19():
    # spec §14 item 4: `1` repeatedly, `0` is EINVAL
    assert finalize_outcome("6.19", b"1", finalized=False) == 1
    assert finalize_outcome("6.19", b"0x1\n", finalized=True) == 4
    assert finalize_outcome("6.19", b"0", finalized=True) == -errno.EINVAL
    assert finalize_outcome("6.19", b"-1", finalized=True) == -errno.EINVAL


def test_oracle_blob_writes():
    # spec §2.2 / §16: a root write of `1` to out/fdt returns 1; at or past the end, 0
    assert blob_write_outcome(152, 0, 1) == 1
    assert blob_write_outcome(152, 150, 8) == 2
    assert blob_write_outcome(152, 152, 8) == 0
    assert blob_write_outcome(152, 1 << 40, 8) == 0
    assert blob_write_outcome(152, 0, 0) == 0
