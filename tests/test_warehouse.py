"""Tests of the warehouse: schema, atomic publish, rollback and readers.

Every test runs against SQLite and against a real PostgreSQL. The PostgreSQL
server is named by ``RECS_TEST_POSTGRES_URL``; the session gets a database
of its own, each test a schema of its own. Without a server the PostgreSQL
cases are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recs import warehouse
from recs.errors import NoPublishedRunError, PublishError

PG_URL = os.environ.get(
    "RECS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _admin_engine(url: str | sa.URL) -> sa.Engine:
    url = sa.make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[sa.URL]:
    """A fresh PostgreSQL database for the session, dropped afterwards."""
    admin = _admin_engine(PG_URL)
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as err:
        admin.dispose()
        message = f"PostgreSQL at {warehouse.mask_url(PG_URL)} unreachable: {err}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    name = f"recs_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A warehouse engine on an empty database (SQLite file or PG schema)."""
    if request.param == "sqlite":
        eng = warehouse.get_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
        yield eng
        eng.dispose()
        return
    database: sa.URL = request.getfixturevalue("pg_database")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine(database)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = database.update_query_dict({"options": f"-csearch_path={schema}"})
    eng = warehouse.get_engine(url.render_as_string(hide_password=False))
    try:
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def make_run(
    directory: Path, students: int = 6, top_n: int = 3, tag: str = "a"
) -> dict[str, Path]:
    """Write the four reader tables of a synthetic run to Parquet files."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:03d}" for i in range(students)]
    recs = pd.DataFrame(
        {
            "student_id": [s for s in ids for _ in range(top_n)],
            "rank": [r for _ in ids for r in range(1, top_n + 1)],
            "course_id": [f"0{i}{r}" for i in range(students) for r in range(top_n)],
            "score": [1.0 / r for _ in ids for r in range(1, top_n + 1)],
            "cluster_id": [i % 2 for i in range(students) for _ in range(top_n)],
            "strategy": ["cluster", "cluster", "fallback"][:top_n] * students,
            "reason": [f'peers, "{tag}", mastered it\n(2 of 3)'] * (students * top_n),
        }
    )
    recs.loc[0, "reason"] = ""
    recs.loc[1, "reason"] = None
    frames = {
        "student_recommendations": recs,
        "student_clusters": pd.DataFrame(
            {"student_id": ids, "cluster_id": [i % 2 for i in range(students)]}
        ),
        "cluster_categories": pd.DataFrame(
            {
                "cluster_id": [0, 0, 1],
                "category": ["C++", "Data", "AI Ethics"],
                "share": [0.5, 0.5, 1.0],
                "mastered": [3, 3, 4],
            }
        ),
        "popular_courses": pd.DataFrame(
            {
                "rank": [1, 2],
                "course_id": ["007", "0100"],
                "score": [0.9, 0.8],
                "reason": ["popular", "popular"],
            }
        ),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = directory / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    return paths


def run_tables(engine: sa.Engine) -> set[str]:
    """Physical per-run tables present in the warehouse."""
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
    return {n for n in names if "__" in n}


def view_rows(engine: sa.Engine, name: str) -> pd.DataFrame:
    """All rows of a reader view, sorted, without the run stamps."""
    with engine.connect() as conn:
        frame = pd.read_sql_query(sa.text(f"SELECT * FROM {name}"), conn)
    frame = frame.drop(columns=["run_id", "generated_at"])
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_ensure_schema_creates_empty_views_and_is_idempotent(
    engine: sa.Engine,
) -> None:
    warehouse.ensure_schema(engine)
    statements: list[str] = []
    sa.event.listen(
        engine, "before_cursor_execute",
        lambda *args: statements.append(args[2]),
    )
    warehouse.ensure_schema(engine)

    assert not [s for s in statements if s.lstrip().upper().startswith(
        ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE"))]
    assert warehouse.current_run(engine) is None
    assert warehouse.student_recommendations(engine, "007") is None
    assert warehouse.popular_courses(engine) == []
    assert warehouse.last_published_metrics(engine) is None


def test_publish_run_then_read(engine: sa.Engine, tmp_path: Path) -> None:
    paths = make_run(tmp_path / "r1", students=8)
    summary = {"students": 8, "metrics": {"recall_at_10": 0.31}, "k": 2}
    result = warehouse.publish_run(
        engine, "20261203_aaaa", "2026-12-03", paths, summary
    )

    assert result["rows"] == {
        "student_recommendations": 24,
        "student_clusters": 8,
        "cluster_categories": 3,
        "popular_courses": 2,
    }
    assert result["previous_run_id"] is None
    assert set(result["seconds"]) >= {"load", "index", "switch", "total"}
    got = warehouse.student_recommendations(engine, "007")
    assert got["student_id"] == "007"
    assert got["cluster_id"] == 1
    assert got["run_id"] == "20261203_aaaa"
    assert got["generated_at"] is not None
    assert [r["rank"] for r in got["recommendations"]] == [1, 2, 3]
    assert got["recommendations"][0]["course_id"] == "070"
    assert got["recommendations"][2]["strategy"] == "fallback"
    assert warehouse.student_recommendations(engine, "7") is None
    popular = warehouse.popular_courses(engine)
    assert [p["course_id"] for p in popular] == ["007", "0100"]
    assert view_rows(engine, "cluster_categories")["category"].tolist() == [
        "C++", "Data", "AI Ethics"
    ]
    current = warehouse.current_run(engine)
    assert current["status"] == "published"
    assert current["is_current"] is True
    assert current["students"] == 8
    assert current["n_clusters"] == 2
    assert current["recall_at_10"] == pytest.approx(0.31)
    assert current["recommendations"] == 24
    metrics = warehouse.last_published_metrics(engine)
    assert metrics["recall_at_10"] == pytest.approx(0.31)
    assert metrics["run_id"] == "20261203_aaaa"


def test_publish_run_keeps_text_nulls_and_quotes(
    engine: sa.Engine, tmp_path: Path
) -> None:
    paths = make_run(tmp_path / "r1", tag="x")
    warehouse.publish_run(engine, "r1", "2026-12-03", paths, {})

    expected = pd.read_parquet(paths["student_recommendations"])
    got = view_rows(engine, "student_recommendations")
    reasons = got["reason"].tolist()
    assert reasons.count("") == 1
    assert sum(r is None or r != r for r in reasons) == 1
    assert 'peers, "x", mastered it\n(2 of 3)' in reasons
    assert sorted(got["student_id"].unique()) == sorted(expected["student_id"].unique())


def test_publish_run_reader_sees_only_whole_runs(
    engine: sa.Engine, tmp_path: Path
) -> None:
    sizes = {f"run_{i}": 20 + 7 * i for i in range(6)}
    paths = {rid: make_run(tmp_path / rid, students=n) for rid, n in sizes.items()}
    first = next(iter(sizes))
    warehouse.publish_run(engine, first, "2026-12-01", paths[first], {})
    query = sa.text(
        "SELECT r.run_id, r.n, r.k, p.run_id AS popular_run "
        "FROM (SELECT min(run_id) AS run_id, count(*) AS n, "
        "count(DISTINCT run_id) AS k FROM student_recommendations) r, "
        "(SELECT min(run_id) AS run_id FROM popular_courses) p"
    )
    seen: list[tuple] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll() -> None:
        try:
            while not stop.is_set():
                with engine.connect() as conn:
                    seen.append(tuple(conn.execute(query).one()))
                one = warehouse.student_recommendations(engine, "000")
                assert one is not None and len(one["recommendations"]) == 3
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i, run_id in enumerate(list(sizes)[1:], start=2):
            warehouse.publish_run(
                engine, run_id, f"2026-12-0{i}", paths[run_id], {}, keep_runs=2
            )
            time.sleep(0.02)
    finally:
        stop.set()
        reader.join(timeout=60)

    assert not errors, errors
    assert len(seen) > 5
    for run_id, n, k, popular_run in seen:
        assert k == 1
        assert n == 3 * sizes[run_id]
        assert popular_run == run_id
    assert {s[0] for s in seen} <= set(sizes)


def test_publish_run_failure_keeps_previous_run(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse.publish_run(engine, "good", "2026-12-01", make_run(tmp_path / "g"), {})
    before = view_rows(engine, "student_recommendations")
    tables_before = run_tables(engine)
    real_load = warehouse._load_table
    calls = []

    def load_then_fail(*args: object, **kwargs: object) -> int:
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("disk full while loading")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(warehouse, "_load_table", load_then_fail)
    with pytest.raises(PublishError, match="previous run is still published"):
        warehouse.publish_run(
            engine, "bad", "2026-12-02", make_run(tmp_path / "b", students=9), {}
        )

    assert len(calls) == 2
    assert run_tables(engine) == tables_before
    pd.testing.assert_frame_equal(view_rows(engine, "student_recommendations"), before)
    assert warehouse.current_run(engine)["run_id"] == "good"
    failed = {r["run_id"]: r for r in warehouse.recent_runs(engine)}["bad"]
    assert failed["status"] == "failed"
    assert "disk full while loading" in failed["reason"]


@pytest.mark.parametrize(
    ("table", "frame", "match"),
    [
        ("student_clusters", pd.DataFrame({"student_id": ["1"]}), "'cluster_id'"),
        (
            "popular_courses",
            pd.DataFrame({"rank": [1], "course_id": ["c"], "score": ["high"],
                          "reason": ["r"]}),
            "column 'score' is not double",
        ),
        (
            "popular_courses",
            pd.DataFrame({"rank": [], "course_id": [], "score": [], "reason": []}),
            "popular_courses has no rows",
        ),
    ],
)
def test_publish_run_rejects_bad_input_before_switch(
    engine: sa.Engine, tmp_path: Path, table: str, frame: pd.DataFrame, match: str
) -> None:
    paths = make_run(tmp_path / "r")
    frame.to_parquet(paths[table])

    with pytest.raises(PublishError, match=match):
        warehouse.publish_run(engine, "r", "2026-12-01", paths, {})
    assert run_tables(engine) == set()
    assert warehouse.current_run(engine) is None


def test_publish_run_same_ds_replaces_rows(engine: sa.Engine, tmp_path: Path) -> None:
    warehouse.publish_run(engine, "first", "2026-12-03", make_run(tmp_path / "1"), {})
    first = view_rows(engine, "student_recommendations")

    result = warehouse.publish_run(
        engine, "second", "2026-12-03", make_run(tmp_path / "2"), {}
    )

    assert result["superseded"] == ["first"]
    assert "first" in result["dropped"]
    pd.testing.assert_frame_equal(view_rows(engine, "student_recommendations"), first)
    runs = {r["run_id"]: r for r in warehouse.recent_runs(engine)}
    assert runs["first"]["status"] == "superseded"
    assert runs["first"]["table_key"] is None
    assert runs["second"]["is_current"]
    assert len(run_tables(engine)) == 4
    with pytest.raises(NoPublishedRunError):
        warehouse.rollback(engine)


def test_publish_run_same_run_id_again_replaces_attempt(
    engine: sa.Engine, tmp_path: Path
) -> None:
    paths = make_run(tmp_path / "1")
    warehouse.publish_run(engine, "r", "2026-12-03", paths, {"students": 6})
    warehouse.publish_run(engine, "r", "2026-12-03", paths, {"students": 6})

    assert len(run_tables(engine)) == 4
    assert len(view_rows(engine, "student_recommendations")) == 18
    assert [r["run_id"] for r in warehouse.recent_runs(engine)] == ["r"]


def test_rollback_restores_previous_run(engine: sa.Engine, tmp_path: Path) -> None:
    with pytest.raises(NoPublishedRunError, match="no run is published"):
        warehouse.rollback(engine)
    warehouse.publish_run(engine, "d1", "2026-12-01", make_run(tmp_path / "1", 4), {})
    warehouse.publish_run(engine, "d2", "2026-12-02", make_run(tmp_path / "2", 5), {})

    result = warehouse.rollback(engine)

    assert result == {"run_id": "d1", "ds": "2026-12-01", "rolled_back_run_id": "d2"}
    assert len(view_rows(engine, "student_recommendations")) == 12
    assert warehouse.student_recommendations(engine, "004") is None
    runs = {r["run_id"]: r for r in warehouse.recent_runs(engine)}
    assert runs["d2"]["status"] == "rolled_back"
    assert runs["d1"]["is_current"]
    assert len(run_tables(engine)) == 4
    with pytest.raises(NoPublishedRunError, match="nothing to roll back to"):
        warehouse.rollback(engine)


def test_publish_run_keeps_last_keep_runs(engine: sa.Engine, tmp_path: Path) -> None:
    for day in range(1, 5):
        warehouse.publish_run(
            engine, f"d{day}", f"2026-12-0{day}", make_run(tmp_path / str(day)), {},
            keep_runs=3,
        )

    runs = {r["run_id"]: r for r in warehouse.recent_runs(engine)}
    assert runs["d1"]["table_key"] is None
    assert all(runs[f"d{d}"]["table_key"] for d in (2, 3, 4))
    assert len(run_tables(engine)) == 12
    assert warehouse.rollback(engine)["run_id"] == "d3"
    assert warehouse.rollback(engine)["run_id"] == "d2"
    with pytest.raises(NoPublishedRunError):
        warehouse.rollback(engine)


def test_later_migration_keeps_published_data(
    engine: sa.Engine, tmp_path: Path
) -> None:
    warehouse.publish_run(engine, "d1", "2026-12-01", make_run(tmp_path / "1"), {})
    quarantine = tmp_path / "q.parquet"
    pd.DataFrame(
        {"source": ["students.csv"], "row_number": [3], "column": ["progress"],
         "value": ["abc"], "reason": ["not a percent"]}
    ).to_parquet(quarantine)
    warehouse.write_quarantine(engine, "d1", quarantine)
    before = view_rows(engine, "student_recommendations")
    scripts = tmp_path / "migrations"
    shutil.copytree(warehouse.MIGRATIONS_DIR, scripts)
    (scripts / "versions" / "0002_note.py").write_text(
        '"""Add an operator note to the ledger."""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "0002"\n'
        'down_revision = "0001"\n\n\n'
        "def upgrade() -> None:\n"
        '    op.add_column("recommendation_runs", sa.Column("note", sa.Text()))\n'
    )

    warehouse._upgrade(engine, scripts)

    with engine.connect() as conn:
        columns = sa.inspect(conn).get_columns("recommendation_runs")
        version = conn.execute(
            sa.text(f"SELECT version_num FROM {warehouse.VERSION_TABLE}")
        ).scalar()
        quarantined = conn.execute(sa.text("SELECT count(*) FROM quarantine")).scalar()
    assert "note" in {c["name"] for c in columns}
    assert version == "0002"
    assert quarantined == 1
    pd.testing.assert_frame_equal(view_rows(engine, "student_recommendations"), before)
    assert warehouse.current_run(engine)["run_id"] == "d1"
    with pytest.raises(RuntimeError, match=r"revision \['0002'\].*upgrade recs"):
        warehouse.ensure_schema(engine)


def test_write_quarantine_replaces_run_rows(engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pd.DataFrame(
        {
            "source": ["students.csv"] * 3,
            "row_number": [14, 88, 90],
            "column": ["progress"] * 3,
            "value": ["abc", 'say "hi", then\nleave', None],
            "reason": ["not a percent"] * 3,
            "run_id": ["ignored"] * 3,
        }
    ).to_parquet(path)

    assert warehouse.write_quarantine(engine, "r1", path) == 3
    assert warehouse.write_quarantine(engine, "r1", path) == 3
    assert warehouse.write_quarantine(engine, "r2", path) == 3

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT run_id, value FROM quarantine ORDER BY run_id, row_number")
        ).all()
    assert [r.run_id for r in rows] == ["r1"] * 3 + ["r2"] * 3
    assert [r.value for r in rows[:3]] == ["abc", 'say "hi", then\nleave', None]


def test_write_quarantine_names_missing_column(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "q.parquet"
    pd.DataFrame({"source": ["x"]}).to_parquet(path)

    with pytest.raises(ValueError, match="row_number"):
        warehouse.write_quarantine(engine, "r1", path)


def test_record_run_upserts_and_types_summary(engine: sa.Engine) -> None:
    warehouse.record_run(engine, "r1", "2026-12-03", "running")
    warehouse.record_run(
        engine, "r1", "2026-12-03", "failed", reason="quality gate: recall dropped",
        summary={"cluster": {"k": 7, "inertia": 12.5}, "quarantined": 4},
    )

    (run,) = warehouse.recent_runs(engine)
    assert run["status"] == "failed"
    assert run["reason"] == "quality gate: recall dropped"
    assert (run["n_clusters"], run["inertia"], run["quarantined"]) == (7, 12.5, 4)
    assert run["summary"]["cluster"] == {"k": 7, "inertia": 12.5}
    assert run["started_at"] is not None and run["finished_at"] is not None
    assert warehouse.current_run(engine) is None


@pytest.mark.parametrize(
    ("status", "match"),
    [("rolled_back", "got 'rolled_back'"), ("published", "never published")],
)
def test_record_run_rejects_switch_statuses(
    engine: sa.Engine, status: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        warehouse.record_run(engine, "r1", "2026-12-03", status)


def test_record_run_refuses_to_fail_the_published_run(
    engine: sa.Engine, tmp_path: Path
) -> None:
    warehouse.publish_run(engine, "r1", "2026-12-03", make_run(tmp_path), {})

    with pytest.raises(ValueError, match="roll it back"):
        warehouse.record_run(engine, "r1", "2026-12-03", "failed", reason="late")
    warehouse.record_run(engine, "r1", "2026-12-03", "published", summary={"x": 1})
    assert warehouse.current_run(engine)["summary"]["x"] == 1


@pytest.mark.parametrize(
    ("tables", "match"),
    [({}, "missing"), ({"students": Path("x")}, "unknown")],
)
def test_publish_run_checks_table_names(
    tables: dict[str, Path], match: str
) -> None:
    eng = warehouse.get_engine("sqlite://")
    with pytest.raises(ValueError, match=match):
        warehouse.publish_run(eng, "r", "2026-12-03", tables, {})
    eng.dispose()


def test_get_engine_rejects_other_postgres_drivers() -> None:
    with pytest.raises(ValueError, match="psycopg2"):
        warehouse.get_engine("postgresql+psycopg2://u:secret@db/w")


def hold_view(
    engine: sa.Engine, seconds: float, ready: threading.Event
) -> threading.Thread:
    """A reader that keeps a view locked in an open transaction for a while."""

    def read() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT count(*) FROM student_recommendations"))
            ready.set()
            time.sleep(seconds)

    thread = threading.Thread(target=read)
    thread.start()
    ready.wait(10)
    return thread


def test_publish_run_waits_briefly_for_long_postgres_readers(
    engine: sa.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite readers read a snapshot and never lock the views")
    warehouse.publish_run(engine, "d1", "2026-12-01", make_run(tmp_path / "1"), {})
    monkeypatch.setattr(warehouse, "_SWITCH_LOCK_TIMEOUT", "200ms")
    monkeypatch.setattr(warehouse, "_SWITCH_ATTEMPTS", 3)

    reader = hold_view(engine, 0.5, threading.Event())
    warehouse.publish_run(engine, "d2", "2026-12-02", make_run(tmp_path / "2"), {})
    reader.join()

    assert "view switch waited 200ms" in caplog.text
    assert warehouse.current_run(engine)["run_id"] == "d2"

    reader = hold_view(engine, 4.0, threading.Event())
    with pytest.raises(PublishError, match="long-running reader"):
        warehouse.publish_run(
            engine, "d3", "2026-12-03", make_run(tmp_path / "3"), {}
        )
    reader.join()
    assert warehouse.current_run(engine)["run_id"] == "d2"
    assert len(run_tables(engine)) == 8
