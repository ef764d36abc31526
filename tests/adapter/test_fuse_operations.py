"""The pyfuse3 Operations object called in-process (no mount), under trio."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace

import pyfuse3
import pytest

from kho_fs.fuse_adapter import CACHE_TIMEOUT, Operations
from kho_fs.model.errors import KernelError
from kho_fs.tree.nodes import BinaryAttribute, StagingFile, TextAttribute
from kho_fs.tree.tree import ROOT_INO, Entry, NodeTree

ROOT_CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)


class RecordingNotifier:
    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[int, bytes]], list[int], bool]] = []

    async def invalidate(self, entries, inodes, *, wait):
        self.calls.append((list(entries), list(inodes), wait))


class Toy:
    """A small KHO-like profile: ``active`` makes ``dt`` appear, ``boom`` always fails."""

    def __init__(self) -> None:
        self.active = False
        self.activations = 0
        self._version = 0
        self.broken = False

    def version(self) -> int:
        return self._version

    def store_active(self, data: bytes) -> None:
        value = data[:1]
        if value not in (b"0", b"1"):
            raise KernelError(errno.EINVAL)
        if (value == b"1") != self.active:
            self.active = value == b"1"
            self.activations += self.active
            self._version += 1

    def entries(self):
        if self.broken:
            raise RuntimeError("profile bug")
        yield Entry("sys/kernel/kho/active", self._active)
        yield Entry("sys/kernel/kho/scratch_phys", lambda: TextAttribute(0o400, lambda: "0x1000\n"))
        if self.active:
            fdt = bytes(range(111))
            yield Entry(
                "sys/kernel/kho/dt", lambda: BinaryAttribute(0o400, lambda: fdt), self.activations
            )
        yield Entry("boom", lambda: TextAttribute(0o444, self._explode))
        yield Entry("machine/kexec/kernel", lambda: StagingFile(0o600))

    def _active(self) -> TextAttribute:
        return TextAttribute(0o600, lambda: f"{int(self.active)}\n", self.store_active)

    @staticmethod
    def _explode() -> str:
        raise RuntimeError("callback bug")


@dataclass
class Harness:
    ops: Operations
    toy: Toy
    notifier: RecordingNotifier

    async def walk(self, path: str) -> pyfuse3.EntryAttributes:
        ino = ROOT_INO
        attrs = await self.ops.getattr(ino, ROOT_CTX)
        for part in path.split("/"):
            attrs = await self.ops.lookup(ino, part.encode(), ROOT_CTX)
            ino = attrs.st_ino
        return attrs

    async def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        attrs = await self.walk(path)
        info = await self.ops.open(attrs.st_ino, flags, ROOT_CTX)
        assert info.direct_io and not info.keep_cache
        return info.fh

    async def cat(self, path: str) -> bytes:
        fh = await self.open(path)
        data = b""
        while chunk := await self.ops.read(fh, len(data), 4096):
            data += chunk
        await self.ops.release(fh)
        return data

    async def echo(self, path: str, data: bytes) -> int:
        fh = await self.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            return await self.ops.write(fh, 0, data)
        finally:
            await self.ops.release(fh)


@pytest.fixture
def fs() -> Harness:
    toy = Toy()
    notifier = RecordingNotifier()
    return Harness(Operations(NodeTree(toy), notifier), toy, notifier)


async def fuse_errno(awaitable) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await awaitable
    return info.value.errno


async def test_lookup_and_getattr(fs):
    attrs = await fs.walk("sys/kernel/kho/active")
    assert attrs.st_mode == 0o100600
    assert attrs.st_size == 4096
    assert (attrs.st_uid, attrs.st_gid, attrs.st_nlink) == (0, 0, 1)
    assert attrs.entry_timeout == attrs.attr_timeout == CACHE_TIMEOUT
    again = await fs.ops.getattr(attrs.st_ino, ROOT_CTX)
    assert again.st_ino == attrs.st_ino
    kho = await fs.walk("sys/kernel/kho")
    assert kho.st_mode == 0o040755 and kho.st_nlink == 2
    sys_ = await fs.walk("sys")
    assert sys_.st_nlink == 3
    dot = await fs.ops.lookup(kho.st_ino, b".", ROOT_CTX)
    dotdot = await fs.ops.lookup(kho.st_ino, b"..", ROOT_CTX)
    assert dot.st_ino == kho.st_ino
    assert dotdot.st_ino == (await fs.walk("sys/kernel")).st_ino


async def test_missing_entry_is_enoent_not_a_cached_negative_entry(fs):
    kho = await fs.walk("sys/kernel/kho")
    assert await fuse_errno(fs.ops.lookup(kho.st_ino, b"dt", ROOT_CTX)) == errno.ENOENT


async def test_text_semantics_through_handles(fs):
    assert await fs.cat("sys/kernel/kho/active") == b"0\n"
    assert await fs.echo("sys/kernel/kho/active", b"1\n") == 2
    assert await fs.cat("sys/kernel/kho/active") == b"1\n"
    fh = await fs.open("sys/kernel/kho/active", os.O_RDWR)
    assert await fs.ops.read(fh, 0, 1) == b"1"
    assert await fs.ops.write(fh, 999, b"0" * 5000) == 4096  # offset ignored, clamped
    assert await fs.ops.read(fh, 1, 10) == b"\n"  # still the snapshot taken at offset 0
    assert await fs.ops.read(fh, 0, 10) == b"0\n"
    assert await fuse_errno(fs.ops.write(fh, 0, b"2")) == errno.EINVAL
    await fs.ops.release(fh)


async def test_write_open_of_read_only_file_is_eacces_for_root(fs):
    for path in ("sys/kernel/kho/scratch_phys", "boom"):
        ino = (await fs.walk(path)).st_ino
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
            assert await fuse_errno(fs.ops.open(ino, flags, ROOT_CTX)) == errno.EACCES


async def test_activation_invalidates_before_the_write_returns(fs):
    await fs.walk("sys/kernel/kho/active")
    fs.notifier.calls.clear()
    await fs.echo("sys/kernel/kho/active", b"1")
    assert len(fs.notifier.calls) == 1
    entries, inodes, wait = fs.notifier.calls[0]
    assert wait
    assert entries == []  # dt was added: negative lookups are never cached
    known = {(await fs.walk(p)).st_ino for p in ("sys", "sys/kernel", "sys/kernel/kho")}
    assert known <= set(inodes) and ROOT_INO in inodes
    dt = await fs.walk("sys/kernel/kho/dt")
    assert dt.st_size == 111 and dt.st_mode == 0o100400


async def test_stale_handle_after_abort_gets_enodev(fs):
    await fs.echo("sys/kernel/kho/active", b"1")
    dt = await fs.walk("sys/kernel/kho/dt")
    kho = await fs.walk("sys/kernel/kho")
    fh = await fs.open("sys/kernel/kho/dt")
    assert await fs.ops.read(fh, 100, 100) == bytes(range(100, 111))
    fs.notifier.calls.clear()
    await fs.echo("sys/kernel/kho/active", b"0")
    entries, _, wait = fs.notifier.calls[-1]
    assert wait and entries == [(kho.st_ino, b"dt")]
    assert await fuse_errno(fs.ops.read(fh, 0, 100)) == errno.ENODEV
    # fstat on the old descriptor still works; the file has no links any more.
    attrs = await fs.ops.getattr(dt.st_ino, ROOT_CTX)
    assert attrs.st_size == 111 and attrs.st_nlink == 0
    assert await fuse_errno(fs.ops.lookup(kho.st_ino, b"dt", ROOT_CTX)) == errno.ENOENT
    await fs.ops.release(fh)
    # A re-created dt is a new inode.
    await fs.echo("sys/kernel/kho/active", b"1")
    assert (await fs.walk("sys/kernel/kho/dt")).st_ino != dt.st_ino


async def test_binary_reads_are_eof_correct(fs):
    await fs.echo("sys/kernel/kho/active", b"1")
    fh = await fs.open("sys/kernel/kho/dt")
    assert await fs.ops.read(fh, 0, 4096) == bytes(range(111))
    assert await fs.ops.read(fh, 111, 4096) == b""
    assert await fs.ops.read(fh, 4096, 4096) == b""


async def test_unexpected_exception_becomes_eio_and_serving_goes_on(fs, caplog):
    fh = await fs.open("boom")
    with caplog.at_level(logging.ERROR, logger="kho_fs.fuse_adapter"):
        assert await fuse_errno(fs.ops.read(fh, 0, 4096)) == errno.EIO
    assert "callback bug" in caplog.text and "Traceback" in caplog.text
    await fs.ops.release(fh)
    assert await fs.cat("sys/kernel/kho/active") == b"0\n"


async def test_broken_profile_gives_eio_until_fixed(fs, caplog):
    await fs.walk("sys/kernel/kho/active")
    fs.toy.broken = True
    fs.toy._version += 1
    with caplog.at_level(logging.ERROR, logger="kho_fs.fuse_adapter"):
        assert await fuse_errno(fs.ops.lookup(ROOT_INO, b"sys", ROOT_CTX)) == errno.EIO
    assert "profile bug" in caplog.text
    fs.toy.broken = False
    assert await fs.cat("sys/kernel/kho/active") == b"0\n"


async def test_readdir_lists_alphabetically_and_counts_lookups(fs, monkeypatch):
    replies: list[tuple[bytes, int, int]] = []
    budget = {"left": 3}

    def reply(token, name, attrs, next_id):
        if budget["left"] == 0:
            return False
        budget["left"] -= 1
        replies.append((name, attrs.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    await fs.echo("sys/kernel/kho/active", b"1")
    kho = await fs.walk("sys/kernel/kho")
    fh = await fs.ops.opendir(kho.st_ino, ROOT_CTX)
    await fs.ops.readdir(fh, 0, None)
    budget["left"] = 10
    await fs.ops.readdir(fh, replies[-1][2], None)
    await fs.ops.releasedir(fh)
    assert [name for name, _, _ in replies] == [b".", b"..", b"active", b"dt", b"scratch_phys"]
    assert [next_id for _, _, next_id in replies] == [1, 2, 3, 4, 5]
    # "." and ".." are not linked by the kernel, so they take no lookup reference.
    dt_ino = replies[3][1]
    await fs.echo("sys/kernel/kho/active", b"0")
    await fs.ops.forget([(dt_ino, 1)])
    assert await fuse_errno(fs.ops.getattr(dt_ino, ROOT_CTX)) == errno.ENOENT


async def test_forget_drops_removed_nodes_only_at_zero(fs):
    await fs.echo("sys/kernel/kho/active", b"1")
    dt = await fs.walk("sys/kernel/kho/dt")
    await fs.walk("sys/kernel/kho/dt")
    await fs.echo("sys/kernel/kho/active", b"0")
    await fs.ops.forget([(dt.st_ino, 1)])
    assert (await fs.ops.getattr(dt.st_ino, ROOT_CTX)).st_nlink == 0
    await fs.ops.forget([(dt.st_ino, 1)])
    assert await fuse_errno(fs.ops.getattr(dt.st_ino, ROOT_CTX)) == errno.ENOENT
    # Live nodes stay reachable after forget: the tree owns them.
    active = await fs.walk("sys/kernel/kho/active")
    await fs.ops.forget([(active.st_ino, 1)])
    assert (await fs.ops.getattr(active.st_ino, ROOT_CTX)).st_size == 4096


async def test_setattr(fs):
    active = await fs.walk("sys/kernel/kho/active")
    size_only = SimpleNamespace(
        update_size=True,
        update_mode=False,
        update_uid=False,
        update_gid=False,
        update_atime=False,
        update_mtime=False,
        update_ctime=False,
    )
    new = pyfuse3.EntryAttributes()
    new.st_size = 0
    attrs = await fs.ops.setattr(active.st_ino, new, size_only, None, ROOT_CTX)
    assert attrs.st_size == 4096  # sysfs ignores truncation
    kernel = await fs.walk("machine/kexec/kernel")
    fh = await fs.open("machine/kexec/kernel", os.O_RDWR)
    assert await fs.ops.write(fh, 0, b"bzImage") == 7
    new.st_size = 2
    attrs = await fs.ops.setattr(kernel.st_ino, new, size_only, fh, ROOT_CTX)
    assert attrs.st_size == 2
    assert await fs.ops.read(fh, 0, 100) == b"bz"
    chmod = SimpleNamespace(**{**vars(size_only), "update_size": False, "update_mode": True})
    assert (
        await fuse_errno(fs.ops.setattr(active.st_ino, new, chmod, None, ROOT_CTX)) == errno.EPERM
    )


async def test_namespace_changes_are_refused_like_sysfs(fs):
    ctx = ROOT_CTX
    assert await fuse_errno(fs.ops.create(ROOT_INO, b"x", 0o644, os.O_WRONLY, ctx)) == errno.EACCES
    assert await fuse_errno(fs.ops.mkdir(ROOT_INO, b"x", 0o755, ctx)) == errno.EPERM
    assert await fuse_errno(fs.ops.unlink(ROOT_INO, b"boom", ctx)) == errno.EPERM
    assert await fuse_errno(fs.ops.rmdir(ROOT_INO, b"sys", ctx)) == errno.EPERM
    assert await fuse_errno(fs.ops.rename(ROOT_INO, b"boom", ROOT_INO, b"x", 0, ctx)) == errno.EPERM
    assert await fuse_errno(fs.ops.symlink(ROOT_INO, b"x", b"boom", ctx)) == errno.EPERM


async def test_statfs_and_bad_handles(fs):
    stats = await fs.ops.statfs(ROOT_CTX)
    assert (stats.f_bsize, stats.f_blocks, stats.f_files, stats.f_namemax) == (4096, 0, 0, 255)
    assert await fuse_errno(fs.ops.read(12345, 0, 1)) == errno.EBADF
    assert await fuse_errno(fs.ops.getattr(12345, ROOT_CTX)) == errno.ENOENT


async def test_readdir_never_replies_with_a_node_removed_since_opendir(fs, monkeypatch):
    """The kernel links READDIRPLUS entries into its dcache: a removed node sent from the
    opendir-time listing would outlive the invalidation already sent for it."""
    replies: list[tuple[bytes, int]] = []

    def reply(token, name, attrs, next_id):
        replies.append((name, attrs.st_ino))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    await fs.echo("sys/kernel/kho/active", b"1")
    kho = await fs.walk("sys/kernel/kho")
    fh = await fs.ops.opendir(kho.st_ino, ROOT_CTX)
    await fs.echo("sys/kernel/kho/active", b"0")  # dt removed after the listing was taken
    await fs.ops.readdir(fh, 0, None)
    await fs.ops.releasedir(fh)
    assert [name for name, _ in replies] == [b".", b"..", b"active", b"scratch_phys"]
    for name, ino in replies[2:]:
        assert (await fs.walk(f"sys/kernel/kho/{name.decode()}")).st_ino == ino


async def test_region_names_reach_the_kernel_as_the_command_lines_bytes(monkeypatch):
    """Issue 8 items 1 and 6: READDIRPLUS sends, and LOOKUP accepts, exactly the bytes of
    each ``reserve_mem=`` name (no second UTF-8 encoding of the model's latin-1 text),
    with ``%``, ``/`` and the whole names ``.``/``..`` percent-escaped."""
    from kho_fs.model.machine import Machine
    from kho_fs.tree.profile_v4 import V4Profile

    cmdline = b"kho=on " + b" ".join(
        b"reserve_mem=64K:4096:" + n for n in (b"\xc3\xa9", b"x\xffy", b"..", b"a/b", b"%")
    )
    replies: list[bytes] = []

    def reply(token, name, attrs, next_id):
        replies.append(name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    with Machine.create(cmdline=cmdline.decode("latin-1")) as machine:
        ops = Operations(NodeTree(V4Profile(machine)), RecordingNotifier())
        ino = ROOT_INO
        for part in (b"machine", b"reserve_mem"):
            ino = (await ops.lookup(ino, part, ROOT_CTX)).st_ino
        fh = await ops.opendir(ino, ROOT_CTX)
        await ops.readdir(fh, 0, None)
        await ops.releasedir(fh)
        spelled = [b"\xc3\xa9", b"x\xffy", b"%2E%2E", b"a%2Fb", b"%25"]
        assert sorted(replies) == sorted([b".", b"..", *spelled])
        for name in spelled:
            assert (await ops.lookup(ino, name, ROOT_CTX)).st_size == 64 << 10
        assert await fuse_errno(ops.lookup(ino, b"\xc3\x83\xc2\xa9", ROOT_CTX)) == errno.ENOENT
