"""pytest plugin for the integration lab: ``pytest_plugins = ["tests.lab.fixtures"]``.

Fixture ``lab`` (session scope) starts one :class:`tests.lab.lab.Lab` for the whole session and stops
it at the end. A machine that is not provisioned FAILS the tests that use it (never skips): the
message says to run ``tests/lab/setup-machine.sh`` as root. ``lab_config(lab)`` builds a metasched
configuration (as a dict, ready for ``yaml.safe_dump``) pointing at the lab.

What a test gets from ``lab`` (see tests/lab/lab.py):
  lab.nodes[i].address / .port / .name / .sshd / .netns   node 0 = frontend (master of SGE and Slurm)
  lab.node_endpoints -> [(address, port), ...]
  lab.key_file, lab.known_hosts (Paths), lab.ssh_user ("metascheduler"), lab.users ("alice", "bob")
  lab.hostname, lab.jobcomp_path, lab.sge_env, lab.sge_bin, lab.sge_queue, lab.sge_pe, lab.slurm_partition
  lab.connect(i) -> paramiko.SSHClient (RejectPolicy, TCP_NODELAY); ssh_exec(client, cmd)
  lab.stop_node_sshd(i) / lab.start_node_sshd(i); lab.start_untrusted_sshd() -> Sshd
"""
from __future__ import annotations

import fcntl
import os
import time
from typing import Any

import pytest

from .lab import Lab, LabError, LabUnavailable, check_prerequisites

_timings: dict[str, float] = {}
LAB_LOCK = os.environ.get("METASCHED_LAB_LOCK", "/run/metasched-lab.lock")


@pytest.fixture(scope="session")
def lab():
    """The running lab, shared by every test of the session; torn down at the end (by pid)."""
    try:
        check_prerequisites()
    except LabUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    # One lab per machine (its daemons use fixed ports and /etc/slurm): a second pytest session on the same
    # machine waits here for the first to finish instead of failing on busy ports.
    lock = open(LAB_LOCK, "a+")
    t0 = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_EX)
    _timings["lab_lock_wait"] = time.monotonic() - t0
    the_lab = Lab()
    try:
        the_lab.start()
    except LabError as e:
        _timings.update(the_lab.timings)
        lock.close()
        pytest.fail(f"the metasched lab did not start: {e}", pytrace=False)
    try:
        yield the_lab
    finally:
        try:
            the_lab.stop()
        finally:
            _timings.update(the_lab.timings)
            lock.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print (never assert) how long the lab took: useful to keep the suite fast."""
    if _timings:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in _timings.items())
        terminalreporter.write_line(f"metasched lab timings: {parts}")


def lab_config(lab: Lab, policy: str = "shared", high_priority: int = 0,
               weights: tuple[int, int] = (50, 50), connect_timeout: float = 5,
               command_timeout: float = 60, schedulers: list[dict] | None = None) -> dict[str, Any]:
    """A metasched configuration for the lab (DESIGN.md "Configuration"): every lab node, both
    schedulers mastered on node 0 (the frontend), ssh trusting exactly the lab's known_hosts."""
    return {
        "policy": {"name": policy, "high_priority": high_priority},
        "nodes": [{"ip": address, "port": port} for address, port in lab.node_endpoints],
        "schedulers": schedulers if schedulers is not None else [
            {"name": "SGE", "master": 0, "weight": weights[0], "type": "sge"},
            {"name": "Slurm", "master": 0, "weight": weights[1], "type": "slurm"},
        ],
        "ssh": {
            "known_hosts": str(lab.known_hosts),
            "connect_timeout": connect_timeout,
            "command_timeout": command_timeout,
        },
    }
