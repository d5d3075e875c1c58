"""The web console in headless Chromium (issue 17 part 4), against a `fuxi up` cluster of its
own (subprocesses, as a user would): the overview lists the node; a running job's page shows
its DAG picture and a timeline where a backup is visible; a service page shows its replicas;
the storage and coordination pages show Pangu's servers and Nuwa's leader; the pages refresh
themselves. Every page is saved as a screenshot under ``$FUXI_ARTIFACTS`` (default: the
test's temp dir). Garbage requests get clean 4xx answers over the raw HTTP port."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.clihelpers import fuxi

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
PAGE_WAIT_S = 90.0  # a page shows what the test waits for
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def http(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("console-home")
    fuxi(home, "up", "--num-cpus", "2", "--nuwa-replicas", "1", "--web-port", "0")
    try:
        info = json.loads(fuxi(home, "status", "--json").stdout)
        yield home, info
    finally:
        fuxi(home, "down", check=False)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def shots_dir(tmp_path) -> str:
    d = os.environ.get("FUXI_ARTIFACTS") or str(tmp_path)
    os.makedirs(d, exist_ok=True)
    return d


def wait_page(drv, url: str, cond, what: str, timeout_s: float = PAGE_WAIT_S):
    """Load ``url`` and wait (the page refreshes itself) until ``cond(drv)``."""
    drv.get(url)
    deadline = time.time() + timeout_s
    while True:
        try:
            if cond(drv):
                return
        except Exception:  # noqa: BLE001 - the part refreshed under us: look again
            pass
        assert time.time() < deadline, f"{what} not seen on {url} within {timeout_s}s:\n" \
                                       f"{drv.find_element('tag name', 'main').text[:2000]}"
        time.sleep(0.5)


def test_the_console_shows_nodes_a_job_with_a_backup_services_storage_and_nuwa(
        cluster, browser, tmp_path):
    from selenium.webdriver.common.by import By

    home, info = cluster
    web = info["web"]
    assert web and web.startswith("http://127.0.0.1:"), info
    shots = shots_dir(tmp_path)
    node = info["nodes"][0]["node_id"]

    # Overview: the node, its CPUs.
    wait_page(browser, web + "/", lambda d: node[:12] in d.find_element(By.CSS_SELECTOR,
                                                                        "table.nodes").text,
              "the node")
    assert "Cluster default" in browser.find_element(By.TAG_NAME, "h2").text
    browser.save_screenshot(os.path.join(shots, "console-overview.png"))

    # A running job with stragglers: its DAG and a timeline where a backup shows.
    out = tmp_path / "strag"
    job_id = fuxi(home, "submit", "jobs/stragglers.yaml", "--set", f"params.output={out}",
                  "--set", "params.slowdown=150", "--no-wait").stdout.strip()
    url = f"{web}/jobs/{job_id}"
    wait_page(browser, url, lambda d: d.find_elements(By.CSS_SELECTOR,
                                                      "svg.timeline g.backup"),
              "a backup in the timeline")
    assert browser.find_elements(By.CSS_SELECTOR, 'svg.dag g[data-task="work"]')
    state = browser.find_element(By.CSS_SELECTOR, ".job-state").text
    browser.save_screenshot(os.path.join(shots, "console-job.png"))
    assert state in ("running", "succeeded"), state
    # The page refreshes its main part by itself (no reload).
    before = browser.execute_script("return document.body.dataset.updated || ''")
    time.sleep(3.0)
    assert browser.execute_script("return document.body.dataset.updated || ''") != before
    wait_page(browser, web + "/jobs", lambda d: job_id[:20] in d.find_element(
        By.CSS_SELECTOR, "table.jobs").text, "the job in the list")

    # A service: its replicas.
    fuxi(home, "service", "register", "jobs/services/echo.yaml", "--set", "replicas=1")
    wait_page(browser, web + "/services/echo",
              lambda d: "ok" in d.find_element(By.CSS_SELECTOR, "table.replicas").text,
              "a healthy replica")
    browser.save_screenshot(os.path.join(shots, "console-service.png"))
    wait_page(browser, web + "/services", lambda d: "echo" in d.find_element(
        By.CSS_SELECTOR, "table.services").text, "the service in the list")

    # Storage and coordination.
    wait_page(browser, web + "/storage", lambda d: d.find_elements(
        By.CSS_SELECTOR, "table.chunkservers tr td"), "a chunkserver")
    browser.save_screenshot(os.path.join(shots, "console-storage.png"))
    wait_page(browser, web + "/coordination", lambda d: "leader" in d.find_element(
        By.CSS_SELECTOR, "table.nuwa").text, "Nuwa's leader")
    browser.save_screenshot(os.path.join(shots, "console-coordination.png"))

    deadline = time.time() + PAGE_WAIT_S
    while True:
        st = json.loads(fuxi(home, "job", "status", job_id, "--json").stdout)
        if st["state"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.time() < deadline, st
        time.sleep(1.0)
    assert st["state"] == "succeeded" and st["tasks"]["work"]["backups_launched"] >= 1, st


def test_garbage_requests_get_clean_answers(cluster):
    _, info = cluster
    web = info["web"]
    assert http(web + "/healthz") == (200, "ok\n")
    code, body = http(web + "/jobs/" + "%3Cscript%3E")
    assert code == 400 and "expected letters, digits" in body and "<script>" not in body
    code, _ = http(web + "/jobs/no-such-job")
    assert code == 200  # the page says the job is unknown
    assert http(web + "/nope")[0] == 404
    assert http(web + "/", method="PUT", data=b"x")[0] == 405
    assert http(web + "/jobs", method="POST", data=b"x")[0] == 405
    assert http(web + "/" + "a" * 3000)[0] == 414  # REQUEST_TARGET_BYTES_MAX
    # without access control a login is a redirect to the overview (followed: 200)
    assert http(web + "/login", method="POST", data=b"x" * (64 * 1024))[0] in (200, 413)
    code, body = http(web + "/")
    assert code == 200 and "Content-Security-Policy" not in body  # a header, not in the body
