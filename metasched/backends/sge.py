"""Grid Engine backend (Son of Grid Engine 8.1.9): qsub / qstat -xml / qacct / qdel argv and parsers.

Options (all optional):
  bin_dir    directory of the client binaries (e.g. "/usr/lib/gridengine"); default: names on PATH
             (on Debian, /usr/bin/q* are wrappers that set SGE_ROOT themselves, ~45 ms per call).
  env        {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}: rendered as an ``env K=V``
             prefix after sudo (needed with bin_dir=/usr/lib/gridengine).
  qsub_args  list of extra qsub arguments from the site config (e.g. ["-q", "all.q"]), inserted
             before the script path.
  binary     False (default): ``-b n``: qsub reads and spools the script and honours ``#$`` directives;
             the interpreter is the queue's (shell_start_mode posix_compliant ignores the shebang) or
             ``shell``. True: ``-b y -shell no``: the path is exec'd on the execution host (the kernel
             honours the shebang, arguments are passed exactly, no shell) but must be executable there.
  shell      interpreter for script jobs (``-S``), e.g. "/bin/bash"; default: the queue's setting.
  tz         IANA zone of the qmaster's clock for the naive times in qstat -xml (default "UTC").
  pe         the site's parallel environment for jobs of several slots (e.g. "smp", whose allocation rule
             $pe_slots keeps them on one node): ``-pe <pe> <tasks x cores_per_task>``. Without it a job asking
             for more than one slot is refused at submit.
  memory_complex  the complex that carries resources.memory (h_vmem, h_rss or mem_free: sites differ).
             Grid Engine counts it per slot, so metasched asks memory / slots. Without it a job asking for
             memory is refused at submit.
  native_forbid   native flags this site refuses (e.g. ["-P", "-p"]; ["*"]: every native flag).
  check_paths     True (default): the submit first checks, as the owner on this master node, that pwd can be
             entered, the output directories written and the script read (script mode) or run (binary mode),
             and refuses with one line saying which (base.CHECK_FUNCTION); False where those files live only on
             the execution hosts.

What a job asks for (JobSpec): walltime is ``-l h_rt``, the native queue ``-q``, the account ``-P``; native
flags follow ours, each an argv element (qsub's own options only: -N, -wd, -o, -e, -j, -v, -V, -h, -terse,
-sync, -t ... are metasched's or untracked, and refused). env: the variables are set in qsub's environment
(``env NAME=value ... qsub``: values never meet a shell, commas included) and passed by name with ``-v NAME,...``;
export "all" is ``-V`` (sudo's SUDO_* variables removed first). stdout/stderr: ``-o``/``-e`` with the resolved
path (Grid Engine reads ``host:``, ``$VARIABLES`` and commas in them, so such paths are refused); join: ``-j y``.

Output files: by default qsub gets no -o/-e, so Grid Engine's default naming applies in the ``-wd`` directory:
``<pwd>/<native name>.o<native id>`` and ``.e<native id>``, the native name being ``tag(job)``.
(An explicit -o would need escaping of ':' (host prefix) and '$' (pseudo variables) in pwd.)
"""
from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

from ..model import Accounting, ArraySpec, compress, Job
from .base import (CheckedClientSubmit, TASK_ID_VAR, TASK_SLOT, as_user, Backend, check_args, client_argv,
                   command_line, custom_outputs, export_names, FinalState, first_line, is_tag_of, leading_number,
                   local_to_utc_iso, memory_text, native_problem, NativeJob, NativeProblem, NativeState, NativeTask,
                   OutputFiles, parse_sge_native, parse_task_runs, path_reason, PendingRun, ProcessMatcher,
                   signal_of, spooled_submit, SubmitRefused, tag, tag_fields, task_wrapper)

_SGE_FORBIDDEN = set("\n\t\r/:@\\*?")
_PLAIN = re.compile(r"^[A-Za-z0-9_.@*][A-Za-z0-9_.@*,-]*$")
_TERSE_ID = re.compile(r"^(\d+)(?:\.\d+-\d+:\d+)?$")
_NUMERIC_ID = re.compile(r"^\d+$")
_LEADING_INT = re.compile(r"^\s*(-?\d+)")


def validate_name(name: str) -> str | None:
    """Why Grid Engine would reject ``name`` as a job name (sge_types(5) "job_name"), or None.

    A name is printable ASCII without / : @ \\ * ? (nor newline, tab, CR), and does not start with a digit
    (it would be ambiguous with a job number). Spaces are allowed. The native name is always ``tag(job)``,
    which is valid by construction; this check keeps the user's name meaningful for the scheduler too.
    """
    if not name:
        return "the job name must not be empty"
    if name[0].isdigit():
        return "Grid Engine job names must not start with a digit"
    bad = sorted(set(name) & _SGE_FORBIDDEN)
    if bad:
        return "Grid Engine job names must not contain " + " ".join(repr(c) for c in bad)
    if any(not (0x20 <= ord(c) < 0x7F) for c in name):
        return "Grid Engine job names must be printable ASCII"
    if len(name) > 512:
        return "Grid Engine job names are limited to 512 characters"
    return None


def _state(letters: str) -> NativeState:
    """Map a qstat state code (r, t, Rr, qw, hqw, Eqw, dr, s, z ...) to a NativeState.

    E (error) wins: the job will not run. z (zombie, only with -s z) is over. r/t (running, transferring,
    including suspended variants s/S/T and deletion in progress d) are RUNNING; the rest waits (PENDING).
    """
    if "E" in letters:
        return NativeState.ERROR
    if "z" in letters:
        return NativeState.FINISHED
    if "r" in letters or "t" in letters:
        return NativeState.RUNNING
    return NativeState.PENDING


# Runs an array task's script as a Grid Engine script job would be: with the interpreter its last "#$ -S"
# line names, else /bin/sh (the queue's shell cannot be known from here; the lab's and most sites' is sh).
# $1 = the script, the rest its arguments.
SCRIPT_SHELL = ('f() { while [ $# -gt 1 ]; do [ "$1" = -S ] && i=$2; shift; done; }; s=$1; i=; '
                'while IFS= read -r l || [ -n "$l" ]; do case $l in "#\\$"*) set -f; f ${l#??}; set +f;; esac; '
                'done < "$s"; exec "${i:-/bin/sh}" "$@"')

_PRIORITY = {NativeState.RUNNING: 3, NativeState.PENDING: 2, NativeState.ERROR: 1, NativeState.FINISHED: 0}


class GridEngineBackend(CheckedClientSubmit, Backend):
    type = "sge"
    inferred_from = r"grid\s*engine|\bsge\b|\bsoge\b|\buge\b"
    status_commands = ("qsub", "qstat", "qacct", "qdel")
    sudo_commands = ("qsub", "qdel", "sh")
    OPTIONS = ('bin_dir', 'env', 'qsub_args', 'binary', 'shell', 'tz', 'recovery_grace', 'pe', 'memory_complex',
               'native_forbid', 'check_paths')
    default_recovery_grace = 30.0    # qacct lags by accounting_flush_time (15 s by default)
    scheduler_name = "Grid Engine"

    validate_name = staticmethod(validate_name)

    # -- what a job asks for ---------------------------------------------------------------------
    RESOURCES = frozenset(("nodes", "tasks", "cores_per_task", "memory", "walltime", "native_queue", "account"))
    RESOURCE_HINTS = {"gpus_per_node": "Grid Engine has no standard GPU resource: ask for your site's complex "
                                       "with native, e.g. [\"-l\", \"gpu=1\"]"}

    def script_needs(self) -> str:
        return "executable" if self.options.get("binary") else "readable"

    def _spec_problem(self, job: Job) -> tuple[str, str] | None:
        spec, r = job.spec, job.spec.resources
        if r.nodes is not None and r.nodes > 1:
            return ("resources.nodes", "resources.nodes: Grid Engine places slots on nodes by its parallel "
                                       "environment's allocation rule: ask for tasks and cores_per_task")
        if r.slots > 1 and not self.options.get("pe"):
            field = "resources.tasks" if (r.tasks or 1) > 1 else "resources.cores_per_task"
            return field, (f"{field}: this Grid Engine has no parallel environment for jobs of several slots "
                           f"configured (the scheduler's option pe)")
        if r.memory is not None and not self.options.get("memory_complex"):
            return ("resources.memory", "resources.memory: this Grid Engine has no memory complex configured "
                                        "(the scheduler's option memory_complex: h_vmem, h_rss or mem_free)")
        for value, field in ((r.native_queue, "native_queue"), (r.account, "account")):
            if value is not None and not _PLAIN.match(value):
                return f"resources.{field}", f"resources.{field}: {value!r} is not a plain Grid Engine name"
        for field, path in zip(("stdout", "stderr"), custom_outputs(job)):
            bad = sorted(set(path or "") & set(":$,"))
            if bad:
                return field, (f"{field}: Grid Engine reads {' '.join(repr(c) for c in bad)} in output paths "
                               f"(host:path, $VARIABLES, lists) and cannot escape them: {path!r}")
        if spec.native:
            try:
                flags = parse_sge_native(spec.native, QSUB_ARITY)
            except NativeProblem as exc:
                return f"native[{exc.index}]", str(exc)
            why = native_problem(flags, QSUB_OWNED, QSUB_RESOURCE_FLAGS, spec, self.options.get("native_forbid"))
            if why:
                return why.split(":", 1)[0], why
            for f in flags:
                if f.name == "-S" and job.array_spec:
                    return (f"native[{f.index}]", f"native[{f.index}]: -S: an array's tasks run the script through "
                                                  f"metasched's task wrapper: name its interpreter in the script's "
                                                  f"#! or #$ -S line")
                if f.name == "-w" and f.value not in ("e", "w", "n"):
                    return f"native[{f.index}]", f"native[{f.index}]: -w {f.value} does not submit the job"
                if f.name == "-l":
                    for key in (item.split("=", 1)[0].strip() for item in (f.value or "").split(",")):
                        field = {"h_rt": "walltime", "slots": "cores_per_task",
                                 self.options.get("memory_complex") or "": "memory"}.get(key)
                        if field and (getattr(r, field) is not None or (field == "cores_per_task" and r.slots > 1)):
                            return (f"native[{f.index}]", f"native[{f.index}]: -l {key} asks for what "
                                                          f"resources.{field} asks for; give one of them")
        return None

    def _resource_args(self, job: Job) -> list[str]:
        r = job.spec.resources
        args, limits = [], []
        if r.slots > 1:
            args += ["-pe", str(self.options["pe"]), str(r.slots)]
        if r.walltime is not None:
            limits.append(f"h_rt={r.walltime}")
        if r.memory is not None:
            # per node: Grid Engine counts memory complexes per slot (a node's limit is slots x the value)
            limits.append(f"{self.options['memory_complex']}={memory_text(-(-r.memory // r.slots))}")
        if limits:
            args += ["-l", ",".join(limits)]
        if r.native_queue is not None:
            args += ["-q", r.native_queue]
        if r.account is not None:
            args += ["-P", r.account]
        return args

    def _env(self, job: Job) -> tuple[list[str], list[str]]:
        """(qsub run with the job's variables in its environment, qsub's -V or -v NAME,...)."""
        if job.spec.export == "all":
            return client_argv(self.options, "qsub", job, strip_sudo=True), ["-V"]
        names = export_names(job)
        return client_argv(self.options, "qsub", job), (["-v", ",".join(names)] if names else [])

    def _output_args(self, job: Job) -> list[str]:
        # an array's task index: Grid Engine's own $TASK_ID (the paths hold no other '$': _spec_problem)
        stdout, stderr = (p.replace(TASK_SLOT, "$TASK_ID") if p else p for p in custom_outputs(job))
        args = []
        if job.spec.join:
            args += ["-j", "y"]
        if stdout:
            args += ["-o", stdout]
        if stderr and not job.spec.join:
            args += ["-e", stderr]
        return args

    def output_files(self, job: Job, task: int | None = None) -> OutputFiles:
        """The job's own paths, else Grid Engine's default in the working directory: <tag>.o<native id> (an
        array's tasks: <tag>.o<native id>.<task>)."""
        stdout, stderr = custom_outputs(job, task)
        nid = job.scheduler_job_id
        suffix = f".{TASK_SLOT if task is None else task}" if job.array_spec else ""

        def default(stream: str) -> str | None:
            return posixpath.join(job.pwd, f"{tag(job)}.{stream}{nid}{suffix}") if nid else None
        return OutputFiles(stdout or default("o"), None if job.spec.join else (stderr or default("e")),
                           joined=job.spec.join)

    def field_problem(self, path: str, pwd: str, options: list[str]) -> tuple[str, str] | None:
        """Grid Engine expands $HOME, $USER, $JOB_ID, $JOB_NAME, $HOSTNAME, $TASK_ID in the working
        directory (-wd and -cwd alike, on the execution host) and has no escape for '$': such a job
        would sit in Eqw ("can't chdir"). Refused at submit instead."""
        if "$" in pwd:
            return ("pwd", "Grid Engine expands $VARIABLES in the working directory and cannot escape '$'")
        return None

    # -- submit -------------------------------------------------------------------------------
    def _check(self, job: Job) -> list[str]:
        if not self.options.get("check_paths", True):
            return []
        return check_args("exec" if self.options.get("binary") else "read", job, self.output_files(job))

    def _client_argv(self, job: Job) -> list[str]:
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        qsub, env = self._env(job)
        argv = qsub + ["-terse", "-N", tag(job), "-wd", job.pwd,
                                             "-ac", f"metasched_id={job.id}", *self._output_args(job), *env]
        if self.options.get("binary"):
            argv += ["-b", "y", "-shell", "no"]
        else:
            argv += ["-b", "n"]
            if self.options.get("shell"):
                argv += ["-S", str(self.options["shell"])]
        argv += [str(a) for a in self.options.get("qsub_args", ())]
        argv += self._resource_args(job) + list(job.spec.native)
        argv += [job.path, *job.options]
        return argv

    def _array_line(self, job: Job) -> str:
        """An array: ``qsub -t first-last:step -tc limit`` (held with -h when some tasks must not start yet), with
        what the job asks for (environment, output files with $TASK_ID for %a, resources, native flags), each
        task's. Each task runs the script through a wrapper that sets $METASCHED_ARRAY_TASK_ID from $SGE_TASK_ID.
        In script mode the wrapper is the spooled batch script (read from stdin, -S /bin/sh whatever the queue's
        shell), carrying the script's own #$ directives but its -S, which the wrapper uses to run the script
        (else the ``shell`` option, else /bin/sh); in binary mode it is the binary, as for plain jobs."""
        reason = path_reason(job)
        if reason:
            raise ValueError(reason)
        spec = ArraySpec.parse(job.array_spec, internal=True)
        qsub, env = self._env(job)
        argv = qsub + ["-terse", "-N", tag(job), "-wd", job.pwd, "-ac", f"metasched_id={job.id}",
                       *self._output_args(job), *env,
                       "-t", spec.range_text if spec.first != spec.last else f"{spec.first}-{spec.first}"]
        if spec.limit is not None:
            argv += ["-tc", str(spec.limit)]
        if spec.held:
            argv += ["-h"]
        asks = self._resource_args(job) + list(job.spec.native)
        if self.options.get("binary"):
            argv += ["-b", "y", "-shell", "no"] + [str(a) for a in self.options.get("qsub_args", ())] + asks
            argv += ["/bin/sh", "-c", f'{TASK_ID_VAR}=$SGE_TASK_ID; export {TASK_ID_VAR}; exec "$0" "$@"',
                     job.path, *job.options]
            return command_line(argv)
        argv += ["-b", "n", "-S", "/bin/sh"] + [str(a) for a in self.options.get("qsub_args", ())] + asks
        shell = self.options.get("shell")
        run = f'exec {command_line([str(shell)])} "$@"' if shell else SCRIPT_SHELL
        body = task_wrapper("SGE_TASK_ID", run, job.path, job.options)
        # the script's own #$ lines, but -S (it names the script's interpreter, not the wrapper's)
        return spooled_submit(r"/^#\$[[:space:]]*-S[[:space:]]/d;/^#\$/p", job.path, body, argv)

    def parse_submit(self, job: Job, rc: int, stdout: str, stderr: str) -> str:
        if rc != 0:
            raise SubmitRefused(first_line(stderr, stdout) or f"qsub exited with status {rc}")
        m = _TERSE_ID.match(first_line(stdout))
        if not m:
            # rc 0 without an id: the job may exist. Not a refusal: adoption by tag must decide.
            raise RuntimeError(f"qsub succeeded but printed no job id: {first_line(stdout, stderr)!r}")
        return m.group(1)

    # -- observe ------------------------------------------------------------------------------
    def status_argv(self) -> list[str]:
        return self._cmd("qstat") + ["-u", "*", "-xml"]

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        if rc != 0:
            raise RuntimeError(f"qstat failed ({rc}): {first_line(stderr, stdout)}")
        if not stdout.strip():
            raise RuntimeError("qstat -xml printed nothing (it always prints <job_info> when it works)")
        try:
            root = ET.fromstring(stdout)
        except ET.ParseError as exc:
            raise RuntimeError(f"qstat -xml output is not XML: {exc}") from None
        if root.tag != "job_info":
            raise RuntimeError(f"unexpected qstat -xml root element <{root.tag}>")
        tz = self.options.get("tz", "UTC")
        jobs: dict[str, NativeJob] = {}
        tasks_of: dict[str, tuple[list, list]] = {}
        for el in root.iter("job_list"):
            native_id = (el.findtext("JB_job_number") or "").strip()
            if not native_id:
                continue
            name = el.findtext("JB_name") or ""
            letters = (el.findtext("state") or "").strip()
            state = _state(letters)
            start = el.findtext("JAT_start_time")
            job = NativeJob(
                native_id=native_id,
                **tag_fields(name),
                owner=(el.findtext("JB_owner") or "").strip(),
                name=name,
                state=state,
                queue=(el.findtext("queue_name") or "").strip(),
                start_time=local_to_utc_iso(start, "%Y-%m-%dT%H:%M:%S", tz) if start else None,
                reason=f"{letters}: job in error state (see qstat -j {native_id})"
                if state is NativeState.ERROR else None,
            )
            # Array jobs appear once per running task plus once per pending range: one entry per job id, in
            # the state of its most active line, with every task's line kept (NativeJob.tasks, .pending).
            task_text = (el.findtext("tasks") or "").strip()
            tasks_of.setdefault(native_id, ([], []))
            if task_text:
                try:
                    runs = parse_task_runs(task_text)
                except ValueError:
                    raise RuntimeError(f"qstat -xml: job {native_id} has tasks {task_text!r}") from None
                if state is NativeState.PENDING:
                    tasks_of[native_id][1].extend(PendingRun(a, b, st, held="h" in letters) for a, b, st in runs)
                else:
                    for a, b, st in runs:
                        for t in range(a, b + 1, st):
                            tasks_of[native_id][0].append(NativeTask(
                                t, state, native_id=f"{native_id}.{t}", start_time=job.start_time,
                                held="h" in letters, reason=job.reason))
            prev = jobs.get(native_id)
            if prev is None or _PRIORITY[state] > _PRIORITY[prev.state]:
                jobs[native_id] = job
        return [replace(j, tasks=tuple(tasks_of[n][0]), pending=tuple(tasks_of[n][1])) if tasks_of[n] != ([], [])
                else j for n, j in jobs.items()]

    # -- end state ----------------------------------------------------------------------------
    def final_argv(self, job: Job) -> list[str]:
        return self._cmd("qacct") + ["-j", _native_id(job)]

    def final_by_tag_argv(self, job: Job) -> list[str]:
        """qacct -j also takes a job name: find a job that ran before our dispatch was recorded."""
        return self._cmd("qacct") + ["-j", tag(job)]

    def parse_final_by_tag(self, job: Job, rc: int, stdout: str, stderr: str):
        ours = [r for r in _qacct_records(stdout) if is_tag_of(r.get("jobname"), job) and _is_owner(r, job)]
        if not ours or not ours[-1].get("jobnumber"):
            return None
        native = ours[-1]["jobnumber"]
        fs = self.parse_final(replace(job, scheduler_job_id=native), rc, stdout, stderr)
        return (native, fs) if fs is not None else None

    def parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        """How the job ended, with its start time from accounting (qacct prints the qmaster's local
        time as ``Sat Nov 28 00:03:17 2026``; -1/epoch 0 when it never started)."""
        fs = self._parse_final(job, rc, stdout, stderr)
        if fs is None:
            return None
        ours = [r for r in _qacct_records(stdout)
                if r.get("jobnumber") == job.scheduler_job_id and is_tag_of(r.get("jobname"), job)]
        start = local_to_utc_iso(ours[-1].get("start_time"), "%a %b %d %H:%M:%S %Y",
                                 self.options.get("tz", "UTC")) if ours else None
        if start is not None and start.startswith("1970-"):
            start = None
        return replace(fs, started_at=start)

    def _parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        records = [r for r in _qacct_records(stdout) if r.get("jobnumber") == job.scheduler_job_id]
        # Ids repeat after a spool reset: only records whose name carries our id and token are ours.
        ours = [r for r in records if is_tag_of(r.get("jobname"), job)]
        if not ours:
            # Accounting has not caught up, or the job was qdel'ed before it ran (Grid Engine then never
            # writes a record). Not told apart here: a cancelled job qacct does not know becomes CANCELLED
            # only once the recovery grace has passed (engine/reconcile.py), so that a job that ran and whose
            # record is still being flushed keeps its real end.
            return None
        rec = ours[-1]
        return self._from_record(job, rec)

    def _from_record(self, job: Job, rec: dict[str, str]) -> FinalState:
        failed_text = " ".join(rec.get("failed", "0").split())   # "37  : qmaster enforced h_rt, h_cpu, ..."
        failed = _int(failed_text) or 0
        exit_code = _int(rec.get("exit_status", ""))
        if failed == 0 and exit_code == 0:
            return FinalState("COMPLETED", 0, "")
        if job.cancel_requested:
            return FinalState("CANCELLED", exit_code, "cancelled")
        if failed == 100 and exit_code is not None and exit_code > 128:
            return FinalState("ERROR", exit_code, f"killed (signal {exit_code - 128})")
        if failed != 0:
            return FinalState("ERROR", exit_code, f"failed {failed_text}")
        return FinalState("ERROR", exit_code, f"exit code {exit_code}")

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """The job's qacct records (our tag's only; an array job or a rerun has several: their times span
        them all, CPU and wall time add up, the peak memory is the largest): start_time, end_time,
        hostname, ru_wallclock, ru_utime, ru_stime, cpu, ru_maxrss, exit_status (> 128: killed by signal
        exit_status - 128, qacct(1)); maxvmem and failed as extras."""
        recs = [r for r in _qacct_records(stdout)
                if r.get("jobnumber") == job.scheduler_job_id and is_tag_of(r.get("jobname"), job)]
        if not recs:
            return None
        tz = self.options.get("tz", "UTC")

        def when(r, key):
            t = local_to_utc_iso(r.get(key), "%a %b %d %H:%M:%S %Y", tz)
            return None if t is None or t.startswith("1970-") else t

        def total(key, parse=leading_number):
            vals = [parse(r.get(key)) for r in recs]
            return None if any(v is None for v in vals) else sum(vals)

        starts = [t for t in (when(r, "start_time") for r in recs) if t]
        ends = [t for t in (when(r, "end_time") for r in recs) if t]
        rss = [qacct_bytes(r.get("ru_maxrss"), rusage_kb=True) for r in recs]
        vmem = [qacct_bytes(r.get("maxvmem")) for r in recs]
        hosts = sorted({r["hostname"] for r in recs if r.get("hostname") and r["hostname"] != "NONE"})
        last = recs[-1]
        extra = {"failed": last.get("failed", "").strip()} if last.get("failed", "0").strip() != "0" else {}
        if all(v is not None for v in vmem):
            extra["maxvmem_bytes"] = max(vmem)
        if len(recs) > 1:
            extra["records"] = len(recs)
        return Accounting.of(
            "qacct", extra=extra, start_time=min(starts) if starts else None, end_time=max(ends) if ends else None,
            nodes=",".join(hosts) or None, wall_seconds=total("ru_wallclock"),
            cpu_user_seconds=total("ru_utime"), cpu_system_seconds=total("ru_stime"), cpu_seconds=total("cpu"),
            max_rss_bytes=max(rss) if rss and all(v is not None for v in rss) else None,
            exit_signal=signal_of(_int(last.get("exit_status", ""))))

    # -- cancel -------------------------------------------------------------------------------
    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        return as_user(self._cmd("qdel") + [_native_id(job)], run_as)

    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher(roots_by_comm=("sge_shepherd",), exclude_comm=("sge_execd", "sge_qmaster"),
                              job_ids="sge_shepherd")

    # -- arrays ---------------------------------------------------------------------------------
    supports_arrays = True

    def array_problem(self, pwd: str) -> tuple[str, str] | None:
        return None

    def task_final_entries(self, job: Job, tasks: list[int]) -> list[tuple[list[int], tuple]]:
        """``qacct -j N -t first-last:step`` per run of tasks (qacct reads the whole accounting file each time:
        a few runs per cycle, not one question per task)."""
        nid = _native_id(job)
        out = []
        for a, b, st in compress(tasks):
            covered = list(range(a, b + 1, st))
            argv = self._cmd("qacct") + ["-j", nid, "-t", f"{a}-{b}:{st}"]
            out.append((covered, (None, command_line(argv))))
        return out

    def parse_task_finals(self, job: Job, tasks: list[int], rc: int, stdout: str, stderr: str) -> dict[int, FinalState]:
        wanted = set(tasks)
        ends: dict[int, FinalState] = {}
        for rec in _qacct_records(stdout):
            t = _int(rec.get("taskid", ""))
            if rec.get("jobnumber") != job.scheduler_job_id or t not in wanted or not is_tag_of(rec.get("jobname"), job):
                continue
            fs = self._from_record(job, rec)
            start = local_to_utc_iso(rec.get("start_time"), "%a %b %d %H:%M:%S %Y", self.options.get("tz", "UTC"))
            ends[t] = replace(fs, started_at=None if start is None or start.startswith("1970-") else start)
        return ends

    def task_action_argv(self, job: Job, action: str, tasks: list[int], run_as: str | None) -> list[str]:
        cmd = {"cancel": "qdel", "hold": "qhold", "release": "qrls"}[action]
        nid = _native_id(job)
        lines = [command_line(self._cmd(cmd) + [nid, "-t", f"{a}-{b}:{st}"]) for a, b, st in compress(tasks)]
        return as_user(["sh", "-c", "; ".join(lines)], run_as)

    # -- why it waits: qstat -j's scheduling info (schedd_job_info true in the scheduler's config) ---------
    def pending_reasons_argv(self, native_ids: list[str]) -> list[str]:
        ids = [i for i in native_ids if _NUMERIC_ID.match(i)]
        return self._cmd("qstat") + ["-j", ",".join(ids), "-xml"]

    def parse_pending_reasons(self, rc: int, stdout: str, stderr: str) -> dict[str, str]:
        """native id -> the scheduler's messages about it (and the messages about every job), joined."""
        if not stdout.strip():
            return {}
        try:
            root = ET.fromstring(stdout)
        except ET.ParseError:
            return {}
        ids = [(e.findtext("JB_job_number") or "").strip() for e in root.iter("element")
               if e.find("JB_job_number") is not None and e.find("JB_job_name") is not None]
        per_job: dict[str, list[str]] = {i: [] for i in ids}
        common: list[str] = []
        for lst in root.iter("SME_message_list"):
            for el in lst.findall("element"):
                text = " ".join((el.findtext("MES_message") or "").split())
                for v in el.iter("ULNG_value"):
                    per_job.setdefault((v.text or "").strip(), []).append(text)
        for lst in root.iter("SME_global_message_list"):
            for el in lst.findall("element"):
                common.append(" ".join((el.findtext("MES_message") or "").split()))
        info = [t for t in (root.findtext(".//SME_message") or "").split("\n") if t.strip()]
        out = {}
        for i in ids:
            msgs = per_job.get(i, []) + common
            out[i] = "; ".join(dict.fromkeys(m for m in msgs if m)) or (
                "no scheduling info (Grid Engine's schedd_job_info is off)" if not msgs and not info else "; ".join(info))
        return out


_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)B?\s*$")
_MEM_FACTOR = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def qacct_bytes(text: str | None, rusage_kb: bool = False) -> int | None:
    """A qacct memory field as bytes. qacct prints sizes with decimal prefixes ('3.523MB' = 3,523,000 bytes).
    ru_maxrss is getrusage's, which Linux gives in kilobytes, and qacct prints that number as if it were
    bytes ('4.477KB' is 4,477 KiB): ``rusage_kb`` converts it (checked against jobs of known size on the lab's
    Grid Engine, tests/integration/test_accounting_lab.py)."""
    m = _MEM.match(text or "")
    if not m:
        return None
    value = float(m.group(1)) * _MEM_FACTOR[m.group(2)]
    return int(round(value * 1024 if rusage_kb else value))


def _native_id(job: Job) -> str:
    nid = job.scheduler_job_id or ""
    if not _NUMERIC_ID.match(nid):
        raise ValueError(f"job {job.id}: {nid!r} is not a Grid Engine job number")
    return nid


def _is_owner(record: dict[str, str], job: Job) -> bool:
    """qacct's owner field: anyone can name a job like ours, only the owner's record counts."""
    return record.get("owner", job.owner) == job.owner


def _int(text: str) -> int | None:
    m = _LEADING_INT.match(text or "")
    return int(m.group(1)) if m else None


def _qacct_records(text: str) -> list[dict[str, str]]:
    """qacct -j prints one block per record, separated by lines of '='; each line is ``key  value``."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("=="):
            if current:
                records.append(current)
            current = {}
            continue
        parts = line.split(None, 1)
        if parts:
            current[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    if current:
        records.append(current)
    return records


# -- qsub's options (qsub(1), Son of Grid Engine 8.1.9): how many values each takes ---------------------------
QSUB_ARITY = {o: 0 for o in "-cwd -h -hard -soft -notify -V -terse -verify -help -clear".split()}
QSUB_ARITY |= {o: 1 for o in (
    "-a -ac -A -ar -b -binding -c -ckpt -C -dc -dl -display -e -he -hold_jid -hold_jid_ad -i -j -js -jsv -l -m -M "
    "-masterl -masterq -N -now -o -ot -P -p -pty -q -r -R -sc -shell -S -sync -t -tc -v -w -wd -@").split()}
QSUB_ARITY["-pe"] = 2
_USE = {"name": "metasched sets the job's name: give it in `name`",
        "pwd": "metasched sets the working directory: give it in `pwd`",
        "stdout": "metasched sets the output file: give it in `stdout`",
        "stderr": "metasched sets the error file: give it in `stderr`", "join": "ask for it with `join`",
        "env": "metasched passes the environment: give variables in `env` and the choice in `export`",
        "hold": "metasched holds jobs itself: submit with `hold`",
        "site": "the site sets it (the scheduler's options binary and shell)",
        "none": "nothing would be submitted", "follow": "metasched follows the job itself",
        "context": "metasched keeps its own id in the job's context",
        "array": "array jobs are not tracked by metasched's Grid Engine backend",
        "file": "options read from a file could set any of metasched's own"}
QSUB_OWNED = {
    "-N": _USE["name"], "-wd": _USE["pwd"], "-cwd": _USE["pwd"], "-o": _USE["stdout"], "-e": _USE["stderr"],
    "-j": _USE["join"], "-v": _USE["env"], "-V": _USE["env"], "-h": _USE["hold"], "-terse": "metasched reads the "
    "job id itself", "-b": _USE["site"], "-shell": _USE["site"], "-sync": _USE["follow"], "-verify": _USE["none"],
    "-help": _USE["none"], "-clear": "it would clear metasched's own options", "-@": _USE["file"],
    "-ac": _USE["context"], "-sc": _USE["context"], "-dc": _USE["context"], "-t": _USE["array"], "-tc": _USE["array"],
}
QSUB_RESOURCE_FLAGS = {"-pe": "cores_per_task", "-q": "native_queue", "-P": "account"}
