"""`metasched submit` as real users: the checks it makes as the caller, the environment it exports, what a job
asks for (resources, native flags, outputs) and the one-line refusals; `jobs --newest`; `edit` of a job's spec."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess

import pytest

from .conftest import cli_argv, user_env
from .test_cli import one_line


@pytest.fixture
def home_script():
    """A script in alice's home directory (so the CLI's messages show it as ~/...), removed afterwards."""
    pw = pwd.getpwnam("alice")
    d = os.path.join(pw.pw_dir, "metasched-cli-spec")
    os.makedirs(d, exist_ok=True)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    path = os.path.join(d, "x.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o644)                      # not executable
    yield path
    shutil.rmtree(d, ignore_errors=True)


def test_submit_checks_as_the_caller_and_says_what_to_do_in_one_line(cli, lab, as_json, home_script):
    wd = lab.workdir("alice")
    r = cli("alice", "submit", "-q", "local", "nosuch.sh")
    assert r.returncode == 2 and one_line(r.stderr) == (f"metasched: no such file: {wd}/nosuch.sh (or --no-check "
                                                        f"if it lives only on the scheduler's nodes)")
    r = cli("alice", "submit", "-q", "local", home_script)
    assert r.returncode == 2, r
    assert one_line(r.stderr) == ("metasched: ~/metasched-cli-spec/x.sh is not executable: "
                                  "chmod +x ~/metasched-cli-spec/x.sh")
    ro = lab.dir / "not-alices"
    ro.mkdir(exist_ok=True)
    r = cli("alice", "submit", "-q", "local", "--pwd", str(ro), "job.sh")
    assert r.returncode == 2 and one_line(r.stderr) == (f"metasched: cannot write {ro}, the job's working directory: "
                                                        f"chmod u+w {ro}, or --pwd DIR")
    r = cli("alice", "submit", "-q", "local", "--pwd", str(wd / "gone"), "job.sh")
    assert r.returncode == 2 and "no such directory" in one_line(r.stderr)
    r = cli("alice", "submit", "-q", "local", "--output", "logs/%j.out", "job.sh")
    assert r.returncode == 2 and one_line(r.stderr) == f"metasched: no such directory for --output: {wd}/logs " \
                                                       f"(mkdir -p {wd}/logs)"
    # told that the files are only on the scheduler's nodes, it submits; the scheduler checks again later
    job = as_json("alice", "submit", "-q", "local", "--no-check", "--hold", "nosuch.sh")
    assert job["path"] == f"{wd}/nosuch.sh"
    # the same run as bob: bob's own view of the files decides, not the service's
    r = cli("bob", "submit", "-q", "local", "--pwd", str(wd), str(wd / "job.sh"))
    assert r.returncode == 2 and "cannot write" in r.stderr


def test_submit_exports_the_callers_environment_but_not_sudos_nor_its_own(lab, as_json):
    env = {k.encode(): v.encode() for k, v in user_env("alice", lab).items()}
    env.update({b"MY_SETTING": b"a,b 'c' $(no)", b"SUDO_USER": b"root", b"SUDO_COMMAND": b"/bin/sh",
                b"METASCHED_TOKEN": b"mst_secret", b"LATIN1": b"caf\xe9", b"BASH_FUNC_f%%": b"() { :; }"})
    r = subprocess.run(cli_argv("alice", ["--json", "submit", "-q", "local", "--hold", "job.sh"]), env=env,
                       cwd=lab.workdir("alice"), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"not exported" in r.stderr and b"LATIN1" in r.stderr and b"BASH_FUNC_f%%" in r.stderr
    job = as_json("alice", "show", str(__import__("json").loads(r.stdout)["id"]))
    assert job["export"] == "none"
    assert job["env"]["MY_SETTING"] == "a,b 'c' $(no)" and job["env"]["HOME"] == pwd.getpwnam("alice").pw_dir
    assert job["env"]["PATH"] and job["env"]["USER"] == "alice"
    assert not {k for k in job["env"] if k.startswith(("SUDO_", "METASCHED_"))}, job["env"]
    assert "LATIN1" not in job["env"]
    job = as_json("alice", "submit", "-q", "local", "--hold", "--export", "NONE", "--env", "ONLY=1", "job.sh")
    assert (job["env_names"], job["export"]) == (["ONLY"], "none")
    job = as_json("alice", "submit", "-q", "local", "--hold", "--export", "HOME,X=2", "job.sh")
    assert job["env_names"] == ["HOME", "X"]


def test_submit_asks_for_resources_and_outputs_and_refusals_name_the_option_in_one_line(cli, lab, as_json):
    out = lab.workdir("alice") / "out"
    out.mkdir(exist_ok=True)
    os.chown(out, pwd.getpwnam("alice").pw_uid, -1)
    job = as_json("alice", "submit", "-q", "local", "--hold", "--cores", "2", "--mem", "512M", "--time", "1:00:00",
                  "--output", "out/%x-%j.txt", "--join", "job.sh")
    assert job["resources"] == {"cores_per_task": 2, "memory": 512 * 2 ** 20, "walltime": 3600}
    assert (job["stdout"], job["join"]) == ("out/%x-%j.txt", True)
    shown = as_json("alice", "show", str(job["id"]))
    assert shown["outputs"]["stdout"] == f"{lab.workdir('alice')}/out/job.sh-{job['id']}.txt"
    r = cli("alice", "show", str(job["id"]))
    assert "resources:    cores/task 2, memory 512M, walltime 1:00:00" in r.stdout
    assert "stderr:       joined into stdout" in r.stdout
    for opts, words in ((["--gpus", "1"], "resources.gpus_per_node: the local scheduler cannot honour it"),
                        (["--native=--qos=low"], "native: the local scheduler takes no native flags"),
                        (["--mem", "512"], "--mem: give a unit"),
                        (["--time", "soon"], "resources.walltime"),
                        (["--error", "%N.err"], "stderr: %N is not a pattern")):
        r = cli("alice", "submit", "-q", "local", *opts, "job.sh")
        assert r.returncode in (1, 2) and words in one_line(r.stderr), (opts, r.stderr)


def test_edit_changes_what_a_held_job_asks_for(cli, as_json):
    job = as_json("alice", "submit", "-q", "local", "--hold", "--cores", "1", "--time", "60", "job.sh")
    r = cli("alice", "edit", str(job["id"]), "--mem", "1G", "--export", "NONE")
    assert r.returncode == 0, r.stderr
    new = as_json("alice", "show", str(job["id"]))
    assert new["resources"] == {"cores_per_task": 1, "walltime": 60, "memory": 2 ** 30} and new["env"] == {}


def test_jobs_newest_first(as_json):
    ids = [as_json("bob", "submit", "-q", "batch", "--hold", "job.sh")["id"] for _ in range(3)]
    listed = [j["id"] for j in as_json("bob", "jobs", "--newest", "--limit", "2")["items"]]
    assert listed == ids[:0:-1]
    everything = [j["id"] for j in as_json("bob", "jobs", "--newest")["items"]]
    assert everything == sorted(everything, reverse=True) and set(ids) <= set(everything)


def test_every_option_of_the_help_is_accepted(cli):
    """What `submit --help` promises parses (one refusal at most: the service's, exit 1, not argparse's 2)."""
    text = cli("alice", "submit", "--help").stdout
    for opt in re.findall(r"^ +(--[a-z-]+)", text, re.M):
        assert opt in ("--help", "--json", "--queue", "--name", "--pwd", "--hold", "--parsable", "--no-check",
                       "--nodes", "--tasks", "--cores", "--mem", "--time", "--gpus", "--partition", "--account",
                       "--native", "--export", "--env", "--output", "--error", "--join", "--mail-type",
                       "--mail-user", "--notify-url", "--array", "--after-ok", "--after-notok", "--after-any",
                       "--after-started"), opt


def test_submit_asks_to_be_told_like_sbatch(cli, as_json):
    """--mail-type (sbatch's names), --mail-user, --notify-url become the job's notify; show says it."""
    r = cli("alice", "submit", "--parsable", "--queue", "local", "--hold", "--mail-type", "BEGIN,END",
            "--notify-url", "http://127.0.0.1:9/hook", "job.sh")
    assert r.returncode == 0, r.stderr
    jid = int(r.stdout)
    job = as_json("alice", "show", jid)
    assert job["notify"]["on"] == ["start", "end"] and job["notify"]["webhook"] == "http://127.0.0.1:9/hook"
    shown = cli("alice", "show", jid).stdout
    assert re.search(rf"^notify:\s+on start, end: http://127\.0\.0\.1:9/hook \(signing secret {job['notify']['secret']}\)$",
                     shown, re.M), shown
    r = cli("alice", "submit", "--queue", "local", "--mail-type", "ALL", "job.sh")
    assert r.returncode == 2 and "--mail-user" in r.stderr
    r = cli("alice", "submit", "--queue", "local", "--mail-type", "SOMETIMES", "--mail-user", "a@b.example", "job.sh")
    assert r.returncode == 2 and "--mail-type" in r.stderr
    r = cli("alice", "submit", "--queue", "local", "--mail-user", "alice@example.org", "job.sh")
    assert r.returncode == 1 and "sends no mail" in r.stderr       # this lab has no relay: the service says so
