"""The cluster configuration (issue 18 part 4): layering flag > env > file > default with each
value's source; every kind of bad value and unknown key refused one line each, naming the key
(and the nearest valid one) and what was expected; garbage files and values never a traceback
(Hypothesis); fixed ports checked free naming the component; the online settings picked up by
a running FuxiMaster's loops; the reference in docs/config.md generated from the model."""

from __future__ import annotations

import asyncio
import pathlib
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuxi.core import clusterconfig as cc
from fuxi.errors import BadInput
from fuxi.io import clusterconfig as io

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "config.md"


def write(tmp_path, text: str, name: str = "cluster.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def problems(fn) -> list[str]:
    with pytest.raises(cc.ConfigError) as e:
        fn()
    assert str(e.value).startswith("invalid cluster configuration")
    return e.value.problems


# ---- layering ----


def test_defaults_alone_validate_and_say_so():
    eff = io.effective(None, {}, {})
    view = eff.view()
    assert set(view) == set(cc.KEYS)
    assert all(v["source"] == "default" for v in view.values())
    assert view["nuwa.replicas"]["value"] == 3 and view["web.port"]["value"] == cc.WEB_PORT
    assert view["alerts.eval_s"]["online"] and not view["nuwa.replicas"]["online"]


def test_flag_beats_env_beats_file_beats_default(tmp_path):
    path = write(tmp_path, "cluster: fromfile\nnuwa: {replicas: 1}\nkuafu: {port: 7100}\n"
                           "ray: {port: 7200, num_cpus: 4}\nalerts: {eval_s: 9}\n")
    env = {"FUXI_KUAFU__PORT": "7101", "FUXI_RAY__PORT": "7201", "FUXI_ALERTS__EVAL_S": "8"}
    eff = io.effective(path, {"ray.port": 7202, "cluster": None}, env)
    v = eff.view()
    assert (v["ray.port"]["value"], v["ray.port"]["source"]) == (7202, "flag")
    assert (v["kuafu.port"]["value"], v["kuafu.port"]["source"]) == (7101, "env")
    assert (v["alerts.eval_s"]["value"], v["alerts.eval_s"]["source"]) == (8.0, "env")
    assert (v["ray.num_cpus"]["value"], v["ray.num_cpus"]["source"]) == (4, "file")
    assert (v["cluster"]["value"], v["cluster"]["source"]) == ("fromfile", "file")  # flag None
    assert v["pangu.replication"]["source"] == "default"


def test_the_cluster_name_comes_from_FUXI_CLUSTER_below_the_flag():
    assert io.effective(None, {}, {"FUXI_CLUSTER": "envname"}).config.cluster == "envname"
    assert io.effective(None, {"cluster": "flagname"},
                        {"FUXI_CLUSTER": "envname"}).config.cluster == "flagname"


def test_env_lists_are_json_and_section_wide_json_works():
    eff = io.effective(None, {}, {"FUXI_NUWA__REPLICAS": "3",
                                  "FUXI_NUWA__PORTS": "[7001, 7002, 7003]"})
    assert eff.config.nuwa.ports == [7001, 7002, 7003]
    assert io.effective(None, {}, {"FUXI_RAY": '{"port": 7005}'}).config.ray.port == 7005


def test_legacy_FUXI_WEB_PORT_is_read_below_FUXI_WEB__PORT():
    assert io.effective(None, {}, {"FUXI_WEB_PORT": "0"}).config.web.port == 0
    eff = io.effective(None, {}, {"FUXI_WEB_PORT": "0", "FUXI_WEB__PORT": "8123"})
    assert eff.config.web.port == 8123


def test_other_fuxi_variables_are_not_configuration():
    env = {"FUXI_HOME": "/x", "FUXI_TOKEN": "t", "FUXI_METRICS": "0", "FUXI_FAULTS": "",
           "FUXI_ARTIFACTS": "/a", "FUXI_SOMETHING_ELSE": "1"}
    assert all(v["source"] == "default" for v in io.effective(None, {}, env).view().values())


def test_an_unknown_nested_variable_is_refused_with_the_nearest_key():
    (line,) = problems(lambda: io.effective(None, {}, {"FUXI_NUWA__REPLICSA": "1"}))
    assert "FUXI_NUWA__REPLICSA" in line and "'nuwa.replicas'" in line


# ---- bad input, one line per problem ----


@pytest.mark.parametrize("text,needle", [
    ("nuwa: {replicas: 2}\n", "nuwa.replicas: got 2, expected 0 (no Nuwa), 1, 3 or 5"),
    ("nuwa: {replicas: three}\n", "nuwa.replicas: got 'three', expected an integer"),
    ("ray: {port: 70000}\n", "ray.port: got 70000, expected less than or equal to 65535"),
    ("ray: {port: -1}\n", "ray.port: got -1"),
    ("web: {port: 1.5}\n", "web.port: got 1.5, expected an integer"),
    ("web: 5\n", "web: got 5, expected a mapping"),
    ("auth: maybe\n", "auth: got 'maybe', expected true or false"),
    ("cluster: 'a b'\n", "cluster: got 'a b', expected 1 to 64 letters, digits, - and _"),
    ("data_dir: relative/dir\n", "data_dir: got 'relative/dir', expected an absolute path"),
    ("alerts: {eval_s: 0}\n", "alerts.eval_s: got 0, expected greater than or equal to 0.5"),
    ("alerts: {eval_s: .nan}\n", "alerts.eval_s: got nan"),
    ("pangu: {replication: 9}\n", "pangu.replication: got 9"),
    ("pangu: {capacity_bytes_per_node: 10}\n", "pangu.capacity_bytes_per_node: got 10"),
    ("nuwa: {replicas: 3, ports: [7001]}\n", "nuwa.ports: 1 port(s) for 3 replica(s)"),
    ("nuwa: {replicas: 0}\nauth: true\n", "auth: access control needs Nuwa"),
    ("nuwa: {replicas: 0}\npangu: {masters: 2}\n", "pangu.masters: more than one Pangu master"),
    ("ray: {address: 'h:1', port: 7000}\n", "ray.port: applies only to a head"),
    ("ray: {min_worker_port: 20000}\n", "expected both ray.min_worker_port and ray.max_worker_port"),
    ("ray: {min_worker_port: 20010, max_worker_port: 20000}\n", "is above ray.max_worker_port"),
    ("ray: {port: 7000}\nkuafu: {port: 7000}\n", "kuafu.port: port 7000 is also ray.port"),
    ("nuwa: {replicas: 1, portz: 3}\n", "unknown key 'nuwa.portz' (did you mean 'nuwa.ports'?)"),
    ("nuwa_replicas: 1\n", "unknown key 'nuwa_replicas' (did you mean 'nuwa.replicas'?)"),
    ("[1, 2]\n", "got list, expected a mapping"),
    ("a: [\n", "invalid YAML"),
    ("nuwa: {replicas: 1}\nnuwa: {replicas: 3}\n", "duplicate key 'nuwa'"),
])
def test_every_kind_of_bad_file_is_one_clear_line(tmp_path, text, needle):
    lines = problems(lambda: io.effective(write(tmp_path, text), {}, {}))
    assert any(needle in line for line in lines), lines


def test_every_problem_is_reported_at_once_with_its_source(tmp_path):
    path = write(tmp_path, "ray: {port: 70000}\nfoo: 1\nweb: {port: x}\n")
    lines = problems(lambda: io.effective(path, {}, {"FUXI_AUTH": "perhaps"}))
    assert len(lines) == 4, lines
    assert any(line.startswith("file: unknown key 'foo'") for line in lines)
    assert any("ray.port" in line and "(from file)" in line for line in lines)
    assert any("auth" in line and "(from env)" in line for line in lines)


def test_bad_flags_name_the_key():
    (line,) = problems(lambda: io.effective(None, {"nuwa.replicas": 4}, {}))
    assert line.startswith("nuwa.replicas: got 4") and "(from flag)" in line


def test_unreadable_oversized_and_binary_files(tmp_path):
    with pytest.raises(BadInput, match="cannot read it"):
        io.effective(str(tmp_path / "missing.yaml"), {}, {})
    big = tmp_path / "big.yaml"
    big.write_text("#" * (cc.CONFIG_BYTES_MAX + 1))
    with pytest.raises(BadInput, match="CONFIG_BYTES_MAX"):
        io.effective(str(big), {}, {})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BadInput, match="not UTF-8"):
        io.effective(str(binary), {}, {})


def test_an_empty_file_and_empty_sections_are_the_defaults(tmp_path):
    assert io.effective(write(tmp_path, ""), {}, {}).config == cc.ClusterConfig()
    assert io.effective(write(tmp_path, "nuwa: {}\n"), {}, {}).config == cc.ClusterConfig()


def test_an_overlong_environment_value_is_refused():
    (line,) = problems(lambda: io.effective(None, {}, {"FUXI_DATA_DIR": "/" + "a" * 5000}))
    assert "CONFIG_VALUE_CHARS_MAX" in line


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True), st.text(max_size=20))
GARBAGE = st.recursive(YAML_SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300))
def test_garbage_text_is_a_clear_error_never_a_traceback(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("g") / "c.yaml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        io.effective(str(path), {}, {})
    except BadInput as e:
        assert str(e).strip()


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(cc.KEYS) + ["nuwa", "ray", "bogus", "ray.bogus"]),
       value=GARBAGE)
def test_garbage_values_for_any_key_are_a_clear_error_never_a_traceback(key, value):
    doc: dict = {}
    cc.set_dotted(doc, key, value)
    try:
        eff = cc.layer({"file": doc})
    except cc.ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        return
    assert eff.view()  # what validated is shown


@settings(max_examples=200, deadline=None)
@given(env=st.dictionaries(st.sampled_from([cc.env_name(k) for k in cc.KEYS]
                                           + ["FUXI_X__Y", "FUXI_WEB_PORT"]),
                           st.text(max_size=30), max_size=5))
def test_garbage_environment_values_are_a_clear_error_never_a_traceback(env):
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    try:
        io.effective(None, {}, env)
    except cc.ConfigError as e:
        assert e.problems


# ---- online settings, Nuwa's copy ----


def test_only_the_online_keys_can_be_set_and_the_rest_say_why():
    cc.check_online_set("alerts.eval_s")
    with pytest.raises(BadInput, match="needs a restart"):
        cc.check_online_set("nuwa.replicas")
    with pytest.raises(BadInput, match="did you mean 'alerts.eval_s'"):
        cc.check_online_set("alerts.evals")


def test_a_set_value_wins_over_every_layer_and_is_shown_as_set():
    eff = cc.layer({"file": {"alerts": {"eval_s": 9}}, "flag": {"alerts": {"eval_s": 8}},
                    "set": {"alerts": {"eval_s": cc.parse_value("alerts.eval_s", "2.5")}}})
    assert eff.view()["alerts.eval_s"] == {"value": 2.5, "source": "set", "online": True}
    again = cc.from_stored(cc.stored_doc(eff))
    assert again.view() == eff.view()
    with pytest.raises(cc.ConfigError, match="greater than or equal to 0.5"):
        cc.layer({"set": {"alerts": {"eval_s": cc.parse_value("alerts.eval_s", "0.1")}}})
    with pytest.raises(BadInput, match="CONFIG_VALUE_CHARS_MAX"):
        cc.parse_value("alerts.eval_s", "1" * 5000)


@pytest.mark.parametrize("doc", [None, 5, "x", {}, {"format": 2, "layers": {}},
                                 {"format": 1, "layers": "x"},
                                 {"format": 1, "layers": {"set": {"alerts": {"eval_s": -1}}}}])
def test_a_stored_document_that_does_not_validate_changes_nothing(doc):
    assert cc.online_values(doc) == {}


def test_the_running_loops_pick_up_the_online_settings_from_the_store():
    from fuxi.io.store import MemoryStore
    from fuxi.shells.alerting import ALERT_EVAL_S, Alerting
    from fuxi.shells.clusterlog import EVENTS_PULL_S, ClusterEvents

    async def run():
        store = MemoryStore()
        log = ClusterEvents(None)
        alerting = Alerting(log, "ns", None, False, store)
        assert await alerting.live.refresh() == {}  # nothing stored: the defaults stay
        assert (alerting.eval_s, log.pull_s) == (ALERT_EVAL_S, EVENTS_PULL_S)
        eff = cc.layer({"set": {"alerts": {"eval_s": 1.5}, "events": {"pull_s": 0.5}}})
        store.put(cc.STORE_KEY, cc.stored_doc(eff))
        await alerting.live.refresh()
        assert (alerting.eval_s, log.pull_s) == (1.5, 0.5)
        assert alerting.view()["eval_s"] == 1.5
        store.put(cc.STORE_KEY, {"format": 1, "layers": {"set": {"alerts": {"eval_s": "x"}}}})
        await alerting.live.refresh()  # garbage by hand: unchanged, and said so
        assert alerting.eval_s == 1.5 and "does not validate" in alerting.live.error

    asyncio.run(run())


# ---- ports and layout ----


def test_a_taken_fixed_port_names_the_component_and_the_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = cc.layer({"file": {"kuafu": {"port": port}, "web": {"port": 0}}}).config
        with pytest.raises(BadInput) as e:
            io.check_ports_free(cfg)
        assert f"kuafu.port={port} (the Kuafu proxy): port {port} on 127.0.0.1 is taken" \
            in str(e.value)
        cfg = cc.layer({"file": {"nuwa": {"replicas": 1, "ports": [port]},
                                 "web": {"port": 0}}}).config
        with pytest.raises(BadInput, match=f"nuwa.ports\\[0\\]={port} \\(Nuwa replica 1\\)"):
            io.check_ports_free(cfg)
    io.check_ports_free(cfg)  # closed: free again (negative control)


def test_ray_flags_and_pangu_layout_follow_the_configuration():
    cfg = cc.layer({"file": {"ray": {"port": 7000, "node_manager_port": 7001,
                                     "min_worker_port": 20000, "max_worker_port": 20010},
                             "pangu": {"replication": 2, "capacity_bytes_per_node": 3 << 30,
                                       "chunkservers_per_node": 3}}}).config
    args = io.ray_start_args(cfg)
    assert "--node-manager-port=7001" in args and "--min-worker-port=20000" in args
    assert not any(a.startswith("--port") for a in args)  # runtime's own
    one = {"per_node": 3, "settings": {"allow_same_node": True, "expect_servers": 3}}
    lay = io.pangu_layout(cfg, one)
    assert lay["capacity_bytes"] == 1 << 30 and lay["settings"]["replication"] == 2
    assert lay["masters"] == 2 and lay["per_node"] == 3
    assert io.pangu_layout(cc.ClusterConfig(), one)["capacity_bytes"] is None


def test_the_defaults_agree_with_the_components():
    from fuxi.shells.webactor import WEB_HOST_DEFAULT, WEB_PORT_DEFAULT
    from nuwa.group import GROUP_SIZES
    from pangu.core.namespace import REPLICATION_DEFAULT

    assert (cc.WEB_PORT, cc.WEB_HOST) == (WEB_PORT_DEFAULT, WEB_HOST_DEFAULT)
    assert cc.NUWA_SIZES == (0, *GROUP_SIZES)
    assert cc.ClusterConfig().pangu.replication == REPLICATION_DEFAULT


def test_the_reference_in_docs_is_generated_from_the_model():
    text = DOCS.read_text()
    assert cc.reference() in text, "docs/config.md is stale: paste `fuxi config reference`"
    for key in cc.KEYS:
        assert f"`{key}`" in text
