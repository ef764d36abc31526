"""--state files keep each kernel message's log level; files saved before levels existed
([usec, text] pairs) still load, every message at KERN_INFO."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from kho_fs.model.dmesg import KERN_ERR, KERN_INFO, KERN_WARNING
from kho_fs.model.errors import KernelError
from kho_fs.model.machine import Machine
from kho_fs.state import MAGIC, load_machine, save_machine


def failed_activation(path: Path) -> list[tuple[int, str, int]]:
    """Save a machine whose log holds a warning and an error; return its records."""
    with Machine.create(4 << 30, 1, "kho=maybe kho=on") as m:
        m.kernel.kho.dt_max_store(b"110")
        with pytest.raises(KernelError):
            m.kernel.kho.active_store(b"1")
        save_machine(m, path)
        return [tuple(r) for r in m.kernel.log.records]


def test_levels_survive_save_and_restore(tmp_path: Path) -> None:
    records = failed_activation(tmp_path / "m.state")
    assert {level for _, _, level in records} >= {KERN_WARNING, KERN_ERR}
    with load_machine(tmp_path / "m.state") as restored:
        assert [tuple(r) for r in restored.kernel.log.records] == records
        assert restored.kernel.log.render_raw().count("<3>[") == 1


def test_files_without_levels_load_at_info(tmp_path: Path) -> None:
    path = tmp_path / "m.state"
    records = failed_activation(path)
    # Rewrite the metadata as an older kho-fs wrote it: log entries are [usec, text].
    data = path.read_bytes()
    head = len(MAGIC) + 12
    version, meta_len = struct.unpack_from("<IQ", data, len(MAGIC))
    meta = json.loads(data[head : head + meta_len])
    meta["kernel"]["log"] = [[usec, text] for usec, text, _ in meta["kernel"]["log"]]
    raw = json.dumps(meta, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<IQ", version, len(raw)) + raw + data[head + meta_len : -32]
    path.write_bytes(body + hashlib.sha256(body).digest())
    with load_machine(path) as restored:
        assert [tuple(r) for r in restored.kernel.log.records] == [
            (usec, text, KERN_INFO) for usec, text, _ in records
        ]
