"""Enforcement benchmark on the real lab: the CPU split metasched achieves between Grid Engine and Slurm
jobs against the split the policy asks for, and how long a new job runs before it is in its group.

Setup: the real server (gunicorn, poller every second) with the lab's frontend as its only node, the node
agent installed as /usr/local/libexec/metasched-node-agent and run through ``sudo -n``. alice runs two
busy-loop jobs in Grid Engine, bob two in Slurm. For each target (shared policy, weights set at runtime
with PUT /cluster/mode {"weights": ...}) the split is measured by this process over ``--seconds`` from
/proc (the job shells' utime+stime) and, for cgroups, from the groups' cpuacct.usage.

Two placements of the four loops: all pinned to one core (taskset in the job: a clean per-core
measurement), and free on both cores (the kernel's load balancing of group weights is approximate).

Baseline, same run: the same jobs with ``enforcement.method: nice`` (what the original implementation
did: renice only; our agent also sets the autogroup nice of sessions led by job processes). This part runs
with ``enforcement.feedback`` off: it measures the mechanism writing exactly the policy's weights.

Feedback (issue 18), first: the same server with the frontend's Spark added, ``enforcement.feedback`` off then on
(same run), jobs not pinned, for 50/50, 70/30, 90/10 (Grid Engine vs Slurm) and 50/30/20 (with a Spark job of
two tasks), once with CPU-bound loops and once with fork-heavy ones (a command forked per loop iteration, in the
shells and in the Spark tasks); ``--settle`` seconds after each change, then ``--seconds`` of measurement from
/proc. ``--feedback-only`` runs just that part.

Placement latency: for ``--new-jobs`` jobs started one after the other, the time from the job process's
start (kernel start time, 10 ms resolution) until /proc/<pid>/cgroup shows its group (cgroup) or its
nice value is the policy's (nice), polled every 5 ms.

Needs root and a provisioned machine (tests/lab/setup-machine.sh); starts its own lab, under the lab's lock
(it waits for a test run that holds it). Usage:
    PYTHONPATH=$PWD python3 bench/enforcement_bench.py [--seconds 20] [--new-jobs 6] [--feedback-only]
                                                       [--settle 25] [--workloads busy,fork]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import pathlib
import pwd
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.integration import cpu_split as cs  # noqa: E402
from tests.integration.real import remove, start_real_server, user_dirs, wait_until  # noqa: E402
from tests.lab.fixtures import LAB_LOCK  # noqa: E402
from tests.lab.lab import Lab  # noqa: E402

TARGETS = ((50, 50), (70, 30), (90, 10))


def nice_of(pid: int) -> int | None:
    f = cs.stat_fields(pid)
    return int(f[16]) if f else None


def acct_usage(group: str) -> int:
    return int((cs.ACCT_ROOT / cs.PARENT / group / "cpuacct.usage").read_text())


def set_weights(srv, sge: int, slurm: int) -> None:
    r = srv.root("PUT", "/cluster/mode", {"policy": "shared", "weights": {"SGE": sge, "Slurm": slurm}})
    if r.status != 200:
        raise SystemExit(f"PUT /cluster/mode failed: {r}")


def applied(method: str, groups: dict, sge: int, slurm: int) -> bool:
    if method == "nice":
        return True   # checked on the processes below
    return (cs.shares_of(groups["SGE"]), cs.shares_of(groups["Slurm"])) == (cs.v1(sge), cs.v1(slurm))


def splits(srv, users, dirs, method: str, pin: int | None, seconds: float) -> list[tuple]:
    groups = cs.queue_groups(srv)
    tag = f"{method}{'p' if pin is not None else 'f'}"
    sge = cs.start_busy(srv, users, dirs["alice"], "SGE", "alice", cpu=pin, tag=tag)
    slurm = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", cpu=pin, tag=tag)
    rows = []
    try:
        for a, b in TARGETS:
            set_weights(srv, a, b)
            wait_until(f"{a}/{b} applied", lambda: applied(method, groups, a, b), timeout=10, interval=0.05)
            time.sleep(2.5)    # two cycles: every pid placed / reniced for this split
            u0 = {q: acct_usage(g) for q, g in groups.items() if q in ("SGE", "Slurm")} if method != "nice" else {}
            pct, ca, cb = cs.measure(sge, slurm, seconds)
            acct = None
            if u0:
                d = {q: acct_usage(groups[q]) - u0[q] for q in u0}
                acct = 100.0 * d["SGE"] / (d["SGE"] + d["Slurm"])
            nices = (sorted({nice_of(p) for p in sge.pids}), sorted({nice_of(p) for p in slurm.pids}))
            rows.append((method, "1 core" if pin is not None else "2 cores", f"{a}/{b}", pct, acct, ca + cb, nices))
            print(f"  {method:<6} {rows[-1][1]:<7} target {a}/{b}: SGE {pct:.1f} % (/proc), "
                  f"{'-' if acct is None else f'{acct:.1f} %'} (cpuacct), {ca + cb:.2f} cores, nice {nices}",
                  flush=True)
    finally:
        cs.stop_and_wait(srv, sge)
        cs.stop_and_wait(srv, slurm)
    return rows


def placement(srv, users, dirs, method: str, n: int) -> list[float]:
    """Seconds from each new job's start to its placement (group, or the policy's nice value)."""
    groups = cs.queue_groups(srv)
    set_weights(srv, 70, 30)
    time.sleep(2.5)
    out = []
    for i in range(n):
        # renice has nothing to do for the 70 % scheduler (nice 0): time Slurm's jobs only then
        queue, user = ("Slurm", "bob") if method == "nice" or i % 2 else ("SGE", "alice")
        pidfile = dirs[user] / f"pid-place{method}{i}"
        stop = dirs[user] / f"stop-place{method}{i}"
        path = cs.script(dirs[user] / "busy.sh", cs.BUSY, users[user])
        job = cs.submit(srv, user, {"queue": queue, "path": path, "name": f"place{i}", "pwd": str(dirs[user]),
                                    "options": [str(pidfile), str(stop), "120", ""]})
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job['id']} never started")
            time.sleep(0.005)
        pid = int(pidfile.read_text())
        started = cs.process_start_epoch(pid)
        while not (cs.in_group(pid, groups[queue]) if method != "nice" else nice_of(pid) == 4):  # 70/30 -> nice 4
            if time.monotonic() > deadline:
                enf = srv.root("GET", "/cluster/nodes/master").json().get("enforcement")
                print(f"  {method}: job {job['id']} (pid {pid}, nice {nice_of(pid)}, cpu {cs.cgroup_of(pid)}) not "
                      f"placed within 60 s; node view: {enf}", flush=True)
                out.append(float("inf"))
                break
            time.sleep(0.005)
        else:
            out.append(time.time() - started)
        stop.touch()
        cs.wait_job(srv, user, job["id"], {"COMPLETED", "ERROR", "CANCELLED"}, timeout=60)
        time.sleep(0.37 * (i + 1) % 1.0)    # start the next one at another point of the cycle
    return out


FEEDBACK_TARGETS = ((50, 50, 0), (70, 30, 0), (90, 10, 0), (50, 30, 20))
SPARK_APP = pathlib.Path(REPO) / "tests" / "integration" / "spark" / "app.py"


def spark_share(srv, weights) -> None:
    names = ("SGE", "Slurm", "Spark")
    r = srv.root("PUT", "/cluster/mode", {"policy": "shared", "weights": dict(zip(names, weights))})
    if r.status != 200:
        raise SystemExit(f"PUT /cluster/mode failed: {r}")


def feedback_splits(lab, users, dirs, workload: str, feedback: bool, seconds: float, settle: float) -> list[tuple]:
    """Grid Engine, Slurm (two jobs each) and, for the three-way target, a Spark job (two tasks) on the frontend's
    2 cores, not pinned, with the feedback step on or off; each split measured from /proc by this process."""
    from tests.lab.fixtures import spark_scheduler
    spark = lab.start_spark()
    cfg = cs.enforcement_config(lab, weights=(50, 50), feedback=feedback)
    cfg["schedulers"].append(spark_scheduler(spark, weight=0))
    srv = start_real_server(lab, users, cfg)
    rows = []
    tag = f"{workload}{int(feedback)}"
    app = dirs["alice"] / "app.py"
    app.write_bytes(SPARK_APP.read_bytes())
    os.chown(app, users["alice"].pw_uid, users["alice"].pw_gid)
    sge = cs.start_busy(srv, users, dirs["alice"], "SGE", "alice", tag=tag, loop=workload, safety_seconds=3600)
    slurm = cs.start_busy(srv, users, dirs["bob"], "Slurm", "bob", tag=tag, loop=workload, safety_seconds=3600)
    try:
        for weights in FEEDBACK_TARGETS:
            spark_share(srv, weights)
            job = None
            if weights[2]:
                job = cs.submit(srv, "alice", {"queue": "Spark", "path": str(app), "name": f"bench{tag}",
                                                "options": [workload, str(int(settle + seconds + 120))],
                                                "pwd": str(dirs["alice"])})
                wait_until("both Spark tasks running", lambda: len(cs.pyspark_workers()) >= 2, timeout=240,
                           interval=0.2)
            time.sleep(settle)          # the feedback (when on) corrects the weights meanwhile
            trees = [sge.pids, slurm.pids, cs.spark_pids() if job else set()]
            t0 = time.monotonic()
            u0 = [cs.ticks_of(t) for t in trees]
            time.sleep(seconds)
            u1 = [cs.ticks_of(t) for t in trees]
            dt = time.monotonic() - t0
            if not all(cs.pid_alive(p) for p in sge.pids + slurm.pids):
                raise SystemExit("a Grid Engine or Slurm job ended during a measurement")
            used = [cs.used_between(a, b) for a, b in zip(u0, u1)]
            split = [100.0 * u / sum(used) for u in used]
            enf = srv.root("GET", "/cluster/nodes/master").json()["enforcement"]
            written = {r["name"]: r.get("written_share") for r in enf["schedulers"]}
            capped = {r["name"]: r["cap_cores"] for r in enf["schedulers"] if r.get("cap_cores")}
            rows.append((workload, feedback, weights, split, [written.get(n) for n in ("SGE", "Slurm", "Spark")],
                         sum(used) / cs.HZ / dt))
            print(f"  {workload:<5} feedback {'on ' if feedback else 'off'} target {'/'.join(map(str, weights))}: "
                  f"achieved {'/'.join(f'{x:.1f}' for x in split)} written {written} "
                  f"({rows[-1][-1]:.2f} cores)" + (f" capped (cores) {capped}" if capped else ""), flush=True)
            if job:
                srv.as_user("alice", "DELETE", f"/jobs/{job['id']}")
                cs.wait_job(srv, "alice", job["id"], {"COMPLETED", "ERROR", "CANCELLED"}, timeout=120)
                wait_until("the Spark executors gone", lambda: not cs.pyspark_workers(), timeout=60)
    finally:
        cs.stop_and_wait(srv, sge)
        cs.stop_and_wait(srv, slurm)
        srv.stop()
        cs.lift_caps()                  # the server's last request may have had a cap
        remove(pathlib.Path(srv.workdir))
    return rows


def print_feedback(rows, seconds: float) -> None:
    print(f"\nCPU split with and without the feedback step, shared policy, 2 cores not pinned, {seconds:.0f} s each; "
          "Grid Engine (2 jobs) / Slurm (2 jobs) [/ Spark (1 job, 2 tasks)], measured from /proc:")
    print(f"{'workload':<9} {'target':>9} {'feedback off':>17} {'error':>6} {'feedback on':>17} {'error':>6} "
          f"{'written (on)':>18}")
    by = {(w, fb, t): (s, wr) for w, fb, t, s, wr, _ in rows}
    for workload in ("busy", "fork"):
        for t in FEEDBACK_TARGETS:
            off, on = by.get((workload, False, t)), by.get((workload, True, t))
            if not (off or on):
                continue
            n = 3 if t[2] else 2

            def fmt(x):
                return "/".join(f"{v:.1f}" for v in x[0][:n]) if x else "-"

            def err(x):
                return f"{max(abs(a - b) for a, b in zip(x[0][:n], t)):.1f}" if x else "-"
            wr = "/".join(f"{v:.1f}" for v in on[1][:n]) if on and all(v is not None for v in on[1][:n]) else "-"
            print(f"{'fork-heavy' if workload == 'fork' else 'CPU-bound':<9} {'/'.join(map(str, t[:n])):>9} "
                  f"{fmt(off):>17} {err(off):>6} {fmt(on):>17} {err(on):>6} {wr:>18}")
    print("error: the largest distance (points) of any scheduler's share from its target")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--new-jobs", type=int, default=6)
    ap.add_argument("--no-baseline", action="store_true", help="skip the renice-only baseline")
    ap.add_argument("--feedback-only", action="store_true",
                    help="only the feedback comparison (fork-heavy and CPU-bound, with Spark)")
    ap.add_argument("--settle", type=float, default=25.0, help="seconds after each change before measuring")
    ap.add_argument("--workloads", default="busy,fork", help="the feedback comparison's workloads (busy, fork)")
    args = ap.parse_args()
    users = {u: pwd.getpwnam(u) for u in ("alice", "bob")}
    lock = open(LAB_LOCK, "a+")        # the lab's machine-wide lock (tests/lab/fixtures.py): wait for a test run
    fcntl.flock(lock, fcntl.LOCK_EX)
    lab = Lab(n_nodes=0)
    lab.start()
    base, dirs = user_dirs(users, prefix="metasched-enfbench-")
    rows, latency, fb_rows = [], {}, []
    try:
        with cs.installed_agent():
            for workload in args.workloads.split(","):
                for feedback in (False, True):
                    fb_rows += feedback_splits(lab, users, dirs, workload, feedback, args.seconds, args.settle)
            for method in () if args.feedback_only else ("cgroup",) + (() if args.no_baseline else ("nice",)):
                cfg = cs.enforcement_config(lab, weights=(50, 50), feedback=False)   # the mechanism alone
                cfg["enforcement"]["method"] = method
                srv = start_real_server(lab, users, cfg)
                try:
                    for pin in (1, None):
                        rows += splits(srv, users, dirs, method, pin, args.seconds)
                    latency[method] = placement(srv, users, dirs, method, args.new_jobs)
                finally:
                    srv.stop()
                    remove(pathlib.Path(srv.workdir))
    finally:
        remove(base)
        lab.stop()

    print_feedback(fb_rows, args.seconds)
    if not rows:
        return
    print(f"\nCPU split, shared policy, Grid Engine (2 busy jobs) vs Slurm (2 busy jobs), {args.seconds:.0f} s each,"
          f" {os.cpu_count()} cores; SGE's share of the CPU the two used:")
    print(f"{'mechanism':<10} {'loops on':<8} {'target':>7} {'achieved /proc':>15} {'cpuacct':>8} {'error':>6} "
          f"{'CPU used':>9}")
    for method, where, target, pct, acct, cores, _ in rows:
        err = pct - float(target.split("/")[0])
        print(f"{method:<10} {where:<8} {target:>7} {pct:>13.1f} % {'-' if acct is None else f'{acct:.1f} %':>8} "
              f"{err:>+6.1f} {cores:>5.2f} cores")
    for method, lat in latency.items():
        if lat:
            print(f"\n{method}: time from a new job's start to its placement ({len(lat)} jobs, poller interval 1 s): "
                  f"median {statistics.median(lat):.2f} s, max {max(lat):.2f} s, all: "
                  + ", ".join(f"{x:.2f}" for x in lat))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
