"""Publish a run to the warehouse in one switch, and read the published run back.

Layout
------
Each publish loads the run's four reader tables into physical tables of its
own, named ``<reader table>__<table key>`` (for example
``student_recommendations__20261203_1a2b3c4d_9f8e7d``), without indexes, then
indexes them. The names downstream apps read (``student_recommendations``,
``student_clusters``, ``cluster_categories``, ``popular_courses``) are views.
The run tables hold only the data columns; each view adds the run's
``run_id`` and ``generated_at`` (the ledger's ``published_at``) as typed
constants, so the loads do not write them into every row. Views over tables
published before that (which store both columns) select the stored columns.
In PostgreSQL a run's recommendations are stored one row per student, the
other columns as arrays in rank order, and the view unnests them (see
``_NESTED``); flat tables of earlier runs are still read as they are.
Loading, indexing, re-pointing the four views and updating the run ledger
``recommendation_runs`` happen in ONE database transaction, so a reader sees
the whole previous run or the whole new one, and a failure anywhere before
the commit leaves nothing behind. Older runs' tables are dropped afterwards,
in a transaction of their own, keeping the last ``keep_runs`` published runs
for :func:`rollback`.

The schema (ledger, quarantine log, initial empty views) is created and
migrated by the Alembic scripts packaged in ``recs/migrations``; see
:func:`ensure_schema`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from recs.errors import InputFileError, NoPublishedRunError, PublishError
from recs.settings import mask_url

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "recs_schema_version"
RUN_STATUSES = ("running", "published", "failed", "rolled_back", "superseded")
# Runs whose tables are kept for rollback (a superseded run was published,
# then replaced by a rerun of its date).
_ROLLBACK_STATUSES = ("published", "superseded")
BATCH_ROWS = 200_000

# Columns of the run tables. The views add the run_id and generated_at stamps
# after them. Order matters: it is the views' column order.
READER_COLUMNS: dict[str, tuple[tuple[str, sa.types.TypeEngine, pa.DataType], ...]] = {
    "student_recommendations": (
        ("student_id", sa.Text(), pa.string()),
        ("rank", sa.Integer(), pa.int32()),
        ("course_id", sa.Text(), pa.string()),
        ("score", sa.Float(), pa.float64()),
        ("cluster_id", sa.Integer(), pa.int32()),
        ("strategy", sa.Text(), pa.string()),
        ("reason", sa.Text(), pa.string()),
    ),
    "student_clusters": (
        ("student_id", sa.Text(), pa.string()),
        ("cluster_id", sa.Integer(), pa.int32()),
    ),
    "cluster_categories": (
        ("cluster_id", sa.Integer(), pa.int32()),
        ("category", sa.Text(), pa.string()),
        ("share", sa.Float(), pa.float64()),
        ("mastered", sa.Integer(), pa.int32()),
    ),
    "popular_courses": (
        ("rank", sa.Integer(), pa.int32()),
        ("course_id", sa.Text(), pa.string()),
        ("score", sa.Float(), pa.float64()),
        ("reason", sa.Text(), pa.string()),
    ),
}
READER_TABLES = tuple(READER_COLUMNS)
# Tables a run must not publish empty: apps would have nothing to show.
_NON_EMPTY = ("student_recommendations", "popular_courses")

# Indexes built after the load: (suffix, columns, unique). The unique ones
# also enforce the contract "one row per (student, rank)" (in a nested
# table, see Nesting, the unique group and the positions in it do).
_INDEXES: dict[str, tuple[tuple[str, tuple[str, ...], bool], ...]] = {
    "student_recommendations": (("sr", ("student_id", "rank"), True),),
    "student_clusters": (("sc", ("student_id",), True),),
    "cluster_categories": (("cc", ("cluster_id",), False),),
    "popular_courses": (("pc", ("rank",), True),),
}


class Nesting(NamedTuple):
    """How a run table stores its rows one per group (PostgreSQL only).

    ``group`` and the ``per_group`` columns (one value per group) are
    stored as they are, ``order`` not at all (a row's position in its group
    is its order, 1..N), every other column as an array in that order; the
    view unnests the arrays back into one row per (group, order).
    """

    group: str
    order: str
    per_group: tuple[str, ...] = ()


# A million students' recommendations are stored as a million rows, not
# ten: the load took 0.7x the time of the flat table's, and the index on
# student_id 0.3x that of the (student_id, rank) index, which was a third
# of the publish.
_NESTED: dict[str, Nesting] = {
    "student_recommendations": Nesting("student_id", "rank", ("cluster_id",)),
}

QUARANTINE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("source", pa.string()),
    ("row_number", pa.int64()),
    ("column", pa.string()),
    ("value", pa.string()),
    ("reason", pa.string()),
)

metadata = sa.MetaData()

runs_table = sa.Table(
    "recommendation_runs",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("ds", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("is_current", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Column("rows_in", sa.BigInteger),
    sa.Column("rows_out", sa.BigInteger),
    sa.Column("quarantined", sa.BigInteger),
    sa.Column("students", sa.BigInteger),
    sa.Column("recommendations", sa.BigInteger),
    sa.Column("n_clusters", sa.Integer),
    sa.Column("inertia", sa.Float),
    sa.Column("silhouette", sa.Float),
    sa.Column("recall_at_10", sa.Float),
    sa.Column("summary", sa.Text),
    sa.Column("table_key", sa.Text),
)

quarantine_table = sa.Table(
    "quarantine",
    metadata,
    sa.Column("source", sa.Text),
    sa.Column("row_number", sa.BigInteger),
    sa.Column("column", sa.Text),
    sa.Column("value", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("run_id", sa.Text, nullable=False),
)

# Typed ledger columns filled from a run summary: column -> accepted keys.
_TYPED_KEYS: dict[str, tuple[str, ...]] = {
    "rows_in": ("rows_in",),
    "rows_out": ("rows_out",),
    "quarantined": ("quarantined", "rows_quarantined"),
    "students": ("students", "n_students"),
    "recommendations": ("recommendations", "n_recommendations"),
    "n_clusters": ("n_clusters", "k"),
    "inertia": ("inertia",),
    "silhouette": ("silhouette",),
    "recall_at_10": ("recall_at_10",),
}
_FLOAT_COLUMNS = {"inertia", "silhouette", "recall_at_10"}
_METRIC_COLUMNS = ("n_clusters", "inertia", "silhouette", "recall_at_10")

_LEDGER_LOCK = 0x7265_6373  # "recs": PostgreSQL advisory lock of ledger writers
_SWITCH_LOCK_TIMEOUT = "2s"  # longest time readers queue behind the view switch
_SWITCH_ATTEMPTS = 10
_KEY_PART = re.compile(r"[^a-z0-9]+")
_RUN_TABLE = re.compile(
    r"^(" + "|".join(READER_TABLES) + r")__([a-z0-9_]+)$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def get_engine(url: str) -> sa.Engine:
    """Create an engine for the warehouse at ``url``.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL. ``sqlite:///path`` or ``postgresql[+psycopg]://...``;
        a bare ``postgresql://`` URL is served by psycopg 3.

    Returns
    -------
    sqlalchemy.Engine

    Raises
    ------
    ValueError
        If the URL names another PostgreSQL driver than psycopg 3 (the loads
        use its COPY API).

    Notes
    -----
    SQLite engines get SQLAlchemy's pysqlite recipe: the ``sqlite3`` module's
    own transaction handling is switched off and the engine emits ``BEGIN``
    itself, so DDL inside a transaction is really transactional. The database
    runs in WAL mode, so readers are not blocked while a run is published.
    """
    sa_url = sa.make_url(url)
    backend = sa_url.get_backend_name()
    if backend == "sqlite":
        database = sa_url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sa_url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
    elif backend == "postgresql":
        if sa_url.drivername == "postgresql":
            sa_url = sa_url.set(drivername="postgresql+psycopg")
        if sa_url.drivername != "postgresql+psycopg":
            raise ValueError(
                "the warehouse loads PostgreSQL through psycopg 3; use a "
                f"'postgresql+psycopg://' URL, got driver {sa_url.drivername!r}"
            )
        engine = sa.create_engine(sa_url, pool_pre_ping=True)
    else:
        engine = sa.create_engine(sa_url)
    logger.debug("warehouse engine for %s", mask_url(url))
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


@contextlib.contextmanager
def _write_tx(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One write transaction; on SQLite it takes the write lock up front."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn


def _lock_ledger(conn: sa.Connection) -> None:
    """Serialise ledger writers (SQLite's BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LEDGER_LOCK)))


def _alembic_config(
    engine: sa.Engine, script_location: Path | None = None
) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or MIGRATIONS_DIR))
    cfg.set_main_option(
        "sqlalchemy.url",
        engine.url.render_as_string(hide_password=False).replace("%", "%%"),
    )
    return cfg


def ensure_schema(engine: sa.Engine) -> None:
    """Create or migrate the warehouse schema to the packaged head revision.

    Runs Alembic's ``upgrade head`` in one transaction (PostgreSQL and SQLite
    both have transactional DDL with :func:`get_engine`'s engines), under the
    ledger lock so that two processes do not migrate at once. When the
    database is already at head it only reads the version table.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The warehouse, from :func:`get_engine`.
    """
    _upgrade(engine, MIGRATIONS_DIR)


def _upgrade(engine: sa.Engine, script_location: Path) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(engine, script_location)
    scripts = ScriptDirectory.from_config(cfg)
    heads = set(scripts.get_heads())
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        )
        current = set(context.get_current_heads())
    if current == heads:
        return
    unknown = sorted(r for r in current if not _known_revision(scripts, r))
    if unknown:
        raise RuntimeError(
            f"the warehouse schema is at revision {unknown}, which this version "
            f"of recs does not know (its head is {sorted(heads)}); upgrade recs"
        )

    with _write_tx(engine) as conn:
        _lock_ledger(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    logger.info(
        "migrated warehouse %s from %s to %s",
        mask_url(engine.url.render_as_string(hide_password=False)),
        ",".join(sorted(current)) or "empty",
        ",".join(sorted(heads)),
    )


def _known_revision(scripts: Any, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def record_run(
    engine: sa.Engine,
    run_id: str,
    ds: str,
    status: str,
    reason: str | None = None,
    summary: dict | None = None,
) -> None:
    """Insert or update a run's row in the ``recommendation_runs`` ledger.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The warehouse.
    run_id : str
        The run's id (the ledger's primary key).
    ds : str
        The run date, ``YYYY-MM-DD``.
    status : {"running", "failed", "published"}
        ``"published"`` is accepted only for a run :func:`publish_run` has
        already published (to add to its summary); publishing itself, rolling
        back and superseding happen only through this module's switch.
    reason : str, optional
        Why the run failed; shown to operators.
    summary : dict, optional
        Counts, metrics and timings. Merged into the stored JSON summary (new
        keys win); known keys (``students``, ``recommendations``,
        ``quarantined``, ``n_clusters`` or ``k``, ``inertia``, ``silhouette``,
        ``recall_at_10``, ``rows_in``, ``rows_out``), at the top level or one
        level down, are copied to typed columns.

    Raises
    ------
    ValueError
        If ``status`` or ``ds`` is malformed, or the change would contradict
        the warehouse (marking the current published run failed, or calling a
        run published that never was).
    """
    if status not in ("running", "failed", "published"):
        raise ValueError(
            "record_run sets status 'running', 'failed' or 'published', "
            f"got {status!r}"
        )
    _check_ds(ds)
    ensure_schema(engine)
    now = _utcnow()
    with _write_tx(engine) as conn:
        _lock_ledger(conn)
        row = _ledger_row(conn, run_id)
        if row is not None and row["is_current"] and status != "published":
            raise ValueError(
                f"run {run_id!r} is the published run; roll it back before "
                f"marking it {status!r}"
            )
        if status == "published" and (row is None or row["status"] != "published"):
            raise ValueError(
                f"run {run_id!r} was never published; use publish_run, "
                f"got status {status!r}"
            )
        values = _ledger_values(row, summary)
        values.update(ds=ds, status=status)
        if reason is not None or status != "published":
            values["reason"] = reason
        if status == "failed":
            values["finished_at"] = now
        _upsert_run(conn, run_id, row, values, now)
    logger.info("recorded run %s (ds=%s) as %s", run_id, ds, status)


def _ledger_row(conn: sa.Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(runs_table).where(runs_table.c.run_id == run_id)
    ).mappings().first()
    return dict(row) if row is not None else None


def _ledger_values(
    row: Mapping[str, Any] | None, summary: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Merged summary JSON and typed columns for a ledger update."""
    stored = json.loads(row["summary"]) if row and row["summary"] else {}
    if not summary:
        return {}
    merged = {**stored, **summary}
    values: dict[str, Any] = {"summary": json.dumps(merged, default=_jsonable)}
    for column, keys in _TYPED_KEYS.items():
        value = _find_number(merged, keys)
        if value is not None:
            values[column] = float(value) if column in _FLOAT_COLUMNS else int(value)
    return values


def _find_number(summary: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """First numeric value under one of ``keys``, top level first."""
    levels = [summary] + [v for v in summary.values() if isinstance(v, Mapping)]
    for level in levels:
        for key in keys:
            value = level.get(key)
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
    return None


def _upsert_run(
    conn: sa.Connection,
    run_id: str,
    row: Mapping[str, Any] | None,
    values: dict[str, Any],
    now: dt.datetime,
) -> None:
    if row is None:
        conn.execute(
            runs_table.insert().values(
                run_id=run_id, is_current=False, started_at=now, **values
            )
        )
    else:
        conn.execute(
            runs_table.update().where(runs_table.c.run_id == run_id).values(**values)
        )


def write_quarantine(engine: sa.Engine, run_id: str, path: Path) -> int:
    """Replace a run's rows of the ``quarantine`` audit log from a Parquet file.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The warehouse.
    run_id : str
        The run the rows belong to; its earlier rows are deleted first, in
        the same transaction.
    path : pathlib.Path
        Parquet file with columns ``source``, ``row_number``, ``column``,
        ``value``, ``reason`` (a ``run_id`` column, if any, is ignored).

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    InputFileError
        If the file lacks one of the columns.
    """
    path = Path(path)
    columns = [name for name, _ in QUARANTINE_COLUMNS]
    _check_parquet(path, columns)
    ensure_schema(engine)
    started = time.perf_counter()
    with _write_tx(engine) as conn:
        conn.execute(
            quarantine_table.delete().where(quarantine_table.c.run_id == run_id)
        )
        rows = _load_table(
            conn,
            quarantine_table,
            path,
            dict(QUARANTINE_COLUMNS),
            constants={"run_id": run_id},
        )
    logger.info(
        "wrote %d quarantine rows of run %s in %.2f s",
        rows, run_id, time.perf_counter() - started,
    )
    return rows


def publish_run(
    engine: sa.Engine,
    run_id: str,
    ds: str,
    tables: dict[str, Path],
    summary: dict,
    keep_runs: int = 3,
) -> dict:
    """Publish a run's four reader tables in one switch.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The warehouse.
    run_id : str
        The run's id. Publishing the same id again (a retried task) replaces
        the earlier attempt.
    ds : str
        The run date, ``YYYY-MM-DD``. An earlier published run of the same
        date becomes ``superseded``; its tables stay, within ``keep_runs``,
        for :func:`rollback`.
    tables : dict of str to pathlib.Path
        Parquet file of each reader table: ``student_recommendations``,
        ``student_clusters``, ``cluster_categories``, ``popular_courses``,
        with the columns in :data:`READER_COLUMNS`. Files are read batch by
        batch. The views add ``run_id`` and ``generated_at``, which is the
        time of the switch (the ledger's ``published_at``).
    summary : dict
        The run's summary, stored in the ledger (see :func:`record_run`).
    keep_runs : int, default=3
        Published runs whose tables are kept (the new one included); older
        ones are dropped after the switch. At least 1; 2 or more allows
        :func:`rollback`.

    Returns
    -------
    dict
        ``run_id``, ``ds``, ``table_key``, ``rows`` (per table),
        ``seconds`` (``load``, ``index``, ``switch``, ``cleanup``, ``total``),
        ``previous_run_id``, ``superseded`` and ``dropped`` (run ids whose
        tables were dropped).

    Raises
    ------
    ValueError
        If ``tables`` does not name exactly the four reader tables or
        ``keep_runs`` < 1.
    PublishError
        If a file lacks a column or cannot be cast, if
        ``student_recommendations`` or ``popular_courses`` has no rows, or if
        anything else fails before the switch commits. The previous run stays
        published, no table of this attempt is left, and the ledger records
        the run as failed with the reason.

    Notes
    -----
    Everything up to the switch is one transaction: the loads (PostgreSQL
    ``COPY``, SQLite batched inserts), the indexes, the views re-pointed at
    the new tables and the ledger update. On PostgreSQL the switch holds an
    exclusive lock on the four views for milliseconds; readers arriving then
    wait for it. If a long-running reader keeps the switch from getting its
    lock, the switch gives up after 2 s (so readers never queue longer than
    that) and tries again, up to 10 times.
    """
    missing = sorted(set(READER_TABLES) - set(tables))
    extra = sorted(set(tables) - set(READER_TABLES))
    if missing or extra:
        raise ValueError(
            f"tables must name exactly {list(READER_TABLES)}, got missing "
            f"{missing} and unknown {extra}"
        )
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be >= 1, got {keep_runs}")
    _check_ds(ds)
    paths = {name: Path(tables[name]) for name in READER_TABLES}

    started = time.perf_counter()
    ensure_schema(engine)
    _mark_running(engine, run_id, ds)
    key = _table_key(run_id)
    seconds: dict[str, float] = {}
    try:
        for name, path in paths.items():
            _check_parquet(path, [c for c, _, _ in READER_COLUMNS[name]])
            if name in _NON_EMPTY and pq.read_metadata(path).num_rows == 0:
                raise InputFileError(
                    str(path), f"{name} has no rows; an empty run is not published"
                )
        with _write_tx(engine) as conn:
            rows = {}
            mark = time.perf_counter()
            for name, path in paths.items():
                nesting = _nesting(conn, name)
                table = _run_table(name, key, nesting)
                table.create(conn)
                types = {c: t for c, _, t in READER_COLUMNS[name]}
                rows[name] = _load_table(conn, table, path, types, nesting=nesting)
                logger.info("loaded %d rows into %s", rows[name], table.name)
            seconds["load"] = time.perf_counter() - mark

            mark = time.perf_counter()
            for name in READER_TABLES:
                _index_table(conn, name, key)
            seconds["index"] = time.perf_counter() - mark

            mark = time.perf_counter()
            _lock_ledger(conn)
            published_at = _utcnow()
            _point_views(conn, key, run_id, published_at)
            switch = _switch_ledger(
                conn, run_id, ds, key, summary, rows, published_at
            )
            seconds["switch"] = time.perf_counter() - mark
    except Exception as err:
        _mark_failed(engine, run_id, ds, err)
        raise PublishError(
            f"publishing run {run_id!r} (ds={ds}) failed; the previous run is "
            f"still published: {err}"
        ) from err
    logger.info(
        "published run %s (ds=%s) to %s: %s rows; previous run %s",
        run_id, ds, mask_url(engine.url.render_as_string(hide_password=False)),
        rows["student_recommendations"], switch["previous_run_id"],
    )

    mark = time.perf_counter()
    try:
        dropped = _drop_old_tables(engine, keep_runs)
    except sa.exc.SQLAlchemyError as err:
        # The run is published; old tables only cost space until the next try.
        logger.warning("could not drop old run tables (%s); next publish retries", err)
        dropped = []
    seconds["cleanup"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    return {
        "run_id": run_id,
        "ds": ds,
        "table_key": key,
        "rows": rows,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "previous_run_id": switch["previous_run_id"],
        "superseded": switch["superseded"],
        "dropped": dropped,
    }


def _mark_running(engine: sa.Engine, run_id: str, ds: str) -> None:
    """Make sure the run has a ledger row; a published row is left alone."""
    with _write_tx(engine) as conn:
        _lock_ledger(conn)
        row = _ledger_row(conn, run_id)
        if row is None:
            _upsert_run(conn, run_id, None, {"ds": ds, "status": "running"}, _utcnow())
        elif not row["is_current"]:
            _upsert_run(
                conn, run_id, row, {"ds": ds, "status": "running", "reason": None},
                _utcnow(),
            )


def _mark_failed(engine: sa.Engine, run_id: str, ds: str, err: Exception) -> None:
    """Record a failed publish, unless the run is (still) the published one."""
    reason = f"publish failed: {type(err).__name__}: {err}"[:2000]
    try:
        with _write_tx(engine) as conn:
            _lock_ledger(conn)
            row = _ledger_row(conn, run_id)
            if row is not None and row["is_current"]:
                return
            _upsert_run(
                conn, run_id, row,
                {"ds": ds, "status": "failed", "reason": reason,
                 "finished_at": _utcnow()},
                _utcnow(),
            )
    except sa.exc.SQLAlchemyError:
        logger.exception("could not record the failure of run %s", run_id)


def _table_key(run_id: str) -> str:
    """Key of one publish attempt's tables: readable run part plus a nonce."""
    slug = _KEY_PART.sub("_", run_id.lower()).strip("_")[:20] or "run"
    return f"{slug}_{uuid.uuid4().hex[:6]}"


def _run_table_name(name: str, key: str) -> str:
    return f"{name}__{key}"


def _nesting(conn: sa.Connection, name: str) -> Nesting | None:
    """How this warehouse stores run table ``name`` one row per group, if so."""
    return _NESTED.get(name) if conn.dialect.name == "postgresql" else None


def _run_table(name: str, key: str, nesting: Nesting | None = None) -> sa.Table:
    """A run's physical table: the data columns only.

    ``run_id`` and ``generated_at`` are the same in every row, so the views
    add them as constants instead (see :func:`_stamp_columns`); stored, they
    made a recommendation row about 20% bigger on disk. With ``nesting``,
    one row per group (see :class:`Nesting`).
    """
    columns = []
    for column, kind, _ in READER_COLUMNS[name]:
        if nesting is None or column in (nesting.group, *nesting.per_group):
            columns.append(sa.Column(column, kind))
        elif column != nesting.order:
            columns.append(sa.Column(column, postgresql.ARRAY(kind)))
    return sa.Table(_run_table_name(name, key), sa.MetaData(), *columns)


def _index_table(conn: sa.Connection, name: str, key: str) -> None:
    table = sa.Table(
        _run_table_name(name, key),
        sa.MetaData(),
        *(sa.Column(c, t) for c, t, _ in READER_COLUMNS[name]),
    )
    indexes = _INDEXES[name]
    nesting = _nesting(conn, name)
    if nesting is not None:
        # One row per group, unique on the group: the order within a group
        # is a position, unique by construction.
        indexes = tuple(
            (suffix, (nesting.group,), True) for suffix, _, _ in indexes[:1]
        )
    for suffix, columns, unique in indexes:
        index = sa.Index(
            f"ix_{key}_{suffix}", *(table.c[c] for c in columns), unique=unique
        )
        try:
            index.create(conn)
        except sa.exc.IntegrityError as err:
            diag = getattr(err.orig, "diag", None)
            detail = getattr(diag, "message_detail", None)
            raise ValueError(
                f"{name} has more than one row per ({', '.join(columns)})"
                + (f": {detail}" if detail else "")
            ) from None
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {_quote(conn, table.name)}")


def _stamp_columns(conn: sa.Connection, run_id: str, generated_at: dt.datetime) -> str:
    """``run_id`` and ``generated_at`` as typed SQL constants.

    PostgreSQL: ``text`` and ``timestamptz``, the types of the columns the
    views had when the run tables stored them (``CREATE OR REPLACE VIEW``
    refuses another type). SQLite: text, in the format SQLAlchemy stores
    datetimes in (a ``CAST`` to ``DATETIME`` would turn it into a number).
    """

    def text(value: str) -> str:
        literal = sa.literal(value, sa.Text())
        return str(literal.compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        ))

    if generated_at.tzinfo is None:  # SQLite returns the ledger's times naive
        generated_at = generated_at.replace(tzinfo=dt.UTC)
    generated_at = generated_at.astimezone(dt.UTC)
    if conn.dialect.name == "postgresql":
        stamp = f"CAST({text(generated_at.isoformat())} AS TIMESTAMP WITH TIME ZONE)"
    else:
        stamp = text(generated_at.strftime("%Y-%m-%d %H:%M:%S.%f"))
    return (
        f"CAST({text(run_id)} AS TEXT) AS {_quote(conn, 'run_id')}, "
        f"{stamp} AS {_quote(conn, 'generated_at')}"
    )


def _view_select(conn: sa.Connection, name: str, key: str, stamps: str) -> str:
    """The view of reader table ``name`` over the run table of ``key``.

    ``stamps`` (from :func:`_stamp_columns`) is used unless the table stores
    ``run_id`` and ``generated_at`` itself, as tables published before the
    views added them do; those are still selected for a rollback.
    """
    table = _run_table_name(name, key)
    stored = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table)}
    names = [c for c, _, _ in READER_COLUMNS[name]]
    if {"run_id", "generated_at"} <= set(stored):
        stamps = f"{_quote(conn, 'run_id')}, {_quote(conn, 'generated_at')}"
    arrays = [c for c in names if isinstance(stored.get(c), sa.ARRAY)]
    if not arrays:
        columns = ", ".join(_quote(conn, c) for c in names)
        return f"SELECT {columns}, {stamps} FROM {_quote(conn, table)}"
    # A nested table (see Nesting): unnest its arrays side by side; the
    # column it does not store is the position in the group.
    position = next(c for c in names if c not in stored)
    columns = ", ".join(
        f"r.{_quote(conn, c)}" if c in arrays
        else f"t.{_quote(conn, c)}" if c in stored
        else f"CAST(r.{_quote(conn, c)} AS INTEGER) AS {_quote(conn, c)}"
        for c in names
    )
    unnested = ", ".join(f"t.{_quote(conn, c)}" for c in arrays)
    aliases = ", ".join(_quote(conn, c) for c in [*arrays, position])
    return (
        f"SELECT {columns}, {stamps} FROM {_quote(conn, table)} AS t "
        f"CROSS JOIN LATERAL unnest({unnested}) WITH ORDINALITY AS r({aliases})"
    )


def _point_views(
    conn: sa.Connection, key: str, run_id: str, generated_at: dt.datetime
) -> None:
    """Re-point the four reader views at the tables of ``key``.

    ``run_id`` and ``generated_at`` are the stamps the views add to the rows.
    """
    stamps = _stamp_columns(conn, run_id, generated_at)
    selects = {name: _view_select(conn, name, key, stamps) for name in READER_TABLES}
    if conn.dialect.name != "postgresql":
        for name in READER_TABLES:
            conn.exec_driver_sql(f"DROP VIEW IF EXISTS {_quote(conn, name)}")
            conn.exec_driver_sql(f"CREATE VIEW {_quote(conn, name)} AS {selects[name]}")
        return
    # CREATE OR REPLACE keeps each view's identity, so a reader queued on its
    # lock reads the new definition once the switch commits.
    for attempt in range(1, _SWITCH_ATTEMPTS + 1):
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(
                    f"SET LOCAL lock_timeout = '{_SWITCH_LOCK_TIMEOUT}'"
                )
                for name in READER_TABLES:
                    conn.exec_driver_sql(
                        f"CREATE OR REPLACE VIEW {_quote(conn, name)} AS "
                        f"{selects[name]}"
                    )
        except sa.exc.OperationalError as err:
            # 55P03: lock timeout; 40P01: deadlock with a reader that locks
            # several views in another order than the switch.
            if getattr(err.orig, "sqlstate", None) not in ("55P03", "40P01"):
                raise
            if attempt == _SWITCH_ATTEMPTS:
                raise PublishError(
                    f"could not lock the reader views in {_SWITCH_ATTEMPTS} "
                    f"attempts of {_SWITCH_LOCK_TIMEOUT}: a long-running reader "
                    "holds them"
                ) from err
            logger.warning(
                "view switch waited %s for readers (attempt %d of %d); retrying",
                _SWITCH_LOCK_TIMEOUT, attempt, _SWITCH_ATTEMPTS,
            )
            time.sleep(0.5 * attempt)
        else:
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
            return


def _switch_ledger(
    conn: sa.Connection,
    run_id: str,
    ds: str,
    key: str,
    summary: Mapping[str, Any],
    rows: Mapping[str, int],
    now: dt.datetime,
) -> dict[str, Any]:
    """Ledger half of the switch; runs in the publish transaction.

    ``now`` becomes the run's ``published_at``: the ``generated_at`` its views
    show, and show again after a rollback to it.
    """
    r = runs_table.c
    previous = conn.execute(
        sa.select(r.run_id).where(r.is_current.is_(True))
    ).scalar()
    superseded = list(
        conn.execute(
            sa.select(r.run_id).where(
                r.ds == ds, r.run_id != run_id, r.status == "published"
            )
        ).scalars()
    )
    conn.execute(
        runs_table.update().where(r.is_current.is_(True)).values(is_current=False)
    )
    if superseded:
        conn.execute(
            runs_table.update()
            .where(r.run_id.in_(superseded))
            .values(status="superseded", reason=f"replaced by run {run_id}")
        )
    row = _ledger_row(conn, run_id)
    values = _ledger_values(row, {**summary, "published_rows": dict(rows)})
    values.setdefault("recommendations", rows["student_recommendations"])
    values.update(
        ds=ds, status="published", is_current=True, reason=None,
        published_at=now, finished_at=now, table_key=key,
    )
    _upsert_run(conn, run_id, row, values, now)
    if previous is not None and previous != run_id:
        prev_ds = conn.execute(sa.select(r.ds).where(r.run_id == previous)).scalar()
        if prev_ds is not None and prev_ds > ds:
            logger.warning(
                "run %s publishes ds=%s over the newer ds=%s of run %s",
                run_id, ds, prev_ds, previous,
            )
    return {"previous_run_id": previous, "superseded": superseded}


def _drop_old_tables(engine: sa.Engine, keep_runs: int | None) -> list[str]:
    """Drop run tables not needed any more; return the run ids concerned.

    Kept: the current run's tables and those of the latest ``keep_runs``
    published or superseded runs (all of them when ``keep_runs`` is None).
    Every other run table goes, including leftovers of earlier attempts that
    no ledger row points at. A table a reader still holds is left for the next
    publish to drop (PostgreSQL gives up after the lock timeout).
    """
    r = runs_table.c
    dropped: list[str] = []
    with _write_tx(engine) as conn:
        _lock_ledger(conn)
        ledger = conn.execute(
            sa.select(r.run_id, r.status, r.is_current, r.table_key)
            .where(r.table_key.is_not(None))
            .order_by(r.published_at.desc())
        ).all()
        published = [row for row in ledger if row.status in _ROLLBACK_STATUSES]
        keep = {row.table_key for row in ledger if row.is_current}
        kept = published if keep_runs is None else published[:keep_runs]
        keep |= {row.table_key for row in kept}
        owners = {row.table_key: row.run_id for row in ledger}

        by_key: dict[str, list[str]] = {}
        for table in sa.inspect(conn).get_table_names():
            match = _RUN_TABLE.match(table)
            if match and match.group(2) not in keep:
                by_key.setdefault(match.group(2), []).append(table)
        held = set()
        for key, names in sorted(by_key.items()):
            try:
                with conn.begin_nested():
                    if conn.dialect.name == "postgresql":
                        conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
                    for name in names:
                        conn.exec_driver_sql(f"DROP TABLE {_quote(conn, name)}")
            except sa.exc.OperationalError as err:
                logger.warning(
                    "could not drop the tables of %s yet (%s); the next publish "
                    "tries again", owners.get(key, key), err.orig,
                )
                held.add(key)
                continue
            dropped.append(owners.get(key, key))
        gone = [k for k in owners if k not in keep and k not in held]
        if gone:
            conn.execute(
                runs_table.update().where(r.table_key.in_(gone)).values(table_key=None)
            )
    if dropped:
        logger.info("dropped the tables of %d old runs: %s", len(dropped), dropped)
    return dropped


def rollback(engine: sa.Engine) -> dict:
    """Re-point the reader views at the previous retained published run.

    That is the latest run, other than the current one, that was published
    and still has its tables, including one a rerun of its date superseded
    (which is published again). The current run becomes ``rolled_back`` and
    its tables are dropped.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The warehouse.

    Returns
    -------
    dict
        ``run_id`` and ``ds`` of the run now published, and
        ``rolled_back_run_id``.

    Raises
    ------
    NoPublishedRunError
        If no run is published, or no earlier published run still has its
        tables.
    """
    ensure_schema(engine)
    r = runs_table.c
    with _write_tx(engine) as conn:
        _lock_ledger(conn)
        current = conn.execute(
            sa.select(r.run_id, r.ds).where(r.is_current.is_(True))
        ).first()
        if current is None:
            raise NoPublishedRunError("no run is published; nothing to roll back")
        target = conn.execute(
            sa.select(r.run_id, r.ds, r.table_key, r.published_at)
            .where(
                r.status.in_(_ROLLBACK_STATUSES),
                r.is_current.is_(False),
                r.table_key.is_not(None),
            )
            .order_by(r.published_at.desc())
            .limit(1)
        ).first()
        if target is None:
            raise NoPublishedRunError(
                f"run {current.run_id} is the only retained published run; "
                "nothing to roll back to"
            )
        _point_views(conn, target.table_key, target.run_id, target.published_at)
        conn.execute(
            runs_table.update()
            .where(r.run_id == current.run_id)
            .values(
                status="rolled_back", is_current=False,
                reason=f"rolled back to run {target.run_id}",
            )
        )
        conn.execute(
            runs_table.update()
            .where(r.run_id == target.run_id)
            .values(is_current=True, status="published", reason=None)
        )
    logger.info(
        "rolled back run %s (ds=%s); run %s (ds=%s) is published again",
        current.run_id, current.ds, target.run_id, target.ds,
    )
    _drop_old_tables(engine, None)
    return {
        "run_id": target.run_id,
        "ds": target.ds,
        "rolled_back_run_id": current.run_id,
    }


def current_run(engine: sa.Engine) -> dict | None:
    """Return the ledger row of the published run, or None.

    The ``summary`` column comes back parsed.
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs_table).where(runs_table.c.is_current.is_(True))
        ).mappings().first()
    return _run_dict(row) if row is not None else None


def recent_runs(engine: sa.Engine, limit: int = 20) -> list[dict]:
    """Return the latest ``limit`` ledger rows, newest first."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    r = runs_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(runs_table)
            .order_by(r.started_at.desc(), r.run_id.desc())
            .limit(limit)
        ).mappings().all()
    return [_run_dict(row) for row in rows]


def _run_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["summary"] = json.loads(out["summary"]) if out["summary"] else {}
    out["is_current"] = bool(out["is_current"])
    return out


def last_published_metrics(engine: sa.Engine) -> dict | None:
    """Return the published run's metrics, for the quality gate, or None.

    The typed metric columns (``n_clusters``, ``inertia``, ``silhouette``,
    ``recall_at_10``) that are set, updated with the summary's ``metrics``
    dict when it has one, plus ``run_id`` and ``ds``.
    """
    run = current_run(engine)
    if run is None:
        return None
    metrics = {k: run[k] for k in _METRIC_COLUMNS if run[k] is not None}
    nested = run["summary"].get("metrics")
    if isinstance(nested, Mapping):
        metrics.update(nested)
    return {"run_id": run["run_id"], "ds": run["ds"], **metrics}


def student_recommendations(engine: sa.Engine, student_id: str) -> dict | None:
    """Return one student's published recommendations, or None.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The warehouse.
    student_id : str
        The id as text (``"007"``); sent as a bound parameter.

    Returns
    -------
    dict or None
        ``student_id``, ``cluster_id``, ``run_id``, ``generated_at`` and
        ``recommendations`` (dicts with ``rank``, ``course_id``, ``score``,
        ``strategy``, ``reason``, ordered by rank); None when the published
        run has no row for the student.
    """
    if not isinstance(student_id, str):
        raise TypeError(f"student_id must be a str, got {type(student_id).__name__}")
    view = _view("student_recommendations")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(view)
            .where(view.c.student_id == sa.bindparam("student_id"))
            .order_by(view.c.rank),
            {"student_id": student_id},
        ).mappings().all()
    if not rows:
        return None
    first = rows[0]
    return {
        "student_id": student_id,
        "cluster_id": first["cluster_id"],
        "run_id": first["run_id"],
        "generated_at": first["generated_at"],
        "recommendations": [
            {k: row[k] for k in ("rank", "course_id", "score", "strategy", "reason")}
            for row in rows
        ],
    }


def popular_courses(engine: sa.Engine) -> list[dict]:
    """Return the published cold-start list, ordered by rank."""
    view = _view("popular_courses")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(view).order_by(view.c.rank)).mappings().all()
    return [dict(row) for row in rows]


def _view(name: str) -> sa.TableClause:
    columns = [sa.column(c, t) for c, t, _ in READER_COLUMNS[name]]
    columns += [
        sa.column("run_id", sa.Text()),
        sa.column("generated_at", sa.DateTime(timezone=True)),
    ]
    return sa.table(name, *columns)


def _check_parquet(path: Path, columns: list[str]) -> None:
    """Fail before loading anything when a file lacks a needed column."""
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as err:
        raise InputFileError(str(path), f"cannot read Parquet: {err}") from err
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputFileError(
            str(path),
            f"missing column {missing[0]!r} (needs {columns}, has {names})",
            column=missing[0],
        )


def _read_batches(
    path: Path,
    types: Mapping[str, pa.DataType],
    constants: Mapping[str, str],
    decode_dictionaries: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Parquet batches with the target columns, cast, and constant columns.

    Dictionary-encoded columns are passed on as they are (the CSV writer
    and ``to_pylist`` take them) unless ``decode_dictionaries`` is set.
    """
    names = list(types) + list(constants)
    source = pq.ParquetFile(path)
    try:
        for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=list(types)):
            arrays = []
            for name, target in types.items():
                column = batch.column(name)
                stored = column.type
                if pa.types.is_dictionary(stored) and not decode_dictionaries:
                    stored = stored.value_type
                if stored != target:
                    try:
                        column = pc.cast(column, target)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                        raise InputFileError(
                            str(path), f"column {name!r} is not {target}: {err}",
                            column=name,
                        ) from err
                arrays.append(column)
            arrays += [pa.repeat(v, batch.num_rows) for v in constants.values()]
            yield pa.RecordBatch.from_arrays(arrays, names=names)
    finally:
        source.close()


def _load_table(
    conn: sa.Connection,
    table: sa.Table,
    path: Path,
    types: Mapping[str, pa.DataType],
    constants: Mapping[str, str] | None = None,
    nesting: Nesting | None = None,
) -> int:
    """Append a Parquet file to ``table`` in the connection's transaction.

    PostgreSQL: ``COPY ... FROM STDIN (FORMAT binary)``, the batches encoded
    by pgpq; the server then parses no text (numbers arrive as they are
    stored), which made the load of 10M recommendation rows about 1.5x
    faster than COPY from CSV. With ``nesting``, one row per group (see
    :class:`Nesting` and :func:`_nested_batches`).
    SQLite: ``executemany`` per batch.

    Returns
    -------
    int
        Rows of the Parquet file loaded.
    """
    constants = dict(constants or {})
    columns = list(types) + list(constants)
    dbapi = conn.connection.driver_connection
    column_list = ", ".join(_quote(conn, c) for c in columns)
    rows = 0
    if conn.dialect.name == "postgresql":
        from pgpq import ArrowToPostgresBinaryEncoder

        batches = _read_batches(path, types, constants, decode_dictionaries=True)
        if nesting is not None:
            batches = _nested_batches(path, batches, nesting)
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return 0
        sql = (
            f"COPY {_quote(conn, table.name)} "
            f"({', '.join(_quote(conn, c) for c in first.schema.names)}) "
            "FROM STDIN (FORMAT binary)"
        )
        with dbapi.cursor() as cursor, cursor.copy(sql) as copy:
            encoder = ArrowToPostgresBinaryEncoder(first.schema)
            copy.write(encoder.write_header())
            for batch in itertools.chain([first], batches):
                copy.write(encoder.write_batch(batch))
            copy.write(encoder.finish())
        # Every row of the file went in (nested batches hold several each).
        return pq.read_metadata(path).num_rows

    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {_quote(conn, table.name)} ({column_list}) VALUES ({marks})"
    cursor = dbapi.cursor()
    try:
        for batch in _read_batches(path, types, constants):
            values = [_python_values(column) for column in batch.columns]
            cursor.executemany(sql, zip(*values, strict=True))
            rows += batch.num_rows
    finally:
        cursor.close()
    return rows


def _nested_batches(
    path: Path, batches: Iterator[pa.RecordBatch], nesting: Nesting
) -> Iterator[pa.RecordBatch]:
    """Batches of one row per group, as :class:`Nesting` stores them.

    The recommend step writes rows sorted by (group, order), and those are
    grouped batch by batch as they are read, so the COPY streams; other
    files are sorted whole first.
    """
    group, order = nesting.group, nesting.order
    keys = pq.read_table(path, columns=[group, order])
    if not _sorted_by(keys.column(group), keys.column(order)):
        table = pa.Table.from_batches(list(batches))
        batches = iter(
            table.sort_by([(group, "ascending"), (order, "ascending")]).to_batches(
                BATCH_ROWS
            )
        )
    # The last group of a batch may go on in the next one: it is kept back,
    # then joined by the head of the next batch. Only those few rows are
    # copied; the rest of each batch is nested as it was read.
    pending: pa.Table | None = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        if pending is not None:
            keys, key = table.column(group), pending.column(group)[0]
            head = 0
            while head < len(table) and keys[head] == key:
                head += 1
            pending = pa.concat_tables([pending, table.slice(0, head)])
            if head == len(table):
                continue
            yield _nest(path, pending, nesting)
            table = table.slice(head)
        keys = table.column(group)
        last = len(table) - 1
        while last > 0 and keys[last - 1] == keys[len(table) - 1]:
            last -= 1
        if last > 0:
            yield _nest(path, table.slice(0, last), nesting)
        pending = table.slice(last)
    if pending is not None and len(pending):
        yield _nest(path, pending, nesting)


def _nest(path: Path, table: pa.Table, nesting: Nesting) -> pa.RecordBatch:
    """One row per group of a table sorted by (group, order).

    Refused, naming the first group concerned: a null group, orders other
    than 1..N within a group (the contract of the flat rows: no gaps, no
    repeats) and a ``per_group`` column that varies within a group.
    """
    import numpy as np

    group, order = nesting.group, nesting.order
    table = table.combine_chunks()
    columns = {name: table.column(name).chunk(0) for name in table.column_names}
    keys = columns[group]
    if keys.null_count:
        raise InputFileError(
            str(path), f"{keys.null_count} rows have no {group}", column=group
        )
    same = pc.equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(~same) + 1])
    lengths = np.diff(np.append(starts, len(table)))
    owner = np.repeat(np.arange(len(starts)), lengths)
    position = np.arange(len(table)) - starts[owner] + 1
    ranks = columns[order]
    missing = ranks.is_null().to_numpy(zero_copy_only=False)
    values = ranks.fill_null(0).to_numpy()
    repeated = np.append(False, same & (values[1:] == values[:-1]))
    problems = [
        (missing, f"a null {order}"),
        (repeated, f"the same {order} twice"),
        (~missing & ~repeated & (values != position), f"{order}s other than 1..N"),
    ]
    for name in nesting.per_group:
        column, firsts = columns[name], columns[name].take(pa.array(starts[owner]))
        equal = pc.or_kleene(
            pc.equal(column, firsts), pc.and_(column.is_null(), firsts.is_null())
        )
        problems.append(
            (~pc.fill_null(equal, False).to_numpy(zero_copy_only=False),
             f"more than one {name}")
        )
    for rows, problem in problems:
        if rows.any():
            first = keys[int(np.flatnonzero(rows)[0])].as_py()
            raise InputFileError(
                str(path),
                f"{group} {first!r} has {problem} ({int(rows.sum())} such rows in "
                f"all); a {group}'s rows need {order}s 1..N and one value of "
                f"{', '.join(nesting.per_group) or 'each column'}",
                column=order,
            )
    offsets = pa.array(np.append(starts, len(table)), pa.int32())
    arrays, names = [], []
    for name, column in columns.items():
        if name in (group, *nesting.per_group):
            arrays.append(column.take(pa.array(starts)))
        elif name != order:
            arrays.append(pa.ListArray.from_arrays(offsets, column))
        else:
            continue
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _sorted_by(keys: pa.ChunkedArray, ranks: pa.ChunkedArray) -> bool:
    """Whether rows are sorted by key, then by rank within a key."""
    if len(keys) < 2:
        return True
    before, after = keys[:-1], keys[1:]
    if not pc.all(pc.less_equal(before, after)).as_py():
        return False
    ties = pc.equal(before, after)
    return bool(pc.all(pc.or_(pc.invert(ties), pc.less_equal(ranks[:-1], ranks[1:])))
                .as_py())


def _python_values(column: pa.Array) -> list[Any]:
    """A column as a list of Python values (None for nulls), for executemany.

    Text is looked up through a dictionary, so each distinct value becomes
    one Python string shared by its rows, and numbers go through NumPy:
    ``to_pylist`` built an Arrow scalar per value and took 5 s of a SQLite
    load's 6.5 s per million recommendation rows.
    """
    import numpy as np

    kind = column.type
    if pa.types.is_dictionary(kind) or pa.types.is_string(kind):
        encoded = column
        if not pa.types.is_dictionary(kind):
            encoded = pc.dictionary_encode(column)
        words = np.empty(len(encoded.dictionary) + 1, dtype=object)
        words[:-1] = encoded.dictionary.to_pylist()  # the last one stays None
        indices = pc.fill_null(encoded.indices, -1).to_numpy()
        return words[indices].tolist()
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if column.null_count or not numeric:
        return column.to_pylist()
    return column.to_numpy().tolist()


def _quote(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _check_ds(ds: str) -> None:
    if not isinstance(ds, str) or not _DATE.match(ds):
        raise ValueError(f"ds must look like YYYY-MM-DD, got {ds!r}")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run summary")
