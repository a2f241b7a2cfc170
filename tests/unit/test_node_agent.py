"""Unit tests of the node agent against a fake /proc and fake cgroup hierarchies in a temp dir.

The fakes are plain directories laid out like the kernel's; the one seam is the setpriority function,
whose recorder also updates the fake stat file (as the kernel would), so idempotency is observable.
The real effect on CPU time is checked in tests/integration/test_node_agent_live.py.
"""
import ast
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasched import node_agent

AGENT = Path(node_agent.__file__)
KTHREAD = node_agent.PF_KTHREAD
NM_CMD = "java\0-Dproc_nodemanager\0org.apache.hadoop.yarn.server.nodemanager.NodeManager\0"

# pid: (comm, ppid, pgrp, flags, state, cmdline)
PROCS = {
    1: ("init", 0, 1, 0, "S", "/sbin/init"),
    2: ("kthreadd", 0, 0, KTHREAD, "S", ""),
    3: ("kworker/0:0", 2, 0, KTHREAD, "I", ""),
    100: ("sshd", 1, 100, 0, "S", "sshd: /usr/sbin/sshd"),
    200: ("sge_execd", 1, 200, 0, "S", "sge_execd"),
    201: ("sge_shepherd", 200, 200, 0, "S", "sge_shepherd-7"),
    202: ("sh", 201, 202, 0, "S", "/bin/sh job.sh"),
    203: ("python3", 202, 202, 0, "R", "python3 work.py"),
    204: ("we ird) (x", 202, 202, 0, "R", "odd"),       # comm with a space and parentheses
    205: ("sshd", 202, 202, 0, "S", "sshd -D"),          # a job's own sshd: still never moved
    206: ("defunct", 202, 202, 0, "Z", ""),             # zombie
    300: ("slurmd", 1, 300, 0, "S", "slurmd"),
    301: ("slurmstepd", 1, 301, 0, "S", "slurmstepd: [42.batch]"),
    302: ("slurm_script", 301, 302, 0, "S", "/bin/bash slurm_script"),
    303: ("sleep", 302, 302, 0, "S", "sleep 100"),
    304: ("sge_qmaster", 302, 302, 0, "S", "sge_qmaster"),  # an excluded daemon inside a tree
    400: ("java", 1, 400, 0, "S", NM_CMD),
    401: ("bash", 400, 401, 0, "S", "bash default_container_executor.sh"),
    402: ("java", 401, 401, 0, "R", "java\0org.apache.hadoop.mapred.YarnChild\0"),
    410: ("container-execu", 400, 410, 0, "S", "container-executor\0alice"),
    411: ("bash", 410, 411, 0, "S", "bash launch_container.sh"),
    412: ("java", 411, 411, 0, "R", "java\0org.apache.spark.executor.Executor\0"),
    500: ("bash", 1, 500, 0, "S", "-bash"),              # unrelated user
    501: ("yes", 500, 500, 0, "R", "yes"),
    600: ("sh", 1, 600, 0, "S", "sh local-job.sh"),      # local backend job: process group 600
    601: ("sleep", 600, 600, 0, "S", "sleep 1"),
    602: ("sh", 600, 602, 0, "S", "sh child-in-own-pgrp"),
    800: ("sshd", 1, 800, 0, "S", "sshd: metascheduler"),
    801: ("sudo", 800, 801, 0, "S", "sudo -n agent"),     # the agent, run over SSH
    802: ("python3", 801, 801, 0, "R", "python3 agent"),
}
SGE_TREE = {202, 203, 204}
SLURM_TREE = {302, 303}
YARN_TREE = {401, 402, 411, 412}
LOCAL_TREE = {600, 601, 602}
SELF = 802


def stat_line(pid, comm, ppid, pgrp, flags, state, utime=100, stime=50, nice=0):
    return ("%d (%s) %s %d %d %d 0 -1 %d 0 0 0 0 %d %d 0 0 20 %d 1 0 12345 0 0\n"
            % (pid, comm, state, ppid, pgrp, pgrp, flags, utime, stime, nice))


@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "proc"
    root.mkdir()
    for pid, (comm, ppid, pgrp, flags, state, cmd) in PROCS.items():
        d = root / str(pid)
        d.mkdir()
        (d / "stat").write_text(stat_line(pid, comm, ppid, pgrp, flags, state))
        (d / "cmdline").write_text(cmd)
    (root / "207").mkdir()                 # vanished between listdir and reading its stat
    (root / "self").mkdir()
    (root / "uptime").write_text("1234.50 2000.00\n")
    (root / "203" / "task").mkdir()        # a multithreaded process: nice is per thread
    for tid in ("203", "220", "221"):
        (root / "203" / "task" / tid).mkdir()
    return root


def make_v2(tmp_path, controllers="cpuset cpu io memory pids"):
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    (root / "cgroup.procs").write_text("1\n")
    return root


def make_v1(tmp_path, separate_cpuacct=True):
    root = tmp_path / "cg1"
    cpu = root / "cpu"
    cpu.mkdir(parents=True)
    for f, v in (("cpu.shares", "1024"), ("cgroup.procs", "1\n"), ("tasks", "1\n")):
        (cpu / f).write_text(v)
    (root / "unified").mkdir()             # like these machines: a cgroup2 mount without controllers
    (root / "unified" / "cgroup.controllers").write_text("\n")
    if separate_cpuacct:
        (root / "cpuacct").mkdir()
        (root / "cpuacct" / "cpuacct.usage").write_text("999\n")
        (root / "cpuacct" / "cgroup.procs").write_text("1\n")
    else:
        (cpu / "cpuacct.usage").write_text("999\n")
    return root


def groups(sge=70.0, slurm=30.0, yarn=None, local=None):
    out = [
        {"name": "sge", "weight_percent": sge,
         "match": {"roots_by_comm": ["sge_shepherd"], "exclude_comm": ["sge_execd", "sge_qmaster"]}},
        {"name": "slurm", "weight_percent": slurm,
         "match": {"roots_by_comm": ["slurmstepd"], "exclude_comm": ["slurmd"]}},
    ]
    if yarn is not None:
        out.append({"name": "yarn", "weight_percent": yarn, "match": {"yarn_containers": True}})
    if local is not None:
        out.append({"name": "local", "weight_percent": local, "match": {"pgids": [600]}})
    return out


def request(proc, cgroot, mechanism="auto", **kw):
    req = {"version": 1, "parent": "metasched", "mechanism": mechanism, "groups": groups(**kw),
           "proc_root": str(proc)}
    if cgroot is not None:
        req["cgroup_root"] = str(cgroot)
    return req


def pids_in(path):
    return {int(x) for x in path.read_text().split()} if path.exists() else set()


class NiceRecorder:
    """Stands in for os.setpriority: records calls and updates the fake stat like the kernel would."""

    def __init__(self, proc, vanished=()):
        self.proc, self.calls, self.vanished = proc, [], set(vanished)

    def __call__(self, which, tid, nice):
        if tid in self.vanished:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        self.calls.append((which, tid, nice))
        stat = self.proc / str(tid) / "stat"
        if stat.exists():
            p = node_agent.parse_stat(stat.read_text())
            assert p.sid == p.pgrp  # stat_line writes the process group as the session too
            stat.write_text(stat_line(p.pid, p.comm, p.ppid, p.pgrp, p.flags, p.state, nice=nice))


# -- parsing ----------------------------------------------------------------------------------
def test_stat_parsing_takes_comm_up_to_the_last_parenthesis():
    p = node_agent.parse_stat(stat_line(204, "we ird) (x", 202, 202, 0, "R", utime=7, stime=3, nice=5))
    assert (p.pid, p.comm, p.state, p.ppid, p.pgrp, p.ticks, p.nice) == (204, "we ird) (x", "R", 202, 202, 10, 5)


def test_mountinfo_of_these_machines_selects_v1_cpu_over_the_controllerless_cgroup2():
    text = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
            "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
            "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert node_agent.parse_mountinfo(text) == ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct",
                                                ["/sys/fs/cgroup/unified"])


def test_the_module_parses_as_python_3_6():
    ast.parse(AGENT.read_text(), feature_version=(3, 6))


# -- weight mappings --------------------------------------------------------------------------
def test_weight_mappings():
    assert node_agent.v2_weight(70) == 7000 and node_agent.v2_weight(0) == 1 and node_agent.v2_weight(100) == 10000
    assert node_agent.v1_shares(50, 2) == 1024 and node_agent.v1_shares(80, 2) == 1638
    assert node_agent.v1_shares(0, 3) == 2
    assert [node_agent.nice_value(p, 80) for p in (80, 40, 20, 1, 0)] == [0, 3, 6, 19, 19]


# -- cgroup v2 --------------------------------------------------------------------------------
def test_v2_places_each_tree_in_its_group_and_writes_weights(proc, tmp_path):
    cg = make_v2(tmp_path)
    resp = node_agent.run(request(proc, cg, yarn=10.0, local=5.0), self_pid=SELF)
    assert resp["ok"] and resp["mechanism"] == "cgroup_v2" and resp["errors"] == []
    base = cg / "metasched"
    assert (cg / "cgroup.subtree_control").read_text() == "+cpu"      # the kernel merges it with "memory"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu"
    assert {g: (base / g / "cpu.weight").read_text() for g in ("sge", "slurm", "yarn", "local")} == \
        {"sge": "7000", "slurm": "3000", "yarn": "1000", "local": "500"}
    assert pids_in(base / "sge" / "cgroup.procs") == SGE_TREE
    assert pids_in(base / "slurm" / "cgroup.procs") == SLURM_TREE
    assert pids_in(base / "yarn" / "cgroup.procs") == YARN_TREE
    assert pids_in(base / "local" / "cgroup.procs") == LOCAL_TREE
    g = resp["groups"]
    assert (g["sge"]["moved"], g["sge"]["trees"], g["sge"]["pids"], g["sge"]["weight"]) == (3, 1, 3, 7000)
    assert (g["yarn"]["trees"], g["local"]["trees"]) == (2, 1)
    # usage falls back to the live pids' utime+stime+cutime+cstime until cpu.stat exists
    assert g["sge"]["usage_source"] == "procs" and g["sge"]["usage_usec"] == 3 * 150 * 1000000 // os.sysconf("SC_CLK_TCK")
    assert resp["uptime"] == 1234.5 and resp["ncpus"] >= 1 and len(resp["load"]) == 3 and resp["elapsed_ms"] >= 0


def test_daemons_sshd_kernel_threads_init_and_the_agent_are_never_moved(proc, tmp_path):
    cg = make_v2(tmp_path)
    node_agent.run(request(proc, cg, yarn=10.0, local=5.0), self_pid=SELF)
    placed = set()
    for f in (cg / "metasched").glob("*/cgroup.procs"):
        placed |= pids_in(f)
    never = {1, 2, 3, 100, 200, 201, 205, 206, 207, 300, 301, 304, 400, 410, 500, 501, 800, 801, 802}
    assert placed & never == set()


def test_an_agent_running_inside_a_job_tree_moves_neither_itself_nor_its_ancestors(proc, tmp_path):
    cg = make_v2(tmp_path)
    node_agent.run(request(proc, cg), self_pid=203)
    assert pids_in(cg / "metasched" / "sge" / "cgroup.procs") == {204}


def test_second_run_moves_nothing_and_groups_keep_their_pids(proc, tmp_path):
    cg = make_v2(tmp_path)
    node_agent.run(request(proc, cg), self_pid=SELF)
    before = (cg / "metasched" / "sge" / "cgroup.procs").read_text()
    resp = node_agent.run(request(proc, cg, sge=50.0, slurm=50.0), self_pid=SELF)
    assert [g["moved"] for g in resp["groups"].values()] == [0, 0]
    assert (cg / "metasched" / "sge" / "cgroup.procs").read_text() == before
    assert (cg / "metasched" / "sge" / "cpu.weight").read_text() == "5000"
    assert (cg / "cgroup.subtree_control").read_text().count("cpu") == 1


def test_a_new_process_in_a_tree_is_placed_next_cycle_and_usage_comes_from_cpu_stat(proc, tmp_path):
    cg = make_v2(tmp_path)
    node_agent.run(request(proc, cg), self_pid=SELF)
    (proc / "250").mkdir()
    (proc / "250" / "stat").write_text(stat_line(250, "make", 203, 202, 0, "R"))
    (cg / "metasched" / "sge" / "cpu.stat").write_text("usage_usec 4200\nuser_usec 4000\nsystem_usec 200\n")
    resp = node_agent.run(request(proc, cg), self_pid=SELF)
    assert resp["groups"]["sge"]["moved"] == 1 and pids_in(cg / "metasched" / "sge" / "cgroup.procs") == SGE_TREE | {250}
    assert (resp["groups"]["sge"]["usage_usec"], resp["groups"]["sge"]["usage_source"]) == (4200, "cgroup")


def test_dry_run_writes_nothing(proc, tmp_path):
    cg = make_v2(tmp_path)
    resp = node_agent.run(request(proc, cg), dry_run=True, self_pid=SELF)
    assert resp["groups"]["sge"]["moved"] == 3 and not (cg / "metasched").exists()
    assert (cg / "cgroup.subtree_control").read_text() == "memory\n"


# -- cgroup v1 --------------------------------------------------------------------------------
def test_v1_writes_shares_and_mirrors_groups_into_a_separate_cpuacct_for_usage(proc, tmp_path):
    cg = make_v1(tmp_path)
    resp = node_agent.run(request(proc, cg), self_pid=SELF)
    assert resp["mechanism"] == "cgroup_v1" and resp["errors"] == []
    cpu = cg / "cpu" / "metasched"
    assert ((cpu / "sge" / "cpu.shares").read_text(), (cpu / "slurm" / "cpu.shares").read_text()) == ("1434", "614")
    assert pids_in(cpu / "sge" / "cgroup.procs") == SGE_TREE and pids_in(cpu / "slurm" / "cgroup.procs") == SLURM_TREE
    assert pids_in(cg / "cpuacct" / "metasched" / "sge" / "cgroup.procs") == SGE_TREE
    assert not (cg / "unified" / "metasched").exists()
    (cg / "cpuacct" / "metasched" / "sge" / "cpuacct.usage").write_text("5000000\n")
    resp = node_agent.run(request(proc, cg), self_pid=SELF)
    assert resp["groups"]["sge"]["usage_usec"] == 5000 and resp["groups"]["sge"]["moved"] == 0


def test_a_cap_is_the_groups_cpu_quota_and_a_request_without_one_lifts_it(proc, tmp_path):
    cg = make_v1(tmp_path)
    req = request(proc, cg)
    req["groups"][1]["cap_cores"] = 0.25
    resp = node_agent.run(req, self_pid=SELF)
    slurm = cg / "cpu" / "metasched" / "slurm"
    assert resp["errors"] == [] and resp["groups"]["slurm"]["cap_cores"] == 0.25
    assert ((slurm / "cpu.cfs_quota_us").read_text(), (slurm / "cpu.cfs_period_us").read_text()) == ("25000", "100000")
    assert not (cg / "cpu" / "metasched" / "sge" / "cpu.cfs_quota_us").exists()     # no cap, none to lift
    resp = node_agent.run(request(proc, cg), self_pid=SELF)
    assert (slurm / "cpu.cfs_quota_us").read_text() == "-1" and resp["groups"]["slurm"]["cap_cores"] is None
    v2 = make_v2(tmp_path)
    req = request(proc, v2)
    req["groups"][0]["cap_cores"] = 1.5
    node_agent.run(req, self_pid=SELF)
    assert (v2 / "metasched" / "sge" / "cpu.max").read_text() == "150000 100000"
    node_agent.run(request(proc, v2), self_pid=SELF)
    assert (v2 / "metasched" / "sge" / "cpu.max").read_text() == "max 100000"
    req["groups"][0]["cap_cores"] = 0
    with pytest.raises(node_agent.RequestError, match="cap_cores"):
        node_agent.validate(req, True)


def test_v1_with_comounted_cpuacct_and_only_a_tasks_file(proc, tmp_path):
    cg = make_v1(tmp_path, separate_cpuacct=False)
    (cg / "cpu" / "cgroup.procs").unlink()
    node_agent.run(request(proc, cg), self_pid=SELF)
    assert pids_in(cg / "cpu" / "metasched" / "sge" / "tasks") == SGE_TREE
    assert not (cg / "cpu" / "metasched" / "sge" / "cgroup.procs").exists()


# -- fallbacks --------------------------------------------------------------------------------
def test_unwritable_hierarchy_falls_back_to_renicing_every_thread(proc, tmp_path):
    cg = make_v2(tmp_path)
    (cg / "metasched").write_text("not a directory")       # mkdir of the groups fails (ENOTDIR)
    rec = NiceRecorder(proc, vanished={303})
    resp = node_agent.run(request(proc, cg, sge=80.0, slurm=20.0), setpriority=rec, self_pid=SELF)
    assert resp["mechanism"] == "nice" and "cgroups unavailable" in resp["mechanism_note"]
    assert "task group" in resp["mechanism_note"] and resp["errors"] == []
    assert (resp["groups"]["sge"]["weight"], resp["groups"]["slurm"]["weight"]) == (0, 6)
    # sge already at nice 0: untouched; slurm's pids at 6; 303 vanished meanwhile, which is not an error
    assert sorted(rec.calls) == [(os.PRIO_PROCESS, 302, 6)]
    assert resp["groups"]["slurm"]["moved"] == 1


def test_nice_goes_back_to_zero_and_never_below(proc, tmp_path):
    rec = NiceRecorder(proc)
    node_agent.run(request(proc, None, "nice", sge=20.0, slurm=80.0), setpriority=rec, self_pid=SELF)
    assert {(tid, n) for _, tid, n in rec.calls} == {(202, 6), (203, 6), (220, 6), (221, 6), (204, 6)}
    rec.calls.clear()
    node_agent.run(request(proc, None, "nice", sge=20.0, slurm=80.0), setpriority=rec, self_pid=SELF)
    assert rec.calls == []                                   # idempotent
    node_agent.run(request(proc, None, "nice", sge=50.0, slurm=50.0), setpriority=rec, self_pid=SELF)
    assert {n for _, _, n in rec.calls} == {0}


def test_autogroup_nice_is_set_for_sessions_led_by_job_processes_only(proc, tmp_path):
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "sched_autogroup_enabled").write_text("1\n")
    for leader in (202, 302, 500):
        (proc / str(leader) / "autogroup").write_text("/autogroup-%d nice 0\n" % leader)
    req = request(proc, None, "nice", sge=20.0, slurm=80.0)
    resp = node_agent.run(req, setpriority=NiceRecorder(proc), self_pid=SELF)
    assert "autogroup nice of sessions led by job processes" in resp["mechanism_note"]
    assert (resp["groups"]["sge"]["autogroups"], resp["groups"]["slurm"]["autogroups"]) == (1, 0)
    assert (proc / "202" / "autogroup").read_text() == "6"
    assert (proc / "500" / "autogroup").read_text() == "/autogroup-500 nice 0\n"   # not a job's session
    resp = node_agent.run(req, setpriority=NiceRecorder(proc), self_pid=SELF)
    assert resp["groups"]["sge"]["autogroups"] == 0 and resp["errors"] == []


def test_no_cpu_controller_with_mechanism_cgroup_reports_an_error_and_touches_nothing(proc, tmp_path):
    cg = make_v2(tmp_path, controllers="memory pids")
    rec = NiceRecorder(proc)
    resp = node_agent.run(request(proc, cg, "cgroup"), setpriority=rec, self_pid=SELF)
    assert resp["mechanism"] == "none" and rec.calls == [] and not (cg / "metasched").exists()
    assert any("no cpu controller" in e for e in resp["errors"])
    assert resp["groups"]["sge"]["pids"] == 3 and resp["groups"]["sge"]["weight"] is None


def test_mechanism_none_only_observes(proc, tmp_path):
    cg = make_v2(tmp_path)
    resp = node_agent.run(request(proc, cg, "none"), setpriority=NiceRecorder(proc), self_pid=SELF)
    assert resp["mechanism"] == "none" and resp["mechanism_note"] == "" and not (cg / "metasched").exists()
    assert (resp["groups"]["slurm"]["pids"], resp["groups"]["slurm"]["trees"]) == (2, 1)


# -- requests and the command line ------------------------------------------------------------
@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(version=2), "version 1"),
    (lambda r: r.update(parent="../etc"), "parent"),
    (lambda r: r.update(mechanism="magic"), "mechanism"),
    (lambda r: r["groups"][0].update(name="a/b"), "groups[0].name"),
    (lambda r: r["groups"][1].update(name="sge"), "groups[1].name"),
    (lambda r: r["groups"][1].update(weight_percent="30"), "groups[1].weight_percent"),
    (lambda r: r["groups"][0]["match"].update(pgids=[1]), "pgids"),
    (lambda r: r["groups"][0]["match"].update(roots_by_comm="sge_shepherd"), "groups[0].match.roots_by_comm"),
    (lambda r: r.update(groups={"sge": 1}), "groups: expected a list"),
])
def test_bad_requests_are_refused_before_anything_happens(proc, tmp_path, mutate, message):
    cg = make_v2(tmp_path)
    req = request(proc, cg)
    mutate(req)
    with pytest.raises(node_agent.RequestError, match=message.replace("[", r"\[")):
        node_agent.run(req, self_pid=SELF)
    assert not (cg / "metasched").exists()


def run_cli(args, stdin="", env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "SUDO_UID"}
    env.update(env_extra or {})
    out = subprocess.run(args, input=stdin.encode(), stdout=subprocess.PIPE, env=env, timeout=30)
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 1
    return out.returncode, json.loads(lines[0])


def test_cli_accepts_the_request_as_argument_on_stdin_and_as_python_c(proc, tmp_path):
    cg = make_v2(tmp_path)
    req = json.dumps(request(proc, cg))
    rc, resp = run_cli([sys.executable, str(AGENT), req])
    assert rc == 0 and resp["groups"]["sge"]["moved"] == 3
    rc, resp = run_cli([sys.executable, str(AGENT)], stdin=req)
    assert rc == 0 and resp["groups"]["sge"]["moved"] == 0
    rc, resp = run_cli([sys.executable, "-c", AGENT.read_text(), req, "--dry-run"])
    assert rc == 0 and resp["dry_run"] is True and resp["groups"]["slurm"]["pids"] == 2


def test_cli_answers_json_even_for_garbage_and_refuses_root_overrides_under_sudo(proc, tmp_path):
    rc, resp = run_cli([sys.executable, str(AGENT), "{not json"])
    assert rc == 1 and resp["ok"] is False and "not JSON" in resp["errors"][0]
    req = json.dumps(request(proc, make_v2(tmp_path)))
    rc, resp = run_cli([sys.executable, str(AGENT), req], env_extra={"SUDO_UID": "1001"})
    assert rc == 1 and "override refused" in resp["errors"][0]
