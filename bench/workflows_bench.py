"""Arrays benchmark on the real lab (issue 16): a 10,000-task array through metasched, next to one raw native
array submission of the same size in the same run, and the poll cycle with 10,000 tasks queued vs none.

* accepted: the wall time of the POST /jobs of a 10,000-task array (the job row, 10,000 task rows, its event),
  over the service's unix socket, answered 201;
* in the scheduler's queue: from that POST until the scheduler lists the array with all its tasks (qstat -xml:
  one pending line plus the running one; squeue: 18_[2-10000%1] plus 18_1), next to a raw ``qsub -t 1-10000
  -tc 1`` / ``sbatch --array=1-10000%1`` run by hand as alice over one SSH connection (TCP_NODELAY, the same
  sudo and binaries as the service), timed from the command until the scheduler lists it the same way;
* the poll cycle: median ``duration_ms`` of the service's own cycles with nothing in flight, then with the
  10,000-task Grid Engine array queued, then with the Slurm one too (20,000 tasks followed each cycle).

The arrays' tasks sleep, at most one running at a time (%1): the schedulers' queues hold ~10,000 pending tasks
and the machine stays quiet. Everything is cancelled at the end. Needs root and a provisioned machine
(tests/lab/setup-machine.sh); takes the lab lock, so it waits for a running test session. Usage:
    PYTHONPATH=$PWD /opt/metasched/venv/bin/python bench/workflows_bench.py [--tasks 10000] [--cycles 10]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import pathlib
import pwd
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.dispatch_bench import job_dir  # noqa: E402
from tests.lab.fixtures import LAB_LOCK  # noqa: E402
from tests.lab.lab import Lab, ssh_exec  # noqa: E402
from tests.server.conftest import UnixHTTPConnection, http_request, start_server  # noqa: E402

USER = "alice"


def sge(lab: Lab, *args: str) -> str:
    return subprocess.run([f"{lab.sge_bin}/{args[0]}", *args[1:]], env=dict(os.environ, **lab.sge_env),
                          capture_output=True, text=True, timeout=120).stdout


def sge_listed(lab: Lab, name: str, n: int) -> bool:
    """Grid Engine lists the array named ``name`` with all its n tasks (running ones, pending ranges)."""
    out = sge(lab, "qstat", "-u", "*", "-xml")
    seen = 0
    for e in ET.fromstring(out).iter("job_list") if out.strip() else ():
        if e.findtext("JB_name") == name:
            for part in (e.findtext("tasks") or "").split(","):
                m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
                if m:
                    a, b, s = int(m.group(1)), int(m.group(2) or m.group(1)), int(m.group(3) or 1)
                    seen += (b - a) // s + 1
    return seen >= n


def slurm_listed(name: str, n: int) -> bool:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], env=dict(os.environ, SLURM_BITSTR_LEN="0"),
                         capture_output=True, text=True, timeout=60).stdout
    seen = 0
    for line in out.split():
        m = re.fullmatch(r"\d+_(?:(\d+)|\[([^\]%]*)(?:%\d+)?\])", line)
        if not m:
            continue
        if m.group(1):
            seen += 1
            continue
        for part in m.group(2).split(","):
            a, _, b = part.partition("-")
            b, _, s = b.partition(":")
            seen += (int(b or a) - int(a)) // int(s or 1) + 1
    return seen >= n


def wait(what: str, check, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def raw(lab: Lab, kind: str, d: pathlib.Path, script: str, n: int) -> tuple[float, float]:
    """(seconds for the native submit, seconds until the scheduler lists every task) of one raw array."""
    name = f"raw{kind}{int(time.time())}"
    if kind == "sge":
        argv = ["sudo", "-n", "-u", USER, "--", "env", *(f"{k}={v}" for k, v in lab.sge_env.items()),
                f"{lab.sge_bin}/qsub", "-terse", "-N", name, "-wd", str(d), "-t", f"1-{n}", "-tc", "1", "-b", "n",
                script]
    else:
        argv = ["sudo", "-n", "-u", USER, "--", "sbatch", "--parsable", "-J", name, "-D", str(d), "-o", "raw.o%A.%a",
                "-e", "raw.e%A.%a", f"--array=1-{n}%1", script]
    client = lab.connect(0)
    try:
        t0 = time.monotonic()
        rc, out, err = ssh_exec(client, shlex.join(argv))
        submitted = time.monotonic() - t0
        if rc != 0:
            raise SystemExit(f"raw {kind} array submit failed ({rc}): {out} {err}")
    finally:
        client.close()
    listed = wait(f"raw {kind} array listed", lambda: sge_listed(lab, name, n) if kind == "sge"
                  else slurm_listed(name, n))
    return submitted, submitted + listed


def config(lab: Lab, interval: float) -> dict:
    return {
        "policy": {"name": "shared"},
        "nodes": [{"ip": a, "port": p} for a, p in lab.node_endpoints[:1]],
        "schedulers": [
            {"name": "SGE", "master": 0, "weight": 50, "type": "sge",
             "options": {"bin_dir": lab.sge_bin, "env": dict(lab.sge_env)}},
            {"name": "Slurm", "master": 0, "weight": 50, "type": "slurm",
             "options": {"jobcomp_file": str(lab.jobcomp_path)}},
        ],
        "ssh": {"known_hosts": str(lab.known_hosts), "connect_timeout": 5, "command_timeout": 60},
        "poller": {"interval": interval, "wakeup": 0.2},
        "workflows": {"max_array_tasks": 100000},
    }


def through_metasched(srv, lab: Lab, queue: str, d: pathlib.Path, script: str, n: int) -> tuple[float, float]:
    """(seconds for POST /jobs of the array, seconds from the POST until the scheduler lists every task)."""
    body = {"queue": queue, "path": script, "pwd": str(d), "owner": USER, "name": "bench", "array": f"1-{n}%1"}
    t0 = time.monotonic()
    r = http_request(UnixHTTPConnection(srv.socket_path, timeout=60), "POST", "/jobs", body)
    accepted = time.monotonic() - t0
    if r.status != 201:
        raise SystemExit(f"submit failed: {r}")
    name = r.json()["native_name"]
    listed = wait(f"{queue} array listed", lambda: sge_listed(lab, name, n) if queue == "SGE"
                  else slurm_listed(name, n))
    return accepted, accepted + listed


def cycles_ms(srv, after_id: int, n: int) -> tuple[float, int]:
    """Median duration of the n cycles recorded after cycle ``after_id`` (and the last one's id)."""
    db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=10)
    try:
        while True:
            rows = db.execute("SELECT id, duration_ms FROM poll_cycles WHERE id > ? ORDER BY id", (after_id,)).fetchall()
            if len(rows) >= n + 1:          # the first after a change does its one-off work (the dispatch)
                rows = rows[1:n + 1]
                return statistics.median(r[1] for r in rows), rows[-1][0]
            time.sleep(0.2)
    finally:
        db.close()


def last_cycle(srv) -> int:
    db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT coalesce(max(id), 0) FROM poll_cycles").fetchone()[0]
    finally:
        db.close()


def open_tasks(srv) -> int:
    db = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT count(*) FROM array_tasks WHERE status IN ('QUEUED', 'RUNNING')").fetchone()[0]
    finally:
        db.close()


def clean(lab: Lab) -> None:
    sge(lab, "qdel", "-f", "-u", USER)
    subprocess.run(["scancel", "-u", USER], capture_output=True, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--cycles", type=int, default=10)
    args = ap.parse_args()
    n = args.tasks
    lock = open(LAB_LOCK, "a+")
    t_lock = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_EX)           # one lab per machine: wait for a running test session
    waited = time.monotonic() - t_lock
    lab = Lab(n_nodes=0)
    lab.start()
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-wfbench-"))
    os.chmod(base, 0o755)
    rows, cycle = [], {}
    try:
        d, script = job_dir(base, "sleep 3600")
        for kind in ("sge", "slurm"):
            rows.append((kind, raw(lab, kind, d, script, n)))
            clean(lab)
        srv = start_server({u: pwd.getpwnam(u) for u in lab.users}, workers=2, config=config(lab, interval=1),
                           poller=True, extra_args=("--ssh-key-file", str(lab.key_file), "--ssh-user", lab.ssh_user))
        try:
            cycle["nothing queued"], last = cycles_ms(srv, last_cycle(srv) + 1, args.cycles)
            for queue in ("SGE", "Slurm"):
                rows.append((queue, through_metasched(srv, lab, queue, d, script, n)))
                wait(f"{queue}: every task followed", lambda: open_tasks(srv) >= n * (1 + (queue == "Slurm")), 120)
                cycle[f"{open_tasks(srv):,} tasks queued"], last = cycles_ms(srv, last_cycle(srv), args.cycles)
        finally:
            srv.stop()
            shutil.rmtree(srv.workdir, ignore_errors=True)
    finally:
        clean(lab)
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)
        lock.close()

    raw_rows = dict(rows[:2])
    print(f"\nA {n:,}-task array (at most 1 task running), {os.cpu_count()} cores, same run "
          f"(waited {waited:.0f} s for the lab lock):")
    print(f"{'scheduler':<10} {'raw submit':>11} {'raw: all listed':>16} {'metasched accepted':>19} "
          f"{'metasched: all listed':>22} {'ratio':>6}")
    for (kind, (r_sub, r_all)), (queue, (m_acc, m_all)) in zip(raw_rows.items(), rows[2:]):
        print(f"{queue:<10} {r_sub:>9.2f} s {r_all:>14.2f} s {m_acc:>17.3f} s {m_all:>20.2f} s "
              f"{m_all / r_all:>5.2f}x")
    print("\nPoll cycle (median of the service's own cycles, duration_ms):")
    for label, ms in cycle.items():
        print(f"  {label:<24} {ms:8.1f} ms")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
