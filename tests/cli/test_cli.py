"""The ``metasched`` CLI, run for real as alice, bob and root against a real service (see conftest).

No poller runs: jobs stay where the CLI puts them (TO_BE_QUEUED, HELD, CANCELLED), which is what makes
these tests independent of timing. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import pty
import pwd
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from .conftest import as_user, cli_argv, user_env

COMMANDS = ["submit", "jobs", "show", "output", "events", "why", "cancel", "hold", "release", "edit", "queues", "nodes",
            "mode", "watch", "token", "history", "usage", "top"]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


# -- help and usage -----------------------------------------------------------------------------

def test_help_names_every_command_and_the_exit_statuses(cli):
    r = cli("alice", "--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert re.search(rf"^\s+{c}\s+\S", r.stdout, re.M), f"{c} missing from --help"
    assert "exit status" in r.stdout and "METASCHED_SOCKET" in r.stdout and "METASCHED_URL" in r.stdout


@pytest.mark.parametrize("argv", [[c, "--help"] for c in COMMANDS] + [["mode", "set", "--help"],
                                                                      ["token", "create", "--help"]])
def test_each_command_has_short_help(cli, argv):
    r = cli("alice", *argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: metasched " + argv[0])
    # submit carries sbatch's options (resources, outputs, --mail-type ...): a few lines more
    assert len(r.stdout.splitlines()) < (45 if argv[0] == "submit" else 40)


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["submit"], ["show"], ["show", "abc"], ["cancel"], ["jobs", "--state", "SLEEPING"],
    ["mode", "set", "anarchy"], ["mode", "set"], ["edit", "1"], ["edit", "1", "--arg", "x", "--args", "y"],
    ["token", "revoke"], ["--socket", "/x", "--url", "http://127.0.0.1:1", "jobs"],
])
def test_usage_errors_exit_2(cli, argv):
    r = cli("alice", *argv)
    assert r.returncode == 2, (argv, r.stdout, r.stderr)
    assert r.stderr.strip(), "a usage error must say what is wrong"


# -- submit -------------------------------------------------------------------------------------

def test_submit_prints_the_id_and_makes_paths_absolute(cli, lab, as_json):
    wd = lab.workdir("alice")
    r = cli("alice", "submit", "--queue", "batch", "--name", "first", "job.sh", "-n", "5", "two words")
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"submitted job (\d+) \(first\) to queue batch: TO_BE_QUEUED\n", r.stdout)
    assert m, r.stdout
    job = as_json("alice", "show", m.group(1))
    assert job["path"] == str(wd / "job.sh")
    assert job["pwd"] == str(wd)                       # the current directory, not the script's
    assert job["options"] == ["-n", "5", "two words"]  # everything after SCRIPT, verbatim
    assert job["owner"] == "alice" and job["name"] == "first" and job["status"] == "TO_BE_QUEUED"


def test_submit_parsable_prints_only_the_id(cli, lab, as_json):
    sub = lab.workdir("alice") / "sub"
    sub.mkdir(exist_ok=True)
    os.chown(sub, pwd.getpwnam("alice").pw_uid, -1)       # alice's own: the CLI checks she can write there
    r = cli("alice", "submit", "--parsable", "-q", "local", "--hold", "--pwd", "sub", "job.sh")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"\d+\n", r.stdout), repr(r.stdout)
    job = as_json("alice", "show", r.stdout)
    assert job["status"] == "HELD" and job["pwd"] == str(lab.workdir("alice") / "sub")


def test_submit_by_queue_id_and_json(as_json):
    job = as_json("alice", "submit", "--queue", "2", "job.sh")
    assert job["queue"] == 2 and job["links"]["self"] == f"/jobs/{job['id']}"


def test_submit_refusals(cli):
    r = cli("alice", "submit", "job.sh")            # two queues: it must ask
    assert r.returncode == 2 and "--queue" in r.stderr and "local" in r.stderr and "batch" in r.stderr
    r = cli("alice", "submit", "--queue", "nosuch", "job.sh")
    assert r.returncode == 1
    assert one_line(r.stderr).startswith("metasched: queue: no queue 'nosuch'")
    r = cli("root", "submit", "--queue", "local", "job.sh")   # root never owns a job
    assert r.returncode == 1 and "root" in r.stderr


# -- jobs ---------------------------------------------------------------------------------------

def test_jobs_shows_your_own_jobs_and_admins_see_all_with_all(cli, submit, as_json):
    a, b = submit("alice"), submit("bob")
    alice_ids = {j["id"] for j in as_json("alice", "jobs")["items"]}
    assert a in alice_ids and b not in alice_ids
    assert {j["owner"] for j in as_json("bob", "jobs")["items"]} == {"bob"}
    everyone = {j["id"] for j in as_json("root", "jobs", "--all")["items"]}
    assert {a, b} <= everyone
    assert as_json("root", "jobs")["items"] == []       # root's own jobs: none, not everyone's
    assert {j["owner"] for j in as_json("root", "jobs", "--owner", "bob")["items"]} == {"bob"}

    r = cli("alice", "jobs")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].split() == ["ID", "NAME", "QUEUE", "STATE", "SUBMITTED", "EXIT", "REASON"]
    row = next(line for line in r.stdout.splitlines() if line.split()[0] == str(a))
    assert row.split()[1:4] == ["job.sh", "local", "TO_BE_QUEUED"]
    r = cli("root", "jobs", "--all")                   # someone's else too: whose they are
    assert r.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "QUEUE", "OWNER"]
    r = cli("alice", "jobs", "--wide")
    assert r.stdout.splitlines()[0].split() == ["ID", "NAME", "QUEUE", "OWNER", "STATE", "SUBMITTED", "NATIVE",
                                                "ID", "EXIT", "REASON"]
    assert "ago" in row
    assert "\033[" not in r.stdout          # not a terminal: no colour

    r = cli("alice", "jobs", "--all")
    assert r.returncode == 1 and one_line(r.stderr) == "metasched: only admins can list everyone's jobs"
    r = cli("alice", "jobs", "--owner", "bob")
    assert r.returncode == 1 and "only admins" in one_line(r.stderr)


def test_jobs_filters_by_state_and_queue(cli, submit, as_json):
    held, waiting, cancelled = submit("alice", "--hold"), submit("alice"), submit("alice")
    assert cli("alice", "cancel", cancelled).returncode == 0
    only_held = as_json("alice", "jobs", "--state", "held")["items"]
    assert held in [j["id"] for j in only_held] and {j["status"] for j in only_held} == {"HELD"}
    both = as_json("alice", "jobs", "--state", "HELD,CANCELLED")["items"]
    assert {held, cancelled} <= {j["id"] for j in both} and waiting not in {j["id"] for j in both}
    repeated = as_json("alice", "jobs", "-s", "HELD", "-s", "CANCELLED")["items"]
    assert [j["id"] for j in repeated] == [j["id"] for j in both]
    batch = as_json("alice", "jobs", "--queue", "batch")["items"]
    assert batch and {j["queue"] for j in batch} == {2}


def test_jobs_follows_pages_up_to_the_limit(cli, lab, as_json):
    # bob gets 205 held jobs in one process (205 CLI runs would only be slower): more than two pages
    code = ("import sys\nfrom metasched.cli.client import Client, Endpoint\n"
            "c = Client(Endpoint(socket_path=sys.argv[1]))\n"
            "for i in range(205):\n"
            "    c.call('POST', '/jobs', {'queue': 'local', 'path': '/bin/true', 'hold': True, 'name': 'bulk'})\n")
    r = subprocess.run(as_user("bob", [sys.executable, "-c", code, lab.socket]), env=user_env("bob", lab),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    all_held = as_json("bob", "jobs", "--state", "HELD", "--limit", "1000")
    ids = [j["id"] for j in all_held["items"] if j["name"] == "bulk"]
    assert len(ids) == 205 and ids == sorted(set(ids))       # three pages, nothing lost or repeated
    assert all_held["next"] is None

    some = as_json("bob", "jobs", "--state", "HELD", "--limit", "150")
    assert [j["id"] for j in some["items"]] == [j["id"] for j in all_held["items"]][:150]
    assert some["next"] and f"after={some['items'][-1]['id']}" in some["next"]

    r = cli("bob", "jobs", "--state", "HELD", "--limit", "3")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4     # header + 3 rows
    assert "showing the first 3 jobs" in one_line(r.stderr)


# -- one job ------------------------------------------------------------------------------------

def test_show_and_events(cli, submit, as_json):
    jid = submit("alice", args=["x y"])
    r = cli("alice", "show", jid)
    assert r.returncode == 0
    fields = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert fields["state"].strip() == "TO_BE_QUEUED" and fields["owner"].strip() == "alice"
    assert fields["args"].strip() == "'x y'" and fields["queue"].strip() == "local (1)"
    assert cli("alice", "hold", jid).returncode == 0 and cli("alice", "release", jid).returncode == 0
    events = as_json("alice", "events", jid)["items"]
    assert [(e["old_status"], e["new_status"], e["actor"]) for e in events] == [
        (None, "TO_BE_QUEUED", "alice"), ("TO_BE_QUEUED", "HELD", "alice"), ("HELD", "TO_BE_QUEUED", "alice")]
    r = cli("alice", "events", jid)
    assert r.returncode == 0 and "HELD -> TO_BE_QUEUED" in r.stdout and "released by alice" in r.stdout

    for cmd in ("show", "events"):     # another user's job does not exist for bob
        r = cli("bob", cmd, jid)
        assert r.returncode == 1 and one_line(r.stderr) == f"metasched: job {jid} not found"
    assert as_json("root", "show", jid)["owner"] == "alice"      # admins see it


def test_cancel_one_several_and_refusals(cli, submit, as_json):
    one, two, three, bobs = submit("alice"), submit("alice"), submit("alice", "--hold"), submit("bob")
    r = cli("alice", "cancel", one)
    assert (r.returncode, r.stdout) == (0, f"job {one} cancelled\n")
    r = cli("alice", "cancel", two, three)
    assert (r.returncode, r.stdout) == (0, f"job {two} cancelled\njob {three} cancelled\n")
    assert {as_json("alice", "show", j)["status"] for j in (one, two, three)} == {"CANCELLED"}

    r = cli("alice", "cancel", bobs)
    assert r.returncode == 1 and one_line(r.stderr) == f"metasched: job {bobs} not found"
    assert as_json("bob", "show", bobs)["status"] == "TO_BE_QUEUED"

    four = submit("alice")
    r = cli("alice", "--json", "cancel", bobs, four)     # one refusal does not stop the others
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out[0]["status"] == 404 and out[1]["id"] == four and out[1]["status"] == "CANCELLED"
    assert one_line(r.stderr) == f"metasched: job {bobs} not found"


def test_hold_and_release(cli, submit, as_json):
    jid = submit("alice")
    r = cli("alice", "hold", jid)
    assert (r.returncode, r.stdout) == (0, f"job {jid} held: HELD\n")
    assert as_json("alice", "release", jid)["status"] == "TO_BE_QUEUED"
    assert as_json("alice", "hold", jid)["status"] == "HELD"
    r = cli("bob", "release", jid)
    assert r.returncode == 1 and "not found" in r.stderr
    assert as_json("alice", "show", jid)["status"] == "HELD"


def test_edit(cli, submit, as_json, lab):
    jid = submit("alice", args=["old"])
    r = cli("alice", "edit", jid, "--name", "renamed", "--queue", "batch", "--args", "-n", "5", "--name", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"job {jid} updated\n")
    job = as_json("alice", "show", jid)
    assert (job["name"], job["queue"], job["options"]) == ("renamed", 2, ["-n", "5", "--name", "x"])
    job = as_json("alice", "edit", jid, "--arg=-v", "--arg", "a b")
    assert job["options"] == ["-v", "a b"] and job["name"] == "renamed"
    assert as_json("alice", "edit", jid, "--args")["options"] == []
    assert as_json("alice", "edit", jid, "--script", "other.sh")["path"] == str(lab.workdir("alice") / "other.sh")
    events = as_json("alice", "events", jid)["items"]
    assert events[-1]["reason"] == "edited: path"

    r = cli("bob", "edit", jid, "--name", "mine")
    assert r.returncode == 1 and one_line(r.stderr) == f"metasched: job {jid} not found"
    r = cli("alice", "edit", jid, "--queue", "nosuch")
    assert r.returncode == 1 and "no queue 'nosuch'" in r.stderr


# -- cluster ------------------------------------------------------------------------------------

def test_queues_and_nodes(cli, as_json):
    r = cli("bob", "queues")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "WEIGHT", "STATE", "WAIT", "QUEUED", "RUN", "DONE", "ERR",
                                "DIRECT"]
    assert max(len(line) for line in lines) <= 80
    assert cli("bob", "queues", "--wide").stdout.splitlines()[0].split()[:6] == ["ID", "NAME", "TYPE", "WEIGHT",
                                                                                 "STATE", "WAITING"]
    assert [line.split()[1] for line in lines[1:]] == ["local", "batch"]
    assert [q["name"] for q in as_json("bob", "queues")["items"]] == ["local", "batch"]

    r = cli("bob", "nodes")
    assert r.returncode == 0 and "127.0.0.1:22" in r.stdout and "yes" in r.stdout
    nodes = as_json("bob", "nodes")["items"]
    assert nodes[0]["ip"] == "127.0.0.1" and nodes[0]["master"] is True


def test_mode_show_set_by_admin_refused_for_users(cli, as_json):
    r = cli("alice", "mode")
    assert r.returncode == 0 and re.search(r"^policy:\s+shared$", r.stdout, re.M)
    r = cli("alice", "mode", "set", "exclusive")
    assert r.returncode == 1 and one_line(r.stderr) == "metasched: only admins can change the cluster mode"
    try:
        mode = as_json("root", "mode", "set", "best_effort", "--high-priority", "batch", "--weight", "local=70")
        assert mode["policy"] == "best_effort" and mode["high_priority"]["name"] == "batch"
        assert {s["name"]: s["weight"] for s in mode["schedulers"]} == {"local": 70, "batch": 40}
        assert mode["updated_by"] == "root"
        r = cli("alice", "mode")
        assert re.search(r"^high priority:\s+batch \(2\)$", r.stdout, re.M), r.stdout
        r = cli("alice", "queues")        # the weight in force, not the configured one
        assert r.stdout.splitlines()[1].split()[:4] == ["1", "local", "local", "70"]
        r = cli("root", "mode", "set", "--weight", "nosuch=5")
        assert r.returncode == 1 and "no queue 'nosuch'" in one_line(r.stderr)
        r = cli("root", "mode", "set", "--weight", "local=500")
        assert r.returncode == 2
    finally:
        restored = as_json("root", "mode", "set", "shared", "--high-priority", "none", "--weight", "local=60")
    assert restored["policy"] == "shared" and restored["high_priority"] is None


# -- output -------------------------------------------------------------------------------------

def test_every_command_prints_parsable_json(cli, submit, as_json):
    jid = submit("alice")
    outputs = {
        "submit": as_json("alice", "submit", "-q", "local", "job.sh"),
        "jobs": as_json("alice", "jobs"), "show": as_json("alice", "show", jid),
        "events": as_json("alice", "events", jid), "hold": as_json("alice", "hold", jid),
        "release": as_json("alice", "release", jid), "edit": as_json("alice", "edit", jid, "--name", "j"),
        "queues": as_json("alice", "queues"), "nodes": as_json("alice", "nodes"), "mode": as_json("alice", "mode"),
        "token list": as_json("alice", "token", "list"), "cancel": as_json("alice", "cancel", jid),
    }
    assert outputs["submit"]["status"] == "TO_BE_QUEUED" and outputs["cancel"][0]["status"] == "CANCELLED"
    assert all(isinstance(v, (dict, list)) for v in outputs.values())
    # --json after the command name works too
    r = cli("alice", "show", jid, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == jid


def _run_on_pty(user, lab, args, env=None) -> str:
    master, slave = pty.openpty()
    p = subprocess.Popen(cli_argv(user, args), env=user_env(user, lab, env), cwd=lab.workdir(user),
                         stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:      # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    assert p.wait(timeout=10) == 0
    return out.decode()


def test_states_are_coloured_only_on_a_terminal_without_no_color(lab, submit):
    submit("alice")
    assert "\033[34mTO_BE_QUEUED\033[0m" in _run_on_pty("alice", lab, ["jobs"])
    assert "\033[" not in _run_on_pty("alice", lab, ["jobs"], env={"NO_COLOR": "1"})


# -- connection ---------------------------------------------------------------------------------

def test_unreachable_socket_is_one_line_naming_the_path(cli, lab):
    path = str(lab.dir / "nothing-here.sock")
    r = cli("alice", "--socket", path, "jobs")
    assert r.returncode == 1 and r.stdout == ""
    line = one_line(r.stderr)
    assert path in line and "metasched-api running" in line and "--socket" in line
    r = cli("alice", "jobs", env={"METASCHED_SOCKET": path})
    assert r.returncode == 1 and "METASCHED_SOCKET" in one_line(r.stderr) and path in r.stderr


def test_unreachable_url_is_one_line_naming_the_url(cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # bound, not listening: connections are refused
        r = cli("alice", "--url", f"http://127.0.0.1:{port}", "jobs", env={"METASCHED_TOKEN": "mst_x"})
    assert r.returncode == 1
    assert f"http://127.0.0.1:{port}" in one_line(r.stderr) and "refused" in r.stderr


def test_token_create_then_use_it_over_tcp(cli, lab, submit, as_json):
    jid = submit("alice")
    r = cli("alice", "token", "create", "--description", "laptop", "--days", "2")
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert re.fullmatch(r"mst_\S+\n", r.stdout), "the secret alone on stdout"
    assert "only time" in r.stderr
    tokens = as_json("alice", "token", "list")["items"]
    mine = next(t for t in tokens if t["description"] == "laptop")
    assert mine["user"] == "alice"

    # over TCP the token is the identity: bob's shell holding alice's token acts as alice
    over_tcp = as_json("bob", "--url", lab.url, "jobs", env={"METASCHED_TOKEN": secret})
    assert jid in {j["id"] for j in over_tcp["items"]} and {j["owner"] for j in over_tcp["items"]} == {"alice"}
    r = cli("bob", "show", jid, env={"METASCHED_URL": lab.url, "METASCHED_TOKEN": secret})
    assert r.returncode == 0 and "alice" in r.stdout

    # the documented way to keep a token: (umask 077; metasched token create > ~/.config/metasched/token)
    home = lab.dir / "alice-home"
    home.mkdir(exist_ok=True)
    pw = pwd.getpwnam("alice")
    os.chown(home, pw.pw_uid, pw.pw_gid)
    store = ('mkdir -p "$HOME/.config/metasched" && umask 077 && '
             '"$0" -m metasched.cli token create -d stored > "$HOME/.config/metasched/token"')
    r = subprocess.run(as_user("alice", ["/bin/sh", "-c", store, sys.executable]),
                       env=user_env("alice", lab, {"HOME": str(home)}), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    tok = home / ".config" / "metasched" / "token"
    r = cli("alice", "--url", lab.url, "show", jid, env={"HOME": str(home)})
    assert r.returncode == 0, r.stderr
    tok.chmod(0o640)
    r = cli("alice", "--url", lab.url, "show", jid, env={"HOME": str(home)})
    assert r.returncode == 2 and r.stdout == ""
    line = one_line(r.stderr)
    assert str(tok) in line and "chmod 600" in line and "0640" in line
    r = cli("alice", "--url", lab.url, "--token-file", str(lab.dir / "none"), "jobs")
    assert r.returncode == 2 and "no token" in one_line(r.stderr)

    # revoked: refused at once
    r = cli("alice", "token", "revoke", mine["id"])
    assert (r.returncode, r.stdout) == (0, f"token {mine['id']} of alice revoked\n")
    r = cli("alice", "--url", lab.url, "jobs", env={"METASCHED_TOKEN": secret})
    assert r.returncode == 1 and "revoked" in one_line(r.stderr) and "METASCHED_TOKEN" in r.stderr
    r = cli("bob", "token", "revoke", mine["id"])        # not bob's to see
    assert r.returncode == 1 and "not found" in r.stderr


# -- watch --------------------------------------------------------------------------------------

def _reader(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for(q: queue.Queue, pattern: str, timeout: float = 30) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"{pattern!r} not seen in {seen!r}")


def test_watch_id_ends_with_1_when_the_job_is_cancelled(cli, lab, submit):
    jid = submit("alice")
    p = subprocess.Popen(cli_argv("alice", ["watch", jid, "--interval", "0.2"]), env=user_env("alice", lab),
                         cwd=lab.workdir("alice"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = _reader(p.stdout)
        _wait_for(out, r"^state:\s+TO_BE_QUEUED")            # it is watching
        assert cli("alice", "cancel", jid).returncode == 0   # from another process
        assert p.wait(timeout=30) == 1
        _wait_for(out, r"^state:\s+CANCELLED")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_watch_draws_a_frame_when_an_event_comes_until_interrupted(lab, submit):
    jid = submit("alice")
    p = subprocess.Popen(cli_argv("alice", ["watch", "--interval", "0.2"]), env=user_env("alice", lab),
                         cwd=lab.workdir("alice"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = _reader(p.stdout)
        first = _wait_for(out, rf"^{jid}\s+job\.sh\s+local\s+TO_BE_QUEUED")   # your own jobs: no owner column
        assert any(re.match(r"^metasched watch\s+policy shared", x) for x in first)
        second = submit("alice")                            # an event: the view is drawn again
        _wait_for(out, rf"^{second}\s+job\.sh\s+local\s+TO_BE_QUEUED")   # in a second frame, below the first
        p.send_signal(signal.SIGINT)                        # Ctrl-C is how it normally ends
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "\033[" not in "".join(first)                   # no screen clearing into a pipe


# -- jobs submitted directly to the schedulers ----------------------------------------------------

@pytest.fixture(scope="module")
def direct_jobs(lab):
    """Rows as the poller's cycle writes them (Engine.record_foreign) from a status call that listed alice's
    running job 501 and bob's pending 502 in queue local, and bob's running 77 in batch."""
    import yaml
    from metasched import config as cfgmod
    from metasched.backends.base import NativeJob, NativeState
    from metasched.db.core import Database
    from metasched.engine import CycleReport, Engine, QueueStatus

    def st(*jobs):
        return QueueStatus(True, foreign=list(jobs))

    def nj(native, owner, state):
        return NativeJob(native, None, owner, f"direct{native}", state, "all.q",
                         "2026-01-01T00:00:00Z" if state is NativeState.RUNNING else None)

    db = Database(str(lab.dir / "db.sqlite3"))
    try:
        engine = Engine(db, cfgmod.parse(yaml.safe_load((lab.dir / "service.config").read_text())), transports={})
        assert engine.lease.acquire()      # the service runs --no-poller here: nobody else holds the lease
        engine.record_foreign({1: st(nj("501", "alice", NativeState.RUNNING), nj("502", "bob", NativeState.PENDING)),
                               2: st(nj("77", "bob", NativeState.RUNNING))}, CycleReport(started_at="now"))
    finally:
        db.close()


def test_jobs_foreign_lists_direct_jobs_with_the_same_visibility(cli, as_json, direct_jobs):
    r = cli("alice", "jobs", "--foreign")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "NATIVE", "ID", "NAME", "OWNER", "STATE", "STARTED", "SEEN", "SINCE",
                                "NATIVE", "QUEUE"]
    assert [line.split()[:5] for line in lines[1:]] == [["local", "501", "direct501", "alice", "RUNNING"]]
    bob = as_json("bob", "jobs", "--foreign")
    assert sorted((j["native_id"], j["state"]) for j in bob["items"]) == [("502", "PENDING"), ("77", "RUNNING")]
    assert bob["next"] is None
    assert [j["native_id"] for j in as_json("root", "jobs", "--foreign", "--all", "--queue", "local")["items"]] == \
        ["501", "502"]
    assert [j["native_id"] for j in as_json("root", "jobs", "--foreign", "--owner", "bob")["items"]] == ["502", "77"]
    r = cli("alice", "jobs", "--foreign", "--all")
    assert r.returncode == 1 and one_line(r.stderr) == "metasched: only admins can list everyone's jobs"
    r = cli("alice", "jobs", "--foreign", "--state", "RUNNING")
    assert r.returncode == 2 and "--state" in one_line(r.stderr)
    r = cli("root", "jobs", "--foreign", "--all", "--limit", "1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 and "showing the first 1" in r.stderr
    # our own jobs' listing is unchanged: direct jobs are not ours
    assert all(j["name"] not in ("direct501", "direct502") for j in as_json("alice", "jobs")["items"])


def test_queues_count_direct_jobs(cli, as_json, direct_jobs):
    queues = {q["name"]: q["foreign_jobs"] for q in as_json("bob", "queues")["items"]}
    assert queues == {"local": {"PENDING": 1, "RUNNING": 1}, "batch": {"PENDING": 0, "RUNNING": 1}}
    r = cli("bob", "queues")
    lines = r.stdout.splitlines()
    assert lines[0].split()[-1] == "DIRECT"
    assert [line.split()[-1] for line in lines[1:]] == ["1/1", "0/1"]
