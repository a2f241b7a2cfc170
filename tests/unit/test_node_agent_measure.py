"""The node agent's measurements (issue 15), against the fake /proc of test_node_agent: each job's CPU time,
resident memory and pids (its tree told apart the way each scheduler makes it possible), and the node's
counters; what the engine's parser keeps of an answer, entry by entry."""
from __future__ import annotations

import os

import pytest

from metasched import enforcement, node_agent
from metasched.backends import TYPES, get_backend
from metasched.model import Queue
from tests.unit.test_node_agent import SELF, groups, proc, stat_line  # noqa: F401 (proc is a fixture)

HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
APP = "application_1795824000000_0001"


def with_rss(line: str, pages: int) -> str:
    fields = line.rstrip("\n").split(" ")
    fields[-1] = str(pages)
    return " ".join(fields) + "\n"


@pytest.fixture
def measured(proc, tmp_path):
    """Resident memory on the job processes; how each scheduler's tree names its job; the node's counters."""
    for pid, pages in {202: 10, 203: 2560, 204: 30, 302: 5, 303: 7, 600: 1, 601: 2, 602: 3, 402: 100, 412: 200}.items():
        st = proc / str(pid) / "stat"
        st.write_text(with_rss(st.read_text(), pages))
    # Grid Engine 8.1.9: "sge_shepherd -bg" in execd's spool directory active_jobs/<job>.<task>
    (proc / "201" / "cmdline").write_text("/usr/lib/gridengine/sge_shepherd\0-bg\0")
    (proc / "201" / "cwd").symlink_to("/var/spool/gridengine/execd/vm/active_jobs/7.1")
    (proc / "202" / "cwd").symlink_to(tmp_path)
    (proc / "401" / "cmdline").write_text(
        f"bash\0/tmp/nm-local-dir/usercache/alice/appcache/{APP}/container_1795824000000_0001_01_000002/"
        f"default_container_executor.sh\0")
    (proc / "411" / "cmdline").write_text(
        "bash\0/tmp/nm/container_e17_1795824000000_0002_01_000001/launch_container.sh\0")
    (proc / "stat").write_text("cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal:       8000000 kB\nMemFree:        1000 kB\nMemAvailable:   2000000 kB\n")
    return proc


def measuring(proc, kinds=("sge_shepherd", "slurmstepd", "yarn", "pgid"), paths=("/",)):
    gs = groups(yarn=10.0, local=5.0)
    for g, kind in zip(gs, kinds):
        g["match"]["job_ids"] = kind
    return {"version": 1, "parent": "metasched", "mechanism": "none", "groups": gs, "proc_root": str(proc),
            "measure": True, "disk_paths": list(paths)}


def test_each_jobs_cpu_memory_and_pids(measured):
    resp = node_agent.run(measuring(measured), self_pid=SELF)
    assert resp["ok"], resp
    g = resp["groups"]
    # per job: [CPU microseconds, resident bytes, pids]
    assert g["sge"]["jobs"] == {"7": [3 * 150 * 1000000 // HZ, (10 + 2560 + 30) * PAGE, 3]}
    assert g["slurm"]["jobs"] == {"42": [2 * 150 * 1000000 // HZ, 12 * PAGE, 2]}
    assert g["local"]["jobs"] == {"600": [3 * 150 * 1000000 // HZ, 6 * PAGE, 3]}
    assert g["yarn"]["jobs"] == {APP: [2 * 150 * 1000000 // HZ, 100 * PAGE, 2],
                                 "application_1795824000000_0002": [2 * 150 * 1000000 // HZ, 200 * PAGE, 2]}
    # the next cycle finds the same (the jobs' ids and directories are looked up once per process)
    assert node_agent.run(measuring(measured), self_pid=SELF)["groups"]["sge"]["jobs"] == g["sge"]["jobs"]


def test_a_local_job_found_by_its_wrappers_command_line_is_its_process_groups(measured):
    """The local backend's wrappers are also found by their command line (trees_by_args with process_group,
    as the integration's matcher describes them): a job the engine has no pgid for yet is still measured,
    as its process group's, once (not twice when the pgid is given too)."""
    from metasched.backends.local import ARGS_PREFIX
    (measured / "600" / "cmdline").write_text(ARGS_PREFIX.replace(" ", "\0") + "5-abcdef\0/h/.e\0/h/job.sh\0")
    req = measuring(measured)
    local = next(g for g in req["groups"] if g["name"] == "local")
    local["match"].update(enforcement.match_for(get_backend("local").process_matcher(), []))
    both = node_agent.run(req, self_pid=SELF)["groups"]["local"]["jobs"]
    del local["match"]["pgids"]
    by_args = node_agent.run(req, self_pid=SELF)["groups"]["local"]["jobs"]
    assert both == by_args == {"600": [3 * 150 * 1000000 // HZ, 6 * PAGE, 3]}


def test_a_grid_engine_shepherd_whose_spool_cannot_be_read_is_told_by_its_job_script(measured):
    (measured / "201" / "cwd").unlink()                    # the agent runs as the SSH user: no access to it
    assert "7" not in node_agent.run(measuring(measured), self_pid=SELF)["groups"]["sge"]["jobs"]
    (measured / "202" / "cmdline").write_text("-sh\0/var/spool/gridengine/execd/vm/job_scripts/7\0")
    assert list(node_agent.run(measuring(measured), self_pid=SELF)["groups"]["sge"]["jobs"]) == ["7"]


def test_the_nodes_counters(measured, tmp_path):
    node = node_agent.run(measuring(measured), self_pid=SELF)["node"]
    assert node["cpu_ticks"] == [100 + 5 + 50 + 800 + 45, 800 + 45]
    assert node["memory"] == {"total": 8000000 * 1024, "available": 2000000 * 1024}
    st = os.statvfs(tmp_path)
    mine = [d for d in node["disks"] if d["size"] == st.f_blocks * st.f_frsize]
    assert mine and all(d["mount"] for d in node["disks"])
    assert len({d["mount"] for d in node["disks"]}) == len(node["disks"])     # one entry per filesystem


def test_nothing_is_measured_unless_asked_and_enforcement_is_unchanged(measured):
    req = measuring(measured)
    del req["measure"]
    resp = node_agent.run(req, self_pid=SELF)
    assert "node" not in resp and all("jobs" not in g for g in resp["groups"].values())


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["groups"][0]["match"].update(job_ids="pbs"), "job_ids"),
    (lambda r: r.update(disk_paths=["relative"]), "disk_paths"),
    (lambda r: r.update(disk_paths="/"), "disk_paths"),
])
def test_bad_measuring_requests_are_refused(measured, mutate, message):
    req = measuring(measured)
    mutate(req)
    resp = node_agent.answer(__import__("json").dumps(req), dry_run=True)
    assert not resp["ok"] and message in resp["errors"][0]


# -- the engine's side ------------------------------------------------------------------------------

def test_the_request_asks_each_backend_for_its_job_ids():
    qs = [Queue(i, t, t, 1, 50, 0) for i, t in enumerate(TYPES, 1)]
    req = enforcement.build_request([(q, 25.0, get_backend(q.type).process_matcher(), []) for q in qs],
                                    method="none", parent="metasched", measure=True, disk_paths=("/scratch",))
    # Spark: none (its driver's tree is not the application, whose executors run on the workers)
    assert [g["match"].get("job_ids") for g in req["groups"]] == ["sge_shepherd", "slurmstepd", "yarn", "pgid", None]
    assert req["measure"] is True and req["disk_paths"] == ["/scratch"]
    assert enforcement.build_request([], method="none", parent="metasched")["groups"] == []


def test_a_bad_job_entry_in_an_answer_is_left_out_and_counted():
    import json
    answer = {"ok": True, "uptime": 12.5, "groups": {"g": {"usage_usec": 1, "jobs": {
        "7": [10, 20, 1], "8": [-1, 20, 1], "../9": [1, 1, 1], "10": "lots", "11": [1, 2], "x²": [1, 1, 1],
        "12": [1.5, 1, 1]}}}, "node": {"cpu_ticks": [1, 1]}}
    rep = enforcement.parse_answer(0, json.dumps(answer), "")
    assert rep.ok and rep.jobs == {"g": {"7": {"cpu_usec": 10, "rss_bytes": 20, "pids": 1}}} and rep.dropped == 6
    assert rep.uptime == 12.5 and rep.node == {"cpu_ticks": [1, 1]}
