"""Tests for the Recommendations page (recs.ui), with a fake warehouse and auth."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import Request

from recs.ui import create_app, safe_join, sqlalchemy_url, top_categories

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2, which is not installed; the httpx path works.
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient` is deprecated"
    )
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
GOOD = {"Authorization": "Bearer good-token"}


async def fake_auth(request: Request) -> str | None:
    """Accept one bearer token or cookie; refuse the 'viewer' token's user."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    token = token or request.cookies.get("_token", "")
    if token == "no-access":
        raise PermissionError("bob may not see Recommendations")
    return "alice" if token == "good-token" else None


class FakeStore:
    """The reader functions of recs.warehouse over canned rows."""

    def __init__(self, engine: sa.Engine, runs: list[dict[str, Any]]) -> None:
        self.engine = engine
        self.runs = runs
        self.asked: list[str] = []
        self.fail = False

    def get_engine(self, url: str) -> sa.Engine:
        return self.engine

    def recent_runs(self, engine: sa.Engine, limit: int = 20) -> list[dict]:
        if self.fail:
            raise sa.exc.OperationalError("SELECT", {}, Exception("down"))
        return self.runs[:limit]

    def current_run(self, engine: sa.Engine) -> dict | None:
        return next((r for r in self.runs if r["is_current"]), None)

    def student_recommendations(self, engine: sa.Engine, student_id: str) -> dict:
        self.asked.append(student_id)
        if student_id not in ("007", "<b>x</b>"):
            return None
        return {
            "student_id": student_id,
            "cluster_id": 3,
            "run_id": "20261203_aaaa",
            "recommendations": [
                {"rank": 1, "course_id": "C-42", "score": 0.91,
                 "strategy": "cluster", "reason": "mastered by 80% of peers"},
                {"rank": 2, "course_id": "C-7", "score": 0.5,
                 "strategy": "fallback", "reason": "popular"},
            ],
        }


def make_run(docs: Path | None, run_id: str, current: bool) -> dict[str, Any]:
    """A ledger row like recs.warehouse.recent_runs returns."""
    return {
        "run_id": run_id,
        "ds": "2026-12-03",
        "status": "published" if current else "failed",
        "reason": None if current else "validate: 12% bad rows",
        "is_current": current,
        "students": 1000,
        "recommendations": 10000,
        "quarantined": 17,
        "n_clusters": 20,
        "inertia": 1234.5,
        "silhouette": 0.0921,
        "recall_at_10": 0.3456,
        "published_at": "2026-12-03T02:10:00+00:00",
        "summary": {
            "timings": {"extract": 0.5, "validate": 11.1},
            "metrics": {"recall_at_10": 0.3456, "ndcg_at_10": 0.2222},
            "cluster_sizes": [600, 400],
            "data_docs": str(docs / "index.html") if docs else None,
        },
    }


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A Data Docs folder with an index, an asset and a secret beside it."""
    root = tmp_path / "runs" / "data_docs"
    (root / "static").mkdir(parents=True)
    (root / "index.html").write_text("<h1>Data Docs index</h1>")
    (root / "static" / "style.css").write_text("body {}")
    (tmp_path / "runs" / "secret.txt").write_text("do not serve")
    (root / "escape").symlink_to(tmp_path / "runs" / "secret.txt")
    return root


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    """SQLite with a cluster_categories table like the published view."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'wh.db'}")
    rows = [
        (0, "Python", 0.5, 10), (0, "SQL", 0.3, 6), (0, "AWS", 0.1, 2),
        (0, "Go", 0.1, 1), (1, "C++", 0.7, 7), (1, "Design", 0.3, 3),
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE cluster_categories "
            "(cluster_id INTEGER, category TEXT, share REAL, mastered INTEGER)"
        )
        conn.exec_driver_sql(
            "INSERT INTO cluster_categories VALUES (?, ?, ?, ?)", rows
        )
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: sa.Engine, docs: Path) -> FakeStore:
    return FakeStore(
        engine,
        [make_run(docs, "20261203_aaaa", True), make_run(None, "20261202_bbbb", False)],
    )


@pytest.fixture
def client(store: FakeStore) -> TestClient:
    app = create_app(auth=fake_auth, warehouse_url="sqlite://", store=store)
    return TestClient(app)


@pytest.mark.parametrize(
    "path", ["/", "/?student=007", "/runs/20261203_aaaa/docs/index.html"]
)
def test_create_app_refuses_anonymous(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert "Sign in" in response.text
    assert "C-42" not in response.text and "Data Docs index" not in response.text


def test_create_app_refuses_bad_token(client: TestClient) -> None:
    response = client.get("/", headers={"Authorization": "Bearer forged"})
    assert response.status_code == 401


def test_create_app_forbids_user_without_access(client: TestClient) -> None:
    response = client.get("/", headers={"Authorization": "Bearer no-access"})
    assert response.status_code == 403
    assert "may not see" in response.text


def test_create_app_accepts_cookie(client: TestClient) -> None:
    client.cookies.set("_token", "good-token")
    assert client.get("/").status_code == 200


def test_create_app_requires_auth_callable() -> None:
    with pytest.raises(TypeError, match="auth must be"):
        create_app(auth=None, warehouse_url="sqlite://")


def test_page_shows_runs_metrics_timings_and_clusters(client: TestClient) -> None:
    response = client.get("/", headers=GOOD)
    assert response.status_code == 200
    text = response.text
    assert "Signed in as alice" in text
    for fact in ("20261203_aaaa", "20261202_bbbb", "validate: 12% bad rows",
                 "10000", "17", "0.346", "ndcg_at_10", "0.2222", "11.1"):
        assert fact in text, fact
    assert "Python (50%), SQL (30%), AWS (10%)" in text
    assert "Go (10%)" not in text
    assert "C++ (70%), Design (30%)" in text
    assert "<td>600</td>" in text
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'self'" in response.headers["content-security-policy"]


def test_page_links_data_docs_of_run(client: TestClient) -> None:
    text = client.get("/", headers=GOOD).text
    assert 'href="/runs/20261203_aaaa/docs/index.html"' in text
    assert "/runs/20261202_bbbb/docs" not in text


def test_page_student_lookup_shows_recommendations(
    client: TestClient, store: FakeStore
) -> None:
    response = client.get("/", params={"student": " 007 "}, headers=GOOD)
    assert store.asked == ["007"]
    assert "Student <b>007</b>, cluster 3" in response.text
    assert "C-42" in response.text and "mastered by 80% of peers" in response.text


def test_page_student_lookup_passes_id_unchanged_and_escapes_it(
    client: TestClient, store: FakeStore
) -> None:
    hostile = "x' OR '1'='1"
    response = client.get("/", params={"student": hostile}, headers=GOOD)
    assert store.asked == [hostile]
    assert "No recommendations for student" in response.text
    response = client.get("/", params={"student": "<b>x</b>"}, headers=GOOD)
    assert "&lt;b&gt;x&lt;/b&gt;" in response.text
    assert "<b>x</b>" not in response.text


def test_page_student_lookup_rejects_long_id(client: TestClient) -> None:
    response = client.get("/", params={"student": "9" * 201}, headers=GOOD)
    assert response.status_code == 422


def test_page_reports_unreadable_warehouse(
    client: TestClient, store: FakeStore
) -> None:
    store.fail = True
    response = client.get("/", headers=GOOD)
    assert response.status_code == 503
    assert "could not be read" in response.text


def test_page_without_runs(engine: sa.Engine) -> None:
    app = create_app(
        auth=fake_auth, warehouse_url="sqlite://", store=FakeStore(engine, [])
    )
    text = TestClient(app).get("/", headers=GOOD).text
    assert "No run published yet" in text and "No runs yet" in text


def test_data_docs_serves_files_of_run(client: TestClient) -> None:
    response = client.get("/runs/20261203_aaaa/docs/index.html", headers=GOOD)
    assert response.status_code == 200
    assert "Data Docs index" in response.text
    css = client.get("/runs/20261203_aaaa/docs/static/style.css", headers=GOOD)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(
    "path",
    [
        "/runs/20261203_aaaa/docs/../secret.txt",
        "/runs/20261203_aaaa/docs/%2e%2e/secret.txt",
        "/runs/20261203_aaaa/docs/..%2fsecret.txt",
        "/runs/20261203_aaaa/docs/%2fetc%2fpasswd",
        "/runs/20261203_aaaa/docs/static/..%5c..%5csecret.txt",
        "/runs/20261203_aaaa/docs/escape",
        "/runs/20261203_aaaa/docs/static",
        "/runs/20261203_aaaa/docs/missing.html",
        "/runs/20261202_bbbb/docs/index.html",
        "/runs/nope/docs/index.html",
    ],
)
def test_data_docs_refuses_paths_outside_docs(client: TestClient, path: str) -> None:
    response = client.get(path, headers=GOOD)
    assert response.status_code == 404
    assert "do not serve" not in response.text


def test_safe_join_stays_inside_root(docs: Path) -> None:
    assert safe_join(docs, "static/style.css") == (docs / "static/style.css").resolve()
    for bad in ("../secret.txt", "/etc/passwd", "static/../../secret.txt",
                "escape", "a\x00b", "", "static"):
        assert safe_join(docs, bad) is None, bad


def test_top_categories_orders_and_limits(engine: sa.Engine) -> None:
    top = top_categories(engine, per_cluster=2)
    assert [c["category"] for c in top[0]] == ["Python", "SQL"]
    assert [c["category"] for c in top[1]] == ["C++", "Design"]
    with pytest.raises(ValueError, match="got 0"):
        top_categories(engine, per_cluster=0)


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("postgres://u:p@db:5432/wh", "postgresql+psycopg://u:p@db:5432/wh"),
        ("postgresql://u@db/wh", "postgresql+psycopg://u@db/wh"),
        ("sqlite:////tmp/wh.db", "sqlite:////tmp/wh.db"),
    ],
)
def test_sqlalchemy_url_uses_psycopg(uri: str, url: str) -> None:
    assert sqlalchemy_url(uri) == url


def _constants(path: Path) -> dict[str, Any]:
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def test_plugin_reads_the_dags_warehouse_connection() -> None:
    plugin = _constants(REPO / "plugins" / "recs_plugin.py")
    dag = _constants(REPO / "dags" / "course_recommendations.py")
    assert plugin["WAREHOUSE_CONN_ID"] == dag["WAREHOUSE_CONN_ID"]


def test_plugin_does_not_leak_into_recs() -> None:
    source = (REPO / "recs" / "ui.py").read_text()
    assert "import airflow" not in source and "from airflow" not in source
