"""``metasched-api <config> --check``: can this service work, as configured, from this account?

Run it as the service user before the first start and after every change of nodes, keys or sudoers.
It prints one row per node and check (node, check, result, detail) and exits non-zero when anything
required fails. Warnings (``warn``) point at risky settings and checks it could not make; they never
change the exit status.

What it checks, with the same code paths the service uses (``metasched.transport``):
- the config (already parsed by the caller) and the database directory; that the database, its WAL/SHM
  files and any other SQLite file in its directory (backups) are readable by the service user only (or
  ``server.database_group``): they hold every user's jobs;
- identity settings (the trusted proxy user exists; a unix socket without ``auth.proxy_user`` is a
  warning, because nginx relaying over it would act as its own user);
- SSH prerequisites (known_hosts, key file), then every node: one command over its transport;
- every scheduler's master node: the scheduler's commands exist, the service user may run the
  submit/cancel commands as an ordinary user (``sudo -n -l -u <user> <command>``, nothing is run)
  and may NOT run them as root; the node agent helper when ``enforcement.helper`` is set.

The sudo checks need an ordinary account to test with: the first member of ``auth.admins`` that is an
ordinary user (uid >= ``auth.min_uid``) on the frontend; without one they are a ``warn`` row.
Checks are plain functions over a list of rows and a transport factory, so a lab test can run them
against real sshd/Grid Engine/Slurm nodes with :func:`collect`.
"""
from __future__ import annotations

import grp
import os
import pwd
import shlex
import sqlite3
import sys
from dataclasses import dataclass
from typing import Callable, TextIO

from .backends import BACKENDS, LocalBackend
from .config import Config, NodeConfig, SchedulerConfig
from .engine.fanout import Call, FanOut
from .transport import Result, for_node

OK, WARN, FAIL = "ok", "warn", "FAIL"
FRONTEND = "-"          # the node column of checks made on this machine, not on a node

# The commands the service runs on a scheduler's master node, as itself and after sudo as the job owner, are
# each backend's status_commands and sudo_commands (backends.BACKENDS).


@dataclass(frozen=True)
class Row:
    node: str
    check: str
    result: str        # ok | warn | FAIL
    detail: str


TransportFactory = Callable[[Config, NodeConfig], object]


def make_transport(cfg: Config, node: NodeConfig):
    """The transport the service would use for this node (same classes, same options)."""
    return for_node(cfg, node.ip, node.port, node.transport)


def node_label(node: NodeConfig) -> str:
    return f"{node.ip}:{node.port}" if node.transport == "ssh" else f"{node.ip} (local)"


def _first_line(*texts: str) -> str:
    for t in texts:
        for line in (t or "").splitlines():
            if line.strip():
                return line.strip()[:200]
    return ""


def _problem(res: Result) -> str:
    return res.error or _first_line(res.stderr, res.stdout) or f"exit status {res.rc}"


# -- frontend checks ------------------------------------------------------------------------------

def check_config(cfg: Config) -> list[Row]:
    return [Row(FRONTEND, "config", OK, f"{cfg.source}: policy {cfg.policy.value}, {len(cfg.nodes)} node(s), "
                                        f"{len(cfg.schedulers)} scheduler(s)")]


def check_database(cfg: Config) -> list[Row]:
    path = os.path.abspath(cfg.server.database)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        return [Row(FRONTEND, "database", FAIL, f"directory {parent} does not exist")]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [Row(FRONTEND, "database", FAIL, f"directory {parent} is not writable by "
                                                f"{_current_user()} (SQLite creates its WAL files beside it)")]
    if not os.path.exists(path):
        return [Row(FRONTEND, "database", OK, f"{path} will be created at start")]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [Row(FRONTEND, "database", FAIL, f"cannot read {path}: {exc}")]
    if not os.access(path, os.W_OK):
        return [Row(FRONTEND, "database", FAIL, f"{path} is not writable by {_current_user()}")]
    return [Row(FRONTEND, "database", OK, f"{path}: schema version {version} (migrated at start)")]


def check_database_privacy(cfg: Config) -> list[Row]:
    """The database files are the service user's alone (or server.database_group's). A file of ours that
    start would fix is a warning; one we cannot fix (another owner), or a backup, is a failure."""
    from .db.core import SQLITE_MAGIC, database_files, exposure, private_mode
    path = os.path.abspath(cfg.server.database)
    parent = os.path.dirname(path)
    group = cfg.server.database_group
    who = f"the service user and group {group}" if group else "the service user only"
    rows = []
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            return [Row(FRONTEND, "database files", FAIL, f"server.database_group: no such group {group!r}")]
    ours = database_files(path)
    if ours:
        bad = [(f, exposure(f, group)) for f in ours]
        bad = [(f, why) for f, why in bad if why]
        if not bad:
            rows.append(Row(FRONTEND, "database files", OK, f"{', '.join(os.path.basename(f) for f in ours)}: "
                                                            f"mode {private_mode(group):04o}, readable by {who}"))
        for f, why in bad:
            fixable = os.lstat(f).st_uid == os.geteuid()
            rows.append(Row(FRONTEND, "database files", WARN if fixable else FAIL,
                            f"{f}: {why}; " + ("metasched-api makes it private at start" if fixable else
                                               f"it belongs to uid {os.lstat(f).st_uid}: chown it to the service "
                                               f"user (metasched-api then makes it private)")))
    backups = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        names = []
    for name in names:
        f = os.path.join(parent, name)
        if f in (path, path + "-wal", path + "-shm", path + "-journal") or not os.path.isfile(f):
            continue
        try:
            with open(f, "rb") as fh:
                if fh.read(16) != SQLITE_MAGIC:
                    continue
        except OSError:
            continue
        why = exposure(f, group)
        if why:
            backups.append(f"{name} ({why})")
    if backups:
        rows.append(Row(FRONTEND, "database backups", FAIL,
                        f"readable by more than {who} in {parent}: {'; '.join(backups)}: chmod "
                        f"{private_mode(group):03o} them (write backups with umask 077)"))
    return rows


def check_socket(cfg: Config) -> list[Row]:
    """The unix socket's path: free or stale (taken at start), or a running service's (a start would
    refuse: it never replaces a live socket)."""
    if not cfg.server.socket:
        return []
    from .runner import socket_state
    path = cfg.server.socket
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        return [Row(FRONTEND, "socket", FAIL, f"{parent} is not writable by {_current_user()}")]
    state, detail = socket_state(path)
    if state == "live":
        return [Row(FRONTEND, "socket", WARN, detail + " (a second start would refuse, leaving it alone)")]
    if state == "other":
        return [Row(FRONTEND, "socket", FAIL, detail)]
    return [Row(FRONTEND, "socket", OK, detail + ("" if state == "stale" else "; created at start, "
                                                                               "connectable by every local user"))]


def check_local_job_files(cfg: Config) -> list[Row]:
    """local schedulers: where their jobs' files go, and whether the test user's home can keep an exit
    status safe (the launcher refuses a home others may write)."""
    rows = []
    user = sudo_test_user(cfg)
    for s in cfg.schedulers:
        if not issubclass(BACKENDS[s.type], LocalBackend):      # its launcher keeps the exit status (Spark's too)
            continue
        detail = "output files created 0600 by the owner in the job's directory; exit status in ~owner/.metasched (0700)"
        result = OK
        if user and cfg.nodes[s.master].transport == "local":
            home = pwd.getpwnam(user).pw_dir
            try:
                st = os.stat(home)
            except OSError as exc:
                result, detail = WARN, f"{user}'s home {home}: {exc.strerror}: their jobs would be refused"
            else:
                if st.st_mode & 0o022 and not st.st_mode & 0o1000:
                    result, detail = WARN, (f"{user}'s home {home} is writable by others: their jobs would be "
                                            f"refused (the exit status could not be kept safe there)")
        rows.append(Row(FRONTEND, f"{s.name} job files", result, detail))
    return rows


def check_identity(cfg: Config) -> list[Row]:
    rows = []
    if cfg.auth.proxy_user:
        try:
            pwd.getpwnam(cfg.auth.proxy_user)
            rows.append(Row(FRONTEND, "trusted proxy", OK, f"{cfg.auth.proxy_user} may name users in "
                                                           f"{cfg.auth.proxy_header}"))
        except KeyError:
            rows.append(Row(FRONTEND, "trusted proxy", FAIL, f"auth.proxy_user: no such user "
                                                             f"{cfg.auth.proxy_user!r} on this machine"))
    elif cfg.server.socket:
        rows.append(Row(FRONTEND, "trusted proxy", WARN,
                        "auth.proxy_user is not set: requests nginx relays over the unix socket would act as "
                        "nginx's own user; set it to nginx's worker user (www-data)"))
    unknown = [a for a in cfg.auth.admins if not _user_exists(a)]
    if unknown:
        rows.append(Row(FRONTEND, "admins", WARN, f"auth.admins: no such user(s) here: {', '.join(unknown)}"))
    return rows


def check_ssh_setup(cfg: Config) -> list[Row]:
    if not any(n.transport == "ssh" for n in cfg.nodes):
        return []
    rows = []
    kh = os.path.expanduser(cfg.ssh.known_hosts)
    if not os.path.isfile(kh):
        rows.append(Row(FRONTEND, "known_hosts", FAIL, f"{kh} does not exist: add every node's host key "
                                                       f"(ssh-keyscan, then compare fingerprints)"))
    elif not os.access(kh, os.R_OK):
        rows.append(Row(FRONTEND, "known_hosts", FAIL, f"{kh} is not readable by {_current_user()}"))
    else:
        rows.append(Row(FRONTEND, "known_hosts", OK, kh))
    if cfg.ssh.key_file:
        key = os.path.expanduser(cfg.ssh.key_file)
        if not os.path.isfile(key):
            rows.append(Row(FRONTEND, "ssh key", FAIL, f"{key} does not exist"))
        elif not os.access(key, os.R_OK):
            rows.append(Row(FRONTEND, "ssh key", FAIL, f"{key} is not readable by {_current_user()}"))
        elif os.stat(key).st_mode & 0o077:
            rows.append(Row(FRONTEND, "ssh key", WARN, f"{key} is readable by group or others (chmod 600)"))
        else:
            rows.append(Row(FRONTEND, "ssh key", OK, key))
    else:
        rows.append(Row(FRONTEND, "ssh key", OK, f"default keys of {_current_user()}"))
    return rows


# -- node checks ----------------------------------------------------------------------------------

def check_reach(cfg: Config, transports: dict[int, object]) -> tuple[list[Row], set[int]]:
    """One command per node, in parallel; returns the rows and the indexes of the nodes that answered."""
    rows, up = [], set()
    fan = FanOut(cfg.ssh.max_parallel)
    try:
        results = fan.run([Call(i, lambda t=transports[i]: t.run("uname -n", cfg.ssh.command_timeout))
                           for i in range(len(cfg.nodes))])
    finally:
        fan.close()
    for i, (node, res) in enumerate(zip(cfg.nodes, results)):
        check = "ssh" if node.transport == "ssh" else "local"
        if res.ok:
            up.add(i)
            via = transports[i].describe()
            rows.append(Row(node_label(node), check, OK, f"answered as {res.stdout.strip() or '?'} "
                                                         f"in {res.elapsed * 1000:.0f} ms (via {via})"))
        else:
            rows.append(Row(node_label(node), check, FAIL, _problem(res)))
    return rows, up


def _command_path(sched: SchedulerConfig, name: str) -> str:
    bin_dir = sched.options.get("bin_dir")
    return os.path.join(str(bin_dir), name) if bin_dir and name not in ("sh", "setsid", "ps") else name


def check_commands(sched: SchedulerConfig, node: NodeConfig, transport) -> list[Row]:
    names = [_command_path(sched, c) for c in BACKENDS[sched.type].status_commands]
    script = "; ".join(f"command -v {shlex.quote(n)} >/dev/null 2>&1 || echo {shlex.quote(n)}" for n in names)
    res = transport.run(script)
    check = f"{sched.name} commands"
    if res.error:
        return [Row(node_label(node), check, FAIL, res.error)]
    missing = res.stdout.split()
    if missing:
        return [Row(node_label(node), check, FAIL, f"not found in the PATH of {transport.describe()}: "
                                                   f"{', '.join(missing)}")]
    return [Row(node_label(node), check, OK, " ".join(names))]


FENCE_CHECK = ('command -v flock >/dev/null 2>&1 || { echo "flock not found (util-linux)"; exit 1; }; '
               'd="$HOME/.metasched"; umask 077; mkdir -p "$d" 2>/dev/null && [ -w "$d" ] '
               '|| { echo "cannot create or write $d"; exit 1; }; echo "$d"')


def check_fence(node: NodeConfig, transport) -> list[Row]:
    """Every submit round trip runs inside the lease's fence on the scheduler's master node: flock and a
    private directory of the SSH user (metasched/engine/fence.py)."""
    res = transport.run(FENCE_CHECK)
    if res.error:
        return [Row(node_label(node), "submit fence", FAIL, res.error)]
    detail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else (res.stderr.strip() or f"exit {res.rc}")
    if res.rc != 0:
        return [Row(node_label(node), "submit fence", FAIL, detail)]
    return [Row(node_label(node), "submit fence", OK, f"flock; fence files in {detail}")]


def transport_user(cfg: Config, node: NodeConfig) -> str:
    """Who the commands run as on the node (the service user unless ssh.user says otherwise)."""
    if node.transport == "ssh" and cfg.ssh.user:
        return cfg.ssh.user
    return _current_user()


def sudo_test_user(cfg: Config) -> str | None:
    """An ordinary account to test `sudo -u` with: the first such member of auth.admins."""
    for name in cfg.auth.admins:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid >= cfg.auth.min_uid:
            return name
    return None


def check_sudo(cfg: Config, node: NodeConfig, transport, schedulers: list[SchedulerConfig]) -> list[Row]:
    """May the service user run the submit/cancel commands as an owner (and never as root)?

    ``sudo -n -l -u <user> <command>`` asks the node's sudo policy without running anything."""
    label = node_label(node)
    runner = transport_user(cfg, node)
    if runner == "root":
        return [Row(label, "sudo", WARN, "commands run as root here, so sudo rules are not tested; deploy as "
                                         "the service user (metascheduler; README.md, 'Deploying on a cluster')")]
    commands: list[str] = []
    for s in schedulers:
        for c in BACKENDS[s.type].sudo_commands:
            path = _command_path(s, c)
            if path not in commands:
                commands.append(path)
    rows = []
    user = sudo_test_user(cfg)
    if user is None:
        rows.append(Row(label, "sudo as a job owner", WARN,
                        "no test user: add an ordinary user to auth.admins to test the sudoers rule"))
    else:
        denied = []
        for c in commands:
            res = transport.run(shlex.join(["sudo", "-n", "-l", "-u", user, c]))
            if res.error:
                return rows + [Row(label, f"sudo as {user}", FAIL, res.error)]
            if res.rc != 0:
                denied.append(f"{c} ({_first_line(res.stderr, res.stdout) or f'exit {res.rc}'})")
        if denied:
            rows.append(Row(label, f"sudo as {user}", FAIL, f"{runner} may not run as {user}: {'; '.join(denied)}"
                                                             f" (install deploy/sudoers/metasched)"))
        else:
            rows.append(Row(label, f"sudo as {user}", OK, f"{runner} may run {' '.join(commands)}"))
    allowed = []
    for argv in [["sudo", "-n", "-u", "root", "true"]] + [["sudo", "-n", "-l", "-u", "root", c] for c in commands]:
        res = transport.run(shlex.join(argv))
        if res.error:
            return rows + [Row(label, "sudo as root refused", FAIL, res.error)]
        if res.rc == 0:
            allowed.append(" ".join(argv[argv.index("root") + 1:]))
    if allowed:
        rows.append(Row(label, "sudo as root refused", FAIL,
                        f"{runner} may run as root: {', '.join(allowed)}; narrow the rule to (ALL, !root)"))
    else:
        rows.append(Row(label, "sudo as root refused", OK, f"{runner} cannot become root"))
    return rows


def check_agent(cfg: Config, node: NodeConfig, transport) -> list[Row]:
    helper = cfg.enforcement.helper
    res = transport.run(shlex.join(["sudo", "-n", "-l", "-u", "root", helper]))
    if res.ok:
        return [Row(node_label(node), "node agent", OK, f"{helper} runs as root through sudo")]
    return [Row(node_label(node), "node agent", FAIL,
                f"{helper}: {_problem(res)} (deploy/install-node-agent.sh and deploy/sudoers/metasched)")]


# -- all together ---------------------------------------------------------------------------------

def collect(cfg: Config, transport_factory: TransportFactory = make_transport) -> list[Row]:
    rows = (check_config(cfg) + check_database(cfg) + check_database_privacy(cfg) + check_socket(cfg)
            + check_identity(cfg) + check_local_job_files(cfg) + check_ssh_setup(cfg))
    transports = {i: transport_factory(cfg, n) for i, n in enumerate(cfg.nodes)}
    try:
        reach, up = check_reach(cfg, transports)
        rows += reach
        masters: dict[int, list[SchedulerConfig]] = {}
        for s in cfg.schedulers:
            masters.setdefault(s.master, []).append(s)
        for i, scheds in masters.items():
            node = cfg.nodes[i]
            if i not in up:
                rows.append(Row(node_label(node), "scheduler checks", FAIL,
                                f"not checked: the node did not answer ({', '.join(s.name for s in scheds)})"))
                continue
            for s in scheds:
                rows += check_commands(s, node, transports[i])
            rows += check_fence(node, transports[i])
            rows += check_sudo(cfg, node, transports[i], scheds)
        if cfg.enforcement.helper and cfg.enforcement.method != "none":
            for i in sorted(up):
                rows += check_agent(cfg, cfg.nodes[i], transports[i])
    finally:
        for t in transports.values():
            t.close()
    return rows


def format_rows(rows: list[Row]) -> str:
    head = Row("NODE", "CHECK", "RESULT", "DETAIL")
    widths = [max(len(getattr(r, f)) for r in [head] + rows) for f in ("node", "check", "result")]
    lines = []
    for r in [head] + rows:
        lines.append(f"{r.node:<{widths[0]}}  {r.check:<{widths[1]}}  {r.result:<{widths[2]}}  {r.detail}")
    return "\n".join(lines)


def run_check(cfg: Config, out: TextIO | None = None,
              transport_factory: TransportFactory = make_transport) -> int:
    """Print the table; 0 when every required check passed, 1 otherwise."""
    out = out or sys.stdout
    rows = collect(cfg, transport_factory)
    failed = sum(r.result == FAIL for r in rows)
    warned = sum(r.result == WARN for r in rows)
    print(format_rows(rows), file=out)
    print(f"\n{len(rows)} checks: {len(rows) - failed - warned} ok, {warned} warning(s), {failed} failed"
          + ("" if failed else " - ready to start"), file=out)
    return 1 if failed else 0


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
