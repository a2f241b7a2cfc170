"""What a user typed never reaches another user's (an admin's) terminal as control characters: the CLI
prints C0 controls, ESC, DEL, C1 controls (U+009B is a one-character CSI), bidirectional overrides and
lone surrogates as visible escapes, in every table, field and message. --json stays the API's JSON."""
from __future__ import annotations

import json
import re
import subprocess

from metasched.cli import commands as C
from metasched.cli import render

from .conftest import cli_argv, user_env

# What a terminal would act on: C0 but newline, ESC included; DEL; C1; bidi controls; surrogates.
ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")

NAME = "n\u009b2J\u202eevil"                      # names refuse C0 and DEL; C1 and bidi are text
SCRIPT = "/tmp/x\x1b[2J\x1b]0;pwned\x07.sh"
ARGS = ["\x1b[31mred", "\u009b1;1H", "tab\there", "\x7f"]
PWD = "/tmp/\x1b[1m"


def _terminal_safe(text: str) -> None:
    m = ACTIVE.search(text)
    assert m is None, f"U+{ord(m.group()):04X} reached the terminal: {text!r}"


def test_show_jobs_events_and_watch_escape_what_the_user_typed(cli, lab, as_json):
    r = cli("alice", "submit", "--no-check", "--parsable", "--queue", "local", "--name", NAME, "--pwd", PWD, "--hold",
            SCRIPT, *ARGS)
    assert r.returncode == 0, r.stderr
    jid = int(r.stdout)
    job = as_json("root", "show", jid)                  # the data is stored as typed
    assert (job["name"], job["path"], job["options"], job["pwd"]) == (NAME, SCRIPT, ARGS, PWD)

    outputs = []
    for user in ("alice", "root"):
        for args in (["show", jid], ["jobs", "--all"] if user == "root" else ["jobs"], ["events", jid]):
            r = cli(user, *args)
            assert r.returncode == 0, r.stderr
            outputs.append(r.stdout + r.stderr)
    assert cli("alice", "cancel", jid).returncode == 0
    p = subprocess.run(cli_argv("root", ["watch", jid, "--interval", "0.2"]), env=user_env("root", lab),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1                            # it was cancelled
    outputs.append(p.stdout + p.stderr)
    for out in outputs:
        _terminal_safe(out)
    show = outputs[0]
    assert "n\\x9b2J\\u202eevil" in show                # visibly escaped, not dropped
    assert "/tmp/x\\x1b[2J\\x1b]0;pwned\\x07.sh" in show
    assert "\\x1b[31mred" in show and "\\x9b1;1H" in show and "tab\\x09here" in show and "\\x7f" in show
    assert "/tmp/\\x1b[1m" in show
    assert "n\\x9b2J\\u202eevil" in outputs[1]          # the jobs table


def test_refusals_quoting_what_was_typed_are_escaped(cli):
    r = cli("alice", "submit", "--queue", "no\x1b[2Jsuch\u009b", "job.sh")
    assert r.returncode == 1
    _terminal_safe(r.stderr)
    assert "\\x1b[2J" in r.stderr
    r = cli("alice", "jobs", "--queue", "\u009b6n")
    assert r.returncode == 1
    _terminal_safe(r.stderr)


def test_json_output_is_the_apis_json(cli, submit):
    jid = submit("alice", args=["\x1b[2J"])
    r = cli("alice", "--json", "show", jid)
    assert json.loads(r.stdout)["options"] == ["\x1b[2J"]
    _terminal_safe(r.stdout)                            # JSON writes it as \u001b


def test_escape_and_render_of_a_stored_lone_surrogate():
    """A job an earlier release stored with a lone surrogate in its options: shown, not a crash."""
    assert render.escape("a\x1bb\u009b\x00\x7f\ud800\u202e\u00e9\u4e2d") == \
        "a\\x1bb\\x9b\\x00\\x7f\\ud800\\u202e\u00e9\u4e2d"
    assert render.escape(render.escape("\x1b")) == "\\x1b"
    job = {"id": 1, "name": "n", "owner": "alice", "queue": 1, "status": "HELD", "reason": None,
           "path": "/x.sh", "options": ["\ud800"], "pwd": "/", "scheduler_job_id": None, "exit_code": None,
           "created_at": None, "submitted_at": None, "started_at": None, "finished_at": None}
    ctx = C.Context(client=None, endpoint=None, colour=True)
    ctx._queues = [{"id": 1, "name": "q\x1b"}]
    text = C.job_fields(ctx, job)
    text.encode("utf-8")                                # printable at all
    assert "\\ud800" in text and "q\\x1b (1)" in text
    assert "\x1b[33mHELD\x1b[0m" in text                # our own colour is still there
    rows = C.jobs_table(ctx, [dict(job, name="\x1b[2J", exit_code=None)])
    assert "\\x1b[2J" in rows and "\x1b[2J" not in rows.replace("\\x1b[2J", "")
