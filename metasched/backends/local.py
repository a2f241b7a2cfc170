"""Local backend: runs the job script on the scheduler's node, detached, as its owner.

Design (why):
- The launcher (``sh -c LAUNCH``, run as the owner) changes to pwd, checks that the script is an
  executable file (else the submission is refused at once), and starts the job under ``setsid``: the
  job becomes a session and process-group leader, so native id = pid = pgid, printed by the launcher.
  The job's stdout/stderr go to ``<pwd>/<tag>.o<our id>`` / ``.e<our id>``.
- The session leader is a small constant ``sh`` wrapper (WRAP) that runs the script (exec'd directly:
  the kernel honours its shebang) and then writes its exit status
  to ``<pwd>/.<tag>.exit``. It traps TERM (with a no-op handler, which children do not inherit) so
  that a cancel lets it record the job's status. The exit file survives a restart of the service.
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
``tz`` (zone of the node's clock for ps lstart, default "UTC"), ``setsid`` (path, default "setsid").
"""
from __future__ import annotations

import posixpath
import re

from ..model import Job
from .base import (launcher_pid, Backend, FinalState, NativeJob, NativeState, ProcessMatcher, as_user, command_line, first_line, local_to_utc_iso, path_reason, tag)

JOB_MARK = "metasched-job-"

# The session leader. $0 = metasched-job-<id>, $1 = exit file, $2... = the script and its arguments.
# One line, no tabs: ps prints it verbatim, and it is the prefix that identifies our jobs.
# The exit status goes straight into the file: no temporary file and mv, one process less per job (about
# 17% more launches per second on 2 cores). A reader that catches the file half written sees "exit" with
# no number and asks again next cycle (parse_final returns None, parse_final_by_tag raises).
WRAP = ('x=$1; shift; trap : TERM; "$@"; rc=$?; '
        'echo "$rc" > "$x"')
ARGS_PREFIX = f"sh -c {WRAP} {JOB_MARK}"
# The prefix is matched with a quoted ``case "$a" in "$3"*)`` pattern: dash mishandles backslashes in
# quoted pattern expansions, and ps would rewrite tabs or newlines. Keep it to plain characters.
assert not set(ARGS_PREFIX) & set("\\\t\n"), "WRAP must stay a plain one-line text"

# $1 = WRAP, $2 = setsid, $3 = pwd, $4 = stdout file, $5 = stderr file, $6 = exit file, $7 = our id,
# $8 = script, $9... = its arguments.
LAUNCH = (
    'w=$1; s=$2; cd -- "$3" || exit 1; o=$4; e=$5; x=$6; n=$7; shift 7; '
    'if [ ! -f "$1" ] || [ ! -x "$1" ]; then '
    'printf "%s\\n" "metasched: not an executable file: $1" >&2; exit 1; fi; '
    'if [ -e "$x" ]; then rm -f "$x"; fi; '
    '"$s" sh -c "$w" "metasched-job-$n" "$x" "$@" > "$o" 2> "$e" < /dev/null & '
    # Report the pid only once setsid has made it a group leader (a cancel right after the submit
    # must find the group); give up waiting after about 2 s (the job is running anyway).
    # (read from /proc/PID/stat without forking: the launcher runs once per job, often hundreds per batch)
    # (read from /proc/PID/stat without forking, spinning briefly before sleeping: the launcher runs once
    # per job, often hundreds per batch, and setsid takes well under a millisecond)
    'p=$!; i=0; while [ "$i" -lt 300 ]; do { read -r l < "/proc/$p/stat"; } 2>/dev/null || break; '
    'l=${l##*) }; set -- $l; [ "$3" = "$p" ] && break; i=$((i+1)); [ "$i" -gt 200 ] && sleep 0.02; done; '
    'echo "$p"'
)

# $1 = exit file, $2 = pgid, $3 = expected command-line prefix of the leader.
FINAL = (
    # the exit file first (no fork: read is a builtin); ps only for a job that has not recorded its end
    'if [ -f "$1" ] && [ ! -h "$1" ] && [ -O "$1" ]; then read -r v < "$1"; printf "exit %s\\n" "$v"; exit 0; fi; '
    'a=$(ps -ww -o args= -p "$2" 2>/dev/null); '
    'if [ -f "$1" ] && [ ! -h "$1" ] && [ -O "$1" ]; then read -r v < "$1"; printf "exit %s\\n" "$v"; exit 0; fi; '
    'case "$a" in "$3"*) echo running;; *) echo gone;; esac'
)

# $1 = exit file.
FINAL_BY_TAG = ('if [ -f "$1" ] && [ ! -h "$1" ] && [ -O "$1" ]; then read -r v < "$1"; printf "exit %s\\n" "$v"; '
                'else echo gone; fi')

# $1 = pgid, $2 = grace seconds, $3 = expected command-line prefix of the leader.
CANCEL = (
    'p=$1; g=$2; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*) ;; *) echo "not running"; exit 0;; esac; '
    'kill -s TERM -- "-$p" 2>/dev/null || exit 0; '
    '( sleep "$g"; a=$(ps -ww -o args= -p "$p" 2>/dev/null); '
    'case "$a" in "$3"*) kill -s KILL -- "-$p";; esac ) > /dev/null 2>&1 < /dev/null & '
    'echo "terminating"'
)

_PS_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+\s+\S+\s+\d+\s+\d\d:\d\d:\d\d\s+\d{4})\s(.*)$")


def exit_file(job: Job) -> str:
    return posixpath.join(job.pwd, f".{tag(job)}.exit")


def output_files(job: Job) -> tuple[str, str]:
    base = posixpath.join(job.pwd, tag(job))
    return f"{base}.o{job.id}", f"{base}.e{job.id}"


class LocalBackend(Backend):
    type = "local"
    OPTIONS = ('grace', 'final_as_owner', 'tz', 'setsid', 'recovery_grace')
    starts_on_submit = True     # the launcher starts the job at once: RUNNING, not QUEUED



    def _launch_args(self, job: Job) -> list[str]:
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        out, err = output_files(job)
        return [WRAP, str(self.options.get("setsid", "setsid")), job.pwd, out, err, exit_file(job), str(job.id),
                job.path, *job.options]

    def submit_argv(self, job: Job, run_as: str | None) -> list[str]:
        return as_user(["sh", "-c", LAUNCH, "sh", *self._launch_args(job)], run_as)

    # In a batch the launcher is a function of the batch's own shell: one fork per job, no new sh.
    batch_preamble = "ms_launch() { " + LAUNCH + "; }"

    def batch_line(self, job: Job) -> str:
        return command_line(["ms_launch", *self._launch_args(job)])

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
            if pid != pgid or not args.startswith(ARGS_PREFIX):
                continue
            rest = args[len(ARGS_PREFIX):]
            our = re.match(r"^(\d+) ", rest)
            if not our:
                continue
            our_id = int(our.group(1))
            jobs.append(NativeJob(native_id=pid, our_id=our_id, owner=user, name=f"{JOB_MARK}{our_id}",
                                  state=NativeState.RUNNING, queue="local",
                                  start_time=local_to_utc_iso(lstart, "%a %b %d %H:%M:%S %Y", tz)))
        return jobs

    def final_argv(self, job: Job) -> list[str]:
        argv = ["sh", "-c", FINAL, "sh", exit_file(job), _pgid(job), f"{ARGS_PREFIX}{job.id} "]
        return as_user(argv, job.owner) if self.options.get("final_as_owner", True) else argv

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
            return FinalState("ERROR", None, "the job ended without recording an exit status "
                                             "(killed, or the node restarted)")
        return None   # sudo or ps failed: ask again next cycle

    def final_by_tag_argv(self, job: Job) -> list[str]:
        """An interrupted dispatch: did the job run (its exit file exists)? It is not running (not in ps)."""
        argv = ["sh", "-c", FINAL_BY_TAG, "sh", exit_file(job)]
        return as_user(argv, job.owner) if self.options.get("final_as_owner", True) else argv

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
        return as_user(["sh", "-c", CANCEL, "sh", _pgid(job), grace, f"{ARGS_PREFIX}{job.id} "], run_as)

    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher(trees_by_args_regex="^" + re.escape(ARGS_PREFIX) + r"\d+ ",
                              include_process_group=True)


def _pgid(job: Job) -> str:
    nid = job.scheduler_job_id or ""
    if not nid.isdigit() or int(nid) <= 1:
        raise ValueError(f"job {job.id}: {nid!r} is not a process group id")
    return nid
