"""Several submissions in one round trip (backends.base.batch_argv / parse_batch), run by a real sh:
each job's answer is framed, a refusal stays with its job, and nothing a user typed is executed."""
from __future__ import annotations

import os
import subprocess
import time

from metasched.backends.base import batch_argv, command_line, parse_batch
from metasched.backends.local import LocalBackend
from metasched.model import Job, JobStatus

HOSTILE = ["a b", "$(touch {canary})", "`touch {canary}`", "x; touch {canary}", "'\"", "line1\nline2", ""]


def job(i: int, d, path: str, options=()) -> Job:
    return Job(id=900 + i, name=f"b{i}", queue_id=1, owner="nobody", status=JobStatus.DISPATCHING, path=path,
               options=tuple(options), pwd=str(d))


def run_batch(lines: list[str], preamble: str = "", argv=None) -> list:
    p = subprocess.run(["/bin/sh", "-c", command_line(argv or batch_argv(lines, None, preamble))],
                       capture_output=True, text=True, timeout=60)
    return parse_batch(p.stdout, len(lines))


def test_generic_batch_frames_every_answer():
    answers = run_batch([command_line(["echo", "one"]), command_line(["sh", "-c", "echo bad >&2; exit 3"]),
                         command_line(["printf", "%s", "no newline"])])
    assert answers == [(0, "one\n", ""), (3, "", "bad"), (0, "no newline", "")]


def test_local_batch_launches_each_job_with_its_arguments_verbatim(tmp_path):
    canary = tmp_path / "CANARY"
    record = tmp_path / "args"
    script = tmp_path / "record.sh"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> {record}.$$\n')
    os.chmod(script, 0o755)
    opts = [o.format(canary=canary) for o in HOSTILE]
    backend = LocalBackend({})
    jobs = [job(0, tmp_path, str(script), opts), job(1, tmp_path, str(tmp_path / "missing.sh")),
            job(2, tmp_path, str(script), ["second"])]
    lines = [backend.batch_line(j) for j in jobs]
    answers = run_batch(lines, argv=backend.batch_submit_argv(lines, None))
    assert answers[0][0] == 0 and answers[0][1].strip().isdigit()          # the launcher printed the pgid
    assert answers[1][0] == 1 and "no such file" in answers[1][2]  # refused, with its reason
    assert answers[2][0] == 0 and answers[2][1].strip().isdigit()
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("args.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = sorted(f.read_bytes().split(b"\0")[:-1] for f in tmp_path.glob("args.*"))
    assert got == sorted([[o.encode() for o in opts], [b"second"]])
    assert not canary.exists()
