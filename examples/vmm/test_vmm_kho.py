"""The VMM example's own tests: guest memory and a state blob across kexec on v4 and 6.19,
through a real mount, driven by the shell tools a VMM's operator would use.

Run them with ``pytest examples/vmm`` wherever kho-fs is installed (its pytest plugin
provides ``kho_machine`` and the marker).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = "vmm_kho.py:VmmDriver"  # next to this file: the plugin makes it absolute
CMDLINE = "console=ttyS0 kho=on vmm.guest_mem=8M"

#: The KHO steps of each release's interface, in shell: serialize, then print the guest
#: range as the outgoing and (after the kexec) the incoming FDT carry it.
STEPS = {
    "v4": {
        "serialize": "echo 1 > $M/sys/kernel/kho/active",
        "out": "fdtget -t x $M/sys/kernel/kho/dt /vmm/guest-mem mem",
        "in": "fdtget -t x $M/sys/firmware/kho/dt_fw /vmm/guest-mem mem",
    },
    "6.19": {
        "serialize": "printf 1 > $M/sys/kernel/debug/kho/out/finalize",
        "out": "fdtget -t x $M/sys/kernel/debug/kho/out/sub_fdts/vmm / guest-mem",
        "in": "fdtget -t x $M/sys/kernel/debug/kho/in/sub_fdts/vmm / guest-mem",
    },
}


def sh(machine, script: str, cwd: Path) -> str:
    """Run ``script`` in bash with ``$M`` the mountpoint and kho-fs on ``PATH``."""
    env = {
        **os.environ,
        "M": str(machine.mountpoint),
        "KHO_FS_ROOT": str(machine.mountpoint),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{script}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    return result.stdout


@pytest.mark.parametrize(
    "release",
    [
        pytest.param(
            r,
            marks=pytest.mark.kho_machine(
                release=r, memory="2G", cmdline=CMDLINE, drivers=[DRIVER]
            ),
        )
        for r in ("v4", "6.19")
    ],
)
def test_guest_memory_and_state_survive_kexec(kho_machine, tmp_path, release):
    steps = STEPS[release]
    out = sh(
        kho_machine,
        f"""
        V=$M/machine/drivers/vmm
        test "$(stat -c %s $V/guest_mem)" = 8388608 && test "$(stat -c %s $V/state)" = 4096
        head -c 8M /dev/urandom > guest.bin
        printf '{{"vcpus": 2, "rip": "0xffffffff81000000"}}' > state.json
        dd if=guest.bin of=$V/guest_mem bs=1M conv=notrunc status=none
        dd if=state.json of=$V/state conv=notrunc status=none
        grep -o 'vmm: guest memory 0x[0-9a-f]*' $M/machine/dmesg > address.before
        {steps["serialize"]}
        {steps["out"]} > range.out
        kho-fs mkimage --release {release} -o vmlinuz > /dev/null
        kho-fs kexec -l vmlinuz -s --reuse-cmdline
        kho-fs kexec -e
        grep -q 'Linux version .* #2 ' $M/proc/version
        grep 'vmm: guest memory .* restored from KHO' $M/machine/dmesg
        grep -o 'vmm: guest memory 0x[0-9a-f]*' $M/machine/dmesg | cmp - address.before
        {steps["in"]} | cmp - range.out
        cmp guest.bin $V/guest_mem
        cmp state.json <(head -c "$(stat -c %s state.json)" $V/state)
        """,
        tmp_path,
    )
    assert "restored from KHO" in out


@pytest.mark.kho_machine(release="6.19", memory="2G", cmdline=CMDLINE, drivers=[DRIVER])
def test_without_finalize_the_guest_starts_afresh(kho_machine):
    guest = kho_machine.region("guest_mem", driver="vmm")
    guest.write_bytes(b"guest RAM")
    kho_machine.kexec()  # no finalize: 6.19 hands nothing over
    dmesg = kho_machine.dmesg()
    assert "KHO: disabling KHO revival: -2" in dmesg
    assert [line for line in dmesg.splitlines() if "vmm:" in line][-1].endswith("allocated")
    assert guest.read_bytes()[:9] == bytes(9)


@pytest.mark.kho_machine(release="6.19", memory="2G", cmdline=CMDLINE, drivers=[DRIVER])
def test_host_upgrade_6_19_to_7_0_keeps_the_guest(kho_machine):
    kho_machine.region("state", driver="vmm").write_bytes(b"device state")
    kho_machine.finalize()
    kho_machine.kexec("7.0")
    assert kho_machine.release == "7.0"
    assert "restored from KHO" in kho_machine.dmesg()
    assert kho_machine.region("state", driver="vmm").read_bytes()[:12] == b"device state"
