"""The engine's side of enforcement (metasched/enforcement.py): the request built from the real backends'
matchers, run by the real node agent against the fake /proc and cgroup v2 hierarchy of
tests/unit/test_node_agent.py, selects exactly each scheduler's job trees; the answer is parsed into
what GET /cluster/nodes/{id} shows; the command line is the installed helper under sudo or the inline
agent. The live effect is in tests/integration/test_enforcement.py."""
import json
import shlex
import subprocess
import sys

import pytest

from metasched import enforcement, node_agent
from metasched.backends import get_backend
from metasched.model import Queue
from tests.unit.test_node_agent import LOCAL_TREE, SGE_TREE, SLURM_TREE, YARN_TREE, make_v2, pids_in, proc  # noqa: F401

QUEUES = [Queue(id=1, name="SGE", type="sge", master_node_id=0, weight=60, position=0),
          Queue(id=2, name="Slurm", type="slurm", master_node_id=0, weight=20, position=0),
          Queue(id=3, name="Apache Hadoop", type="yarn", master_node_id=0, weight=10, position=0),
          Queue(id=4, name="local", type="local", master_node_id=0, weight=10, position=0)]


def real_request(shares=(60.0, 20.0, 10.0, 10.0), method="auto"):
    groups = [(q, s, get_backend(q.type, {}).process_matcher(), [600] if q.type == "local" else [])
              for q, s in zip(QUEUES, shares)]
    return enforcement.build_request(groups, method=method, parent="metasched")


def test_group_names_are_stable_safe_path_components():
    names = [enforcement.group_name(q) for q in QUEUES]
    assert names == ["q1-sge-SGE", "q2-slurm-Slurm", "q3-yarn-Apache_Hadoop", "q4-local-local"]
    assert all(node_agent.NAME_RE.match(n) for n in names)
    odd = Queue(id=9, name="../x y/" + "z" * 80, type="sge", master_node_id=0, weight=1, position=0)
    assert node_agent.NAME_RE.match(enforcement.group_name(odd))


def test_requests_from_the_real_backends_select_each_schedulers_trees(proc, tmp_path):  # noqa: F811
    cg = make_v2(tmp_path)
    req = dict(real_request(), proc_root=str(proc), cgroup_root=str(cg))
    out = node_agent.run(req, self_pid=802, setpriority=lambda *a: pytest.fail("reniced"))
    assert out["ok"] and out["mechanism"] == "cgroup_v2", out
    parent = cg / "metasched"
    assert pids_in(parent / "q1-sge-SGE" / "cgroup.procs") == SGE_TREE        # shepherd's descendants only
    assert pids_in(parent / "q2-slurm-Slurm" / "cgroup.procs") == SLURM_TREE  # not slurmstepd, not slurmd
    assert pids_in(parent / "q3-yarn-Apache_Hadoop" / "cgroup.procs") == YARN_TREE  # never the NodeManager
    assert pids_in(parent / "q4-local-local" / "cgroup.procs") == LOCAL_TREE
    weights = {g: (parent / g / "cpu.weight").read_text() for g in out["groups"]}
    assert weights == {"q1-sge-SGE": "6000", "q2-slurm-Slurm": "2000", "q3-yarn-Apache_Hadoop": "1000",
                       "q4-local-local": "1000"}


def test_method_none_sends_no_groups_and_the_agent_touches_nothing(proc, tmp_path):  # noqa: F811
    cg = make_v2(tmp_path)
    req = dict(real_request(method="none"), proc_root=str(proc), cgroup_root=str(cg))
    assert req["groups"] == []
    out = node_agent.run(req, self_pid=802)
    assert out["ok"] and out["mechanism"] == "none" and not (cg / "metasched").exists()


def test_command_is_the_helper_under_sudo_or_the_inline_agent():
    req = real_request()
    argv = shlex.split(enforcement.command(req, "/usr/local/libexec/metasched-node-agent"))
    assert argv[:3] == ["sudo", "-n", "/usr/local/libexec/metasched-node-agent"] and len(argv) == 4
    assert json.loads(argv[3]) == req
    inline = shlex.split(enforcement.command(req, None))
    assert inline[:4] == ["python3", "-I", "-S", "-c"] and json.loads(inline[5]) == req
    # the inline form really runs (dry run: it must not touch this machine)
    res = subprocess.run([sys.executable] + inline[1:5] + ["--dry-run", inline[5]], capture_output=True, text=True)
    answer = enforcement.parse_answer(res.returncode, res.stdout, res.stderr)
    assert answer.ok and set(answer.groups) == {enforcement.group_name(q) for q in QUEUES}, res


def test_answers_are_parsed_with_what_was_applied_per_group():
    line = json.dumps({"ok": True, "load": [0.5, 0.4, 0.3], "ncpus": 2, "mechanism": "cgroup_v1", "time": 10.0,
                       "groups": {"q1-sge-SGE": {"weight": 1434, "pids": 2, "usage_usec": 5000000,
                                                 "usage_source": "cgroup"}},
                       "errors": [], "mechanism_note": ""})
    a = enforcement.parse_answer(0, "motd noise\n" + line + "\n", "")
    assert a.ok and a.mechanism == "cgroup_v1" and a.load == (0.5, 0.4, 0.3)
    assert a.usage_usec == {"q1-sge-SGE": 5000000} and a.groups["q1-sge-SGE"]["weight"] == 1434
    bad = enforcement.parse_answer(1, "", "sudo: a password is required\n")
    assert not bad.ok and "sudo: a password is required" in bad.error
    refused = enforcement.parse_answer(1, json.dumps({"ok": False, "errors": ["cgroup_root: override refused"]}), "")
    assert not refused.ok and "override refused" in refused.error


def test_measured_shares_cover_the_last_minute_and_survive_a_counter_reset():
    w = enforcement.UsageWindow(window=60)
    for t in range(0, 100, 10):       # 7:3 for 100 s
        w.add(0, float(t), {"a": 7 * t, "b": 3 * t})
    seconds, deltas = w.deltas(0)
    assert 60 <= seconds <= 70 and deltas == {"a": 7 * seconds, "b": 3 * seconds}
    assert w.measured_shares(0) == pytest.approx({"a": 70.0, "b": 30.0})
    assert w.last_step(0) == {"a": 70, "b": 30}
    w.add(0, 100.0, {"a": 5, "b": 300})  # a's group was recreated (node rebooted): no negative usage
    assert w.last_step(0) == {"a": 0, "b": 30}
    w.add(0, 110.0, {"a": 75, "b": 330})  # ... and only that one step is lost, not the whole minute
    assert w.measured_shares(0) == pytest.approx({"a": 100.0 * 7 * 50 / (7 * 50 + 3 * 60), "b": 100.0 * 3 * 60 / (7 * 50 + 3 * 60)})
    assert w.measured_shares(1) == {}
