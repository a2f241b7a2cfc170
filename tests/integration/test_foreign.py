"""Jobs submitted directly to Grid Engine and Slurm (plain qsub / sbatch by a user on the frontend, not
through metasched) against the live lab.

What a user and an admin notice: the job appears in the API within a cycle or two with the right owner
and state, only to its owner (and admins); it disappears once it ended; metasched never touches it (it
runs to completion, its output is intact, its scheduler records a clean exit); under the exclusive
policy it holds back our jobs of the other scheduler until it ends; and the node agent places its
process tree in its scheduler's control group like ours.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time

import pytest

from tests.integration.cpu_split import AGENT as HELPER
from tests.integration.cpu_split import installed_agent
from tests.integration.real import (
    FINAL,
    real_config,
    remove,
    script,
    start_real_server,
    submit,
    user_dirs,
    wait_job,
    wait_until,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def srv(lab, users):
    cfg = real_config(lab)
    # enforcement as root through the installed helper (installed for the test that needs it; until then
    # the node agent call fails and the nodes show that error, which the other tests do not look at)
    cfg["enforcement"] = {"method": "cgroup", "helper": HELPER}
    s = start_real_server(lab, users, cfg)
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture
def dirs(users):
    base, d = user_dirs(users, prefix="metasched-foreign-")
    yield d
    remove(base)


def queue_ids(srv) -> dict[str, int]:
    return {q["name"]: q["id"] for q in srv.root("GET", "/queues").json()["items"]}


def direct_submit(lab, user: str, queue: str, path: str, directory: pathlib.Path, name: str) -> str:
    """What a user types on the frontend, run as that user: qsub / sbatch; returns the native id."""
    if queue == "SGE":
        argv = ["env", *[f"{k}={v}" for k, v in lab.sge_env.items()], f"{lab.sge_bin}/qsub", "-terse", "-N", name,
                "-wd", str(directory), "-o", str(directory / f"{name}.out"), "-j", "y", path]
    else:
        argv = ["sbatch", "--parsable", "-J", name, "--chdir", str(directory), "-o", str(directory / f"{name}.out"),
                path]
    r = subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30,
                       cwd=str(directory))
    assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r.stdout.strip().split(";")[0]


def listed(srv, user: str, qid: int, native_id: str) -> dict | None:
    path = f"/foreign-jobs?queue={qid}"
    items = (srv.root("GET", path) if user == "root" else srv.as_user(user, "GET", path)).json()["items"]
    return next((i for i in items if i["native_id"] == native_id), None)


def ended_cleanly(lab, queue: str, native_id: str) -> bool:
    """The scheduler's own record says the job ran to the end with exit status 0 (nobody killed it)."""
    if queue == "SGE":
        r = subprocess.run([f"{lab.sge_bin}/qacct", "-j", native_id], env=dict(os.environ, **lab.sge_env),
                           capture_output=True, text=True, timeout=30)
        fields = dict(line.split(None, 1) for line in r.stdout.splitlines() if len(line.split(None, 1)) == 2)
        return r.returncode == 0 and fields.get("failed", "").strip() == "0" and \
            fields.get("exit_status", "").strip() == "0"
    text = lab.jobcomp_path.read_text() if lab.jobcomp_path.exists() else ""
    line = next((l for l in text.splitlines() if re.search(rf"\bJobId={native_id}\b", l)), "")
    return "JobState=COMPLETED" in line and "ExitCode=0:0" in line


@pytest.mark.parametrize("queue", ["SGE", "Slurm"])
def test_a_directly_submitted_job_is_seen_counted_and_never_touched(srv, lab, users, dirs, queue):
    qid = queue_ids(srv)[queue]
    d = dirs["alice"]
    path = script(d / "direct.sh", "echo begin $(id -un)\nsleep 5\necho end\n", users["alice"])
    native = direct_submit(lab, "alice", queue, path, d, f"direct_{queue}")
    t0 = time.monotonic()
    seen = wait_until("alice's direct job in /foreign-jobs", lambda: listed(srv, "alice", qid, native), timeout=10)
    appeared = time.monotonic() - t0
    assert (seen["owner"], seen["queue"], seen["name"]) == ("alice", qid, f"direct_{queue}"), seen
    assert seen["state"] in ("PENDING", "RUNNING"), seen
    running = wait_until("it RUNNING", lambda: (lambda j: j if j and j["state"] == "RUNNING" else None)(
        listed(srv, "alice", qid, native)), timeout=15)
    assert running["start_time"], running
    # counted apart from ours, visible to its owner and admins only
    q = srv.as_user("bob", "GET", f"/queues/{qid}").json()
    assert q["foreign_jobs"]["RUNNING"] >= 1 and q["jobs"]["RUNNING"] == 0, q
    assert listed(srv, "bob", qid, native) is None
    assert listed(srv, "root", qid, native) is not None
    r = srv.as_user("bob", "GET", "/foreign-jobs?owner=alice")
    assert r.status == 403, r
    # it ends on its own: gone from the API, output intact, a clean exit in the scheduler's own records
    wait_until("it left /foreign-jobs", lambda: listed(srv, "root", qid, native) is None, timeout=30)
    assert (d / f"direct_{queue}.out").read_text() == "begin alice\nend\n"
    wait_until(f"{queue} accounting shows a clean exit", lambda: ended_cleanly(lab, queue, native), timeout=20)
    # metasched never adopted it as one of its own jobs
    ours = srv.root("GET", f"/jobs?queue={qid}").json()["items"]
    assert [j for j in ours if j["scheduler_job_id"] == native] == []
    print(f"{queue}: direct job {native} listed {appeared:.2f} s after qsub/sbatch")


def test_exclusive_holds_our_grid_engine_jobs_while_a_direct_slurm_job_runs(srv, lab, users, dirs):
    qids = queue_ids(srv)
    d = dirs["alice"]
    assert srv.root("PUT", "/cluster/mode", {"policy": "exclusive"}).status == 200
    try:
        slurm_end = d / "slurm.end"
        ours_start = d / "ours.start"
        direct = script(d / "direct8.sh", f"sleep 8\ndate +%s.%N > '{slurm_end}'\n", users["alice"])
        native = direct_submit(lab, "alice", "Slurm", direct, d, "direct_excl")
        wait_until("the direct Slurm job in /foreign-jobs",
                   lambda: listed(srv, "alice", qids["Slurm"], native), timeout=10)
        ours = script(d / "ours.sh", f"date +%s.%N > '{ours_start}'\n", users["alice"])
        job = submit(srv, "alice", {"queue": "SGE", "path": ours})
        # held back with a reason while the direct Slurm job is in flight
        waiting = wait_until("our job waiting for Slurm to drain", lambda: (
            lambda j: j if j["reason"] and "exclusive" in j["reason"] else None)(
            srv.as_user("alice", "GET", f"/jobs/{job['id']}").json()), timeout=10)
        assert waiting["status"] == "TO_BE_QUEUED" and "Slurm" in waiting["reason"], waiting
        while listed(srv, "alice", qids["Slurm"], native) is not None:
            now = srv.as_user("alice", "GET", f"/jobs/{job['id']}").json()
            assert now["status"] == "TO_BE_QUEUED", ("dispatched while the direct Slurm job ran", now)
            time.sleep(0.3)
        done = wait_job(srv, "alice", job["id"], FINAL, timeout=40)
        assert done["status"] == "COMPLETED", done
        assert float(ours_start.read_text()) >= float(slurm_end.read_text()), "the two ran at the same time"
        events = srv.as_user("alice", "GET", f"/jobs/{job['id']}/events").json()["items"]
        # its state changes (the notes of why it waited, recorded as events of the same state, left out)
        changes = [e["new_status"] for e in events if e["old_status"] != e["new_status"]]
        assert changes[:2] == ["TO_BE_QUEUED", "DISPATCHING"], events
        assert any("exclusive" in (e["reason"] or "") for e in events if e["new_status"] == "TO_BE_QUEUED"), events
    finally:
        assert srv.root("PUT", "/cluster/mode", {"policy": "shared"}).status == 200


def test_a_direct_jobs_processes_are_placed_in_their_schedulers_cgroup(srv, lab, users, dirs):
    with installed_agent():     # this checkout's agent where the sudoers rule allows it, as deploy/ says
        _direct_jobs_are_placed(srv, lab, users, dirs)


def _direct_jobs_are_placed(srv, lab, users, dirs):
    qids = queue_ids(srv)
    d = dirs["bob"]
    pids = {}
    for queue in ("SGE", "Slurm"):
        pidfile = d / f"pid-{queue}"
        path = script(d / f"cg-{queue}.sh", f"echo $$ > '{pidfile}'\nsleep 6\n", users["bob"])
        direct_submit(lab, "bob", queue, path, d, f"cg_{queue}")
        pids[queue] = pidfile
    for queue, pidfile in pids.items():
        pid = int(wait_until(f"the {queue} job wrote its pid", lambda: pidfile.exists() and pidfile.read_text().strip(),
                             timeout=15))
        want = f"/metasched/q{qids[queue]}-{queue.lower()}-{queue}"
        wait_until(f"{queue} job's shell (pid {pid}) in cpu cgroup {want}",
                   lambda: cpu_cgroup(pid) == want, timeout=10)


def cpu_cgroup(pid: int) -> str | None:
    """The process's cgroup path in the cpu controller (v1), or its unified path (v2)."""
    try:
        lines = pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return next((l.split(":", 2)[2] for l in lines if l.startswith("0::")), None)
