#!/usr/bin/env python3
"""metasched node agent: run once per poll cycle on every node, in ONE SSH round trip.

It reports liveness facts (hostname, time, load, uptime) and enforces the CPU split between the
schedulers: every job process tree is placed in its scheduler's control group (cgroup v2
``cpu.weight`` or v1 ``cpu.shares``) and the groups' weights follow the policy. Where cgroups cannot
be written it falls back to renicing every pid of the trees, which is weaker (see NICE_NOTE).

Why one self-contained stdlib file that runs on python3.6+: the engine ships it as
``python3 -c <this text> <request json>`` or runs an installed copy as
``sudo -n /usr/local/libexec/metasched-node-agent <request json>``; nodes have whatever Python the
distribution ships. The request may also come on stdin. The answer is one JSON line on stdout.
Only the ``run()`` function takes test seams (fake /proc and cgroup roots, a setpriority recorder).
"""
import errno
import json
import math
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

PF_KTHREAD = 0x00200000  # /proc/<pid>/stat flags bit of kernel threads
NEVER_COMM = {"sshd", "sshd-session", "sshd-auth"}  # never moved, whatever the request says
NODEMANAGER = "org.apache.hadoop.yarn.server.nodemanager.NodeManager"
CONTAINER_EXECUTOR = "container-executor"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # a single safe path component
MECHANISMS = ("auto", "cgroup", "nice", "none")
SETUP_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.ENOSPC)
NICE_NOTE = ("renice fallback: nice only competes inside one task group (sched(7)), so it cannot shift CPU "
             "between processes in different cgroups or autogroups and is weaker than cgroups")
AUTOGROUP_NOTE = ("; autogroups are on here: the autogroup nice of sessions led by job processes is set too "
                  "(jobs sharing a session with other processes are only reniced)")


class RequestError(ValueError):
    """The request is malformed; nothing was done."""


class Unavailable(Exception):
    """cgroups cannot be used on this node (no cpu controller, read-only, no permission)."""


class Proc(object):
    """The fields of /proc/<pid>/stat that the agent needs."""
    __slots__ = ("pid", "comm", "state", "ppid", "pgrp", "sid", "flags", "ticks", "nice", "rss", "start")

    def __init__(self, pid, comm, state, ppid, pgrp, sid, flags, ticks, nice, rss=0, start=0):
        # type: (int, str, str, int, int, int, int, int, int, int, int) -> None
        self.pid, self.comm, self.state, self.ppid, self.pgrp = pid, comm, state, ppid, pgrp
        self.sid, self.flags, self.ticks, self.nice, self.rss, self.start = sid, flags, ticks, nice, rss, start


def parse_stat(text: str) -> Proc:
    """Parse one stat line; comm may hold spaces and ')' so the fields start after the LAST ')'."""
    lp, rp = text.index("("), text.rindex(")")
    f = text[rp + 2:].split()
    # f[0]=state f[1]=ppid f[2]=pgrp f[3]=session f[6]=flags f[11..14]=utime stime cutime cstime f[16]=nice
    # f[19]=starttime f[21]=rss (pages)
    ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return Proc(int(text[:lp]), text[lp + 1:rp], f[0], int(f[1]), int(f[2]), int(f[3]), int(f[6]), ticks, int(f[16]),
                int(f[21]) if len(f) > 21 else 0, int(f[19]) if len(f) > 19 else 0)


def read_text(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8", "replace")


def scan_proc(proc_root: str) -> Dict[int, Proc]:
    """The one pass over /proc. A process that vanishes while we read it is simply absent."""
    procs = {}  # type: Dict[int, Proc]
    for name in os.listdir(proc_root):
        if name.isdigit():
            try:
                p = parse_stat(read_text(os.path.join(proc_root, name, "stat")))
            except (OSError, ValueError, IndexError):
                continue
            if p.state not in ("Z", "X"):
                procs[p.pid] = p
    return procs


def comm_of(name: str) -> str:
    return name[:15]  # the kernel truncates comm to 15 bytes (container-executor -> container-execu)


class Tree(object):
    """Parent/child index over one /proc snapshot, and the set of pids that are never touched."""

    def __init__(self, procs: Dict[int, Proc], self_pid: int, exclude: Set[str], proc_root: str) -> None:
        self.procs, self.proc_root = procs, proc_root
        self._cmdlines = {}  # type: Dict[int, str]
        self.children = {}  # type: Dict[int, List[int]]
        self.by_pgrp = {}  # type: Dict[int, List[int]]
        for p in procs.values():
            self.children.setdefault(p.ppid, []).append(p.pid)
            self.by_pgrp.setdefault(p.pgrp, []).append(p.pid)
        never = NEVER_COMM | {comm_of(c) for c in exclude}
        self.protected = {1, 2, self_pid}
        for p in procs.values():
            if p.flags & PF_KTHREAD or p.ppid == 2 or p.comm in never:
                self.protected.add(p.pid)
        pid = self_pid
        while pid in procs and pid > 1 and pid not in self.protected - {self_pid}:
            self.protected.add(pid)  # the agent's own ancestors: sudo, the shell, sshd
            pid = procs[pid].ppid

    def descendants(self, pid: int, avoid: Set[int] = frozenset()) -> Set[int]:
        out, todo = set(), [c for c in self.children.get(pid, ()) if c not in avoid]
        while todo:
            c = todo.pop()
            if c not in out:
                out.add(c)
                todo.extend(x for x in self.children.get(c, ()) if x not in avoid)
        return out

    def cmdline(self, pid: int) -> str:
        if pid not in self._cmdlines:
            try:
                text = read_text(os.path.join(self.proc_root, str(pid), "cmdline"))
            except OSError:
                text = ""
            self._cmdlines[pid] = text.rstrip("\0").replace("\0", " ")
        return self._cmdlines[pid]

    def select_by_args(self, match: Dict[str, Any], per_tree: Optional[Dict[Tuple[str, int], Set[int]]] = None
                       ) -> Tuple[Set[int], int]:
        """Trees whose root's command line matches ``trees_by_args`` (the root belongs to the job), its
        process group too with ``process_group`` when the root leads it; a process whose command line matches
        ``exclude_args`` is never a member, nor is anything reached only through it (a Spark Worker's
        executors are matched by their own command line, not as the Worker's children). With ``per_tree``, a
        tree whose root leads its process group is kept there as that group's (a local job's wrapper: its
        pgid is the job's id), with the group's pids found from ``pgids``."""
        rx = re.compile(match["trees_by_args"]) if match.get("trees_by_args") else None
        ex = re.compile(match["exclude_args"]) if match.get("exclude_args") else None
        if rx is None:
            return set(), 0
        live = [p for p in self.procs if p not in self.protected]
        excluded = {p for p in live if ex is not None and ex.search(self.cmdline(p))}
        roots = [p for p in live if p not in excluded and rx.search(self.cmdline(p))]
        trees = {}  # type: Dict[int, Set[int]]
        for r in roots:
            tree = {r} | self.descendants(r, avoid=excluded)
            if match.get("process_group") and self.procs[r].pgrp == r:
                for pid in self.by_pgrp.get(r, ()):
                    if pid not in excluded:
                        tree |= {pid} | self.descendants(pid, avoid=excluded)
            trees[r] = tree - excluded
            if per_tree is not None and match.get("process_group") and self.procs[r].pgrp == r:
                per_tree[("pgid", r)] = per_tree.get(("pgid", r), set()) | trees[r]
        members = set()  # type: Set[int]
        for t in trees.values():
            members |= t
        nested = {r for r in trees for o, t in trees.items() if o != r and r in t}
        return members, sum(1 for r in trees if r not in nested and trees[r] - self.protected)

    def select(self, match: Dict[str, Any], per_tree: Optional[Dict[Tuple[str, int], Set[int]]] = None
               ) -> Tuple[Set[int], int]:
        """Pids of the job trees that `match` describes, and how many trees. Roots are not members.
        With ``per_tree``, each tree's pids are also kept there under (kind, root pid or process group), for
        the per-job measurements (see job_figures)."""
        members, roots, trees = set(), set(), 0
        names = {comm_of(c) for c in match.get("roots_by_comm") or ()}
        for p in self.procs.values():
            if p.comm in names:
                roots.add(p.pid)
                d = self.descendants(p.pid)
                trees += bool(d - self.protected)
                members |= d
                if per_tree is not None:
                    per_tree[("root", p.pid)] = d
        for pgid in set(match.get("pgids") or ()):
            found = self.by_pgrp.get(pgid, [])
            trees += bool(set(found) - self.protected)
            tree = set()
            for pid in found:
                tree |= {pid} | self.descendants(pid)
            members |= tree
            if per_tree is not None:
                per_tree[("pgid", pgid)] = tree
        if match.get("yarn_containers"):
            yroots = {p.pid for p in self.procs.values() if p.comm == comm_of(CONTAINER_EXECUTOR)
                      or (p.comm == "java" and NODEMANAGER in self.cmdline(p.pid))}
            roots |= yroots
            for r in yroots:
                for c in self.children.get(r, ()):
                    if c not in yroots and c not in self.protected:
                        trees += 1
                        tree = {c} | self.descendants(c)
                        members |= tree
                        if per_tree is not None:
                            per_tree[("container", c)] = tree
        by_args, n = self.select_by_args(match, per_tree)
        return (members - roots | by_args) - self.protected, trees + n


# -- cgroup files ------------------------------------------------------------------------------
def read_pids(path: str) -> Set[int]:
    try:
        return {int(x) for x in read_text(path).split()}
    except OSError:
        return set()


def write_value(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def ensure_dir(path: str) -> None:
    try:
        os.mkdir(path)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise


def place(procs_file: str, pids: Set[int], errors: List[str]) -> int:
    """Write each pid not yet in the group, one write() per pid as cgroupfs wants. Returns how many.

    O_CREAT is a no-op on cgroupfs (the file exists) and lets the agent run on a plain-directory fake.
    A pid that exited meanwhile (ESRCH) is not an error; no permission means cgroups are unusable.
    """
    new = sorted(pids - read_pids(procs_file))
    if not new:
        return 0
    placed = 0
    fd = os.open(procs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for pid in new:
            try:
                os.write(fd, ("%d\n" % pid).encode())
                placed += 1
            except OSError as e:
                if e.errno == errno.ESRCH:
                    continue
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not placed:
                    raise Unavailable("cannot write %s: %s" % (procs_file, e.strerror))
                errors.append("place %d in %s: %s" % (pid, procs_file, e.strerror))
    finally:
        os.close(fd)
    return placed


def parse_mountinfo(text: str) -> Tuple[Optional[str], Optional[str], List[str]]:
    """(v1 cpu mount, v1 cpuacct mount, cgroup2 mounts). A controller lives in one hierarchy only."""
    cpu = acct = None
    v2 = []  # type: List[str]
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rf = left.split(), right.split()
        if len(fields) < 5 or len(rf) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        opts = rf[2].split(",")
        if rf[0] == "cgroup2":
            v2.append(point)
        elif rf[0] == "cgroup":
            cpu = point if "cpu" in opts and cpu is None else cpu
            acct = point if "cpuacct" in opts and acct is None else acct
    return cpu, acct, v2


def has_cpu_v2(d: str) -> bool:
    try:
        return "cpu" in read_text(os.path.join(d, "cgroup.controllers")).split()
    except OSError:
        return False


def detect(cgroup_root: Optional[str]) -> Tuple[str, str, Optional[str]]:
    """(kind, cpu hierarchy dir, cpuacct hierarchy dir or None). v1 cpu wins over a cgroup2 mount
    without controllers (these machines: tmpfs /sys/fs/cgroup with v1 controllers + /unified)."""
    if cgroup_root is None:
        try:
            cpu, acct, v2 = parse_mountinfo(read_text("/proc/self/mountinfo"))
        except OSError:
            cpu, acct, v2 = None, None, []
        if cpu:
            return "cgroup_v1", cpu, acct
        for point in v2:
            if has_cpu_v2(point):
                return "cgroup_v2", point, None
        cgroup_root = "/sys/fs/cgroup"
    if has_cpu_v2(cgroup_root):
        return "cgroup_v2", cgroup_root, None
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        d = os.path.join(cgroup_root, sub)
        if os.path.exists(os.path.join(d, "cpu.shares")):
            if os.path.exists(os.path.join(d, "cpuacct.usage")):
                return "cgroup_v1", d, d
            a = os.path.join(cgroup_root, "cpuacct")
            return "cgroup_v1", d, a if os.path.exists(os.path.join(a, "cpuacct.usage")) else None
    raise Unavailable("no cpu controller under %s (neither cgroup v2 cpu nor a v1 cpu mount)" % cgroup_root)


def v2_weight(percent: float) -> int:
    """cpu.weight 1..10000: percent*100, so the ratio of weights is the ratio of percentages."""
    return max(1, min(10000, int(round(percent * 100))))


def v1_shares(percent: float, n: int) -> int:
    """cpu.shares: an equal split gives every group the default 1024 (percent*1024/(100/n)), min 2."""
    return max(2, min(262144, int(round(percent * 1024 * n / 100.0))))


def nice_value(percent: float, top: float) -> int:
    """Highest share -> nice 0; CFS weights fall by ~1.25x per nice step, so a share ratio r maps to
    log_1.25(r) steps (80/20 -> 6, weights 1024/272). Never below 0: we never raise priority."""
    if percent <= 0:
        return 19
    return max(0, min(19, int(round(math.log(top / percent, 1.25)))))


def usage_from_procs(pids: Set[int], procs: Dict[int, Proc]) -> int:
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return int(sum(procs[p].ticks for p in pids if p in procs) * 1000000 // hz)


def enforce_cgroup(kind, cpu_root, acct_root, parent, groups, members, procs, dry_run, errors):
    # type: (str, str, Optional[str], str, List[Dict[str, Any]], Dict[str, Set[int]], Dict[int, Proc], bool, List[str]) -> Dict[str, Dict[str, Any]]
    """Create <root>/<parent>/<group>, write the weights, place the new pids; raises Unavailable."""
    out = {}  # type: Dict[str, Dict[str, Any]]
    pdir = os.path.join(cpu_root, parent)
    procs_name = "cgroup.procs"
    if kind == "cgroup_v1" and not os.path.exists(os.path.join(cpu_root, "cgroup.procs")):
        procs_name = "tasks"
    try:
        if not dry_run:
            if kind == "cgroup_v2":
                enable_cpu(cpu_root)
            ensure_dir(pdir)
            if kind == "cgroup_v2":
                enable_cpu(pdir)
        for g in groups:
            name, pct = g["name"], float(g["weight_percent"])
            gdir = os.path.join(pdir, name)
            weight = v2_weight(pct) if kind == "cgroup_v2" else v1_shares(pct, len(groups))
            moved = len(members[name] - read_pids(os.path.join(gdir, procs_name)))
            cap = g.get("cap_cores")
            if not dry_run:
                ensure_dir(gdir)
                write_value(os.path.join(gdir, "cpu.weight" if kind == "cgroup_v2" else "cpu.shares"), str(weight))
                set_cap(kind, gdir, cap, errors)
                moved = place(os.path.join(gdir, procs_name), members[name], errors)
            now_in = read_pids(os.path.join(gdir, procs_name)) & set(procs) | (members[name] if dry_run else set())
            out[name] = {"weight": weight, "weight_percent": pct, "pids": len(now_in), "moved": moved,
                         "cap_cores": cap}
            out[name].update(cgroup_usage(kind, gdir, acct_root, parent, name, now_in, procs, dry_run, errors))
    except OSError as e:
        if e.errno in SETUP_ERRNOS:
            raise Unavailable("cannot write %s: %s" % (e.filename or pdir, e.strerror))
        raise
    return out


CAP_PERIOD_US = 100000


def set_cap(kind: str, gdir: str, cap: Optional[float], errors: List[str]) -> None:
    """The group's CPU quota: ``cap`` cores (v2 cpu.max "quota period", v1 cpu.cfs_quota_us over
    cpu.cfs_period_us), or none (max / -1): a request without a cap lifts the one an earlier request set. Written
    only when it differs; a cap a node cannot write (no CFS bandwidth control) is reported as an error."""
    quota = None if cap is None else max(1000, int(round(cap * CAP_PERIOD_US)))
    v2 = kind == "cgroup_v2"
    path = os.path.join(gdir, "cpu.max" if v2 else "cpu.cfs_quota_us")
    want = ("%s %d" % ("max" if quota is None else quota, CAP_PERIOD_US)) if v2 else ("-1" if quota is None else
                                                                                     str(quota))
    try:
        current = read_text(path).split()   # type: Optional[List[str]]
    except OSError:
        current = None
    if current == want.split() or (current is None and quota is None):
        return
    try:
        if quota is not None and not v2:
            write_value(os.path.join(gdir, "cpu.cfs_period_us"), str(CAP_PERIOD_US))
        write_value(path, want)
    except OSError as e:
        errors.append("cap of %s: %s" % (os.path.basename(gdir), e.strerror or e))


def enable_cpu(d: str) -> None:
    """Let the children of d compete by cpu.weight (needed on the root and on our parent group)."""
    path = os.path.join(d, "cgroup.subtree_control")
    if not os.path.exists(path) or "cpu" not in read_text(path).split():
        write_value(path, "+cpu")


def cgroup_usage(kind, gdir, acct_root, parent, name, pids, procs, dry_run, errors):
    # type: (str, str, Optional[str], str, str, Set[int], Dict[int, Proc], bool, List[str]) -> Dict[str, Any]
    """Cumulative CPU of the group: v2 cpu.stat usage_usec; v1 cpuacct.usage (mirroring the group into
    a separately mounted cpuacct hierarchy); else the sum over its live pids (not cumulative)."""
    try:
        if kind == "cgroup_v2":
            for line in read_text(os.path.join(gdir, "cpu.stat")).splitlines():
                if line.startswith("usage_usec "):
                    return {"usage_usec": int(line.split()[1]), "usage_source": "cgroup"}
        elif acct_root:
            adir = gdir
            if not os.path.exists(os.path.join(gdir, "cpuacct.usage")):
                adir = os.path.join(acct_root, parent, name)
                if not dry_run:
                    ensure_dir(os.path.join(acct_root, parent))
                    ensure_dir(adir)
                    f = "cgroup.procs" if os.path.exists(os.path.join(acct_root, "cgroup.procs")) else "tasks"
                    place(os.path.join(adir, f), pids, errors)
            usage = read_text(os.path.join(adir, "cpuacct.usage")).strip()
            return {"usage_usec": int(usage) // 1000, "usage_source": "cgroup"}
    except (OSError, ValueError, Unavailable) as e:
        if not isinstance(e, OSError) or e.errno != errno.ENOENT:
            errors.append("usage of %s: %s" % (name, e))
    return {"usage_usec": usage_from_procs(pids, procs), "usage_source": "procs"}


def enforce_nice(groups, members, procs, proc_root, setpriority, dry_run, errors):
    # type: (List[Dict[str, Any]], Dict[str, Set[int]], Dict[int, Proc], str, Callable[[int, int, int], None], bool, List[str]) -> Dict[str, Dict[str, Any]]
    """Renice every pid (and each of its threads: nice is per thread on Linux) whose nice differs."""
    top = max([float(g["weight_percent"]) for g in groups] + [0.0])
    out = {}  # type: Dict[str, Dict[str, Any]]
    for g in groups:
        name = g["name"]
        nice = nice_value(float(g["weight_percent"]), top)
        moved, failed = 0, []
        for pid in sorted(members[name]):
            if procs[pid].nice == nice:
                continue
            if dry_run:
                moved += 1
                continue
            try:
                tids = [int(t) for t in os.listdir(os.path.join(proc_root, str(pid), "task"))]
            except OSError:
                tids = [pid]
            try:
                done = 0
                for tid in tids:
                    try:
                        setpriority(os.PRIO_PROCESS, tid, nice)
                        done = 1
                    except OSError as e:
                        if e.errno != errno.ESRCH:  # a pid that exited meanwhile is not an error
                            raise
                moved += done
            except OSError as e:
                failed.append("%d (%s)" % (pid, e.strerror))
        if failed:
            errors.append("renice %s to %d failed for %d pids: %s" % (name, nice, len(failed), ", ".join(failed[:5])))
        out[name] = {"weight": nice, "weight_percent": float(g["weight_percent"]), "pids": len(members[name]),
                     "moved": moved, "autogroups": 0,
                     "usage_usec": usage_from_procs(members[name], procs), "usage_source": "procs"}
        if autogroups_enabled(proc_root):  # a session led by a job process holds only that job's processes
            for leader in sorted({procs[p].sid for p in members[name]} & members[name]):
                out[name]["autogroups"] += set_autogroup_nice(proc_root, leader, nice, dry_run, errors)
    return out


def autogroups_enabled(proc_root: str) -> bool:
    try:
        return read_text(os.path.join(proc_root, "sys", "kernel", "sched_autogroup_enabled")).strip() == "1"
    except OSError:
        return False


def set_autogroup_nice(proc_root: str, leader: int, nice: int, dry_run: bool, errors: List[str]) -> int:
    """Each session is its own autogroup, and autogroups compete by their own nice (sched(7)): without
    this, renicing jobs that run in sessions of their own (batch jobs do) changes nothing."""
    path = os.path.join(proc_root, str(leader), "autogroup")
    try:
        if int(read_text(path).split()[-1]) == nice:  # "/autogroup-25 nice 0"
            return 0
        if not dry_run:
            write_value(path, "%d" % nice)
        return 1
    except (OSError, ValueError, IndexError) as e:
        if not isinstance(e, OSError) or e.errno not in (errno.ENOENT, errno.ESRCH):
            errors.append("autogroup nice of session %d: %s" % (leader, e))
        return 0


# -- what the jobs and the node use (issue 15) ---------------------------------------------------------
JOB_ID_KINDS = ("sge_shepherd", "slurmstepd", "pgid", "yarn")
_JOB_ID_RE = {
    "slurmstepd": re.compile(r"^slurmstepd: \[(\d+)\.[A-Za-z0-9_]+\]"),  # a step: [<job id>.<step>]
}
# Grid Engine (8.1.9) names the shepherd plainly ("sge_shepherd -bg"): the job is the shepherd's working
# directory, execd's spool active_jobs/<job>.<task> (readable as root or sgeadmin), else its job script, which
# the job's shell runs from the spool (world-readable: "-sh .../job_scripts/<job>"; not for binary jobs, -b y).
_SGE_CWD_RE = re.compile(r"/active_jobs/(\d+)\.\d+$")
_SGE_SCRIPT_RE = re.compile(r"/job_scripts/(\d+)(?:\s|$)")
_YARN_APP_RE = re.compile(r"\b(?:application_(\d+)_(\d+)|container_(?:e\d+_)?(\d+)_(\d+)_\d+_\d+)\b")
MAX_DISK_PATHS = 32


def job_of_tree(tree: Tree, kind: str, key: Tuple[str, int]) -> Optional[str]:
    """The native job id a tree belongs to: the shepherd's or slurmstepd's command line, the process group (a
    local job's pgid is its id), the application a container's launch script names (YARN); None: unknown."""
    how, pid = key
    if kind == "pgid":
        return str(pid) if how == "pgid" else None
    if kind == "yarn":
        if how != "container":
            return None
        m = _YARN_APP_RE.search(tree.cmdline(pid))
        if not m:
            return None
        return "application_%s_%s" % ((m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4)))
    if how != "root":
        return None
    if kind == "sge_shepherd":
        try:
            m = _SGE_CWD_RE.search(os.readlink(os.path.join(tree.proc_root, str(pid), "cwd")))
            if m:
                return m.group(1)
        except OSError:
            pass
        for child in tree.children.get(pid, ()):
            m = _SGE_SCRIPT_RE.search(tree.cmdline(child))
            if m:
                return m.group(1)
        return None
    rx = _JOB_ID_RE.get(kind)
    m = rx.match(tree.cmdline(pid)) if rx else None
    return m.group(1) if m else None


# What stays true of a process as long as it lives (same pid, same start): the job its tree is, the filesystem
# it works in. Kept between the requests of one --serve agent, so a cycle reads /proc for new processes only.
_JOB_OF = {}  # type: Dict[Tuple[str, str, str, int], Tuple[int, Optional[str]]]   # (proc root, kind, how, pid)
_DEV_OF = {}  # type: Dict[Tuple[str, int], Tuple[int, Optional[int]]]             # (proc root, pid)


def _forget_gone(proc_root: str, procs: Dict[int, Proc]) -> None:
    for key in [k for k, (start, _) in _JOB_OF.items()
                if k[0] == proc_root and (k[3] not in procs or procs[k[3]].start != start)]:
        del _JOB_OF[key]
    for key in [k for k, (start, _) in _DEV_OF.items()
                if k[0] == proc_root and (k[1] not in procs or procs[k[1]].start != start)]:
        del _DEV_OF[key]


def job_figures(tree: Tree, kind: str, per_tree: Dict[Tuple[str, int], Set[int]], members: Set[int],
                page_size: int, hz: int) -> Dict[str, List[int]]:
    """Per native job: [the CPU time of its processes in microseconds (user + system, with what they reaped
    from their own children: /proc/<pid>/stat utime stime cutime cstime), their resident memory now in bytes,
    how many there are, one of them (where the job works, for the disk figures; not sent back)]."""
    out = {}  # type: Dict[str, List[int]]
    for key, pids in per_tree.items():
        pids = pids & members
        if not pids:
            continue
        root = tree.procs.get(key[1])
        ckey = (tree.proc_root, kind) + key
        cached = _JOB_OF.get(ckey) if root is not None else None
        if cached is not None and cached[0] == root.start:
            native = cached[1]
        else:
            native = job_of_tree(tree, kind, key)
            if root is not None and native is not None:   # not yet told (a shepherd before its job's shell)
                _JOB_OF[ckey] = (root.start, native)
        if native is None:
            continue
        j = out.setdefault(native, [0, 0, 0, min(pids)])
        ticks = rss = 0
        for p in pids:
            proc = tree.procs[p]
            ticks += proc.ticks
            rss += proc.rss
        j[0] += ticks * 1000000 // hz
        j[1] += rss * page_size
        j[2] += len(pids)
    return out


def _device(proc_root: str, procs: Dict[int, Proc], pid: int) -> Optional[int]:
    """The filesystem a process works in (its current directory's device), looked up once per process."""
    cached = _DEV_OF.get((proc_root, pid))
    if cached is not None and pid in procs and cached[0] == procs[pid].start:
        return cached[1]
    try:
        dev = os.stat("%s/%d/cwd" % (proc_root, pid)).st_dev   # type: Optional[int]
    except OSError:
        dev = None
    if pid in procs:
        _DEV_OF[(proc_root, pid)] = (procs[pid].start, dev)
    return dev


def node_figures(proc_root: str, probes: List[int], paths: List[str],
                 procs: Optional[Dict[int, Proc]] = None) -> Dict[str, Any]:
    """The node's counters (the engine turns two of them into percentages): /proc/stat's total and idle CPU
    ticks, /proc/meminfo's total and available memory, and the filesystems the jobs work in (the current
    directory of one process per job) and the configured paths: size, used and available bytes as df
    counts them. A figure that cannot be read is absent, never guessed."""
    out = {"clk_tck": os.sysconf("SC_CLK_TCK"), "page_size": os.sysconf("SC_PAGE_SIZE")}  # type: Dict[str, Any]
    try:
        cpu = read_text(os.path.join(proc_root, "stat")).splitlines()[0].split()
        if cpu[0] == "cpu":
            v = [int(x) for x in cpu[1:9]]          # user nice system idle iowait irq softirq steal
            out["cpu_ticks"] = [sum(v), v[3] + v[4]]
    except (OSError, ValueError, IndexError):
        pass
    try:
        mem = {}
        for line in read_text(os.path.join(proc_root, "meminfo")).splitlines():
            k, _, rest = line.partition(":")
            if k in ("MemTotal", "MemAvailable"):
                mem[k] = int(rest.split()[0]) * 1024
        if "MemTotal" in mem and "MemAvailable" in mem:
            out["memory"] = {"total": mem["MemTotal"], "available": mem["MemAvailable"]}
    except (OSError, ValueError, IndexError):
        pass
    where = {}  # type: Dict[int, str]      # device -> a path on it
    for p in probes:
        dev = _device(proc_root, procs or {}, p)
        if dev is not None and dev not in where:
            where[dev] = "%s/%d/cwd" % (proc_root, p)
    for path in paths:
        try:
            where.setdefault(os.stat(path).st_dev, path)
        except OSError:
            continue
    disks = []
    for dev, path in where.items():
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        disks.append({"dev": "%d:%d" % (os.major(dev), os.minor(dev)), "size": st.f_blocks * st.f_frsize,
                      "used": used, "avail": st.f_bavail * st.f_frsize})
    if disks:
        mounts = {}  # type: Dict[str, str]
        try:
            for line in read_text("/proc/self/mountinfo").splitlines():
                f = line.split()
                mounts.setdefault(f[2], re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f[4]))
        except (OSError, IndexError):
            pass
        for d in disks:
            d["mount"] = mounts.get(d.pop("dev"))
    out["disks"] = disks
    return out


def validate(req: Any, allow_overrides: bool) -> Dict[str, Any]:
    """Check the request. Names become path components, so they are restricted; root overrides are
    refused under sudo (an unprivileged caller must not point a root agent at arbitrary paths)."""
    if not isinstance(req, dict) or req.get("version") != 1:
        raise RequestError("request must be a JSON object with version 1")
    if not NAME_RE.match(str(req.get("parent", ""))):
        raise RequestError("parent: %r is not a simple name" % req.get("parent"))
    if req.get("mechanism", "auto") not in MECHANISMS:
        raise RequestError("mechanism: %r is not one of %s" % (req.get("mechanism"), ", ".join(MECHANISMS)))
    for key in ("cgroup_root", "proc_root"):
        if req.get(key) is not None and (not allow_overrides or not os.path.isdir(str(req[key]))):
            raise RequestError("%s: override refused (under sudo) or not a directory" % key)
    groups, seen = req.get("groups"), set()
    if not isinstance(groups, list):
        raise RequestError("groups: expected a list")
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or not NAME_RE.match(str(g.get("name", ""))) or g["name"] in seen:
            raise RequestError("groups[%d].name: expected a unique simple name" % i)
        seen.add(g["name"])
        w = g.get("weight_percent")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 100:
            raise RequestError("groups[%d].weight_percent: expected a number 0..100" % i)
        c = g.get("cap_cores")
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 4096):
            raise RequestError("groups[%d].cap_cores: expected a number of cores > 0, or null" % i)
        m = g.get("match") or {}
        if not isinstance(m, dict) or not all(isinstance(p, int) and p > 1 for p in m.get("pgids") or ()):
            raise RequestError("groups[%d].match: pgids must be integers > 1" % i)
        for key in ("roots_by_comm", "exclude_comm"):
            if not isinstance(m.get(key) or [], list) or not all(isinstance(c, str) for c in m.get(key) or ()):
                raise RequestError("groups[%d].match.%s: expected a list of command names" % (i, key))
        for key in ("trees_by_args", "exclude_args"):
            if m.get(key) is not None:
                try:
                    re.compile(m[key] if isinstance(m[key], str) else None)
                except (re.error, TypeError):
                    raise RequestError("groups[%d].match.%s: expected a regular expression" % (i, key))
        if m.get("job_ids") is not None and m["job_ids"] not in JOB_ID_KINDS:
            raise RequestError("groups[%d].match.job_ids: expected one of %s" % (i, ", ".join(JOB_ID_KINDS)))
    paths = req.get("disk_paths") or []
    if not isinstance(paths, list) or len(paths) > MAX_DISK_PATHS or not all(
            isinstance(p, str) and p.startswith("/") for p in paths):
        raise RequestError("disk_paths: expected at most %d absolute paths" % MAX_DISK_PATHS)
    return req


def run(request: Any, dry_run: bool = False, allow_overrides: bool = True,
        setpriority: Optional[Callable[[int, int, int], None]] = None, self_pid: Optional[int] = None) -> Dict[str, Any]:
    """One agent call: validate, scan /proc once, select trees, enforce, report."""
    t0 = time.time()
    req = validate(request, allow_overrides)
    proc_root = req.get("proc_root") or "/proc"
    groups = req["groups"]
    procs = scan_proc(proc_root)
    exclude = set()  # type: Set[str]
    for g in groups:
        exclude.update((g.get("match") or {}).get("exclude_comm") or ())
    tree = Tree(procs, os.getpid() if self_pid is None else self_pid, exclude, proc_root)
    members, trees, taken = {}, {}, set()  # type: Dict[str, Set[int]], Dict[str, int], Set[int]
    measure = bool(req.get("measure"))
    per_tree = {}  # type: Dict[str, Dict[Tuple[str, int], Set[int]]]
    for g in groups:  # a pid matched by two groups belongs to the first
        kind = (g.get("match") or {}).get("job_ids") if measure else None
        if kind:
            per_tree[g["name"]] = {}
        pids, trees[g["name"]] = tree.select(g.get("match") or {}, per_tree.get(g["name"]))
        members[g["name"]] = pids - taken
        taken |= pids
    errors, notes = [], []  # type: List[str], List[str]
    mech, result = req.get("mechanism", "auto"), None
    used = "none"
    if mech in ("auto", "cgroup"):
        try:
            kind, cpu_root, acct_root = detect(req.get("cgroup_root"))
            result = enforce_cgroup(kind, cpu_root, acct_root, req["parent"], groups, members, procs, dry_run, errors)
            used = kind
        except Unavailable as e:
            notes.append("cgroups unavailable: %s" % e)
            if mech == "cgroup":
                errors.append(notes[-1])
    if result is None and mech in ("auto", "nice"):
        result = enforce_nice(groups, members, procs, proc_root, setpriority or os.setpriority, dry_run, errors)
        used = "nice"
        notes.append(NICE_NOTE + (AUTOGROUP_NOTE if autogroups_enabled(proc_root) else ""))
    if result is None:
        result = {g["name"]: {"weight": None, "pids": len(members[g["name"]]), "moved": 0, "usage_source": "procs",
                              "usage_usec": usage_from_procs(members[g["name"]], procs)} for g in groups}
    for name, entry in result.items():
        entry["trees"] = trees[name]
    node = None
    if measure:
        _forget_gone(proc_root, procs)
        hz, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        probes = []
        for g in groups:
            if g["name"] in per_tree and g["name"] in result:
                jobs = job_figures(tree, g["match"]["job_ids"], per_tree[g["name"]], members[g["name"]], page, hz)
                probes += [j.pop() for j in jobs.values()]
                result[g["name"]]["jobs"] = jobs
        node = node_figures(proc_root, probes, req.get("disk_paths") or [], procs)
    try:
        uptime = float(read_text(os.path.join(proc_root, "uptime")).split()[0])
    except (OSError, ValueError, IndexError):
        uptime = None
    out = {"ok": True, "version": 1, "hostname": socket.gethostname(), "time": time.time(),
           "ncpus": os.cpu_count(), "load": list(os.getloadavg()), "uptime": uptime, "mechanism": used,
           "mechanism_note": "; ".join(notes), "groups": result, "errors": errors, "dry_run": dry_run,
           "elapsed_ms": round((time.time() - t0) * 1000.0, 3)}
    if node is not None:
        node["procs_id"] = procs_identity(proc_root)
        out["node"] = node
    return out


def procs_identity(proc_root: str) -> Optional[str]:
    """Which processes this node's /proc shows: the boot and the PID namespace. Two configured nodes that are
    one machine's namespaces (a test lab) see the same processes; the engine then counts them once."""
    try:
        boot = read_text("/proc/sys/kernel/random/boot_id").strip()
        return "%s:%s" % (boot, os.readlink(os.path.join(proc_root, "self", "ns", "pid")))
    except OSError:
        return None


def answer(text: str, dry_run: bool) -> Dict[str, Any]:
    """One request (JSON text) to one response; never raises: the engine must always get an answer."""
    try:
        try:
            request = json.loads(text)
        except ValueError as e:
            raise RequestError("request is not JSON: %s" % e)
        return run(request, dry_run=dry_run, allow_overrides="SUDO_UID" not in os.environ)
    except RequestError as e:
        return {"ok": False, "version": 1, "errors": [str(e)]}
    except Exception as e:
        return {"ok": False, "version": 1, "errors": ["internal error: %s: %s" % (type(e).__name__, e)]}


def serve(dry_run: bool) -> int:
    """--serve: one request per line on stdin, one answer line each, until stdin ends. The engine keeps
    this running over one SSH channel per node, so a cycle costs a line each way instead of starting a
    Python interpreter (and an SSH session) on every node every cycle."""
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        sys.stdout.write(json.dumps(answer(line.decode("utf-8"), dry_run), sort_keys=True) + "\n")
        sys.stdout.flush()


def main(argv: Optional[List[str]] = None) -> int:
    """Request as the first non-flag argument, else on stdin (or, with --serve, one per line). Always
    prints one JSON line per request."""
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in args
    if "--serve" in args:
        return serve(dry_run)
    args = [a for a in args if a != "--dry-run"]
    response = answer(args[0] if args else sys.stdin.buffer.read().decode("utf-8"), dry_run)
    sys.stdout.write(json.dumps(response, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if response["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
