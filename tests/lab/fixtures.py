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

``running_farm(n)`` (a context manager, for module fixtures) is a :class:`tests.lab.farm.NodeFarm`: n namespace
nodes with sshd only, each in its own PID namespace, on their own names and subnet. It needs neither Grid
Engine nor Slurm, takes no lab lock and can run beside the lab.

Fixture ``spark`` (session scope, lazy): the lab's Spark Master and Worker (.master_url, .web_url, .home,
.submit, .status()); ``spark_scheduler(spark)`` is a scheduler entry for it.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from .farm import NodeFarm
from .farm import check_prerequisites as check_farm_prerequisites
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


@pytest.fixture(scope="session")
def spark(lab):
    """The lab's Spark standalone Master and Worker (tests/lab/lab.py Spark), started by the first test that
    asks for them and stopped with the lab: the tests that do not need Spark never pay for its JVMs."""
    try:
        return lab.start_spark()
    except LabError as e:
        pytest.fail(f"the lab's Spark did not start: {e}", pytrace=False)


def spark_scheduler(spark, name: str = "Spark", weight: int = 50) -> dict:
    """A `spark` scheduler entry for lab_config(schedulers=...): the lab's master, drivers in client mode on
    the frontend running this interpreter's Python (which has pyspark), no driver web UI."""
    import sys
    return {"name": name, "master": 0, "weight": weight, "type": "spark",
            "options": {"master_url": spark.master_url, "web_url": spark.web_url,
                        "bin_dir": str(spark.home / "bin"), "grace": 5,
                        "conf": {"spark.driver.host": "127.0.0.1", "spark.ui.enabled": "false",
                                 "spark.pyspark.python": sys.executable,
                                 "spark.pyspark.driver.python": sys.executable}}}


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


@contextmanager
def running_farm(n: int) -> Iterator[NodeFarm]:
    """n farm nodes for the ``with`` block, stopped (by pid) at its end; an unprovisioned machine fails the test."""
    try:
        check_farm_prerequisites()
    except LabUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    farm = NodeFarm(n)
    try:
        farm.start()
    except LabError as e:
        _timings.update({f"farm{n}_{k}": v for k, v in farm.timings.items()})
        pytest.fail(f"the metasched farm of {n} nodes did not start: {e}", pytrace=False)
    try:
        yield farm
    finally:
        try:
            farm.stop()
        finally:
            _timings.update({f"farm{n}_{k}": v for k, v in farm.timings.items()})
