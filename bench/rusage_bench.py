#!/usr/bin/env python3
"""What the local backend's rusage capture costs a job (issue 15): the wrapper that records the job's rusage
with its exit status (WRAP: it execs a short python3 once the script ended) next to the wrapper before it
(PLAIN_WRAP: the exit status alone), in the same run, each running N trivial jobs (`true`) one after the
other, exactly as the launcher starts them (``sh -c WRAP metasched-job-<id> <exit file> <script>``, its
stdout and stderr the job's output files, opened before).

Per job: CPU time (user + system of the wrapper and everything it ran, from the kernel's rusage of the
children of this process) and wall time until the exit file is there.

Run from the repository:  python3 bench/rusage_bench.py [--jobs 200]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from metasched.backends.local import WRAP  # noqa: E402

# The wrapper without the capture: WRAP as it was before issue 15 (the launcher opens the output files).
PLAIN_WRAP = 'x=$1; shift; trap : TERM; "$@"; rc=$?; echo "$rc" > "$x"'

# A job's PATH as the launcher's sudo -u <owner> gives it (Debian's secure_path), not the PATH of whoever runs
# the benchmark (a pyenv shim for python3 would cost ten times the interpreter itself).
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(wrap: str, n: int, d: str) -> tuple[float, float]:
    script = os.path.join(d, "true.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrue\n")
    os.chmod(script, 0o755)
    walls = []
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i in range(n):
        ext = os.path.join(d, f".j{i}.exit")
        t0 = time.perf_counter()
        with open(os.path.join(d, "o"), "wb") as out, open(os.path.join(d, "e"), "wb") as err:
            subprocess.run(["sh", "-c", wrap, f"metasched-job-{i}", ext, script], check=True, stdout=out, stderr=err,
                           env=dict(os.environ, PATH=JOB_PATH))
        walls.append(time.perf_counter() - t0)
        assert open(ext).read().split("\n")[0] == "0"
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n
    return cpu * 1000, statistics.median(walls) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="metasched-rusage-")
    try:
        res = {}
        for rnd in range(2):                      # interleaved: previous, new, previous, new
            for name, wrap in (("previous (exit status only)", PLAIN_WRAP), ("with rusage", WRAP)):
                res.setdefault(name, []).append(run(wrap, args.jobs, d))
        print(f"{args.jobs} trivial jobs per run, 2 runs each, load {os.getloadavg()[0]:.1f}")
        print(f"{'wrapper':<30} {'CPU ms/job':>11} {'wall ms/job (median)':>21}")
        for name, runs in res.items():
            print(f"{name:<30} {statistics.mean(r[0] for r in runs):>11.2f} {statistics.mean(r[1] for r in runs):>21.2f}")
        (c0, w0), (c1, w1) = [(statistics.mean(r[0] for r in v), statistics.mean(r[1] for r in v)) for v in res.values()]
        print(f"{'the rusage capture costs':<30} {c1 - c0:>+11.2f} {w1 - w0:>+21.2f}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
