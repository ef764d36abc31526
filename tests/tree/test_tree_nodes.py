"""Node semantics in-process: what a process would see through each kind of file."""

from __future__ import annotations

import errno
import os

import pytest

from kho_fs.model.errors import KernelError
from kho_fs.tree.nodes import (
    BinaryAttribute,
    ControlFile,
    DebugfsBlob,
    DebugfsSeqFile,
    Directory,
    File,
    RegionFile,
    StagingFile,
    TextAttribute,
)

ROOT = 0
USER = 1000


def errno_of(call, *args):
    with pytest.raises(KernelError) as info:
        call(*args)
    return info.value.errno


class Counter:
    """A show callback that counts how often content was generated."""

    def __init__(self, text: str = "0\n") -> None:
        self.text = text
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.text


# -- text attributes -------------------------------------------------------------------


def test_text_attribute_stat():
    node = TextAttribute(0o600, Counter())
    assert node.mode == 0o100600
    assert (node.uid, node.gid) == (0, 0)
    assert node.st_size() == 4096
    assert node.direct_io


def test_text_read_snapshot_per_handle():
    show = Counter("hello\n")
    node = TextAttribute(0o444, show)
    h = node.open(os.O_RDONLY, ROOT)
    assert h.read(0, 2) == b"he"
    show.text = "changed\n"
    assert h.read(2, 100) == b"llo\n"  # slice of the first snapshot
    assert h.read(6, 100) == b""  # at the end
    assert h.read(100, 10) == b""  # past the end
    assert show.calls == 1
    assert h.read(0, 100) == b"changed\n"  # a new read at 0 regenerates
    assert show.calls == 2
    other = node.open(os.O_RDONLY, ROOT)
    assert other.read(3, 100) == b"nged\n"  # first read elsewhere still generates


def test_text_read_clamped_to_page_minus_one():
    node = TextAttribute(0o444, lambda: "x" * 10000)
    assert len(node.open(os.O_RDONLY, ROOT).read(0, 1 << 20)) == 4095


def test_text_store_is_whole_buffer_ignoring_offset():
    seen: list[bytes] = []
    node = TextAttribute(0o600, Counter(), seen.append)
    h = node.open(os.O_WRONLY, ROOT)
    assert h.write(0, b"1\n") == 2
    assert h.write(12345, b"0") == 1
    assert h.write(0, b"a\0b") == 3  # the store parses the C string, not the node
    assert seen == [b"1\n", b"0", b"a\0b"]


def test_text_store_clamped_to_4096():
    seen: list[bytes] = []
    node = TextAttribute(0o600, Counter(), seen.append)
    h = node.open(os.O_WRONLY, ROOT)
    assert h.write(0, b"y" * 5000) == 4096
    assert seen == [b"y" * 4096]
    assert h.write(0, b"") == 0
    assert len(seen) == 1


def test_text_store_error_is_the_callers_errno():
    def store(data: bytes) -> None:
        raise KernelError(errno.EBUSY)

    h = TextAttribute(0o600, Counter(), store).open(os.O_WRONLY, ROOT)
    assert errno_of(h.write, 0, b"1") == errno.EBUSY


def test_text_without_store_gives_eio_on_write():
    h = TextAttribute(0o600, Counter()).open(os.O_WRONLY, ROOT)  # the open succeeds
    assert errno_of(h.write, 0, b"1") == errno.EIO


def test_text_without_show_gives_eio_on_read():
    h = TextAttribute(0o600, None, lambda b: None).open(os.O_RDONLY, ROOT)
    assert errno_of(h.read, 0, 10) == errno.EIO


def test_text_truncate_is_a_no_op():
    show = Counter("1\n")
    node = TextAttribute(0o600, show, lambda b: None)
    node.open(os.O_WRONLY | os.O_TRUNC, ROOT)
    node.truncate(0)
    assert node.st_size() == 4096
    assert node.open(os.O_RDONLY, ROOT).read(0, 10) == b"1\n"


@pytest.mark.parametrize("uid", [ROOT, USER])
@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC])
def test_sysfs_write_open_of_read_only_file_is_eacces_even_for_root(uid, flags):
    node = TextAttribute(0o400, Counter())
    assert errno_of(node.open, flags, uid) == errno.EACCES


def test_sysfs_read_open_of_write_only_file_is_eacces():
    node = ControlFile(0o200, lambda b: None)
    assert errno_of(node.open, os.O_RDONLY, ROOT) == errno.EACCES
    node.open(os.O_WRONLY, ROOT)


# -- removal -----------------------------------------------------------------------------


def test_removed_node_gives_enodev_on_old_handles():
    node = TextAttribute(0o600, Counter(), lambda b: None)
    h = node.open(os.O_RDWR, ROOT)
    h.read(0, 10)
    node.removed = True
    assert errno_of(h.read, 0, 10) == errno.ENODEV
    assert errno_of(h.read, 2, 10) == errno.ENODEV
    assert errno_of(h.write, 0, b"1") == errno.ENODEV
    assert errno_of(node.open, os.O_RDONLY, ROOT) == errno.ENODEV


def test_removed_binary_keeps_its_last_size():
    blob = bytearray(b"abc")
    node = BinaryAttribute(0o400, lambda: bytes(blob))
    assert node.st_size() == 3
    node.removed = True
    blob.extend(b"defg")
    assert node.st_size() == 3


# -- binary attributes -----------------------------------------------------------------------


def test_binary_size_and_eof_correct_reads():
    data = bytes(range(111))
    node = BinaryAttribute(0o400, lambda: data)
    assert node.st_size() == 111
    h = node.open(os.O_RDONLY, ROOT)
    assert h.read(0, 4096) == data
    assert h.read(100, 4096) == data[100:]
    assert h.read(110, 1) == data[110:]
    assert h.read(111, 10) == b""
    assert h.read(5000, 10) == b""


@pytest.mark.parametrize("mode", [0o400, 0o444, 0o600])
def test_binary_write_open_is_eacces(mode):
    node = BinaryAttribute(mode, lambda: b"x")
    assert errno_of(node.open, os.O_WRONLY, ROOT) == errno.EACCES
    assert errno_of(node.open, os.O_RDWR, ROOT) == errno.EACCES


# -- debugfs -----------------------------------------------------------------------------------


def test_debugfs_seq_file():
    show = Counter("   0: 0x0000000000001000..0x000000000009efff    0 NONE\n" * 200)
    node = DebugfsSeqFile(0o444, show)
    assert node.st_size() == 0
    h = node.open(os.O_RDWR, ROOT)  # no "even root" check in debugfs
    content = h.read(0, 1 << 20)
    assert len(content) == len(show.text)  # no PAGE_SIZE clamp
    assert errno_of(h.write, 0, b"x") == errno.EINVAL
    node.removed = True
    assert errno_of(h.read, 0, 10) == errno.EIO
    assert errno_of(node.open, os.O_RDONLY, ROOT) == errno.ENOENT  # full_proxy_open


def test_removed_sysfs_file_opens_with_enodev():
    node = TextAttribute(0o444, lambda: "0\n")
    node.removed = True
    assert errno_of(node.open, os.O_RDONLY, ROOT) == errno.ENODEV  # kernfs_fop_open


def test_debugfs_blob():
    node = DebugfsBlob(0o400, lambda: b"\xd0\x0d\xfe\xed")
    assert node.st_size() == 0
    assert node.open(os.O_RDONLY, ROOT).read(0, 100) == b"\xd0\x0d\xfe\xed"
    assert errno_of(node.open, os.O_WRONLY, ROOT) == errno.EACCES


# -- region files -------------------------------------------------------------------------------


class Window:
    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)

    def read(self, offset: int, length: int) -> bytes:
        assert offset + length <= len(self.mem)
        return bytes(self.mem[offset : offset + length])

    def write(self, offset: int, data: bytes) -> int:
        assert offset + len(data) <= len(self.mem)
        self.mem[offset : offset + len(data)] = data
        return len(data)


def make_region(size: int = 8192) -> tuple[RegionFile, Window]:
    window = Window(size)
    return RegionFile(0o600, lambda: len(window.mem), window.read, window.write), window


def test_region_read_and_write():
    node, window = make_region()
    assert node.st_size() == 8192
    h = node.open(os.O_RDWR, ROOT)
    assert h.write(4096, b"oops") == 4
    assert window.mem[4096:4100] == b"oops"
    assert h.read(4096, 4) == b"oops"
    assert h.read(8190, 100) == b"\0\0"
    assert h.read(8192, 100) == b""
    assert h.read(1 << 40, 100) == b""


def test_region_write_beyond_end_is_enospc_and_straddling_is_short():
    node, window = make_region()
    h = node.open(os.O_WRONLY, ROOT)
    assert errno_of(h.write, 8192, b"x") == errno.ENOSPC
    assert errno_of(h.write, 9000, b"x") == errno.ENOSPC
    assert h.write(8190, b"abcd") == 2
    assert window.mem[8190:] == b"ab"


def test_region_truncate_does_nothing():
    node, _ = make_region()
    node.open(os.O_WRONLY | os.O_TRUNC, ROOT)
    node.truncate(0)
    assert node.st_size() == 8192


def test_read_only_region():
    window = Window(16)
    node = RegionFile(0o400, lambda: 16, window.read)
    assert errno_of(node.open, os.O_WRONLY, ROOT) == errno.EACCES


# -- control and staging files ---------------------------------------------------------------


def test_control_file_must_be_root_only():
    with pytest.raises(ValueError):
        ControlFile(0o644, lambda b: None)
    seen: list[bytes] = []
    node = ControlFile(0o600, seen.append, lambda: "idle\n")
    h = node.open(os.O_RDWR, ROOT)
    assert h.write(7, b"exec\n") == 5
    assert seen == [b"exec\n"]
    assert h.read(0, 100) == b"idle\n"


def test_staging_file_is_a_regular_file():
    node = StagingFile(0o600)
    h = node.open(os.O_RDWR, ROOT)
    assert h.write(0, b"hello") == 5
    assert h.write(10, b"world") == 5
    assert node.st_size() == 15
    assert h.read(0, 100) == b"hello\0\0\0\0\0world"
    assert node.contents() == b"hello\0\0\0\0\0world"
    node.truncate(4)
    assert node.contents() == b"hell"
    node.truncate(6)
    assert node.contents() == b"hell\0\0"
    node.open(os.O_WRONLY | os.O_TRUNC, ROOT)
    assert node.st_size() == 0
    node.open(os.O_RDONLY | os.O_TRUNC, ROOT).read(0, 1)  # read-only opens never truncate


def test_staging_file_limit():
    node = StagingFile(0o600, max_size=8)
    h = node.open(os.O_WRONLY, ROOT)
    assert h.write(0, b"12345678") == 8
    # generic_write_checks: cut at the limit (short count), EFBIG only from the limit on
    assert h.write(4, b"abcde") == 4
    assert node.contents() == b"1234abcd"
    assert errno_of(h.write, 8, b"x") == errno.EFBIG
    assert errno_of(h.write, 9, b"x") == errno.EFBIG
    assert h.write(8, b"") == 0
    assert node.contents() == b"1234abcd"
    assert errno_of(node.truncate, 9) == errno.EFBIG


# -- base classes -----------------------------------------------------------------------------


def test_directory_and_base_file_defaults():
    d = Directory()
    assert d.is_dir and d.mode == 0o040755
    f = File(0o644)
    h = f.open(os.O_RDONLY, ROOT)
    assert errno_of(h.read, 0, 1) == errno.EINVAL
    assert errno_of(f.open, os.O_WRONLY, ROOT) == errno.EACCES  # no write handler
    with pytest.raises(ValueError):
        File(0o100644)
