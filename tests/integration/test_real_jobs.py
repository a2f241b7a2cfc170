"""Real users' jobs through the real server into real Grid Engine and Slurm (the lab), over SSH.

What a user notices: the job runs as them (its output files are theirs, `id -un` says so), success and
failure end COMPLETED / ERROR with the script's real exit code, cancelling a running job kills it and
ends CANCELLED "cancelled by <user>", and no shell metacharacter in any field ever runs as a command.
"""
from __future__ import annotations

import os
import pathlib

import pytest

from tests.integration.real import (FINAL, mkdirs_owned, output_file, owner_of, pid_alive, real_config, remove,
                                    script, start_real_server, submit, user_dirs, wait_job, wait_until)

pytestmark = pytest.mark.lab
QUEUES = ("SGE", "Slurm")


@pytest.fixture(scope="module")
def srv(lab, users):
    s = start_real_server(lab, users, real_config(lab))
    yield s
    s.stop()
    remove(pathlib.Path(s.workdir))


@pytest.fixture
def dirs(users):
    base, d = user_dirs(users)
    yield d
    remove(base)


def test_two_users_jobs_run_as_them_with_real_exit_codes(srv, users, dirs):
    jobs = []
    for user in ("alice", "bob"):
        ok = script(dirs[user] / "ok.sh", 'id -un\nprintf "[%s]\\n" "$@"\n', users[user])
        bad = script(dirs[user] / "bad.sh", "echo failing >&2\nexit 3\n", users[user])
        for q in QUEUES:
            jobs.append((user, q, "ok", submit(srv, user, {"queue": q, "path": ok, "options": ["a b", "c"]})))
            jobs.append((user, q, "bad", submit(srv, user, {"queue": q, "path": bad})))
    for user, q, kind, job in jobs:
        done = wait_job(srv, user, job["id"], FINAL)
        where = (user, q, kind, done)
        if kind == "ok":
            assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), where
            out = output_file(dirs[user], done)
            assert out.read_text() == f"{user}\n[a b]\n[c]\n", where
        else:
            assert (done["status"], done["exit_code"]) == ("ERROR", 3), where
            assert "exit code 3" in done["reason"], where
            out = output_file(dirs[user], done, "e")
            assert out.read_text() == "failing\n", where
        assert owner_of(out) == user, where
        assert done["scheduler_job_id"], where
        assert done["started_at"] and done["finished_at"], where
    # each user sees only their own jobs
    listed = {j["id"] for j in srv.as_user("bob", "GET", "/jobs").json()["items"]}
    assert listed == {j["id"] for u, _, _, j in jobs if u == "bob"}


@pytest.mark.parametrize("queue,user", [("SGE", "alice"), ("Slurm", "bob")])
def test_cancelling_a_running_job_kills_it(srv, users, dirs, queue, user):
    pidfile = dirs[user] / f"pid-{queue}"
    marker = dirs[user] / f"survived-{queue}"
    path = script(dirs[user] / f"long-{queue}.sh", f"echo $$ > '{pidfile}'\nsleep 30\ntouch '{marker}'\n", users[user])
    job = submit(srv, user, {"queue": queue, "path": path})
    wait_job(srv, user, job["id"], {"RUNNING"}, timeout=30)
    pid = int(wait_until("the job wrote its pid", lambda: pidfile.exists() and pidfile.read_text().strip()))
    assert pid_alive(pid)
    r = srv.as_user(user, "DELETE", f"/jobs/{job['id']}")
    assert r.status == 202 and r.json()["cancel_requested"] is True, r
    done = wait_job(srv, user, job["id"], FINAL, timeout=45)
    assert done["status"] == "CANCELLED", done
    assert done["reason"] == f"cancelled by {user}", done
    wait_until("the job's shell is gone", lambda: not pid_alive(pid), timeout=15)
    assert not marker.exists()


# -- shell metacharacters ---------------------------------------------------------------------------

def hostile(canary: pathlib.Path, dollar: bool = True) -> str:
    """Every shell metacharacter, and three ways to run `touch <canary>` if anything ever evaluated it."""
    s = f"x;touch {canary};`touch {canary}`|&<>*?'\"\\ %:@#~!{{}}[]"
    return s + (f" $(touch {canary}) $HOME $JOB_ID ${{IFS}}" if dollar else "")


@pytest.mark.parametrize("queue", QUEUES)
def test_shell_metacharacters_in_every_field_never_run(srv, users, dirs, queue):
    alice = users["alice"]
    base = dirs["alice"]
    canary = base / "CANARY"
    sge = queue == "SGE"
    # '/' in the strings makes nested directories: the canary's absolute path is spelled in the names.
    pwd = mkdirs_owned(base / f"dir {hostile(canary, dollar=not sge)}", base, alice)
    path = pwd / f"job {hostile(canary)}.sh"
    mkdirs_owned(path.parent, base, alice)
    script(path, 'pwd\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\n', alice)
    options = [hostile(canary), f"; touch {canary}", "", "$(touch CANARY)", "a  b"]
    name = "n;`touch CANARY`$(touch CANARY)|&<>'\" %~!{}"     # what Grid Engine allows: no / : @ \ * ?
    job = submit(srv, "alice", {"queue": queue, "path": str(path), "options": options, "pwd": str(pwd),
                                "name": name})
    assert job["name"] == name and job["path"] == str(path) and job["options"] == options
    done = wait_job(srv, "alice", job["id"], FINAL)
    assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), done
    out = output_file(pwd, done)
    assert owner_of(out) == "alice"
    assert out.read_text() == str(pwd) + "\n" + "".join(f"[{o}]\n" for o in options)
    places = [canary, pwd / "CANARY", path.parent / "CANARY", pathlib.Path("/CANARY"),
              pathlib.Path(srv.workdir) / "CANARY"] + \
        [pathlib.Path(os.path.expanduser(f"~{u}")) / "CANARY" for u in ("alice", "metascheduler", "root")]
    assert [str(p) for p in places if p.exists()] == []


def test_names_and_directories_the_scheduler_cannot_take_are_refused_at_submit(srv, users, dirs):
    alice = users["alice"]
    ok = script(dirs["alice"] / "ok.sh", "true\n", alice)
    # Grid Engine forbids / : @ \ * ? in job names: a 400 naming the field, before anything is queued.
    for bad in ("a/b", "a:b", "a@b", "a\\b", "a*b", "a?b"):
        r = srv.as_user("alice", "POST", "/jobs", {"queue": "SGE", "path": ok, "name": bad})
        assert r.status == 400, (bad, r)
        assert r.json()["field"] == "name" and "name" in r.json()["description"], r
    # Grid Engine expands $HOME, $JOB_ID, ... in the working directory: refused, naming pwd.
    dollar = mkdirs_owned(dirs["alice"] / "d $HOME", dirs["alice"], alice)
    r = srv.as_user("alice", "POST", "/jobs", {"queue": "SGE", "path": ok, "pwd": str(dollar)})
    assert r.status == 400 and r.json()["field"] == "pwd", r
    # ... and the same when a held job is edited into it
    held = submit(srv, "alice", {"queue": "SGE", "path": ok, "hold": True})
    r = srv.as_user("alice", "PATCH", f"/jobs/{held['id']}", {"pwd": str(dollar)})
    assert r.status == 400 and r.json()["field"] == "pwd", r
    # Slurm takes all of them (the native name is our sanitised tag) and runs the job in that directory.
    job = submit(srv, "alice", {"queue": "Slurm", "path": ok, "name": "a/b:c@d\\e*f?", "pwd": str(dollar)})
    done = wait_job(srv, "alice", job["id"], FINAL)
    assert done["status"] == "COMPLETED", done
    assert output_file(dollar, done).exists()
    assert srv.as_user("alice", "DELETE", f"/jobs/{held['id']}").status == 200
