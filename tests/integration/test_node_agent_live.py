"""Live tests of the node agent on this machine's real kernel: root, real /proc, real cpu cgroups.

Two CPU-bound job trees (two busy loops each, under a shell) run below fake scheduler roots whose comm
we control (a symlink to /bin/sh), all pinned to ONE core so that they compete. The roots get names unique
to this run rather than sge_shepherd / slurmstepd: other labs' real daemons may run on this machine, and
the agent must not move or renice their jobs on behalf of a test. The agent is run the way the engine runs it (`python3 -c <program> <request json>`), and the
CPU time each tree gets over a few seconds is read from /proc by this test, independently of the agent.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metasched import node_agent

AGENT = Path(node_agent.__file__)
WINDOW = 4.0
PY36 = os.environ.get("METASCHED_PY36", "/root/.pyenv/versions/3.6.15/bin/python3")
SGE_ROOT_COMM = "mst-sge-%d" % (os.getpid() % 100000)       # stands in for sge_shepherd (<= 15 chars)
SLURM_ROOT_COMM = "mst-slurm-%d" % (os.getpid() % 100000)   # stands in for slurmstepd
pytestmark = pytest.mark.lab


def require_root():
    if os.geteuid() != 0:
        pytest.fail("the live node-agent tests need root (they create cgroups and renice other processes)")


def stat_fields(pid):
    """(ppid, utime+stime ticks, nice) of a pid, parsed here independently of the agent."""
    text = Path("/proc/%d/stat" % pid).read_text()
    f = text[text.rindex(")") + 2:].split()
    return int(f[1]), int(f[11]) + int(f[12]), int(f[16])


def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                children.setdefault(stat_fields(int(name))[0], []).append(int(name))
            except (OSError, ValueError):
                pass
    out, todo = set(), list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_ticks(root):
    total = 0
    for pid in descendants(root):
        try:
            total += stat_fields(pid)[1]
        except OSError:
            pass
    return total


def measure(a, b, seconds=WINDOW):
    """Share of the CPU tree `a` got against tree `b` over `seconds`."""
    a0, b0 = tree_ticks(a), tree_ticks(b)
    time.sleep(seconds)
    da, db = tree_ticks(a) - a0, tree_ticks(b) - b0
    assert da + db > 0.5 * seconds * os.sysconf("SC_CLK_TCK"), "the busy loops did not run"
    return da / float(da + db)


@pytest.fixture
def start_trees(tmp_path):
    """Start one job tree under a fake shepherd and one under a fake slurmstepd, pinned to CPU 0.

    With own_session the job's shell calls setsid, as Grid Engine's and Slurm's job shells do; then each
    job is its own autogroup. Otherwise both trees share the test's session (one autogroup).
    """
    require_root()
    roots = {}

    def start(own_session):
        burn = "%s -c 'while 1: pass'" % sys.executable
        script = "{1}/bin/sh -c \"{0} & {0} & wait\"; exit 0".format(burn, "setsid " if own_session else "")
        for comm in (SGE_ROOT_COMM, SLURM_ROOT_COMM):
            exe = tmp_path / comm
            exe.symlink_to("/bin/sh")
            roots[comm] = subprocess.Popen([str(exe), "-c", script], preexec_fn=lambda: os.sched_setaffinity(0, {0}))
        deadline = time.time() + 10
        while any(len(descendants(p.pid)) < 3 for p in roots.values()):
            assert time.time() < deadline, "job trees did not start"
            time.sleep(0.05)
        assert Path("/proc/%d/comm" % roots[SGE_ROOT_COMM].pid).read_text().strip() == SGE_ROOT_COMM
        return roots[SGE_ROOT_COMM].pid, roots[SLURM_ROOT_COMM].pid

    try:
        yield start
    finally:
        for p in roots.values():
            for pid in descendants(p.pid) | {p.pid}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait(timeout=10)


@pytest.fixture
def parent():
    """A cgroup parent name unique to this test; removed afterwards (pids moved back to the root)."""
    name = "metasched-test-%d" % os.getpid()
    yield name
    kind, cpu_root, acct_root = node_agent.detect(None)
    for hroot in {cpu_root, acct_root} - {None}:
        pdir = Path(hroot) / name
        if not pdir.is_dir():
            continue
        for gdir in [d for d in pdir.iterdir() if d.is_dir()]:
            for pid in node_agent.read_pids(str(gdir / "cgroup.procs")):
                try:
                    (Path(hroot) / "cgroup.procs").write_text("%d\n" % pid)
                except ProcessLookupError:
                    pass
            gdir.rmdir()
        pdir.rmdir()


def agent(req, python=sys.executable):
    """Run the agent exactly as the engine does over SSH: python3 -c <program> <request json>."""
    out = subprocess.run([python, "-c", AGENT.read_text(), json.dumps(req)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
    return json.loads(out.stdout)


def request(parent, sge, slurm, mechanism):
    return {"version": 1, "parent": parent, "mechanism": mechanism, "groups": [
        {"name": "sge", "weight_percent": sge, "match": {"roots_by_comm": [SGE_ROOT_COMM], "exclude_comm": ["sge_execd"]}},
        {"name": "slurm", "weight_percent": slurm, "match": {"roots_by_comm": [SLURM_ROOT_COMM], "exclude_comm": ["slurmd"]}},
    ]}


def cgroup_of(pid, controller="cpu"):
    for line in Path("/proc/%d/cgroup" % pid).read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(",") or (ctrls == "" and controller == "unified"):
            return path
    return None


def test_cgroups_enforce_80_20_then_50_50_on_one_core(start_trees, parent):
    sge_root, slurm_root = start_trees(own_session=True)
    resp = agent(request(parent, 80.0, 20.0, "cgroup"))
    print("first call:", json.dumps(resp))
    assert resp["ok"] and resp["errors"] == [] and resp["mechanism"].startswith("cgroup_")
    assert {g: (v["moved"], v["trees"], v["pids"]) for g, v in resp["groups"].items()} == \
        {"sge": (3, 1, 3), "slurm": (3, 1, 3)}
    for pid in descendants(sge_root):
        assert cgroup_of(pid) == "/%s/sge" % parent
    assert cgroup_of(sge_root) == "/" and cgroup_of(slurm_root) == "/"     # the roots stay where they were
    share = measure(sge_root, slurm_root)
    print("cgroup 80/20 -> sge share %.3f" % share)
    assert 0.70 <= share <= 0.90

    resp = agent(request(parent, 50.0, 50.0, "cgroup"))
    assert [v["moved"] for v in resp["groups"].values()] == [0, 0]        # idempotent: nothing new
    before = {g: v["usage_usec"] for g, v in resp["groups"].items()}
    t0 = {"sge": tree_ticks(sge_root), "slurm": tree_ticks(slurm_root)}
    share = measure(sge_root, slurm_root)
    print("cgroup 50/50 -> sge share %.3f" % share)
    assert 0.40 <= share <= 0.60

    resp = agent(request(parent, 50.0, 50.0, "cgroup"))
    print("elapsed_ms of a call: %.2f" % resp["elapsed_ms"])
    hz = os.sysconf("SC_CLK_TCK")
    for g, root in (("sge", sge_root), ("slurm", slurm_root)):
        seen = (tree_ticks(root) - t0[g]) * 1e6 / hz
        reported = resp["groups"][g]["usage_usec"] - before[g]
        assert resp["groups"][g]["usage_source"] == "cgroup"
        assert abs(reported - seen) <= 0.15 * seen + 50000, (g, reported, seen)


@pytest.mark.parametrize("own_session", [False, True], ids=["one-autogroup", "own-sessions"])
def test_nice_fallback_favours_the_high_share_tree_inside_one_cgroup(start_trees, own_session):
    sge_root, slurm_root = start_trees(own_session)
    assert cgroup_of(sge_root) == cgroup_of(slurm_root) == "/"
    resp = agent(request("unused", 80.0, 20.0, "nice"))
    print("nice call:", json.dumps(resp))
    assert resp["mechanism"] == "nice" and "task group" in resp["mechanism_note"] and resp["errors"] == []
    assert (resp["groups"]["sge"]["weight"], resp["groups"]["slurm"]["weight"]) == (0, 6)
    autogroup_on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    assert resp["groups"]["slurm"]["autogroups"] == (1 if own_session and autogroup_on else 0)
    assert {stat_fields(pid)[2] for pid in descendants(slurm_root)} == {6}
    assert {stat_fields(pid)[2] for pid in descendants(sge_root)} == {0}
    share = measure(sge_root, slurm_root)
    print("nice 0 vs 6 (own sessions: %s) -> sge share %.3f" % (own_session, share))
    assert 0.65 <= share <= 0.92
    assert [v["moved"] for v in agent(request("unused", 80.0, 20.0, "nice"))["groups"].values()] == [0, 0]


def test_agent_runs_under_python_3_6_on_this_machine(parent):
    require_root()
    if not os.path.exists(PY36):
        pytest.fail("needs a Python 3.6 interpreter: `pyenv install 3.6.15` or set METASCHED_PY36")
    resp = agent(request(parent, 70.0, 30.0, "auto"), python=PY36)
    assert resp["ok"] and resp["errors"] == [] and resp["mechanism"].startswith("cgroup_")
    assert resp["groups"]["sge"]["weight"] in (1434, 7000) and resp["uptime"] > 0
