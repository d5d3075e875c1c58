"""The HTTP front door on a real (simulated two-node) Ray cluster: proxies started by
``kuafu.deploy.start`` with ``http_port``, a server in an actor on the *other* node, ``curl``
at the head's front door (so every call crosses proxies), and the garbage a client can send.
Access control (tokens, the ACL) is tested with a real guard over a real Nuwa in
tests/kuafu/test_gateway.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.ray

CLUSTER = "test"
NS = "fuxi-test"
CURL = shutil.which("curl") or "curl"


@pytest.fixture(scope="module")
def door(ray_cluster, tmp_path_factory):
    from types import SimpleNamespace

    import ray

    from kuafu import deploy
    from nuwa.group import start_group
    from tests.integration.kuafu_services import ServerActor
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    g = start_group(1, str(tmp_path_factory.mktemp("http-nuwa")),
                    namespace=f"nuwa-http-{time.time_ns()}")
    server = None
    try:
        nuwa = [list(a) for a in g.client_addresses()]
        infos = deploy.start(NS, nuwa, settings={deploy.HTTP_PORT_SETTING: 0})
        here = ray.get_runtime_context().get_node_id()
        other = next(n for n in deploy.alive_nodes() if n != here)
        by_node = {i["node"]: i for i in infos}
        server = ServerActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            other, soft=False)).remote(CLUSTER, "web", "far")
        ray.get(server.info.remote(), timeout=60)
        yield SimpleNamespace(url=by_node[here]["http"], other_url=by_node[other]["http"],
                              infos=by_node)
    finally:
        try:
            if server is not None:
                ray.kill(server)
            deploy.stop(NS)
        finally:
            g.stop()


def curl(url: str, *args: str) -> tuple[int, str]:
    out = subprocess.run([CURL, "-s", "-S", "-o", "-", "-w", "\n%{http_code}", *args, url],
                         capture_output=True, text=True, timeout=60)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def call(door, method: str, *args: str, service: str = "web") -> tuple[int, str]:
    """A call at the head's front door, retried briefly while the head's proxy has not yet
    seen the far endpoint in Nuwa (404 'is registered')."""
    deadline = time.time() + 20
    while True:
        st, body = curl(f"{door.url}/v1/services/{service}/{method}", *args)
        if st != 404 or service != "web" or "is registered" not in body \
                or time.time() > deadline:
            return st, body
        time.sleep(0.2)


def test_every_proxy_serves_http_and_publishes_its_url(door):
    assert len(door.infos) == 2
    for info in door.infos.values():
        assert info["http"].startswith("http://127.0.0.1:")
        st, body = curl(info["http"] + "/v1/health")
        assert st == 200


def test_curl_json_call_crosses_proxies(door):
    st, body = call(door, "echo", "-H", "Content-Type: application/json",
                    "-d", '{"word": "the"}')
    assert st == 200 and json.loads(body) == {"word": "the"}
    st, body = call(door, "who", "-X", "POST")
    assert st == 200 and json.loads(body) == "far"
    # The other node's front door reaches its local endpoint too.
    st, body = curl(f"{door.other_url}/v1/services/web/who", "-X", "POST")
    assert st == 200 and json.loads(body) == "far"


def test_bad_json_unknown_service_and_method(door):
    st, body = call(door, "echo", "-H", "Content-Type: application/json", "-d", "{nope")
    assert st == 400 and json.loads(body)["error"]["type"] == "BadRequest"
    st, body = call(door, "echo", "-d", "a=b")  # curl's default form type
    assert st == 415
    st, body = call(door, "echo", "-X", "POST", service="nosuch-svc")
    assert st == 404 and "nosuch-svc" in json.loads(body)["error"]["message"]
    st, body = call(door, "nosuch", "-X", "POST")
    assert st == 404 and "has no method" in json.loads(body)["error"]["message"]


def test_huge_body_is_413(door, tmp_path):
    from kuafu.gateway import HTTP_BODY_BYTES_MAX

    big = tmp_path / "big"
    big.write_bytes(b"z" * (HTTP_BODY_BYTES_MAX + 1))
    st, body = call(door, "echo", "-H", "Content-Type: application/octet-stream",
                    "--data-binary", f"@{big}")
    assert st == 413 and "HTTP_BODY_BYTES_MAX" in json.loads(body)["error"]["message"]
    st, body = call(door, "who", "-X", "POST")  # and the front door still serves
    assert st == 200


def test_deadline_exceeded_is_504(door):
    st, body = call(door, "sleep", "-H", "Content-Type: application/json",
                    "-H", "X-Fuxi-Deadline-Ms: 300", "-d", '"5"')
    assert st == 504 and json.loads(body)["error"]["type"] == "TimedOut"
    st, body = call(door, "remaining?timeout_s=4", "-X", "POST")
    assert st == 200 and 2.0 < float(json.loads(body)) <= 4.0


def test_remote_error_is_500_and_openapi_describes_the_service(door):
    st, body = call(door, "boom", "-H", "Content-Type: application/json", "-d", '"x"')
    err = json.loads(body)["error"]
    assert st == 500 and err["remote_type"] == "builtins.KeyError"
    st, body = curl(f"{door.url}/v1/services/web/openapi.json")
    doc = json.loads(body)
    assert st == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/services/web/echo", "/v1/services/web/who"} <= set(doc["paths"])
