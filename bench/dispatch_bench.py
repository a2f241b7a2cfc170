"""Dispatch benchmark on the real lab: how fast metasched moves jobs from its API into Grid Engine and
Slurm, next to the raw rate of the same native submissions done by hand over ONE SSH connection, and how
the poll cycle grows with the number of nodes. Everything is measured in the same run, on this machine.

* raw: sequential ``sudo -n -u alice -- <qsub|sbatch> ...`` over one paramiko connection (TCP_NODELAY,
  as the service connects), the same argv shape metasched uses (binary qsub with SGE_ROOT/SGE_CELL).
* metasched: N jobs POSTed to the real server (gunicorn, 2 workers, poller on) over its unix socket
  (root submitting for alice, 4 client threads), timed from the first POST until the database shows all
  N QUEUED (= native submit done and recorded). Both sides submit native HOLDs (``-h`` / ``--hold``,
  through the backends' qsub_args/sbatch_args options) so that nothing runs and the schedulers' own
  load stays the same; the jobs are deleted afterwards.
* poll cycle: the median ``duration_ms`` of idle cycles recorded by the service, with the frontend as
  the only node vs with every lab node (frontend + namespace nodes).

Needs root and a provisioned machine (tests/lab/setup-machine.sh); starts its own lab, so it cannot run
while the integration tests run. Usage:
    PYTHONPATH=$PWD python3 bench/dispatch_bench.py [--jobs 300] [--nodes 4] [--cycles 15]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import pwd
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.lab.lab import Lab, ssh_exec  # noqa: E402
from tests.server.conftest import UnixHTTPConnection, http_request, start_server  # noqa: E402

USER = "alice"


def job_dir(base: pathlib.Path, body: str = "true") -> tuple[pathlib.Path, str]:
    """A directory of USER's with an executable script t.sh running ``body``: (the directory, the script)."""
    pw = pwd.getpwnam(USER)
    d = base / USER
    d.mkdir()
    os.chown(d, pw.pw_uid, pw.pw_gid)
    script = d / "t.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    os.chmod(script, 0o755)
    os.chown(script, pw.pw_uid, pw.pw_gid)
    return d, str(script)


def raw_argv(lab: Lab, kind: str, d: pathlib.Path, script: str, i: int) -> list[str]:
    if kind == "sge":
        return ["sudo", "-n", "-u", USER, "--", "env", *(f"{k}={v}" for k, v in lab.sge_env.items()),
                f"{lab.sge_bin}/qsub", "-terse", "-N", f"raw{i}", "-wd", str(d), "-b", "n", "-h", script]
    return ["sudo", "-n", "-u", USER, "--", "sbatch", "--parsable", "-J", f"raw{i}", "-D", str(d),
            "-o", "raw.o%j", "-e", "raw.e%j", "--hold", script]


def raw_rate(lab: Lab, kind: str, d: pathlib.Path, script: str, n: int) -> float:
    client = lab.connect(0)
    try:
        cmds = [shlex.join(raw_argv(lab, kind, d, script, i)) for i in range(n)]
        t0 = time.monotonic()
        for cmd in cmds:
            rc, out, err = ssh_exec(client, cmd)
            if rc != 0 or not out.strip():
                raise SystemExit(f"raw {kind} submit failed ({rc}): {out} {err}")
        return n / (time.monotonic() - t0)
    finally:
        client.close()


def clean_native(lab: Lab) -> None:
    env = dict(os.environ, **lab.sge_env)
    subprocess.run([f"{lab.sge_bin}/qdel", "-f", "-u", USER], env=env, capture_output=True, timeout=120)
    subprocess.run(["scancel", "-u", USER], capture_output=True, timeout=120)
    for _ in range(200):
        q = subprocess.run([f"{lab.sge_bin}/qstat", "-u", USER], env=env, capture_output=True, text=True).stdout
        s = subprocess.run(["squeue", "-h", "-u", USER, "-t", "PD,R"], capture_output=True, text=True).stdout
        if not q.strip() and not s.strip():
            return
        time.sleep(0.1)


def config(lab: Lab, nodes: list[tuple[str, int]], interval: float) -> dict:
    return {
        "policy": {"name": "shared"},
        "nodes": [{"ip": a, "port": p} for a, p in nodes],
        "schedulers": [
            {"name": "SGE", "master": 0, "weight": 50, "type": "sge",
             "options": {"bin_dir": lab.sge_bin, "env": dict(lab.sge_env), "qsub_args": ["-h"]}},
            {"name": "Slurm", "master": 0, "weight": 50, "type": "slurm",
             "options": {"jobcomp_file": str(lab.jobcomp_path), "sbatch_args": ["--hold"]}},
        ],
        "ssh": {"known_hosts": str(lab.known_hosts), "connect_timeout": 5, "command_timeout": 60},
        "poller": {"interval": interval, "wakeup": 0.2},
    }


def server(lab: Lab, cfg: dict):
    users = {u: pwd.getpwnam(u) for u in lab.users}
    return start_server(users, workers=2, config=cfg, poller=True,
                        extra_args=("--ssh-key-file", str(lab.key_file), "--ssh-user", lab.ssh_user))


def count_queued(db: sqlite3.Connection, queue: str) -> int:
    return db.execute("SELECT count(*) FROM jobs j JOIN queues q ON q.id = j.queue_id "
                      "WHERE q.name = ? AND j.status = 'QUEUED'", (queue,)).fetchone()[0]


def system_rate(srv, queue: str, script: str, d: pathlib.Path, n: int) -> tuple[float, float]:
    """(end-to-end jobs/s from the first POST to all QUEUED, API submit jobs/s)."""
    db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=10)
    base = count_queued(db, queue)
    body = {"queue": queue, "path": script, "pwd": str(d), "owner": USER, "name": "bench"}

    def post(_):
        r = http_request(UnixHTTPConnection(srv.socket_path), "POST", "/jobs", body)
        if r.status != 201:
            raise SystemExit(f"submit failed: {r}")
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, range(n)))
    t_api = time.monotonic() - t0
    while count_queued(db, queue) < base + n:
        if time.monotonic() - t0 > 600:
            raise SystemExit(f"{queue}: not all jobs QUEUED after 600 s")
        time.sleep(0.005)
    total = time.monotonic() - t0
    db.close()
    return n / total, n / t_api


def cycle_ms(srv, cycles: int) -> float:
    db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=10)
    try:
        while True:
            rows = db.execute("SELECT duration_ms FROM poll_cycles ORDER BY id").fetchall()
            if len(rows) >= cycles + 2:      # the first two (connects, first agent run) are warm-up
                return statistics.median(r[0] for r in rows[2:cycles + 2])
            time.sleep(0.2)
    finally:
        db.close()


def agent_round_trip_ms(lab: Lab, parallel: bool, rounds: int = 7) -> float:
    """Median wall time of one node-agent round trip on every node (one open SSH connection each),
    all at once (as the engine fans out) when ``parallel``, else on the frontend alone. In the lab every
    node's agent shares this machine's cores; on a real cluster each runs on its own node."""
    from concurrent.futures import ThreadPoolExecutor as Pool
    from metasched import enforcement
    from metasched.backends import get_backend
    from metasched.model import Queue
    qs = [Queue(1, "SGE", "sge", 1, 50, 0), Queue(2, "Slurm", "slurm", 1, 50, 1)]
    req = enforcement.build_request([(q, 50.0, get_backend(q.type).process_matcher(), []) for q in qs],
                                    method="auto", parent="metasched-bench")
    cmd = enforcement.command(req, None)
    clients = [lab.connect(i) for i in (range(len(lab.nodes)) if parallel else [0])]
    try:
        times = []
        with Pool(len(clients)) as pool:
            for _ in range(rounds):
                t0 = time.monotonic()
                list(pool.map(lambda c: ssh_exec(c, cmd), clients))
                times.append((time.monotonic() - t0) * 1000)
        return statistics.median(times)
    finally:
        for c in clients:
            c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--nodes", type=int, default=4, help="namespace nodes besides the frontend")
    ap.add_argument("--cycles", type=int, default=15)
    args = ap.parse_args()
    lab = Lab(n_nodes=args.nodes)
    lab.start()
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-bench-"))
    os.chmod(base, 0o755)
    rows = []
    try:
        d, script = job_dir(base)
        # poll cycle: 1 node vs every node (idle: no jobs)
        per_nodes = {}
        for label, nodes in (("1 node", lab.node_endpoints[:1]), (f"{len(lab.nodes)} nodes", lab.node_endpoints)):
            srv = server(lab, config(lab, nodes, interval=0.5))
            try:
                per_nodes[label] = cycle_ms(srv, args.cycles)
            finally:
                srv.stop()
                shutil.rmtree(srv.workdir, ignore_errors=True)
        agents = (agent_round_trip_ms(lab, False), agent_round_trip_ms(lab, True))
        # dispatch: raw vs metasched, per scheduler
        srv = server(lab, config(lab, lab.node_endpoints, interval=1))
        try:
            for kind, queue in (("sge", "SGE"), ("slurm", "Slurm")):
                raw = raw_rate(lab, kind, d, script, args.jobs)
                clean_native(lab)
                e2e, api = system_rate(srv, queue, script, d, args.jobs)
                clean_native(lab)
                rows.append((queue, raw, e2e, api))
        finally:
            srv.stop()
            shutil.rmtree(srv.workdir, ignore_errors=True)
    finally:
        clean_native(lab)
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nDispatch of {args.jobs} trivial jobs (native hold), {os.cpu_count()} cores, same run:")
    print(f"{'scheduler':<10} {'raw 1-conn sequential':>22} {'metasched API->QUEUED':>22} {'ratio':>6} {'API submit':>11}")
    for queue, raw, e2e, api in rows:
        print(f"{queue:<10} {raw:>18.1f} j/s {e2e:>18.1f} j/s {e2e / raw:>5.2f}x {api:>7.1f} j/s")
    (l1, v1), (ln, vn) = per_nodes.items()
    print(f"\nIdle poll cycle (median of {args.cycles}): {l1} {v1:.1f} ms, {ln} {vn:.1f} ms, ratio {vn / v1:.2f}x")
    print(f"For comparison, a one-shot node agent (a new session and Python per node per cycle, which the "
          f"service no longer does: it keeps one agent running per node): frontend only {agents[0]:.1f} ms, "
          f"all {len(lab.nodes)} nodes at once {agents[1]:.1f} ms ({agents[1] / agents[0]:.2f}x: they share "
          f"{os.cpu_count()} cores here)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
