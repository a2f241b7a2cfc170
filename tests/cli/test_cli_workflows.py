"""The CLI's workflow commands (issue 16), run for real as alice, bob and root against a real service without a
poller: submit --array and --after-*, an array as one line of `jobs` (tasks with --expand), ID.TASK for show,
events, hold, release and cancel, `why`, and `mode set --dry-run`."""
from __future__ import annotations

import json
import re

from .test_cli import one_line


def test_help_names_why_and_the_new_options(cli):
    r = cli("alice", "--help")
    assert re.search(r"^\s+why\s+\S", r.stdout, re.M)
    r = cli("alice", "submit", "--help")
    for opt in ("--array SPEC", "--after-ok ID[,ID]", "--after-notok", "--after-any", "--after-started"):
        assert opt in r.stdout, opt
    assert "1-1000:2%50" in r.stdout
    assert "--dry-run" in cli("alice", "mode", "set", "--help").stdout


def test_an_array_is_one_line_and_its_tasks_follow_with_expand(cli, as_json):
    r = cli("alice", "submit", "--queue", "local", "--array", "1-5%2", "job.sh")
    m = re.fullmatch(r"submitted array (\d+) of 5 tasks \(job.sh\) to queue local: TO_BE_QUEUED\n", r.stdout)
    assert m, (r.stdout, r.stderr)
    aid = int(m.group(1))
    assert cli("alice", "hold", f"{aid}.2").stdout == f"task {aid}.2 held: HELD\n"
    assert cli("alice", "cancel", f"{aid}.3").stdout == f"task {aid}.3 cancelled\n"
    r = cli("alice", "jobs", "--wide")                                  # nothing cut
    line = next(l for l in r.stdout.splitlines() if l.startswith(f"{aid} "))
    assert line.endswith("3 waiting, 1 held, 1 cancelled"), r.stdout
    assert r.stdout.splitlines()[0].split()[-1] == "ARRAY"              # the last column, when an array is listed
    r = cli("alice", "jobs")                                            # 80 columns: the summary is cut first
    line = next(l for l in r.stdout.splitlines() if l.startswith(f"{aid} "))
    assert len(line) <= 80 and "  3 waiting" in line and r.stdout.splitlines()[0].split()[-1] == "ARRAY", r.stdout
    r = cli("alice", "jobs", "--expand")
    ids = [l.split()[0] for l in r.stdout.splitlines()]
    assert ids[ids.index(str(aid)) + 1: ids.index(str(aid)) + 6] == [f"{aid}.{i}" for i in range(1, 6)]
    task = as_json("alice", "show", f"{aid}.3")
    assert (task["id"], task["status"]) == (f"{aid}.3", "CANCELLED")
    assert re.search(r"^state:\s+CANCELLED$", cli("alice", "show", f"{aid}.3").stdout, re.M)
    assert re.search(rf"^array:\s+1-5%2 \(5 tasks\): 3 waiting", cli("alice", "show", aid).stdout, re.M)
    events = as_json("alice", "events", f"{aid}.2")["items"]
    assert [(e["new_status"], e["task"]) for e in events] == [("HELD", 2)]
    r = cli("bob", "show", f"{aid}.2")
    assert r.returncode == 1 and one_line(r.stderr) == f"metasched: job {aid} not found"
    r = cli("alice", "show", f"{aid}.9")
    assert r.returncode == 1 and one_line(r.stderr) == f"metasched: task {aid}.9 not found"
    assert cli("alice", "show", f"{aid}.x").returncode == 2
    assert cli("alice", "cancel", str(aid)).stdout == f"job {aid} cancelled\n"


def test_dependencies_from_the_command_line_and_why(cli, submit, as_json):
    a, b = submit("alice"), submit("alice", "--hold")
    r = cli("alice", "--json", "submit", "--queue", "batch", "--after-ok", f"{a},{b}", "--after-any", str(a),
            "job.sh")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["after"] == {"ok": [a, b], "any": [a]}
    r = cli("alice", "why", job["id"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"job {job['id']} waits in metasched's queue: waiting: dependency {a} (after-ok) is "
                               f"TO_BE_QUEUED and 2 more"), r.stdout
    assert re.search(r"^place:\s+\d+ in its queue", r.stdout, re.M)
    bobs = submit("bob")
    r = cli("alice", "submit", "--queue", "local", "--after-ok", str(bobs), "job.sh")
    assert r.returncode == 1 and one_line(r.stderr) == f"metasched: after.ok[0]: no job {bobs}"
    r = cli("alice", "submit", "--queue", "local", "--after-notok", "x", "job.sh")
    assert r.returncode == 2 and "--after-notok" in r.stderr
    r = cli("bob", "why", job["id"])
    assert r.returncode == 1 and one_line(r.stderr) == f"metasched: job {job['id']} not found"
    assert as_json("alice", "why", b)["reasons"][0]["code"] == "held"


def test_mode_set_dry_run_changes_nothing(cli, submit, as_json):
    before = as_json("root", "mode")
    submit("alice")
    r = cli("root", "mode", "set", "exclusive", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dry run: nothing was changed\npolicy:") and "exclusive" in r.stdout.splitlines()[1]
    assert re.search(r"^would dispatch now: \d+ job\(s\) \(under the mode in force: \d+; its shares: ", r.stdout, re.M)
    assert re.search(r"^NODE\s+ADDRESS\s+local SHARE\s+batch SHARE$", r.stdout, re.M), r.stdout
    out = as_json("root", "mode", "set", "best_effort", "--high-priority", "batch", "--dry-run")
    assert out["dry_run"] is True and out["mode"]["policy"] == "best_effort"
    assert as_json("root", "mode") == before
    r = cli("alice", "mode", "set", "exclusive", "--dry-run")
    assert r.returncode == 1 and "only admins" in one_line(r.stderr)
