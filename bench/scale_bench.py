"""Scale benchmark: the real service polling N SSH nodes (farm: each node its own network namespace, sshd and
PID namespace, tests/lab/farm.py), next to the transport's own floor measured in the same run on the same nodes.

For each N (default 1, 64, 256, 1024):

* floor (no service), with its baselines from the same run: known_hosts parsed by paramiko (what every
  SSHClient connect paid) vs once; ``transport.connect_all`` of N fresh connections (wall time and our CPU; the
  farm nodes' sshds run on these cores too); one node-agent request on all N at once from one
  thread (``transport.request_all``), median of a few rounds, with our CPU and the whole machine's (the farm
  saturates both cores: that wall time is this machine's floor for a cycle); our CPU over 5 s of N idle
  connections, and the same with paramiko's 0.1 s reader wake-up put back; with 1 and 32 nodes blackholed, one request_all and one
  connect_all, each with a 5 s deadline;
* the service (``python -m metasched``, gunicorn, 2 workers, poller on; node-only config: the ``local``
  scheduler on node 0, interval 5 s, default ssh timeouts and fan-out): start -> all N reachable (GET
  /cluster/nodes); then idle cycles: ``duration_ms`` p50/p95 (poll_cycles), service CPU per cycle (every
  process of the service), the lease holder's RSS and threads;
* dark nodes (N >= 64): 1, then 32, nodes blackholed (veth down): the next three cycles, what the nodes
  looked like after the first (how many unreachable, a dark node's reason); restored, then the time until all
  are reachable again.

Targets of issue 20 at 1,024 nodes: all reachable within 15 s of start, idle cycle p50 <= 500 ms, service CPU per
idle 5 s cycle <= 0.5 s, 32 dark nodes cost at most one deadline per cycle.

Needs root and the farm's prerequisites (sshd, iproute2, unshare; user metascheduler). Heavy at 1,024 nodes
(about 10 minutes, a few GB): do not run it beside the test suite. Usage:
    PYTHONPATH=$PWD /opt/metasched/venv/bin/python bench/scale_bench.py [--nodes 1,64,256,1024] [--cycles 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import paramiko  # noqa: E402

from metasched import enforcement  # noqa: E402
from metasched.transport import (IDLE_WAKE, KnownHosts, SshTransport, connect_all, open_streams,  # noqa: E402
                                 request_all)
from tests.lab.farm import NodeFarm  # noqa: E402
from tests.lab.lab import descendants  # noqa: E402
from tests.server.conftest import start_server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
INTERVAL = 5.0
DEADLINE = 10.0         # poller.cycle_deadline (its default)


# -- measuring ------------------------------------------------------------------------------------

def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children that ended (sshd's pre-auth child does the key exchange)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / TICK
    except (OSError, IndexError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat without idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict((k, v.strip()) for k, v in (line.split(":", 1) for line in f if ":" in line))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


# -- the floor -------------------------------------------------------------------------------------

AGENT_REQUEST = enforcement.payload({"version": 1, "parent": "metasched-bench", "mechanism": "auto", "groups": []})


def transports(farm: NodeFarm) -> list[SshTransport]:
    return [SshTransport(n.address, n.port, user=farm.ssh_user, key_file=str(farm.key_file),
                         known_hosts=str(farm.known_hosts), connect_timeout=5) for n in farm.nodes]


def floor(farm: NodeFarm, rounds: int = 5, idle_s: float = 5.0) -> dict:
    """What the transport alone costs on these N nodes, with its same-run baselines (paramiko's defaults)."""
    out: dict = {}
    t0 = time.monotonic()
    paramiko.HostKeys(str(farm.known_hosts))
    out["paramiko_known_hosts_ms"] = (time.monotonic() - t0) * 1000      # paid by every SSHClient connect
    t0 = time.monotonic()
    KnownHosts(str(farm.known_hosts)).keys_for(farm.nodes[0].address)
    out["known_hosts_once_ms"] = (time.monotonic() - t0) * 1000            # paid once
    ts = transports(farm)
    try:
        c0, t0 = own_cpu(), time.monotonic()
        errors = connect_all(ts, max_parallel=8)
        if any(errors):
            print(f"  {sum(1 for e in errors if e)} not connected, e.g. {next(e for e in errors if e)}", flush=True)
        out.update(connect_s=time.monotonic() - t0, connect_cpu_s=own_cpu() - c0, errors=sum(1 for e in errors if e))
        t0 = time.monotonic()
        opened = open_streams(ts, enforcement.serve_command(None), max_parallel=8)
        streams = [s for s in opened if not isinstance(s, str)]
        first = request_all([(s, AGENT_REQUEST) for s in streams], time.monotonic() + 120)   # the agents start
        out["agents_up_s"] = time.monotonic() - t0
        out["errors"] += len(opened) - len(streams) + sum(1 for r in first if r.error)
        if len(streams) < len(ts):
            print(f"  not every stream opened: {next(s for s in opened if isinstance(s, str))}", flush=True)
            nan = float("nan")
            out.update(request_all_ms=nan, request_all_cpu_s=nan, request_all_machine_cpu_s=nan, idle_cpu_per_5s=nan,
                       idle_cpu_per_5s_paramiko_default=nan)
            return out
        times, cpus, busy = [], [], []
        for _ in range(rounds):
            c0, b0, t0 = own_cpu(), machine_busy(), time.monotonic()
            res = request_all([(s, AGENT_REQUEST) for s in streams], time.monotonic() + 60)
            times.append(time.monotonic() - t0)
            cpus.append(own_cpu() - c0)
            busy.append(machine_busy() - b0)
            out["errors"] += sum(1 for r in res if r.error)
        out["request_all_ms"] = statistics.median(times) * 1000
        out["request_all_cpu_s"] = statistics.median(cpus)
        out["request_all_machine_cpu_s"] = statistics.median(busy)     # ours + the farm's + the kernel's
        # idle: N open connections, nothing sent; then the same with paramiko's 0.1 s reader wake-up
        c0 = own_cpu()
        time.sleep(idle_s)
        out["idle_cpu_per_5s"] = (own_cpu() - c0) * 5 / idle_s
        for t in ts:
            t._sock.settimeout(0.1)     # applies from each reader's next recv: one answer wakes them all
        request_all([(s, AGENT_REQUEST) for s in streams], time.monotonic() + 60)
        time.sleep(0.2)
        c0 = own_cpu()
        time.sleep(idle_s)
        out["idle_cpu_per_5s_paramiko_default"] = (own_cpu() - c0) * 5 / idle_s
        for t in ts:
            t._sock.settimeout(IDLE_WAKE)
        request_all([(s, AGENT_REQUEST) for s in streams], time.monotonic() + 60)
        if farm.n >= 64:
            for k in (1, 32):
                streams = dark_floor(farm, ts, streams, k, out)
        for s in streams:
            s.close()
        return out
    finally:
        for t in ts:
            t.close()


def dark_floor(farm: NodeFarm, ts: list[SshTransport], streams: list, k: int, out: dict) -> list:
    """k nodes blackholed: one request_all with a 5 s deadline (the dark streams expire, their connections are
    dropped), then one connect_all of what was dropped with a 5 s deadline; restored and reconnected."""
    victims = spread(farm.n, k)
    for i in victims:
        farm.blackhole(i)
    try:
        t0 = time.monotonic()
        res = request_all([(s, AGENT_REQUEST) for s in streams], time.monotonic() + 5)
        out[f"dark{k}_request_all_s"] = time.monotonic() - t0
        out[f"dark{k}_unanswered"] = sum(1 for r in res if r.error)
        t0 = time.monotonic()
        errors = connect_all(ts, max_parallel=8, deadline=time.monotonic() + 5)
        out[f"dark{k}_connect_all_s"] = time.monotonic() - t0
        out[f"dark{k}_unreachable"] = sum(1 for e in errors if e)
    finally:
        for i in victims:
            farm.restore(i)
    connect_all(ts, max_parallel=8)
    for i, s in zip(victims, open_streams([ts[i] for i in victims], enforcement.serve_command(None))):
        streams[i] = s
    request_all([(streams[i], AGENT_REQUEST) for i in victims], time.monotonic() + 60)
    return streams


def spread(n: int, k: int) -> list[int]:
    """k node indexes spread over the farm, never node 0 (the scheduler's master)."""
    step = max(1, (n - 1) // k)
    return [1 + i * step for i in range(k)]


# -- the service -----------------------------------------------------------------------------------

def config(farm: NodeFarm) -> dict:
    return {
        "policy": {"name": "shared"},
        "nodes": [{"ip": a, "port": p} for a, p in farm.endpoints],
        "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100}],
        "poller": {"interval": INTERVAL, "cycle_deadline": DEADLINE},
        "ssh": {"known_hosts": str(farm.known_hosts)},
    }


class Service:
    def __init__(self, farm: NodeFarm):
        self.farm = farm
        self.t_spawn = time.monotonic()
        self.srv = start_server({}, workers=2, config=config(farm), poller=True,
                                extra_args=("--ssh-key-file", str(farm.key_file), "--ssh-user", farm.ssh_user))
        self.db = sqlite3.connect(f"file:{self.srv.db_path}?mode=ro", uri=True, timeout=30)

    def stop(self) -> None:
        self.db.close()
        self.srv.stop()
        shutil.rmtree(self.srv.workdir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [self.srv.proc.pid, *descendants(self.srv.proc.pid)]

    def cpu(self) -> float:
        return sum(proc_cpu(p) for p in self.pids())

    def holder_pid(self) -> int | None:
        row = self.db.execute("SELECT pid FROM poller_lease WHERE holder != ''").fetchone()
        return int(row[0]) if row else None

    def nodes(self) -> list[dict]:
        return self.srv.root("GET", "/cluster/nodes").json()["items"]

    def wait_reachable(self, timeout: float) -> float | None:
        """Seconds until every node is reachable, None if not within ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if all(n["reachable"] is True for n in self.nodes()):
                return time.monotonic() - t0
            time.sleep(0.2)
        return None

    def last_cycle_id(self) -> int:
        row = self.db.execute("SELECT max(id) FROM poll_cycles").fetchone()
        return row[0] or 0

    def cycles_after(self, after_id: int, count: int, timeout: float) -> list[dict]:
        """The next ``count`` cycles recorded after cycle ``after_id``."""
        t0 = time.monotonic()
        while True:
            rows = self.db.execute("SELECT id, duration_ms, errors, json_extract(summary, '$.observe_ms') "
                                   "FROM poll_cycles WHERE id > ? ORDER BY id", (after_id,)).fetchall()
            if len(rows) >= count or time.monotonic() - t0 > timeout:
                return [{"id": r[0], "ms": r[1], "errors": len(json.loads(r[2])), "observe_ms": r[3]}
                        for r in rows[:count]]
            time.sleep(0.1)


def measure_service(farm: NodeFarm, cycles: int) -> dict:
    svc = Service(farm)
    out: dict = {}
    try:
        ready = time.monotonic() - svc.t_spawn
        took = svc.wait_reachable(timeout=600)
        out["start_s"] = None if took is None else ready + took
        # idle: one cycle to settle, then `cycles` cycles
        first = svc.cycles_after(svc.last_cycle_id(), 1, timeout=120)
        start_id = first[-1]["id"] if first else svc.last_cycle_id()
        c0 = svc.cpu()
        idle = svc.cycles_after(start_id, cycles, timeout=cycles * (INTERVAL + 60))
        c1 = svc.cpu()
        ms = [c["ms"] for c in idle]
        out.update(p50_ms=statistics.median(ms), p95_ms=pct(ms, 0.95), n_cycles=len(ms),
                   observe_p50_ms=statistics.median(c["observe_ms"] or 0 for c in idle),
                   cpu_per_cycle_s=(c1 - c0) / max(1, len(ms)),
                   idle_errors=sum(c["errors"] for c in idle))
        holder = svc.holder_pid()
        if holder:
            st = proc_status(holder)
            out["rss_mb"] = int(st["VmRSS"].split()[0]) / 1024
            out["threads"] = int(st["Threads"])
        if farm.n >= 64:
            for k in (1, 32):
                out[f"dark{k}"] = dark(svc, farm, k)
    finally:
        svc.stop()
    return out


def dark(svc: Service, farm: NodeFarm, k: int) -> dict:
    """Blackhole k nodes (spread over the farm, never node 0): the next three cycles, then restore."""
    victims = spread(farm.n, k)
    before = svc.last_cycle_id()
    for i in victims:
        farm.blackhole(i)
    try:
        after = svc.cycles_after(before, 1, timeout=INTERVAL + 4 * 30 * (k // 8 + 1))
        nodes = svc.nodes()         # as the first cycle after left them
        after += svc.cycles_after(after[-1]["id"] if after else before, 2, timeout=2 * (INTERVAL + 4 * 30))
    finally:
        for i in victims:
            farm.restore(i)
    back = svc.wait_reachable(timeout=300)
    dark_ips = {farm.nodes[i].address for i in victims}
    down = [n for n in nodes if not n["reachable"]]
    return {"cycles_ms": [c["ms"] for c in after], "back_s": back,
            "unreachable_after_first": len(down), "of_them_dark": sum(1 for n in down if n["ip"] in dark_ips),
            "reason": next((n["last_error"] for n in down if n["ip"] in dark_ips), None)}


# -- main ------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="1,64,256,1024", help="comma-separated node counts")
    ap.add_argument("--cycles", type=int, default=8, help="idle cycles measured per node count")
    ap.add_argument("--no-service", action="store_true", help="the transport floor only")
    args = ap.parse_args()
    results = {}
    for n in (int(x) for x in args.nodes.split(",")):
        t0 = time.monotonic()
        with NodeFarm(n) as farm:
            print(f"[{n} nodes] farm up in {farm.timings['start']:.1f} s", flush=True)
            row = {"farm_start_s": farm.timings["start"], "floor": floor(farm)}
            print(f"[{n} nodes] floor {json.dumps(row['floor'])}", flush=True)
            if not args.no_service:
                row["service"] = measure_service(farm, args.cycles)
                print(f"[{n} nodes] service {json.dumps(row['service'])}", flush=True)
        row["wall_s"] = time.monotonic() - t0
        results[n] = row
    report(results)


def report(results: dict) -> None:
    print(f"\nScale benchmark, {os.cpu_count()} cores, shared with every farm node's sshd and agent (and whatever "
          f"else runs on this machine).")
    print("\nTransport floor, no service (one process: connect_all with max_parallel 8, one agent request on every "
          "node from one thread). known_hosts: paramiko's parse (paid by every SSHClient connect) vs ours (once). "
          "request_all: wall, our CPU, and the CPU the whole machine spent meanwhile (ours + the farm's sshds, "
          f"agents and network: at most {os.cpu_count()} x the wall time)")
    print(f"{'N':>5} {'known_hosts':>15} {'connect':>8} {'our CPU':>8} {'agents up':>10} "
          f"{'request_all':>12} {'our CPU':>8} {'machine':>8} {'idle CPU/5 s':>20} {'errors':>6}")
    for n, r in results.items():
        f = r["floor"]
        print(f"{n:>5} {f['paramiko_known_hosts_ms']:>6.1f}/{f['known_hosts_once_ms']:>5.1f} ms "
              f"{f['connect_s']:>6.2f} s {f['connect_cpu_s']:>6.2f} s "
              f"{f['agents_up_s']:>8.2f} s {f['request_all_ms']:>9.1f} ms {f['request_all_cpu_s']:>6.3f} s "
              f"{f['request_all_machine_cpu_s']:>6.2f} s "
              f"{f['idle_cpu_per_5s']:>6.3f} s (0.1 s: {f['idle_cpu_per_5s_paramiko_default']:.3f}) {f['errors']:>5}")
    for n, r in results.items():
        f = r["floor"]
        for k in (1, 32):
            if f"dark{k}_request_all_s" in f:
                print(f"{n:>5} nodes, {k:>2} dark: request_all (deadline 5 s) {f[f'dark{k}_request_all_s']:.2f} s, "
                      f"{f[f'dark{k}_unanswered']} unanswered; connect_all of the dropped (deadline 5 s) "
                      f"{f[f'dark{k}_connect_all_s']:.2f} s, {f[f'dark{k}_unreachable']} unreachable")
    if not any("service" in r for r in results.values()):
        return
    print(f"\nThe service, idle, interval {INTERVAL:g} s, cycle deadline {DEADLINE:g} s: cycles p50/p95 (and its "
          "observe phase); CPU per cycle of every process of the service")
    print(f"{'N':>5} {'start->all reachable':>21} {'cycle p50 / p95':>18} {'observe':>8} {'service CPU':>12} "
          f"{'RSS':>8} {'threads':>8}")
    for n, r in results.items():
        s = r.get("service")
        if not s:
            continue
        start = "never" if s["start_s"] is None else f"{s['start_s']:.1f} s"
        print(f"{n:>5} {start:>21} {s['p50_ms']:>8.0f} / {s['p95_ms']:>4.0f} ms {s['observe_p50_ms']:>5.0f} ms "
              f"{s['cpu_per_cycle_s']:>10.3f} s "
              f"{s.get('rss_mb', 0):>5.0f} MB {s.get('threads', 0):>8}")
    print("\nThe service, dark nodes (veth down): the next three cycles, and the time until all are reachable "
          "once restored")
    for n, r in results.items():
        s = r.get("service") or {}
        for k in (1, 32):
            d = s.get(f"dark{k}")
            if d:
                back = "never" if d["back_s"] is None else f"{d['back_s']:.1f} s"
                print(f"{n:>5} nodes, {k:>2} dark: cycles {', '.join(f'{ms / 1000:.1f} s' for ms in d['cycles_ms'])}; "
                      f"after the first, {d['unreachable_after_first']} unreachable ({d['of_them_dark']} of them "
                      f"dark), e.g. {d['reason']!r}; back in {back}")
    big = results.get(1024, {}).get("service")
    if big:
        print("\nTargets at 1,024 nodes:")
        start = big["start_s"]
        print(f"  all reachable within 15 s of start: {'never' if start is None else f'{start:.1f} s'}")
        print(f"  idle cycle p50 <= 500 ms: {big['p50_ms']:.0f} ms")
        print(f"  service CPU per idle 5 s cycle <= 0.5 s: {big['cpu_per_cycle_s']:.3f} s")
        d = big.get("dark32")
        if d:
            print(f"  32 dark nodes cost at most one deadline ({DEADLINE:g} s) per cycle: cycles "
                  f"{', '.join(f'{ms / 1000:.1f} s' for ms in d['cycles_ms'])}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
