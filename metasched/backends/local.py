"""Local backend: runs the job script on the scheduler's node, detached, as its owner.

Design (why):
- The launcher (HELPER: a short ``python3 -I -S`` run as the owner, one per round trip whatever the
  number of jobs) changes to pwd, checks that the script is an executable file (else the submission is
  refused at once), creates the job's output files and spawns the job in a new session: the job becomes
  a session and process-group leader, so native id = pid = pgid, printed by the launcher. The node needs
  python3 (the node agent needs it anyway).
- Output: ``<pwd>/<tag>.o<our id>`` / ``.e<our id>``, created by the launcher, as the owner, mode 0600,
  with O_CREAT|O_EXCL|O_NOFOLLOW, and handed to the job as its stdout/stderr. A name that already exists
  is reused only when it is a regular file of the owner (it is removed and created again); anything else
  (another user's file in a world-writable pwd, a symlink, a FIFO) refuses the submission, naming the
  file: the job's output is never written into a file someone else made (and can read).
- The session leader is a small constant ``sh`` wrapper (WRAP) that runs the script (exec'd directly:
  the kernel honours its shebang) and then writes its exit status to the exit file, with what the script
  used (issue 15: its rusage, written by a short python3 the wrapper execs at the end; see RUSAGE). It
  traps TERM (with a no-op handler, which children do not inherit) so that a cancel lets it record the
  job's status. The exit file survives a restart of the service; it is removed once the job's final state
  is committed (forget_entry), so the directory does not fill up with one file per job.
- Right before it spawns the job, the launcher leaves an empty ``<tag>.started`` next to the exit file
  (removed with it). A dispatch whose answer no poller saw is looked up by its tag once the fence is raised
  (engine/fence.py: no launcher of it still runs): no process, no exit file and no trace means it never
  started (it is submitted again); the trace without the rest means the job was started and killed before
  it could record its status (SIGKILL of its wrapper, a reboot): it ends in ERROR, never started a second
  time. (A launcher killed between the trace and the spawn, a few microseconds, also ends the job in ERROR:
  the safe side.)
- The exit file is ``~owner/.metasched/<tag>.exit`` on the node: a directory the launcher creates mode
  0700 and trusts only when it is the owner's own directory, not a symlink, in a home no one else may
  write. Not the job's pwd: in a world-writable pwd (a 1777 scratch directory) another user could
  pre-create ``.<tag>.exit`` and block the launch or forge the result. Not a shared state directory
  such as a sticky /tmp/metasched-local either, for the same reason. Reading it is done as the owner
  (homes are 0700): final_argv wraps itself in ``sudo -n -u <owner>`` (option ``final_as_owner``,
  default True), and it only trusts a regular file (not a symlink) owned by the owner. The owner can of
  course write any status for their own job; that is acceptable: it is their job.
- Jobs started by the earlier release (LEGACY_WRAP: its wrapper opened the output files itself and kept
  the exit status in ``<pwd>/.<tag>.exit``) may still run after an upgrade: the status listing, cancel,
  enforcement and the final-state question recognise both wrappers' command lines, and the final state
  is read from the private exit file or, when there is none, from the old place in the pwd, trusted only
  as a regular file of the owner's with a single link (no other user can make one; in a 1777 pwd they
  can still block that old job's write, as before the fix, and it then ends "gone"). Forget removes both.
- Status: ONE ``ps`` listing; our jobs are the processes that lead their own group and whose command
  line starts with the wrapper's exact text followed by ``metasched-job-<our id>``. The owner column
  comes from the kernel; the engine must still check it against the job's owner before adopting
  (anyone can start a process with that command line).
- Cancel: TERM to the whole group, then KILL after ``grace`` seconds from a detached background
  subshell, so the command returns at once; both only after checking that the pgid still leads a
  process with our wrapper's command line for this job (pid reuse). A job killed without a chance to
  write its status (KILL, reboot) is "gone": CANCELLED if a cancel was requested, else ERROR.

- What a job asks for (JobSpec): its variables (env, export) are the environment the launcher spawns it with
  (no shell: "all" is the launcher's own environment as the owner, sudo's SUDO_* removed; "none" only the
  job's; names: those of the launcher's environment); stdout/stderr/join: the files the launcher creates (see above). Limits
  are kept by RUNNER, a small Python program the wrapper runs in front of the script (only for a job that
  asks for one): cores (the job is bound to that many CPUs; more than the node has is refused at launch),
  walltime and memory (the resident memory of the job's process group, polled every second, like Slurm's
  jobacct_gather without cgroups). A job over a limit is sent TERM, then KILL after 5 s, and RUNNER exits
  with a status of its own (LIMIT_STATUS: 152 for walltime, 153 for memory), which parse_final reads as that
  limit for a job that had it. The job's processes stay in its process group (cancel and enforcement find them).
  No nodes beyond one, no GPUs, queues, accounts or native flags: refused at submit.

- Arrays (issue 16; job.array_spec): the local scheduler has none of its own, so an array is ONE launch, a job
  like any other (exactly once, adopted by its tag), whose program is SUPERVISOR: it starts the tasks itself, in
  index order, at most the array's limit at once, each in a process group of its own in the array's session,
  under TASK_WRAP with $METASCHED_ARRAY_TASK_ID. Each task gets what the array asks for (its resources through
  RUNNER, its environment, its output patterns with %a the task's index), and its output files are created as a
  job's are (mode 0600, O_EXCL, never a file someone else made: a task whose file cannot be made ends in error
  saying why, the others go on). Its exit status goes to ``~/.metasched/<tag>.<task>.exit`` next to the
  array's, and the poller steers the supervisor with ``~/.metasched/<tag>.ctl`` (tasks held, tasks never to
  start): both in the owner's private directory, never in the pwd. The supervisor's own messages go to the
  array's default files, ``<tag>.o<id>`` and ``.e<id>``.

Options: ``grace`` (seconds between TERM and KILL, default 10), ``final_as_owner`` (default True),
``tz`` (zone of the node's clock for ps lstart, default "UTC"), ``python`` (the launcher's interpreter on
the node, default "python3"; any Python 3.8 or later).
"""
from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import replace

from ..model import Accounting, ArraySpec, Job
from .base import (TASK_SLOT, launcher_pid, Backend, FinalState, NativeJob, NativeState, NativeTask,
                   OutputFiles, ProcessMatcher, as_user, command_line, custom_outputs, epoch_ms_to_utc_iso,
                   epoch_to_utc_iso, first_line, hms, local_to_utc_iso, path_reason, runs_arg, signal_of, tag)

JOB_MARK = "metasched-job-"

# The session leader. $0 = metasched-job-<id>, $1 = exit file, $2... = the script and its arguments; its
# stdout and stderr are the job's output files (opened by the launcher). One line, no tabs: ps prints it
# verbatim, and it is the prefix that identifies our jobs.
# The exit status goes straight into the file: no temporary file and mv, one process less per job (about
# 17% more launches per second on 2 cores). A reader that catches the file half written sees "exit" with
# no number and asks again next cycle (parse_final returns None, parse_final_by_tag raises).
#
# What the job used (issue 15) is the wrapper's rusage, in one place: RUSAGE. Once the script ended, the
# wrapper execs it (a process replaced by exec keeps its children's resource usage, getrusage(2)): it
# writes the exit status and, on a second line, ``rusage <user s> <system s> <max rss KiB> <wall s> <end,
# Unix time> <node name>`` in one write. The children's CPU time and peak memory are the kernel's own
# (RUSAGE_CHILDREN: the script, the launcher's RUNNER when the job has limits, and every descendant they
# waited for); the wall time is measured on the node's boot clock (the wrapper's start in /proc/self/stat to
# /proc/uptime), so a clock step does not change it. No python3 on the job's PATH: the exit status alone, as
# before (the job's accounting is then what the node agents measured). While the writer runs, the job's
# leader is the writer (WRITER, then the exit file), which the final-state question also recognises (the
# helper knows WRITER), so a job is never taken for "gone" in between.
RUSAGE = ('import os,resource as r,sys,time;u=r.getrusage(r.RUSAGE_CHILDREN);'
          's=open("/proc/self/stat").read().rsplit(")",1)[1].split();'
          'w=float(open("/proc/uptime").read().split()[0])-int(s[19])/os.sysconf("SC_CLK_TCK");'
          'f=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_TRUNC|os.O_NOFOLLOW,438);'
          'os.write(f,("%s%crusage %.6f %.6f %d %.3f %.3f %s%c"%(sys.argv[2],10,u.ru_utime,u.ru_stime,'
          'u.ru_maxrss,w,time.time(),os.uname().nodename,10)).encode())')
WRITER = f"python3 -I -S -c {RUSAGE}"
WRAP = ('x=$1; shift; trap : TERM; "$@"; rc=$?; '
        f"command -v python3 > /dev/null 2>&1 && exec python3 -I -S -c '{RUSAGE}' \"$x\" \"$rc\"; "
        'echo "$rc" > "$x"')
ARGS_PREFIX = f"sh -c {WRAP} {JOB_MARK}"
# The prefix is matched with a quoted ``case "$a" in "$3"*)`` pattern: dash mishandles backslashes in
# quoted pattern expansions, and ps would rewrite tabs or newlines. Keep it to plain characters (the
# writer's command line too: the helper compares it with /proc/<pgid>/cmdline).
assert not set(ARGS_PREFIX + WRITER) & set("\\\t\n"), "WRAP must stay a plain one-line text"
assert "'" not in RUSAGE, "RUSAGE is single-quoted in WRAP"

# The earlier release's wrapper: $1 = exit file (in the pwd), $2 and $3 = the output files, which it opened
# itself, $4... = the script and its arguments. Never started any more; the jobs it started are still
# recognised (see the module docstring), so a job running across an upgrade reaches its truthful end.
LEGACY_WRAP = ('x=$1; exec > "$2" 2> "$3"; shift 3; trap : TERM; "$@"; rc=$?; '
               'echo "$rc" > "$x"')
LEGACY_ARGS_PREFIX = f"sh -c {LEGACY_WRAP} {JOB_MARK}"
assert not set(LEGACY_ARGS_PREFIX) & set("\\\t\n")

# An array's task (started by SUPERVISOR), like WRAP: $0 = <mark><marker>.<task>, $1 = its exit file, $2 = the
# time it was started (seconds since the epoch: a short task may start and end between two cycles), $3... = what
# it runs; its stdout and stderr are its output files (created by the supervisor). It writes "<status> <start>".
TASK_WRAP = 'x=$1; s=$2; shift 2; trap : TERM; "$@"; rc=$?; echo "$rc $s" > "$x"'
TASK_PREFIX = f"sh -c {TASK_WRAP} {JOB_MARK}"
assert not set(TASK_PREFIX) & set("\\\t\n"), "TASK_WRAP must stay a plain one-line text"

# How the launcher (for a job) and the supervisor (for an array's task) create an output file: see the module
# docstring. Shared text, inserted into both programs.
OUTPUT_FUNCTION = r"""
def output(f):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in (0, 1):
        try:
            return os.open(f, flags, 0o600)
        except FileExistsError:
            pass
        except OSError as e:
            raise Refused("cannot create the job's output file %s: %s" % (f, e.strerror))
        st = os.lstat(f)
        if stat.S_ISREG(st.st_mode) and st.st_uid == me and not attempt:
            os.unlink(f)
            continue
        what = ("a directory" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if stat.S_ISLNK(st.st_mode)
                else "another user's file" if st.st_uid != me else "not a regular file")
        raise Refused("the job's output file %s exists and is %s: refusing to write the job's output there"
                      % (f, what))
""".strip("\n")

# The helper, run as the owner (a short ``python3 -I -S``: no site, no user paths, only built-in modules),
# ONE per round trip whatever the number of jobs: the per-job work of a round trip costs no new process.
# - launch: checks the script, creates the output files (see the module docstring; mode 0600, never a file
#   someone else made), removes a stale exit file, leaves the trace ``<tag>.started`` next to it (so that a
#   job whose wrapper is killed before it writes its status is never taken for one that never started), starts WRAP with ``posix_spawn(setsid=True)``, the output
#   files as its stdout and stderr: glibc spawns with CLONE_VFORK, so when the call returns the job is
#   already its own session and group leader (a cancel right after the submit finds the group) and its
#   pid is the native id. No ``setsid`` binary, no shell per job, no polling of /proc: about four times
#   the launches per second of the shell launcher it replaced. SIGPIPE and SIGXFSZ are reset to their
#   defaults for the job (Python ignores SIGPIPE; subprocess restores it the same way).
# - final: how a job ended: its exit file (opened without following a symlink, a regular file owned by
#   the caller), else whether its group leader still runs our wrapper for this job (/proc/<pgid>/cmdline,
#   what ``ps -o args`` prints), else the exit file again (it may have ended meanwhile): prints
#   "exit <status>" (and the exit file's rusage line when it has one), "running" or "gone" (by tag: the exit
#   file, else "started" when the launch's trace <tag>.started is there, else "gone"). The leader still runs our wrapper when its command line starts with one of the record's
#   prefixes, or with WRITER and the job's exit file (the wrapper's rusage writer, exec'd in its place).
# An exit file "~/DIR/NAME" is in the caller's home, in a private DIR (launch creates it and checks it is
# theirs, see private(); final and forget only look).
# argv: operation (launch | final), form ("framed": one answer per record framed like BATCH_SCRIPT's,
# for parse_batch; "plain": one record, its answer on stdout or its refusal on stderr with status 1),
# for launch WRAP, the mark ($0 of the wrapper is <mark><marker>: what ps shows and status matches) and
# RUNNER, then records: the number of fields that follow and the fields.
#   launch record: marker (<our id>-<token>), pwd, stdout file, stderr file (os.devnull when joined into
#   stdout), exit file, options (JSON: env, export, limits, join; '' for none), script, its arguments.
#   final record: "pgid", exit file, legacy exit file, pgid, expected command-line prefixes (WRAP's and
#   LEGACY_WRAP's), [output files] | "tag", exit file, legacy exit file, [output files] | "forget", exit file,
#   legacy exit file (removed once the job's final state is recorded; regular files of the caller's only).
#   A non-zero "exit" answer is followed, for each output file, by a line "@@tail" and the last 8 KiB of that
#   file ("@@" written "@ @" there, so nothing in it passes for batch framing): where the Spark backend, which
#   reuses this launcher for its drivers, reads why a driver failed.
#   The legacy exit file (in the pwd, where the earlier release kept it) counts only when there is no
#   exit file, and only as a regular file of the caller's with one link.
#   Arrays: the launch record's options carry "array" (SUPERVISOR's settings): the launcher runs SUPERVISOR in
#   front of the script (and RUNNER), in the private directory of the exit files. Two more final records:
#   "tasks", exit file, legacy exit file, pgid (0: none), the leader's prefix, tag, control text, tasks to
#   forget (rewrites the control file <tag>.ctl when it changed, removes the exit files of the tasks whose end is
#   recorded, prints "leader <exit|running|gone>" then "<task> <what its exit file says>" per task that ended)
#   | "forget_array", exit file, legacy exit file, tag (the array's files, its tasks' and its control file).
HELPER = r"""
import json, os, pwd, signal, stat, sys, time
op, form, a = sys.argv[1], sys.argv[2], sys.argv[3:]
os.closerange(3, 1 << 16)
me = os.geteuid()
writer = %(writer)s
checked = {}
class Refused(Exception):
    pass
def private(d):
    home = os.path.dirname(d)
    try:
        st = os.stat(home)
    except OSError as e:
        raise Refused("your home %s: %s (the job's exit status is kept there)" % (home, e.strerror))
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise Refused("your home %s is writable by others: the job's exit status cannot be kept safe there" % home)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise Refused("cannot create %s for the job's exit status: %s" % (d, e.strerror))
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
        raise Refused("%s is not a directory of yours: remove it (it keeps the jobs' exit status)" % d)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(d, 0o700)
def resolve(ext, make=False):
    if not ext.startswith("~/"):
        return ext
    ext = pwd.getpwuid(me).pw_dir.rstrip("/") + ext[1:]
    d = os.path.dirname(ext)
    if make:
        if d not in checked:
            try:
                private(d)
                checked[d] = None
            except Refused as e:
                checked[d] = e
        if checked[d] is not None:
            raise checked[d]
    return ext
%(output)s
def launch(jid, pwd_, out, err, ext, opts, script, *args):
    o = json.loads(opts) if opts else {}
    try:
        os.chdir(pwd_)
    except OSError as e:
        return 1, "", "metasched: cannot enter pwd %s: %s" % (pwd_, e.strerror)
    try:
        st = os.stat(script)
    except FileNotFoundError:
        return 1, "", "metasched: no such file: " + script
    except OSError as e:
        return 1, "", "metasched: cannot reach %s: %s" % (script, e.strerror)
    if not stat.S_ISREG(st.st_mode):
        return 1, "", "metasched: not a regular file: " + script
    if not os.access(script, os.X_OK):
        return 1, "", "metasched: not executable: %s (chmod +x %s)" % (script, script)
    if not os.access(pwd_, os.W_OK):
        return 1, "", "metasched: cannot write pwd %s (the job's output goes there)" % pwd_
    for f in (out, err):
        d = os.path.dirname(f) or "."
        if f != os.devnull and not os.path.lexists(f):
            if not os.path.isdir(d):
                return 1, "", "metasched: cannot create the job's output file %s: no such directory %s" % (f, d)
            if not os.access(d, os.W_OK | os.X_OK):
                return 1, "", "metasched: cannot create the job's output file %s: cannot write %s" % (f, d)
    cores = (o.get("limits") or {}).get("cores")
    if cores and cores > len(os.sched_getaffinity(0)):
        return 1, "", "metasched: the job asks for %d cores; this node has %d" % (cores, len(os.sched_getaffinity(0)))
    cmd = [script, *args]
    if o.get("limits") or o.get("join"):
        cmd = [sys.executable, "-I", "-S", "-c", runner, json.dumps(dict(o.get("limits") or {}, join=o.get("join"))),
               *cmd]
    fds, made = [], []
    try:
        ext = resolve(ext, True)
        if o.get("array"):
            c = dict(o["array"], mark=mark + jid, dir=os.path.dirname(ext))
            for f in array_files(c["dir"], c["tag"]):      # an earlier launch's: its control file would steer this one
                forget(f)
            cmd = [sys.executable, "-I", "-S", "-c", supervisor, json.dumps(c), *cmd]
        try:
            os.unlink(ext)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise Refused("cannot remove the old exit file %s: %s" % (ext, e.strerror))
        for f in (out, err):
            if f == os.devnull:
                fds.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
                continue
            if f in made:                   # stdout and stderr asked for the same file
                fds.append(os.dup(fds[made.index(f)]))
                continue
            fds.append(output(f))
            made.append(f)
        mark_started(ext)
        made.append(started(ext))
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", wrap, mark + jid, ext, *cmd],
                             job_env(o), setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, fds[0], 1),
                                           (os.POSIX_SPAWN_DUP2, fds[1], 2)])
        made = []
    except Refused as e:
        return 1, "", "metasched: %s" % e
    except OSError as e:
        return 1, "", "metasched: cannot start %s: %s" % (e.filename or script, e.strerror)
    finally:
        for fd in fds:
            os.close(fd)
        for f in made:
            os.unlink(f)
    return 0, "%d\n" % pid, ""
def job_env(o):
    export = o.get("export")
    env = dict(os.environ)
    if export == "none":
        env = {}
    elif isinstance(export, list):
        env = {k: os.environ[k] for k in export if k in os.environ}
    elif export == "all":
        for k in ("SUDO_COMMAND", "SUDO_USER", "SUDO_UID", "SUDO_GID"):
            env.pop(k, None)
    env.update(o.get("env") or [])
    return env
def status(ext, single=False, size=64):
    try:
        fd = os.open(ext, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != me or (single and st.st_nlink != 1):
            return None
        t = os.read(fd, max(size, 512)).decode("utf-8", "replace").split("\n")
        return "exit %s\n" % t[0].strip() + ("%s\n" % t[1] if len(t) > 2 and t[1].startswith("rusage ") else "")
    finally:
        os.close(fd)
def ended(ext, old):
    return status(ext) or status(old, True)
def started(ext):
    return (ext[:-5] if ext.endswith(".exit") else ext) + ".started"
def mark_started(ext):
    try:
        os.close(os.open(started(ext), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise Refused("cannot create %s (the trace that the job was started): %s" % (started(ext), e.strerror))
def forget(f):
    try:
        st = os.lstat(f)
        if stat.S_ISREG(st.st_mode) and st.st_uid == me:
            os.unlink(f)
    except OSError:
        pass
def tail(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
            return ""
        os.lseek(fd, max(0, st.st_size - 8192), 0)
        text = os.read(fd, 8192).decode("utf-8", "replace")
    finally:
        os.close(fd)
    return text.replace("@@", "@ @")
def mine(p):
    try:
        st = os.lstat(p)
        return stat.S_ISREG(st.st_mode) and st.st_uid == me
    except OSError:
        return False
def runs(text):
    out = []
    for part in text.split(","):
        if part:
            ab, _, st = part.partition(":")
            a, _, b = ab.partition("-")
            out.extend(range(int(a), int(b or a) + 1, int(st or 1)))
    return out
def array_files(d, name):
    head = name + "."
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return [os.path.join(d, n) for n in names if n in (head + "ctl", head + "ctl.new") or (
        n.startswith(head) and n.endswith(".exit") and n[len(head):-5].isdigit())]
def tasks(ext, pgid, prefix, name, ctl, drop):
    d, head = os.path.dirname(ext), name + "."
    for t in runs(drop):
        forget(os.path.join(d, "%s%d.exit" % (head, t)))
    c = os.path.join(d, name + ".ctl")
    try:
        fd = os.open(c, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            old = os.read(fd, 1 << 20).decode("utf-8", "replace")
        finally:
            os.close(fd)
    except OSError:
        old = None
    if old != ctl:
        tmp = c + ".new"
        if os.path.lexists(tmp) and not mine(tmp):
            return 1, "", "metasched: %s is not a file of yours" % tmp
        if os.path.isdir(d):
            with open(tmp, "w") as f:
                f.write(ctl)
            os.rename(tmp, c)
    v = status(ext)
    if not v and pgid != "0":
        try:
            with open("/proc/%s/cmdline" % pgid, "rb") as f:
                args = f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")
        except OSError:
            args = ""
        v = status(ext) or ("running\n" if args.startswith(prefix) else "gone\n")
    out = ["leader " + (v or "gone\n")]
    try:
        names = os.listdir(d)
    except OSError:
        names = []
    for n in names:
        t = n[len(head):-5]
        if n.startswith(head) and n.endswith(".exit") and t.isdigit():
            v = status(os.path.join(d, n), size=512)
            if v:
                out.append(t + " " + v.split("\n", 1)[0][5:] + "\n")
    return 0, "".join(out), ""
def final(kind, ext, old, *rest):
    if kind == "tasks":
        return tasks(resolve(ext), *rest)
    if kind == "forget_array":
        ext = resolve(ext)
        for f in [ext, started(ext), old] + array_files(os.path.dirname(ext), rest[0]):
            forget(f)
        return 0, "forgotten\n", ""
    pgid, prefix, old_prefix, files = (rest[0], rest[1], rest[2], rest[3:]) if kind == "pgid" else (
        None, None, None, rest)
    rc, o, e = final_status(kind, resolve(ext), old, pgid, prefix, old_prefix)
    if o.startswith("exit ") and o.split("\n", 1)[0].strip() != "exit 0":
        o += "".join("@@tail\n" + tail(f) for f in files)
    return rc, o, e
def cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")
    except OSError:
        return ""
def final_status(kind, ext, old, pgid, prefix, old_prefix):
    if kind == "forget":
        forget(ext)
        forget(started(ext))
        forget(old)
        return 0, "forgotten\n", ""
    v = ended(ext, old)
    if v or kind == "tag":
        return 0, v or ("started\n" if mine(started(ext)) else "gone\n"), ""
    args = cmdline(pgid)
    for _ in range(5):
        # while the wrapper execs its rusage writer the kernel shows an empty command line for an instant:
        # look again before taking a live process for something else (a zombie stays empty, briefly)
        if args or not os.path.exists("/proc/%s" % pgid):
            break
        time.sleep(0.01)
        args = cmdline(pgid)
    v = ended(ext, old)
    ours = (prefix, old_prefix, "%s %s " % (writer, ext))
    return 0, v or ("running\n" if args.startswith(ours) else "gone\n"), ""
if op == "launch":
    wrap, mark, runner, a, act = a[0], a[1], a[2], a[3:], launch
    supervisor = %(supervisor)r
    null = os.open(os.devnull, os.O_RDWR)
else:
    act = final
i = n = 0
while i < len(a):
    k = int(a[i])
    rc, o, e = act(*a[i + 1:i + 1 + k])
    i += 1 + k
    if form == "plain":
        os.write(1 if rc == 0 else 2, (o or e + "\n").encode("utf-8", "surrogateescape"))
        sys.exit(rc)
    os.write(1, ("%s\n@@metasched-rc %d %d\n%s\n@@metasched-end %d\n" % (o, n, rc, e, n)).encode(
        "utf-8", "surrogateescape"))
    n += 1
""".replace("%(writer)s", repr(WRITER))

# An array's supervisor (issue 16; see the module docstring), run by the launcher under WRAP as the array's own
# program, as the owner, python3 -I -S, standard library only. argv: its settings (JSON: mark, the task
# wrappers' $0 without the task; dir, the private directory of the exit files; tag; first, last, step, limit (0:
# none), held; wrap, TASK_WRAP; out and err, each task's output paths split where its index goes, err null when
# joined into out), then what each task runs (the script and its arguments, behind RUNNER when the array asks for
# limits or join). The control file (<dir>/<tag>.ctl, "hold RUNS" and "skip RUNS": tasks not to start yet, tasks
# never to start) is rewritten whole by the poller (the "tasks" question); a task skipped gets "skipped" as its
# exit status, one whose output files cannot be made "refused <why>" (and a line on the supervisor's stderr).
# held: wait for the control file before starting anything (some tasks were held or cancelled before the
# dispatch). TERM (a cancel of the array): start nothing more, mark the tasks not started skipped, let the
# running ones end (the cancel signals their groups too).
SUPERVISOR = r"""
import json, os, signal, stat, sys, time
c, cmd = json.loads(sys.argv[1]), sys.argv[2:]
me = os.geteuid()
todo = list(range(c["first"], c["last"] + 1, c["step"]))
limit = c["limit"] or len(todo)
ctl = os.path.join(c["dir"], c["tag"] + ".ctl")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
null = os.open(os.devnull, os.O_RDWR)
class Refused(Exception):
    pass
%(output)s
def runs(text):
    out = set()
    for part in text.split(","):
        if part:
            ab, _, st = part.partition(":")
            a, _, b = ab.partition("-")
            out.update(range(int(a), int(b or a) + 1, int(st or 1)))
    return out
seen, hold, skip = [None], set(), set()
def control():
    try:
        st = os.stat(ctl)
    except OSError:
        return False
    if seen[0] != (st.st_mtime_ns, st.st_size, st.st_ino):
        seen[0] = (st.st_mtime_ns, st.st_size, st.st_ino)
        h, k = set(), set()
        with open(ctl) as f:
            for line in f:
                word, _, rest = line.strip().partition(" ")
                (h if word == "hold" else k if word == "skip" else set()).update(runs(rest))
        hold.clear(); hold.update(h); skip.clear(); skip.update(k)
    return True
def exit_file(t):
    return os.path.join(c["dir"], "%s.%d.exit" % (c["tag"], t))
def done(t, text):
    try:
        fd = os.open(exit_file(t), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, (text.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    finally:
        os.close(fd)
env = dict(os.environ)
def start(t):
    fds, made = [], []
    try:
        for parts in (c["out"], c["err"]):
            if parts is None:
                fds.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
                continue
            f = str(t).join(parts)
            if f in made:
                fds.append(os.dup(fds[made.index(f)]))
                continue
            fds.append(output(f))
            made.append(f)
        env["METASCHED_ARRAY_TASK_ID"] = str(t)
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", c["wrap"], "%s.%d" % (c["mark"], t), exit_file(t),
                                         "%d" % time.time()] + cmd, env, setpgroup=0,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM),
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, fds[0], 1),
                                           (os.POSIX_SPAWN_DUP2, fds[1], 2)])
        made = []
        return pid
    except (Refused, OSError) as e:
        why = str(e) if isinstance(e, Refused) else "cannot start %s: %s" % (e.filename or cmd[0], e.strerror)
        os.write(2, ("metasched: task %d: %s\n" % (t, why)).encode("utf-8", "replace"))
        done(t, "refused " + why)
        return None
    finally:
        for fd in fds:
            os.close(fd)
        for f in made:
            os.unlink(f)
running = {}
def reap():
    while running:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            running.clear()
            return
        if pid == 0:
            return
        running.pop(pid, None)
while c["held"] and not control() and not stop:
    time.sleep(0.2)
while (todo or running) and not stop:
    control()
    reap()
    i = 0
    while i < len(todo) and len(running) < limit and not stop:
        t = todo[i]
        if t in skip:
            done(t, "skipped")
            todo.pop(i)
            continue
        if t in hold:
            i += 1
            continue
        todo.pop(i)
        pid = start(t)
        if pid is not None:
            running[pid] = t
    time.sleep(0.05)
for t in todo:
    done(t, "skipped")
while running:
    reap()
    time.sleep(0.05)
"""

HELPER = HELPER.replace("%(output)s", OUTPUT_FUNCTION).replace("%(supervisor)r", repr(
    SUPERVISOR.replace("%(output)s", OUTPUT_FUNCTION)))

# RUNNER: what the wrapper runs in front of the script of a job that asks for limits or for join (as the owner,
# in the job's process group). argv: options (JSON: cores, walltime, memory, join), the script, its arguments.
# join: stderr onto stdout. cores: bound to that many of the node's CPUs (which ones rotates with the pid).
# Without walltime or memory it becomes the script (exec); with them it runs the script as its child, ignores
# TERM/INT/HUP itself (a cancel's TERM reaches the job through the group), polls every second and, over a
# limit, says so on the job's stderr, sends TERM to the group (the wrapper traps it), then KILL to every other
# process of the group after 5 s, and exits with LIMIT_STATUS; else with the script's status (128 + signal).
LIMIT_STATUS = {"walltime": 152, "memory": 153}
RUNNER = r"""
import json, os, signal, sys, time
o, cmd = json.loads(sys.argv[1]), sys.argv[2:]
if o.get("join"):
    os.dup2(1, 2)
if o.get("cores"):
    cpus = sorted(os.sched_getaffinity(0))
    k = os.getpid() % len(cpus)
    os.sched_setaffinity(0, (cpus[k:] + cpus[:k])[:o["cores"]])
for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
    signal.signal(s, signal.SIG_DFL)
def run():
    try:
        os.execv(cmd[0], cmd)
    except OSError as e:
        os.write(2, ("metasched: cannot run %s: %s\n" % (cmd[0], e.strerror)).encode())
        os._exit(126)
wall, mem = o.get("walltime"), o.get("memory")
if not wall and not mem:
    run()
pid = os.fork()
if pid == 0:
    run()
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
me, group, page = os.getpid(), os.getpgrp(), os.sysconf("SC_PAGE_SIZE")
def others():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) not in (me, group):
            try:
                with open("/proc/%s/stat" % p) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) == group:
                        out.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out
def resident():
    n = 0
    for p in others():
        try:
            with open("/proc/%d/statm" % p) as f:
                n += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return n
def status(w):
    return os.WEXITSTATUS(w) if os.WIFEXITED(w) else 128 + os.WTERMSIG(w)
def hms(t):
    return "%02d:%02d:%02d" % (t // 3600, t // 60 % 60, t % 60)
start, over = time.monotonic(), None
while over is None:
    done, w = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(status(w))
    if wall and time.monotonic() - start >= wall:
        over = ("walltime", "its walltime of %s" % hms(wall))
    elif mem and resident() > mem:
        over = ("memory", "its memory of %d MiB (resident, all its processes)" % (mem // 1048576))
    else:
        time.sleep(min(1.0, max(0.05, wall - (time.monotonic() - start))) if wall else 1.0)
os.write(2, ("metasched: the job went over %s: it is stopped\n" % over[1]).encode())
try:
    os.killpg(group, signal.SIGTERM)
except OSError:
    pass
end = time.monotonic() + 5
while time.monotonic() < end:
    if os.waitpid(pid, os.WNOHANG)[0]:
        pid = 0
        break
    time.sleep(0.1)
for p in others():
    try:
        os.kill(p, signal.SIGKILL)
    except OSError:
        pass
if pid:
    os.waitpid(pid, 0)
sys.exit(%(codes)s[over[0]])
""".replace("%(codes)s", repr(LIMIT_STATUS))

# $1 = pgid, $2 = grace seconds, $3 and $4 = the expected command-line prefixes of the leader (WRAP's and
# LEGACY_WRAP's, for this job).
CANCEL = (
    'p=$1; g=$2; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*|"$4"*) ;; *) echo "not running"; exit 0;; esac; '
    'kill -s TERM -- "-$p" 2>/dev/null || exit 0; '
    '( sleep "$g"; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*|"$4"*) kill -s KILL -- "-$p";; esac ) > /dev/null 2>&1 < /dev/null & '
    'echo "terminating"'
)

# An array: $1 = its session id (the leader's pid), $2 = grace seconds, $3 and $4 = the leader's expected prefixes:
# TERM then, after the grace, KILL to every process of the array's session (its tasks lead groups of their own).
CANCEL_ARRAY = (
    'p=$1; g=$2; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*|"$4"*) ;; *) echo "not running"; exit 0;; esac; '
    'kill -s TERM $(ps -o pid= -s "$p") 2>/dev/null; '
    '( sleep "$g"; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*|"$4"*) kill -s KILL $(ps -o pid= -s "$p");; esac ) > /dev/null 2>&1 < /dev/null & '
    'echo "terminating"'
)

_PS_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+\s+\S+\s+\d+\s+\d\d:\d\d:\d\d\s+\d{4})\s(.*)$")


def marker(job: Job) -> str:
    """What follows the backend's mark (JOB_MARK for local jobs) in the wrapper's $0: our id and the job's token (<id>-<token>), or the id alone
    for a job created before tokens existed."""
    return f"{job.id}-{job.token}" if job.token else str(job.id)


_MARK_RE = re.compile(r"^(\d+)(?:-([a-z]{6}))? ")
_TASK_MARK_RE = re.compile(r"^(\d+)(?:-([a-z]{6}))?\.(\d+) ")


def exit_file(job: Job) -> str:
    """Where the job's exit status is kept: in the owner's home on the node (the helper expands ``~``),
    in a directory only they can write (the helper's private())."""
    return f"~/.metasched/{tag(job)}.exit"


def legacy_exit_file(job: Job) -> str:
    """Where the earlier release's wrapper (LEGACY_WRAP) wrote the job's exit status: in its pwd."""
    return posixpath.join(job.pwd, f".{tag(job)}.exit")


def output_files(job: Job, task: int | None = None) -> tuple[str, str | None]:
    """Where the job's stdout and stderr go: its own paths (stdout, stderr patterns), else <pwd>/<tag>.o<id> and
    .e<id>; stderr None when joined into stdout. The one place the launcher and GET /jobs/{id} learn it.
    An array's tasks: the same with %a their index, else <pwd>/<tag>.o<id>.<task> and .e<id>.<task>; ``task``
    None: the paths with TASK_SLOT where the index goes."""
    slot = TASK_SLOT if task is None else str(task)
    stdout, stderr = custom_outputs(job, task)
    base = posixpath.join(job.pwd, tag(job))
    suffix = f".{slot}" if job.array_spec else ""
    return (stdout or f"{base}.o{job.id}{suffix}",
            None if job.spec.join else (stderr or f"{base}.e{job.id}{suffix}"))


def supervisor_files(job: Job) -> tuple[str, str]:
    """An array's own output files (its supervisor's messages): <pwd>/<tag>.o<id> and .e<id>."""
    base = posixpath.join(job.pwd, tag(job))
    return f"{base}.o{job.id}", f"{base}.e{job.id}"


def job_limits(job: Job) -> dict:
    """What the launcher's runner keeps for a local job: its cores, walltime and resident memory."""
    r = job.spec.resources
    return {k: v for k, v in (("cores", r.slots if (r.tasks or r.cores_per_task) else None),
                              ("walltime", r.walltime), ("memory", r.memory)) if v}


def launch_options(job: Job, limits: dict) -> str:
    """The launcher's options for a job (JSON: env, export, limits, join, array), '' when it asks for nothing.
    An array's limits and join are each task's (its supervisor runs them behind RUNNER)."""
    spec = job.spec
    opts = {k: v for k, v in (("env", [list(p) for p in spec.env]),
                              ("export", list(spec.export) if isinstance(spec.export, tuple) else spec.export),
                              ("limits", limits), ("join", spec.join),
                              ("array", array_settings(job) if job.array_spec else None)) if v}
    return json.dumps(opts, ensure_ascii=False) if opts else ""


def array_settings(job: Job) -> dict:
    """SUPERVISOR's settings for an array (the launcher adds its mark and the exit files' directory)."""
    spec = ArraySpec.parse(job.array_spec, internal=True)
    out, err = output_files(job)
    return {"tag": tag(job), "first": spec.first, "last": spec.last, "step": spec.step, "limit": spec.limit or 0,
            "held": spec.held, "wrap": TASK_WRAP, "out": out.split(TASK_SLOT),
            "err": err.split(TASK_SLOT) if err is not None else None}


class LocalBackend(Backend):
    type = "local"
    inferred_from = r"^local$"
    status_commands = ("ps", "python3")
    sudo_commands = ("sh", "python3")
    OPTIONS = ('grace', 'final_as_owner', 'tz', 'python', 'recovery_grace')
    starts_on_submit = True     # the launcher starts the job at once: RUNNING, not QUEUED
    supervises_arrays = True    # an array's tasks are started by the launcher's supervisor
    mark = JOB_MARK             # $0 of the wrapper: <mark><marker> (the Spark backend's drivers use another)

    @property
    def args_prefix(self) -> str:
        """What ps shows at the start of a job's wrapper, before its marker (our id and token)."""
        return f"sh -c {WRAP} {self.mark}"

    @property
    def prefixes(self) -> tuple[str, str]:
        """The wrapper's command-line prefix as WRAP and as LEGACY_WRAP (the earlier release) started it."""
        return self.args_prefix, f"sh -c {LEGACY_WRAP} {self.mark}"

    def _job_prefixes(self, job: Job) -> list[str]:
        """The command-line prefixes of this job's wrapper, as WRAP and as LEGACY_WRAP started it."""
        return [f"{prefix}{marker(job)} " for prefix in self.prefixes]

    @property
    def task_prefix(self) -> str:
        """What ps shows at the start of an array task's wrapper (TASK_WRAP), before <marker>.<task>."""
        return f"sh -c {TASK_WRAP} {self.mark}"

    scheduler_name = "the local scheduler"
    RESOURCES = frozenset(("nodes", "tasks", "cores_per_task", "memory", "walltime"))
    RESOURCE_HINTS = {"gpus_per_node": "it gives jobs no GPUs", "native_queue": "it has one queue",
                      "account": "it charges no accounts"}

    def _spec_problem(self, job: Job) -> tuple[str, str] | None:
        if (job.spec.resources.nodes or 1) > 1:
            return "resources.nodes", "resources.nodes: the local scheduler runs a job on one node"
        return super()._spec_problem(job)

    def output_files(self, job: Job, task: int | None = None) -> OutputFiles:
        out, err = output_files(job, task)
        return OutputFiles(out, err, joined=job.spec.join)

    def _launch_fields(self, job: Job) -> list[str]:
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        out, err = supervisor_files(job) if job.array_spec else output_files(job)
        fields = [marker(job), job.pwd, out, err or os.devnull, exit_file(job), launch_options(job, self._limits(job)),
                  *self._command(job)]
        return [str(len(fields)), *fields]

    def _limits(self, job: Job) -> dict:
        """What the launcher's runner keeps for this job (see job_limits)."""
        return job_limits(job)

    def _command(self, job: Job) -> list[str]:
        """What the wrapper runs: the script (an executable file, checked by the launcher) and its arguments."""
        return [job.path, *job.options]

    def _helper(self, op: str, form: str, fields: list[str], run_as: str | None) -> list[str]:
        return as_user([str(self.options.get("python", "python3")), "-I", "-S", "-c", HELPER, op, form, *fields],
                       run_as)

    def _framed(self, op: str, head: list[str], records: list, run_as: str | None) -> list[str]:
        """One helper for several records (each its field count and fields), answers framed for parse_batch."""
        return self._helper(op, "framed", [*head, *(f for fields in records for f in fields)], run_as)

    def submit_argv(self, job: Job, run_as: str | None) -> list[str]:
        return self._helper("launch", "plain", [WRAP, self.mark, RUNNER, *self._launch_fields(job)], run_as)

    # In a batch, one helper starts every job of the round trip.
    def batch_line(self, job: Job) -> list[str]:
        return self._launch_fields(job)

    def batch_submit_argv(self, lines: list, run_as: str | None) -> list[str]:
        return self._framed("launch", [WRAP, self.mark, RUNNER], lines, run_as)

    def parse_submit(self, job: Job, rc: int, stdout: str, stderr: str) -> str:
        return launcher_pid(rc, stdout, stderr)

    def status_argv(self) -> list[str]:
        return ["ps", "-ww", "-e", "-o", "pid=,pgid=,sid=,user:64=,lstart=,args="]

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        if rc != 0 or not stdout.strip():
            raise RuntimeError(f"ps failed ({rc}): {first_line(stderr, stdout)}")
        tz = self.options.get("tz", "UTC")
        jobs: dict[str, NativeJob] = {}
        tasks: dict[str, list[NativeTask]] = {}
        task_prefix = self.task_prefix
        for line in stdout.splitlines():
            m = _PS_LINE.match(line)
            if not m:
                continue
            pid, pgid, sid, user, lstart, args = m.groups()
            if pid != pgid:
                continue
            start = local_to_utc_iso(lstart, "%a %b %d %H:%M:%S %Y", tz)
            if args.startswith(task_prefix):
                task = _TASK_MARK_RE.match(args[len(task_prefix):])
                if not task:
                    continue
                # a task of an array: its own group, in the session of the array's leader
                tasks.setdefault(sid, []).append(NativeTask(int(task.group(3)), NativeState.RUNNING, native_id=pid,
                                                            start_time=start))
                if sid not in jobs:          # its leader may have died (or be listed later): the array runs
                    jobs[sid] = NativeJob(native_id=sid, our_id=int(task.group(1)), our_token=task.group(2),
                                          owner=user, name=f"{self.mark}{task.group(1)}", state=NativeState.RUNNING,
                                          queue=self.type, start_time=start)
                continue
            prefix = next((p for p in self.prefixes if args.startswith(p)), None)
            if prefix is None:
                continue
            our = _MARK_RE.match(args[len(prefix):])
            if not our:
                continue
            jobs[pid] = NativeJob(native_id=pid, our_id=int(our.group(1)), our_token=our.group(2), owner=user,
                                  name=f"{self.mark}{our.group(0).strip()}", state=NativeState.RUNNING,
                                  queue=self.type, start_time=start)
        return [replace(j, tasks=tuple(tasks[n])) if n in tasks else j for n, j in jobs.items()]

    def _asker(self, job: Job) -> str | None:
        return job.owner if self.options.get("final_as_owner", True) else None

    def _final_fields(self, job: Job) -> list[str]:
        if job.scheduler_job_id is None:
            return ["3", "tag", exit_file(job), legacy_exit_file(job)]
        return ["6", "pgid", exit_file(job), legacy_exit_file(job), _pgid(job), *self._job_prefixes(job)]

    def final_argv(self, job: Job) -> list[str]:
        return self._helper("final", "plain", self._final_fields(job), self._asker(job))

    def final_entry(self, job: Job):
        return self._asker(job), self._final_fields(job)

    def final_batch_argv(self, entries: list, run_as: str | None) -> list[str]:
        return self._framed("final", [], entries, run_as)

    def forget_entry(self, job: Job):
        if job.array_spec:          # an array adopted by its exit file has no native id, but has files
            return self._asker(job), ["4", "forget_array", exit_file(job), legacy_exit_file(job), tag(job)]
        if job.scheduler_job_id is None and not job.attempts:
            return None                     # never started: no exit file
        # (a job ended by its tag, with no native id, may have left its exit file and its started trace)
        return self._asker(job), ["3", "forget", exit_file(job), legacy_exit_file(job)]

    def parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        line = first_line(stdout)
        if line == "running":
            return None
        m = re.match(r"^exit (\d+)$", line)
        if m:
            code = int(m.group(1))
            if code == 0:
                return FinalState("COMPLETED", 0, "")
            if job.cancel_requested:
                return FinalState("CANCELLED", code, "cancelled")
            r = job.spec.resources
            if code == LIMIT_STATUS["walltime"] and r.walltime:
                return FinalState("ERROR", code, f"walltime exceeded: it ran longer than {hms(r.walltime)} and was "
                                                 f"stopped by the local scheduler")
            if code == LIMIT_STATUS["memory"] and r.memory:
                return FinalState("ERROR", code, f"memory exceeded: it used more than {r.memory // 1048576} MiB "
                                                 f"(resident) and was stopped by the local scheduler")
            if code > 128:
                return FinalState("ERROR", code, f"killed (signal {code - 128})")
            return FinalState("ERROR", code, f"exit code {code}")
        if line == "gone":
            if job.cancel_requested:
                return FinalState("CANCELLED", None, "cancelled")
            return FinalState("ERROR", None, "the job ended without recording an exit status (killed, its "
                                             "output files could not be created, or the node restarted)")
        return None   # sudo or ps failed: ask again next cycle

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """The wrapper's record (RUSAGE): CPU time and peak memory from rusage, the wall time, its end and
        the node name from the wrapper (the start is the end minus the wall time). A signal only by the
        shell's convention (an exit status 128 + n; not the runner's LIMIT_STATUS for a limit the job had).
        Nothing when the job left no record ("gone"). The tails after the record (Spark) are not read."""
        lines = (stdout or "").splitlines()
        m = re.match(r"^exit (\d+)$", lines[0].strip()) if lines else None
        if not m:
            return None
        code, r = int(m.group(1)), job.spec.resources
        # the runner's own status for a limit the job had (LIMIT_STATUS) is no signal: parse_final's reason says it
        limit = (code == LIMIT_STATUS["walltime"] and r.walltime) or (code == LIMIT_STATUS["memory"] and r.memory)
        signal = None if limit else signal_of(code)
        rec = re.match(r"^rusage (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\S+)$",
                       lines[1].strip()) if len(lines) > 1 else None
        if rec is None:
            return Accounting.of("wrapper", exit_signal=signal) if signal else None
        utime, stime, maxrss_kb, wall, end, node = rec.groups()
        rusage = Accounting.of("rusage", cpu_user_seconds=float(utime), cpu_system_seconds=float(stime),
                               max_rss_bytes=int(maxrss_kb) * 1024)
        return rusage.completed_by(Accounting.of(
            "wrapper", wall_seconds=float(wall), end_time=epoch_to_utc_iso(float(end)),
            start_time=epoch_to_utc_iso(float(end) - float(wall)), nodes=node, exit_signal=signal))

    def final_by_tag_argv(self, job: Job) -> list[str]:
        """An interrupted dispatch: did the job run (its exit file exists)? It is not running (not in ps)."""
        return self.final_argv(job)

    def parse_final_by_tag(self, job: Job, rc: int, stdout: str, stderr: str):
        line = first_line(stdout)
        if line == "gone":
            return None                      # it never started: the engine submits it again
        if line == "started":
            # the launcher left its trace and spawned it, and it ended without an exit status (its wrapper was
            # killed, the node restarted): it ran, or may have. Submitting it again could run it twice.
            if job.cancel_requested:
                return None, FinalState("CANCELLED", None, "cancelled")
            return None, FinalState("ERROR", None, "the job was started but ended without recording an exit "
                                                   "status (killed with its wrapper, or the node restarted) "
                                                   "before its start was recorded: not started again")
        fs = self.parse_final(job, rc, stdout, stderr)
        if fs is None or not line.startswith("exit "):
            # an exit file being written, or sudo/sh failed: never take that for "not found"
            raise RuntimeError(f"cannot tell whether job {job.id} ran: {line or first_line(stderr) or rc!r}")
        return None, fs

    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        grace = str(int(self.options.get("grace", 10)))
        script = CANCEL_ARRAY if job.array_spec else CANCEL
        return as_user(["sh", "-c", script, "sh", _pgid(job), grace, *self._job_prefixes(job)], run_as)

    def process_matcher(self) -> ProcessMatcher:
        prefixes = (*self.prefixes, self.task_prefix)
        return ProcessMatcher(trees_by_args_regex="^(?:" + "|".join(map(re.escape, prefixes)) +
                                                  r")\d+(-[a-z]{6})?(\.\d+)? ",
                              include_process_group=True, job_ids="pgid")

    # -- arrays: the supervisor (SUPERVISOR) starts the tasks; one question per array and cycle ----------
    supports_arrays = True

    def task_final_entries(self, job: Job, tasks: list[int], control: dict | None = None) \
            -> list[tuple[list[int], tuple]]:
        """ONE helper call per array: rewrite the control file (``control``: hold and skip sets; tasks whose end
        is recorded in ``forget``: their exit files are removed), then report the leader and every task's exit
        file. Covers every task asked: one not reported is still waiting (or, once the leader is gone, gone)."""
        control = control or {}
        text = "".join(f"{word} {runs_arg(control[word])}\n" for word in ("hold", "skip") if control.get(word))
        # no native id: the array was adopted by its exit file (it had ended): nothing to look for in /proc
        leader = _pgid(job) if job.scheduler_job_id is not None else "0"
        fields = ["tasks", exit_file(job), legacy_exit_file(job), leader, self._job_prefixes(job)[0], tag(job), text,
                  runs_arg(control.get("forget", ()))]
        return [(list(tasks), (self._asker(job), [str(len(fields)), *fields]))]

    def parse_task_finals(self, job: Job, tasks: list[int], rc: int, stdout: str, stderr: str) -> dict[int, FinalState]:
        lines = stdout.splitlines()
        if rc != 0 or not lines or not lines[0].startswith("leader "):
            raise RuntimeError(f"cannot read the tasks of array {job.id}: {first_line(stderr, stdout) or rc!r}")
        leader = lines[0][len("leader "):].strip()
        wanted = set(tasks)
        ends: dict[int, FinalState] = {}
        for line in lines[1:]:
            t, _, what = line.partition(" ")
            if not t.isdigit() or int(t) not in wanted:
                continue
            code, _, rest = what.strip().partition(" ")
            if code == "skipped":
                ends[int(t)] = FinalState("CANCELLED", None, "cancelled before it started")
                continue
            if code == "refused":
                ends[int(t)] = FinalState("ERROR", None, f"not started: {rest.strip() or 'refused'}")
                continue
            fs = self.parse_final(job, 0, f"exit {code}", "")
            if fs is not None:
                ends[int(t)] = replace(fs, started_at=epoch_ms_to_utc_iso(rest + "000") if rest.isdigit() else None)
        if leader != "running":
            # the supervisor is over: it started or skipped every task, which wrote their exit files first
            for t in wanted - set(ends):
                ends[t] = self.parse_final(job, 0, "gone", "")
        return ends

    def task_action_argv(self, job: Job, action: str, tasks, run_as: str | None) -> list[str] | None:
        """A running task is cancelled in its process group; holds, releases and tasks not started yet go
        through the control file (task_final_entries)."""
        if action != "cancel":
            return None
        grace = str(int(self.options.get("grace", 10)))
        lines = []
        for t, pid in sorted(tasks.items()):
            if pid and str(pid).isdigit() and int(pid) > 1:
                prefix = f"{self.task_prefix}{marker(job)}.{t} "
                lines.append(command_line(["sh", "-c", CANCEL, "sh", str(pid), grace, prefix, prefix]))
        return as_user(["sh", "-c", "; ".join(lines)], run_as) if lines else None


def _pgid(job: Job) -> str:
    nid = job.scheduler_job_id or ""
    if not nid.isdigit() or int(nid) <= 1:
        raise ValueError(f"job {job.id}: {nid!r} is not a process group id")
    return nid
