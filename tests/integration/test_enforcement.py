"""The policy's CPU shares, enforced for real on the lab's frontend (issue 5).

The real server (gunicorn + poller, interval 1 s) reaches the frontend over SSH as ``metascheduler`` and
runs the installed node agent through ``sudo -n`` (deploy/install-node-agent.sh, the sudoers rule of
tests/lab/setup-machine.sh). alice's Grid Engine jobs and bob's Slurm jobs are busy loops, two per
scheduler, on this machine's 2 cores. What a user notices, measured by the test itself from /proc:

* shared 70/30: Grid Engine gets 70 % of the CPU the two use, within 5 points, over 20 s;
* best_effort with Grid Engine first (switched at runtime with PUT /cluster/mode, applied within two
  cycles): Slurm gets at most 10 % while Grid Engine is busy, and the CPU back once it is idle;
* a job started between two cycles is in its scheduler's group at the next one; daemons, sshd and the
  service itself are never moved nor reniced;
* GET /cluster/nodes/master shows per scheduler the target and the measured share and the mechanism;
* a node that was down (its groups gone, as after a reboot) gets its groups and weights back.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import time

import pytest

from tests.integration import cpu_split as cs
from tests.integration.real import remove, start_real_server, user_dirs, wait_until

pytestmark = pytest.mark.lab
INTERVAL = 1.0
WINDOW = 20.0
PIN = 1
NEVER_MOVED = ("sge_qmaster", "sge_execd", "slurmctld", "slurmd", "munged", "sshd")


@pytest.fixture(scope="module")
def agent():
    with cs.installed_agent() as path:
        yield path


@pytest.fixture(scope="module")
def srv(lab, users, agent):
    # the weights written are the policy's own: the feedback step's corrections are test_shares_three's
    s = start_real_server(lab, users, cs.enforcement_config(lab, weights=(70, 30), interval=INTERVAL, feedback=False))
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture(scope="module")
def dirs(users):
    base, d = user_dirs(users, prefix="metasched-enforce-")
    yield d
    for p in d.values():          # stop every busy loop a failing test left behind
        for f in p.glob("pid-*"):
            (p / ("stop-" + f.name[4:].rsplit("-", 1)[0])).touch()
    time.sleep(1.5)
    remove(base)


@pytest.fixture(scope="module")
def before(srv):
    """The bystanders as they were before any job ran."""
    b = bystanders(srv)
    assert {"sge_execd", "sge_qmaster", "slurmd", "slurmctld", "sshd"} <= {c for c, *_ in b.values()}, b
    return b


def assert_bystanders_untouched(srv, before) -> None:
    now = bystanders(srv)
    changed = {pid: (before[pid], now[pid]) for pid in before if pid in now and before[pid] != now[pid]}
    assert changed == {}, changed
    inside = {pid: v for pid, v in now.items() if f"/{cs.PARENT}" in (v[1] or "") + (v[2] or "")}
    assert inside == {}, inside


def comm(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def bystanders(srv) -> dict[int, tuple[str, str | None, str | None, int]]:
    """Daemons, every sshd (sessions included) and the service's processes: pid -> (comm, cpu cgroup,
    cpuacct cgroup, nice)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and comm(int(entry)) in NEVER_MOVED:
            pids.add(int(entry))
    pids.add(srv.proc.pid)
    pids |= {int(p) for p in pathlib.Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children")
             .read_text().split()}
    out = {}
    for pid in pids:
        f = cs.stat_fields(pid)
        if f:
            out[pid] = (comm(pid), cs.cgroup_of(pid), cs.cgroup_of(pid, "cpuacct"), int(f[16]))
    return out


def node_view(srv) -> dict:
    return srv.root("GET", "/cluster/nodes/master").json()


def set_mode(srv, body: dict) -> None:
    r = srv.root("PUT", "/cluster/mode", body)
    assert r.status == 200, r


def test_shared_70_30_is_the_measured_split(srv, users, dirs, before):
    groups = cs.queue_groups(srv)

    sge = cs.start_busy(srv, users, dirs["alice"], "SGE", "alice", cpu=PIN)
    slurm = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", cpu=PIN)
    try:
        # every job shell lands in its scheduler's group, weighted 70/30
        wait_until("the job shells in their groups", lambda: all(cs.in_group(p, groups["SGE"]) for p in sge.pids)
                   and all(cs.in_group(p, groups["Slurm"]) for p in slurm.pids), timeout=5)
        assert cs.shares_of(groups["SGE"]) * 3 == pytest.approx(cs.shares_of(groups["Slurm"]) * 7, rel=0.01)

        pct, a, b = cs.measure(sge, slurm, WINDOW)
        print(f"shared 70/30: SGE {pct:.1f} % ({a:.2f} + {b:.2f} cores)")
        assert abs(pct - 70.0) <= 5.0, (pct, a, b)

        view = node_view(srv)
        assert view["reachable"] is True, view
        enf = view["enforcement"]
        assert enf["mechanism"] == "cgroup_v1", enf
        by_name = {s["name"]: s for s in enf["schedulers"]}
        assert by_name["SGE"]["target_share"] == 70.0 and by_name["Slurm"]["target_share"] == 30.0, enf
        assert by_name["SGE"]["mechanism"] == "cgroup_v1" and by_name["SGE"]["pids"] >= 2, enf
        assert by_name["SGE"]["weight"] == cs.shares_of(groups["SGE"]), enf
        # the service's own measurement over the last minute (it includes the jobs' first seconds)
        assert abs(by_name["SGE"]["measured_share"] - 70.0) <= 8.0, enf
        assert by_name["SGE"]["measured_share"] + by_name["Slurm"]["measured_share"] == pytest.approx(100, abs=0.1)
        assert_bystanders_untouched(srv, before)
    finally:
        cs.stop_and_wait(srv, sge)
        cs.stop_and_wait(srv, slurm)


def wait_shares(srv, groups, sge_share: float, slurm_share: float, timeout: float) -> float:
    """Seconds until the groups' cpu.shares are those of the given split (v1: percent*1024*n/100)."""
    want = (cs.v1(sge_share), cs.v1(slurm_share))
    t0 = time.monotonic()
    wait_until(f"cpu.shares {want}", lambda: (cs.shares_of(groups["SGE"]), cs.shares_of(groups["Slurm"])) == want,
               timeout=timeout, interval=0.05)
    return time.monotonic() - t0


def test_best_effort_switched_at_runtime_starves_the_low_priority_scheduler_only_while_needed(
        srv, users, dirs, before):
    groups = cs.queue_groups(srv)
    sge = cs.start_busy(srv, users, dirs["alice"], "SGE", "alice", cpu=PIN, tag="be")
    slurm = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", cpu=PIN, tag="be")
    try:
        wait_shares(srv, groups, 70, 30, timeout=3 * INTERVAL)
        set_mode(srv, {"policy": "best_effort", "high_priority": "SGE"})
        took = wait_shares(srv, groups, 99, 1, timeout=2 * INTERVAL + 1.5)  # two cycles (+ one cycle's work)
        print(f"best_effort applied {took:.2f} s after PUT /cluster/mode")
        pct, a, b = cs.measure(sge, slurm, 10)
        print(f"best_effort, SGE busy: Slurm {100 - pct:.1f} % ({a:.2f} + {b:.2f} cores)")
        assert 100 - pct <= 10.0, (pct, a, b)
        enf = node_view(srv)["enforcement"]
        assert {s["name"]: s["target_share"] for s in enf["schedulers"]} == {"SGE": 99.0, "Slurm": 1.0}, enf

        cs.stop_and_wait(srv, sge)          # Grid Engine idle: everyone shares equally, Slurm gets the CPU
        took = wait_shares(srv, groups, 50, 50, timeout=2 * INTERVAL + 1.5)
        _, _, b_alone = cs.measure(sge, slurm, 5)
        print(f"best_effort, SGE idle: Slurm {b_alone:.2f} cores (equal shares {took:.2f} s after SGE ended)")
        assert b_alone >= 0.7, b_alone    # its two loops share the one core they are pinned to
        assert_bystanders_untouched(srv, before)
    finally:
        set_mode(srv, {"policy": "shared"})
        cs.stop_and_wait(srv, sge)
        cs.stop_and_wait(srv, slurm)
    wait_shares(srv, groups, 70, 30, timeout=2 * INTERVAL + 1.5)


def test_a_job_started_between_cycles_is_in_its_group_at_the_next_cycle(srv, users, dirs, before):
    groups = cs.queue_groups(srv)
    job = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", n=1, tag="new")
    try:
        pid = job.pids[0]
        started = cs.process_start_epoch(pid)
        placed = wait_until("the new job in its group", lambda: cs.in_group(pid, groups["Slurm"]) and time.time(),
                            timeout=3 * INTERVAL, interval=0.01)
        print(f"new job placed {placed - started:.2f} s after it started")
        assert placed - started <= 2 * INTERVAL + 0.5
        assert cs.cgroup_of(pid, "cpuacct") == f"/{cs.PARENT}/{groups['Slurm']}"   # counted there too
        assert_bystanders_untouched(srv, before)
    finally:
        cs.stop_and_wait(srv, job)


def test_a_node_back_from_down_gets_its_groups_and_weights_back(srv, lab, users, dirs, before):
    groups = cs.queue_groups(srv)
    sge = cs.start_busy(srv, users, dirs["alice"], "SGE", "alice", n=1, cpu=PIN, tag="down")
    slurm = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", n=1, cpu=PIN, tag="down")
    pids = {groups["SGE"]: sge.pids[0], groups["Slurm"]: slurm.pids[0]}
    try:
        wait_until("jobs placed", lambda: all(cs.in_group(p, g) for g, p in pids.items()), timeout=3 * INTERVAL)
        lab.stop_node_sshd(0)
        try:
            wait_until("the node seen down", lambda: node_view(srv)["reachable"] is False, timeout=10)
            # what a reboot leaves: no groups; the job processes (still running) in the root groups
            for root in (cs.CPU_ROOT, cs.ACCT_ROOT):
                for g in pids:
                    for pid in (root / cs.PARENT / g / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            (root / "cgroup.procs").write_text(pid)
                    (root / cs.PARENT / g).rmdir()
            time.sleep(2 * INTERVAL)
            assert not any(cs.in_group(p, g) for g, p in pids.items())
        finally:
            lab.start_node_sshd(0)
        t0 = time.monotonic()
        wait_until("groups, weights and members back",
                   lambda: all(cs.in_group(p, g) for g, p in pids.items())
                   and (cs.shares_of(groups["SGE"]), cs.shares_of(groups["Slurm"])) == (cs.v1(70), cs.v1(30)),
                   timeout=15, interval=0.05)
        print(f"node back: groups restored {time.monotonic() - t0:.2f} s after its sshd answered")
        assert all(cs.cgroup_of(p, "cpuacct") == f"/{cs.PARENT}/{g}" for g, p in pids.items())
        wait_until("the node seen up", lambda: node_view(srv)["reachable"] is True, timeout=5)
        assert_bystanders_untouched(srv, before)
    finally:
        cs.stop_and_wait(srv, sge)
        cs.stop_and_wait(srv, slurm)
