"""The benchmark's floor: the smallest pyfuse3 + trio file system serving one 2-byte file.

``python bench_floor.py MOUNTPOINT REL/PATH READY_FILE [DATA_SIZE]`` mounts it with kho-fs'
options (``fsname=kho-fs,subtype=kho-fs,default_permissions,auto_unmount``), serves ``0\\n``
at ``REL/PATH`` (directories implied, so a path walk is as deep as on kho-fs), opens with
``direct_io`` like kho-fs, writes ``ok`` to READY_FILE once the loop runs and stops at
SIGTERM.  With DATA_SIZE it also serves ``data``, a read/write file of that many bytes
over an anonymous mmap: the least a pyfuse3 daemon can do per bulk request.  Everything
else is pyfuse3's default (ENOSYS).  Anything kho-fs does per request on top of this is
its own overhead.
"""

from __future__ import annotations

import errno
import mmap
import signal
import stat
import sys

import pyfuse3
import trio

CONTENT = b"0\n"


class Floor(pyfuse3.Operations):
    def __init__(self, path: str, data_size: int) -> None:
        super().__init__()
        parts = [p.encode() for p in path.split("/") if p]
        self.children = {(i + 1, name): i + 2 for i, name in enumerate(parts)}
        self.file_ino = len(parts) + 1
        self.data_ino = self.file_ino + 1
        self.data = mmap.mmap(-1, data_size) if data_size else None
        if self.data is not None:
            self.children[(pyfuse3.ROOT_INODE, b"data")] = self.data_ino

    async def lookup(self, parent_inode, name, ctx):
        ino = self.children.get((parent_inode, name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(ino, ctx)

    async def getattr(self, inode, ctx):
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.entry_timeout = attrs.attr_timeout = 3600
        if inode == self.file_ino:
            attrs.st_mode, attrs.st_size, attrs.st_nlink = stat.S_IFREG | 0o600, 4096, 1
        elif inode == self.data_ino and self.data is not None:
            attrs.st_mode, attrs.st_size, attrs.st_nlink = stat.S_IFREG | 0o600, len(self.data), 1
        else:
            attrs.st_mode, attrs.st_nlink = stat.S_IFDIR | 0o755, 2
        return attrs

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        if fh == self.data_ino and self.data is not None:
            return self.data[off : off + size]
        return CONTENT[off : off + size]

    async def write(self, fh, off, buf):
        assert self.data is not None
        n = max(0, min(len(buf), len(self.data) - off))
        self.data[off : off + n] = buf[:n]
        return n


async def _serve(ready_file: str) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()

        nursery.start_soon(stop_on_signal)
        with open(ready_file, "w") as f:
            f.write("ok\n")
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> int:
    mountpoint, path, ready_file = sys.argv[1:4]
    data_size = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    options = {"fsname=kho-fs", "subtype=kho-fs", "default_permissions", "auto_unmount"}
    pyfuse3.init(Floor(path, data_size), mountpoint, options)
    try:
        trio.run(_serve, ready_file)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
