"""What a job asks for, against the real Grid Engine and Slurm of the lab, through the real server and the real CLI
run as real users.

A job asking for 2 cores, 512 MB and a minute of walltime runs with them, as the job itself sees them (Grid Engine:
NSLOTS, the address-space limit of h_vmem per slot, `qstat -j`; Slurm: SLURM_CPUS_PER_TASK, SLURM_MEM_PER_NODE,
`scontrol show job`); the caller's exported variable arrives; native flags reach qsub and sbatch as given; a flag
metasched owns is a 400; the outputs land where asked and `metasched output` returns them; a job over its walltime
ends ERROR with the scheduler's reason; a pwd the owner cannot write is refused at dispatch saying so.
"""
from __future__ import annotations

import os
import pathlib
import pwd
import subprocess
import sys

import pytest

from tests.integration.real import (FINAL, real_config, remove, schedulers, script, start_real_server, submit,
                                    user_dirs, wait_job)
from tests.server.conftest import REPO

pytestmark = pytest.mark.lab
QUEUES = ("SGE", "Slurm")
VALUE = "a,b 'c' \"d\" $(touch CANARY) x=y"


@pytest.fixture(scope="module")
def srv(lab, users):
    sched = schedulers(lab)
    sched[0]["options"].update(pe=lab.sge_pe, memory_complex="h_vmem")
    s = start_real_server(lab, users, real_config(lab, sched=sched))
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture
def dirs(users):
    base, d = user_dirs(users, prefix="metasched-spec-")
    yield d
    remove(base)


def cli(srv, user, *args, cwd):
    pw = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user, "LOGNAME": user,
           "LANG": "C.UTF-8", "PYTHONPATH": REPO, "METASCHED_SOCKET": srv.socket_path, "MY_SETTING": VALUE}
    argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", sys.executable, "-m",
            "metasched.cli", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def mkdir_owned(d: pathlib.Path, owner) -> pathlib.Path:
    d.mkdir()
    os.chown(d, owner.pw_uid, owner.pw_gid)
    return d


# What the job reports from inside: the scheduler's own view of what it got.
PROBE = r"""
echo "NSLOTS=${NSLOTS-} CPUS_PER_TASK=${SLURM_CPUS_PER_TASK-} MEM_PER_NODE=${SLURM_MEM_PER_NODE-}"
echo "VMEM_KB=$(ulimit -v)"
printf 'SETTING=[%s]\n' "$MY_SETTING"
echo "SUDO=[${SUDO_USER-}] SOCKET=[${METASCHED_SOCKET-}]"
if [ -n "${JOB_ID-}" ]; then qstat -j "$JOB_ID" | grep -E '^(hard resource_list|parallel environment):'; fi
if [ -n "${SLURM_JOB_ID-}" ]; then scontrol show job "$SLURM_JOB_ID" | tr ' ' '\n' | grep -E '^(NumCPUs|TimeLimit|MinMemoryNode|Comment|Nice)='; fi
echo to-stderr >&2
"""


@pytest.mark.parametrize("queue", QUEUES)
def test_a_job_runs_with_2_cores_512mb_and_a_minute_as_it_sees_them_and_its_output_is_read_back(
        srv, users, dirs, queue, lab):
    alice = users["alice"]
    home = dirs["alice"]
    mkdir_owned(home / "out", alice)
    script(home / "probe.sh", PROBE, alice)
    native = {"SGE": ["--native=-A metasched.verbatim", "--native", "-l arch=lx-amd64"],
              "Slurm": ["--native=--comment='from metasched, verbatim'", "--native=--nice=5"]}[queue]
    r = cli(srv, "alice", "submit", "--parsable", "-q", queue, "--cores", "2", "--mem", "512M", "--time", "0:01:00",
            *native, "--output", "out/%x-%j.out", "--error", "out/%x-%j.err", "probe.sh", cwd=home)
    assert r.returncode == 0, r.stderr
    jid = int(r.stdout)
    done = wait_job(srv, "alice", jid, FINAL, timeout=120)
    assert done["status"] == "COMPLETED", (done["reason"], done)
    detail = srv.as_user("alice", "GET", f"/jobs/{jid}").json()
    out, err = home / "out" / f"probe.sh-{jid}.out", home / "out" / f"probe.sh-{jid}.err"
    assert detail["outputs"] == {"stdout": str(out), "stderr": str(err), "join": False}
    text = out.read_text()
    lines = text.splitlines()
    assert f"SETTING=[{VALUE}]" in lines and "SUDO=[] SOCKET=[]" in lines, text
    if queue == "SGE":
        assert "NSLOTS=2 CPUS_PER_TASK= MEM_PER_NODE=" in lines, text
        assert "VMEM_KB=524288" in lines, text                # 256M per slot, 2 slots on the host
        assert any(x.startswith("hard resource_list:") and "h_rt=60" in x and "h_vmem=256M" in x
                   and "arch=lx-amd64" in x for x in lines), text
        assert any(x.startswith("parallel environment:") and "smp" in x and "2" in x for x in lines), text
        acct = lab.sge.cmd("qacct", "-j", done["scheduler_job_id"]).stdout
        assert any(x.split() == ["account", "metasched.verbatim"] for x in acct.splitlines()), acct
    else:
        assert "NSLOTS= CPUS_PER_TASK=2 MEM_PER_NODE=512" in lines, text
        for want in ("NumCPUs=2", "TimeLimit=00:01:00", "MinMemoryNode=512M", "Nice=5"):
            assert want in lines, (want, text)
        assert "Comment=from" in lines, text                  # scontrol prints it; the words are split above
    assert err.read_text() == "to-stderr\n"
    assert pwd.getpwuid(out.stat().st_uid).pw_name == "alice"
    assert not list(home.rglob("CANARY"))
    r = cli(srv, "alice", "output", str(jid), cwd=home)
    assert (r.returncode, r.stdout) == (0, text), r.stderr
    assert cli(srv, "alice", "output", str(jid), "--stderr", cwd=home).stdout == "to-stderr\n"
    assert cli(srv, "alice", "output", str(jid), "--tail", "1", cwd=home).stdout == lines[-1] + "\n"


@pytest.mark.parametrize("queue, walltime", [("SGE", 5), ("Slurm", 60)])
def test_a_job_over_its_walltime_ends_in_error_with_the_schedulers_reason(srv, users, dirs, queue, walltime):
    """Slurm counts whole minutes and checks limits about twice a minute: this one takes a minute or two."""
    alice = users["alice"]
    path = script(dirs["alice"] / "long.sh", "echo started\nsleep 600\necho never\n", alice)
    job = submit(srv, "alice", {"queue": queue, "path": path, "resources": {"walltime": walltime}})
    done = wait_job(srv, "alice", job["id"], FINAL, timeout=300)
    assert done["status"] == "ERROR", done
    reason = {"SGE": "failed 37 : qmaster enforced h_rt", "Slurm": "timeout: Slurm stopped it at its time limit"}
    assert done["reason"].startswith(reason[queue]), done
    out = srv.as_user("alice", "GET", f"/jobs/{job['id']}/output")
    assert out.status == 200 and out.body == b"started\n", out


@pytest.mark.parametrize("queue, native, replaced_by", [("SGE", ["-N", "other"], "`name`"),
                                                        ("SGE", ["-v", "A=1"], "`env`"),
                                                        ("Slurm", ["--job-name=other"], "`name`"),
                                                        ("Slurm", ["-o", "/tmp/x"], "`stdout`")])
def test_a_flag_metasched_owns_is_a_400_and_nothing_is_queued(srv, users, dirs, queue, native, replaced_by):
    path = script(dirs["alice"] / "ok.sh", "true\n", users["alice"])
    before = len(srv.as_user("alice", "GET", "/jobs").json()["items"])
    r = srv.as_user("alice", "POST", "/jobs", {"queue": queue, "path": path, "native": native})
    assert r.status == 400 and r.json()["field"] == "native[0]" and replaced_by in r.json()["description"], r
    assert len(srv.as_user("alice", "GET", "/jobs").json()["items"]) == before


@pytest.mark.parametrize("queue", QUEUES)
def test_a_pwd_the_owner_cannot_write_is_refused_at_dispatch_saying_so(srv, users, dirs, queue):
    """Past the CLI's checks (an API client): the owner's shell on the master node checks before qsub/sbatch."""
    path = script(dirs["alice"] / "ok.sh", "true\n", users["alice"])
    ro = dirs["alice"].parent / f"root-{queue}"
    ro.mkdir()                                           # root's, 0755: alice can enter, not write
    job = submit(srv, "alice", {"queue": queue, "path": path, "pwd": str(ro)})
    done = wait_job(srv, "alice", job["id"], FINAL)
    assert (done["status"], done["reason"]) == (
        "ERROR", f"scheduler refused: metasched: cannot write pwd {ro} (the job's output goes there)"), done
    assert not done["scheduler_job_id"]


# -- arrays (issue 16) asking for things (issue 14): each task gets them, and writes the files %a names -------

TASK_PROBE = r"""
printf 'task=%s setting=[%s]\n' "$METASCHED_ARRAY_TASK_ID" "$MY_SETTING"
if [ -n "${JOB_ID-}" ]; then qstat -j "$JOB_ID" | grep -E '^hard resource_list:'; fi
if [ -n "${SLURM_JOB_ID-}" ]; then scontrol show job "$SLURM_JOB_ID" | tr ' ' '\n' | grep -E '^TimeLimit='; fi
echo "err $METASCHED_ARRAY_TASK_ID" >&2
"""


@pytest.mark.parametrize("queue", QUEUES)
def test_an_arrays_tasks_each_get_what_it_asks_for_and_write_the_files_its_patterns_name(srv, users, dirs, queue):
    alice = users["alice"]
    home = dirs["alice"]
    mkdir_owned(home / "out", alice)
    script(home / "task.sh", TASK_PROBE, alice)
    r = cli(srv, "alice", "submit", "--parsable", "-q", queue, "--array", "1-3", "--time", "0:02:00",
            "--output", "out/%x-%j.%a.out", "--error", "out/%a.err", "task.sh", cwd=home)
    assert r.returncode == 0, r.stderr
    jid = int(r.stdout)
    done = wait_job(srv, "alice", jid, FINAL, timeout=180)
    assert done["status"] == "COMPLETED", (done["reason"], done)
    detail = srv.as_user("alice", "GET", f"/jobs/{jid}").json()
    assert detail["outputs"]["stdout"] == str(home / "out" / f"task.sh-{jid}.%a.out")
    for t in (1, 2, 3):
        out = home / "out" / f"task.sh-{jid}.{t}.out"
        lines = out.read_text().splitlines()
        assert lines[0] == f"task={t} setting=[{VALUE}]", lines
        if queue == "SGE":
            assert any(x.startswith("hard resource_list:") and "h_rt=120" in x for x in lines), lines
        else:
            assert "TimeLimit=00:02:00" in lines, lines
        assert (home / "out" / f"{t}.err").read_text() == f"err {t}\n"
        assert pwd.getpwuid(out.stat().st_uid).pw_name == "alice"
        got = srv.as_user("alice", "GET", f"/jobs/{jid}/output?task={t}")
        assert got.status == 200 and got.body == out.read_bytes(), got
    r = cli(srv, "alice", "output", f"{jid}.2", "--stderr", cwd=home)
    assert (r.returncode, r.stdout) == (0, "err 2\n"), r.stderr
    assert not list(home.rglob("CANARY"))
