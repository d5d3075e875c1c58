"""The Zhongkui matrix, run as a driver of a `fuxi up --auth` cluster (in its own process: the
test session's own Ray cluster is another one).

    python -m tests.integration.zk_driver <cluster> <out.json> <secrets.json>

Every public operation of Nuwa, Pangu, Fuxi jobs, services and Kuafu calls is run as each of
{none, malformed, forged, expired, carol (another user, no grant), dave (another user, with the
grant), bob (the owner), admin}; each cell records "ok", "unauth" (the token was refused),
"denied" (a signed-in caller without the permission) or "error: ..." (anything else, a bug).
Then the checks that are not a grid: chunk access tokens, a job reading as its submitter, key
rotation, revocation, the seed's open namespace. The secrets used go to ``secrets.json`` for
the test that greps every log and output for them."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import traceback

CLUSTER = sys.argv[1] if len(sys.argv) > 1 else "zk"
PASSWORDS = {"bob": "bob-Secret-pw-1", "carol": "carol-Secret-pw-2", "dave": "dave-Secret-pw-3"}
IDENTITIES = ("none", "malformed", "forged", "expired", "appended", "revoked", "recreated",
              "carol", "dave", "bob", "admin")
# The malformed cells (issue 14): bob's token with '=' appended; a user granted what dave is,
# then removed; the old token of a user removed and added again. Cheap: no job of their own.
CHEAP_BAD = ("appended", "revoked", "recreated")
REVOKE_WITHIN_S = 5.0  # zhongkui.guard.REVOKE_WITHIN_S: by then every entry point refuses
REVOKE_POLL_S = 0.25
WAIT_S = 60.0  # any wait in this driver
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def classify(e: BaseException) -> str:
    import kuafu
    import nuwa.errors as NE
    import pangu.errors as PE
    from zhongkui.errors import BadCredentials, Denied

    cause = getattr(e, "cause", None)
    if cause is not None:
        e = cause
    if isinstance(e, (BadCredentials, NE.Unauthenticated, PE.Unauthenticated,
                      kuafu.Unauthenticated)):
        return "unauth"
    if isinstance(e, (Denied, NE.Denied, PE.Denied, kuafu.Denied)):
        return "denied"
    return f"error: {type(e).__name__}: {e}"[:300]


def step(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def run(fn) -> str:
    try:
        out = fn()
        if out is False:
            return "hidden"
        return "ok"
    except Exception as e:  # noqa: BLE001 - classified
        return classify(e)


def main() -> None:
    import ray

    import kuafu
    import pangu
    from fuxi.client import FuxiClient
    from fuxi.runtime import cluster_dir, connect, find_cluster, keys_path
    from nuwa.client import connect as nuwa_connect
    from zhongkui.keys import Keyring

    out_path, secrets_path = sys.argv[2], sys.argv[3]
    rec = find_cluster(CLUSTER)
    with open(os.path.join(cluster_dir(CLUSTER), "credentials.json")) as f:
        creds_doc = json.load(f)
    result: dict = {"cells": {}, "checks": {}}
    secrets = {"passwords": [creds_doc["password"], *PASSWORDS.values()], "tokens": []}

    with connect(CLUSTER, embedded_ok=False) as conn:
        master = conn.master

        def m(method, *args, **kw):
            return ray.get(getattr(master, method).remote(*args, **kw), timeout=WAIT_S)

        authority = conn.authority

        def z(method, *args, **kw):
            return ray.get(getattr(authority, method).remote(*args, **kw), timeout=WAIT_S)

        admin = creds_doc["token"]
        for u, pw in PASSWORDS.items():
            z("user_add", admin, u, pw, [])
        tok = {"admin": admin, "none": "", "malformed": "not-a-token"}
        for u, pw in PASSWORDS.items():
            tok[u] = z("login", u, pw)
        tok["appended"] = tok["bob"] + "="
        for u in ("rex", "rita"):
            z("user_add", admin, u, f"{u}-Secret-pw-9", [])
            secrets["passwords"].append(f"{u}-Secret-pw-9")
        tok["revoked"] = z("login", "rex", "rex-Secret-pw-9")
        tok["recreated"] = z("login", "rita", "rita-Secret-pw-9")
        # A forged token: bob's, promoted to the administrators, with bob's signature kept.
        head, sig = tok["bob"].split(".")
        payload = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        payload["grp"] = ["admins"]
        forged = base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True,
                                                     separators=(",", ":")).encode())
        tok["forged"] = forged.rstrip(b"=").decode() + "." + sig
        # An expired one, signed with the cluster's own key (the test is the operator).
        with open(keys_path(CLUSTER)) as f:
            ring = Keyring.from_doc(json.load(f))
        tok["expired"] = ring.sign("bob", [], now=time.time() - 7200, ttl_s=60)
        secrets["tokens"] = [t for t in tok.values() if len(t) > 20]

        addrs = [tuple(a) for a in rec.nuwa]

        def nw(who):
            return nuwa_connect(addrs, creator="driver", token=tok[who])

        def pg(who):
            return pangu.Client(CLUSTER, token=tok[who])

        def fx(who):
            return FuxiClient(master, CLUSTER, token=tok[who])

        # ---------------------------------------------------------------- set-up, as bob
        step('set-up, as bob')
        bob_nw = nw("bob")
        bob_nw.create("/apps/bob/", b"", parents=True)
        z("restrict", tok["bob"], "/apps/bob", True)
        bob_nw.create("/apps/bob/x", b"bob's value")
        for who in IDENTITIES:
            bob_nw.create(f"/apps/bob/d-{who}", b"")
        for u in ("dave", "rex", "rita"):
            z("grant", tok["bob"], "nuwa", "/apps/bob", f"user:{u}",
              ["read", "write", "create", "delete"])
        bob_nw.create("/open/", b"")
        bob_nw.create("/open/f", b"bob")

        pg("admin").mkdir("/home")
        z("grant", admin, "pangu", "/home", "user:bob", ["create"])
        bob_pg = pg("bob")
        bob_pg.mkdir("/home/bob")
        with bob_pg.open("/home/bob/f", "wb") as f:
            f.write(b"bob's file " * 1000)
        with bob_pg.open("/home/bob/g", "wb") as f:
            f.write(b"another file")
        for who in IDENTITIES:
            with bob_pg.open(f"/home/bob/r-{who}", "wb") as f:
                f.write(b"r")
            with bob_pg.open(f"/home/bob/del-{who}", "wb") as f:
                f.write(b"d")
            with bob_pg.open(f"/home/bob/t-{who}", "wb") as f:
                f.write(b"truncate me")
        for u in ("dave", "rex", "rita"):
            z("grant", tok["bob"], "pangu", "/home/bob", f"user:{u}",
              ["read", "write", "create", "delete"])

        # Jobs: only granted users submit (the default everyone-submits entry is revoked).
        step("jobs")
        z("revoke", admin, "queue", "*", "*", None)
        z("grant", admin, "queue", "default", "user:bob", ["submit"])
        z("grant", admin, "queue", "default", "user:dave", ["submit", "view", "cancel"])
        sleepy = {"name": "zk-sleepy", "params": {"dir": "/tmp/zk-driver-marks", "sleep_s": 300},
                  "tasks": {"t": {"fn": "tests.integration.taskfns:sleepy", "instances": 1,
                                  "resources": {"cpu": 0}, "max_retries": 0}}}
        noop = {"name": "zk-noop", "tasks": {"t": {"fn": "tests.integration.taskfns:noop",
                                                   "instances": 1, "resources": {"cpu": 0}}}}
        bob_fx = fx("bob")
        j1 = bob_fx.submit(noop)
        bob_fx.wait(j1, timeout_s=WAIT_S)
        cancel_jobs = {who: bob_fx.submit(sleepy) for who in IDENTITIES if who not in CHEAP_BAD}
        for who in CHEAP_BAD:  # their tokens are refused before any job is looked at
            cancel_jobs[who] = cancel_jobs["none"]
        for u in ("rex", "rita"):
            z("grant", admin, "queue", "default", f"user:{u}", ["submit", "view", "cancel"])

        # Services: bob's echo, callable and manageable by dave.
        step("services")
        from fuxi.core.service_spec import service_spec_from_dict

        def svc_doc(name: str, replicas: int) -> dict:
            doc = service_spec_from_dict({
                "name": name, "class": "jobs.services.echo:Echo", "replicas": replicas,
                "resources": {"cpu": 0}, "drain_grace_s": 1.0,
                "health_check": {"period_s": 1, "timeout_s": 2}}).to_doc()
            doc["workdir"] = REPO
            return doc

        m("service_register", svc_doc("zkecho", 1), cred=tok["bob"])
        for u in ("dave", "rex", "rita"):
            z("grant", tok["bob"], "service", "zkecho", f"user:{u}", ["call", "manage"])
        # rex goes; rita goes and comes back (a new account: her old token names nobody).
        z("user_rm", admin, "rex")
        z("user_rm", admin, "rita")
        z("user_add", admin, "rita", "rita-Secret-pw-9", [])
        revoked_at = time.time()
        deadline = time.time() + WAIT_S
        while m("service_status", "zkecho", cred=admin)["ready"] < 1:
            assert time.time() < deadline, "zkecho never became ready"
            time.sleep(0.3)

        def call(who, method="echo"):
            with kuafu.connect(f"nuwa://{CLUSTER}/zkecho", credentials=tok[who],
                               timeout_s=20) as c:
                return c.call(method, b"hi", idempotent=True)

        server_id = pg("admin").status()["servers"][0]["id"]

        # ---------------------------------------------------------------- the grid
        def grid(who):
            n, p, j = nw(who), pg(who), fx(who)
            ops = {
                "nuwa.get": lambda: n.get("/apps/bob/x"),
                "nuwa.list": lambda: n.list("/apps/bob/"),
                "nuwa.stat": lambda: n.stat("/apps/bob/x"),
                "nuwa.exists": lambda: n.exists("/apps/bob/x"),
                "nuwa.create": lambda: n.create(f"/apps/bob/c-{who}", b"v"),
                "nuwa.set": lambda: n.set("/apps/bob/x", b"changed"),
                "nuwa.delete": lambda: n.delete(f"/apps/bob/d-{who}"),
                "nuwa.txn": lambda: n.txn([{"op": "check", "path": "/apps/bob/x", "exists": True},
                                           {"op": "set", "path": "/apps/bob/x", "value": b"t"}]),
                "nuwa.watch": lambda: _watch(n, bob_nw),
                "pangu.ls": lambda: p.ls("/home/bob"),
                "pangu.stat": lambda: p.stat("/home/bob/f"),
                "pangu.exists": lambda: p.exists("/home/bob/f"),
                "pangu.du": lambda: p.du("/home/bob"),
                "pangu.truncate": lambda: p.truncate(f"/home/bob/t-{who}", 4),
                "pangu.fsck": lambda: p.fsck("/home/bob"),
                "pangu.drain": lambda: p.call("drain", server_id, False),
                "pangu.read": lambda: p.open("/home/bob/f", "rb").read(),
                "pangu.write": lambda: _write(p, f"/home/bob/w-{who}", "wb"),
                "pangu.append": lambda: _write(p, "/home/bob/g", "ab"),
                "pangu.mkdir": lambda: p.mkdir(f"/home/bob/m-{who}"),
                "pangu.rename": lambda: p.mv(f"/home/bob/r-{who}", f"/home/bob/r2-{who}"),
                "pangu.delete": lambda: p.rm(f"/home/bob/del-{who}"),
                "job.submit": lambda: j.submit(noop),
                "job.status": lambda: j.status(j1),
                "job.wait": lambda: j.wait(j1, timeout_s=5),
                "job.logs": lambda: j.logs(j1),
                "job.list": lambda: any(s["job_id"] == j1 for s in j.list()),
                "job.cancel": lambda: j.cancel(cancel_jobs[who]),
                "service.status": lambda: m("service_status", "zkecho", cred=tok[who] or None),
                "service.list": lambda: any(s["name"] == "zkecho" for s in
                                            m("service_list", cred=tok[who] or None)),
                "service.scale": lambda: m("service_scale", "zkecho", 1, cred=tok[who] or None),
                "service.register": lambda: m("service_register", svc_doc(f"zk-{who}", 0),
                                              cred=tok[who] or None),
                "kuafu.call": lambda: call(who),
                "acl.grant": lambda: z("grant", tok[who], "nuwa", "/apps/bob",
                                       "user:carol", ["read"]),
                "user.add": lambda: z("user_add", tok[who], f"u-{who}", "password-123",
                                      []),
                "audit.read": lambda: z("audit", tok[who]),
                # `fuxi debug kill` asks this before it kills (the approval alone kills nothing)
                "debug.kill": lambda: z("approve", tok[who], "kill agent", "node:zk-grid"),
            }
            row = {}
            for op, fn in ops.items():
                step(f"{op} as {who}")
                row[op] = run(fn)
            return row

        time.sleep(max(0.0, revoked_at + REVOKE_WITHIN_S - time.time()))
        for who in IDENTITIES:
            result["cells"][who] = grid(who)
        # carol's acl.grant must not have stuck, and neither an admin's: undo the admin's.
        z("revoke", admin, "nuwa", "/apps/bob", "user:carol", None)

        checks = result["checks"]
        # ------------------------------------------------ the service sees who calls
        step('the service sees who calls')
        checks["caller_dave"] = call("dave", "caller")
        checks["caller_bob"] = call("bob", "caller")

        # ------------------------------------------------ the seed's open namespace
        car = nw("carol")
        checks["open_create"] = run(lambda: car.create("/open/carol", b"c"))
        checks["open_write_other"] = run(lambda: car.set("/open/f", b"carol was here"))
        checks["protected_read_users"] = run(lambda: car.list("/fuxi/zhongkui/users/"))
        checks["protected_write_fuxi"] = run(lambda: car.create("/fuxi/evil", b""))
        checks["services_dir_read"] = run(lambda: car.list("/services/"))
        checks["creator_is_verified"] = car.stat("/open/carol")["creator"]
        # The open namespace does not reach into protected prefixes by deleting their parent.
        checks["delete_root_recursive"] = run(lambda: car.delete("/", recursive=True))
        checks["delete_apps_recursive"] = run(lambda: car.delete("/apps/", recursive=True))
        checks["platform_intact"] = bool(nw("admin").list("/fuxi/"))
        # A recursive watch on an open prefix does not carry changes under protected ones.
        w = car.watch("/", recursive=True)
        z("user_add", admin, "eve", "eve-password-1", [])
        bob_nw.set("/open/f", b"after the watch")
        seen = []
        deadline = time.time() + 10
        while time.time() < deadline and "/open/f" not in seen:
            try:
                seen.append(w.next(timeout_s=2)["path"])
            except Exception:  # noqa: BLE001 - nothing yet
                pass
        w.cancel()
        checks["watch_root_sees_open"] = "/open/f" in seen
        checks["watch_root_hides_protected"] = not any(p.startswith("/fuxi/") for p in seen)
        # Another user's session cannot be closed (it holds their ephemeral nodes).
        sess = bob_nw.session(30.0)
        checks["close_other_session"] = run(lambda: car._run(car._async._call(
            {"op": "session_close", "cmd": {"op": "session_close", "session": sess.id}},
            True)))
        checks["close_own_session"] = run(lambda: bob_nw._run(sess.close()))

        # ------------------------------------------------ chunk access tokens
        step('chunk access tokens')
        info_f = bob_pg.call("locate", "/home/bob/f")
        info_g = bob_pg.call("locate", "/home/bob/g")
        cf, cg = info_f["chunks"][0], info_g["chunks"][0]
        server = bob_pg.server(cf["replicas"][0]["name"])
        server_g = bob_pg.server(cg["replicas"][0]["name"])

        def read(srv, chunk, access):
            return ray.get(srv.read.remote(chunk["id"], chunk["version"], 0, 4, access=access),
                           timeout=WAIT_S)

        checks["chunk_own_token"] = run(lambda: read(server, cf, cf["access"]))
        checks["chunk_other_chunk"] = run(lambda: read(server_g, cg, cf["access"]))
        expired_access = ring.sign("bob", [], now=time.time() - 7200, ttl_s=600,
                                   scope={"kind": "chunk", "id": cf["id"], "mode": "r"})
        checks["chunk_expired"] = run(lambda: read(server, cf, expired_access))
        checks["chunk_no_token"] = run(lambda: read(server, cf, ""))
        checks["chunk_user_token"] = run(lambda: read(server, cf, tok["bob"]))
        checks["chunk_write_with_read_token"] = run(lambda: ray.get(server.write.remote(
            cf["id"], cf["version"], 0, [ray.put(b"x")], "t", 1, access=cf["access"]),
            timeout=WAIT_S))
        secrets["tokens"] += [cf["access"], cg["access"], expired_access]

        # ------------------------------------------------ a job reads as its submitter
        step('a job reads as its submitter')
        reader = {"name": "zk-reader", "params": {"cluster": CLUSTER, "path": "/home/bob/f"},
                  "tasks": {"t": {"fn": "tests.integration.taskfns:read_pangu", "instances": 1,
                                  "resources": {"cpu": 0}, "max_retries": 0}}}
        z("grant", admin, "queue", "default", "user:carol", ["submit"])
        jc = fx("carol").submit(reader)
        stc = fx("carol").wait(jc, timeout_s=WAIT_S)
        logs = fx("carol").logs(jc)
        checks["job_as_carol"] = stc["state"]
        checks["job_as_carol_denied_in_logs"] = any("may not read pangu:/home/bob/f"
                                                    in json.dumps(r) for r in logs)
        jb = bob_fx.submit(reader)
        checks["job_as_bob"] = bob_fx.wait(jb, timeout_s=WAIT_S)["state"]

        # ------------------------------------------------ revocation takes effect
        step('revocation takes effect')
        z("revoke", tok["bob"], "nuwa", "/apps/bob", "user:dave", None)
        dave_nw = nw("dave")
        checks["revoked_nuwa"] = _until_refused(lambda: dave_nw.get("/apps/bob/x"))
        z("revoke", tok["bob"], "pangu", "/home/bob", "user:dave", None)
        dave_pg = pg("dave")
        checks["revoked_pangu"] = _until_refused(lambda: dave_pg.stat("/home/bob/f"))

        # ------------------------------------------------ key rotation
        step('key rotation')
        old_bob = tok["bob"]
        z("rotate", admin)
        new_bob = z("login", "bob", PASSWORDS["bob"])
        secrets["tokens"].append(new_bob)
        checks["rotated_kid_differs"] = (json.loads(base64.urlsafe_b64decode(
            new_bob.split(".")[0] + "==="))["kid"] != json.loads(base64.urlsafe_b64decode(
                old_bob.split(".")[0] + "==="))["kid"])
        for label, t in (("new", new_bob), ("old", old_bob)):
            tok["bob"] = t
            checks[f"rotation_{label}_nuwa"] = run(lambda: nw("bob").get("/apps/bob/x"))
            checks[f"rotation_{label}_pangu"] = run(lambda: pg("bob").open("/home/bob/f",
                                                                           "rb").read())
            checks[f"rotation_{label}_job"] = run(lambda: fx("bob").status(j1))
            checks[f"rotation_{label}_call"] = run(lambda: call("bob"))
        tok["bob"] = old_bob

        # ------------------------------------------------ platform actors, from inside
        step('platform actor methods called from a plain Ray task')
        checks["actor_calls"] = _actor_calls(rec.namespace, tok, cancel_jobs["carol"],
                                             pg("admin").status())

        # ------------------------------------------------ revocation at every entry point
        step('revocation at every entry point')
        checks["revocation"] = _revocations(z, tok, admin, nw, pg, fx, call, bob_pg, j1,
                                            secrets)

        # ------------------------------------------------ the trail
        step('the trail')
        trail = z("audit", admin, None, "denied")
        checks["audit_denials"] = len(trail)
        checks["audit_from_nuwa"] = any("at nuwa-" in r["detail"] for r in trail)
        checks["audit_from_pangu"] = any("at pangu-" in r["detail"] for r in trail)
        checks["audit_from_kuafu"] = any("at kuafu-" in r["detail"] for r in trail)
        for jid in cancel_jobs.values():
            try:
                fx("admin").cancel(jid)
            except Exception:  # noqa: BLE001 - already cancelled in the grid
                pass
        # ------------------------------------------------ rotate-keys --revoke-old, last
        # (it ends every token signed before, the administrator's and the services' too)
        step('rotate-keys --revoke-old')
        checks["revoke_old"] = _revoke_old(z, tok, admin, creds_doc, nw, pg, fx, call, bob_pg,
                                           j1, secrets)
        admin = tok["admin"]
        for n_ in ("zkecho", *[f"zk-{w}" for w in IDENTITIES]):
            try:
                m("service_remove", n_, cred=admin)
            except Exception:  # noqa: BLE001 - not registered (denied in the grid)
                pass

    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(secrets_path, "w") as f:
        json.dump(secrets, f)


def _refused_within(fn) -> dict:
    """Call ``fn`` until it is refused; how it was refused and how long after the revocation
    (the caller revoked just before)."""
    t0 = time.time()
    got = "ok"
    while time.time() < t0 + 3 * REVOKE_WITHIN_S:
        got = run(fn)
        if got != "ok":
            break
        time.sleep(REVOKE_POLL_S)
    return {"result": got, "after_s": round(time.time() - t0, 2)}


def _entry_points(tok_of, nw, pg, fx, call_as, bob_pg, j1):
    """One call per entry point as a user who may make it; connections opened before the
    revocation are kept (their verified principal is cached there)."""
    import ray

    info = bob_pg.call("locate", "/home/bob/f")
    chunk = info["chunks"][0]
    n, p = nw(tok_of), pg(tok_of)
    access = p.call("locate", "/home/bob/f")["chunks"][0]["access"]
    server = bob_pg.server(chunk["replicas"][0]["name"])
    return {
        "nuwa": lambda: n.get("/apps/bob/x"),
        "pangu": lambda: p.stat("/home/bob/f"),
        "chunkserver": lambda: ray.get(server.read.remote(chunk["id"], chunk["version"], 0, 4,
                                                          access=access), timeout=WAIT_S),
        "fuxi": lambda: fx(tok_of).status(j1),
        "kuafu": lambda: call_as(tok_of),
    }, access


def _revocations(z, tok, admin, nw, pg, fx, call, bob_pg, j1, secrets) -> dict:
    """(a) the user removed, (b) out of the group that granted access, (c) out of admins:
    each entry point refuses a token that worked, within REVOKE_WITHIN_S."""
    out = {}
    z("user_add", admin, "ra", "ra-Secret-pw-1", [])
    z("user_add", admin, "rg", "rg-Secret-pw-1", ["zkg"])
    z("user_add", admin, "rd", "rd-Secret-pw-1", ["admins"])
    secrets["passwords"] += ["ra-Secret-pw-1", "rg-Secret-pw-1", "rd-Secret-pw-1"]
    for principal in ("user:ra", "group:zkg"):
        z("grant", tok["bob"], "nuwa", "/apps/bob", principal, ["read"])
        z("grant", tok["bob"], "pangu", "/home/bob", principal, ["read"])
        z("grant", tok["bob"], "service", "zkecho", principal, ["call"])
        z("grant", admin, "queue", "default", principal, ["view"])
    how = {"removed": ("ra", lambda: z("user_rm", admin, "ra")),
           "group": ("rg", lambda: z("user_groups", admin, "rg", [])),
           "admins": ("rd", lambda: z("user_groups", admin, "rd", []))}
    for case, (user, revoke) in how.items():
        tok[user] = z("login", user, f"{user}-Secret-pw-1")
        secrets["tokens"].append(tok[user])

        calls, access = _entry_points(user, nw, pg, fx, call, bob_pg, j1)
        secrets["tokens"].append(access)
        out[f"{case}_before"] = {ep: run(fn) for ep, fn in calls.items()}
        revoke()
        out[case] = {ep: _refused_within(fn) for ep, fn in calls.items()}
    return out


def _revoke_old(z, tok, admin, creds_doc, nw, pg, fx, call, bob_pg, j1, secrets) -> dict:
    """(d) `fuxi rotate-keys --revoke-old`: every token signed before is refused at every
    entry point; a new login works. The administrator logs in again (the CLI's token file
    too, for the tests that follow)."""
    from fuxi.runtime import TOKEN_FILE, cluster_dir, write_private

    calls, access = _entry_points("bob", nw, pg, fx, call, bob_pg, j1)
    secrets["tokens"].append(access)
    out = {"before": {ep: run(fn) for ep, fn in calls.items()}}
    z("rotate", admin, True)
    out["after"] = {ep: _refused_within(fn) for ep, fn in calls.items()}
    out["old_admin"] = run(lambda: z("whoami", admin))
    new_admin = tok["admin"] = z("login", "admin", creds_doc["password"])
    tok["bob"] = z("login", "bob", PASSWORDS["bob"])
    secrets["tokens"] += [new_admin, tok["bob"]]
    out["new_login"] = run(lambda: nw("bob").get("/apps/bob/x"))
    write_private(os.path.join(cluster_dir(CLUSTER), TOKEN_FILE), new_admin)
    return out


def _actor_calls(namespace, tok, other_job, pangu_status) -> dict:
    """Every state-changing control method of the platform's actors, called from a plain Ray
    task inside the cluster without a platform token (none, and bob's): each refused."""
    import ray

    @ray.remote(num_cpus=0)
    def attack(namespace, creds, other_job, chunkserver):
        from ray.util import list_named_actors

        import pangu.errors as PE
        from zhongkui.errors import BadCredentials, Denied

        refusals = (BadCredentials, Denied, PE.Denied, PE.Unauthenticated)  # typed, each

        def h(name):
            if name == "FuxiMaster":  # the serving candidate (a standby answers NotLeader first)
                from fuxi.runtime import master_candidates
                from fuxi.shells.leadership import find_leader

                return find_leader(namespace, master_candidates([1]))
            return ray.get_actor(name, namespace=namespace)
        proxy = next(a["name"] for a in list_named_actors(all_namespaces=True)
                     if a.get("namespace") == namespace and a["name"].startswith("kuafu-proxy-"))
        replica = next(a["name"] for a in list_named_actors(all_namespaces=True)
                       if a.get("namespace") == namespace and a["name"].startswith("fuxi-svc-"))
        node = ray.get_runtime_context().get_node_id()
        evil = {"namespace": namespace, "nuwa": [["127.0.0.1", 9]], "host": "0.0.0.0",
                "settings": {}, "detached": True}
        calls = {
            "fuxi.shutdown_jobs": lambda c: h("FuxiMaster").shutdown_jobs.remote(c),
            "fuxi.sync_other_job": lambda c: h("FuxiMaster").sync.remote(
                other_job, 50, {}, [], [], cred=c),
            "zhongkui.bootstrap": lambda c: h("ZhongkuiAuthority").bootstrap.remote(c),
            "zhongkui.keys": lambda c: h("ZhongkuiAuthority").keys.remote(c),
            "zhongkui.acl": lambda c: h("ZhongkuiAuthority").acl.remote(c),
            "fuxi.set_keys": lambda c: h("FuxiMaster").zk_set_keys.remote(c, {"keys": {}}),
            "fuxi.set_acl": lambda c: h("FuxiMaster").zk_set_acl.remote(
                c, {"version": 10 ** 9, "entries": []}),
            "fuxi.owner_of": lambda c: h("FuxiMaster").owner_of.remote(c, "job", other_job),
            "fuxi.kuafu_start_node": lambda c: h("FuxiMaster").kuafu_start_node.remote(
                node, evil, c),
            "jobmaster.cancel": lambda c: h(f"jobmaster-{other_job}").cancel.remote(
                "attack", cred=c),
            "jobmaster.run": lambda c: h(f"jobmaster-{other_job}").run.remote(c),
            "nuwa.stop": lambda c: h("nuwa-1").stop.remote(cred=c),
            "nuwa.set_peers": lambda c: h("nuwa-1").set_peers.remote({}, cred=c),
            "nuwa.start": lambda c: h("nuwa-1").start.remote(0, cred=c),
            "nuwa.set_keys": lambda c: h("nuwa-1").zk_set_keys.remote(c, {"keys": {}}),
            "pangu.master_stop": lambda c: h("pangu-master-1").stop.remote(cred=c),
            "pangu.master_start": lambda c: h("pangu-master-1").start.remote(cred=c),
            "pangu.maintain_once": lambda c: h("pangu-master-1").maintain_once.remote(cred=c),
            "chunkserver.start": lambda c: h(chunkserver).start.remote([], cred=c),
            "chunkserver.corrupt": lambda c: h(chunkserver).corrupt_for_test.remote(
                "c", 0, cred=c),
            "chunkserver.delete": lambda c: h(chunkserver).delete.remote(["c"], cred=c),
            "kuafu.shutdown": lambda c: h(proxy).shutdown.remote(cred=c),
            # A service replica's control calls take FuxiMaster's control key, not a token.
            "replica.drain": lambda c: h(replica).drain.remote(0.1, c),
            "replica.register": lambda c: h(replica).register.remote(c or "", c),
            "kuafu.set_keys": lambda c: h(proxy).zk_set_keys.remote(c, {"keys": {}}),
        }
        out = {}
        for name, fn in calls.items():
            for label, c in creds.items():
                try:
                    ray.get(fn(c), timeout=30)
                    out[f"{name} as {label}"] = "allowed"
                except refusals as e:
                    out[f"{name} as {label}"] = f"refused: {type(e).__name__}"
                except Exception as e:  # noqa: BLE001 - anything else is a finding
                    out[f"{name} as {label}"] = f"error: {type(e).__name__}: {e}"[:200]
        return out

    return ray.get(attack.remote(namespace, {"none": None, "bob": tok["bob"]}, other_job,
                                 pangu_status["servers"][0]["name"]), timeout=5 * WAIT_S)


def _until_refused(fn, timeout_s: float = 10.0) -> str:
    """Call ``fn`` until it is refused (guards see a revoke within their ACL refresh)."""
    deadline = time.time() + timeout_s
    got = "ok"
    while time.time() < deadline:
        got = run(fn)
        if got != "ok":
            break
        time.sleep(0.2)
    return got


def _watch(client, owner_client) -> None:
    """Watch bob's prefix and see one change (a refused watch raises on its first next)."""
    w = client.watch("/apps/bob/", recursive=True)
    try:
        owner_client.set("/apps/bob/x", b"watched")
        w.next(timeout_s=10)
    finally:
        w.cancel()


def _write(client, path: str, mode: str) -> None:
    with client.open(path, mode) as f:
        f.write(b"written by the matrix")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    # Leave at once: clients left open by the grid must not touch Ray after it shut down
    # (Ray would start a local instance to serve them).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
