"""Hadoop YARN backend (3.x): ``yarn jar`` detached, ``yarn application -list/-status/-kill``.

Formats (see tests/data/yarn/README.md for the sources): ``-list`` prints a ``Total number of
applications (...)`` line, then a tab-separated table (each cell right-aligned with printf padding)
with the columns Application-Id, Application-Name, Application-Type, User, Queue, State, Final-State,
Progress, Tracking-URL. ``-status`` prints ``Application Report :`` then ``\\tKey : value`` lines
(State, Final-State: SUCCEEDED/FAILED/KILLED/UNDEFINED, Diagnostics ...).

Submission design (why): ``yarn jar`` is a client that usually lives as long as the application, and
the application id exists only once the client has talked to the ResourceManager. So submit_argv
starts the client detached (``setsid``, output to ``<pwd>/<tag>.o<our id>`` / ``.e<our id>``) and
returns at once with the client's pid: the native id is ``client:<pid>``. The client logs
``Submitted application application_<ts>_<n>`` (YarnClientImpl, log4j console = stderr). final_argv
and cancel_argv for a ``client:`` id first read that line from the job's stderr file, then ask YARN
about that application; before the line exists they report on the client process itself. A small
wrapper appends ``metasched-client-exit: <status>`` to the stderr file when the client exits, so a
client that fails before submitting (bad jar, RM down) ends the job as ERROR with its exit status.
Consequence for the engine: a ``client:`` job is never found in the batched status by native id; its
progress comes from final_argv each cycle (None while running). When the application name carries
our tag (option ``name_conf``, e.g. "mapreduce.job.name", passed as ``-D name_conf=<tag>`` right after
the jar: works for jars whose main class uses ToolRunner), the batched status also reports our id,
and the engine may adopt the real ``application_...`` id, which every method here accepts as well.

Options: ``bin_dir``, ``env`` (e.g. {"HADOOP_CONF_DIR": ...}), ``name_conf``, ``setsid`` (path),
``final_as_owner`` (default True: the stderr file lives in the owner's pwd), ``native_forbid``.

What a job asks for (JobSpec), through Hadoop's generic ``-D`` options right after the jar (like name_conf: the
jar's main class must use ToolRunner): native_queue is mapreduce.job.queuename, cores_per_task and memory each
map and reduce container's vcores and megabytes; the rest of resources is refused at submit. native: more
arguments for the jar, after ours (one setting name_conf is refused: it would hide the job). env: the yarn
client's environment (HADOOP_CLASSPATH, JAVA_HOME, ...; what containers get is the application's
configuration); export "all" removes sudo's SUDO_* first. stdout/stderr/join: the client's output
files, where the application id is read from.
"""
from __future__ import annotations

import posixpath
import re

from ..model import Accounting, Job
from .base import (YARN_CONTAINERS, launcher_pid, Backend, FinalState, NativeJob, NativeState, OutputFiles, ProcessMatcher, as_user,
                   client_argv, custom_outputs, epoch_ms_to_utc_iso, first_line, path_reason, tag, tag_fields)

CLIENT_PREFIX = "client:"
_APP_ID = re.compile(r"^application_\d+_\d+$")

PENDING_STATES = {"NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED"}
RUNNING_STATES = {"RUNNING"}
FINISHED_STATES = {"FINISHED", "FAILED", "KILLED"}

# Session leader of the detached client: runs it, then records its exit status in its own stderr.
CLIENT_WRAP = '"$@"; printf "\\nmetasched-client-exit: %s\\n" "$?" >&2'

# $1 = CLIENT_WRAP, $2 = setsid, $3 = pwd, $4 = stdout file, $5 = stderr file, $6... = yarn jar ...
SUBMIT = (
    'w=$1; s=$2; cd -- "$3" || exit 1; o=$4; e=$5; shift 5; '
    '"$s" sh -c "$w" metasched-yarn-client "$@" > "$o" 2> "$e" < /dev/null & '
    'echo "$!"'
)
# The same with stderr joined into stdout ($5 unused).
SUBMIT_JOINED = SUBMIT.replace('2> "$e"', '2>&1')

# Resolve the application id from the client's stderr file "$e" (the first one it logged). Sets $app.
_FIND_APP = (
    "app=$(sed -n 's/.*Submitted application \\(application_[0-9][0-9]*_[0-9][0-9]*\\).*/\\1/p' "
    '< "$e" 2>/dev/null | head -n 1); '
)

# $1 = stderr file, $2 = client pid ('' if the id is already an application id), $3 = app id or '',
# $4... = the yarn command.
FINAL = (
    'e=$1; p=$2; app=$3; shift 3; '
    'if [ -z "$app" ]; then ' + _FIND_APP + 'fi; '
    'if [ -n "$app" ]; then printf "metasched-application: %s\\n" "$app"; '
    '"$@" application -status "$app" 2>&1; exit 0; fi; '
    "x=$(sed -n 's/^metasched-client-exit: \\([0-9][0-9]*\\)$/\\1/p' < \"$e\" 2>/dev/null | tail -n 1); "
    'if [ -n "$x" ]; then printf "metasched-client-exit: %s\\n" "$x"; '
    'elif ps -p "$p" > /dev/null 2>&1; then echo "metasched-client: running"; '
    'else echo "metasched-client: gone"; fi'
)

# Same arguments as FINAL: kill the application if known; otherwise stop the client's process group.
CANCEL = (
    'e=$1; p=$2; app=$3; shift 3; '
    'if [ -z "$app" ]; then ' + _FIND_APP + 'fi; '
    'if [ -n "$app" ]; then "$@" application -kill "$app"; exit $?; fi; '
    'if [ -n "$p" ]; then kill -s TERM -- "-$p" 2>/dev/null; fi; exit 0'
)

_REPORT_LINE = re.compile(r"^\t([A-Za-z][A-Za-z -]*?) : ?(.*)$")


# YARN accepts any application name, but -list prints one tab-separated line per application: the base
# rule (no control characters) is the one that matters.
validate_name = Backend.validate_name


def _native_state(state: str) -> NativeState:
    if state in RUNNING_STATES:
        return NativeState.RUNNING
    if state in FINISHED_STATES:
        return NativeState.FINISHED
    return NativeState.PENDING


def output_files(job: Job) -> tuple[str, str]:
    """The client's stdout and stderr files: the job's own paths, else <pwd>/<tag>.o<id> and .e<id>. Joined:
    both are the stdout file (where the application id is then read from too)."""
    stdout, stderr = custom_outputs(job)
    base = posixpath.join(job.pwd, tag(job))
    out = stdout or f"{base}.o{job.id}"
    return out, out if job.spec.join else (stderr or f"{base}.e{job.id}")


class YarnBackend(Backend):
    type = "yarn"
    inferred_from = r"hadoop|yarn"
    status_commands = ("yarn", "setsid")
    sudo_commands = ("sh",)
    OPTIONS = ('bin_dir', 'env', 'name_conf', 'setsid', 'final_as_owner', 'recovery_grace', 'native_forbid')
    scheduler_name = "YARN"
    RESOURCES = frozenset(("cores_per_task", "memory", "native_queue"))
    RESOURCE_HINTS = {f: "YARN's containers are sized by cores_per_task and memory" for f in
                      ("nodes", "tasks", "gpus_per_node")}
    RESOURCE_HINTS |= {"walltime": "YARN applications have no walltime", "account": "YARN has queues, not accounts"}

    def script_needs(self) -> str:
        return "readable"           # a jar, read by the yarn client

    def _spec_problem(self, job: Job) -> tuple[str, str] | None:
        spec = job.spec
        if spec.export is not None and spec.export != "all":
            return "export", ("export: the YARN client always runs in the submission environment (export \"all\"); "
                              "give its variables in env")
        conf = self.options.get("name_conf")
        forbid = set(self.options.get("native_forbid") or ())
        for i, arg in enumerate(spec.native):
            if forbid and ("*" in forbid or arg in forbid):
                return f"native[{i}]", f"native[{i}]: this site does not allow {arg} (native_forbid)"
            setting = arg[2:] if arg.startswith("-D") and len(arg) > 2 else (
                spec.native[i + 1] if arg == "-D" and i + 1 < len(spec.native) else "")
            key = setting.split("=", 1)[0]
            if conf and key == conf:
                return f"native[{i}]", f"native[{i}]: {conf} is set by metasched: it names the application after its tag"
            taken = {"mapreduce.job.queuename": "native_queue", "mapreduce.map.memory.mb": "memory",
                     "mapreduce.reduce.memory.mb": "memory", "mapreduce.map.cpu.vcores": "cores_per_task",
                     "mapreduce.reduce.cpu.vcores": "cores_per_task"}.get(key)
            if taken and getattr(spec.resources, taken) is not None:
                return f"native[{i}]", f"native[{i}]: {key} asks for what resources.{taken} asks for; give one of them"
        return None

    def _resource_args(self, job: Job) -> list[str]:
        r, args = job.spec.resources, []
        if r.native_queue is not None:
            args += ["-D", f"mapreduce.job.queuename={r.native_queue}"]
        if r.cores_per_task is not None:
            args += ["-D", f"mapreduce.map.cpu.vcores={r.cores_per_task}",
                     "-D", f"mapreduce.reduce.cpu.vcores={r.cores_per_task}"]
        if r.memory is not None:
            mb = -(-r.memory // (1024 * 1024))
            args += ["-D", f"mapreduce.map.memory.mb={mb}", "-D", f"mapreduce.reduce.memory.mb={mb}"]
        return args

    def output_files(self, job: Job) -> OutputFiles:
        out, err = output_files(job)
        return OutputFiles(out, None if job.spec.join else err, joined=job.spec.join)

    # -- submit -------------------------------------------------------------------------------
    def submit_argv(self, job: Job, run_as: str | None) -> list[str]:
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        out, err = output_files(job)
        client = client_argv(self.options, "yarn", job, strip_sudo=job.spec.export == "all") + ["jar", job.path]
        if self.options.get("name_conf"):
            client += ["-D", f"{self.options['name_conf']}={tag(job)}"]
        client += self._resource_args(job) + list(job.spec.native) + list(job.options)
        argv = ["sh", "-c", SUBMIT_JOINED if job.spec.join else SUBMIT, "sh", CLIENT_WRAP,
                str(self.options.get("setsid", "setsid")), job.pwd, out, err, *client]
        return as_user(argv, run_as)

    def parse_submit(self, job: Job, rc: int, stdout: str, stderr: str) -> str:
        return f"{CLIENT_PREFIX}{launcher_pid(rc, stdout, stderr)}"

    # -- observe ------------------------------------------------------------------------------
    def status_argv(self) -> list[str]:
        return self._cmd("yarn") + ["application", "-list", "-appStates", "ALL"]

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        if rc != 0:
            raise RuntimeError(f"yarn application -list failed ({rc}): {first_line(stderr, stdout)}")
        lines = stdout.splitlines()
        if not any(l.startswith("Total number of applications") for l in lines):
            raise RuntimeError("yarn application -list printed no 'Total number of applications' line")
        jobs: dict[str, NativeJob] = {}
        dupes: set[str] = set()
        for line in lines:
            cells = line.split("\t")
            if len(cells) < 9:
                continue
            app_id = cells[0].strip()
            if not _APP_ID.match(app_id):
                continue   # the header, or a log line
            name = "\t".join(cells[1:-7]).strip()   # a name may itself contain tabs
            app_type, user, queue, state, final, progress, url = (c.strip() for c in cells[-7:])
            if app_id in jobs:
                dupes.add(app_id)
            jobs[app_id] = NativeJob(native_id=app_id, **tag_fields(name), owner=user, name=name,
                                     state=_native_state(state), queue=queue)
        return [j for a, j in jobs.items() if a not in dupes]

    # -- end state ----------------------------------------------------------------------------
    def _ids(self, job: Job) -> tuple[str, str]:
        """(client pid or '', application id or '') for the job's native id."""
        nid = job.scheduler_job_id or ""
        if nid.startswith(CLIENT_PREFIX) and nid[len(CLIENT_PREFIX):].isdigit():
            return nid[len(CLIENT_PREFIX):], ""
        if _APP_ID.match(nid):
            return "", nid
        raise ValueError(f"job {job.id}: {nid!r} is neither client:<pid> nor an application id")

    def final_argv(self, job: Job) -> list[str]:
        pid, app = self._ids(job)
        argv = ["sh", "-c", FINAL, "sh", output_files(job)[1], pid, app, *self._cmd("yarn")]
        return as_user(argv, job.owner) if self.options.get("final_as_owner", True) else argv

    def parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        text = stdout or ""
        first = first_line(text)
        if first.startswith("metasched-application:"):
            report = parse_application_report(text)
            state, final = report.get("State", ""), report.get("Final-State", "")
            if state not in FINISHED_STATES:
                return None
            diag = first_line(report.get("Diagnostics", ""))
            if final == "SUCCEEDED":
                return FinalState("COMPLETED", 0, "")
            if final == "KILLED" or state == "KILLED":
                return FinalState("CANCELLED", None, diag or "killed")
            if job.cancel_requested:
                return FinalState("CANCELLED", None, diag or "cancelled")
            return FinalState("ERROR", None, diag or f"application {state.lower()}, final state {final}")
        m = re.match(r"^metasched-client-exit: (\d+)$", first)
        if m:
            code = int(m.group(1))
            if job.cancel_requested:
                return FinalState("CANCELLED", code, "cancelled before the application was submitted")
            return FinalState("ERROR", code, f"the yarn client exited with status {code} "
                                             "before submitting an application")
        if first == "metasched-client: gone":
            if job.cancel_requested:
                return FinalState("CANCELLED", None, "cancelled before the application was submitted")
            return FinalState("ERROR", None, "the yarn client disappeared before submitting an application")
        return None   # client still running without an application yet, or the command failed

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """From the application report: Start-Time and Finish-Time (epoch ms; the wall time between them).
        YARN reports what it *allocated* ("Aggregate Resource Allocation : N MB-seconds, M vcore-seconds"),
        not the CPU time or memory the containers used: those are extras under their own names, never CPU
        time; CPU time and memory come from the node agents where they saw the containers (source "agent").
        The AM host is where the application master ran, not every node of the job: an extra too."""
        if not first_line(stdout or "").startswith("metasched-application:"):
            return None          # the client ended before an application existed: YARN reports nothing
        report = parse_application_report(stdout)
        start, end = report.get("Start-Time"), report.get("Finish-Time")
        wall = None
        if (start or "").isdigit() and (end or "").isdigit() and int(start) > 0 and int(end) >= int(start):
            wall = (int(end) - int(start)) / 1000.0
        extra = {}
        alloc = re.match(r"^\s*(\d+) MB-seconds, (\d+) vcore-seconds", report.get("Aggregate Resource Allocation", ""))
        if alloc:
            extra.update(allocated_mb_seconds=int(alloc.group(1)), allocated_vcore_seconds=int(alloc.group(2)))
        if report.get("AM Host") not in (None, "", "N/A"):
            extra["am_host"] = report["AM Host"]
        return Accounting.of("yarn", extra=extra, start_time=epoch_ms_to_utc_iso(start),
                             end_time=epoch_ms_to_utc_iso(end), wall_seconds=wall)

    # -- cancel -------------------------------------------------------------------------------
    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        pid, app = self._ids(job)
        return as_user(["sh", "-c", CANCEL, "sh", output_files(job)[1], pid, app, *self._cmd("yarn")],
                       run_as)

    def process_matcher(self) -> ProcessMatcher:
        # Containers are started by the NodeManager through its launch scripts (DefaultContainerExecutor:
        # default_container_executor.sh -> default_container_executor_session.sh -> launch_container.sh;
        # LinuxContainerExecutor: the setuid container-executor, whose arguments name launch_container.sh).
        # The first matching process and its descendants are the container. The NodeManager JVM itself
        # (their parent) is excluded explicitly, whatever its command line contains.
        return ProcessMatcher(
            trees_by_args_regex=r"(?:^|[\s/])(?:default_container_executor(?:_session)?\.sh|launch_container\.sh)(?:\s|$)",
            exclude_args_regex=r"org\.apache\.hadoop\.yarn\.server\.nodemanager\.NodeManager",
            job_ids=YARN_CONTAINERS,
        )


def parse_application_report(text: str) -> dict[str, str]:
    """``yarn application -status``: ``\\tKey : value`` lines; Diagnostics may span several lines."""
    fields: dict[str, str] = {}
    key = None
    in_report = False
    for line in text.splitlines():
        if line.startswith("Application Report"):
            in_report = True
            continue
        if not in_report:
            continue
        m = _REPORT_LINE.match(line)
        if m:
            key = m.group(1).strip()
            fields[key] = m.group(2).rstrip()
        elif key == "Diagnostics":
            fields[key] += "\n" + line
    return fields


def parse_start_time(report: dict[str, str]) -> str | None:
    return epoch_ms_to_utc_iso(report.get("Start-Time"))
