"""Spark standalone backend: ``spark-submit --master spark://... --deploy-mode client`` started detached as
the owner, one master JSON call per cycle, the driver's exit status kept like a local job's.

Deploy mode (why client, always):
- PySpark applications cannot run in cluster mode on a standalone master (spark-submit refuses: "Cluster
  deploy mode is currently not supported for python applications on standalone clusters").
- In client mode the driver is the spark-submit process itself, on the scheduler's master node, started by
  metasched as the owner (``sudo -n -u <owner>``), detached, in its own session, exactly as the ``local``
  backend starts a script (this module reuses its launcher, wrapper, exit file and cancel): the native id is
  the driver's process group, its exit status goes to ``<pwd>/.<tag>.exit``. In cluster mode the driver
  would run on a worker as the Worker daemon's Unix user, not as the owner.
- Finding the driver after a crash: the wrapper's command line carries our id and the job's token
  (``metasched-spark-<id>-<token>``), so an interrupted dispatch is found in the very next status listing
  (before the driver has even talked to the master), and the application it registers is named with our
  tag (``--name ms<id>-<token>_<name>``: what the master's JSON shows as ``name``, next to the ``user``). A cluster-mode driver would be known only by a
  driver id the master assigns (its JSON gives a driver neither a name nor a user), so a submission
  interrupted before that id was recorded could not be told from one that never happened.

Status (one command per cycle on the master node, run as the service user): a short ``python3 -I -S``
(STATUS) lists our drivers from /proc (the wrapper's command line, as ``ps`` would show it, leading its own
process group), then fetches ``<web_url>/json/`` once (no proxy). Our jobs are those drivers (RUNNING while
the driver runs: the job runs from its submission, like a local job), each with the id and token of its
wrapper's mark. An active application (WAITING: PENDING, RUNNING: RUNNING) named with exactly the tag of a
listed driver (id, token, and the driver's user) is that driver's and is not listed again; every other one
is listed with the id and token its name carries (``tag_fields``), and the engine counts it as foreign
unless that is exactly the tag and owner of one of our active jobs: an application somebody started with
spark-submit, or one tagged by another installation or a wiped database (another token), is foreign and
never touched, as a qsub or sbatch job would be. Such a tagged application of ours without its driver is
only seen in the moment after the driver exited and before the master noticed; should an interrupted
dispatch be adopted under that application's id, its end is read from the exit file all the same.
Cluster-mode drivers somebody submitted directly appear through the application they register.

End state: the exit file (FINISHED: exit 0 -> COMPLETED; FAILED / ERROR: the exit code and the reason,
read from the end of the driver's output files, ``<tag>.o<id>`` and ``.e<id>`` in pwd: the last Python
exception of a traceback, else spark-submit's, Python's or the JVM's own error line; KILLED: a cancel ->
CANCELLED). Spark's own application state in the master says
FINISHED for any client-mode application whose driver stopped its SparkContext, failed or not, so the exit
status is the truth.

Cancel: TERM to the driver's process group (KILL after ``grace`` seconds), as the owner: the driver stops its
SparkContext, which unregisters the application, and the master then stops its executors. The master's
own kill (``POST /app/kill/`` of its web UI) needs a CSRF token of a UI page in Spark 4 (HTTP 403 "Missing or
invalid CSRF token on a state-changing endpoint" otherwise) and cannot tell whose application it kills, so
it is not used.

Enforcement: the executors (``CoarseGrainedExecutorBackend`` JVMs, children of the Worker, with the
PySpark workers they fork), the client-mode drivers (our wrappers' process groups, and any ``SparkSubmit``
JVM) are the job trees; the Master and Worker daemons never are. Executors run as the Worker daemon's Unix
user (Spark standalone has no per-user launch): run the Worker as an unprivileged service user, never root.

Options: ``master_url`` (spark://host:7077, default spark://localhost:7077), ``web_url`` (the master's web
UI, default http://<host of master_url>:8080), ``bin_dir`` (where spark-submit is; default: on PATH),
``env`` (K=V for spark-submit, e.g. JAVA_HOME), ``conf`` ({"spark.pyspark.python": ...}: ``--conf``
each), ``submit_args`` (more spark-submit arguments), ``executor_cores``, ``executor_memory``,
``total_executor_cores`` (site defaults until jobs carry resources), ``grace``, ``final_as_owner``,
``status_timeout`` (seconds for the master's JSON, default 10), ``python``, ``recovery_grace``.
"""
from __future__ import annotations

import dataclasses
import json
import re
from urllib.parse import urlsplit

from ..model import Accounting, Job
from .base import (FinalState, NativeJob, NativeState, ProcessMatcher, epoch_ms_to_utc_iso, first_line,
                   scheduler_command, tag, tag_fields)
from .local import LocalBackend, exit_file, output_files

MARK = "metasched-spark-"
DEFAULT_MASTER = "spark://localhost:7077"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
SUBMIT_CLASS = "org.apache.spark.deploy.SparkSubmit"
DAEMONS_RE = r"\borg\.apache\.spark\.deploy\.(?:master\.Master|worker\.Worker)\b"

# argv: the master's JSON URL, timeout seconds, our wrappers' command-line prefix. Prints one JSON line:
# {"master": <the master's JSON> | absent, "error": text | absent, "drivers": [{pid, mark, user, start}]}
# (mark: what follows the prefix, <our id>-<token>). /proc first: an application whose driver is not listed
# then had its driver gone before the master was asked (a driver registers seconds after it starts).
STATUS = r"""
import json, os, pwd, sys, urllib.request
url, timeout, prefix = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode()
out = {"drivers": []}
try:
    with open("/proc/stat") as f:
        btime = float(next(l.split()[1] for l in f if l.startswith("btime ")))
except (OSError, StopIteration):
    btime = None
hz = os.sysconf("SC_CLK_TCK")
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    try:
        with open("/proc/%s/cmdline" % name, "rb") as f:
            args = f.read().replace(b"\0", b" ")
        if not args.startswith(prefix):
            continue
        with open("/proc/%s/stat" % name) as f:
            st = f.read().rsplit(")", 1)[1].split()
        uid = os.stat("/proc/" + name).st_uid
    except OSError:
        continue
    mark = args[len(prefix):].split(b" ", 1)[0].decode("ascii", "replace")
    if st[0] in "ZX" or int(st[2]) != int(name) or not mark.split("-", 1)[0].isdigit():
        continue
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    out["drivers"].append({"pid": int(name), "mark": mark, "user": user,
                           "start": None if btime is None else btime + int(st[19]) / hz})
try:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        out["master"] = json.loads(r.read().decode("utf-8"))
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""

# the end of a Python traceback (the exception line), spark-submit's and the JVM's own error lines
_TRACEBACK = "Traceback (most recent call last):"
_LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d ")
_JAVA_ERROR = re.compile(r"^(?:Exception in thread .*|Error: .*|[\w$.]+(?:Exception|Error)(?:: .*)?|"
                         r"\S*python\S*: can't open file .*)$")
REASON_MAX = 300


def driver_reason(stderr_tail: str) -> str | None:
    """Why a driver failed, from the end of its stderr: the exception line of the last Python traceback
    (the first unindented line after it), else the last error line of spark-submit or the JVM."""
    lines = stderr_tail.splitlines()
    start = max((i for i, l in enumerate(lines) if l.startswith(_TRACEBACK)), default=None)
    if start is not None:
        for line in lines[start + 1:]:
            if line and not line[0].isspace():
                return line.strip()[:REASON_MAX]
    errors = [l.strip() for l in lines if _JAVA_ERROR.match(l.strip()) and not _LOG_LINE.match(l)]
    return errors[-1][:REASON_MAX] if errors else None


def web_url(options: dict) -> str:
    """The master's web UI: the web_url option, else port 8080 on the host of master_url."""
    if options.get("web_url"):
        return str(options["web_url"]).rstrip("/")
    host = urlsplit(str(options.get("master_url") or DEFAULT_MASTER)).hostname or "localhost"
    return f"http://{'[' + host + ']' if ':' in host else host}:8080"


class SparkBackend(LocalBackend):
    type = "spark"
    inferred_from = r"spark"
    status_commands = ("python3",)
    sudo_commands = ("sh", "python3")
    OPTIONS = ("master_url", "web_url", "bin_dir", "env", "conf", "submit_args", "executor_cores",
               "executor_memory", "total_executor_cores", "grace", "final_as_owner", "status_timeout",
               "python", "recovery_grace", "native_forbid")
    mark = MARK
    scheduler_name = "Spark"
    supervises_arrays = False   # Spark has no arrays (refused at submit)
    # cores_per_task: --executor-cores; memory: --executor-memory (per executor, one per worker node here);
    # tasks: --total-executor-cores = tasks x cores_per_task; walltime: the driver is stopped by the launcher's
    # runner, as a local job is (its executors end with it)
    RESOURCES = frozenset(("tasks", "cores_per_task", "memory", "walltime"))
    RESOURCE_HINTS = {"nodes": "Spark places executors itself; ask for tasks and cores_per_task",
                      "gpus_per_node": "give spark.executor.resource.gpu.* in native flags (--conf)",
                      "native_queue": "a standalone master has no queues",
                      "account": "a standalone master charges no accounts"}
    # what metasched sets itself: the master, the deploy mode (the driver must be the launcher's process) and the
    # application's name (its tag)
    NATIVE_OWNED = {"--master": "the queue's master_url", "--deploy-mode": "metasched (client mode)",
                    "--name": "metasched (the job's tag)", "spark.app.name": "metasched (the job's tag)",
                    "--executor-cores": "resources.cores_per_task", "--executor-memory": "resources.memory",
                    "--total-executor-cores": "resources.tasks"}

    def _spec_problem(self, job: Job) -> tuple[str, str] | None:
        native = job.spec.native
        forbid = set(self.options.get("native_forbid") or ())
        for i, arg in enumerate(native):
            flag = arg.split("=", 1)[0]
            if forbid and ("*" in forbid or flag in forbid):
                return f"native[{i}]", f"native[{i}]: this site does not allow {flag} (native_forbid)"
            prop = (native[i + 1] if arg == "--conf" and i + 1 < len(native) else
                    arg[len("--conf="):] if arg.startswith("--conf=") else "").split("=", 1)[0]
            owner = self.NATIVE_OWNED.get(flag) or self.NATIVE_OWNED.get(prop)
            if owner:
                return f"native[{i}]", f"native[{i}]: {prop or flag} is set by {owner}"
        return None

    # -- arrays: a Spark application has no tasks of its own to follow (its executors are Spark's); the local
    # launcher's supervisor is not used for drivers: an array of applications is refused at submit
    supports_arrays = False

    def array_problem(self, pwd: str) -> tuple[str, str] | None:
        return ("array", "array: Spark has no job arrays (a Spark application spreads its own work over executors): "
                         "submit one application per task, or parallelise inside the application")

    def _limits(self, job: Job) -> dict:
        # the driver is not the job's cores or memory (its executors are): only the walltime is the launcher's
        return {"walltime": job.spec.resources.walltime} if job.spec.resources.walltime else {}

    def _resource_args(self, job: Job) -> list[str]:
        r = job.spec.resources
        cores = r.cores_per_task or self.options.get("executor_cores")
        memory = f"{-(-r.memory // 2 ** 20)}m" if r.memory else self.options.get("executor_memory")
        total = r.slots if r.tasks else self.options.get("total_executor_cores")
        return [arg for opt, value in (("--executor-cores", cores), ("--executor-memory", memory),
                                       ("--total-executor-cores", total)) if value is not None
                for arg in (opt, str(value))]

    # -- submit: the local launcher, running spark-submit ---------------------------------------
    def _command(self, job: Job) -> list[str]:
        # /usr/bin/env first: the launcher checks that what it runs is an executable file, and env applies the
        # env option and finds spark-submit on the owner's PATH (sudo's secure_path) or in bin_dir
        cmd = scheduler_command({"env": self.options.get("env"), "bin_dir": self.options.get("bin_dir")},
                                "spark-submit")
        cmd = ["/usr/bin/env", *cmd[1:]] if cmd[0] == "env" else ["/usr/bin/env", *cmd]
        master = str(self.options.get("master_url") or DEFAULT_MASTER)
        if not master.startswith("spark://"):
            raise ValueError(f"master_url: expected spark://host:port, got {master!r}")
        cmd += ["--master", master, "--deploy-mode", "client", "--name", tag(job)]
        for key, value in sorted((self.options.get("conf") or {}).items()):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(key)):
                raise ValueError(f"conf: {key!r} is not a Spark property name")
            cmd += ["--conf", f"{key}={value}"]
        cmd += self._resource_args(job)
        cmd += [str(a) for a in self.options.get("submit_args") or ()]
        return cmd + list(job.spec.native) + [job.path, *job.options]

    # -- observe ------------------------------------------------------------------------------
    def status_argv(self) -> list[str]:
        return [str(self.options.get("python", "python3")), "-I", "-S", "-c", STATUS, web_url(self.options) + "/json/",
                str(float(self.options.get("status_timeout", 10))), self.args_prefix]

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        line = next((l for l in reversed((stdout or "").splitlines()) if l.startswith("{")), "")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            raise RuntimeError(f"Spark status failed ({rc}): {first_line(stderr, stdout) or 'no answer'}") from None
        if answer.get("error") or not isinstance(answer.get("master"), dict):
            raise RuntimeError(f"Spark master {web_url(self.options)}: {answer.get('error') or 'no status'}")
        master = answer["master"]
        if master.get("status") not in (None, "ALIVE"):
            raise RuntimeError(f"Spark master {web_url(self.options)} is {master.get('status')}, not ALIVE")
        drivers = [nj for nj in map(_driver, answer.get("drivers") or ()) if nj is not None]
        mine = {(nj.our_id, nj.our_token, nj.owner) for nj in drivers}
        # an application named with exactly a listed driver's tag is that driver's: the job is the driver
        return drivers + [app for app in parse_master(master) if app.our_id is None
                          or (app.our_id, app.our_token, app.owner) not in mine]

    # -- end state: the local exit file, and the end of the driver's stderr for the reason -------
    def _final_fields(self, job: Job) -> list[str]:
        if job.scheduler_job_id is not None and not job.scheduler_job_id.isdigit():
            # adopted under its application's id (its driver had just exited): the exit file says how it ended
            job = dataclasses.replace(job, scheduler_job_id=None)
        fields = super()._final_fields(job)[1:] + list(output_files(job))
        return [str(len(fields)), *fields]

    def parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        fs = super().parse_final(job, rc, stdout, stderr)
        if fs is None or fs.status != "ERROR" or fs.exit_code is None:
            return fs
        # PySpark's driver writes the Python traceback to its stdout (the JVM relays the Python process's
        # stdout and stderr there), spark-submit and the JVM their own errors to stderr
        tails = (stdout or "").split("@@tail\n")[1:]
        reason = next((r for r in map(driver_reason, tails) if r), None)
        return FinalState("ERROR", fs.exit_code, f"{reason} (exit code {fs.exit_code})" if reason else fs.reason)

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """The driver's wrapper record (the local launcher's, issue 15): its wall time, start, end and a signal
        are the application's; its rusage is the driver's alone (spark-submit's JVM and a PySpark driver), not
        what the executors used on the workers: extras under the driver's name, never the job's CPU time or
        memory; nor is the driver's node where the job ran (extra driver_node)."""
        local = super().parse_accounting(job, rc, stdout, stderr)
        if local is None:
            return None
        extra = {k: v for k, v in (("driver_cpu_seconds", local.cpu_seconds),
                                   ("driver_max_rss_bytes", local.max_rss_bytes),
                                   ("driver_node", local.nodes)) if v is not None}
        return Accounting.of("wrapper", extra={**local.extra, **extra}, start_time=local.start_time,
                             end_time=local.end_time, wall_seconds=local.wall_seconds, exit_signal=local.exit_signal)

    # -- enforcement --------------------------------------------------------------------------
    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher(
            trees_by_args_regex="|".join([
                super().process_matcher().trees_by_args_regex,                        # our drivers' wrappers
                r"^\S*java\s.*\b" + re.escape(EXECUTOR_CLASS) + r"\b",              # executors
                r"^\S*java\s.*\b" + re.escape(SUBMIT_CLASS) + r"\b"]),              # any client-mode driver
            exclude_args_regex=DAEMONS_RE,
            include_process_group=True)


_DRIVER_MARK = re.compile(r"^(\d+)(?:-([a-z]{6}))?$")      # what follows MARK: local.marker(job)


def _driver(d: dict) -> NativeJob | None:
    """One of our drivers as STATUS listed it (None: a mark that is not ours after all)."""
    m = _DRIVER_MARK.match(str(d.get("mark", "")))
    if m is None:
        return None
    start = d.get("start")
    return NativeJob(native_id=str(d["pid"]), our_id=int(m.group(1)), our_token=m.group(2), owner=str(d["user"]),
                     name=f"{MARK}{m.group(0)}", state=NativeState.RUNNING, queue="spark",
                     start_time=None if start is None else epoch_ms_to_utc_iso(str(int(start * 1000))))


def parse_master(master: dict) -> list[NativeJob]:
    """The active applications in the master's JSON (waiting for cores or running), each with the id and token
    its name carries when it is named like our tag (``tag_fields``)."""
    out = []
    for app in master.get("activeapps") or ():
        if not isinstance(app, dict):
            continue
        state = str(app.get("state", ""))
        if state not in ("WAITING", "RUNNING"):
            continue            # FINISHED / KILLED / FAILED on its way to completedapps
        running, name = state == "RUNNING", str(app.get("name", ""))
        out.append(NativeJob(native_id=str(app.get("id")), owner=str(app.get("user", "")), name=name,
                             **tag_fields(name), state=NativeState.RUNNING if running else NativeState.PENDING,
                             queue="spark", start_time=epoch_ms_to_utc_iso(str(app.get("starttime", "")))
                             if running else None))
    return out


__all__ = ["SparkBackend", "driver_reason", "exit_file", "output_files", "parse_master", "web_url"]
