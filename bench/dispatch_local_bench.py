#!/usr/bin/env python3
"""Dispatch benchmark on the `local` backend (issue: engine): N trivial jobs through the whole system.

The real service (gunicorn, 2 workers, poller) on config/local.config; N jobs submitted by
root on behalf of alice over the unix socket from 8 threads; then, from the database, the time each job
took from its submission (created_at) to RUNNING (the launcher answered with its process group), and the
dispatch rate. Baseline in the same run: a naive launcher run sequentially, one `sudo -n -u alice`
round trip per job (sudo, sh, setsid), as a one-command-per-job dispatcher would.

Run as root from the repository:  python3 bench/dispatch_local_bench.py [--jobs 1000]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.server.conftest import ensure_user, start_server  # noqa: E402

# The demo's own configuration (config/local.config: defaults for everything but the poll interval), the
# server settings left to the test harness.
with open(os.path.join(REPO, "config", "local.config"), encoding="utf-8") as _f:
    CONFIG = {k: v for k, v in yaml.safe_load(_f).items() if k != "server"}


def ts(s: str) -> float:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def creation_cost(directory: str, n: int = 300) -> float:
    """Microseconds to create one empty file in this directory: every job creates three (stdout, stderr,
    its exit status), and on some disks that is most of what starting a trivial job costs."""
    d = tempfile.mkdtemp(dir=directory)
    t0 = time.perf_counter()
    for i in range(n):
        os.close(os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    cost = (time.perf_counter() - t0) / n * 1e6
    shutil.rmtree(d)
    return cost


# What a naive dispatcher runs per job: one sudo, a shell, setsid, the output redirected (no exit status kept).
NAIVE = 'cd -- "$1" && { setsid "$2" > "$3" 2> "$4" < /dev/null & echo $!; }'


CLK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (every core), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / CLK


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by a process and its living descendants (the server: master and workers)."""
    parent, cpu = {}, {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(p)] = int(st[1])
            cpu[int(p)] = (int(st[11]) + int(st[12])) / CLK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [c for c, pp in parent.items() if pp == pid]
    return total


def baseline(n: int, workdir: str, script: str) -> float:
    """Sequential launches, one `sudo -n -u alice sh -c` round trip each (one-job-per-command dispatch)."""
    t0 = time.monotonic()
    for i in range(n):
        out, err = (os.path.join(workdir, f"base.{k}{i}") for k in "oe")
        p = subprocess.run(["sudo", "-n", "-u", "alice", "--", "sh", "-c", NAIVE, "sh", workdir, script, out, err],
                           capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.strip().isdigit(), p.stderr
    return n / (time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--baseline-jobs", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="submit at this steady rate (jobs/s) instead of one burst: latency at a sustainable load")
    ap.add_argument("--workdir", default=None,
                    help="directory in which the jobs' working directory is made (default: alice's home, as a "
                         "user would submit from; e.g. /dev/shm to leave the disk out of the figures)")
    args = ap.parse_args()
    users = {n: ensure_user(n) for n in ("alice", "bob")}
    work = tempfile.mkdtemp(prefix="metasched-bench-", dir=args.workdir or users["alice"].pw_dir)
    os.chmod(work, 0o755)
    jobs_dir = os.path.join(work, "jobs")
    os.mkdir(jobs_dir)
    os.chown(jobs_dir, users["alice"].pw_uid, users["alice"].pw_gid)
    create_us = creation_cost(work)
    script = os.path.join(jobs_dir, "true.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o755)
    srv = start_server(users, workers=2, config=CONFIG, poller=True)
    try:
        body = {"queue": "local", "path": script, "owner": "alice"}
        cpu0, srv0, me0 = machine_cpu(), tree_cpu(srv.proc.pid), sum(os.times()[:2])
        t0 = time.time()
        if args.rate:
            codes = []
            for i in range(args.jobs):
                delay = t0 + i / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                codes.append(srv.root("POST", "/jobs", body).status)
        else:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: srv.root("POST", "/jobs", body).status, range(args.jobs)))
        t_sub = time.time() - t0
        assert codes.count(201) == args.jobs, set(codes)
        deadline = time.time() + 300
        db = sqlite3.connect(srv.db_path)
        while time.time() < deadline:
            n = db.execute("SELECT count(*) FROM jobs WHERE status IN ('TO_BE_QUEUED','DISPATCHING')").fetchone()[0]
            if n == 0:
                break
            time.sleep(0.2)
        # the CPU their whole life took: until every job is over (the poller has read its exit status)
        while time.time() < deadline:
            if not db.execute("SELECT count(*) FROM jobs WHERE status NOT IN ('COMPLETED', 'ERROR', "
                              "'CANCELLED')").fetchone()[0]:
                break
            time.sleep(0.2)
        cpu_all, cpu_srv = machine_cpu() - cpu0, tree_cpu(srv.proc.pid) - srv0
        cpu_me = sum(os.times()[:2]) - me0
        # dispatched = the launcher answered (a local job runs at once: DISPATCHING -> RUNNING)
        rows = db.execute("SELECT j.created_at, e.at FROM jobs j JOIN job_events e ON e.job_id = j.id "
                          "AND e.old_status = 'DISPATCHING' AND e.new_status IN ('QUEUED', 'RUNNING')").fetchall()
        lat = [ts(q) - ts(c) for c, q in rows]
        first_sub = min(ts(c) for c, _ in rows)
        last_q = max(ts(q) for _, q in rows)
        first_q = min(ts(q) for _, q in rows)
        cycles = db.execute("SELECT count(*), avg(duration_ms), max(duration_ms) FROM poll_cycles").fetchone()
        phases = [r[0] for r in db.execute("SELECT summary FROM poll_cycles WHERE summary LIKE '%dispatched%' "
                                           "OR summary LIKE '%completed%' ORDER BY id")]
    finally:
        srv.stop()
    base = baseline(args.baseline_jobs, jobs_dir, script)
    shutil.rmtree(work, ignore_errors=True)
    how = f"paced at {args.rate:g}/s" if args.rate else "one burst, 8 client threads"
    print(f"jobs submitted: {args.jobs} in {t_sub:.2f} s ({args.jobs / t_sub:.0f}/s, {how})")
    print(f"jobs' directory: {jobs_dir} (creating a file there: {create_us:.0f} us; three per job)")
    print(f"{'measure':48} {'value':>12}")
    print(f"{'dispatched (launcher answered)':48} {len(rows):>12}")
    print(f"{'dispatch rate, first to last dispatch (jobs/s)':48} {len(rows) / max(1e-9, last_q - first_q):>12.0f}")
    print(f"{'end-to-end rate, first submit to last dispatch':48} {len(rows) / (last_q - first_sub):>12.0f}")
    print(f"{'submit -> dispatched latency p50 (s)':48} {statistics.median(lat):>12.3f}")
    print(f"{'submit -> dispatched latency p99 (s)':48} {pct(lat, 99):>12.3f}")
    print(f"{'baseline: sequential sudo + sh + setsid (jobs/s)':48} {base:>12.0f}")
    print(f"{'poll cycles / avg ms / max ms':48} {cycles[0]:>4} {cycles[1] or 0:>6.0f} {cycles[2] or 0:>6.0f}")
    print(f"CPU seconds from the first submit to the last job's end ({os.cpu_count()} cores): machine {cpu_all:.2f} "
          f"({cpu_all / args.jobs * 1000:.1f} ms per job) = server {cpu_srv:.2f} + this client {cpu_me:.2f} + "
          f"launchers, jobs, sudo, ps and the rest {cpu_all - cpu_srv - cpu_me:.2f}")
    for s in phases:
        print("   cycle", s)
    print("targets: p50 <= 1 s, >= 200 jobs/s dispatched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
