"""metasched's integration lab: real sshd nodes, Grid Engine and Slurm on one Debian machine.

Why this exists: the integration tests must talk to the same daemons a real cluster runs (no mocks), yet
CI is one root-owned Debian 12 VM. So the lab starts, with pids it records itself:

* a frontend sshd on 127.0.0.1 (a free port) and one sshd per "node" in its own network namespace,
  reachable from the root namespace through the bridge ``msbr0`` (172.31.250.0/24);
* Grid Engine (sge_qmaster + sge_execd) and Slurm (munged, slurmctld, slurmd) on the frontend, reachable
  from inside the namespaces too, so scheduler clients run over SSH on any node answer;
* on demand (``Lab.start_spark()``), a Spark standalone Master and Worker on the frontend, as user spark.

Every class has ``start()`` / ``stop()``; readiness is detected by polling real state (SSH banner,
``qstat`` answering, ``sinfo`` showing idle), never by a fixed sleep. Nothing is ever killed by name:
only pids we started (and the process trees below our own daemons). ``tests/lab/setup-machine.sh``
installs the packages and users; this module only configures and runs.

Only stdlib + paramiko.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import paramiko

SSH_USER = "metascheduler"
JOB_OWNERS = ("alice", "bob")
BRIDGE = "msbr0"
BRIDGE_ADDR = "172.31.250.1"
SUBNET_PREFIX = "172.31.250."
SUDOERS_FILE = "/etc/sudoers.d/metasched-lab"
SETUP_HINT = "run `sudo tests/lab/setup-machine.sh` (as root) to provision this machine"

SGE_ROOT = "/var/lib/gridengine"
SGE_CELL = "default"
SGE_BIN = "/usr/lib/gridengine"
SGE_ENV = {"SGE_ROOT": SGE_ROOT, "SGE_CELL": SGE_CELL}
SGE_QMASTER_PORT = 6444
SGE_EXECD_PORT = 6445
SGE_QUEUE = "all.q"
SGE_PE = "smp"          # the lab's parallel environment ($pe_slots: every slot on one host)

SLURM_CONF = Path("/etc/slurm/slurm.conf")
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
SLURM_PARTITION = "debug"
MUNGE_SOCKET_DIR = Path("/run/munge")

SPARK_USER = "spark"
SPARK_PORT = 7077
SPARK_WEB_PORT = 8080
SPARK_WORKER_WEB_PORT = 8081

HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# metasched-lab"
OWN_MARK = "# Written by metasched tests/lab/lab.py; rewritten at every lab start."


class LabError(RuntimeError):
    """The lab could not be brought up (the message says which part and why)."""


class LabUnavailable(LabError):
    """This machine lacks a prerequisite; the message says how to provision it."""


# ---------------------------------------------------------------------------------------------
# small process / polling helpers
# ---------------------------------------------------------------------------------------------

class DaemonDied(LabError):
    """Raised by a readiness probe when the daemon it waits for has exited: stops the wait at once."""


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05,
               diagnose: Callable[[], str] | None = None) -> float:
    """Poll ``check`` until it is true; return the seconds it took. Raise LabError naming ``what``."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except DaemonDied:
            raise
        except Exception:  # a probe that fails is just "not ready yet"
            pass
        if time.monotonic() - start > timeout:
            extra = f"\n{diagnose()}" if diagnose else ""
            raise LabError(f"{what}: not ready after {timeout:.0f} s{extra}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as gone: PID 1 here does not always reap orphans."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """All pids below ``pid`` (children first-level last), read from /proc: used to clean up the
    job trees (sge_shepherd, slurmstepd) under daemons we started, never anything else."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0, kill_tree: bool = True) -> None:
    """TERM the process we started, wait up to ``grace`` s, then KILL; reap it. With ``kill_tree``,
    the processes that were below it when we began (job trees of a scheduler daemon) are KILLed too."""
    if proc is None:
        return
    tree = descendants(proc.pid) if kill_tree else []
    if proc.poll() is None:
        signal_pid(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_pid(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for p in tree:
        if pid_alive(p):
            signal_pid(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.02)


def run(argv: Sequence[str], env: dict | None = None, timeout: float = 30, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a short command; on failure raise LabError with its output (so a broken lab explains itself)."""
    full_env = dict(os.environ, **(env or {}))
    cp = subprocess.run(list(argv), env=full_env, capture_output=True, text=True, timeout=timeout,
                        input=input)
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stdout.strip()} {cp.stderr.strip()}")
    return cp


def port_free(port: int, addr: str = "0.0.0.0") -> bool:
    """True when nothing listens on ``addr:port`` (we try to bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


def require_ports_free(ports: Iterable[int], who: str) -> None:
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise LabError(f"{who}: TCP port(s) {busy} already in use: is a previous lab (or a system "
                       f"daemon) still running? Stop it by its pid first.")


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 20) -> str:
    try:
        return f"--- last lines of {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def _daemon(argv: Sequence[str], log: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start a foreground daemon in its own session (a Ctrl-C to pytest must not kill it before
    teardown does), output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), start_new_session=True, **kw)


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------

class Keys:
    """The client key of the service user and the host keys of every lab sshd, in ``workdir``.

    The client's public key goes to ``authorized_keys`` (our sshd configs point AuthorizedKeysFile
    at it, so the lab never edits ~metascheduler); ``known_hosts`` lists only the *trusted* host keys.
    """

    def __init__(self, workdir: Path):
        self.dir = Path(workdir) / "keys"
        self.client_key = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self._known: dict[str, str] = {}   # known_hosts host field -> "type base64"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)   # sshd reads authorized_keys with the user's privileges
        self._keygen(self.client_key, f"{SSH_USER}@metasched-lab")
        shutil.copyfile(f"{self.client_key}.pub", self.authorized_keys)
        self.authorized_keys.chmod(0o644)
        user = pwd.getpwnam(SSH_USER)
        # The service (tests may run it as metascheduler) must be able to read its own key.
        os.chown(self.client_key, user.pw_uid, user.pw_gid)
        self.write_known_hosts()

    def stop(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _keygen(path: Path, comment: str) -> None:
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])

    def new_host_key(self, name: str) -> Path:
        path = self.dir / f"host_{name}_ed25519"
        if not path.exists():
            self._keygen(path, f"host-{name}")
        return path

    @staticmethod
    def known_hosts_name(addr: str, port: int) -> str:
        return addr if port == 22 else f"[{addr}]:{port}"

    def trust(self, addr: str, port: int, host_key: Path) -> None:
        kind, b64 = Path(f"{host_key}.pub").read_text().split()[:2]
        self._known[self.known_hosts_name(addr, port)] = f"{kind} {b64}"
        self.write_known_hosts()

    def write_known_hosts(self) -> None:
        lines = [f"{host} {key}\n" for host, key in sorted(self._known.items())]
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.chmod(0o644)
        tmp.replace(self.known_hosts)


# ---------------------------------------------------------------------------------------------
# network namespaces
# ---------------------------------------------------------------------------------------------

class Netns:
    """A network namespace "node" joined to the bridge ``msbr0`` by a veth pair.

    Inside it, /etc/hosts (via /etc/netns/<name>/hosts) maps the frontend's hostname to the bridge
    address, so Grid Engine and Slurm clients run on this node reach the daemons on the frontend.
    """

    def __init__(self, name: str, addr: str, frontend_host: str, peers: dict[str, str] | None = None):
        self.name = name
        self.addr = addr
        self.frontend_host = frontend_host
        self.peers = peers or {}
        self.veth = f"msv-{name}"[:15]
        self.etc_dir = Path("/etc/netns") / name
        self.started = False

    def _exists(self) -> bool:
        return Path("/run/netns", self.name).exists()

    def start(self) -> None:
        if self._exists():
            pids = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
            if pids:
                raise LabError(f"network namespace {self.name} already exists with processes {pids} "
                               f"(a previous lab?): stop those pids, then `ip netns del {self.name}`")
            self._delete()
        ensure_bridge()
        self.started = True
        run(["ip", "netns", "add", self.name])
        run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.name])
        run(["ip", "link", "set", self.veth, "master", BRIDGE, "up"])
        run(["ip", "-n", self.name, "addr", "add", f"{self.addr}/24", "dev", "eth0"])
        run(["ip", "-n", self.name, "link", "set", "eth0", "up"])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        hosts = [OWN_MARK, "127.0.0.1 localhost", f"{BRIDGE_ADDR} {self.frontend_host}"]
        hosts += [f"{a} {n}" for n, a in self.peers.items()]
        (self.etc_dir / "hosts").write_text("\n".join(hosts) + "\n")

    def exec_argv(self, argv: Sequence[str], own_pids: bool = False) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same pid); with ``own_pids``, in
        a PID namespace of its own too (:func:`own_pid_namespace`)."""
        return ["ip", "netns", "exec", self.name, *(own_pid_namespace(argv) if own_pids else argv)]

    def _delete(self) -> None:
        # The kernel removes a deleted namespace's veth asynchronously: delete ours explicitly.
        if Path("/sys/class/net", self.veth).exists():
            run(["ip", "link", "del", self.veth], check=False)
        if self._exists():
            run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.etc_dir, ignore_errors=True)

    def stop(self) -> None:
        if not self.started:
            return
        self._delete()
        self.started = False
        remove_bridge_if_unused()


def own_pid_namespace(argv: Sequence[str]) -> list[str]:
    """``argv`` as the first process (pid 1) of a new PID namespace with its own /proc, as on a machine of its
    own: a node agent there scans only that node's processes. The pid we hold is ``unshare``'s; it ignores
    TERM, and KILLing it kills its child (``--kill-child``), whose death as pid 1 ends every process of the
    namespace (sessions, agents, jobs): teardown stays by pid."""
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv]


def ensure_bridge() -> None:
    if not Path("/sys/class/net", BRIDGE).exists():
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f" {BRIDGE_ADDR}/24 " not in addrs:
        run(["ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def remove_bridge_if_unused() -> None:
    ports = Path("/sys/class/net", BRIDGE, "brif")
    if ports.exists() and not any(ports.iterdir()):
        run(["ip", "link", "del", BRIDGE], check=False)


class HostsEntries:
    """Our lines in the root namespace's /etc/hosts (node names), marked so they can be removed.

    Grid Engine's qmaster resolves a client's address to a name; without these lines the lookup of
    172.31.250.x would go to DNS and the client would be refused or stall.
    """

    def __init__(self, entries: dict[str, str]):
        self.entries = entries

    @staticmethod
    def _without_ours(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.endswith(HOSTS_MARK)]

    def start(self) -> None:
        lines = self._without_ours(HOSTS_FILE.read_text())
        lines += [f"{addr} {name} {HOSTS_MARK}" for name, addr in self.entries.items()]
        HOSTS_FILE.write_text("\n".join(lines) + "\n")   # in place: /etc/hosts may be a bind mount

    def stop(self) -> None:
        text = HOSTS_FILE.read_text()
        lines = self._without_ours(text)
        if len(lines) != len(text.splitlines()):
            HOSTS_FILE.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# sshd
# ---------------------------------------------------------------------------------------------

def ssh_banner(addr: str, port: int, timeout: float = 1.0) -> bytes:
    with socket.create_connection((addr, port), timeout=timeout) as s:
        return s.recv(64)


class Sshd:
    """One sshd with its own config, host key and pid; can be stopped and started again."""

    def __init__(self, name: str, listen_addr: str, port: int, keys: Keys, workdir: Path,
                 netns: Netns | None = None, trusted: bool = True, own_pids: bool = False):
        self.name = name
        self.own_pids = own_pids        # in a namespace: its own PID namespace too (own_pid_namespace)
        self.addr = listen_addr
        self.port = port
        self.netns = netns
        self.trusted = trusted
        self.keys = keys
        self.dir = Path(workdir) / f"sshd-{name}"
        self.config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self.pid_file = self.dir / "sshd.pid"
        self.host_key = keys.new_host_key(name)
        self.proc: subprocess.Popen | None = None

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join([
            OWN_MARK,
            f"Port {self.port}",
            f"ListenAddress {self.addr}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.keys.authorized_keys}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            f"AllowUsers {SSH_USER}",
            "MaxSessions 64",
            "MaxStartups 64",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
            "",
        ]))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._write_config()
        if self.netns is None and not port_free(self.port, self.addr):
            raise LabError(f"sshd {self.name}: {self.addr}:{self.port} is already in use")
        argv = ["/usr/sbin/sshd", "-D", "-f", str(self.config), "-E", str(self.log)]
        if self.netns is not None:
            argv = self.netns.exec_argv(argv, own_pids=self.own_pids)
        self.proc = _daemon(argv, self.log)
        if self.trusted:
            self.keys.trust(self.addr, self.port, self.host_key)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise DaemonDied(f"sshd {self.name} exited with {self.proc.returncode}\n{tail(self.log)}")
            return ssh_banner(self.addr, self.port).startswith(b"SSH-")
        try:
            wait_until(ready, 15, f"sshd {self.name} on {self.addr}:{self.port}",
                       diagnose=lambda: tail(self.log))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop this sshd (open sessions' children die with their connections; in its own PID namespace,
        KILL: unshare ignores TERM, and the namespace dies with its pid 1)."""
        if self.own_pids and self.proc is not None and self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGKILL)
        stop_process(self.proc, grace=5, kill_tree=True)
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None


# ---------------------------------------------------------------------------------------------
# Grid Engine
# ---------------------------------------------------------------------------------------------

def parse_sge_conf(text: str) -> dict[str, str]:
    """``key value`` lines (a trailing backslash continues a line) into an ordered dict."""
    conf: dict[str, str] = {}
    joined = text.replace("\\\n", " ")
    for line in joined.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        conf[key] = " ".join(value.split())
    return conf


def format_sge_conf(conf: dict[str, str]) -> str:
    return "".join(f"{k:<30} {v}\n" for k, v in conf.items())


class GridEngine:
    """Son of Grid Engine 8.1.9 on the frontend: one qmaster, one execd, queue ``all.q``.

    ``aliases`` are the node names (as in /etc/hosts) that host_aliases maps to the frontend: a
    client on a namespace node then counts as the frontend, which is a submit host. The qmaster
    reads host_aliases only at start, so the names must be known before ``start()``.
    Both daemons run in the foreground (SGE_ND) so that their pids are ours.
    """

    def __init__(self, workdir: Path, hostname: str, aliases: Sequence[str] = (), slots: int = 4):
        self.dir = Path(workdir) / "sge"
        self.hostname = hostname
        self.aliases = list(aliases)
        self.slots = slots
        self.qmaster: subprocess.Popen | None = None
        self.execd: subprocess.Popen | None = None
        self._stopping = False
        self.qmaster_log = self.dir / "qmaster.out"
        self.execd_log = self.dir / "execd.out"
        self.spool_messages = Path("/var/spool/gridengine/qmaster/messages")

    # -- commands ---------------------------------------------------------------------------
    def cmd(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Grid Engine client binary (the fast ones in /usr/lib/gridengine) as root."""
        return run([f"{SGE_BIN}/{args[0]}", *args[1:]], env=SGE_ENV, check=check, timeout=timeout)

    def _conf_file(self, name: str, conf: dict[str, str]) -> str:
        path = self.dir / name
        path.write_text(format_sge_conf(conf))
        return str(path)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        require_ports_free([SGE_QMASTER_PORT, SGE_EXECD_PORT], "Grid Engine")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_host_aliases()
        nd = {**SGE_ENV, "SGE_ND": "1"}
        try:
            self.qmaster = _daemon([f"{SGE_BIN}/sge_qmaster"], self.qmaster_log, env=nd)
            wait_until(self._qmaster_ready, 30, "sge_qmaster", diagnose=lambda: tail(self.spool_messages))
            self.configure()
            self.execd = _daemon([f"{SGE_BIN}/sge_execd"], self.execd_log, env=nd)
            wait_until(self._execd_ready, 30, f"sge_execd on {self.hostname} reporting to the qmaster",
                       diagnose=lambda: self.cmd("qstat", "-f", check=False).stdout + tail(self.execd_log))
        except BaseException:
            self.stop()
            raise

    def _write_host_aliases(self) -> None:
        path = Path(SGE_ROOT, SGE_CELL, "common", "host_aliases")
        path.write_text(" ".join([self.hostname, "localhost", *self.aliases]) + "\n")
        sgeadmin = pwd.getpwnam("sgeadmin")
        os.chown(path, sgeadmin.pw_uid, sgeadmin.pw_gid)

    def _qmaster_ready(self) -> bool:
        if self.qmaster.poll() is not None:
            raise DaemonDied(f"sge_qmaster exited with {self.qmaster.returncode}\n"
                             f"{tail(self.qmaster_log)}\n{tail(self.spool_messages)}")
        return self.cmd("qconf", "-sh", check=False).returncode == 0

    def _execd_ready(self) -> bool:
        if self.execd.poll() is not None:
            raise DaemonDied(f"sge_execd exited with {self.execd.returncode}\n{tail(self.execd_log)}")
        out = self.cmd("qstat", "-f", "-q", SGE_QUEUE, check=False).stdout
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] == f"{SGE_QUEUE}@{self.hostname}":
                states = fields[5] if len(fields) > 5 else ""
                return fields[3] != "-NA-" and "u" not in states
        return False

    def configure(self) -> None:
        """Submit/exec host, fast scheduler, immediate accounting, queue all.q (idempotent)."""
        if self.hostname not in self.cmd("qconf", "-ss", check=False).stdout.split():
            self.cmd("qconf", "-as", self.hostname)
        if self.hostname not in self.cmd("qconf", "-sel", check=False).stdout.split():
            self.cmd("qconf", "-Ae", self._conf_file("exechost", {
                "hostname": self.hostname, "load_scaling": "NONE", "complex_values": "NONE",
                "user_lists": "NONE", "xuser_lists": "NONE", "projects": "NONE", "xprojects": "NONE",
                "usage_scaling": "NONE", "report_variables": "NONE"}))
        sconf = parse_sge_conf(self.cmd("qconf", "-ssconf").stdout)
        sconf.update(schedule_interval="0:0:1", flush_submit_sec="1", flush_finish_sec="1")
        self.cmd("qconf", "-Msconf", self._conf_file("sched_conf", sconf))
        glob = parse_sge_conf(self.cmd("qconf", "-sconf", "global").stdout)
        params = [p for p in glob.get("reporting_params", "").split() if not p.startswith("accounting_flush_time=")]
        glob["reporting_params"] = " ".join(params + ["accounting_flush_time=00:00:00"])
        (self.dir / "conf").mkdir(exist_ok=True)
        self._conf_file("conf/global", glob)
        self.cmd("qconf", "-Mconf", str(self.dir / "conf" / "global"))
        # A parallel environment for jobs of several slots on one host (what metasched's option pe names).
        pe = {"pe_name": SGE_PE, "slots": str(2 * self.slots), "user_lists": "NONE", "xuser_lists": "NONE",
              "start_proc_args": "NONE", "stop_proc_args": "NONE", "allocation_rule": "$pe_slots",
              "control_slaves": "FALSE", "job_is_first_task": "TRUE", "urgency_slots": "min",
              "accounting_summary": "FALSE", "qsort_args": "NONE"}
        has_pe = SGE_PE in self.cmd("qconf", "-spl", check=False).stdout.split()
        self.cmd("qconf", "-Mp" if has_pe else "-Ap", self._conf_file("pe", pe))
        exists = SGE_QUEUE in self.cmd("qconf", "-sql", check=False).stdout.split()
        queue = parse_sge_conf(self.cmd("qconf", "-sq", *([SGE_QUEUE] if exists else [])).stdout)
        # No load threshold: the tests load the 2 cores, and an alarm state would stop scheduling.
        queue.update(qname=SGE_QUEUE, hostlist=self.hostname, slots=str(self.slots), shell="/bin/sh",
                     load_thresholds="NONE", pe_list=SGE_PE, tmpdir="/tmp")
        self.cmd("qconf", "-Mq" if exists else "-Aq", self._conf_file("queue", queue))

    def delete_all_jobs(self) -> None:
        """Remove every job (so the spool carries none into the next session)."""
        if self.qmaster is not None and self.qmaster.poll() is None:
            self.cmd("qdel", "-f", "-u", "*", check=False, timeout=15)

    def begin_stop(self) -> None:
        """Delete jobs, stop execd (and the job trees under it), and send TERM to the qmaster
        without waiting: its clean shutdown takes 4-10 s, which the lab overlaps with the rest."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self.delete_all_jobs()
        except Exception:
            pass
        stop_process(self.execd, grace=5, kill_tree=True)
        self.execd = None
        if self.qmaster is not None and self.qmaster.poll() is None:
            signal_pid(self.qmaster.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Stop both daemons; wait for the qmaster's clean shutdown (KILL only after 20 s).

        Why wait: the qmaster writes ``jobseqnum`` only on a clean shutdown. After a KILL, the next
        qmaster guesses job ids from the (empty) spool and starts again at 1, so ``qacct -j N``
        would find a previous session's job N in the accounting file. Real clusters keep ids
        increasing; the lab must too.
        """
        self.begin_stop()
        stop_process(self.qmaster, grace=20, kill_tree=True)
        self.qmaster = None
        self._stopping = False


# ---------------------------------------------------------------------------------------------
# Slurm (and munge)
# ---------------------------------------------------------------------------------------------

class Munge:
    """munged as user munge, on its default socket (Slurm's clients use the default)."""

    def __init__(self, workdir: Path):
        self.log = Path(workdir) / "munged.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if run(["munge", "-n"], check=False).returncode == 0:
            raise LabError("a munged not started by the lab is already running (munge -n works): stop it first")
        user = pwd.getpwnam("munge")
        MUNGE_SOCKET_DIR.mkdir(mode=0o755, exist_ok=True)
        os.chown(MUNGE_SOCKET_DIR, user.pw_uid, user.pw_gid)
        self.proc = _daemon(["/usr/sbin/munged", "-F", "--force"], self.log,
                            user=user.pw_uid, group=user.pw_gid, extra_groups=[])

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise DaemonDied(f"munged exited with {self.proc.returncode}\n{tail(self.log)}")
            return run(["munge", "-n"], check=False).returncode == 0
        try:
            wait_until(ready, 15, "munged")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc, grace=5, kill_tree=False)
        self.proc = None


class Slurm:
    """Slurm 22.05 on the frontend without slurmdbd: slurmctld + one slurmd, jobcomp to a text file.

    slurm.conf must be at the default path (/etc/slurm/slurm.conf): clients run through sudo, which
    drops SLURM_CONF. SlurmctldHost is the frontend's hostname, which resolves to 127.0.0.1 on the
    frontend and to the bridge address inside the namespaces, so clients on every node reach it.
    """

    def __init__(self, workdir: Path, hostname: str):
        self.dir = Path(workdir) / "slurm"
        self.hostname = hostname
        self.jobcomp = self.dir / "jobcomp.txt"
        self.ctld_log = self.dir / "slurmctld.log"
        self.slurmd_log = self.dir / "slurmd.log"
        self.munge = Munge(workdir)
        self.ctld: subprocess.Popen | None = None
        self.slurmd: subprocess.Popen | None = None

    def _node_line(self) -> str:
        """The node as slurmd itself sees it (real CPU count and topology), so it is never drained."""
        out = run(["/usr/sbin/slurmd", "-C"]).stdout
        line = next(l for l in out.splitlines() if l.startswith("NodeName="))
        return line

    def write_conf(self) -> None:
        if SLURM_CONF.exists() and OWN_MARK not in SLURM_CONF.read_text():
            raise LabError(f"{SLURM_CONF} exists and was not written by the lab: move it away first")
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text("\n".join([
            OWN_MARK,
            "ClusterName=metasched-lab",
            f"SlurmctldHost={self.hostname}",
            "SlurmUser=root",
            f"SlurmctldPort={SLURMCTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "AuthType=auth/munge",
            f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.ctld_log}",
            f"SlurmdLogFile={self.slurmd_log}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "MinJobAge=300",
            # arrays of up to 100,000 tasks (the default allows indices up to 1000 and 10,000 jobs in all)
            "MaxArraySize=100001",
            "MaxJobCount=300000",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=2",
            f"{self._node_line()} State=UNKNOWN",
            f"PartitionName={SLURM_PARTITION} Nodes={self.hostname} Default=YES MaxTime=INFINITE "
            "State=UP OverSubscribe=FORCE:4",
            "",
        ]))

    def start(self) -> None:
        require_ports_free([SLURMCTLD_PORT, SLURMD_PORT], "Slurm")
        try:
            self.munge.start()
            self.write_conf()
            self.ctld = _daemon(["/usr/sbin/slurmctld", "-D", "-i"], self.dir / "slurmctld.out")
            wait_until(self._ctld_ready, 30, "slurmctld", diagnose=lambda: tail(self.ctld_log))
            self.slurmd = _daemon(["/usr/sbin/slurmd", "-D"], self.dir / "slurmd.out")
            wait_until(self._node_idle, 30, f"slurmd on {self.hostname} idle",
                       diagnose=lambda: run(["sinfo", "-N", "-l"], check=False).stdout + tail(self.slurmd_log))
        except BaseException:
            self.stop()
            raise

    def _ctld_ready(self) -> bool:
        if self.ctld.poll() is not None:
            raise DaemonDied(f"slurmctld exited with {self.ctld.returncode}\n{tail(self.ctld_log)}")
        return run(["scontrol", "ping"], check=False).stdout.find("UP") >= 0

    def _node_idle(self) -> bool:
        if self.slurmd.poll() is not None:
            raise DaemonDied(f"slurmd exited with {self.slurmd.returncode}\n{tail(self.slurmd_log)}")
        return run(["sinfo", "-h", "-N", "-o", "%t"], check=False).stdout.split() == ["idle"]

    def cancel_all_jobs(self) -> None:
        if self.ctld is not None and self.ctld.poll() is None:
            ids = run(["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.split()
            if ids:
                run(["scancel", *ids], check=False, timeout=10)

    def stop(self) -> None:
        try:
            self.cancel_all_jobs()
        except Exception:
            pass
        stop_process(self.slurmd, grace=5, kill_tree=True)
        self.slurmd = None
        stop_process(self.ctld, grace=5, kill_tree=True)
        self.ctld = None
        self.munge.stop()


# ---------------------------------------------------------------------------------------------
# Spark standalone
# ---------------------------------------------------------------------------------------------

def spark_home() -> Path | None:
    """The pyspark package folder, which is a SPARK_HOME (bin/, jars/): pip install pyspark (the test extra)."""
    try:
        import pyspark
    except ImportError:
        return None
    return Path(pyspark.__file__).resolve().parent


class Spark:
    """A Spark standalone Master and one Worker on the frontend (127.0.0.1), as the unprivileged user
    ``spark``: executors run as the Worker's user, so never as root. Started only when a test asks for it
    (the ``spark`` fixture): two JVMs are heavy on 2 cores. Readiness: the master's JSON lists the worker ALIVE.
    Client-mode drivers (spark-submit, as the job owners) reach the master at spark://127.0.0.1:7077 and
    the executors reach them back at 127.0.0.1."""

    def __init__(self, workdir: Path, cores: int | None = None, memory: str = "2g"):
        self.dir = Path(workdir) / "spark"
        self.home = spark_home()
        self.cores = cores or os.cpu_count() or 2
        self.memory = memory
        self.master: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    master_url = f"spark://127.0.0.1:{SPARK_PORT}"
    web_url = f"http://127.0.0.1:{SPARK_WEB_PORT}"

    @property
    def submit(self) -> str:
        return str(self.home / "bin" / "spark-submit")

    def env(self) -> dict[str, str]:
        return {"SPARK_HOME": str(self.home), "SPARK_SCALA_VERSION": "2.13", "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOG_DIR": str(self.dir / "logs"), "SPARK_WORKER_DIR": str(self.dir / "work"),
                "PYSPARK_PYTHON": sys.executable, "HOME": str(self.dir)}

    def status(self) -> dict:
        import json
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.web_url}/json/", timeout=5) as r:
            return json.loads(r.read().decode())

    def _daemon(self, cls: str, *args: str, log: Path) -> subprocess.Popen:
        user = pwd.getpwnam(SPARK_USER)
        return _daemon([str(self.home / "bin" / "spark-class"), cls, *args], log, env=self.env(),
                       user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd=str(self.dir))

    def start(self) -> None:
        if self.home is None:
            raise LabUnavailable(f"pyspark is not installed in {sys.executable}: pip install '.[test]' (it is "
                                 f"in the test extra), then {SETUP_HINT}")
        if shutil.which("java") is None:
            raise LabUnavailable(f"java is missing (openjdk-17-jre-headless): {SETUP_HINT}")
        try:
            pwd.getpwnam(SPARK_USER)
        except KeyError:
            raise LabUnavailable(f"user {SPARK_USER} does not exist: {SETUP_HINT}") from None
        require_ports_free([SPARK_PORT, SPARK_WEB_PORT, SPARK_WORKER_WEB_PORT], "Spark")
        user = pwd.getpwnam(SPARK_USER)
        for sub in ("logs", "work"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for d in (self.dir, self.dir / "logs", self.dir / "work"):
            os.chown(d, user.pw_uid, user.pw_gid)
        self.dir.chmod(0o755)
        try:
            self.master = self._daemon("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                       "--port", str(SPARK_PORT), "--webui-port", str(SPARK_WEB_PORT),
                                       log=self.dir / "master.out")
            wait_until(self._master_ready, 60, "Spark master", diagnose=lambda: tail(self.dir / "master.out"))
            self.worker = self._daemon("org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                       "--cores", str(self.cores), "--memory", self.memory,
                                       "--webui-port", str(SPARK_WORKER_WEB_PORT), "--work-dir",
                                       str(self.dir / "work"), self.master_url, log=self.dir / "worker.out")
            wait_until(self._worker_ready, 60, "Spark worker registered with the master",
                       diagnose=lambda: tail(self.dir / "worker.out"))
        except BaseException:
            self.stop()
            raise

    def _master_ready(self) -> bool:
        if self.master.poll() is not None:
            raise DaemonDied(f"Spark master exited with {self.master.returncode}\n{tail(self.dir / 'master.out')}")
        return self.status().get("status") == "ALIVE"

    def _worker_ready(self) -> bool:
        if self.worker.poll() is not None:
            raise DaemonDied(f"Spark worker exited with {self.worker.returncode}\n{tail(self.dir / 'worker.out')}")
        return any(w.get("state") == "ALIVE" for w in self.status().get("workers", []))

    def stop(self) -> None:
        """The Worker first (its executors are its children: stopped with it), then the Master; by pid."""
        stop_process(self.worker, grace=10, kill_tree=True)
        self.worker = None
        stop_process(self.master, grace=10, kill_tree=True)
        self.master = None


# ---------------------------------------------------------------------------------------------
# the whole lab
# ---------------------------------------------------------------------------------------------

def check_prerequisites() -> None:
    """Raise LabUnavailable naming everything missing (and how to fix it)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("the lab must run as root")
    for path in ("/usr/sbin/sshd", f"{SGE_BIN}/sge_qmaster", f"{SGE_BIN}/sge_execd", "/usr/sbin/slurmctld",
                 "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sudo", "/usr/bin/qsub", "/usr/bin/sbatch",
                 "/usr/bin/ssh-keygen"):
        if not os.access(path, os.X_OK):
            problems.append(f"{path} is missing")
    if shutil.which("ip") is None:
        problems.append("`ip` (iproute2) is missing")
    for user in (SSH_USER, *JOB_OWNERS, "sgeadmin", "munge"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"user {user} does not exist")
    if not os.path.exists(SUDOERS_FILE):
        problems.append(f"{SUDOERS_FILE} is missing")
    if not Path(SGE_ROOT, SGE_CELL, "common", "bootstrap").exists():
        problems.append(f"Grid Engine cell {SGE_ROOT}/{SGE_CELL} is not configured")
    if problems:
        raise LabUnavailable("metasched lab prerequisites missing: " + "; ".join(problems) + f". {SETUP_HINT}")


@dataclass
class Node:
    """One SSH node of the lab. Node 0 is the frontend (master of both schedulers)."""
    name: str
    address: str
    port: int
    sshd: Sshd
    netns: Netns | None = None

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.address, self.port)


@dataclass
class Lab:
    """Frontend sshd + ``n_nodes`` namespace nodes + Grid Engine + Slurm, as a context manager.

    After ``start()``: ``nodes[0]`` is the frontend (127.0.0.1, a free port), ``nodes[1:]`` the
    namespace nodes (172.31.250.11, .12, ... port 22). See the report in the module docstring of
    tests/lab/fixtures.py for how tests use it.
    """
    n_nodes: int = 2
    own_pids: bool = False          # each namespace node's sshd in its own PID namespace (own_pid_namespace)
    hostname: str = field(default_factory=socket.gethostname)
    ssh_user: str = SSH_USER
    users: tuple[str, ...] = JOB_OWNERS
    workdir: Path | None = None
    nodes: list[Node] = field(default_factory=list)
    keys: Keys | None = None
    sge: GridEngine | None = None
    slurm: Slurm | None = None
    spark: Spark | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _started: list = field(default_factory=list, repr=False)
    _extra_sshds: list = field(default_factory=list, repr=False)

    # -- what tests read ----------------------------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.keys.client_key

    @property
    def known_hosts(self) -> Path:
        return self.keys.known_hosts

    @property
    def node_endpoints(self) -> list[tuple[str, int]]:
        return [n.endpoint for n in self.nodes]

    @property
    def master(self) -> Node:
        return self.nodes[0]

    @property
    def jobcomp_path(self) -> Path:
        return self.slurm.jobcomp

    @property
    def sge_env(self) -> dict[str, str]:
        return dict(SGE_ENV)

    sge_bin: str = SGE_BIN
    slurm_partition: str = SLURM_PARTITION
    sge_queue: str = SGE_QUEUE
    sge_pe: str = SGE_PE

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Lab":
        check_prerequisites()
        # Fail before starting anything when a daemon (a previous lab?) holds the schedulers' ports.
        require_ports_free([SGE_QMASTER_PORT, SGE_EXECD_PORT, SLURMCTLD_PORT, SLURMD_PORT], "metasched lab")
        t0 = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="metasched-lab-"))
        self.workdir.chmod(0o755)
        try:
            self.keys = self._up(Keys(self.workdir))
            names = {f"ms-n{i}": f"{SUBNET_PREFIX}{10 + i}" for i in range(1, self.n_nodes + 1)}
            self._up(HostsEntries(names))
            front = Sshd("frontend", "127.0.0.1", free_port(), self.keys, self.workdir)
            self.nodes = [Node("frontend", front.addr, front.port, self._up(front))]
            for name, addr in names.items():
                ns = self._up(Netns(name, addr, self.hostname, names))
                sshd = self._up(Sshd(name, addr, 22, self.keys, self.workdir, netns=ns, own_pids=self.own_pids))
                self.nodes.append(Node(name, addr, 22, sshd, ns))
            self.timings["ssh_nodes"] = time.monotonic() - t0
            t1 = time.monotonic()
            self.sge = self._up(GridEngine(self.workdir, self.hostname, aliases=list(names)))
            self.timings["gridengine"] = time.monotonic() - t1
            t1 = time.monotonic()
            self.slurm = self._up(Slurm(self.workdir, self.hostname))
            self.timings["slurm"] = time.monotonic() - t1
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def _up(self, part):
        """Start ``part`` and remember it for teardown (only once it started: a part that
        fails in start() cleans up after itself)."""
        part.start()
        self._started.append(part)
        return part

    def stop(self) -> None:
        """Stop everything that was started, newest first; keep going past errors, then raise the first."""
        t0 = time.monotonic()
        errors: list[BaseException] = []
        for sshd in self._extra_sshds:
            try:
                sshd.stop()
            except BaseException as e:
                errors.append(e)
        self._extra_sshds.clear()
        if self.sge is not None and self.sge in self._started:
            try:
                self.sge.begin_stop()   # the qmaster shuts down while we stop the rest
            except BaseException as e:
                errors.append(e)
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except BaseException as e:
                errors.append(e)
        if self.workdir is not None and not os.environ.get("METASCHED_LAB_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.timings["stop"] = time.monotonic() - t0
        if errors:
            raise errors[0]

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start_spark(self) -> Spark:
        """Spark's Master and Worker, started once, on first use; stopped with the rest of the lab."""
        if self.spark is None:
            t0 = time.monotonic()
            self.spark = self._up(Spark(self.workdir))
            self.timings["spark"] = time.monotonic() - t0
        return self.spark

    # -- helpers for tests ------------------------------------------------------------------
    def stop_node_sshd(self, index: int) -> None:
        """Make node ``index`` unreachable over SSH (its sshd stops; its namespace stays)."""
        self.nodes[index].sshd.stop()

    def start_node_sshd(self, index: int) -> None:
        """Bring node ``index``'s sshd back (same address, port and host key)."""
        self.nodes[index].sshd.start()

    def start_untrusted_sshd(self) -> Sshd:
        """An extra sshd on 127.0.0.1 (free port) whose host key is NOT in known_hosts.
        Stopped by ``lab.stop()`` if the test does not stop it first."""
        sshd = Sshd(f"untrusted{len(self._extra_sshds)}", "127.0.0.1", free_port(), self.keys,
                    self.workdir, trusted=False)
        sshd.start()
        self._extra_sshds.append(sshd)
        return sshd

    def connect(self, node: int | tuple[str, int] = 0, timeout: float = 10) -> paramiko.SSHClient:
        """paramiko client as the service user with the lab key, known_hosts and RejectPolicy,
        over a TCP_NODELAY socket (as the service itself connects)."""
        addr, port = self.nodes[node].endpoint if isinstance(node, int) else node
        sock = socket.create_connection((addr, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(addr, port=port, username=self.ssh_user, key_filename=str(self.key_file),
                           sock=sock, timeout=timeout, auth_timeout=timeout, banner_timeout=timeout,
                           allow_agent=False, look_for_keys=False)
        except BaseException:
            client.close()
            sock.close()
            raise
        return client


def ssh_exec(client: paramiko.SSHClient, command: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``command``; return (exit status, stdout, stderr). Reads output before the status."""
    chan = client.get_transport().open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        out = chan.makefile("rb").read().decode(errors="replace")
        err = chan.makefile_stderr("rb").read().decode(errors="replace")
        return chan.recv_exit_status(), out, err
    finally:
        chan.close()
