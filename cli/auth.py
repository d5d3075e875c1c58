"""``fuxi login``, ``fuxi whoami``, ``fuxi user add|rm|list|passwd``, ``fuxi audit``:
identities on a running cluster (Zhongkui). `fuxi up` creates the first administrator and
writes its credentials to ``$FUXI_HOME/<cluster>/credentials.json`` (0600); `fuxi login`
stores a token in ``$FUXI_HOME/<cluster>/token`` (0600), which these commands send."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from cli.common import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, ClusterOpt, fail, master_call, print_json

user_app = typer.Typer(no_args_is_help=True)
PASSWORD_STDIN_BYTES_MAX = 1024


def _call(cluster: str, method: str, *args):
    return master_call(cluster, method, *args, needs="signing in", actor="authority")


def _token_path(cluster: str) -> str:
    from fuxi.runtime import TOKEN_FILE, cluster_dir

    return os.path.join(cluster_dir(cluster), TOKEN_FILE)


def _token(cluster: str) -> str:
    from zhongkui import creds

    tok = creds.token(cluster)
    if not tok:
        fail(f"not signed in to cluster {cluster!r}: run `fuxi login` (the administrator's "
             f"credentials are in $FUXI_HOME/{cluster}/credentials.json)", EXIT_UNAVAILABLE)
    return tok


def _password(password_stdin: bool, prompt: str) -> str:
    if password_stdin:
        text = sys.stdin.read(PASSWORD_STDIN_BYTES_MAX + 1)
        if len(text) > PASSWORD_STDIN_BYTES_MAX:
            fail(f"a password on stdin is at most {PASSWORD_STDIN_BYTES_MAX} bytes", EXIT_BAD_INPUT)
        return text.rstrip("\n")
    return typer.prompt(prompt, hide_input=True)


def login(user: str = typer.Option("admin", "--user", "-u"),
          password_stdin: bool = typer.Option(False, "--password-stdin",
                                               help="Read the password from stdin."),
          cluster: str = ClusterOpt) -> None:
    """Sign in; the token is kept for later commands (0600)."""
    from fuxi.runtime import write_private

    token = _call(cluster, "login", user, _password(password_stdin, "Password"))
    write_private(_token_path(cluster), token)
    typer.echo(f"signed in as {user}")


def whoami(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """The signed-in user, their groups and when the token expires."""
    me = _call(cluster, "whoami", _token(cluster))
    if as_json:
        print_json(me)
    else:
        typer.echo(f"{me['user']} (groups: {', '.join(me['groups']) or '-'})")


@user_app.command("add")
def user_add(name: str, groups: Optional[List[str]] = typer.Option(None, "--group", "-g"),
             password_stdin: bool = typer.Option(False, "--password-stdin"),
             cluster: str = ClusterOpt) -> None:
    """Add a user (administrators only)."""
    _call(cluster, "user_add", _token(cluster), name,
          _password(password_stdin, f"Password for {name}"), list(groups or []))
    typer.echo(f"added {name}")


@user_app.command("rm")
def user_rm(name: str, cluster: str = ClusterOpt) -> None:
    """Remove a user (administrators only)."""
    _call(cluster, "user_rm", _token(cluster), name)
    typer.echo(f"removed {name}")


@user_app.command("groups")
def user_groups(name: str, groups: Optional[List[str]] = typer.Option(None, "--group", "-g"),
                cluster: str = ClusterOpt) -> None:
    """Replace a user's groups (administrators only; no -g: no groups). Every entry point
    decides with the new groups within revoke_within_s (5 s)."""
    u = _call(cluster, "user_groups", _token(cluster), name, list(groups or []))
    typer.echo(f"{name}: groups {', '.join(u['groups']) or '-'}")


@user_app.command("list")
def user_list(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Users and their groups (never their password hashes)."""
    users = _call(cluster, "users", _token(cluster))
    if as_json:
        print_json(users)
        return
    for u in users:
        typer.echo(f"{u['name']:<24} {', '.join(u['groups'])}")


@user_app.command("passwd")
def user_passwd(name: str, password_stdin: bool = typer.Option(False, "--password-stdin"),
                cluster: str = ClusterOpt) -> None:
    """Change a password (your own, or anyone's as an administrator)."""
    _call(cluster, "passwd", _token(cluster), name,
          _password(password_stdin, f"New password for {name}"))
    typer.echo(f"password of {name} changed")


def audit(who: Optional[str] = typer.Option(None, "--who"),
          result: Optional[str] = typer.Option(None, "--result", help="ok or denied"),
          as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Denied and administrative operations (administrators only)."""
    import datetime as dt

    recs = _call(cluster, "audit", _token(cluster), who, result)
    if as_json:
        print_json(recs)
        return
    for r in recs:
        when = dt.datetime.fromtimestamp(r["time"]).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{when} {r['who']:<16} {r['result']:<7} {r['action']} {r['resource']}"
                   f"{' (' + r['detail'] + ')' if r['detail'] else ''}")


acl_app = typer.Typer(no_args_is_help=True)
KIND_HELP = "nuwa, pangu (path prefixes), job (id or *), queue (name or *), service (name or *)"


def _perms(perms: str) -> list[str]:
    out = [p.strip() for p in perms.split(",") if p.strip()]
    if not out:
        fail(f"permissions {perms!r}: expected a comma-separated list, e.g. read,write",
             EXIT_BAD_INPUT)
    return out


@acl_app.command("grant")
def acl_grant(kind: str = typer.Argument(..., help=KIND_HELP),
              resource: str = typer.Argument(..., help="A path prefix, id or name (* for all)."),
              principal: str = typer.Argument(..., help="user:<name>, group:<name> or *"),
              perms: str = typer.Argument(..., help="Comma-separated: read,write,create,delete,"
                                                    "admin | submit,view,cancel | call,manage"),
              cluster: str = ClusterOpt) -> None:
    """Grant permissions on a resource (its owner or an administrator)."""
    e = _call(cluster, "grant", _token(cluster), kind, resource, principal, _perms(perms))
    typer.echo(f"{e['principal']} may {','.join(e['perms'])} {e['kind']}:{e['resource']}")


@acl_app.command("revoke")
def acl_revoke(kind: str = typer.Argument(..., help=KIND_HELP),
               resource: str = typer.Argument(...),
               principal: str = typer.Argument(..., help="user:<name>, group:<name> or *"),
               perms: Optional[str] = typer.Argument(None, help="Comma-separated; all if left "
                                                                "out."),
               cluster: str = ClusterOpt) -> None:
    """Take permissions back (its owner or an administrator)."""
    e = _call(cluster, "revoke", _token(cluster), kind, resource, principal,
              _perms(perms) if perms is not None else None)
    typer.echo(f"{principal} on {kind}:{resource}: "
               + (f"{','.join(e['perms'])} left" if e else "no permissions left"))


@acl_app.command("show")
def acl_show(kind: Optional[str] = typer.Argument(None, help=KIND_HELP),
             resource: Optional[str] = typer.Argument(None, help="Entries covering this."),
             as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """ACL entries (and the restricted Nuwa prefixes)."""
    doc = _call(cluster, "acl_show", _token(cluster), kind, resource)
    if as_json:
        print_json(doc)
        return
    for e in doc["entries"]:
        typer.echo(f"{e['kind']:<8} {e['resource']:<32} {e['principal']:<20} "
                   f"{','.join(e['perms'])}")
    for p in doc["restricted"]:
        typer.echo(f"restricted nuwa {p}")


@acl_app.command("restrict")
def acl_restrict(path: str = typer.Argument(..., help="A Nuwa path prefix."),
                 undo: bool = typer.Option(False, "--undo", help="Open it again."),
                 cluster: str = ClusterOpt) -> None:
    """Close a Nuwa prefix to the open namespace: only its owner, administrators and ACL
    entries reach it (its owner or an administrator)."""
    _call(cluster, "restrict", _token(cluster), path, not undo)
    typer.echo(f"{path} is {'open again' if undo else 'restricted'}")


def rotate_keys(revoke_old: bool = typer.Option(
                    False, "--revoke-old",
                    help="After a leak: every earlier key stops verifying at once, so every "
                         "earlier token is refused everywhere within 5 s (log in again)."),
                cluster: str = ClusterOpt) -> None:
    """A new signing key (administrators only); tokens signed before stay valid until they
    expire, unless --revoke-old."""
    kid = _call(cluster, "rotate", _token(cluster), revoke_old)
    if revoke_old:
        typer.echo(f"new signing key {kid}; every earlier key is revoked: log in again")
    else:
        typer.echo(f"new signing key {kid}; earlier tokens stay valid until they expire")
