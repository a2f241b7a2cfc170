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
did: renice only; our agent also sets the autogroup nice of sessions led by job processes).

Placement latency: for ``--new-jobs`` jobs started one after the other, the time from the job process's
start (kernel start time, 10 ms resolution) until /proc/<pid>/cgroup shows its group (cgroup) or its
nice value is the policy's (nice), polled every 5 ms.

Needs root and a provisioned machine (tests/lab/setup-machine.sh); starts its own lab: run it under the
lab lock. Usage:
    PYTHONPATH=$PWD flock /work/lab.lock python3 bench/enforcement_bench.py [--seconds 20] [--new-jobs 6]
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--new-jobs", type=int, default=6)
    ap.add_argument("--no-baseline", action="store_true", help="skip the renice-only baseline")
    args = ap.parse_args()
    users = {u: pwd.getpwnam(u) for u in ("alice", "bob")}
    lab = Lab(n_nodes=0)
    lab.start()
    base, dirs = user_dirs(users, prefix="metasched-enfbench-")
    rows, latency = [], {}
    try:
        with cs.installed_agent():
            for method in ("cgroup",) + (() if args.no_baseline else ("nice",)):
                cfg = cs.enforcement_config(lab, weights=(50, 50))
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
