"""The Dagster UI in a real browser: the `retrain` job runs in-process into a temporary
DAGSTER_HOME, dagster-webserver serves that instance on a loopback port, and headless Chromium
(Debian's chromium + chromedriver, driven by Selenium) opens the asset graph and the model asset
pages. Asserted: every asset name is rendered, the lineage edges the server reports are the
code's edges, and the last run's metadata (meta_model's best validation MAE, registered_model's
MLflow version) is on the pages. Screenshots go to a temporary folder, and to artifacts/ui/ when
the repo has an artifacts/ folder.

Run with: `bash .ci/test -m integration tests/test_ui.py` (needs `apt-get install chromium
chromium-driver` and the `test` extra's selenium; skipped with the reason when either is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.synth import SYNTH_PARAMS, write_synthetic_csv

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                "chromium-driver)", allow_module_level=True)
if not HAVE_SELENIUM:
    pytest.skip("needs the selenium package (pip install -e '.[test]')", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ASSETS = ("raw_dataset", "interactions", "features", "cold_start_tasks", "meta_model",
          "evaluation_report", "onnx_model", "registered_model")
EDGES = {("raw_dataset", "interactions"), ("features", "cold_start_tasks"),
         ("cold_start_tasks", "meta_model"), ("meta_model", "evaluation_report"),
         ("evaluation_report", "onnx_model"), ("onnx_model", "registered_model")}
SERVER_START_S = 120  # webserver up and the code location loaded (2 shared cores: slow)
PAGE_S = 60  # one page rendered with the text we look for
STOP_S = 15

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1300")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


ASSET_NODES = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the GraphQL API lists the code location's assets (or the deadline / a crash)."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster-webserver exited ({proc.returncode}):\n"
                                 f"{log.read_text()[-3000:]}")
        try:
            if _graphql(url, ASSET_NODES)["assetNodes"]:
                return
        except (urllib.error.URLError, ConnectionError, OSError, AssertionError):
            pass
        time.sleep(1)
    raise AssertionError(f"dagster-webserver not ready after {SERVER_START_S} s:\n"
                         f"{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the webserver's process group (it and its code-server child), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_S)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A temp git + DVC project on synthetic data with one successful `retrain` run recorded in
    its own DAGSTER_HOME; yields (project, home, run)."""
    import yaml

    from metarec.config import load_config
    from metarec.data.fetch import fetch
    from orchestration.run import instance_for, run_retrain

    project = tmp_path_factory.mktemp("ui-project")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    saved_cwd, saved_env = Path.cwd(), dict(os.environ)
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlflow.db"
    try:
        (project / "params.yaml").write_text(yaml.safe_dump(SYNTH_PARAMS))
        cfg = load_config(project / "params.yaml")
        fetch(cfg.data, path=write_synthetic_csv(project / "incoming"), root=project)
        shutil.rmtree(project / "incoming")
        home = project / "dagster_home"
        run = run_retrain("params.yaml", instance_for(str(home)))
        assert run.success, run
        yield project, home, run
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    """dagster-webserver on a free loopback port over the pipeline's instance; yields its URL."""
    project, home, _ = pipeline
    port = _free_port()
    log = tmp_path_factory.mktemp("webserver") / "webserver.log"
    env = {**os.environ, "DAGSTER_HOME": str(home),
           "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    webserver = Path(sys.executable).with_name("dagster-webserver")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-m",
             "orchestration.definitions"],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, proc, log)
        yield url
    finally:
        _stop(proc)
    assert proc.poll() is not None, "dagster-webserver still running after stop"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver, fresh profile, no background networking."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_S)
    try:
        yield driver
    finally:
        driver.quit()
        if service.process is not None:
            service.process.wait(timeout=STOP_S)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """Where screenshots go; copied to artifacts/ui/ at the end when artifacts/ exists."""
    folder = tmp_path_factory.mktemp("ui-screenshots")
    yield folder
    if (REPO / "artifacts").is_dir():
        target = REPO / "artifacts" / "ui"
        target.mkdir(exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy2(png, target / png.name)


def _open(driver, url: str, expected: tuple[str, ...]) -> str:
    """Load ``url`` and wait until the page's visible text contains every ``expected``."""
    driver.get(url)
    return _open_current(driver, expected)


def _open_current(driver, expected: tuple[str, ...]) -> str:
    """Wait, on the page already open, until its visible text contains every ``expected``."""
    missing: list[str] = list(expected)

    def rendered(d) -> bool:
        text = d.find_element(By.TAG_NAME, "body").text
        missing[:] = [e for e in expected if e not in text]
        return not missing

    try:
        WebDriverWait(driver, PAGE_S, poll_frequency=0.5).until(rendered)
    except Exception as err:  # selenium's TimeoutException, with what was missing
        raise AssertionError(f"{driver.current_url}: not rendered within {PAGE_S} s: "
                             f"{missing}") from err
    _skip_onboarding(driver)
    time.sleep(1)  # let the layout settle before the screenshot
    return driver.find_element(By.TAG_NAME, "body").text


def _skip_onboarding(driver, wait_s: float = 0.0) -> None:
    """Close the "Join the Dagster community" dialog that a fresh browser profile gets a moment
    after its first page loads (waiting up to ``wait_s`` for it), then wait for its backdrop to
    go."""
    skip = "//button[normalize-space()='Skip']"
    deadline = time.monotonic() + wait_s
    while True:
        buttons = driver.find_elements(By.XPATH, skip)
        if buttons:
            buttons[0].click()
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    WebDriverWait(driver, PAGE_S).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, ".bp5-overlay-backdrop"))


def _expand_all_groups(driver) -> None:
    """The global lineage starts with each group collapsed to a box: the graph's settings menu
    (gear at the bottom right) has "Expand all groups"."""
    gear = driver.find_elements(By.XPATH, "//button[.//*[@aria-label='settings']]")
    assert gear, "no graph settings button"
    gear[-1].click()
    item = WebDriverWait(driver, PAGE_S).until(lambda d: d.find_elements(
        By.XPATH, "//button[@role='menuitem'][contains(., 'Expand all groups')]"))
    item[0].click()
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()


def test_server_reports_the_code_lineage(server, pipeline):
    """The webserver's GraphQL API serves every asset with the same upstream edges as the code,
    and the last materialisation of each model asset comes from our run."""
    from orchestration.assemble import build_definitions

    project, _, run = pipeline
    nodes = _graphql(server, ASSET_NODES)["assetNodes"]
    served = {("/".join(d["path"]), "/".join(n["assetKey"]["path"]))
              for n in nodes for d in n["dependencyKeys"]}
    assert EDGES <= served
    cwd = Path.cwd()
    os.chdir(project)
    try:
        graph = build_definitions("params.yaml").resolve_asset_graph()
    finally:
        os.chdir(cwd)
    code = {(p.to_user_string(), k.to_user_string())
            for k in graph.get_all_asset_keys() for p in graph.get(k).parent_keys}
    assert served == code
    for name in ("meta_model", "registered_model"):
        data = _graphql(server, '{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset {'
                                ' assetMaterializations(limit: 1) { runId } } } }' % name)
        assert data["assetOrError"]["assetMaterializations"][0]["runId"] == run.run_id


def test_asset_graph_shows_every_asset(server, browser, screenshots):
    """Global asset lineage: three groups, then with every group expanded, every asset."""
    _open(browser, f"{server}/asset-groups", ("Global asset lineage", "data", "features", "model"))
    _skip_onboarding(browser, wait_s=10)
    browser.save_screenshot(str(screenshots / "asset_graph_groups.png"))
    _expand_all_groups(browser)
    _open_current(browser, ASSETS)
    assert not browser.find_elements(By.CSS_SELECTOR, "[class*='collapsedGroupNode']")
    browser.save_screenshot(str(screenshots / "asset_graph.png"))
    assert (screenshots / "asset_graph.png").stat().st_size > 10_000


def test_model_asset_pages_show_last_run_metadata(server, browser, pipeline, screenshots):
    """meta_model and registered_model: description, the last materialisation's metadata from
    our run, upstream/downstream lineage; the blocking gate and parity checks passed."""
    _, _, run = pipeline
    meta = run.materialized["meta_model"]
    _open(browser, f"{server}/assets/meta_model",
          ("meta_model", "Metadata", "best_valid_mae", meta["best_valid_mae"],
           "Upstream assets", "cold_start_tasks", "Downstream assets", "evaluation_report"))
    browser.save_screenshot(str(screenshots / "meta_model.png"))
    _open(browser, f"{server}/assets/meta_model?view=events",
          (f"Materialized in run {run.run_id[:8]}", meta["best_valid_mae"]))
    browser.save_screenshot(str(screenshots / "meta_model_events.png"))

    reg = run.materialized["registered_model"]
    assert reg["version"] == "1"
    _open(browser, f"{server}/assets/registered_model",
          ("registered_model", "version", "alias", "challenger", reg["model_uri"],
           reg["mlflow_run_id"], run.run_id, "Upstream assets", "onnx_model"))
    browser.save_screenshot(str(screenshots / "registered_model.png"))

    for asset, check in (("evaluation_report", "gate"), ("onnx_model", "parity")):
        _open(browser, f"{server}/assets/{asset}?view=checks",
              (check, "This is a blocking asset check.", "Passed"))
        browser.save_screenshot(str(screenshots / f"{asset}_checks.png"))
