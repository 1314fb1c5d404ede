"""Production-like run: the scheduler and a Celery worker run the DAG end to end.

The stack (tests/prodlike/stack.py) has the topology of docker-compose.yml,
with fresh PostgreSQL databases and a Redis database of its own. The run is
triggered through the REST API, like an operator would, and its result is
checked in the PostgreSQL warehouse and on the Recommendations page.
"""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from tests.prodlike.stack import DAG_ID, VIEWER, AirflowStack, shared_stack

pytestmark = pytest.mark.airflow
RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> AirflowStack:
    return shared_stack(request)


@pytest.fixture(scope="module")
def finished_run(stack: AirflowStack) -> dict[str, str]:
    """Trigger one run through the REST API and wait until it finishes."""
    started = time.monotonic()
    run_id = stack.trigger()
    state = stack.wait_for_run(run_id, timeout=RUN_TIMEOUT)
    stack.timings["run"] = time.monotonic() - started
    if state != "success":
        pytest.fail(
            f"run {run_id} ended {state}; tasks {stack.task_states(run_id)}\n"
            + stack.diagnostics()
        )
    return {"run_id": run_id, "state": state}


def test_scheduler_and_worker_run_every_task(
    stack: AirflowStack, finished_run: dict[str, str]
) -> None:
    states = stack.task_states(finished_run["run_id"])
    assert states == dict.fromkeys(
        ["start", "extract", "validate", "features", "cluster", "recommend",
         "evaluate", "publish"],
        "success",
    )
    worker_log = (stack.home / "worker.log").read_text(errors="replace")
    assert "ExecuteTask" in worker_log or "execute_workload" in worker_log, (
        "the Celery worker log shows no task; did something else run them?"
    )


def test_warehouse_has_the_published_run(
    stack: AirflowStack, finished_run: dict[str, str]
) -> None:
    engine = sa.create_engine(stack.warehouse_url)
    try:
        with engine.connect() as conn:
            ledger = conn.execute(sa.text(
                "SELECT run_id, status, is_current, students, recommendations "
                "FROM recommendation_runs WHERE status = 'published'"
            )).mappings().all()
            students, rows, max_rank = conn.execute(sa.text(
                "SELECT COUNT(DISTINCT student_id), COUNT(*), MAX(rank) "
                "FROM student_recommendations"
            )).one()
            categories = conn.execute(
                sa.text("SELECT COUNT(*) FROM cluster_categories")
            ).scalar_one()
    finally:
        engine.dispose()
    assert len(ledger) >= 1
    current = [r for r in ledger if r["is_current"]]
    assert len(current) == 1
    assert students == current[0]["students"] == 1000
    assert rows == current[0]["recommendations"] > 0
    assert 1 <= max_rank <= 10
    assert categories > 0
    assert not stack.unused_sqlite.exists(), (
        "tasks wrote to RECS_WAREHOUSE_URL instead of the recs_warehouse connection"
    )


def test_publish_emits_the_asset_event(
    stack: AirflowStack, finished_run: dict[str, str]
) -> None:
    events = stack.api(
        "GET", "/api/v2/assets/events", params={"source_dag_id": DAG_ID}
    ).json()["asset_events"]
    ours = [e for e in events if e["source_run_id"] == finished_run["run_id"]]
    assert [e["source_task_id"] for e in ours] == ["publish"]
    assert ours[0]["name"] == "student_recommendations"


def test_plugin_is_registered_with_a_nav_entry(stack: AirflowStack) -> None:
    plugins = stack.api("GET", "/api/v2/plugins").json()["plugins"]
    plugin = next(p for p in plugins if p["name"] == "recommendations")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/recs"
    view = plugin["external_views"][0]
    assert view["name"] == "Recommendations" and view["destination"] == "nav"
    errors = stack.api("GET", "/api/v2/plugins/importErrors").json()
    assert errors["import_errors"] == []


def test_page_requires_an_airflow_sign_in(
    stack: AirflowStack, finished_run: dict[str, str]
) -> None:
    page = f"{stack.url}/recs/"
    assert httpx.get(page, timeout=10).status_code == 401
    forged = {"Authorization": "Bearer not.a.jwt"}
    assert httpx.get(page, headers=forged, timeout=10).status_code == 401
    docs = f"{stack.url}/recs/runs/x/docs/index.html"
    assert httpx.get(docs, timeout=10).status_code == 401


def test_page_shows_the_run_to_signed_in_users(
    stack: AirflowStack, finished_run: dict[str, str]
) -> None:
    token = stack.token()
    by_bearer = httpx.get(
        f"{stack.url}/recs/", headers={"Authorization": f"Bearer {token}"},
        params={"student": "1"}, timeout=20,
    )
    assert by_bearer.status_code == 200, by_bearer.text[:2000]
    by_cookie = httpx.get(
        f"{stack.url}/recs/", cookies={"_token": stack.token(VIEWER)}, timeout=20
    )
    assert by_cookie.status_code == 200
    assert "Signed in as viewer" in by_cookie.text
    assert "published" in by_bearer.text and "1000" in by_bearer.text
    assert "/recs/runs/" in by_bearer.text  # the Data Docs link


def test_data_docs_are_served_for_the_run(
    stack: AirflowStack, finished_run: dict[str, str]
) -> None:
    run_id = stack.current_run_id()
    headers = {"Authorization": f"Bearer {stack.token()}"}
    docs = httpx.get(
        f"{stack.url}/recs/runs/{run_id}/docs/index.html", headers=headers, timeout=20
    )
    assert docs.status_code == 200 and "<html" in docs.text.lower()
    outside = httpx.get(
        f"{stack.url}/recs/runs/{run_id}/docs/..%2f..%2fvalidate.json",
        headers=headers, timeout=20,
    )
    assert outside.status_code == 404
