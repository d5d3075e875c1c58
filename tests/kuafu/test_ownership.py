"""Who may attach a service name at a Kuafu proxy (issue 14, defect 6): the owner comes from
FuxiMaster's registration record, else from the persistent claim of the first attacher --
never from whoever attaches while no endpoint is live. A real proxy with access control on
over a real Nuwa, in this process (no Ray)."""

from __future__ import annotations

import pytest

import kuafu
from tests.kuafu.authed import AuthedCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def zc():
    c = AuthedCluster()
    try:
        yield c
    finally:
        c.close()


def test_a_registered_service_without_endpoints_cannot_be_squatted(zc):
    zc.register_fuxi_service("pay", owner="bob")
    mallory = zc.token("mallory")
    # No endpoint of "pay" is live: the old proxy gave the name to whoever attached now.
    with pytest.raises(kuafu.Denied, match="registered Fuxi service"):
        zc.attach("pay", mallory, tag="squatter")
    # Not even the owner's own login token: only the service's replicas serve it.
    with pytest.raises(kuafu.Denied, match="registered Fuxi service"):
        zc.attach("pay", zc.token("bob"))
    # A replica token of another service, or of another owner's service of this name.
    with pytest.raises(kuafu.Denied):
        zc.attach("pay", zc.service_token("mallory", "other"))
    with pytest.raises(kuafu.Denied):
        zc.attach("pay", zc.service_token("mallory", "pay"))
    assert zc.endpoints("pay") == []

    replica = zc.attach("pay", zc.service_token("bob", "pay"), tag="replica")
    assert [e["owner"] for e in zc.endpoints("pay")] == ["bob"]
    assert zc.call("pay", zc.token("bob")) == "replica"
    zc.detach(replica)
    assert zc.endpoints("pay") == []
    with pytest.raises(kuafu.Denied):  # and again once the replica left
        zc.attach("pay", mallory)
    # A caller is never handed to anyone but the service's replicas.
    with pytest.raises(kuafu.Unavailable):
        zc.call("pay", zc.token("bob"), timeout_s=2)

    # An administrator may attach it; the endpoint still belongs to the registered owner.
    zc.attach("pay", zc.token("root", ["admins"]), tag="admin")
    assert [e["owner"] for e in zc.endpoints("pay")] == ["bob"]


def test_a_claimed_name_stays_its_claimers_with_no_live_endpoint(zc):
    carol, mallory = zc.token("carol"), zc.token("mallory")
    first = zc.attach("scratch", carol, tag="carol")
    assert zc.call("scratch", carol) == "carol"
    zc.detach(first)
    assert zc.endpoints("scratch") == []
    with pytest.raises(kuafu.Denied, match="claimed by 'carol'"):
        zc.attach("scratch", mallory)
    with pytest.raises(kuafu.Denied):  # a service token does not stretch to other names
        zc.attach("scratch", zc.service_token("mallory", "mine"))
    # The claim is in Nuwa: a restarted proxy (or any other proxy) knows it.
    zc.start_proxy()
    with pytest.raises(kuafu.Denied, match="claimed by 'carol'"):
        zc.attach("scratch", mallory)
    zc.attach("scratch", carol, tag="carol-again")
    assert zc.call("scratch", carol) == "carol-again"
    # A name registered with Fuxi later belongs to its registration, not to the claim.
    zc.register_fuxi_service("scratch2", owner="dave")
    with pytest.raises(kuafu.Denied):
        zc.attach("scratch2", carol)


def test_releasing_a_claim(zc):
    carol, mallory = zc.token("carol"), zc.token("mallory")
    srv = zc.attach("temp", carol)

    def release(token):
        with kuafu.connect(zc.uds, service="kuafu", credentials=token) as c:
            return c.call("release", {"service": "temp"}, timeout_s=5)
    with pytest.raises(kuafu.BadRequest, match="still has endpoints"):
        release(carol)
    zc.detach(srv)
    with pytest.raises(kuafu.Denied):
        release(mallory)
    assert release(carol) == {"released": "temp"}
    zc.attach("temp", mallory, tag="m")  # free again: the next attacher claims it


def test_claiming_can_require_a_grant():
    zc = AuthedCluster(claim_policy="granted")
    try:
        with pytest.raises(kuafu.Denied, match="claim_policy='granted'"):
            zc.attach("adhoc", zc.token("carol"))
        zc.attach("adhoc", zc.token("root", ["admins"]))
        assert [e["owner"] for e in zc.endpoints("adhoc")] == ["root"]
    finally:
        zc.close()
