#!/usr/bin/env python3
"""What the live metrics cost a poll cycle (issue 15): 200 running jobs on one node, cycles with
``metrics.enabled`` and without it, interleaved in the same run (the baseline).

The real engine (Engine.run_once, the poller's own cycle) on this machine as its only node (transport local,
the node agent kept running as in production), the `local` scheduler, 200 real jobs of alice's (`sleep`)
dispatched by the engine itself, the shares enforced in a cgroup parent of this run's own (removed at the end).
For each cycle: its wall time (the cycle's own duration_ms), the CPU the engine's process used in it (with
its short-lived children: ps, sudo) and the CPU the node agent used answering it. Cycles alternate on, off, on, off... so that the machine's load (other
users of these two cores) hits both alike; the figures are medians.

Two settings with metrics on: the default job_sample_interval (30 s: a cycle updates each job's latest
measurement, and stores samples every 30 s), and a sample every cycle (the worst case: 200 samples a cycle).

Run as root from the repository:  python3 bench/metrics_cycle_bench.py [--jobs 200] [--cycles 40]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pwd
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from metasched import config as cfgmod, lifecycle  # noqa: E402
from metasched.db.core import Database  # noqa: E402
from metasched.db.repository import Repository  # noqa: E402
from metasched.engine import Engine  # noqa: E402
from metasched.identity import Authority  # noqa: E402
from metasched.model import JobStatus  # noqa: E402
from metasched.services import Services  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its descendants, from /proc/<pid>/schedstat (nanoseconds on the CPU: the
    agent's answer to one cycle takes a few ms, under the 10 ms resolution of utime and stime)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
        except OSError:
            continue
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
        todo += children.get(p, [])
    return total / 1e9


def _children() -> float:
    """CPU of the engine's finished child processes (ps, sudo, the launcher): part of a cycle's cost too."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def agent_pid(engine) -> int | None:
    streams = list(engine.agents.streams.values())
    return streams[0].proc.pid if streams else None


def cycle(engine, enabled: bool, interval: float) -> dict:
    engine.config = dataclasses.replace(engine.config, metrics=dataclasses.replace(
        engine.config.metrics, enabled=enabled, job_sample_interval=interval))
    pid = agent_pid(engine)
    a0 = tree_cpu(pid) if pid else 0.0
    c0 = time.process_time() + _children()
    report = engine.run_once(time.time())
    c1 = time.process_time() + _children()
    a1 = tree_cpu(agent_pid(engine)) if agent_pid(engine) == pid and pid else a0
    if report is None:
        raise SystemExit("the engine lost its lease")
    return {"wall": report.duration_ms, "engine": (c1 - c0) * 1000, "agent": (a1 - a0) * 1000,
            "measure": report.summary.get("measure_ms", 0.0), "measured": report.summary.get("measured_jobs", 0),
            "samples": report.summary.get("samples", 0), "errors": report.summarised_errors()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=40, help="per comparison, half of them with metrics")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the jobs run as alice, the agent writes this run's cgroups)")
    alice = pwd.getpwnam("alice")
    base = tempfile.mkdtemp(prefix="metasched-mbench-")
    os.chmod(base, 0o755)
    home = os.path.join(base, "alice")
    os.mkdir(home)
    os.chown(home, alice.pw_uid, alice.pw_gid)
    job = os.path.join(home, "sleep.sh")
    with open(job, "w") as f:
        f.write("#!/bin/sh\nsleep 3600\n")
    os.chmod(job, 0o755)
    parent = f"metasched-mbench-{os.getpid()}"
    cfg = cfgmod.parse({
        "policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
        "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100}],
        "poller": {"interval": 1, "max_dispatch_per_cycle": 1000}, "enforcement": {"parent_group": parent},
        "server": {"database": os.path.join(base, "db.sqlite3")}})
    db = Database(cfg.server.database, synchronous="FULL")
    db.migrate()
    Services(db, cfg, Authority(cfg.auth)).sync_config()
    repo = Repository(db)
    engine = Engine.from_config(cfg, db)
    try:
        with db.write():
            for i in range(args.jobs):
                lifecycle.create(repo, name=f"s{i}", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED,
                                 path=job, options=[], pwd=home, actor="alice", reason="bench", now="2026-01-01")
        t0 = time.monotonic()
        while True:
            engine.run_once(time.time())
            with db.read():
                running = len(repo.list_jobs_in_states([JobStatus.RUNNING]))
            if running == args.jobs:
                break
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"only {running} of {args.jobs} jobs running after 300 s")
        print(f"{args.jobs} jobs running on this node after {time.monotonic() - t0:.1f} s; "
              f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
        for _ in range(3):                               # warm up: groups made, pids placed, rates primed
            cycle(engine, True, 30.0), cycle(engine, False, 30.0)
        rows = []
        for label, interval in (("default (samples every 30 s)", 30.0), ("a sample every cycle", 0.001)):
            on, off = [], []
            for i in range(args.cycles):
                (on if i % 2 == 0 else off).append(cycle(engine, i % 2 == 0, interval))
            errs = {k for r in on + off for k in r["errors"]}
            m = {k: (statistics.median(r[k] for r in on), statistics.median(r[k] for r in off))
                 for k in ("wall", "engine", "agent")}
            rows.append((label, m, statistics.median(r["measure"] for r in on),
                         statistics.median(r["measured"] for r in on), sum(r["samples"] for r in on), errs))
        print(f"\nmedians over {args.cycles // 2} cycles each, interleaved; load now {os.getloadavg()[0]:.1f}")
        print(f"{'metrics on':<30} {'':>4} {'cycle wall ms':>14} {'engine CPU ms':>14} {'agent CPU ms':>13} "
              f"{'engine+agent CPU':>17}")
        for label, m, measure_ms, measured, samples, errs in rows:
            cpu_on, cpu_off = m["engine"][0] + m["agent"][0], m["engine"][1] + m["agent"][1]
            print(f"{label:<30} {'on':>4} {m['wall'][0]:>14.1f} {m['engine'][0]:>14.1f} {m['agent'][0]:>13.1f} "
                  f"{cpu_on:>17.1f}")
            print(f"{'':<30} {'off':>4} {m['wall'][1]:>14.1f} {m['engine'][1]:>14.1f} {m['agent'][1]:>13.1f} "
                  f"{cpu_off:>17.1f}")
            print(f"{'':<30} {'cost':>4} {100 * (m['wall'][0] / m['wall'][1] - 1):>+13.1f}% "
                  f"{100 * (m['engine'][0] / m['engine'][1] - 1):>+13.1f}% "
                  f"{100 * (m['agent'][0] / m['agent'][1] - 1):>+12.1f}% {100 * (cpu_on / cpu_off - 1):>+16.1f}%")
            print(f"{'':<30} {'':>4} measure step {measure_ms:.1f} ms, {measured:.0f} jobs measured a cycle, "
                  f"{samples} samples stored" + (f"; errors: {sorted(errs)}" if errs else ""))
    finally:
        with db.read():
            pgids = [int(j.scheduler_job_id) for j in repo.list_jobs_in_states([JobStatus.RUNNING])
                     if (j.scheduler_job_id or "").isdigit()]
        for pg in pgids:
            try:
                os.killpg(pg, signal.SIGKILL)
            except ProcessLookupError:
                pass
        engine.close()
        db.close()
        time.sleep(0.5)
        for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup"):
            d = os.path.join(root, parent)
            if os.path.isdir(d):
                for sub in sorted(os.listdir(d)):
                    if os.path.isdir(os.path.join(d, sub)):
                        try:
                            os.rmdir(os.path.join(d, sub))
                        except OSError as exc:
                            print(f"could not remove {d}/{sub}: {exc}", file=sys.stderr)
                try:
                    os.rmdir(d)
                except OSError as exc:
                    print(f"could not remove {d}: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
