"""``fuxi debug kill master | jobmaster <job> | agent <node> | worker <job> [<worker>] |
node <node>``: fault injection on a running cluster (issue 16 part 8), for operators who
want to see the platform recover. An administrator's command when access control is on;
every kill is recorded in the audit trail (`fuxi audit`). Never the embedded default: it
lives only as long as one command, so there is nothing there to kill.

Exit codes: 0 killed; 2 for a malformed request or nothing that matches (the message says
what was wrong and where to look: `fuxi job list`, `fuxi node list`); 1 when refused
(not an administrator, not confirmed) or when the cluster cannot be reached."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cli.common import EXIT_BAD_INPUT, ClusterOpt, fail, handle, print_json

app = typer.Typer(no_args_is_help=True)
kill_app = typer.Typer(no_args_is_help=True)
app.add_typer(kill_app, name="kill", help="Kill a FuxiMaster, a JobMaster, an agent, a worker "
                                          "or a node during a run (administrators only).")

YesOpt = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
JsonOpt = typer.Option(False, "--json", help="Print what was killed as JSON.")


def run_kill(cluster: str, kind: str, ident: str | None = None, which: str | None = None,
             yes: bool = False, no_restart: bool = False, as_json: bool = False) -> dict:
    """Find the target, ask (unless ``yes``), have Zhongkui approve and record it, kill."""
    from base.cluster import namespace
    from fuxi.client import FuxiClient
    from fuxi.errors import NoCluster
    from fuxi.runtime import connect, find_cluster
    from fuxi.shells import chaos
    from zhongkui import creds

    try:
        if find_cluster(cluster) is None:
            raise NoCluster(f"no running cluster {cluster!r}: `fuxi debug kill` acts on a "
                            f"cluster started with `fuxi up`; the embedded default lives only "
                            f"as long as one command, so it has nothing to kill")
        with connect(cluster, embedded_ok=False) as conn:
            c = chaos.Chaos(namespace(cluster), FuxiClient(conn.master, cluster))
            target = c.find(kind, ident, which, no_restart=no_restart)
            if not yes:
                if not sys.stdin.isatty():
                    fail(f"would kill {target.what}; pass --yes to do it without a terminal "
                         f"to confirm on", EXIT_BAD_INPUT)
                typer.echo(f"about to kill {target.what}\n  then: {target.after}")
                if not typer.confirm("kill it?", default=False):
                    fail("not killed", 1)
            who = chaos.authorize(conn.authority, creds.token(cluster), target)
            out = target.execute()
            out["by"] = who
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)
    if as_json:
        print_json(out)
    else:
        typer.echo(f"killed {out['killed']}\n  then: {out['after']}")
    return out


@kill_app.command("master")
def kill_master(no_restart: bool = typer.Option(
                    False, "--no-restart",
                    help="Ray does not start it again (default: it does, and the new one "
                         "adopts the running jobs)."),
                yes: bool = YesOpt, as_json: bool = JsonOpt, cluster: str = ClusterOpt) -> None:
    """Kill the leading FuxiMaster's process; a standby takes over where there is one (else
    Ray restarts it), and the running jobs are adopted."""
    run_kill(cluster, "master", yes=yes, no_restart=no_restart, as_json=as_json)


@kill_app.command("jobmaster")
def kill_jobmaster(job_id: str = typer.Argument(..., help="A running job (`fuxi job list`)."),
                   yes: bool = YesOpt, as_json: bool = JsonOpt, cluster: str = ClusterOpt) -> None:
    """Kill a job's JobMaster; FuxiMaster starts a new one from the job's checkpoint."""
    run_kill(cluster, "jobmaster", job_id, yes=yes, as_json=as_json)


@kill_app.command("agent")
def kill_agent(node_id: str = typer.Argument(..., help="A node id or a unique prefix "
                                                       "(`fuxi node list`)."),
               yes: bool = YesOpt, as_json: bool = JsonOpt, cluster: str = ClusterOpt) -> None:
    """Kill a node's FuxiAgent: the node shows missing, then FuxiMaster deploys a new agent."""
    run_kill(cluster, "agent", node_id, yes=yes, as_json=as_json)


@kill_app.command("worker")
def kill_worker(job_id: str = typer.Argument(..., help="A running job (`fuxi job list`)."),
                worker: Optional[str] = typer.Argument(
                    None, help="Its process id or the start of its Ray actor id (left out: "
                               "one of the job's workers)."),
                yes: bool = YesOpt, as_json: bool = JsonOpt, cluster: str = ClusterOpt) -> None:
    """Kill one worker process of a job (SIGKILL, on the machine that runs it)."""
    run_kill(cluster, "worker", job_id, worker, yes=yes, as_json=as_json)


@kill_app.command("node")
def kill_node(node_id: str = typer.Argument(..., help="A node id or a unique prefix "
                                                      "(`fuxi node list`); never the head."),
              yes: bool = YesOpt, as_json: bool = JsonOpt, cluster: str = ClusterOpt) -> None:
    """Kill a node that is not the head: its raylet, its workers and its other Ray processes
    (SIGKILL, on the machine that runs them)."""
    run_kill(cluster, "node", node_id, yes=yes, as_json=as_json)


__all__ = ["app", "run_kill", "EXIT_BAD_INPUT"]
