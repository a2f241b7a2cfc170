"""Per-job isolation against the real Slurm: one user's job that Slurm reports in a form we did not expect
(an array job, from a script holding ``#SBATCH --array``), adopted after the whole service was killed in
the middle of its submit, must neither stop the cycle for everyone nor stay unresolved."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile

import pytest

from tests.integration.real import (FINAL, real_config, remove, schedulers, script, start_real_server, submit,
                                    user_dirs, wait_job, wait_until)

pytestmark = pytest.mark.lab

SLOW_SBATCH = """#!/bin/sh
# sbatch, then a pause: the submit round trip is still running when the test kills the service
/usr/bin/sbatch "$@"; rc=$?
sleep 6
exit $rc
"""


@pytest.fixture
def slow_slurm_bin():
    d = pathlib.Path(tempfile.mkdtemp(prefix="metasched-slurm-bin-"))
    d.chmod(0o755)
    (d / "sbatch").write_text(SLOW_SBATCH)
    for name in ("squeue", "scontrol", "scancel"):
        (d / name).symlink_to(f"/usr/bin/{name}")
    (d / "sbatch").chmod(0o755)
    yield str(d)
    shutil.rmtree(d, ignore_errors=True)


def test_an_array_job_adopted_after_a_crash_stops_nothing_and_ends(lab, users, slow_slurm_bin):
    sched = schedulers(lab)
    sched[1]["options"]["bin_dir"] = slow_slurm_bin
    srv = start_real_server(lab, users, real_config(lab, sched=sched), workers=2)
    base, dirs = user_dirs(users, "metasched-array-")
    try:
        array = script(dirs["alice"] / "array.sh", "#SBATCH --array=1-2\necho task $SLURM_ARRAY_TASK_ID\n",
                       users["alice"])
        plain = script(dirs["alice"] / "plain.sh", "echo plain\n", users["alice"])
        job = submit(srv, "alice", {"queue": "Slurm", "path": array})
        wait_until("the array job in Slurm while its submit still runs",
                   lambda: job["native_name"] in subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%j"],
                                                                capture_output=True, text=True).stdout)
        assert srv.root("GET", f"/jobs/{job['id']}").json()["status"] == "DISPATCHING"
        srv.kill()                                       # the whole service dies in the middle of the submit
        srv = srv.restart()
        done = wait_job(srv, "alice", job["id"], FINAL, timeout=60)
        events = srv.as_user("alice", "GET", f"/jobs/{job['id']}/events").json()["items"]
        assert done["status"] == "COMPLETED" and done["scheduler_job_id"].isdigit(), (done, events)
        assert any(e["reason"].startswith("adopted Slurm job") for e in events), events
        # and everyone else's work goes on: jobs submitted afterwards, to Slurm and Grid Engine, run
        later = [submit(srv, "bob" if q == "SGE" else "alice", {"queue": q, "path": plain if q == "Slurm" else
                        script(dirs["bob"] / "p.sh", "echo p\n", users["bob"])}) for q in ("Slurm", "SGE")]
        for j, user in zip(later, ("alice", "bob")):
            assert wait_job(srv, user, j["id"], FINAL, timeout=60)["status"] == "COMPLETED"
        cycle = srv.root("GET", "/status").json()["poller"]["last_cycle"]
        assert not [k for k in cycle["errors"] if "job" in k], cycle["errors"]
    finally:
        srv.stop()
        remove(base)
        remove(pathlib.Path(srv.workdir))
