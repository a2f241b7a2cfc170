"""The lease's fence on a master node (metasched/engine/fence.py), with real shells, flock and processes."""
from __future__ import annotations

import subprocess
import time

import pytest

from metasched.backends.base import command_line
from metasched.engine import fence

INST = "0123abcd"


def run(argv, home, timeout=20):
    return subprocess.run(["/bin/sh", "-c", command_line(argv)], capture_output=True, text=True, timeout=timeout,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


def raise_(home, epoch, wait=2):
    p = run(fence.raise_argv(INST, epoch, wait), home)
    return fence.parse_raise(p.returncode, p.stdout, p.stderr)


def test_a_stale_epoch_submits_nothing_once_the_fence_is_raised(tmp_path):
    marker = tmp_path / "ran"
    cmd = ["sh", "-c", 'echo "$1" >> "$2"', "sh"]
    assert run(fence.submit_argv(INST, 2, cmd + ["two", str(marker)]), tmp_path).returncode == 0
    assert raise_(tmp_path, 3) == ("raised", None)
    stale = run(fence.submit_argv(INST, 2, cmd + ["stale", str(marker)]), tmp_path)
    assert stale.returncode == 75 and fence.fenced_out(stale.stderr) == "epoch 2, the node has seen 3"
    assert run(fence.submit_argv(INST, 3, cmd + ["three", str(marker)]), tmp_path).returncode == 0
    assert marker.read_text().split() == ["two", "three"]
    assert raise_(tmp_path, 2) == ("newer", 3)          # a fence never goes back
    f = tmp_path / ".metasched" / f"fence-{INST}"
    assert oct(f.stat().st_mode & 0o777) == "0o600" and oct(f.parent.stat().st_mode & 0o777) == "0o700"


def test_the_fence_rises_only_once_no_attempt_runs_there(tmp_path):
    slow = subprocess.Popen(["/bin/sh", "-c", command_line(fence.submit_argv(INST, 5, ["sleep", "2"]))],
                            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    try:
        time.sleep(0.5)
        assert raise_(tmp_path, 6, wait=0) == ("busy", None)      # the attempt still runs: it may still land
        slow.wait(10)
        assert raise_(tmp_path, 6, wait=0) == ("raised", None)
    finally:
        slow.kill()
        slow.wait()


def test_what_the_submit_command_leaves_running_does_not_hold_the_fence(tmp_path):
    """A job the submit starts (detached, like a local job or a YARN client) must not keep the lock."""
    p = run(fence.submit_argv(INST, 1, ["sh", "-c", "sleep 3 > /dev/null 2>&1 & echo started"]), tmp_path)
    assert p.stdout.strip() == "started"
    t0 = time.monotonic()
    assert raise_(tmp_path, 2, wait=5) == ("raised", None)
    assert time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("installation, epoch", [("../x", 1), ("0123abcd", 0), ("0123abcd", "1")])
def test_bad_fence_arguments_are_refused(installation, epoch):
    with pytest.raises(ValueError):
        fence.submit_argv(installation, epoch, ["true"])
