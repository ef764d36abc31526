"""Bad input on the ``/dev/liveupdate`` socket (docs/luo.md): 10,000 random and mutated
messages (``KHO_FS_LUO_FUZZ`` for another count; ``scripts/stress --only luo`` runs far
more). Every answer is an errno the uAPI allows, the daemon never dies, and it holds
exactly the descriptors it held before (:mod:`kho_fs.stress.luo_fuzz`)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from kho_fs.daemon import read_pid_file
from kho_fs.stress.luo_fuzz import CMDLINE, MEMORY, run_luo_fuzz
from kho_fs.testing import mounted

MESSAGES = int(os.environ.get("KHO_FS_LUO_FUZZ", "10000"))


def test_ten_thousand_bad_messages(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    with mounted(tmp_path, memory=MEMORY, cmdline=CMDLINE, extra_args=["--release", "6.19"]) as m:
        assert m.pid is not None
        report = run_luo_fuzz(m.mountpoint, m.pid, MESSAGES, seed)
        assert report.ok, f"seed {seed}\n{report.summary()}"
        assert report.messages >= MESSAGES and report.killed_clients > 0
        assert read_pid_file(str(m.mountpoint)) == m.pid  # the same daemon, still serving
        assert "liveupdate request failed" not in m.log()
        assert "Traceback" not in m.log()
