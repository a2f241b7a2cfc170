"""Many SSH nodes on one machine, cheaply: N (1..4,000) network namespaces, each with its own sshd in its own
PID namespace, for scaling tests and benchmarks of the transport and the poller.

Why apart from :class:`tests.lab.lab.Lab`: the lab is a machine-wide singleton (Grid Engine, Slurm, fixed
ports, /etc/slurm; tests/lab/fixtures.py holds a lock for it), and its few nodes are set up one by one. A
farm needs none of that and can run beside a running lab:

* its own names and addresses: farm slot ``s`` (0..7, taken with a lock file, so two farms never collide)
  has namespaces ``msf<s>n<i>``, veths ``msf<s>v<i>``, bridges ``msf<s>b<k>`` and addresses
  10.213.<16s+k>.<2..251>/24 (250 nodes per bridge: a Linux bridge takes at most 1,023 ports), never the
  lab's ``ms-n*`` nodes on 172.31.250.0/24;
* the network in a handful of ``ip -batch`` runs (one for the host side, one ``ip -n`` per namespace),
  host keys generated in-process, one sshd_config shared by every node (per node only ``-o`` options);
* each sshd is pid 1 of its own PID namespace (:func:`tests.lab.lab.own_pid_namespace`), so a node agent
  scans only its node's processes, as on a real machine; readiness is the sshd's pid file (written once it
  listens), not a connection, which would cost every sshd a fork;
* faults a test can make and undo: :meth:`blackhole` (the node's veth down: packets vanish, no RST) and
  :meth:`kill_sshd` (pid 1 of the node dies, and with it every session and agent on it);
* teardown by pid (KILL to each ``unshare`` we started; the kernel ends the namespace with its pid 1), then
  every veth deleted explicitly (a namespace's veth otherwise goes away asynchronously), the namespaces
  and bridges deleted, the neighbour-table limits put back if the farm raised them.

Only stdlib + cryptography (paramiko's own dependency).
"""
from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .lab import SSH_USER, LabError, LabUnavailable, SETUP_HINT, own_pid_namespace, pid_alive, run, tail

SLOTS = 8
PER_BRIDGE = 250
MAX_NODES = 16 * PER_BRIDGE
LOCK_DIR = Path(os.environ.get("METASCHED_FARM_LOCK_DIR", "/run"))
NEIGH = Path("/proc/sys/net/ipv4/neigh/default")


@dataclass
class FarmNode:
    index: int
    name: str          # the network namespace
    address: str
    veth: str          # host side of its veth pair
    port: int = 22
    host_key: Path | None = None
    proc: subprocess.Popen | None = None   # `unshare` (sshd is its child, pid 1 of the node)

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.address, self.port)


class NodeFarm:
    """``n`` namespace nodes with their own sshd and PID namespace; a context manager. After ``start()``:
    ``nodes[i].address`` (port 22), ``key_file`` and ``known_hosts`` (Paths) for user ``ssh_user``."""

    def __init__(self, n: int, workdir: Path | None = None, parallel: int = 4):
        if not 1 <= n <= MAX_NODES:
            raise ValueError(f"a farm has 1..{MAX_NODES} nodes, not {n}")
        self.n = n
        self.parallel = parallel
        self.ssh_user = SSH_USER
        self.slot: int | None = None
        self.nodes: list[FarmNode] = []
        self.bridges: list[tuple[str, str]] = []     # (name, address)
        self.timings: dict[str, float] = {}
        self._workdir_arg = workdir
        self.dir: Path | None = None
        self._lock = None
        self._neigh_saved: dict[str, str] = {}
        self._created_links = False

    # -- what tests read ----------------------------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [n.endpoint for n in self.nodes]

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "NodeFarm":
        check_prerequisites()
        t0 = time.monotonic()
        self._take_slot()
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f"metasched-farm{self.slot}-", dir=self._workdir_arg))
            self.dir.chmod(0o755)          # sshd reads authorized_keys as the user
            (self.dir / "nodes").mkdir()
            s = self.slot
            self.bridges = [(f"msf{s}b{k}", f"10.213.{16 * s + k}.1") for k in range((self.n - 1) // PER_BRIDGE + 1)]
            self.nodes = [FarmNode(i, f"msf{s}n{i}", f"10.213.{16 * s + i // PER_BRIDGE}.{2 + i % PER_BRIDGE}",
                                   f"msf{s}v{i}") for i in range(self.n)]
            self._refuse_leftovers()
            self._write_keys()
            self.timings["keys"] = time.monotonic() - t0
            t1 = time.monotonic()
            self._raise_neighbour_limits()
            self._network()
            self.timings["network"] = time.monotonic() - t1
            t1 = time.monotonic()
            self._write_sshd_config()
            for node in self.nodes:
                self._spawn(node)
            self._wait_listening(self.nodes, timeout=60 + self.n * 0.05)
            self.timings["sshd"] = time.monotonic() - t1
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Everything the farm made, by pid and by name; keeps going past errors, then raises the first."""
        t0 = time.monotonic()
        errors: list[BaseException] = []
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGKILL)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired as e:
                    errors.append(LabError(f"farm node {node.name}: unshare {node.proc.pid} did not die: {e}"))
                node.proc = None
        if self._created_links:
            try:
                self._delete_network()
            except BaseException as e:
                errors.append(e)
            self._created_links = False
        self._restore_neighbour_limits()
        if self.dir is not None and not os.environ.get("METASCHED_LAB_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self.timings["stop"] = time.monotonic() - t0
        if errors:
            raise errors[0]

    def __enter__(self) -> "NodeFarm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------
    def blackhole(self, i: int) -> None:
        """Node ``i`` drops off the network: its veth goes down, packets to it vanish (no RST, no ICMP)."""
        run(["ip", "link", "set", self.nodes[i].veth, "down"])

    def restore(self, i: int) -> None:
        run(["ip", "link", "set", self.nodes[i].veth, "up"])

    def kill_sshd(self, i: int) -> None:
        """Node ``i``'s sshd dies (KILL to its unshare; its PID namespace, sessions and agents go with it)."""
        node = self.nodes[i]
        sshd = self.sshd_pid(i)
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        node.proc = None
        # unshare is gone at once; its child dies of --kill-child a moment later: until then its listening
        # socket still completes connects (a test would see an EOF in the handshake, not a refusal)
        t0 = time.monotonic()
        while sshd is not None and pid_alive(sshd):
            if time.monotonic() - t0 > 10:
                raise LabError(f"farm node {node.name}: sshd {sshd} still alive 10 s after its unshare was killed")
            time.sleep(0.01)

    def start_sshd(self, i: int) -> None:
        """Node ``i``'s sshd again (same address and host key); returns once it listens."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            return
        self._spawn(node)
        self._wait_listening([node], timeout=30)

    def exec_in(self, i: int, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``argv`` in node ``i``'s network namespace (not its PID namespace), as root."""
        return run(["ip", "netns", "exec", self.nodes[i].name, *argv], timeout=timeout, check=False)

    def sshd_pid(self, i: int) -> int | None:
        """The node's sshd as seen from the host (the child of our unshare), None if it is not running."""
        proc = self.nodes[i].proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    # -- internals ----------------------------------------------------------------------------
    def _take_slot(self) -> None:
        for slot in range(SLOTS):
            f = open(LOCK_DIR / f"metasched-farm{slot}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self.slot, self._lock = slot, f
            return
        raise LabError(f"all {SLOTS} farm slots are in use ({LOCK_DIR}/metasched-farm*.lock): wait for a farm to end")

    def _refuse_leftovers(self) -> None:
        """Namespaces of this slot left by a farm that crashed: deleted if empty, refused if something runs there."""
        prefix = f"msf{self.slot}n"
        stale = [p.name for p in Path("/run/netns").glob(f"{prefix}*")] if Path("/run/netns").exists() else []
        busy = {}
        for name in stale:
            pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
            if pids:
                busy[name] = pids
        if busy:
            raise LabError(f"farm slot {self.slot}: namespaces left by an earlier run still hold processes "
                           f"{busy}: stop those pids, then `ip netns del` them")
        links = [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"msf{self.slot}")]
        batch = [f"link del {name}" for name in links] + [f"netns del {name}" for name in stale]
        if batch:
            _ip_batch(batch, check=False)

    def _write_keys(self) -> None:
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        user = pwd.getpwnam(SSH_USER)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{SSH_USER}@metasched-farm", "-f", str(self.key_file)])
        os.chown(self.key_file, user.pw_uid, user.pw_gid)
        shutil.copyfile(f"{self.key_file}.pub", self.dir / "authorized_keys")
        (self.dir / "authorized_keys").chmod(0o644)
        known = []
        for node in self.nodes:
            key = Ed25519PrivateKey.generate()
            node.host_key = self.dir / "nodes" / f"{node.index}.key"
            fd = os.open(node.host_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
            pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
            known.append(f"{node.address} {pub}\n")
        self.known_hosts.write_text("".join(known))
        self.known_hosts.chmod(0o644)

    def _raise_neighbour_limits(self) -> None:
        """Every node is a neighbour of the host and the host one of every node, all in the kernel's one ARP
        table (thresholds 128/512/1,024 by default): above gc_thresh3 new neighbours are refused."""
        want = {"gc_thresh1": 2 * self.n + 128, "gc_thresh2": 4 * self.n + 512, "gc_thresh3": 8 * self.n + 1024}
        for name, value in want.items():
            path = NEIGH / name
            cur = path.read_text().strip()
            if int(cur) < value:
                self._neigh_saved[name] = cur
        for name in ("gc_thresh3", "gc_thresh2", "gc_thresh1"):     # keep 1 <= 2 <= 3 at every step
            if name in self._neigh_saved:
                (NEIGH / name).write_text(str(want[name]))

    def _restore_neighbour_limits(self) -> None:
        for name in ("gc_thresh1", "gc_thresh2", "gc_thresh3"):
            if name in self._neigh_saved:
                try:
                    (NEIGH / name).write_text(self._neigh_saved.pop(name))
                except OSError:
                    pass

    def _network(self) -> None:
        self._created_links = True
        batch = []
        for name, addr in self.bridges:
            batch += [f"link add {name} type bridge", f"addr add {addr}/24 dev {name}", f"link set {name} up"]
        batch += [f"netns add {n.name}" for n in self.nodes]
        _ip_batch(batch)
        batch = []
        for n in self.nodes:
            bridge = self.bridges[n.index // PER_BRIDGE][0]
            batch += [f"link add {n.veth} type veth peer name eth0 netns {n.name}",
                      f"link set {n.veth} master {bridge} up"]
        _ip_batch(batch)

        def inside(n: FarmNode) -> None:
            _ip_batch([f"addr add {n.address}/24 dev eth0", "link set eth0 up", "link set lo up"], netns=n.name)
        with ThreadPoolExecutor(self.parallel) as pool:
            list(pool.map(inside, self.nodes))

    def _delete_network(self) -> None:
        links = {p.name for p in Path("/sys/class/net").iterdir()}
        batch = [f"link del {n.veth}" for n in self.nodes if n.veth in links]
        batch += [f"netns del {n.name}" for n in self.nodes if Path("/run/netns", n.name).exists()]
        batch += [f"link del {name}" for name, _ in self.bridges if name in links]
        if batch:
            _ip_batch(batch, check=False)
        left = [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"msf{self.slot}")]
        left += [p.name for p in Path("/run/netns").glob(f"msf{self.slot}n*")] if Path("/run/netns").exists() else []
        if left:
            raise LabError(f"farm slot {self.slot}: could not delete {sorted(left)[:10]} ({len(left)} left)")

    def _write_sshd_config(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        (self.dir / "sshd_config").write_text("\n".join([
            "# metasched farm node (per node: -o ListenAddress, HostKey, PidFile)",
            "Port 22",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            f"AllowUsers {SSH_USER}",
            "MaxSessions 16",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel INFO",
            "",
        ]))

    def _pid_file(self, node: FarmNode) -> Path:
        return self.dir / "nodes" / f"{node.index}.pid"

    def _log(self, node: FarmNode) -> Path:
        return self.dir / "nodes" / f"{node.index}.log"

    def _spawn(self, node: FarmNode) -> None:
        pid_file = self._pid_file(node)
        pid_file.unlink(missing_ok=True)      # a KILLed sshd leaves its pid file behind
        argv = ["ip", "netns", "exec", node.name, *own_pid_namespace([
            "/usr/sbin/sshd", "-D", "-f", str(self.dir / "sshd_config"), "-E", str(self._log(node)),
            "-o", f"ListenAddress={node.address}", "-o", f"HostKey={node.host_key}", "-o", f"PidFile={pid_file}"])]
        node.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def _wait_listening(self, nodes: list[FarmNode], timeout: float) -> None:
        """Until every sshd wrote its pid file (sshd writes it once its socket listens)."""
        t0 = time.monotonic()
        pending = list(nodes)
        while pending:
            dead = [n for n in pending if n.proc is None or n.proc.poll() is not None]
            if dead:
                n = dead[0]
                raise LabError(f"farm node {n.name}: sshd exited ({len(dead)} dead)\n{tail(self._log(n))}")
            pending = [n for n in pending if not self._pid_file(n).exists()]
            if not pending:
                return
            if time.monotonic() - t0 > timeout:
                raise LabError(f"farm: {len(pending)} sshd(s) not listening after {timeout:.0f} s, e.g. "
                               f"{pending[0].name}\n{tail(self._log(pending[0]))}")
            time.sleep(0.05)


def _ip_batch(lines: list[str], netns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *([] if check else ["-force"]), "-batch", "-"]
    cp = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr.strip()[:2000]}")


def check_prerequisites() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("the farm must run as root")
    for path in ("/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/unshare"):
        if not os.access(path, os.X_OK):
            problems.append(f"{path} is missing")
    if shutil.which("ip") is None:
        problems.append("`ip` (iproute2) is missing")
    try:
        pwd.getpwnam(SSH_USER)
    except KeyError:
        problems.append(f"user {SSH_USER} does not exist")
    if problems:
        raise LabUnavailable("metasched farm prerequisites missing: " + "; ".join(problems) + f". {SETUP_HINT}")


def pids_in(farm: NodeFarm) -> list[int]:
    """Every live process of the farm as seen from the host (unshare, sshd and below): for leak checks."""
    from .lab import descendants
    out = []
    for n in farm.nodes:
        if n.proc is not None and pid_alive(n.proc.pid):
            out += [n.proc.pid, *descendants(n.proc.pid)]
    return out
