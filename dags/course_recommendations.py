"""
### Course recommendations, nightly

Turns the course catalogue and students' viewing progress into precomputed
course recommendations ("learners like you mastered..."), published to the
warehouse table `student_recommendations` for downstream apps.

Steps: **extract** a raw snapshot of the source, **validate** it with Great
Expectations (bad rows go to the `quarantine` table; too many stop the run),
build **features** (average progress per category and course factors),
**cluster** students with k-means, **recommend** what cluster peers mastered,
**evaluate** offline quality against baselines (a gate), and **publish** every
table of the run in one atomic switch.

A failed run leaves the published tables as they were; the ledger table
`recommendation_runs` and the task log say why. Settings come from `RECS_*`
environment variables, overridden by the params below; the warehouse is the
Airflow connection `recs_warehouse` when it exists.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

WAREHOUSE_CONN_ID = "recs_warehouse"
SOURCE_CONN_ID = "recs_source"
RECOMMENDATIONS = Asset(
    name="student_recommendations",
    uri="recs://warehouse/student_recommendations",
    group="recommendations",
)
IO_RETRIES = {
    "retries": 2,
    "retry_delay": pendulum.duration(minutes=2),
    "retry_exponential_backoff": True,
}
log = logging.getLogger(__name__)

PARAMS = {
    "courses": Param(
        None,
        type=["null", "string"],
        description="Courses file (CSV/Parquet path or URL). "
        "Empty: RECS_COURSES or the bundled sample.",
    ),
    "progress": Param(
        None,
        type=["null", "string"],
        description="Progress file (CSV/Parquet path or URL).",
    ),
    "n_clusters": Param(
        None,
        type=["null", "integer", "string"],
        minimum=1,
        maximum=1000,
        pattern="^auto$",
        description="Number of clusters (1-1000), or 'auto' to pick it by "
        "silhouette. Empty: 20.",
    ),
    "top_n": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=100,
        description="Recommendations per student. Empty: 10.",
    ),
    "max_bad_share": Param(
        None,
        type=["null", "number"],
        minimum=0,
        maximum=1,
        description="Largest share of bad rows per input "
        "before the run stops. Empty: 0.05.",
    ),
    "quality_gate": Param(
        True,
        type="boolean",
        description="Stop the run when offline quality drops. "
        "Turn off to publish one run regardless.",
    ),
    "settings": Param(
        {},
        type="object",
        description="Any other setting by name, e.g. "
        '{"progress_column": "rating", '
        '"progress_format": "number", '
        '"progress_scale": 5}.',
    ),
}


def _settings() -> Any:
    """Settings for this run: environment, then connections, then params.

    A setting that is unknown or cannot be read fails the task at once:
    retrying cannot fix it.
    """
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return _read_settings()
    except (TypeError, ValueError) as err:
        raise AirflowFailException(f"bad settings: {err}") from err


def _read_settings() -> Any:
    from recs.settings import Settings

    params = dict(get_current_context()["params"])
    overrides = dict(params.pop("settings", None) or {})
    overrides.update({k: v for k, v in params.items() if v is not None})
    warehouse = _connection_url(WAREHOUSE_CONN_ID)
    if warehouse and "warehouse_url" not in overrides:
        overrides["warehouse_url"] = warehouse
    source = _connection_url(SOURCE_CONN_ID)
    if source and "source_url" not in overrides and overrides.get("courses_query"):
        overrides["source_url"] = source
    return Settings.from_env(**overrides)


def _connection_url(conn_id: str) -> str | None:
    """SQLAlchemy URL of an Airflow connection, or None when it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    uri = conn.get_uri()
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri.removeprefix(prefix)
    return uri


def _step(name: str, run: dict[str, str]) -> dict[str, Any]:
    """Run one recs step; gate failures fail the task at once, without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from recs.context import RunContext
    from recs.errors import InputFileError, QualityGateError, ValidationGateError
    from recs.pipeline import run_step

    try:
        summary = run_step(name, RunContext.from_dict(run), _settings())
    except (ValidationGateError, QualityGateError, InputFileError) as err:
        raise AirflowFailException(f"{name} stopped the run: {err}") from err
    return {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}


def _log_failure(context: dict[str, Any]) -> None:
    """Write one line that says which run and step failed, and why."""
    ti = context.get("task_instance")
    log.error(
        "course_recommendations failed: run %s, task %s: %s",
        context.get("run_id"),
        getattr(ti, "task_id", "?"),
        context.get("exception"),
    )


@dag(
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["recommendations", "etl"],
    params=PARAMS,
    default_args={
        "owner": "data-engineering",
        "retries": 0,
        "on_failure_callback": _log_failure,
    },
)
def course_recommendations() -> None:
    @task(**IO_RETRIES)
    def start() -> dict[str, str]:
        """Create the run context and record the run as started (recs.pipeline)."""
        from recs.context import RunContext
        from recs.pipeline import start_run

        context = get_current_context()
        settings = _settings()
        dag_run = context["dag_run"]
        when = dag_run.logical_date or dag_run.run_after
        run = RunContext.create(
            settings.data_root, ds=when.date().isoformat(), key=dag_run.run_id
        )
        start_run(run, settings)
        return run.as_dict()

    @task(**IO_RETRIES)
    def extract(run: dict[str, str]) -> dict[str, str]:
        """Snapshot the source (recs.extract.extract)."""
        _step("extract", run)
        return run

    @task
    def validate(run: dict[str, str]) -> dict[str, str]:
        """Check both inputs and quarantine bad rows (recs.validate.validate)."""
        _step("validate", run)
        return run

    @task
    def features(run: dict[str, str]) -> dict[str, str]:
        """Build the feature tables (recs.features.build_features)."""
        _step("features", run)
        return run

    @task
    def cluster(run: dict[str, str]) -> dict[str, str]:
        """Fit k-means (recs.cluster.fit_clusters)."""
        _step("cluster", run)
        return run

    @task
    def recommend(run: dict[str, str]) -> dict[str, str]:
        """Rank courses per student (recs.recommend.recommend)."""
        _step("recommend", run)
        return run

    @task
    def evaluate(run: dict[str, str]) -> dict[str, str]:
        """Measure offline quality and apply the gate (recs.evaluate.evaluate_run)."""
        _step("evaluate", run)
        return run

    @task(outlets=[RECOMMENDATIONS], **IO_RETRIES)
    def publish(run: dict[str, str]) -> dict[str, Any]:
        """Switch the warehouse to this run (recs.warehouse.publish_run)."""
        return _step("publish", run)

    publish(evaluate(recommend(cluster(features(validate(extract(start())))))))


course_recommendations()
