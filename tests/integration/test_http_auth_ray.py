"""The HTTP front door on a Ray cluster with Zhongkui access control on (issue 20 part 3):
`fuxi up --auth` (its own Ray head, in subprocesses), a service registered by the
administrator, two users signed in with `fuxi login` -- one granted `call` on it, one not --
and real `curl` at the head's front door: no token 401, a garbage Authorization header 401
(never 500), a forged or truncated token 401, the user without the grant 403, the granted one
200 with the right body (the service sees who called), and after that user is removed, the
same token 401 within Zhongkui's revocation bound."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.integration.clihelpers import fuxi

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

CLUSTER = "httpauth"
CURL = shutil.which("curl") or "curl"
CURL_TIMEOUT_S = 60
READY_TIMEOUT_S = 120
REVOKE_WITHIN_S = 5.0  # zhongkui.guard.REVOKE_WITHIN_S
REVOKE_SLACK_S = 10.0  # a loaded 2-core machine


def curl(url: str, *args: str) -> tuple[int, str, str]:
    """(status, body, response headers) of one request."""
    out = subprocess.run([CURL, "-s", "-S", "-D", "/dev/stderr", "-o", "-", "-w",
                          "\n%{http_code}", *args, url], capture_output=True, text=True,
                         timeout=CURL_TIMEOUT_S)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body, out.stderr


def _login(home, user: str, password: str) -> str:
    fuxi(home, "login", "--user", user, "--password-stdin", "-c", CLUSTER, stdin=password)
    return (home / CLUSTER / "token").read_text().strip()


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    home = tmp_path_factory.mktemp("http-auth-home")
    up = fuxi(home, "up", "--auth", "--nuwa-replicas", "1", "--num-cpus", "2", "-c", CLUSTER)
    try:
        assert "access control is on" in up.stdout, up.stdout
        admin_pw = json.loads((home / CLUSTER / "credentials.json").read_text())["password"]
        admin = _login(home, "admin", admin_pw)
        for user in ("carol", "dave"):
            fuxi(home, "user", "add", user, "--password-stdin", "-c", CLUSTER,
                 stdin=f"{user}s-password")
        st = json.loads(fuxi(home, "service", "register", "jobs/services/echo.yaml", "--set",
                             "replicas=1", "--json", "-c", CLUSTER).stdout)
        deadline = time.time() + READY_TIMEOUT_S
        while st["ready"] < 1 or st["starting"]:
            assert time.time() < deadline, st
            time.sleep(1.0)
            st = json.loads(fuxi(home, "service", "status", "echo", "--json", "-c",
                                 CLUSTER).stdout)
        fuxi(home, "acl", "grant", "service", "echo", "user:dave", "call", "-c", CLUSTER)
        carol = _login(home, "carol", "carols-password")
        dave = _login(home, "dave", "daves-password")
        _login(home, "admin", admin_pw)  # the operator again, for what follows
        url = json.loads(fuxi(home, "status", "--json", "-c", CLUSTER).stdout)["http"]
        assert url and url.startswith("http://"), url
        yield {"home": home, "url": url, "admin": admin, "carol": carol, "dave": dave}
    finally:
        down = fuxi(home, "down", "-c", CLUSTER, check=False)
        assert down.returncode == 0, down.stderr


def _call(door, method: str, *args: str) -> tuple[int, str, str]:
    return curl(f"{door['url']}/v1/services/echo/{method}", "-H",
                "Content-Type: application/json", "-d", '{"word": "the"}', *args)


def _bearer(token: str) -> tuple[str, str]:
    return "-H", f"Authorization: Bearer {token}"


def test_no_token_and_garbage_headers_are_401_never_500(door):
    st, body, headers = _call(door, "echo")
    assert st == 401 and json.loads(body)["error"]["type"] == "Unauthenticated", body
    assert "www-authenticate: bearer" in headers.lower()
    garbage = ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", "bearer \t", "Bearer a b c",
               "Bearer " + "x" * 4000, "Bearer ....", "Bearer \u00e9t\u00e9".encode().decode(
                   "latin-1"), "Token " + door["dave"], "Bearer " + door["dave"][:-4],
               "Bearer " + door["dave"] + "x", "Bearer " + door["dave"][::-1]]
    for value in garbage:
        st, body, _ = _call(door, "echo", "-H", f"Authorization: {value}")
        assert st == 401, (value[:40], st, body[:300])
        assert json.loads(body)["error"]["type"] == "Unauthenticated", body[:300]
    # Two Authorization headers (a valid one first): refused, whichever a reader would take.
    st, body, _ = _call(door, "echo", *_bearer(door["dave"]), "-H", "Authorization: Bearer x")
    assert st == 400 and json.loads(body)["error"]["type"] == "BadRequest", (st, body[:300])


def test_a_token_without_the_grant_is_403_and_a_granted_one_200(door):
    st, body, _ = _call(door, "echo", *_bearer(door["carol"]))
    assert st == 403 and json.loads(body)["error"]["type"] == "Denied", body
    st, body, _ = _call(door, "echo", *_bearer(door["dave"]))
    assert st == 200 and json.loads(body) == {"word": "the"}, body
    st, body, _ = _call(door, "caller", *_bearer(door["dave"]))
    assert st == 200 and "dave" in json.loads(body), body  # the service saw who called
    st, body, _ = _call(door, "echo", *_bearer(door["admin"]))  # the owner
    assert st == 200 and json.loads(body) == {"word": "the"}, body


def test_a_removed_users_token_is_401_within_the_revocation_bound(door):
    st, _, _ = _call(door, "echo", *_bearer(door["dave"]))
    assert st == 200
    fuxi(door["home"], "user", "rm", "dave", "-c", CLUSTER)
    removed_at = time.monotonic()
    while True:
        st, body, _ = _call(door, "echo", *_bearer(door["dave"]))
        if st == 401:
            break
        assert st == 200, (st, body[:300])  # nothing else on the way
        assert time.monotonic() - removed_at < REVOKE_WITHIN_S + REVOKE_SLACK_S, \
            "a removed user's token still works"
        time.sleep(0.25)
    print(f"revoked after {time.monotonic() - removed_at:.1f}s")
    assert json.loads(body)["error"]["type"] == "Unauthenticated", body
