"""The web console (issue 17 part 4): HTML pages served by FuxiWeb (``fuxi.shells.webactor``,
the head's one HTTP server, beside ``/metrics``) — overview (nodes, resources, platform
events), jobs (per job its DAG as a picture and a timeline of attempts), services (replicas,
versions, health, latency), storage (Pangu usage and chunk health) and coordination (Nuwa
members, leader, lag). No build step: the pages are server-rendered (``fuxi.core.webpages``)
and a few lines of script refresh their ``<main>`` part every ``POLL_MS``.

What a page shows is read from the platform with the viewer's own token: with access control
on (``fuxi up --auth``) the console asks for a login (Zhongkui's authority checks the
password), keeps the token in memory against a random session cookie (HttpOnly,
SameSite=Strict; at most ``CONSOLE_SESSIONS_MAX``; a restarted FuxiWeb forgets them and
browsers sign in again), and FuxiMaster, Pangu and the proxies decide what that user may
read, as for the CLI. Without access control the console is open to whoever reaches its port,
which ``fuxi up`` binds to 127.0.0.1 unless told otherwise.

Every platform call is bounded (``CONSOLE_CALL_TIMEOUT_S``); one that fails is shown on the
page, never a 500. Request targets and bodies are bounded by the server
(``fuxi.shells.web``), a job id or service name is checked before it is used, and only GET
(and the login's POST) are routed: anything else is 405.
"""

from __future__ import annotations

import asyncio
import collections
import html
import logging
import re
import secrets
import time

from base import actors
from base.cluster import MASTER_NAME
from base.errors import Unavailable
from fuxi.errors import NotLeader
from fuxi.core import webpages as wp

logger = logging.getLogger(__name__)

CONSOLE_CALL_TIMEOUT_S = 10.0  # one call the console makes to a platform actor
CONSOLE_SESSIONS_MAX = 1000  # signed-in browsers kept; the oldest is signed out beyond it
CONSOLE_NUWA_REPLICAS_MAX = 9  # Nuwa replicas asked for their status
CONSOLE_PANGU_MASTERS_MAX = 4
SESSION_COOKIE = "fuxi_session"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # job ids, service names
USER_CHARS_MAX = 64
PASSWORD_CHARS_MAX = 1024


class ConsoleApp:
    """The pages and the sign-in; ``routes`` adds them to a ``WebServer``, whose event loop
    (a thread of its own) runs every handler."""

    def __init__(self, cluster: str, namespace: str, auth: bool = False):
        self.cluster = cluster
        self.namespace = namespace
        self.auth = bool(auth)
        self.sessions: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self.served = 0
        self._leader = None  # the serving FuxiMaster's handle, once found

    def routes(self, server) -> None:
        """Add the console's pages to ``server`` (``fuxi.shells.web.WebServer``)."""
        for path, build, title in (
                ("/", self.overview, "overview"), ("/jobs", self.jobs, "jobs"),
                ("/jobs/{job_id}", self.job, "job"), ("/services", self.services, "services"),
                ("/services/{name}", self.service, "service"),
                ("/storage", self.storage, "storage"),
                ("/coordination", self.coordination, "coordination")):
            server.route("GET", path, self._signed_in(self._page(build, title)))
        server.route("GET", "/login", self._login_form)
        server.route("POST", "/login", self._login)
        server.route("GET", "/logout", self._logout)
        server.route("GET", "/healthz", self._healthz)

    def info(self) -> dict:
        return {"served": self.served, "sessions": len(self.sessions), "auth": self.auth}

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _web():
        from aiohttp import web

        return web

    def _session(self, request) -> tuple[str, str] | None:
        sid = request.cookies.get(SESSION_COOKIE, "")
        return self.sessions.get(sid) if sid else None

    def _signed_in(self, handler):
        """Pages need a signed-in browser when access control is on: a page load goes to
        /login, a refresh of its part gets 401 (the page's script then goes to /login)."""
        web = self._web()

        async def guarded(request):
            if self.auth and self._session(request) is None:
                if request.query.get("partial"):
                    return web.Response(status=401, text="sign in first\n")
                raise web.HTTPFound("/login")
            self.served += 1
            return await handler(request)
        return guarded

    def _page(self, build, title: str):
        web = self._web()

        async def handler(request):
            sess = self._session(request)
            cred, user = (sess[1], sess[0]) if sess else (None, None)
            errors: list[str] = []
            try:
                body = await build(request, cred, errors)
            except web.HTTPException:
                raise
            except Exception as e:  # noqa: BLE001 - the page says what failed
                errors.append(f"{type(e).__name__}: {str(e)[:300]}")
                body = wp.errors_html(errors)
            if request.query.get("partial"):
                return web.Response(text=body, content_type="text/html")
            return web.Response(text=wp.frame(title, request.path if title != "job" else
                                              "/jobs", body, user),
                                content_type="text/html",
                                headers={"Content-Security-Policy":
                                         "default-src 'self'; style-src 'unsafe-inline'; "
                                         "script-src 'unsafe-inline'; img-src 'self' data:",
                                         "X-Frame-Options": "DENY",
                                         "X-Content-Type-Options": "nosniff"})
        return handler

    def _master(self):
        """The serving FuxiMaster (blocking: run off the loop). With candidates behind an
        election, the leader (``fuxi.shells.leadership.find_leader``, bounded); the handle is
        kept until a call through it fails."""
        if self._leader is not None:
            return self._leader
        from ray.util import list_named_actors

        from fuxi.shells.leadership import find_leader

        names = sorted((a["name"] for a in list_named_actors(all_namespaces=True)
                        if a.get("namespace") == self.namespace
                        and re.fullmatch(re.escape(MASTER_NAME) + r"(-\d+)?", a["name"])),
                       key=lambda n: (len(n), n))
        if not names:
            raise LookupError(f"FuxiMaster is not running in {self.namespace}")
        self._leader = find_leader(self.namespace, names, timeout_s=CONSOLE_CALL_TIMEOUT_S)
        return self._leader

    async def _ask(self, errors: list, what: str, method: str, *args, cred=None,
                   with_cred: bool = True, actor=None):
        try:
            h = actor if actor is not None else await asyncio.to_thread(self._master)
            kw = {"cred": cred} if with_cred else {}
            try:
                return await actors.acall(getattr(h, method), *args,
                                          timeout_s=CONSOLE_CALL_TIMEOUT_S, **kw)
            except (Unavailable, NotLeader):
                if actor is None:
                    self._leader = None  # a take-over: find the new leader next time
                raise
        except Exception as e:  # noqa: BLE001 - shown on the page
            errors.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
            return None

    @staticmethod
    def _checked(value: str, what: str) -> str:
        web = ConsoleApp._web()
        if not ID_RE.match(value or ""):
            raise web.HTTPBadRequest(text=f"{what} {html.escape(repr(value[:80]))}: expected "
                                          f"letters, digits and _.:- (at most 128)\n")
        return value

    # ------------------------------------------------------------ pages

    async def overview(self, request, cred, errors) -> str:
        info, jobs, services = await asyncio.gather(
            self._ask(errors, "nodes", "cluster_info", with_cred=False),
            self._ask(errors, "jobs", "list_jobs", cred=cred),
            self._ask(errors, "services", "service_list", cred=cred))
        return wp.overview(info, jobs or [], services or [], errors)

    async def jobs(self, request, cred, errors) -> str:
        return wp.jobs_page(await self._ask(errors, "jobs", "list_jobs", cred=cred) or [],
                            errors)

    async def job(self, request, cred, errors) -> str:
        job_id = self._checked(request.match_info["job_id"], "job id")
        st, attempts = await asyncio.gather(
            self._ask(errors, "status", "status", job_id, cred=cred),
            self._ask(errors, "attempts", "job_attempts", job_id, cred=cred))
        if st is None:
            return wp.errors_html(errors)
        return wp.job_page(st, attempts, time.time(), errors)

    async def services(self, request, cred, errors) -> str:
        return wp.services_page(await self._ask(errors, "services", "service_list",
                                                cred=cred) or [], errors)

    async def service(self, request, cred, errors) -> str:
        name = self._checked(request.match_info["name"], "service name")
        st = await self._ask(errors, "service", "service_status", name, cred=cred)
        return wp.service_page(st, errors) if st is not None else wp.errors_html(errors)

    async def storage(self, request, cred, errors) -> str:
        from pangu.client import master_name

        def masters():
            return [h for h in (actors.named_actor(master_name(i), self.namespace)
                                for i in range(1, CONSOLE_PANGU_MASTERS_MAX + 1)) if h]

        hs = await asyncio.to_thread(masters)
        if not hs:
            return wp.storage_page(None, None, errors)
        probe: list[str] = []
        for h in hs:  # the active one answers; standbys say so
            st = await self._ask(probe, "pangu", "status", cred=cred, actor=h)
            if st is not None:
                fs = await self._ask(errors, "fsck", "fsck", "/", cred=cred, actor=h)
                return wp.storage_page(st, fs, errors)
        errors.extend(probe)
        return wp.storage_page({}, None, errors)

    async def coordination(self, request, cred, errors) -> str:
        def replicas():
            from ray.util import list_named_actors

            names = sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                           if a.get("namespace") == self.namespace
                           and re.fullmatch(r"nuwa-\d+", a["name"]))
            return [(n, actors.named_actor(n, self.namespace))
                    for n in names[:CONSOLE_NUWA_REPLICAS_MAX]]

        found = await asyncio.to_thread(replicas)
        sts = await asyncio.gather(*(self._ask(errors, n, "status", with_cred=False, actor=h)
                                     for n, h in found if h is not None))
        if not found:
            errors.append("no Nuwa replica in this cluster (the embedded default and "
                          "`fuxi up --nuwa-replicas 0` run none)")
        return wp.coordination_page([s for s in sts if s], errors)

    # ------------------------------------------------------------ sign-in

    async def _login_form(self, request):
        web = self._web()
        if not self.auth:
            raise web.HTTPFound("/")
        return web.Response(text=wp.login_page(), content_type="text/html")

    async def _login(self, request):
        from zhongkui.actor import AUTHORITY_NAME

        web = self._web()
        if not self.auth:
            raise web.HTTPFound("/")
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - too large or malformed
            return web.Response(status=400, text="a login form: user and password\n")
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        if not (0 < len(user) <= USER_CHARS_MAX and 0 < len(password) <= PASSWORD_CHARS_MAX):
            return web.Response(status=400, text=wp.login_page(
                f"user: 1..{USER_CHARS_MAX} characters, password: 1..{PASSWORD_CHARS_MAX}"),
                content_type="text/html")
        errors: list[str] = []
        zk = await asyncio.to_thread(actors.named_actor, AUTHORITY_NAME, self.namespace)
        token = await self._ask(errors, "login", "login", user, password, with_cred=False,
                                actor=zk) if zk else None
        if not token:
            return web.Response(status=401, text=wp.login_page("wrong user or password"),
                                content_type="text/html")
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = (user, token)
        while len(self.sessions) > CONSOLE_SESSIONS_MAX:
            self.sessions.popitem(last=False)
        resp = web.HTTPFound("/")
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/")
        raise resp

    async def _logout(self, request):
        web = self._web()
        self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        resp = web.HTTPFound("/login" if self.auth else "/")
        resp.del_cookie(SESSION_COOKIE, path="/")
        raise resp

    async def _healthz(self, request):
        return self._web().Response(text="ok\n")
