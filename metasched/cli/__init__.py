"""``metasched``: the users' command line for the metasched service.

The parser lives here, and ``main`` is the one place that turns errors into exit statuses:
0 done, 1 the service refused (its description is printed) or could not be reached, 2 usage or local
setup error (argparse's own errors, an unsafe token file), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..model import Policy
from . import commands as C
from .client import Client, CliError, resolve_endpoint
from .render import escape, use_colour
from .usage import cmd_history, cmd_top, cmd_usage
from .watch import cmd_watch

EPILOG = """\
connection:
  By default the CLI talks to the service's unix socket (--socket, else $METASCHED_SOCKET, else
  /run/metasched/api.sock): the service knows who you are from the socket, no password or token needed.
  From elsewhere give --url (or $METASCHED_URL) and a token ($METASCHED_TOKEN, or the file
  ~/.config/metasched/token, mode 600) made with `metasched token create` on the frontend.
  Precedence: --socket or --url, then $METASCHED_URL, then $METASCHED_SOCKET.

exit status:
  0 done; 1 the service refused (its reason is printed) or could not be reached;
  2 usage error or unsafe local setup (e.g. a token file others can read); 130 interrupted.
  `watch ID` exits 0 when the job COMPLETED and 1 when it ended otherwise.
"""


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted both before and after the command name. On the subcommands their defaults are
    suppressed (so a value given before the command is not overwritten by the subcommand's default) and,
    except --json, so is their help: `metasched --help` explains them once."""
    d = {"default": argparse.SUPPRESS} if suppress else {}

    def h(text: str) -> str:
        return argparse.SUPPRESS if suppress else text

    g = parser.add_argument_group("connection and output") if not suppress else parser
    g.add_argument("--socket", metavar="PATH", help=h("service socket (default $METASCHED_SOCKET or "
                                                      "/run/metasched/api.sock)"), **({"default": None} | d))
    g.add_argument("--url", metavar="URL", help=h("service URL instead of the socket (default $METASCHED_URL)"),
                   **({"default": None} | d))
    g.add_argument("--token-file", metavar="FILE", help=h("token for --url (default $METASCHED_TOKEN, "
                                                          "else ~/.config/metasched/token)"),
                   **({"default": None} | d))
    g.add_argument("--json", action="store_true", help="print the API's JSON instead of tables",
                   **({"default": False} | d))


SUB_EPILOG = "--socket, --url, --token-file: see `metasched --help`."


def spec_options(s: argparse.ArgumentParser, export_default: str | None = "ALL") -> None:
    """What a job asks for: the options of submit (and edit). One line of help each (`submit --help` stays short)."""
    g = s.add_argument_group("what the job asks for (a scheduler refuses what it cannot honour)")
    g.add_argument("--nodes", type=int, metavar="N", help="nodes")
    g.add_argument("--tasks", type=int, metavar="N", help="tasks in all")
    g.add_argument("--cores", type=int, metavar="N", help="CPU cores per task")
    g.add_argument("--mem", metavar="SIZE", help="memory per node: 512M, 4G")
    g.add_argument("--time", metavar="T", help="walltime: seconds, [D-]HH:MM:SS, 30m, 2h")
    g.add_argument("--gpus", type=int, metavar="N", help="GPUs per node")
    g.add_argument("--partition", metavar="P", help="the scheduler's own queue or partition")
    g.add_argument("--account", metavar="A", help="the account or project charged")
    g.add_argument("--native", action="append", metavar="F",
                   help="scheduler flags, split like a shell: '-l a=b'")
    g.add_argument("--export", metavar="E", default=export_default,
                   help=("ALL (default), NONE or NAME[=VALUE],... as sbatch" if export_default else
                         "ALL, NONE or NAME[=VALUE],... as sbatch"))
    g.add_argument("--env", action="append", metavar="N=V", help="one more variable (repeat)")
    g.add_argument("--output", "-o", metavar="PATH", help="stdout file (%%j: job id, %%x: name, %%a: array task)")
    g.add_argument("--error", "-e", metavar="PATH", help="stderr file (the same patterns)")
    g.add_argument("--join", "-j", action="store_true", help="stderr into the stdout file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metasched", description="Submit and follow jobs on the cluster's metascheduler.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__
    p.add_argument("--version", action="version", version=f"metasched {__version__}")
    _common(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, func, help: str, description: str | None = None, usage: str | None = None,
            help_position: int = 24) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description or help, epilog=SUB_EPILOG, usage=usage,
                            formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
                                prog, max_help_position=help_position))
        _common(sp, suppress=True)
        sp.set_defaults(func=func)
        return sp

    # submit has many options (its own, what the job asks for, workflows): one line each, within 40 lines
    s = cmd("submit", C.cmd_submit, "submit a job script",
            "Submit SCRIPT (made absolute) with ARGS: all after SCRIPT is its own. The job\n"
            "gets your environment (not SUDO_*, METASCHED_*); SCRIPT and pwd are checked.\n"
            "An array's tasks each get $METASCHED_ARRAY_TASK_ID.",
            usage="metasched submit [options] SCRIPT [ARGS...]", help_position=27)
    s.add_argument("--queue", "-q", metavar="Q", help="queue name or id (needed when there are several)")
    s.add_argument("--name", "-n", help="job name (default: the script's file name)")
    s.add_argument("--pwd", metavar="DIR", help="working directory (default: the current directory)")
    s.add_argument("--hold", action="store_true", help="submit held: not dispatched until `release`")
    s.add_argument("--array", metavar="SPEC",
                   help="tasks FIRST[-LAST[:STEP]][%%LIMIT], e.g. 1-1000:2%%50")
    for kind, what in (("ok", "jobs (or ID.TASK) COMPLETED"), ("notok", "ended ERROR or CANCELLED"),
                       ("any", "ended, however"), ("started", "started (or ended)")):
        s.add_argument(f"--after-{kind}", action="append", metavar="ID[,ID]", default=None,
                       help=f"wait until these {what}")
    s.add_argument("--parsable", action="store_true", help="print only the job id")
    s.add_argument("--no-check", action="store_true", help="no checks here: the files are on the nodes only")
    s.add_argument("--mail-type", metavar="T", help="tell when: BEGIN,END,FAIL,ALL,NONE as sbatch (default END)")
    s.add_argument("--mail-user", metavar="ADDR", help="mail those events to ADDR")
    s.add_argument("--notify-url", metavar="URL", help="POST them to URL, signed (`show` says the secret)")
    spec_options(s)
    s.add_argument("script", metavar="SCRIPT", help=argparse.SUPPRESS)       # the description says it
    s.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    s = cmd("jobs", C.cmd_jobs, "list your jobs (admins: --all for everyone's)")
    s.add_argument("--state", "-s", action="append", metavar="STATE",
                   help=f"only these states (repeat, or a comma list): {', '.join(C.STATES)}")
    s.add_argument("--queue", "-q", help="only this queue (name or id)")
    s.add_argument("--all", "-a", action="store_true", help="everyone's jobs (admins)")
    s.add_argument("--owner", "-u", help="this user's jobs (admins, or yourself)")
    s.add_argument("--limit", type=int, default=500, help="at most this many jobs, oldest first (default 500)")
    s.add_argument("--newest", "-r", action="store_true", help="newest first (with --limit: the newest N)")
    s.add_argument("--columns", "-o", metavar="COLS",
                   help=f"the columns to show, a comma list of: {', '.join(C.JOB_COLUMNS)} (default: "
                        f"{','.join(C.DEFAULT_COLUMNS)}, owner too with --all or --owner)")
    s.add_argument("--wide", "-w", action="store_true",
                   help="the classic columns (owner, native id) and nothing cut to fit the terminal")
    s.add_argument("--foreign", "-f", action="store_true",
                   help="jobs submitted to the schedulers directly (plain qsub, sbatch): seen, never touched")
    s.add_argument("--expand", "-x", action="store_true", help="every task of each array on its own line")

    ref = C.job_ref
    s = cmd("show", C.cmd_show, "show one job (or one task of an array: ID.TASK): what it asks for, and where its "
                                "output goes")
    s.add_argument("id", type=ref, metavar="ID[.TASK]", help="job id, or ID.TASK")
    s = cmd("output", C.cmd_output, "print a job's output (its stdout, or its stderr)",
            "Print a job's stdout (--stderr: its stderr), read by the service as the job's\n"
            "owner on the scheduler's master node, where the job writes it; an array's\n"
            "tasks each have their own: ID.TASK. --tail N: the last N lines only;\n"
            "--follow: go on printing what it writes until the job (the task) ends.")
    s.add_argument("id", type=ref, metavar="ID[.TASK]", help="job id, or ID.TASK for a task of an array")
    s.add_argument("--stderr", "-e", action="store_true", help="the job's stderr instead of its stdout")
    s.add_argument("--tail", "-n", type=int, metavar="N", help="only the last N lines")
    s.add_argument("--follow", "-f", action="store_true", help="go on printing until the job has ended")
    s.add_argument("--raw", action="store_true",
                   help="another user's output (admins) is shown with control characters escaped on a terminal; "
                        "--raw shows it as it is")
    s = cmd("events", C.cmd_events, "show a job's history (every state change and why)")
    s.add_argument("id", type=ref, metavar="ID[.TASK]", help="job id, or ID.TASK for one task's history")
    s = cmd("why", C.cmd_why, "why a job (or a task) is still waiting",
            "Say why ID (or task ID.TASK of an array) is not running yet: the policy's own reason now, its\n"
            "dependencies, a hold, a throttle, its place in its queue; in the scheduler's queue, the\n"
            "scheduler's own pending reason.")
    s.add_argument("id", type=ref, metavar="ID[.TASK]", help="job id, or ID.TASK")
    s = cmd("cancel", C.cmd_cancel, "cancel jobs (or tasks of an array: ID.TASK)",
            "Cancel each job (an array: all its tasks; ID.TASK: one). One not yet dispatched is cancelled at\n"
            "once; a dispatched one is cancelled in its scheduler shortly. Each ID is reported; the exit status\n"
            "is 1 if any was refused.")
    s.add_argument("ids", type=ref, nargs="+", metavar="ID[.TASK]", help="job ids, or ID.TASK")
    s = cmd("hold", C.cmd_hold, "hold a job (or an array's task, ID.TASK) that is waiting")
    s.add_argument("id", type=ref, metavar="ID[.TASK]", help="job id, or ID.TASK")
    s = cmd("release", C.cmd_release, "release a held job (or task)")
    s.add_argument("id", type=ref, metavar="ID[.TASK]", help="job id, or ID.TASK")

    s = cmd("edit", C.cmd_edit, "change a job that has not been dispatched yet",
            "Change a waiting or held job. --args comes last: all after it are the script's\n"
            "arguments (alone: none); or one at a time with --arg=VALUE. Resources change one\n"
            "by one; --native, --export/--env, --output, --error replace the job's.",
            usage="metasched edit ID [options] [--args ARGS...]")
    s.add_argument("id", type=int, metavar="ID", help="job id")
    s.add_argument("--name", "-n", help="new name")
    s.add_argument("--queue", "-q", metavar="Q", help="new queue (name or id)")
    s.add_argument("--script", metavar="S", help="new script path")
    s.add_argument("--pwd", metavar="DIR", help="new working directory")
    s.add_argument("--arg", action="append", metavar="VALUE", help="one argument (repeat for several)")
    spec_options(s, export_default=None)
    s.add_argument("--args", nargs=argparse.REMAINDER, metavar="ARG", help="all arguments (must come last)")

    s = cmd("queues", C.cmd_queues, "list the queues (one per scheduler) with job counts",
            "The queues and their jobs per state: WAIT (waiting or held in metasched), QUEUED\n"
            "(in the scheduler's queue), RUN, DONE (completed), ERR, and DIRECT: jobs sent\n"
            "to the scheduler directly, pending/running. --wide: a column for every state.")
    s.add_argument("--wide", "-w", action="store_true", help="every state in a column of its own")
    cmd("nodes", C.cmd_nodes, "list the cluster's nodes")

    s = cmd("mode", C.cmd_mode, "show the cluster policy; `mode set` changes it (admins)")
    msub = s.add_subparsers(dest="mode_action", metavar="set")
    ms = msub.add_parser("set", epilog=SUB_EPILOG, help="change the policy, the high-priority queue or weights (admins)",
                         description="Change the cluster policy (admins). Give any of POLICY, --high-priority, "
                                     "--weight.")
    _common(ms, suppress=True)
    ms.add_argument("policy", nargs="?", choices=[x.value for x in Policy], metavar="POLICY",
                    help=f"one of {', '.join(x.value for x in Policy)}")
    ms.add_argument("--high-priority", metavar="QUEUE", help="queue name or id first served by best_effort "
                                                             "('none' to clear)")
    ms.add_argument("--weight", action="append", metavar="QUEUE=W", help="CPU weight 0..100 of a queue "
                                                                         "(shared, dynamic); repeat")
    ms.add_argument("--dry-run", action="store_true", help="change nothing: show what the proposed mode would "
                                                           "dispatch now and the CPU shares on every node")

    s = cmd("watch", cmd_watch, "live view of queues and your active jobs, or of one job",
            "Follow the service's event stream: the view is drawn again when something happens (at most\n"
            "every --interval seconds) until Ctrl-C. With ID, follow that job and stop when it ends: exit\n"
            "status 0 if it COMPLETED, 1 otherwise. A restart of the service is ridden out: watch says\n"
            "\"service restarting, reconnecting\" once and goes on where it was. --json: one event per line.")
    s.add_argument("id", type=int, nargs="?", metavar="ID", help="follow this job until it ends")
    s.add_argument("--interval", "-i", type=float, default=2.0, help="at most one refresh per this many seconds "
                                                                      "(default 2)")
    s.add_argument("--all", "-a", action="store_true", help="everyone's jobs (admins)")
    s.add_argument("--queue", "-q", help="only this queue's jobs")
    s.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")

    s = cmd("history", cmd_history, "the jobs that ended: when, where, CPU time and peak memory (like sacct)",
            "The jobs that ended in a window, newest first, as their schedulers accounted them: start, end,\n"
            "elapsed (wall) time, CPU time, peak memory (MAXRSS), nodes, exit code. A figure the scheduler\n"
            "did not report is '-'; `show ID` says where each figure came from.")
    s.add_argument("--since", "-S", default="1d", metavar="WHEN",
                   help="ended at or after: 30m, 12h, 2d, 1w ago or a date/time (local), default 1d")
    s.add_argument("--until", "-E", metavar="WHEN", help="ended before (default: now)")
    s.add_argument("--state", "-s", action="append", metavar="STATE",
                   help="only these final states (repeat, or a comma list): COMPLETED, ERROR, CANCELLED")
    s.add_argument("--queue", "-q", help="only this queue (name or id)")
    s.add_argument("--all", "-a", action="store_true", help="everyone's jobs (admins)")
    s.add_argument("--owner", "-u", help="this user's jobs (admins, or yourself)")
    s.add_argument("--limit", type=int, default=500, help="at most this many jobs, newest first (default 500)")

    s = cmd("usage", cmd_usage, "what the jobs that ended used, per user or queue, and the CPU split per node",
            "Totals of the jobs that ended in a window: jobs, completed, failed, cancelled, failure rate\n"
            "(failed among completed + failed), CPU-hours, wall-hours, wait (submit to start) p50 and p95;\n"
            "then per node and scheduler the CPU share it had next to the share the policy targeted. Your\n"
            "own jobs; admins see everyone's (or one user's with --owner).")
    s.add_argument("--since", "-S", default="1d", metavar="WHEN", help="default 1d (see history)")
    s.add_argument("--until", "-E", metavar="WHEN", help="default now")
    s.add_argument("--by", choices=["user", "queue"], default="user", help="group by user (default) or queue")
    s.add_argument("--owner", "-u", help="one user's jobs (admins)")

    s = cmd("top", cmd_top, "live view of the running jobs' CPU and memory, and the nodes'",
            "Refresh every --interval seconds until Ctrl-C: the nodes' cpu, memory and disk, and your\n"
            "running jobs, busiest first: CPU % over the last poll cycle, CPU time so far, memory now and\n"
            "its peak, as the node agents measure them.")
    s.add_argument("--interval", "-i", type=float, default=2.0, help="seconds between refreshes (default 2)")
    s.add_argument("--all", "-a", action="store_true", help="everyone's jobs (admins)")
    s.add_argument("--queue", "-q", help="only this queue's jobs")
    s.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    s.add_argument("--once", action="store_true", help="print one frame and exit")

    s = cmd("token", C.cmd_token, "API tokens for using metasched from elsewhere (--url)")
    tsub = s.add_subparsers(dest="token_action", metavar="{create,list,revoke}", required=True)
    t = tsub.add_parser("create", help="make a token; its secret is printed once",
                        description="Make a token and print its secret once, alone on stdout, so that\n"
                                    "  (umask 077; metasched token create > ~/.config/metasched/token)\n"
                                    "stores it where --url looks for it.",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SUB_EPILOG)
    _common(t, suppress=True)
    t.add_argument("--description", "-d", help="what it is for")
    t.add_argument("--days", type=float, help="lifetime in days (default: the service's, usually 30)")
    t.add_argument("--user", help="for another user (admins)")
    t = tsub.add_parser("list", epilog=SUB_EPILOG, help="list your tokens (admins: everyone's)")
    _common(t, suppress=True)
    t = tsub.add_parser("revoke", epilog=SUB_EPILOG, help="revoke a token at once")
    _common(t, suppress=True)
    t.add_argument("id", type=int, metavar="ID", help="token id (see `token list`)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        endpoint = resolve_endpoint(args.socket, args.url, args.token_file)
        ctx = C.Context(Client(endpoint), endpoint, json=args.json, colour=use_colour())
        return args.func(args, ctx)
    except CliError as exc:
        print(f"metasched: {escape(exc.message)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:      # `metasched jobs | head`: not an error; keep Python quiet at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


__all__ = ["main", "build_parser"]
