"""API benchmark: the real service (``python3 -m metasched``, gunicorn, --no-poller) on a unix socket,
driven by a load generator on this machine, compared in the same run with
  * a trivial WSGI app under the same gunicorn settings (the ceiling of the stack), and
  * raw SQLite doing what a submit stores (job + event in one BEGIN IMMEDIATE, same pragmas).

Scenarios: submit (POST /jobs), get (GET /jobs/<id>), list (GET /jobs?limit=100 out of 10,000 jobs),
each at concurrency 1, 8 and 32; req/s, p50/p99 latency, errors; RSS per worker from /proc.

The load generator runs several processes with a few threads each, speaking HTTP/1.1 on raw sockets with
pre-built requests; it reuses a connection when the server keeps it alive and reconnects when the server
closes it (gunicorn's sync workers close after every response, so each request then pays a connect).
It shares the machine's cores with the server: the figures are for "client and server on one box".

Usage: PYTHONPATH=$PWD python3 bench/api_bench.py [--duration 3] [--workers 4] [--concurrency 1,8,32]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIG = """
policy: {name: shared}
nodes: [{ip: 127.0.0.1, transport: local}]
schedulers: [{name: local, type: local, master: 0, weight: 100}]
"""
PREFILL = 10_000
OWNER = "alice"   # root submits on behalf of an ordinary user (root never owns jobs)


# -- HTTP client on raw sockets -------------------------------------------------------------------

def build_request(method: str, path: str, body: dict | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


class Conn:
    """One client connection that follows the server's keep-alive decision."""

    def __init__(self, path: str):
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.path)
        self.sock, self.buf = s, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, raw: bytes) -> int:
        """Send one request, read the whole response, return its status (0: connection failed)."""
        for attempt in (0, 1):
            fresh = self.sock is None
            if fresh:
                self._connect()
            try:
                self.sock.sendall(raw)
                return self._read_response()
            except (ConnectionError, _Closed):
                self.close()
                if fresh or attempt:   # a kept-alive connection may have been closed by the server: retry once
                    return 0
        return 0

    def _read_response(self) -> int:
        buf = self.buf
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _Closed()
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = None, lines[0].startswith(b"HTTP/1.0")
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection":
                close = v.strip().lower() == b"close"
        if length is None:          # body ends at EOF
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
            close = True
            rest = b""
        else:
            while len(rest) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise _Closed()
                rest += chunk
            rest = rest[length:]
        if close:
            self.close()
        else:
            self.buf = rest
        return status


class _Closed(Exception):
    pass


def _client_process(path, requests, expect, threads, t_start, t_end, out):
    """One load-generator process: ``threads`` closed-loop clients; latencies of requests inside the window."""
    lat: list[float] = []
    errors, total = [0], [0]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def loop(seed: int) -> None:
        rnd = random.Random(seed)
        conn = Conn(path)
        my_lat, my_err, my_st, my_total = [], 0, {}, 0
        n = len(requests)
        while True:
            t0 = time.time()
            if t0 >= t_end:
                break
            st = conn.request(requests[rnd.randrange(n)])
            t1 = time.time()
            my_total += 1
            if t0 >= t_start and t1 <= t_end:
                my_lat.append(t1 - t0)
                my_st[st] = my_st.get(st, 0) + 1
                if st != expect:
                    my_err += 1
        conn.close()
        with lock:
            total[0] += my_total
            lat.extend(my_lat)
            errors[0] += my_err
            for k, v in my_st.items():
                statuses[k] = statuses.get(k, 0) + v

    ts = [threading.Thread(target=loop, args=(os.getpid() * 1000 + i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, errors[0], statuses, total[0]))


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]          # everything but idle and iowait


def _proc_jiffies(pids: list[int]) -> int:
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return t


class CpuWindow:
    """CPU used during a cell by the server's workers, by our load generator, and by everything else
    on the machine (other people's jobs): the last one says how much the figures can be trusted."""

    def __init__(self, server_pids: list[int]):
        self.pids = server_pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.t0 = time.time()
        self.busy0, self.srv0 = _busy_jiffies(), _proc_jiffies(self.pids)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        self.cli0 = sum(r.ru_utime + r.ru_stime for r in ru)
        return self

    def __exit__(self, *exc):
        wall = self.wall = time.time() - self.t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        client = sum(r.ru_utime + r.ru_stime for r in ru) - self.cli0
        server = (_proc_jiffies(self.pids) - self.srv0) / self.hz
        busy = (_busy_jiffies() - self.busy0) / self.hz
        ncpu = os.cpu_count() or 1
        self.result = {"server_cpu": server / wall, "client_cpu": client / wall,
                       "other_cpu": max(0.0, busy - server - client) / wall, "ncpu": ncpu}
        return False


def run_load(path: str, requests: list[bytes], expect: int, concurrency: int, duration: float,
             warmup: float = 0.5, server_pids: list[int] | None = None) -> dict:
    procs_n = min(concurrency, 4)
    per = [concurrency // procs_n + (1 if i < concurrency % procs_n else 0) for i in range(procs_n)]
    t_start = time.time() + 0.3 + warmup        # 0.3 s to fork the clients, then warm-up
    t_end = t_start + duration
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(path, requests, expect, k, t_start, t_end, out))
             for k in per]
    with CpuWindow(server_pids or []) as cpu:
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    statuses: dict[int, int] = {}
    for r in results:
        for k, v in r[2].items():
            statuses[k] = statuses.get(k, 0) + v
    requests_done = sum(r[3] for r in results)   # warm-up included: the CPU window covers it too
    cpu.result["server_ms_per_req"] = cpu.result["server_cpu"] * cpu.wall / max(1, requests_done) * 1000
    cpu.result["client_ms_per_req"] = cpu.result["client_cpu"] * cpu.wall / max(1, requests_done) * 1000
    return summarize(lat, errors, duration, statuses, cpu.result)


def summarize(lat: list[float], errors: int, duration: float, statuses=None, cpu=None) -> dict:
    n = len(lat)
    pct = (lambda q: lat[min(n - 1, int(q * n))] * 1000) if n else (lambda q: float("nan"))
    return {"n": n, "rps": n / duration, "p50": pct(0.50), "p99": pct(0.99), "errors": errors,
            "statuses": statuses or {}, "cpu": cpu}


# -- servers ------------------------------------------------------------------------------------

class Server:
    def __init__(self, argv: list[str], sock: str, stderr_path: str, env: dict):
        self.sock = sock
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}:\n{open(stderr_path).read()}")
            try:
                c = Conn(sock)
                if c.request(build_request("GET", "/status")) == 200:
                    c.close()
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            self.stop()
            raise SystemExit(f"server not ready:\n{open(stderr_path).read()}")
        time.sleep(0.5)   # let every worker finish booting

    def worker_pids(self) -> list[int]:
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == self.proc.pid:
                    pids.append(int(d))
        return pids

    def rss_mb(self) -> list[float]:
        out = []
        for pid in self.worker_pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out.append(int(line.split()[1]) / 1024)
            except OSError:
                pass
        return out

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- data ---------------------------------------------------------------------------------------

def prefill(db_path: str, n: int) -> list[int]:
    """n jobs through the repository (the same statements the service runs), one transaction."""
    from metasched.db.core import Database, utcnow
    from metasched.db.repository import Repository
    from metasched.model import JobStatus
    db = Database(db_path)
    repo = Repository(db)
    ids = []
    now = utcnow()
    with db.write():
        queue_id = db.conn.execute("SELECT id FROM queues WHERE name = 'local'").fetchone()[0]
        for i in range(n):
            job = repo.insert_job(name=f"prefill-{i}", queue_id=queue_id, owner=OWNER, status=JobStatus.TO_BE_QUEUED,
                                  path="/bin/true", options=["-x", str(i)], pwd="/bin", token=None, now=now)
            repo.insert_job_event(job_id=job.id, old_status=None, new_status=JobStatus.TO_BE_QUEUED, actor="root",
                                  reason="submitted", now=now)
            ids.append(job.id)
    db.close()
    return ids


def _raw_sqlite_worker(db_path: str, t_start: float, t_end: float, out) -> None:
    from metasched.db.core import QUERIES, Database, utcnow
    conn = Database(db_path).connect()       # same pragmas as the service
    queue_id = conn.execute("SELECT id FROM queues WHERE name = 'local'").fetchone()[0]
    lat, errors = [], 0
    opts = json.dumps([])
    while True:
        t0 = time.time()
        if t0 >= t_end:
            break
        now = utcnow()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(QUERIES.insert_job, dict(name="raw", queue_id=queue_id, owner=OWNER,
                                                        status="TO_BE_QUEUED", path="/bin/true", options=opts,
                                                        pwd="/bin", now=now)).fetchone()
            conn.execute(QUERIES.insert_job_event, dict(job_id=row["id"], old_status=None,
                                                        new_status="TO_BE_QUEUED", actor="root",
                                                        reason="submitted", now=now))
            conn.execute("COMMIT")
        except sqlite3.Error:
            errors += 1
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        t1 = time.time()
        if t0 >= t_start and t1 <= t_end:
            lat.append(t1 - t0)
    conn.close()
    out.put((lat, errors))


def raw_sqlite(db_path: str, processes: int, duration: float) -> dict:
    t_start = time.time() + 0.5
    t_end = t_start + duration
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    ps = [ctx.Process(target=_raw_sqlite_worker, args=(db_path, t_start, t_end, out)) for _ in range(processes)]
    for p in ps:
        p.start()
    res = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return summarize(sorted(x for r in res for x in r[0]), sum(r[1] for r in res), duration)


# -- main ---------------------------------------------------------------------------------------

TARGETS = {  # at the highest concurrency
    "submit": ("rps", ">=", 1500), "get": ("rps", ">=", 3000), "list": ("rps", ">=", 800),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell (after 0.5 s warm-up)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (db, server logs)")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    top = max(levels)

    if os.geteuid() != 0:
        print("note: run as root (the benchmark submits on behalf of alice)", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="metasched-bench-")
    cfg = os.path.join(work, "bench.config")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows: list[tuple[str, int, dict]] = []
    rss: dict[str, list[float]] = {}
    servers = []
    try:
        # -- metasched ---------------------------------------------------------------------------
        sock, db = os.path.join(work, "api.sock"), os.path.join(work, "db.sqlite3")
        svc = Server([sys.executable, "-m", "metasched", cfg, "--socket", sock, "--port", "0", "--database-file", db,
                      "--workers", str(args.workers), "--no-poller", "--log-level", "warning"],
                     sock, os.path.join(work, "metasched.stderr"), env)
        servers.append(svc)
        t = time.time()
        ids = prefill(db, PREFILL)
        print(f"prefilled {len(ids)} jobs in {time.time() - t:.2f} s", file=sys.stderr)
        rss["metasched (idle)"] = svc.rss_mb()

        get_reqs = [build_request("GET", f"/jobs/{i}") for i in random.Random(1).sample(ids, 500)]
        list_reqs = [build_request("GET", f"/jobs?limit=100&after={ids[0] - 1 + a}")
                     for a in random.Random(2).sample(range(0, PREFILL - 100), 500)]
        submit_reqs = [build_request("POST", "/jobs", {"queue": "local", "path": "/bin/true", "owner": OWNER,
                                                        "name": f"bench-{i}", "options": ["-n", str(i)]})
                       for i in range(200)]
        # sanity: the requests do what they say
        c = Conn(sock)
        for raw, want in ((get_reqs[0], 200), (list_reqs[0], 200), (submit_reqs[0], 201)):
            st = c.request(raw)
            assert st == want, (raw[:80], st)
        c.close()

        # -- trivial app, same gunicorn settings, up at the same time (idle workers cost nothing) ----
        tsock = os.path.join(work, "trivial.sock")
        triv = Server([sys.executable, os.path.join(REPO, "bench", "trivial_server.py"), cfg, tsock,
                       str(args.workers)], tsock, os.path.join(work, "trivial.stderr"), env)
        servers.append(triv)
        treq = [build_request("GET", "/jobs/1")]

        # Each metasched cell runs right after the trivial cell of the same concurrency, so that a
        # ratio compares two measurements taken under the same background load.
        plan = [("trivial", triv, treq, 200), ("get", svc, get_reqs, 200)]
        plan2 = [("list", svc, list_reqs, 200), ("submit", svc, submit_reqs, 201)]
        for group in (plan, plan2):
            for conc in levels:
                for name, srv, reqs, expect in group:
                    r = run_load(srv.sock, reqs, expect, conc, args.duration, server_pids=srv.worker_pids())
                    rows.append((name, conc, r))
                    print(f"  {name:<7} c={conc:<3} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  errors {r['errors']}  other load "
                          f"{r['cpu']['other_cpu']:.2f} CPUs", file=sys.stderr)
        rss["metasched (after load)"] = svc.rss_mb()
        rss["trivial app"] = triv.rss_mb()
        stderr = svc.stderr()
        svc.stop()
        triv.stop()
        locked = stderr.count("database is locked")
        tracebacks = stderr.count("Traceback")

        # -- raw SQLite: the submit's transaction without HTTP ---------------------------------
        for procs in (1, args.workers):
            r = raw_sqlite(db, procs, args.duration)
            rows.append(("raw-sqlite-submit", procs, r))
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)

    # -- report -----------------------------------------------------------------------------------
    print()
    print(f"metasched API benchmark: gunicorn {args.workers} workers, unix socket, {os.cpu_count()} CPUs, "
          f"{args.duration:g} s per cell, client on the same machine")
    print("CPU columns: CPUs used on average by the server's workers, by the load generator, and by other")
    print("processes on the machine during the cell (a busy machine lowers every figure); srv ms = server")
    print("CPU per request; cap/s = the req/s that server + client CPU per request would allow if this")
    print("machine's CPUs were all ours (a projection, not a measurement).")
    print(f"{'scenario':<20}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'srv CPU':>9}{'cli CPU':>9}{'other':>7}{'srv ms':>8}{'cap/s':>8}")
    order = ["submit", "get", "list", "trivial", "raw-sqlite-submit"]
    for name, conc, r in sorted(rows, key=lambda x: (order.index(x[0]), x[1])):
        c = r.get("cpu") or {}
        cpu_cols = ""
        if c:
            cap = c["ncpu"] / max(1e-9, (c["server_ms_per_req"] + c["client_ms_per_req"]) / 1000)
            cpu_cols = (f"{c['server_cpu']:>9.2f}{c['client_cpu']:>9.2f}{c['other_cpu']:>7.2f}"
                        f"{c['server_ms_per_req']:>8.2f}{cap:>8.0f}")
        print(f"{name:<20}{conc:>5}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['errors']:>8}{cpu_cols}")
    print("(raw-sqlite-submit: conc = writer processes, no HTTP)")
    print()
    for k, v in rss.items():
        print(f"RSS per worker, {k:<24}: " + ", ".join(f"{x:.1f}" for x in sorted(v)) + " MB")
    print(f"server stderr: {locked} 'database is locked', {tracebacks} tracebacks")
    others = [r["cpu"]["other_cpu"] for _, _, r in rows if r.get("cpu")]
    if others and max(others) > 0.25:
        print(f"WARNING: other processes used up to {max(others):.2f} of {os.cpu_count()} CPUs during the run; "
              f"the figures understate this service on a quiet machine")
    print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]}")
    print()

    def cell(name, conc):
        return next(r for n, c, r in rows if n == name and c == conc)

    checks = []
    for name, (key, _op, goal) in TARGETS.items():
        v = cell(name, top)[key]
        checks.append((f"{name} c={top} >= {goal} req/s", v >= goal, f"{v:.0f}"))
    ratio = cell("get", top)["rps"] / max(1.0, cell("trivial", top)["rps"])
    checks.append((f"get c={top} >= 0.5 x trivial", ratio >= 0.5, f"{ratio:.2f}x"))
    for name in ("submit", "get", "list"):
        v = cell(name, top)["p99"]
        checks.append((f"{name} c={top} p99 <= 50 ms", v <= 50, f"{v:.1f} ms"))
    errs = sum(r["errors"] for n, c, r in rows if n != "raw-sqlite-submit")
    checks.append(("zero errors", errs == 0 and locked == 0, f"{errs} errors, {locked} locked"))
    worst = max(x for k, v in rss.items() if k.startswith("metasched") for x in v)
    checks.append(("RSS per worker <= 60 MB", worst <= 60, f"max {worst:.1f} MB"))
    print("targets:")
    for what, ok, val in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {what:<32} {val}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
