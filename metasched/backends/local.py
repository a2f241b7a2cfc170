"""Local backend: runs the job script on the scheduler's node, detached, as its owner.

Design (why):
- The launcher (HELPER: a short ``python3 -I -S`` run as the owner, one per round trip whatever the
  number of jobs) changes to pwd, checks that the script is an executable file (else the submission is
  refused at once), and spawns the job in a new session: the job becomes a session and process-group
  leader, so native id = pid = pgid, printed by the launcher. The job's stdout/stderr go to
  ``<pwd>/<tag>.o<our id>`` / ``.e<our id>``. The node needs python3 (the node agent needs it anyway).
- The session leader is a small constant ``sh`` wrapper (WRAP) that runs the script (exec'd directly:
  the kernel honours its shebang) and then writes its exit status
  to ``<pwd>/.<tag>.exit``. It traps TERM (with a no-op handler, which children do not inherit) so
  that a cancel lets it record the job's status. The exit file survives a restart of the service; it is
  removed once the job's final state is committed (forget_entry), so users' directories do not fill up
  with one hidden file per job.
- Why the exit file lives in the job's pwd and not in a shared state dir such as a sticky
  /tmp/metasched-local: in a shared sticky directory another user can create ``<id>.exit`` first
  (a file or a symlink) and the owner's write then fails or lands elsewhere: one user could forge or block
  another user's result. The pwd belongs to the owner, who can always write there (their output
  files go there too). Reading it is done as the owner too (Debian 12 homes are 0700): final_argv
  wraps itself in ``sudo -n -u <owner>`` (option ``final_as_owner``, default True), and it only
  trusts a regular file (not a symlink) owned by the owner. The owner can of course write any status
  for their own job; that is acceptable: it is their job.
- Status: ONE ``ps`` listing; our jobs are the processes that lead their own group and whose command
  line starts with the wrapper's exact text followed by ``metasched-job-<our id>``. The owner column
  comes from the kernel; the engine must still check it against the job's owner before adopting
  (anyone can start a process with that command line).
- Cancel: TERM to the whole group, then KILL after ``grace`` seconds from a detached background
  subshell, so the command returns at once; both only after checking that the pgid still leads a
  process with our wrapper's command line for this job (pid reuse). A job killed without a chance to
  write its status (KILL, reboot) is "gone": CANCELLED if a cancel was requested, else ERROR.

Options: ``grace`` (seconds between TERM and KILL, default 10), ``final_as_owner`` (default True),
``tz`` (zone of the node's clock for ps lstart, default "UTC"), ``python`` (the launcher's interpreter on
the node, default "python3"; any Python 3.8 or later).
"""
from __future__ import annotations

import posixpath
import re

from dataclasses import replace

from ..model import ArraySpec, Job
from .base import (launcher_pid, Backend, FinalState, NativeJob, NativeState, NativeTask, ProcessMatcher, as_user,
                   command_line, epoch_ms_to_utc_iso, first_line, local_to_utc_iso, path_reason, runs_arg, tag)

JOB_MARK = "metasched-job-"

# The session leader. $0 = metasched-job-<id>, $1 = exit file, $2 = stdout file, $3 = stderr file,
# $4... = the script and its arguments. One line, no tabs: ps prints it verbatim, and it is the prefix
# that identifies our jobs.
# The job opens its own output files (as Grid Engine's shepherd and slurmstepd do on the node): creating
# two files is most of the cost of starting a trivial job, and here it runs in the job's process, beside
# the launcher's next spawn, not in front of it. If they cannot be created the wrapper exits without an
# exit file (the job is "gone"); the launcher checks beforehand that they can be.
# The exit status goes straight into the file: no temporary file and mv, one process less per job (about
# 17% more launches per second on 2 cores). A reader that catches the file half written sees "exit" with
# no number and asks again next cycle (parse_final returns None, parse_final_by_tag raises).
WRAP = ('x=$1; exec > "$2" 2> "$3"; shift 3; trap : TERM; "$@"; rc=$?; '
        'echo "$rc" > "$x"')
ARGS_PREFIX = f"sh -c {WRAP} {JOB_MARK}"
# The prefix is matched with a quoted ``case "$a" in "$3"*)`` pattern: dash mishandles backslashes in
# quoted pattern expansions, and ps would rewrite tabs or newlines. Keep it to plain characters.
assert not set(ARGS_PREFIX) & set("\\\t\n"), "WRAP must stay a plain one-line text"
# An array's task (started by SUPERVISOR): the same, with the time it was started ($4, seconds since the epoch)
# after its exit status in the exit file, since a short task may start and end between two cycles.
TASK_WRAP = ('x=$1; s=$4; exec > "$2" 2> "$3"; shift 4; trap : TERM; "$@"; rc=$?; '
             'echo "$rc $s" > "$x"')
TASK_PREFIX = f"sh -c {TASK_WRAP} {JOB_MARK}"
assert not set(TASK_PREFIX) & set("\\\t\n"), "TASK_WRAP must stay a plain one-line text"

# The helper, run as the owner (a short ``python3 -I -S``: no site, no user paths, only built-in modules),
# ONE per round trip whatever the number of jobs: the per-job work of a round trip costs no new process.
# - launch: checks the script and that the output can be written, removes a stale exit file, starts WRAP with
#   ``posix_spawn(setsid=True)``: glibc spawns with CLONE_VFORK, so when the call returns the job is
#   already its own session and group leader (a cancel right after the submit finds the group) and its
#   pid is the native id. No ``setsid`` binary, no shell per job, no polling of /proc: about four times
#   the launches per second of the shell launcher it replaced. SIGPIPE and SIGXFSZ are reset to their
#   defaults for the job (Python ignores SIGPIPE; subprocess restores it the same way).
# - final: how a job ended: its exit file (opened without following a symlink, a regular file owned by
#   the caller), else whether its group leader still runs our wrapper for this job (/proc/<pgid>/cmdline,
#   what ``ps -o args`` prints), else the exit file again (it may have ended meanwhile): prints
#   "exit <status>", "running" or "gone" (by tag: the exit file or "gone").
# argv: operation (launch | final), form ("framed": one answer per record framed like BATCH_SCRIPT's,
# for parse_batch; "plain": one record, its answer on stdout or its refusal on stderr with status 1),
# for launch WRAP, then records: the number of fields that follow and the fields.
#   launch record: our id, pwd, stdout file, stderr file, exit file, script, its arguments.
#   final record: "pgid", exit file, pgid, expected command-line prefix | "tag", exit file |
#   "forget", exit file (removed once the job's final state is recorded; a regular file of the caller's only).
HELPER = r"""
import os, signal, stat, sys
op, form, a = sys.argv[1], sys.argv[2], sys.argv[3:]
os.closerange(3, 1 << 16)
def launch(jid, pwd, out, err, ext, check, script, *args):
    try:
        os.chdir(pwd)
    except OSError as e:
        return 1, "", "metasched: cannot enter pwd %s: %s" % (pwd, e.strerror)
    try:
        st = os.stat(check)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode) or not os.access(check, os.X_OK):
        return 1, "", "metasched: not an executable file: " + check
    if not os.access(pwd, os.W_OK):
        return 1, "", "metasched: cannot write in pwd %s (the job's output and exit status go there)" % pwd
    for f in (out, err):
        try:
            st = os.stat(f)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) or not os.access(f, os.W_OK):
            return 1, "", "metasched: cannot write the job's output file " + f
    try:
        os.unlink(ext)
    except FileNotFoundError:
        pass
    except OSError as e:
        return 1, "", "metasched: cannot remove the old exit file %s: %s" % (ext, e.strerror)
    try:
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", wrap, "metasched-job-" + jid, ext, out, err, script, *args],
                             os.environ, setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                                           (os.POSIX_SPAWN_DUP2, null, 2)])
    except OSError as e:
        return 1, "", "metasched: cannot start %s: %s" % (e.filename or script, e.strerror)
    return 0, "%d\n" % pid, ""
def status(ext):
    try:
        fd = os.open(ext, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return "exit %s\n" % os.read(fd, 64).decode("ascii", "replace").split("\n")[0].strip()
    finally:
        os.close(fd)
def mine(p):
    try:
        st = os.lstat(p)
        return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
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
def leader(ext, pgid, prefix):
    v = status(ext)
    if v:
        return v
    try:
        with open("/proc/%s/cmdline" % pgid, "rb") as f:
            args = f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")
    except OSError:
        args = ""
    return status(ext) or ("running\n" if args.startswith(prefix) else "gone\n")
def tasks(ext, pgid, prefix, pwd, name, ctl, forget):
    head = "." + name + "."
    for t in runs(forget):
        p = os.path.join(pwd, head + str(t) + ".exit")
        if mine(p):
            os.unlink(p)
    c = os.path.join(pwd, "." + name + ".ctl")
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
        with open(tmp, "w") as f:
            f.write(ctl)
        os.rename(tmp, c)
    out = ["leader " + leader(ext, pgid, prefix)]
    for n in os.listdir(pwd):
        t = n[len(head):-5]
        if n.startswith(head) and n.endswith(".exit") and t.isdigit():
            v = status(os.path.join(pwd, n))
            if v:
                out.append(t + " " + v[5:])
    return 0, "".join(out), ""
def final(kind, ext, pgid=None, prefix=None, *more):
    if kind == "tasks":
        return tasks(ext, pgid, prefix, *more)
    if kind == "forget_array":
        head = "." + pgid + "."
        for n in os.listdir(ext):
            t = n[len(head):-5]
            if n in (head + "exit", head + "ctl") or (n.startswith(head) and n.endswith(".exit") and t.isdigit()):
                if mine(os.path.join(ext, n)):
                    os.unlink(os.path.join(ext, n))
        return 0, "forgotten\n", ""
    if kind == "forget":
        try:
            st = os.lstat(ext)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(ext)
        except OSError:
            pass
        return 0, "forgotten\n", ""
    v = status(ext)
    if v or kind == "tag":
        return 0, v or "gone\n", ""
    try:
        with open("/proc/%s/cmdline" % pgid, "rb") as f:
            args = f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")
    except OSError:
        args = ""
    v = status(ext)
    return 0, v or ("running\n" if args.startswith(prefix) else "gone\n"), ""
if op == "launch":
    wrap, a, act = a[0], a[1:], launch
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
"""

# An array's supervisor (issue 16): the local scheduler has no arrays of its own, so the array is one launch (a job
# like any other, under WRAP: exactly once, adopted by its tag) whose program starts the tasks itself, in index
# order, at most LIMIT at once: each under WRAP with the marker metasched-job-<id>-<token>.<task>, in its own
# process group, with $METASCHED_ARRAY_TASK_ID, its own output files (<tag>.o<id>.<task>, .e) and exit file
# (.<tag>.<task>.exit). The poller steers it with the control file .<tag>.ctl ("hold RUNS", "skip RUNS": tasks not
# to start yet, tasks never to start), rewritten whole; a task skipped gets "skipped" as its exit status. HELD:
# wait for the control file before starting anything (some tasks were held or cancelled before the dispatch).
# TERM (a cancel of the array): start nothing more, mark the tasks not started skipped, let the running ones end
# (the cancel signals their groups too). Runs as the owner under python3 -I -S, standard library only.
# argv: marker, pwd, tag, our id, first, last, step, limit (0: none), held (0/1), TASK_WRAP, script, arguments.
SUPERVISOR = r"""
import os, signal, sys, time
mark, pwd, name, jid, first, last, step, limit, held, wrap, script = sys.argv[1:12]
args = sys.argv[12:]
todo = list(range(int(first), int(last) + 1, int(step)))
limit = int(limit) or len(todo)
ctl = os.path.join(pwd, "." + name + ".ctl")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
null = os.open(os.devnull, os.O_RDWR)
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
    if seen[0] != (st.st_mtime_ns, st.st_size):
        seen[0] = (st.st_mtime_ns, st.st_size)
        h, k = set(), set()
        with open(ctl) as f:
            for line in f:
                word, _, rest = line.strip().partition(" ")
                (h if word == "hold" else k if word == "skip" else set()).update(runs(rest))
        hold.clear(); hold.update(h); skip.clear(); skip.update(k)
    return True
def done(t, text):
    p = os.path.join(pwd, ".%s.%d.exit" % (name, t))
    if not os.path.lexists(p):
        with open(p, "w") as f:
            f.write(text + "\n")
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
while held == "1" and not control() and not stop:
    time.sleep(0.2)
env = dict(os.environ)
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
        env["METASCHED_ARRAY_TASK_ID"] = str(t)
        base = os.path.join(pwd, name)
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", wrap, "metasched-job-%s.%d" % (mark, t),
                                         os.path.join(pwd, ".%s.%d.exit" % (name, t)), "%s.o%s.%d" % (base, jid, t),
                                         "%s.e%s.%d" % (base, jid, t), "%d" % time.time(), script] + args, env,
                             setpgroup=0,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM),
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                                           (os.POSIX_SPAWN_DUP2, null, 2)])
        running[pid] = t
    time.sleep(0.05 if running or todo else 0)
for t in todo:
    done(t, "skipped")
while running:
    reap()
    time.sleep(0.05)
"""

# $1 = session id (the array's leader), $2 = grace seconds, $3 = the leader's command-line prefix: TERM then,
# after the grace, KILL to every process of the array's session (its tasks are process groups of their own).
CANCEL_ARRAY = (
    'p=$1; g=$2; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*) ;; *) echo "not running"; exit 0;; esac; '
    'kill -s TERM $(ps -o pid= -s "$p") 2>/dev/null; '
    '( sleep "$g"; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*) kill -s KILL $(ps -o pid= -s "$p");; esac ) > /dev/null 2>&1 < /dev/null & '
    'echo "terminating"'
)

# $1 = pgid, $2 = grace seconds, $3 = expected command-line prefix of the leader.
CANCEL = (
    'p=$1; g=$2; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*) ;; *) echo "not running"; exit 0;; esac; '
    'kill -s TERM -- "-$p" 2>/dev/null || exit 0; '
    '( sleep "$g"; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*) kill -s KILL -- "-$p";; esac ) > /dev/null 2>&1 < /dev/null & '
    'echo "terminating"'
)

_PS_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+\s+\S+\s+\d+\s+\d\d:\d\d:\d\d\s+\d{4})\s(.*)$")


def marker(job: Job) -> str:
    """What follows JOB_MARK in the wrapper's $0: our id and the job's token (<id>-<token>), or the id alone
    for a job created before tokens existed."""
    return f"{job.id}-{job.token}" if job.token else str(job.id)


_MARK_RE = re.compile(r"^(\d+)(?:-([a-z]{6}))? ")
_TASK_MARK_RE = re.compile(r"^(\d+)(?:-([a-z]{6}))?\.(\d+) ")


def exit_file(job: Job) -> str:
    return posixpath.join(job.pwd, f".{tag(job)}.exit")


def output_files(job: Job) -> tuple[str, str]:
    base = posixpath.join(job.pwd, tag(job))
    return f"{base}.o{job.id}", f"{base}.e{job.id}"


class LocalBackend(Backend):
    type = "local"
    OPTIONS = ('grace', 'final_as_owner', 'tz', 'python', 'recovery_grace')
    starts_on_submit = True     # the launcher starts the job at once: RUNNING, not QUEUED

    def _launch_fields(self, job: Job) -> list[str]:
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        out, err = output_files(job)
        fields = [marker(job), job.pwd, out, err, exit_file(job), job.path, *self._program(job)]
        return [str(len(fields)), *fields]

    def _program(self, job: Job) -> list[str]:
        """What the job's leader runs: the script, or for an array its supervisor (SUPERVISOR)."""
        if not job.array_spec:
            return [job.path, *job.options]
        spec = ArraySpec.parse(job.array_spec, internal=True)
        return ["/bin/sh", "-c", 'exec "$0" "$@"', str(self.options.get("python", "python3")), "-I", "-S", "-c",
                SUPERVISOR, marker(job), job.pwd, tag(job), str(job.id), str(spec.first), str(spec.last),
                str(spec.step), str(spec.limit or 0), "1" if spec.held else "0", TASK_WRAP, job.path, *job.options]

    def _helper(self, op: str, form: str, fields: list[str], run_as: str | None) -> list[str]:
        return as_user([str(self.options.get("python", "python3")), "-I", "-S", "-c", HELPER, op, form, *fields],
                       run_as)

    def _framed(self, op: str, head: list[str], records: list, run_as: str | None) -> list[str]:
        """One helper for several records (each its field count and fields), answers framed for parse_batch."""
        return self._helper(op, "framed", [*head, *(f for fields in records for f in fields)], run_as)

    def submit_argv(self, job: Job, run_as: str | None) -> list[str]:
        return self._helper("launch", "plain", [WRAP, *self._launch_fields(job)], run_as)

    # In a batch, one helper starts every job of the round trip.
    def batch_line(self, job: Job) -> list[str]:
        return self._launch_fields(job)

    def batch_submit_argv(self, lines: list, run_as: str | None) -> list[str]:
        return self._framed("launch", [WRAP], lines, run_as)

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
        for line in stdout.splitlines():
            m = _PS_LINE.match(line)
            if not m:
                continue
            pid, pgid, sid, user, lstart, args = m.groups()
            if pid != pgid:
                continue
            start = local_to_utc_iso(lstart, "%a %b %d %H:%M:%S %Y", tz)
            task = _TASK_MARK_RE.match(args[len(TASK_PREFIX):]) if args.startswith(TASK_PREFIX) else None
            if not task and not args.startswith(ARGS_PREFIX):
                continue
            rest = args[len(ARGS_PREFIX):]
            if task:      # a task of an array: its own group, in the session of the array's leader
                tasks.setdefault(sid, []).append(NativeTask(int(task.group(3)), NativeState.RUNNING, native_id=pid,
                                                            start_time=start))
                if sid not in jobs:          # its leader may have died: the array is still running
                    jobs[sid] = NativeJob(native_id=sid, our_id=int(task.group(1)), our_token=task.group(2),
                                          owner=user, name=f"{JOB_MARK}{task.group(1)}", state=NativeState.RUNNING,
                                          queue="local", start_time=start)
                continue
            our = _MARK_RE.match(rest)
            if not our:
                continue
            jobs[pid] = NativeJob(native_id=pid, our_id=int(our.group(1)), our_token=our.group(2), owner=user,
                                  name=f"{JOB_MARK}{our.group(0).strip()}", state=NativeState.RUNNING, queue="local",
                                  start_time=start)
        return [replace(j, tasks=tuple(tasks[n])) if n in tasks else j for n, j in jobs.items()]

    def _asker(self, job: Job) -> str | None:
        return job.owner if self.options.get("final_as_owner", True) else None

    def _final_fields(self, job: Job) -> list[str]:
        if job.scheduler_job_id is None:
            return ["2", "tag", exit_file(job)]
        return ["4", "pgid", exit_file(job), _pgid(job), f"{ARGS_PREFIX}{marker(job)} "]

    def final_argv(self, job: Job) -> list[str]:
        return self._helper("final", "plain", self._final_fields(job), self._asker(job))

    def final_entry(self, job: Job):
        return self._asker(job), self._final_fields(job)

    def final_batch_argv(self, entries: list, run_as: str | None) -> list[str]:
        return self._framed("final", [], entries, run_as)

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
            if code > 128:
                return FinalState("ERROR", code, f"killed (signal {code - 128})")
            return FinalState("ERROR", code, f"exit code {code}")
        if line == "gone":
            if job.cancel_requested:
                return FinalState("CANCELLED", None, "cancelled")
            return FinalState("ERROR", None, "the job ended without recording an exit status (killed, its "
                                             "output files could not be created, or the node restarted)")
        return None   # sudo or ps failed: ask again next cycle

    def final_by_tag_argv(self, job: Job) -> list[str]:
        """An interrupted dispatch: did the job run (its exit file exists)? It is not running (not in ps)."""
        return self.final_argv(job)

    def parse_final_by_tag(self, job: Job, rc: int, stdout: str, stderr: str):
        line = first_line(stdout)
        if line == "gone":
            return None                      # it never started: the engine submits it again
        fs = self.parse_final(job, rc, stdout, stderr)
        if fs is None or not line.startswith("exit "):
            # an exit file being written, or sudo/sh failed: never take that for "not found"
            raise RuntimeError(f"cannot tell whether job {job.id} ran: {line or first_line(stderr) or rc!r}")
        return None, fs

    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        grace = str(int(self.options.get("grace", 10)))
        script = CANCEL_ARRAY if job.array_spec else CANCEL
        return as_user(["sh", "-c", script, "sh", _pgid(job), grace, f"{ARGS_PREFIX}{marker(job)} "], run_as)

    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher(trees_by_args_regex=f"^({re.escape(ARGS_PREFIX)}|{re.escape(TASK_PREFIX)})"
                                                  r"\d+(-[a-z]{6})?(\.\d+)? ",
                              include_process_group=True)

    # -- arrays: the supervisor (SUPERVISOR) starts the tasks; one question per array and cycle ----------
    supports_arrays = True

    def array_problem(self, pwd: str) -> tuple[str, str] | None:
        return None

    def task_final_entries(self, job: Job, tasks: list[int], control: dict | None = None) \
            -> list[tuple[list[int], tuple]]:
        """ONE helper call per array: rewrite the control file (``control``: hold and skip sets; tasks whose end
        is recorded in ``forget``: their exit files are removed), then report the leader and every task's exit
        file. Covers every task asked: one not reported is still waiting (or, once the leader is gone, gone)."""
        control = control or {}
        text = "".join(f"{word} {runs_arg(control[word])}\n" for word in ("hold", "skip") if control.get(word))
        # no native id: the array was adopted by its exit file (it had ended): nothing to look for in /proc
        leader = _pgid(job) if job.scheduler_job_id is not None else "0"
        fields = ["tasks", exit_file(job), leader, f"{ARGS_PREFIX}{marker(job)} ", job.pwd, tag(job), text,
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
            code, _, started = what.strip().partition(" ")
            if code == "skipped":
                ends[int(t)] = FinalState("CANCELLED", None, "cancelled before it started")
                continue
            fs = self.parse_final(job, 0, f"exit {code}", "")
            if fs is not None:
                ends[int(t)] = replace(fs, started_at=epoch_ms_to_utc_iso(started + "000") if started.isdigit()
                                       else None)
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
        lines = [command_line(["sh", "-c", CANCEL, "sh", str(pid), grace, f"{TASK_PREFIX}{marker(job)}.{t} "])
                 for t, pid in sorted(tasks.items()) if pid and str(pid).isdigit() and int(pid) > 1]
        return as_user(["sh", "-c", "; ".join(lines)], run_as) if lines else None

    def forget_entry(self, job: Job):
        if job.array_spec:          # an array adopted by its exit file has no native id, but has files
            return self._asker(job), ["3", "forget_array", job.pwd, tag(job)]
        if job.scheduler_job_id is None:
            return None
        return self._asker(job), ["2", "forget", exit_file(job)]


def _pgid(job: Job) -> str:
    nid = job.scheduler_job_id or ""
    if not nid.isdigit() or int(nid) <= 1:
        raise ValueError(f"job {job.id}: {nid!r} is not a process group id")
    return nid
