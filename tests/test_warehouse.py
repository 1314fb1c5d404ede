"""Tests of the warehouse: schema, atomic publish, rollback and readers.

Every test runs against SQLite and against a real PostgreSQL. The PostgreSQL
server is named by ``RECS_TEST_POSTGRES_URL``; the session gets a database
of its own, each test a schema of its own. Without a server the PostgreSQL
cases are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
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


def test_publish_run_reads_back_shuffled_recommendations_in_order(
    engine: sa.Engine, tmp_path: Path
) -> None:
    paths = make_run(tmp_path / "r", students=7)
    recs_path = paths["student_recommendations"]
    expected = pd.read_parquet(recs_path)
    expected.sample(frac=1, random_state=3).to_parquet(recs_path, index=False)

    result = warehouse.publish_run(engine, "r", "2026-12-03", paths, {})

    assert result["rows"]["student_recommendations"] == 21
    got = view_rows(engine, "student_recommendations")
    want = expected.sort_values(list(expected.columns)).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    ranks = warehouse.student_recommendations(engine, "004")["recommendations"]
    assert [r["rank"] for r in ranks] == [1, 2, 3]
    if engine.dialect.name == "postgresql":
        # Stored one row per student, the view unnests the arrays.
        table = f"student_recommendations__{result['table_key']}"
        with engine.connect() as conn:
            stored = conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"')
            assert stored.scalar() == 7


def test_publish_run_refuses_a_repeated_student_rank_pair(
    engine: sa.Engine, tmp_path: Path
) -> None:
    warehouse.publish_run(engine, "good", "2026-12-01", make_run(tmp_path / "g"), {})
    paths = make_run(tmp_path / "b")
    recs = pd.read_parquet(paths["student_recommendations"])
    recs.loc[4, "rank"] = recs.loc[3, "rank"]  # student 001 has rank 1 twice
    recs.to_parquet(paths["student_recommendations"], index=False)

    with pytest.raises(PublishError, match="previous run is still published"):
        warehouse.publish_run(engine, "bad", "2026-12-02", paths, {})
    assert warehouse.current_run(engine)["run_id"] == "good"
    assert len(view_rows(engine, "student_recommendations")) == 18


def test_nested_batches_join_groups_across_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse, "BATCH_ROWS", 4)
    sizes = {"a": 3, "b": 10, "c": 1, "d": 4, "e": 2}  # b spans whole batches
    rows = [(s, r) for s, n in sizes.items() for r in range(1, n + 1)]
    path = tmp_path / "recs.parquet"
    pq.write_table(
        pa.table(
            {
                "student_id": [s for s, _ in rows],
                "rank": pa.array([r for _, r in rows], pa.int32()),
                "course_id": [f"{s}{r}" for s, r in rows],
                "score": [float(r) for _, r in rows],
                "cluster_id": pa.array([ord(s) for s, _ in rows], pa.int32()),
                "strategy": ["cluster"] * len(rows),
                "reason": [None] * len(rows),
            }
        ),
        path,
    )
    types = {c: t for c, _, t in warehouse.READER_COLUMNS["student_recommendations"]}
    nesting = warehouse._NESTED["student_recommendations"]

    read = warehouse._read_batches(path, types, {})
    batches = list(warehouse._nested_batches(path, read, nesting))

    nested = pa.Table.from_batches(batches)
    assert nested.column_names == [
        "student_id", "course_id", "score", "cluster_id", "strategy", "reason"
    ]
    assert nested.column("student_id").to_pylist() == list(sizes)
    assert nested.column("course_id").to_pylist() == [
        [f"{s}{r}" for r in range(1, n + 1)] for s, n in sizes.items()
    ]
    assert nested.column("cluster_id").to_pylist() == [ord(s) for s in sizes]
    assert pc.sum(pc.list_value_length(nested.column("reason"))).as_py() == len(rows)


@pytest.mark.parametrize(
    ("table", "column"),
    [("student_clusters", "student_id"), ("popular_courses", "rank")],
)
def test_publish_run_names_the_table_with_a_repeated_key(
    engine: sa.Engine, tmp_path: Path, table: str, column: str
) -> None:
    paths = make_run(tmp_path / "b")
    frame = pd.read_parquet(paths[table])
    frame.loc[1, column] = frame.loc[0, column]
    frame.to_parquet(paths[table], index=False)

    with pytest.raises(PublishError) as caught:
        warehouse.publish_run(engine, "bad", "2026-12-02", paths, {})
    message = str(caught.value)
    assert f"{table} has more than one row per ({column})" in message
    assert "sqlalche.me" not in message and "CREATE UNIQUE INDEX" not in message
    assert warehouse.current_run(engine) is None


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("rank", 4, "has ranks other than 1..N"),
        ("rank", 1, "has the same rank twice"),
        ("rank", None, "has a null rank"),
        ("cluster_id", 7, "has more than one cluster_id"),
    ],
)
def test_postgres_refuses_rows_its_nested_table_cannot_hold(
    engine: sa.Engine, tmp_path: Path, column: str, value: int | None, problem: str
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL stores recommendations one row per student")
    paths = make_run(tmp_path / "b")
    recs = pd.read_parquet(paths["student_recommendations"])
    recs[column] = recs[column].astype("Int32")
    recs.loc[4, column] = value  # student 001's second row
    recs.to_parquet(paths["student_recommendations"], index=False)

    with pytest.raises(PublishError, match=f"student_id '001' {problem}"):
        warehouse.publish_run(engine, "bad", "2026-12-02", paths, {})
    assert warehouse.current_run(engine) is None


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


def test_publish_run_loads_dictionary_encoded_text_as_text(
    engine: sa.Engine, tmp_path: Path
) -> None:
    paths = make_run(tmp_path / "plain", tag="x")
    table = pq.read_table(paths["student_recommendations"])
    for name in ("course_id", "strategy", "reason"):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.dictionary_encode(table[name]))
    pq.write_table(table, paths["student_recommendations"])
    assert pa.types.is_dictionary(
        pq.read_schema(paths["student_recommendations"]).field("reason").type
    )

    warehouse.publish_run(engine, "r1", "2026-12-03", paths, {})

    expected = table.to_pandas()
    for name in ("course_id", "strategy", "reason"):
        expected[name] = expected[name].astype(object)
    expected = expected.sort_values(list(expected.columns)).reset_index(drop=True)
    got = view_rows(engine, "student_recommendations")
    assert got["reason"].tolist().count("") == 1
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


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
    assert result["dropped"] == []
    pd.testing.assert_frame_equal(view_rows(engine, "student_recommendations"), first)
    runs = {r["run_id"]: r for r in warehouse.recent_runs(engine)}
    assert runs["first"]["status"] == "superseded"
    assert runs["second"]["is_current"]
    assert len(run_tables(engine)) == 8  # the superseded run's, for rollback

    # An operator can undo the rerun: the superseded run is published again.
    assert warehouse.rollback(engine)["run_id"] == "first"
    runs = {r["run_id"]: r for r in warehouse.recent_runs(engine)}
    assert runs["first"]["status"] == "published" and runs["first"]["is_current"]
    assert runs["second"]["status"] == "rolled_back"
    assert len(run_tables(engine)) == 4


def test_superseded_runs_count_toward_keep_runs(
    engine: sa.Engine, tmp_path: Path
) -> None:
    for index, run_id in enumerate(("a", "b", "c")):
        warehouse.publish_run(
            engine, run_id, "2026-12-03", make_run(tmp_path / run_id), {},
            keep_runs=2,
        )
        assert len(run_tables(engine)) == 4 * min(index + 1, 2)
    runs = {r["run_id"]: r for r in warehouse.recent_runs(engine)}
    assert runs["a"]["table_key"] is None  # beyond keep_runs: dropped
    assert runs["b"]["status"] == "superseded" and runs["b"]["table_key"]


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


STAMPS = ("run_id", "generated_at")


def as_utc(value: dt.datetime | str) -> dt.datetime:
    """A stamp or ledger time as an aware UTC datetime (SQLite keeps text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def view_stamps(engine: sa.Engine, name: str) -> tuple[set, set[str]]:
    """Distinct (run_id, generated_at) of a view, and the SQL types of both.

    The types are the view's declared column types on PostgreSQL and the
    stored value types (``typeof``) on SQLite.
    """
    with engine.connect() as conn:
        pairs = {
            (run_id, as_utc(at))
            for run_id, at in conn.execute(
                sa.text(f"SELECT DISTINCT run_id, generated_at FROM {name}")
            )
        }
        if engine.dialect.name == "postgresql":
            types = conn.execute(
                sa.text(
                    "SELECT column_name || ' ' || data_type "
                    "FROM information_schema.columns WHERE table_name = :name "
                    "AND table_schema = current_schema()"
                ),
                {"name": name},
            ).scalars()
        else:
            types = conn.execute(
                sa.text(
                    f"SELECT DISTINCT 'run_id ' || typeof(run_id), "
                    f"'generated_at ' || typeof(generated_at) FROM {name}"
                )
            ).one()
        types = {t for t in types if t.split()[0] in STAMPS}
    return pairs, types


STAMP_TYPES = {
    "postgresql": {"run_id text", "generated_at timestamp with time zone"},
    "sqlite": {"run_id text", "generated_at text"},
}


def test_views_stamp_rows_with_run_id_and_publish_time(
    engine: sa.Engine, tmp_path: Path
) -> None:
    run_id = "20261203_it's\\a"  # quoted as a SQL literal, not spliced
    result = warehouse.publish_run(
        engine, run_id, "2026-12-03", make_run(tmp_path / "1"), {}
    )

    published_at = as_utc(warehouse.current_run(engine)["published_at"])
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for name, columns in warehouse.READER_COLUMNS.items():
            assert [c["name"] for c in inspector.get_columns(name)] == [
                c for c, _, _ in columns
            ] + list(STAMPS)
            stored = inspector.get_columns(f"{name}__{result['table_key']}")
            expected = [c for c, _, _ in columns]
            if engine.dialect.name == "postgresql" and name in warehouse._NESTED:
                # The position in a student's arrays is the rank.
                expected.remove(warehouse._NESTED[name].order)
            assert [c["name"] for c in stored] == expected
    for name in warehouse.READER_TABLES:
        pairs, types = view_stamps(engine, name)
        assert pairs == {(run_id, published_at)}
        assert types == STAMP_TYPES[engine.dialect.name]
    got = warehouse.student_recommendations(engine, "001")
    assert got["run_id"] == run_id
    assert isinstance(got["generated_at"], dt.datetime)
    assert as_utc(got["generated_at"]) == published_at


def test_rollback_restores_the_previous_run_stamps(
    engine: sa.Engine, tmp_path: Path
) -> None:
    warehouse.publish_run(engine, "d1", "2026-12-01", make_run(tmp_path / "1"), {})
    first = view_stamps(engine, "student_recommendations")
    warehouse.publish_run(engine, "d2", "2026-12-02", make_run(tmp_path / "2"), {})
    assert view_stamps(engine, "popular_courses")[0] != first[0]

    warehouse.rollback(engine)

    for name in warehouse.READER_TABLES:
        assert view_stamps(engine, name) == first


def publish_old_layout(
    engine: sa.Engine, run_id: str, ds: str, paths: dict[str, Path],
    generated_at: dt.datetime,
) -> str:
    """Publish a run the way earlier versions did; return its table key.

    Their run tables stored ``run_id`` and ``generated_at`` in every row, the
    views selected those columns, and ``generated_at`` was taken before the
    load, so it differs from the ledger's ``published_at``.
    """
    key = f"old_{uuid.uuid4().hex[:6]}"
    warehouse.ensure_schema(engine)
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer.quote
        for name, columns in warehouse.READER_COLUMNS.items():
            table = sa.Table(
                f"{name}__{key}", sa.MetaData(),
                *(sa.Column(c, t) for c, t, _ in columns),
                sa.Column("run_id", sa.Text, nullable=False),
                sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
            )
            table.create(conn)
            frame = pd.read_parquet(paths[name]).astype(object)
            rows = frame.where(frame.notna(), None).to_dict("records")
            conn.execute(
                table.insert(),
                [{**row, "run_id": run_id, "generated_at": generated_at}
                 for row in rows],
            )
            select = ", ".join(
                quote(c) for c in [c for c, _, _ in columns] + list(STAMPS)
            )
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    f"CREATE OR REPLACE VIEW {name} AS SELECT {select} "
                    f"FROM {quote(table.name)}"
                )
            else:
                conn.exec_driver_sql(f"DROP VIEW {name}")
                conn.exec_driver_sql(
                    f"CREATE VIEW {name} AS SELECT {select} FROM {quote(table.name)}"
                )
        conn.execute(
            warehouse.runs_table.insert().values(
                run_id=run_id, ds=ds, status="published", is_current=True,
                started_at=generated_at, table_key=key,
                published_at=generated_at + dt.timedelta(seconds=30),
            )
        )
    return key


def test_publish_and_rollback_over_views_of_the_old_layout(
    engine: sa.Engine, tmp_path: Path
) -> None:
    generated_at = dt.datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=dt.UTC)
    old_key = publish_old_layout(
        engine, "old", "2026-12-01", make_run(tmp_path / "old", students=4),
        generated_at,
    )
    assert view_stamps(engine, "student_recommendations")[0] == {
        ("old", generated_at)
    }

    result = warehouse.publish_run(
        engine, "new", "2026-12-02", make_run(tmp_path / "new", students=5), {}
    )

    assert result["previous_run_id"] == "old"
    published_at = as_utc(warehouse.current_run(engine)["published_at"])
    for name in warehouse.READER_TABLES:
        pairs, types = view_stamps(engine, name)
        assert pairs == {("new", published_at)}
        assert types == STAMP_TYPES[engine.dialect.name]
    assert warehouse.student_recommendations(engine, "004")["run_id"] == "new"

    assert warehouse.rollback(engine)["run_id"] == "old"

    for name in warehouse.READER_TABLES:
        pairs, types = view_stamps(engine, name)
        assert pairs == {("old", generated_at)}
        assert types == STAMP_TYPES[engine.dialect.name]
    assert warehouse.student_recommendations(engine, "004") is None
    assert len(view_rows(engine, "student_recommendations")) == 12

    warehouse.publish_run(engine, "newer", "2026-12-03", make_run(tmp_path / "3"), {})
    assert view_stamps(engine, "student_clusters")[0] == {
        ("newer", as_utc(warehouse.current_run(engine)["published_at"]))
    }
    warehouse.publish_run(
        engine, "newest", "2026-12-04", make_run(tmp_path / "4"), {}, keep_runs=1
    )
    assert not {t for t in run_tables(engine) if t.endswith(old_key)}


def test_postgres_lookups_by_student_use_the_index(
    engine: sa.Engine, tmp_path: Path
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL plans only")
    result = warehouse.publish_run(
        engine, "r1", "2026-12-03", make_run(tmp_path, students=3000), {}
    )
    key = result["table_key"]

    with engine.connect() as conn:
        plans = {
            name: "\n".join(
                conn.execute(
                    sa.text(f"EXPLAIN SELECT * FROM {name} WHERE student_id = :id"),
                    {"id": "1042"},
                ).scalars()
            )
            for name in ("student_recommendations", "student_clusters")
        }
    assert f"ix_{key}_sr" in plans["student_recommendations"]
    assert f"ix_{key}_sc" in plans["student_clusters"]
    assert "Seq Scan" not in "".join(plans.values())


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


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["a", None, "b", "a", ""]),
        pa.array(["x", "y", None]).dictionary_encode(),
        pa.array([3, 1, 2], pa.int32()),
        pa.array([1, None, 3], pa.int64()),
        pa.array([0.25, 1e-300, -0.0]),
        pa.array([], pa.string()),
    ],
)
def test_python_values_equal_to_pylist(column: pa.Array) -> None:
    values = warehouse._python_values(column)
    expected = (
        column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
    ).to_pylist()
    assert values == expected
    assert [type(v) for v in values] == [type(v) for v in expected]
