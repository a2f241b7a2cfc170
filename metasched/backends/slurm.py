r"""Slurm backend (22.05): sbatch / squeue -o / scontrol + jobcomp file / scancel argv and parsers.

Options (all optional):
  bin_dir       directory of the client binaries; default: names on PATH.
  env           {"SLURM_CONF": "/etc/slurm/slurm.conf"}: rendered as an ``env K=V`` prefix after sudo.
  sbatch_args   list of extra sbatch arguments from the site config (e.g. ["-p", "debug"]).
  jobcomp_file  path of the jobcomp/filetxt log (slurm.conf JobCompLoc): the fallback for how a job
                ended once slurmctld forgot it (MinJobAge), and where an interrupted dispatch that
                slurmctld no longer lists is looked up by our tag (without it such a job is submitted
                again). Must be readable by the service user.
  tz            IANA zone of the clock squeue prints start times in (default "UTC").
  native_forbid native flags this site refuses (e.g. ["--qos", "--reservation"]; ["*"]: every native flag).
  check_paths   True (default): the submit first checks, as the owner on this master node, that pwd can be
                entered, the output directories written and the script read, and refuses with one line saying
                which (base.CHECK_FUNCTION; Slurm itself would fail such a job later with JobLaunchFailure);
                False where those files live only on the compute nodes.

What a job asks for (JobSpec): resources become --nodes, --ntasks, --cpus-per-task, --mem (per node),
--time, --gres=gpu:N, --partition, --account; native flags follow ours, each an argv element of its own,
read here as sbatch's getopt_long will read them (flags metasched sets are refused: -J, -D, -o, -e,
--parsable, --export, -H, --wait, --wrap, --clusters, ...). env: the variables are set in sbatch's own
environment (``env NAME=value ... sbatch``: values never meet a shell) and passed by name, --export=NAME,...;
export "all" is --export=ALL (sudo's SUDO_* variables removed first), "none" or names export only those
(plus SLURM_*, as sbatch does). stdout/stderr: absolute, escaped like pwd below; join: -o without -e.

Output files: ``<pwd>/<tag>.o<native id>`` and ``.e<native id>`` (``-o <tag>.o%j``, relative, which
slurmstepd resolves against the working directory ``-D pwd``). Measured on Slurm 22.05: slurmstepd joins
the working directory and the relative name *before* expanding the pattern, so a '%' in pwd would be
expanded and a '\\' anywhere switches the whole path to "escaped" mode (no %j expansion, backslashes
removed: the job then fails with "Could not open stdout file"). For such a pwd the paths are absolute and
escaped (``\\`` -> ``\``, ``\%`` -> ``%``), and without %j: ``<pwd>/<tag>.out`` and ``.err``.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import replace

from ..model import Accounting, ArraySpec, Job
from .base import (CheckedClientSubmit, RUN_SCRIPT, TASK_SLOT, as_user, Backend, check_args, client_argv,
                   command_line, control_character_reason, custom_outputs, duration_seconds, export_names,
                   FinalState, first_line, hms, iso_seconds_between, local_to_utc_iso, memory_text, native_problem,
                   NativeJob, NativeProblem, NativeState, NativeTask, OutputFiles, parse_getopt_native,
                   parse_task_runs, path_reason, PendingRun, ProcessMatcher, runs_arg, spooled_submit, SubmitRefused,
                   tag, tag_fields, task_wrapper)

# squeue fields: id | user | state | partition | start time | reason | name (LAST: it may contain '|').
SQUEUE_FORMAT = "%i|%u|%T|%P|%S|%r|%j"
_FIELDS = 7
_ID = re.compile(r"^\d+(?:_(?:\d+|\[[^\]]*\]))?(?:\+\d+)?$")   # 12, 12_3, 12_[1-5], 12+1 (het job)
_NUMERIC_ID = re.compile(r"^\d+$")

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                  "SPECIAL_EXIT"}
# SUSPENDED/STOPPED keep their allocation and will resume: the job is not over, so RUNNING (as Grid
# Engine's suspended 's' states). COMPLETING: processes may still be alive on the nodes.
RUNNING_STATES = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}

_ERROR_REASONS = {"TIMEOUT": "timeout: Slurm stopped it at its time limit (TIMEOUT)",
                  "OUT_OF_MEMORY": "out of memory (OUT_OF_MEMORY)", "NODE_FAIL": "node failure",
                  "BOOT_FAIL": "node boot failure", "DEADLINE": "deadline reached", "PREEMPTED": "preempted",
                  "REVOKED": "revoked"}

# final_argv: scontrol while slurmctld remembers the job, else the job's last jobcomp line.
# $1 = job id (digits, checked), $2 = jobcomp file ('' = none), $3... = the scontrol command.
FINAL_SCRIPT = (
    'id=$1; f=$2; shift 2; '
    '"$@" show job "$id" 2>&1 && exit 0; '
    '[ -n "$f" ] || exit 0; '
    'grep -e "^JobId=$id " -e " ArrayJobId=$id ArrayTaskId=" "$f" | tail -n 100000; exit 0'
)

# An interrupted dispatch that slurmctld no longer lists (it ran and was forgotten after MinJobAge, e.g. the
# service was down longer than that): its last jobcomp line by our tag. $1 = jobcomp file, $2 = tag.
# Only the log's last JOBCOMP_TAIL bytes are read (about 100,000 jobs): after a crash every interrupted
# dispatch is one question, and a cluster's log grows without bound. A job that ended further back is
# submitted again, as without a jobcomp log.
JOBCOMP_TAIL = 64 * 1024 * 1024
# No log file yet: no job ever ended, so this one did not either (it would be listed while running).
FINAL_BY_TAG_SCRIPT = ('f=$1; n=$2; c=$3; [ -n "$f" ] && [ -e "$f" ] || exit 0; '
                       '[ -f "$f" ] && [ -r "$f" ] || { echo "cannot read $f" >&2; exit 1; }; '
                       'tail -c "$c" "$f" | grep -F -e " Name=$n JobState=" | tail -n 100000; exit 0')


def validate_name(name: str) -> str | None:
    """Why a job name is unusable with Slurm here, or None.

    Slurm stores any string, but squeue prints one line per job: a newline in a name would make a
    job's line ambiguous. The native name is tag(job) anyway; this keeps the user's name sane.
    """
    return control_character_reason(name)


def _native_state(state: str) -> NativeState:
    word = state.split()[0] if state.split() else ""
    if word in RUNNING_STATES:
        return NativeState.RUNNING
    if word in FINISHED_STATES:
        return NativeState.FINISHED
    return NativeState.PENDING   # PENDING_STATES and anything new: not over


class SlurmBackend(CheckedClientSubmit, Backend):
    type = "slurm"
    inferred_from = r"slurm"
    status_commands = ("sbatch", "squeue", "scontrol", "scancel")
    sudo_commands = ("sbatch", "scancel", "sh")
    OPTIONS = ('bin_dir', 'env', 'sbatch_args', 'jobcomp_file', 'tz', 'recovery_grace', 'native_forbid', 'check_paths')
    scheduler_name = "Slurm"

    validate_name = staticmethod(validate_name)

    # -- what a job asks for ---------------------------------------------------------------------
    RESOURCES = frozenset(("nodes", "tasks", "cores_per_task", "memory", "walltime", "gpus_per_node", "native_queue",
                           "account"))

    def _spec_problem(self, job: Job) -> tuple[str, str] | None:
        spec = job.spec
        if spec.native:
            try:
                flags = parse_getopt_native(spec.native, SBATCH_SHORT, SBATCH_LONG, OWNED_LONG, "sbatch")
            except NativeProblem as exc:
                return f"native[{exc.index}]", str(exc)
            why = native_problem(flags, SBATCH_OWNED, SBATCH_RESOURCE_FLAGS, spec, self.options.get("native_forbid"))
            if why:
                return why.split(":", 1)[0], why
            for f in flags:
                if job.array_spec and f.name in ("-a", "--array"):
                    return (f"native[{f.index}]", f"native[{f.index}]: {f.name}: metasched submits the array itself: "
                                                  f"give it in `array`")
        return None

    def _resource_args(self, job: Job) -> list[str]:
        r = job.spec.resources
        args = []
        if r.nodes is not None:
            args.append(f"--nodes={r.nodes}")
        if r.tasks is not None:
            args.append(f"--ntasks={r.tasks}")
        if r.cores_per_task is not None:
            args.append(f"--cpus-per-task={r.cores_per_task}")
        if r.memory is not None:
            args.append(f"--mem={memory_text(r.memory, 'M')}")      # per node; Slurm counts whole megabytes
        if r.walltime is not None:
            args.append(f"--time={hms(r.walltime)}")
        if r.gpus_per_node:
            args.append(f"--gres=gpu:{r.gpus_per_node}")
        if r.native_queue is not None:
            args.append(f"--partition={r.native_queue}")
        if r.account is not None:
            args.append(f"--account={r.account}")
        return args

    def _env(self, job: Job) -> tuple[list[str], list[str]]:
        """(sbatch run with the job's variables in its environment, the --export argument)."""
        spec = job.spec
        if spec.export is None and not spec.env:
            return self._cmd("sbatch"), []                 # sbatch's default: --export=ALL, as before
        if spec.export == "all" or (spec.export is None and spec.env):
            return client_argv(self.options, "sbatch", job, strip_sudo=True), ["--export=ALL"]
        names = export_names(job)
        return (client_argv(self.options, "sbatch", job),
                [f"--export={','.join(names)}"] if names else ["--export=NONE"])

    def output_files(self, job: Job, task: int | None = None) -> OutputFiles:
        """Where sbatch is told to write (see the module doc): the job's own paths, else <tag>.o<native id> (an
        array's tasks: <tag>.o<array id>.<task>)."""
        stdout, stderr = custom_outputs(job, task)
        nid = job.scheduler_job_id
        if job.array_spec:
            suffix = f".{TASK_SLOT if task is None else task}"
            out, err = f"{tag(job)}.o%j{suffix}", f"{tag(job)}.e%j{suffix}"
        else:
            out, err = output_patterns(job.pwd, tag(job))

        def default(pattern: str) -> str | None:
            if "%j" not in pattern:
                return _unescape(pattern)
            return posixpath.join(job.pwd, pattern.replace("%j", nid)) if nid else None
        return OutputFiles(stdout or default(out), None if job.spec.join else (stderr or default(err)),
                           joined=job.spec.join)

    # -- submit -------------------------------------------------------------------------------
    def _check(self, job: Job) -> list[str]:
        if not self.options.get("check_paths", True):
            return []
        return check_args("read", job, self.output_files(job))

    def _client_argv(self, job: Job) -> list[str]:
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        name = tag(job)
        out, err = output_patterns(job.pwd, name)
        stdout, stderr = custom_outputs(job)
        sbatch, export = self._env(job)
        outputs = ["-o", literal(stdout) if stdout else out]
        if not job.spec.join:
            outputs += ["-e", literal(stderr) if stderr else err]
        argv = sbatch + ["--parsable", "-J", name, "-D", job.pwd, *outputs, *export]
        argv += [str(a) for a in self.options.get("sbatch_args", ())]
        argv += self._resource_args(job) + list(job.spec.native)
        argv += [job.path, *job.options]
        return argv

    def _array_line(self, job: Job) -> str:
        """An array: ``sbatch --array=first-last:step%limit`` (``--hold`` when some tasks must not start yet),
        with what the job asks for (environment, resources, native flags: each task's), its batch script on
        stdin: the script's own leading #SBATCH directives, then a wrapper setting $METASCHED_ARRAY_TASK_ID from
        $SLURM_ARRAY_TASK_ID and running the script (exec'd, or through its #! line). Task outputs: the job's
        own paths with Slurm's %a for ours, else ``<tag>.o<array id>.<task>`` (%A.%a)."""
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        spec = ArraySpec.parse(job.array_spec, internal=True)
        name = tag(job)
        array = spec.range_text + (f"%{spec.limit}" if spec.limit is not None else "")
        stdout, stderr = custom_outputs(job)
        sbatch, export = self._env(job)
        outputs = ["-o", _task_literal(stdout) if stdout else f"{name}.o%A.%a"]
        if not job.spec.join:
            outputs += ["-e", _task_literal(stderr) if stderr else f"{name}.e%A.%a"]
        argv = sbatch + ["--parsable", "-J", name, "-D", job.pwd, *outputs, *export, f"--array={array}"]
        if spec.held:
            argv.append("--hold")
        argv += [str(a) for a in self.options.get("sbatch_args", ())]
        argv += self._resource_args(job) + list(job.spec.native)
        body = task_wrapper("SLURM_ARRAY_TASK_ID", RUN_SCRIPT, job.path, job.options)
        # sbatch reads #SBATCH lines up to the first line that is neither a comment nor blank: copy that block
        return spooled_submit(r"1d;/^#SBATCH/p;/^#/b;/^[[:space:]]*$/b;q", job.path, body, argv)

    def parse_submit(self, job: Job, rc: int, stdout: str, stderr: str) -> str:
        if rc != 0:
            raise SubmitRefused(first_line(stderr, stdout) or f"sbatch exited with status {rc}")
        nid = first_line(stdout).split(";", 1)[0].strip()
        if not _NUMERIC_ID.match(nid):
            raise RuntimeError(f"sbatch succeeded but printed no job id: {first_line(stdout, stderr)!r}")
        return nid

    # -- observe ------------------------------------------------------------------------------
    def status_argv(self) -> list[str]:
        # SLURM_BITSTR_LEN=0: an array's pending tasks in full (18_[5-1000%20]), never cut at 64 characters
        return ["env", "SLURM_BITSTR_LEN=0", *self._cmd("squeue"), "-h", "-a", "-t", "all", "-o", SQUEUE_FORMAT]

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        if rc != 0:
            raise RuntimeError(f"squeue failed ({rc}): {first_line(stderr, stdout)}")
        tz = self.options.get("tz", "UTC")
        seen: dict[str, NativeJob] = {}
        dupes: set[str] = set()
        for line in stdout.splitlines():
            if not line.strip():
                continue
            parts = line.split("|", _FIELDS - 1)
            if len(parts) != _FIELDS or not _ID.match(parts[0]):
                continue   # not a job line (cannot happen with -h unless a name carried a newline)
            nid, user, state, partition, start, reason, name = parts
            nstate = _native_state(state)
            if nid in seen:
                dupes.add(nid)
            seen[nid] = NativeJob(
                native_id=nid, **tag_fields(name), owner=user, name=name, state=nstate, queue=partition,
                start_time=local_to_utc_iso(start, "%Y-%m-%dT%H:%M:%S", tz)
                if nstate is not NativeState.PENDING else None,
                reason=None if reason in ("", "None") else reason,
            )
        # A job id listed twice means some line was forged (a name with a newline): trust neither.
        return _arrays_as_one([j for nid, j in seen.items() if nid not in dupes])

    # -- end state ----------------------------------------------------------------------------
    def final_argv(self, job: Job) -> list[str]:
        return ["sh", "-c", FINAL_SCRIPT, "sh", _native_id(job),
                str(self.options.get("jobcomp_file") or ""), *self._cmd("scontrol")]

    def final_by_tag_argv(self, job: Job) -> list[str]:
        """The jobcomp log by our tag (jobcomp_file): did a job slurmctld no longer lists already run?"""
        return ["sh", "-c", FINAL_BY_TAG_SCRIPT, "sh", str(self.options.get("jobcomp_file") or ""), tag(job),
                str(JOBCOMP_TAIL)]

    def parse_final_by_tag(self, job: Job, rc: int, stdout: str, stderr: str):
        if rc != 0:   # the log exists but cannot be read: never take that for "it never ran"
            raise RuntimeError(f"cannot look job {job.id} up in the jobcomp log: {first_line(stderr, stdout)}")
        lines = stdout.splitlines()
        for line in reversed(lines):
            m = re.match(r"^JobId=(\d+) UserId=([^(\s]+)\(", line)
            # anyone can name a job like ours: only the owner's counts
            if m and m.group(2) == job.owner and f" Name={tag(job)} JobState=" in line:
                arr = re.search(r" ArrayJobId=(\d+) ArrayTaskId=", line)   # an array: all its tasks count
                native = arr.group(1) if arr else m.group(1)
                fs = self.parse_final(replace(job, scheduler_job_id=native), 0, "\n".join(lines) if arr else line, "")
                return (native, fs) if fs is not None else None
        return None     # no jobcomp log configured, or the job never reached Slurm: submitted again

    def parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        nid = job.scheduler_job_id or ""
        tasks = _parse_scontrol(stdout, nid) or _parse_jobcomp(stdout, nid)
        if not tasks:
            return None   # neither slurmctld nor the jobcomp log knows how it ended (yet)
        ends = {task: self._final_from(fields) for task, fields in sorted(tasks.items())}
        if any(fs is None for fs in ends.values()):
            return None   # still pending or running (an array: some task still is)
        worst = next(((task, fs) for task, fs in ends.items() if fs.status != "COMPLETED"), None)
        task, fs = worst or next(iter(ends.items()))
        fields = tasks[task]
        if task is not None and fs.status != "COMPLETED":
            fs = replace(fs, reason=f"array task {task}: {fs.reason}")
        if fs.status == "CANCELLED":
            return fs     # Slurm stamps StartTime on jobs cancelled while pending too: not a start
        start = local_to_utc_iso(fields.get("StartTime"), "%Y-%m-%dT%H:%M:%S", self.options.get("tz", "UTC"))
        return replace(fs, started_at=start)

    def _final_from(self, fields: dict[str, str]) -> FinalState | None:
        state = fields["JobState"].split()[0]
        if state not in FINISHED_STATES:
            return None   # still pending or running
        exit_code, signal = _exit_code(fields.get("ExitCode", ""))
        code = (128 + signal) if signal else exit_code
        if state == "COMPLETED" and exit_code == 0 and not signal:
            return FinalState("COMPLETED", 0, "")
        if state == "CANCELLED":
            return FinalState("CANCELLED", code, "cancelled")
        if state in _ERROR_REASONS:
            return FinalState("ERROR", code, _ERROR_REASONS[state])
        if signal:
            return FinalState("ERROR", code, f"signal {signal}")
        return FinalState("ERROR", code, f"exit code {exit_code}")

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """From ``scontrol show job`` (StartTime, EndTime, RunTime, NodeList, ExitCode=code:signal) or, once
        slurmctld forgot the job, its jobcomp line (the same without RunTime: the wall time is EndTime -
        StartTime). Neither reports CPU time nor memory: without slurmdbd, Slurm 22.05 keeps them nowhere
        (sacct needs it; sstat only while a step runs), so those come from the node agents (source
        "agent", metasched/lifecycle.py). An array job: its tasks' span, summed run times, all their nodes.
        A job that never got a node (cancelled while pending) has an end but no start."""
        nid = job.scheduler_job_id or ""
        source, tasks = "scontrol", _scontrol_accounting(stdout, nid)
        if not tasks:
            source, tasks = "jobcomp", _jobcomp_accounting(stdout, nid)
        if not tasks:
            return None
        tz = self.options.get("tz", "UTC")
        starts, ends, walls, nodes, signals = [], [], [], [], []
        for f in tasks.values():
            ran = f.get("NodeList") not in (None, "", "(null)", "None")
            start = local_to_utc_iso(f.get("StartTime"), "%Y-%m-%dT%H:%M:%S", tz) if ran else None
            end = local_to_utc_iso(f.get("EndTime"), "%Y-%m-%dT%H:%M:%S", tz)
            ends.append(end)
            if ran:
                starts.append(start)
                nodes.append(f["NodeList"])
                walls.append(duration_seconds(f["RunTime"]) if "RunTime" in f else iso_seconds_between(start, end))
            signals.append(_exit_code(f.get("ExitCode", ""))[1] or None)
        known = [t for t in starts if t]
        return Accounting.of(
            source, extra={"tasks": len(tasks)} if len(tasks) > 1 else None,
            start_time=min(known) if known and len(known) == len(starts) else None,
            end_time=max(ends) if ends and all(ends) else None,
            nodes=",".join(dict.fromkeys(nodes)) or None,
            wall_seconds=sum(walls) if walls and all(w is not None for w in walls) else None,
            exit_signal=next((sig for sig in signals if sig), None))

    # -- cancel -------------------------------------------------------------------------------
    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        return as_user(self._cmd("scancel") + [_native_id(job)], run_as)

    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher(roots_by_comm=("slurmstepd",), exclude_comm=("slurmd", "slurmctld"),
                              job_ids="slurmstepd")

    # -- arrays ---------------------------------------------------------------------------------
    supports_arrays = True

    def array_problem(self, pwd: str) -> tuple[str, str] | None:
        if "\\" in pwd or "%" in pwd:
            return ("pwd", "Slurm cannot give each task of an array its own output files in a directory whose "
                           "name holds '%' or '\\'")
        return None

    def task_final_entries(self, job: Job, tasks: list[int]) -> list[tuple[list[int], tuple]]:
        """One question per task: ``scontrol -o show job N_T`` while slurmctld remembers it, else its last
        jobcomp line."""
        nid = _native_id(job)
        jobcomp = str(self.options.get("jobcomp_file") or "")
        return [([t], (None, command_line(["sh", "-c", TASK_FINAL_SCRIPT, "sh", nid, str(t), jobcomp,
                                           *self._cmd("scontrol")]))) for t in tasks]

    def parse_task_finals(self, job: Job, tasks: list[int], rc: int, stdout: str, stderr: str) -> dict[int, FinalState]:
        nid = job.scheduler_job_id or ""
        wanted = set(tasks)
        ends: dict[int, FinalState] = {}
        for line in stdout.splitlines():
            arr = re.search(r" ArrayJobId=(\d+) ArrayTaskId=(\d+) ", line + " ")
            if not arr or arr.group(1) != nid or int(arr.group(2)) not in wanted:
                continue
            st = re.search(r" JobState=(\S+)", line)
            if not st:
                continue
            ex = re.search(r" ExitCode=(\d+:\d+)", line)
            start = re.search(r" StartTime=(\S+)", line[st.end():])
            fs = self._final_from({"JobState": st.group(1), "ExitCode": ex.group(1) if ex else ""})
            if fs is None:
                continue
            if fs.status != "CANCELLED":
                fs = replace(fs, started_at=local_to_utc_iso(start.group(1) if start else None, "%Y-%m-%dT%H:%M:%S",
                                                             self.options.get("tz", "UTC")))
            ends[int(arr.group(2))] = fs
        return ends

    def task_action_argv(self, job: Job, action: str, tasks: list[int], run_as: str | None) -> list[str]:
        target = f"{_native_id(job)}_[{runs_arg(tasks)}]"
        argv = {"cancel": self._cmd("scancel") + [target],
                "hold": self._cmd("scontrol") + ["uhold", target],
                "release": self._cmd("scontrol") + ["release", target]}[action]
        return as_user(argv, run_as)


_TASK = re.compile(r"^(\d+)_(\d+|\[([^\]]*)\])$")
_ORDER = {NativeState.RUNNING: 0, NativeState.PENDING: 1, NativeState.ERROR: 2, NativeState.FINISHED: 3}
_HELD = ("JobHeldUser", "JobHeldAdmin")

# How one task of an array ended: $1 = array id, $2 = task, $3 = jobcomp file ('' = none), $4... = scontrol.
TASK_FINAL_SCRIPT = ('id=$1; t=$2; f=$3; shift 3; "$@" -o show job "${id}_$t" 2>/dev/null && exit 0; '
                     '[ -n "$f" ] || exit 0; grep -e " ArrayJobId=$id ArrayTaskId=$t " "$f" | tail -n 1; exit 0')


def _arrays_as_one(jobs: list[NativeJob]) -> list[NativeJob]:
    """An array job is listed once per task (``18_1``, ``18_[2-5%2]``): report it once, under the id sbatch
    printed (``18``), running while a task runs, pending while one waits, finished when all are, with each
    task's line kept (NativeJob.tasks: tasks on their own line; .pending: runs waiting on one line). A user's
    own array (a script holding ``#SBATCH --array``) is one job of ours, ended by all its tasks (parse_final);
    an array we submitted is followed task by task."""
    out: list[NativeJob] = []
    arrays: dict[str, list[tuple[NativeJob, re.Match]]] = {}
    for j in jobs:
        m = _TASK.match(j.native_id)
        if m:
            arrays.setdefault(m.group(1), []).append((j, m))
        else:
            out.append(j)
    for base, lines in arrays.items():
        first = min((j for j, _ in lines), key=lambda t: _ORDER[t.state])
        starts = [j.start_time for j, _ in lines if j.start_time]
        tasks, pending = [], []
        for j, m in lines:
            held = any(r in _HELD for r in (j.reason or "").split(","))
            if m.group(3) is not None:          # 18_[5-1000%20]: tasks not started, on one line
                try:
                    runs = parse_task_runs(m.group(3).split("%", 1)[0])
                except ValueError:
                    raise RuntimeError(f"squeue: cannot read the tasks of {j.native_id!r}") from None
                # a line that is over (the array was cancelled) holds tasks that never started
                pending += [PendingRun(a, b, st, held=held, reason=j.reason,
                                       ended=j.state is NativeState.FINISHED) for a, b, st in runs]
            else:
                tasks.append(NativeTask(int(m.group(2)), j.state, native_id=j.native_id, start_time=j.start_time,
                                        held=held, reason=j.reason))
        out.append(replace(first, native_id=base, start_time=min(starts) if starts else None,
                           tasks=tuple(tasks), pending=tuple(pending)))
    return out


def output_patterns(pwd: str, name: str) -> tuple[str, str]:
    """sbatch -o/-e patterns that land in ``pwd`` whatever characters it holds (see the module doc)."""
    if "\\" not in pwd and "%" not in pwd:
        return f"{name}.o%j", f"{name}.e%j"
    esc = literal(pwd).rstrip("/")
    return f"{esc}/{name}.out", f"{esc}/{name}.err"


def literal(path: str) -> str:
    """A path as sbatch -o/-e must be given it to write exactly there: escaped when it holds '%' or '\\'."""
    if "\\" not in path and "%" not in path:
        return path
    return path.replace("\\", "\\\\").replace("%", "\\%")


def _task_literal(path: str) -> str:
    """An array task's own path as sbatch -o/-e must be given it: literal, with Slurm's %a for the index."""
    return literal(path).replace(TASK_SLOT, "%a")


def _unescape(pattern: str) -> str:
    return re.sub(r"\\(.)", r"\1", pattern)


# -- sbatch's options, as its getopt_long reads them (sbatch --help, Slurm 22.05) ---------------------------
SBATCH_SHORT = {c: True for c in "aAbBcCdDeFGiJLMmnNopqStwx"} | {c: False for c in "HhkOQsuvVW"}
SBATCH_LONG = {n: "required" for n in (
    "array account bb bbf begin comment cpu-freq cpus-per-task dependency deadline delay-boot chdir error "
    "export-file gid gres gres-flags input job-name licenses clusters container distribution mail-type "
    "mail-user mcs-label ntasks ntasks-per-node nodes output partition power priority profile qos core-spec "
    "signal switches thread-spec time time-min uid wckey cluster-constraint constraint nodefile mem mincpus "
    "reservation tmp nodelist exclude mem-per-cpu sockets-per-node cores-per-socket threads-per-core "
    "extra-node-info ntasks-per-core ntasks-per-socket cpus-per-gpu gpus gpu-bind gpu-freq gpus-per-node "
    "gpus-per-socket gpus-per-task mem-per-gpu acctg-freq batch hint mem-bind network open-mode "
    "kill-on-invalid-dep").split()}
SBATCH_LONG |= {n: "optional" for n in "export nice propagate exclusive wrap get-user-env".split()}
SBATCH_LONG |= {n: "none" for n in (
    "hold ignore-pbs no-kill no-requeue overcommit parsable quiet reboot requeue oversubscribe spread-job "
    "use-min-nodes verbose wait contiguous help usage version test-only").split()}
_USE = {"name": "metasched sets the job's name: give it in `name`",
        "pwd": "metasched sets the working directory: give it in `pwd`",
        "stdout": "metasched sets the output file: give it in `stdout` (and `join` for one file)",
        "stderr": "metasched sets the error file: give it in `stderr`",
        "env": "metasched passes the environment: give variables in `env` and the choice in `export`",
        "hold": "metasched holds jobs itself: submit with `hold`",
        "id": "metasched reads the job id itself", "follow": "metasched follows the job itself",
        "script": "the script is `path`", "none": "nothing would be submitted",
        "cluster": "the job would leave the cluster metasched watches", "owner": "jobs run as their owner"}
SBATCH_OWNED = {
    "-J": _USE["name"], "--job-name": _USE["name"], "-D": _USE["pwd"], "--chdir": _USE["pwd"],
    "-o": _USE["stdout"], "--output": _USE["stdout"], "-e": _USE["stderr"], "--error": _USE["stderr"],
    "--parsable": _USE["id"], "--export": _USE["env"], "--export-file": _USE["env"], "--get-user-env": _USE["env"],
    "-H": _USE["hold"], "--hold": _USE["hold"], "-W": _USE["follow"], "--wait": _USE["follow"],
    "--wrap": _USE["script"], "--test-only": _USE["none"], "-h": _USE["none"], "--help": _USE["none"],
    "--usage": _USE["none"], "-V": _USE["none"], "--version": _USE["none"], "-M": _USE["cluster"],
    "--clusters": _USE["cluster"], "--uid": _USE["owner"], "--gid": _USE["owner"],
}
OWNED_LONG = {n[2:] for n in SBATCH_OWNED if n.startswith("--")}
SBATCH_RESOURCE_FLAGS = {
    "-N": "nodes", "--nodes": "nodes", "-n": "tasks", "--ntasks": "tasks", "-c": "cores_per_task",
    "--cpus-per-task": "cores_per_task", "--mem": "memory", "-t": "walltime", "--time": "walltime",
    "--gres": "gpus_per_node", "--gpus-per-node": "gpus_per_node", "-p": "native_queue",
    "--partition": "native_queue", "-A": "account", "--account": "account",
}


def _native_id(job: Job) -> str:
    nid = job.scheduler_job_id or ""
    if not _NUMERIC_ID.match(nid):
        raise ValueError(f"job {job.id}: {nid!r} is not a Slurm job id")
    return nid


_SC_STATE = re.compile(r"(?m)^\s+JobState=(\S+)")
_SC_EXIT = re.compile(r"(?m)^\s+Requeue=.*?\bExitCode=(\d+:\d+)")
_SC_START = re.compile(r"(?m)^\s+StartTime=(\S+)")


_SC_HEAD = re.compile(r"^JobId=(\d+) (?:ArrayJobId=(\d+) ArrayTaskId=(\d+) )?JobName=")


def _parse_scontrol(text: str, nid: str) -> dict[int | None, dict[str, str]] | None:
    """``scontrol show job N``: a block per job starting ``JobId=N JobName=...`` (an array job: one block per
    task, ``JobId=M ArrayJobId=N ArrayTaskId=T JobName=...``), fields on indented lines. Task id (None for a
    plain job) -> its JobState, ExitCode, StartTime.

    JobState and ExitCode are read from their own indented lines, so a job name containing
    ``JobState=...`` (on the first line) cannot stand in for the real value.
    """
    out: dict[int | None, dict[str, str]] = {}
    lines = text.splitlines()
    heads = [(i, m) for i, m in ((i, _SC_HEAD.match(l)) for i, l in enumerate(lines)) if m]
    for n, (i, m) in enumerate(heads):
        array, task = m.group(2), m.group(3)
        if not (array == nid or (array is None and m.group(1) == nid)):
            continue
        block = "\n".join(lines[i:heads[n + 1][0] if n + 1 < len(heads) else len(lines)])
        st, ex, start = _SC_STATE.search(block), _SC_EXIT.search(block), _SC_START.search(block)
        if st:
            out[int(task) if task else None] = {"JobState": st.group(1), "ExitCode": ex.group(1) if ex else "",
                                                "StartTime": start.group(1) if start else ""}
    return out or None


def _parse_jobcomp(text: str, nid: str) -> dict[int | None, dict[str, str]] | None:
    """jobcomp/filetxt lines: ``JobId=N UserId=... Name=... JobState=X ... ExitCode=E:S`` (an array's tasks:
    ``... ArrayJobId=N ArrayTaskId=T ...``); the last line of each task counts.

    Name comes before JobState, and our names (tag) have no spaces: the first JobState= after the
    line's own JobId is the real one. ExitCode is the line's last field.
    """
    out: dict[int | None, dict[str, str]] = {}
    for line in text.splitlines():
        arr = re.search(rf" ArrayJobId={re.escape(nid)} ArrayTaskId=(\d+) ", line)
        if not (arr or (line.startswith(f"JobId={nid} UserId=") and " ArrayJobId=" not in line)):
            continue
        st = re.search(r" JobState=(\S+)", line)
        ex = re.search(r" ExitCode=(\d+:\d+)\s*$", line)
        if not st:
            continue
        start = re.search(r" StartTime=(\S+)", line[st.end():])
        out[int(arr.group(1)) if arr else None] = {"JobState": st.group(1), "ExitCode": ex.group(1) if ex else "",
                                                   "StartTime": start.group(1) if start else ""}
    return out or None


def _exit_code(text: str) -> tuple[int | None, int]:
    m = re.match(r"^(\d+):(\d+)$", text or "")
    if not m:
        return None, 0
    return int(m.group(1)), int(m.group(2))


_ACCT_KEYS = ("StartTime", "EndTime", "RunTime", "NodeList", "ExitCode")


def _scontrol_accounting(text: str, nid: str) -> dict[int | None, dict[str, str]] | None:
    """Per task (None: a plain job), the accounting fields of its ``scontrol show job`` block, each read from
    an indented line (a job name cannot stand in for them, as in _parse_scontrol)."""
    out: dict[int | None, dict[str, str]] = {}
    lines = text.splitlines()
    heads = [(i, m) for i, m in ((i, _SC_HEAD.match(l)) for i, l in enumerate(lines)) if m]
    for n, (i, m) in enumerate(heads):
        array, task = m.group(2), m.group(3)
        if not (array == nid or (array is None and m.group(1) == nid)):
            continue
        fields: dict[str, str] = {}
        for line in lines[i + 1:heads[n + 1][0] if n + 1 < len(heads) else len(lines)]:
            if not line.startswith(" "):
                continue
            for key in _ACCT_KEYS:
                hit = re.search(rf"(?:^|\s){key}=(\S+)", line)
                if hit and key not in fields:
                    fields[key] = hit.group(1)
        out[int(task) if task else None] = fields
    return out or None


def _jobcomp_accounting(text: str, nid: str) -> dict[int | None, dict[str, str]] | None:
    """Per task, the accounting fields of its last jobcomp line. The fields after Name= are read after the
    line's own JobState= (our names have no spaces, see _parse_jobcomp); ExitCode is the line's last field."""
    out: dict[int | None, dict[str, str]] = {}
    for line in text.splitlines():
        arr = re.search(rf" ArrayJobId={re.escape(nid)} ArrayTaskId=(\d+) ", line)
        if not (arr or (line.startswith(f"JobId={nid} UserId=") and " ArrayJobId=" not in line)):
            continue
        st = re.search(r" JobState=(\S+)", line)
        if not st:
            continue
        rest = line[st.end():]
        fields = {}
        for key in ("StartTime", "EndTime", "NodeList"):
            hit = re.search(rf" {key}=(\S+)", rest)
            if hit:
                fields[key] = hit.group(1)
        ex = re.search(r" ExitCode=(\d+:\d+)\s*$", line)
        if ex:
            fields["ExitCode"] = ex.group(1)
        out[int(arr.group(1)) if arr else None] = fields
    return out or None
