"""Shared by tests/integration/test_enforcement.py and bench/enforcement_bench.py: CPU-bound jobs submitted
through the real server into the lab's Grid Engine and Slurm, and an independent measurement of how the
CPU is split between them.

Independent means: read by this process from /proc (each job shell's utime+stime, the busy loop runs in
the shell itself) and from the cgroup files, never from what the service reports about itself.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from tests.integration.real import real_config, script, submit, wait_job, wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]
AGENT = "/usr/local/libexec/metasched-node-agent"   # the path deploy/sudoers and the lab's rule name
CPU_ROOT = pathlib.Path("/sys/fs/cgroup/cpu")
ACCT_ROOT = pathlib.Path("/sys/fs/cgroup/cpuacct")
PARENT = "metasched"
HZ = os.sysconf("SC_CLK_TCK")

# $1 pid file, $2 stop file, $3 safety timeout, $4 the cpu to pin to ("" = not pinned). The loop is the
# shell itself (no fork per turn), so the shell's own utime+stime is the job's CPU. A background sleeper
# stops it anyway after $3 seconds (safety net).
BUSY = '''[ -z "$4" ] || taskset -cp "$4" $$ >/dev/null
echo $$ > "$1"
( sleep "${3:-300}"; : > "$2" ) &
while [ ! -e "$2" ]; do :; done
'''

# The same with a command forked and exec'd at every turn of the loop (what many shell jobs do): the shell's
# cutime/cstime hold its reaped children's CPU, so the shell's ticks are still the job's CPU.
FORK = '''[ -z "$4" ] || taskset -cp "$4" $$ >/dev/null
echo $$ > "$1"
( sleep "${3:-300}"; : > "$2" ) &
while [ ! -e "$2" ]; do /bin/true; done
'''
LOOPS = {"busy": BUSY, "fork": FORK}


def children_of() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            f = stat_fields(int(e))
            if f:
                out.setdefault(int(f[1]), []).append(int(e))
    return out


def tree(pid: int, kids: dict[int, list[int]] | None = None) -> set[int]:
    kids = children_of() if kids is None else kids
    out, todo = {pid}, list(kids.get(pid, ()))
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(kids.get(p, ()))
    return out


def spark_pids() -> set[int]:
    """The Spark group's processes as the test sees them: every executor JVM and its descendants (the PySpark
    workers), and every client-mode driver (SparkSubmit JVM) with its descendants."""
    kids, roots = children_of(), set()
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                cmd = pathlib.Path(f"/proc/{e}/cmdline").read_bytes()
            except OSError:
                continue
            if b"CoarseGrainedExecutorBackend" in cmd or b"org.apache.spark.deploy.SparkSubmit" in cmd:
                roots.add(int(e))
    return set().union(*(tree(r, kids) for r in roots)) if roots else set()


def pid_alive(pid: int) -> bool:
    f = stat_fields(pid)
    return bool(f) and f[0] not in "ZX"


def ticks_of(pids) -> dict[int, int]:
    return {p: cpu_ticks(p) for p in pids}


def used_between(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU ticks the processes used between two ticks_of() samples; one that exited meanwhile counts for
    nothing (its ticks are gone with it), never less than nothing."""
    return sum(max(0, after.get(p, 0) - t) for p, t in before.items())


def pyspark_workers() -> list[int]:
    """The PySpark worker processes running tasks: children of a pyspark.daemon that are pyspark.daemon too."""
    daemons = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if b"pyspark.daemon" in pathlib.Path(f"/proc/{e}/cmdline").read_bytes():
                    f = stat_fields(int(e))
                    daemons[int(e)] = int(f[1]) if f else 0
            except OSError:
                continue
    return sorted(p for p, parent in daemons.items() if parent in daemons)


@contextlib.contextmanager
def installed_agent():
    """Install this checkout's node agent where the sudoers rule allows it (deploy/install-node-agent.sh),
    and put back what was there before when done."""
    before = pathlib.Path(AGENT).read_bytes() if os.path.exists(AGENT) else None
    subprocess.run(["sh", str(REPO / "deploy" / "install-node-agent.sh"), str(REPO / "metasched" / "node_agent.py")],
                   check=True, capture_output=True)
    probe = subprocess.run(["su", "-s", "/bin/sh", "metascheduler", "-c", f"sudo -n -l {AGENT}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise AssertionError(f"the service user may not run {AGENT} as root through sudo ({probe.stderr.strip()}): "
                             "run tests/lab/setup-machine.sh as root to update /etc/sudoers.d/metasched-lab")
    try:
        yield AGENT
    finally:
        lift_caps()
        if before is None:
            os.unlink(AGENT)
        else:
            tmp = AGENT + ".restore"
            pathlib.Path(tmp).write_bytes(before)
            os.chmod(tmp, 0o755)
            os.replace(tmp, AGENT)


def lift_caps() -> list[str]:
    """Lift every CPU quota the feedback left on the groups (the last request of a server that stopped may have had
    a cap): another checkout's agent that knows no caps would never lift it, and the next test's jobs would run
    throttled. Returns the groups whose cap was lifted."""
    lifted = []
    for f in sorted((CPU_ROOT / PARENT).glob("*/cpu.cfs_quota_us")):
        if f.read_text().strip() != "-1":
            f.write_text("-1")
            lifted.append(f.parent.name)
    return lifted


def enforcement_config(lab, weights=(70, 30), policy: str = "shared", interval: float = 1.0,
                       feedback: bool = True) -> dict:
    """The frontend as the only node (so only its agent acts on this machine's cgroups), SGE and Slurm
    on it, the installed agent through sudo; ``feedback`` False: the weights written are exactly the
    policy's (enforcement.feedback off)."""
    cfg = real_config(lab, interval=interval)
    cfg["nodes"] = cfg["nodes"][:1]
    for s, w in zip(cfg["schedulers"], weights):
        s["weight"] = w
    cfg["policy"] = {"name": policy, "high_priority": 0}
    cfg["enforcement"] = {"method": "auto", "helper": AGENT, "parent_group": PARENT, "feedback": feedback}
    return cfg


def stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_ticks(pid: int) -> int:
    """utime+stime+cutime+cstime of a live process (0 once it is gone)."""
    f = stat_fields(pid)
    return sum(int(x) for x in f[11:15]) if f and f[0] not in "ZX" else 0


def start_ticks(pid: int) -> int | None:
    f = stat_fields(pid)
    return int(f[19]) if f else None


def boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(ln.split()[1] for ln in f if ln.startswith("btime ")))


def process_start_epoch(pid: int) -> float | None:
    """When the process started (kernel starttime, in clock ticks since boot; resolution 1/HZ)."""
    t = start_ticks(pid)
    return None if t is None else boot_time() + t / HZ


def cgroup_of(pid: int, controller: str = "cpu") -> str | None:
    """The pid's path in a v1 hierarchy, from /proc/<pid>/cgroup (None when the pid is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return path
    except OSError:
        return None
    return None


def v1(percent: float, groups: int = 2) -> int:
    """cpu.shares the agent writes for a share (metasched/node_agent.py v1_shares)."""
    return max(2, min(262144, int(round(percent * 1024 * groups / 100.0))))


def shares_of(group: str) -> int:
    return int((CPU_ROOT / PARENT / group / "cpu.shares").read_text())


@dataclass
class Busy:
    """CPU-bound jobs of one scheduler, started through the API, with their shells' pids."""
    queue: str
    user: str
    stop_file: pathlib.Path
    jobs: list[dict] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def ticks(self) -> int:
        return sum(cpu_ticks(p) for p in self.pids)

    def stop(self) -> None:
        self.stop_file.touch()


def start_busy(srv, users, directory: pathlib.Path, queue: str, user: str, n: int = 2,
               safety_seconds: int = 300, tag: str = "", cpu: int | None = None, loop: str = "busy") -> Busy:
    """Submit n busy-loop jobs (LOOPS[loop]) as ``user`` and wait until each runs and wrote its pid."""
    stop = directory / f"stop-{queue}{tag}"
    with contextlib.suppress(FileNotFoundError):
        stop.unlink()
    path = script(directory / f"{loop}.sh", LOOPS[loop], users[user])
    b = Busy(queue, user, stop)
    pidfiles = []
    for i in range(n):
        pidfile = directory / f"pid-{queue}{tag}-{i}"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        pidfiles.append(pidfile)
        b.jobs.append(submit(srv, user, {"queue": queue, "path": path, "name": f"busy{queue}{tag}{i}",
                                         "options": [str(pidfile), str(stop), str(safety_seconds),
                                                     "" if cpu is None else str(cpu)],
                                         "pwd": str(directory)}))
    for job, pidfile in zip(b.jobs, pidfiles):
        wait_job(srv, user, job["id"], {"RUNNING"}, timeout=60)
        b.pids.append(int(wait_until(f"job {job['id']} wrote its pid",
                                     lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30)))
    return b


def measure(a: Busy, b: Busy, seconds: float) -> tuple[float, float, float]:
    """(a's percent of a+b, a's CPU in cores, b's CPU in cores) over ``seconds``, from /proc."""
    a0, b0, t0 = a.ticks(), b.ticks(), time.monotonic()
    time.sleep(seconds)
    a1, b1, t1 = a.ticks(), b.ticks(), time.monotonic()
    da, db, dt = (a1 - a0) / HZ, (b1 - b0) / HZ, t1 - t0
    return (100.0 * da / (da + db) if da + db else float("nan")), da / dt, db / dt


def queue_groups(srv) -> dict[str, str]:
    """Queue name -> the cgroup name the service uses for it (q<id>-<type>-<name>)."""
    queues = srv.root("GET", "/queues").json()
    items = queues["items"] if isinstance(queues, dict) else queues
    return {q["name"]: f"q{q['id']}-{q['type']}-{q['name']}" for q in items}


def in_group(pid: int, group: str) -> bool:
    return cgroup_of(pid) == f"/{PARENT}/{group}"


def stop_and_wait(srv, busy: Busy, timeout: float = 60) -> None:
    """Stop the jobs (their stop file), wait until each ended, and end by pid whatever of their trees is left: the
    safety sleeper ``( sleep N; : > stop ) &`` outlives a Slurm job, whose batch script exits without it (Slurm's
    linuxproc tracking follows a job's processes by their parents, and the sleeper's parent is gone), and it would
    run for the safety timeout (an hour in the bench)."""
    kids = children_of()
    left = {p: start_ticks(p) for shell in busy.pids if pid_alive(shell) for p in tree(shell, kids)}
    busy.stop()
    try:
        for job in busy.jobs:
            wait_job(srv, busy.user, job["id"], {"COMPLETED", "ERROR", "CANCELLED"}, timeout=timeout)
    finally:
        end_processes(left)


def end_processes(procs: dict[int, int | None]) -> list[int]:
    """SIGKILL each process of ``procs`` (pid -> its start time) that still runs, by pid, never a pid the kernel has
    given to another process since (its start time differs). Returns the pids ended."""
    ended = []
    for pid, start in procs.items():
        if start is not None and pid_alive(pid) and start_ticks(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                ended.append(pid)
    return ended


def remove_tree(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
