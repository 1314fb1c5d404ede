"""Browser test: an operator signs in, triggers the DAG and reads the page.

Drives Debian's headless Chromium (packages ``chromium`` and
``chromium-driver``) against the production-like stack of tests/prodlike/,
which this test shares with that one. Screenshots go to
tests/artifacts/browser/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.prodlike.stack import ADMIN, DAG_ID, AirflowStack, shared_stack, wait_until

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parent / "artifacts" / "browser"
STUDENT = "1"
DOCS_LINK = "Great Expectations Data Docs of this run"
CONFIRM_TRIGGER = "//button[normalize-space()='Trigger' and not(@aria-label)]"
Locator = tuple[str, str]


def require_browser() -> None:
    """Skip without Debian's chromium and chromedriver; under CI=true, fail."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        message = (
            f"needs {' and '.join(missing)}: "
            "apt-get install -y chromium chromium-driver"
        )
        if os.environ.get("CI") == "true":
            raise RuntimeError(message + " (CI=true, so this cannot be skipped)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> AirflowStack:
    require_browser()
    return shared_stack(request)


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="recs_chromium_")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shot(driver: WebDriver) -> Callable[[str], Path]:
    """Save a screenshot as tests/artifacts/browser/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> Path:
        path = SHOTS / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    return save


def click(driver: WebDriver, locator: Locator, timeout: float = 30) -> None:
    """Click an element once it is clickable, riding out React re-renders."""
    def attempt(d: WebDriver) -> bool:
        try:
            element = EC.element_to_be_clickable(locator)(d)
            if element:
                element.click()
        except (StaleElementReferenceException, ElementClickInterceptedException):
            return False
        return bool(element)

    WebDriverWait(driver, timeout).until(attempt, f"could not click {locator}")


def body_text(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def published(stack: AirflowStack) -> tuple[str, list[str]]:
    """The warehouse's current run id and STUDENT's recommended courses."""
    rows = stack.warehouse_rows(
        "SELECT course_id FROM student_recommendations "
        "WHERE student_id = :student ORDER BY rank",
        student=STUDENT,
    )
    return stack.current_run_id(), [row["course_id"] for row in rows]


def test_browser_operator_flow(
    stack: AirflowStack, driver: WebDriver, shot: Callable[[str], Path]
) -> None:
    wait = WebDriverWait(
        driver, 30, ignored_exceptions=[StaleElementReferenceException]
    )

    # Nobody signed in: the page says so, and the server answers 401.
    anonymous = httpx.get(f"{stack.url}/recs/", timeout=10, follow_redirects=False)
    assert anonymous.status_code in (401, 403, 302, 303, 307)
    driver.get(f"{stack.url}/recs/")
    assert "Sign in required" in body_text(driver)
    assert "Recent runs" not in body_text(driver)
    shot("01-anonymous-page")

    # Sign in through Airflow's own login page.
    driver.get(f"{stack.url}/auth/login")
    wait.until(EC.presence_of_element_located((By.NAME, "username"))).send_keys(ADMIN)
    driver.find_element(By.NAME, "password").send_keys(stack.passwords[ADMIN])
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # The click navigates; reading cookies while it does can fail ("aborted
    # by navigation"), so such reads are tried again.
    signing_in = WebDriverWait(driver, 30, ignored_exceptions=[WebDriverException])
    signing_in.until(
        lambda d: d.get_cookie("_token"), "no _token cookie after signing in"
    )
    shot("02-signed-in")

    # Find the DAG in the list and trigger it from its page.
    driver.get(f"{stack.url}/dags")
    click(driver, (By.LINK_TEXT, DAG_ID))
    wait.until(EC.url_contains(f"/dags/{DAG_ID}"))
    before = {r["dag_run_id"] for r in _runs(stack)}
    click(driver, (By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"))
    shot("03-trigger-form")
    click(driver, (By.XPATH, CONFIRM_TRIGGER))
    airflow_run_id = wait_until(
        "the triggered run to appear",
        lambda: next((r["dag_run_id"] for r in _runs(stack)
                      if r["dag_run_id"] not in before), None),
        timeout=30,
    )
    state = stack.wait_for_run(airflow_run_id, timeout=300)
    if state != "success":
        pytest.fail(
            f"run {airflow_run_id} ended {state}: "
            f"{stack.task_states(airflow_run_id)}\n{stack.diagnostics()}"
        )
    driver.get(f"{stack.url}/dags/{DAG_ID}/runs/{airflow_run_id}")
    wait.until(lambda d: "success" in body_text(d).lower())
    shot("04-run-succeeded")

    # Open the Recommendations page from the nav; it shows the run we made.
    run_id, courses = published(stack)
    assert hashlib.sha1(airflow_run_id.encode()).hexdigest()[:8] in run_id
    click(driver, (By.CSS_SELECTOR, "button[aria-label='Browse']"))
    click(driver, (By.LINK_TEXT, "Recommendations"))
    frame = wait.until(EC.presence_of_element_located((By.TAG_NAME, "iframe")))
    assert frame.get_attribute("src").endswith("/recs/")
    driver.switch_to.frame(frame)
    wait.until(EC.presence_of_element_located((By.ID, "current-run")))
    current = driver.find_element(By.ID, "current-run").text
    assert run_id in current
    assert driver.find_element(
        By.CSS_SELECTOR, "dd[data-fact='students']"
    ).text == "1000"
    assert "recall_at_10" in current and "validate" in current
    assert driver.find_elements(By.LINK_TEXT, DOCS_LINK)
    runs = driver.find_element(By.ID, "runs").text
    assert run_id in runs and "published" in runs

    # Look up one student.
    box = driver.find_element(By.NAME, "student")
    box.send_keys(STUDENT)
    box.submit()
    result = wait.until(EC.presence_of_element_located((By.ID, "student-result")))
    assert f"Student {STUDENT}, cluster" in result.text
    cells = result.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(2)")
    assert [c.text for c in cells] == courses and courses
    driver.switch_to.default_content()
    shot("05-recommendations-page")

    # The page on its own, full length: runs, metrics, timings and clusters.
    driver.get(f"{stack.url}/recs/?student={STUDENT}")
    assert "%)" in driver.find_element(By.ID, "current-run").text  # top categories
    driver.set_window_size(1400, 3600)
    shot("06-recommendations-full")


def _runs(stack: AirflowStack) -> list[dict]:
    response = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    response.raise_for_status()
    return response.json()["dag_runs"]
