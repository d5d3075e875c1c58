"""Entry point of the ``fuxi`` command."""

from __future__ import annotations

from typing import Optional

import typer

from cli import alerts, auth, call, cluster, config, debug, events, job, node, nuwa, pangu, queue, service, submit, top, validate

app = typer.Typer(
    name="fuxi",
    help="Fuxi: batch DAG jobs and services on Ray (a re-creation of the Feitian kernel).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        import fuxi

        typer.echo(f"fuxi {fuxi.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(cluster: Optional[str] = typer.Option(
              None, "--cluster", help="The cluster every command talks to unless it names one "
                                      "with -c; default $FUXI_CLUSTER, the cluster at "
                                      "$RAY_ADDRESS, or 'default'."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Fuxi: batch DAG jobs and services on Ray (a re-creation of the Feitian kernel).

    Exit codes: 0 success, 1 the job or call failed, 2 bad input, 3 the platform is
    unavailable or refused (no cluster, unreachable, auth), 4 a wait timed out, 130 Ctrl-C."""
app.command("submit")(submit.submit)
app.command("up")(cluster.up)
app.command("down")(cluster.down)
app.command("status")(cluster.status)
app.command("top")(top.top)
app.command("validate")(validate.validate)
app.command("alerts")(alerts.alerts)
app.command("call")(call.call)
app.command("events")(events.events)
app.add_typer(events.explain_app, name="explain", help="The story of a job's instance or a "
                                                       "service's replica: where, why, what happened.")
app.command("login")(auth.login)
app.command("whoami")(auth.whoami)
app.command("audit")(auth.audit)
app.add_typer(auth.acl_app, name="acl", help="Access control entries: grant, revoke, show, restrict (Zhongkui).")
app.command("rotate-keys")(auth.rotate_keys)
app.add_typer(auth.user_app, name="user", help="Users of a cluster: add, rm, list, passwd (Zhongkui).")
app.add_typer(job.app, name="job", help="List, inspect, cancel jobs and read their logs.")
app.add_typer(node.app, name="node", help="The cluster's nodes: list (free resources, blacklist, drain state), drain, undrain.")
app.add_typer(queue.app, name="queue", help="Queues (quota groups) where jobs wait for room: list, set, rm, limit.")
app.add_typer(nuwa.app, name="nuwa", help="The Nuwa coordination service: ls, get, put, rm, stat, watch.")
app.add_typer(service.app, name="service", help="Online services: register, list, status, scale, upgrade, remove.")
app.add_typer(debug.app, name="debug", help="Fault injection on a running cluster: kill a "
                                            "master, JobMaster, agent, worker or node.")
app.add_typer(config.app, name="config", help="The cluster's configuration: show (with sources), set (online settings), reference.")
app.add_typer(pangu.app, name="pangu", help="The Pangu file system: ls, put, get, cat, rm, mkdir, mv, stat, du, fsck.")


def main() -> None:
    from zhongkui.files import private_files

    private_files()  # everything this process writes under $FUXI_HOME: 0600/0700 (issue 14)
    # Standalone: usage errors exit 2, and Ctrl-C exits 130 (EXIT_INTERRUPTED; typer's own
    # mapping, which commands that follow a job use too). The name makes completion's
    # variable _FUXI_COMPLETE however the command was started (`python -m cli.main`).
    app(prog_name="fuxi")


if __name__ == "__main__":
    main()
