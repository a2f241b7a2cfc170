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

from ..model import Accounting, Job
from .base import (launcher_pid, Backend, FinalState, NativeJob, NativeState, ProcessMatcher, as_user,
                   epoch_to_utc_iso, first_line, local_to_utc_iso, path_reason, signal_of, tag)

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
#
# What the job used (issue 15) is the wrapper's rusage, in one place: RUSAGE. Once the script ended, the
# wrapper execs it (a process replaced by exec keeps its children's resource usage, getrusage(2)): it
# writes the exit status and, on a second line, ``rusage <user s> <system s> <max rss KiB> <wall s> <end,
# Unix time> <node name>`` in one write. The children's CPU time and peak memory are the kernel's own
# (RUSAGE_CHILDREN: the script and every descendant it waited for); the wall time is measured on the
# node's boot clock (the wrapper's start in /proc/self/stat to /proc/uptime), so a clock step does not
# change it. No python3 on the node's PATH: the exit status alone, as before (the job's accounting is
# then what the node agents measured). While the writer runs the job's leader is the writer, which the
# final-state question also recognises (WRITER_PREFIX), so a job is never taken for "gone" in between.
RUSAGE = ('import os,resource as r,sys,time;u=r.getrusage(r.RUSAGE_CHILDREN);'
          's=open("/proc/self/stat").read().rsplit(")",1)[1].split();'
          'w=float(open("/proc/uptime").read().split()[0])-int(s[19])/os.sysconf("SC_CLK_TCK");'
          'f=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_TRUNC|os.O_NOFOLLOW,438);'
          'os.write(f,("%s%crusage %.6f %.6f %d %.3f %.3f %s%c"%(sys.argv[2],10,u.ru_utime,u.ru_stime,'
          'u.ru_maxrss,w,time.time(),os.uname().nodename,10)).encode())')
WRITER = f"python3 -I -S -c {RUSAGE}"
PREVIOUS_WRAP = ('x=$1; exec > "$2" 2> "$3"; shift 3; trap : TERM; "$@"; rc=$?; '
                 'echo "$rc" > "$x"')
WRAP = ('x=$1; exec > "$2" 2> "$3"; shift 3; trap : TERM; "$@"; rc=$?; '
        f"command -v python3 > /dev/null 2>&1 && exec python3 -I -S -c '{RUSAGE}' \"$x\" \"$rc\"; "
        'echo "$rc" > "$x"')
ARGS_PREFIX = f"sh -c {WRAP} {JOB_MARK}"
# Jobs started by the release before the rusage capture (PREVIOUS_WRAP) are still recognised: a job running
# across an upgrade still reaches its truthful end (its exit status, without rusage).
PREFIXES = (ARGS_PREFIX, f"sh -c {PREVIOUS_WRAP} {JOB_MARK}")
# The prefix is matched with a quoted ``case "$a" in "$3"*)`` pattern: dash mishandles backslashes in
# quoted pattern expansions, and ps would rewrite tabs or newlines. Keep it to plain characters.
assert not set("".join(PREFIXES) + WRITER) & set("\\\t\n"), "WRAP must stay a plain one-line text"
assert "'" not in RUSAGE, "RUSAGE is single-quoted in WRAP"

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
#   "exit <status>" (and the exit file's rusage line when it has one), "running" or "gone" (by tag: the
#   exit file or "gone").
# argv: operation (launch | final), form ("framed": one answer per record framed like BATCH_SCRIPT's,
# for parse_batch; "plain": one record, its answer on stdout or its refusal on stderr with status 1),
# for launch WRAP, then records: the number of fields that follow and the fields.
#   launch record: our id, pwd, stdout file, stderr file, exit file, script, its arguments.
#   final record: "pgid", exit file, pgid, the leader's expected command-line prefixes (any of them: WRAP's,
#   PREVIOUS_WRAP's, the rusage writer's) | "tag", exit file |
#   "forget", exit file (removed once the job's final state is recorded; a regular file of the caller's only).
HELPER = r"""
import os, signal, stat, sys
op, form, a = sys.argv[1], sys.argv[2], sys.argv[3:]
os.closerange(3, 1 << 16)
def launch(jid, pwd, out, err, ext, script, *args):
    try:
        os.chdir(pwd)
    except OSError as e:
        return 1, "", "metasched: cannot enter pwd %s: %s" % (pwd, e.strerror)
    try:
        st = os.stat(script)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode) or not os.access(script, os.X_OK):
        return 1, "", "metasched: not an executable file: " + script
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
        t = os.read(fd, 512).decode("ascii", "replace").split("\n")
        return "exit %s\n" % t[0].strip() + ("%s\n" % t[1] if len(t) > 2 and t[1].startswith("rusage ") else "")
    finally:
        os.close(fd)
def final(kind, ext, pgid=None, *prefixes):
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
    return 0, v or ("running\n" if args.startswith(prefixes) else "gone\n"), ""
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

# $1 = pgid, $2 = grace seconds, $3 and $4 = the expected command-line prefixes of the leader (WRAP's and
# PREVIOUS_WRAP's, for this job).
CANCEL = (
    'p=$1; g=$2; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*|"$4"*) ;; *) echo "not running"; exit 0;; esac; '
    'kill -s TERM -- "-$p" 2>/dev/null || exit 0; '
    '( sleep "$g"; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*|"$4"*) kill -s KILL -- "-$p";; esac ) > /dev/null 2>&1 < /dev/null & '
    'echo "terminating"'
)

_PS_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+\s+\S+\s+\d+\s+\d\d:\d\d:\d\d\s+\d{4})\s(.*)$")


def marker(job: Job) -> str:
    """What follows JOB_MARK in the wrapper's $0: our id and the job's token (<id>-<token>), or the id alone
    for a job created before tokens existed."""
    return f"{job.id}-{job.token}" if job.token else str(job.id)


_MARK_RE = re.compile(r"^(\d+)(?:-([a-z]{6}))? ")


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
        fields = [marker(job), job.pwd, out, err, exit_file(job), job.path, *job.options]
        return [str(len(fields)), *fields]

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
        return ["ps", "-ww", "-e", "-o", "pid=,pgid=,user:64=,lstart=,args="]

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        if rc != 0 or not stdout.strip():
            raise RuntimeError(f"ps failed ({rc}): {first_line(stderr, stdout)}")
        tz = self.options.get("tz", "UTC")
        jobs = []
        for line in stdout.splitlines():
            m = _PS_LINE.match(line)
            if not m:
                continue
            pid, pgid, user, lstart, args = m.groups()
            prefix = next((p for p in PREFIXES if args.startswith(p)), None)
            if pid != pgid or prefix is None:
                continue
            our = _MARK_RE.match(args[len(prefix):])
            if not our:
                continue
            our_id = int(our.group(1))
            jobs.append(NativeJob(native_id=pid, our_id=our_id, our_token=our.group(2), owner=user,
                                  name=f"{JOB_MARK}{our.group(0).strip()}",
                                  state=NativeState.RUNNING, queue="local",
                                  start_time=local_to_utc_iso(lstart, "%a %b %d %H:%M:%S %Y", tz)))
        return jobs

    def _asker(self, job: Job) -> str | None:
        return job.owner if self.options.get("final_as_owner", True) else None

    def _final_fields(self, job: Job) -> list[str]:
        if job.scheduler_job_id is None:
            return ["2", "tag", exit_file(job)]
        ours = [f"{p}{marker(job)} " for p in PREFIXES] + [f"{WRITER} {exit_file(job)} "]
        return [str(3 + len(ours)), "pgid", exit_file(job), _pgid(job), *ours]

    def final_argv(self, job: Job) -> list[str]:
        return self._helper("final", "plain", self._final_fields(job), self._asker(job))

    def final_entry(self, job: Job):
        return self._asker(job), self._final_fields(job)

    def final_batch_argv(self, entries: list, run_as: str | None) -> list[str]:
        return self._framed("final", [], entries, run_as)

    def forget_entry(self, job: Job):
        if job.scheduler_job_id is None:
            return None                     # never started: no exit file
        return self._asker(job), ["2", "forget", exit_file(job)]

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

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """The wrapper's record (RUSAGE): CPU time and peak memory from rusage, the wall time, its end and
        the node name from the wrapper (the start is the end minus the wall time). A signal only by the
        shell's convention (an exit status 128 + n). Nothing when the job left no record ("gone")."""
        lines = (stdout or "").splitlines()
        m = re.match(r"^exit (\d+)$", lines[0].strip()) if lines else None
        if not m:
            return None
        signal = signal_of(int(m.group(1)))
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
        fs = self.parse_final(job, rc, stdout, stderr)
        if fs is None or not line.startswith("exit "):
            # an exit file being written, or sudo/sh failed: never take that for "not found"
            raise RuntimeError(f"cannot tell whether job {job.id} ran: {line or first_line(stderr) or rc!r}")
        return None, fs

    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        grace = str(int(self.options.get("grace", 10)))
        return as_user(["sh", "-c", CANCEL, "sh", _pgid(job), grace, *(f"{p}{marker(job)} " for p in PREFIXES)],
                       run_as)

    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher(trees_by_args_regex="^(?:" + "|".join(map(re.escape, PREFIXES)) + r")\d+(-[a-z]{6})? ",
                              include_process_group=True, job_ids="pgid")


def _pgid(job: Job) -> str:
    nid = job.scheduler_job_id or ""
    if not nid.isdigit() or int(nid) <= 1:
        raise ValueError(f"job {job.id}: {nid!r} is not a process group id")
    return nid
