"""Run the pipeline's steps in order, keeping the run ledger up to date.

Both the CLI and the Airflow DAG call :func:`run_step`; it wraps each step
so that a failure anywhere is recorded in the warehouse's run ledger before
it propagates, and so that the quarantine log is written even for a run the
validation gate stops.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from recs.context import RunContext
from recs.settings import Settings

logger = logging.getLogger(__name__)

STEPS = (
    "extract",
    "validate",
    "features",
    "cluster",
    "recommend",
    "evaluate",
    "publish",
)
LEDGER_COUNTS = {
    "courses_in": ("validate", "courses", "rows"),
    "progress_in": ("validate", "progress", "rows"),
    "courses_quarantined": ("validate", "courses", "quarantined"),
    "progress_quarantined": ("validate", "progress", "quarantined"),
    "duplicates": ("validate", "progress", "duplicates"),
    "students": ("cluster", "students"),
    "n_clusters": ("cluster", "n_clusters"),
    "inertia": ("cluster", "inertia"),
    "silhouette": ("cluster", "silhouette"),
    "recommendations": ("recommend", "recommendations"),
}


# Where each step lives; imported only when it runs, so that the DAG's
# tasks load just what their step needs.
STEP_FUNCTIONS = {
    "extract": ("recs.extract", "extract"),
    "validate": ("recs.pipeline", "_validate"),
    "features": ("recs.features", "build_features"),
    "cluster": ("recs.cluster", "fit_clusters"),
    "recommend": ("recs.recommend", "recommend"),
    "evaluate": ("recs.evaluate", "evaluate_run"),
    "publish": ("recs.pipeline", "_publish"),
}


def _step_function(name: str) -> Callable[[RunContext, Settings], dict[str, Any]]:
    if name not in STEP_FUNCTIONS:
        raise ValueError(f"unknown step {name!r}; expected one of {STEPS}")
    module, attribute = STEP_FUNCTIONS[name]
    return getattr(importlib.import_module(module), attribute)


@contextmanager
def warehouse_engine(settings: Settings) -> Iterator[Any]:
    """Engine of the run's warehouse, schema up to date, disposed on exit."""
    from recs import warehouse

    engine = warehouse.get_engine(settings.warehouse_url)
    try:
        warehouse.ensure_schema(engine)
        yield engine
    finally:
        engine.dispose()


def start_run(run: RunContext, settings: Settings) -> None:
    """Record the run in the ledger as running."""
    from recs import warehouse

    with warehouse_engine(settings) as engine:
        warehouse.record_run(
            engine,
            run.run_id,
            run.ds,
            "running",
            summary={"settings": settings.public_dict()},
        )


def use_arrow_memory_pool() -> str:
    """Take Arrow's buffers from jemalloc, unless ``ARROW_DEFAULT_MEMORY_POOL`` is set.

    Arrow's default pool, mimalloc, hands freed memory back to the system
    within milliseconds, so a step that allocates and frees gigabytes keeps
    asking for fresh pages. Where those are costly (virtual machines that
    report free pages to their host), the million-student steps were
    measured 10-20% faster with jemalloc, which keeps freed pages for a
    while. Returns the name of the pool in use.
    """
    import pyarrow as pa

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            logger.debug("jemalloc is not available; Arrow keeps its default pool")
    return pa.default_memory_pool().backend_name


def run_step(name: str, run: RunContext, settings: Settings) -> dict[str, Any]:
    """Run one step; on failure, record it in the ledger and re-raise.

    Returns
    -------
    dict
        The step's summary (small: counts, paths, metrics, seconds).
    """
    use_arrow_memory_pool()
    function = _step_function(name)
    started = time.perf_counter()
    try:
        summary = function(run, settings)
    except Exception as err:
        record_failure(run, settings, name, err)
        raise
    logger.info("step %s done in %.1f s", name, time.perf_counter() - started)
    return summary


def record_failure(
    run: RunContext, settings: Settings, step: str, error: BaseException
) -> None:
    """Mark the run failed in the ledger, with the step and the reason."""
    from recs import warehouse

    reason = f"{step}: {error}"
    try:
        with warehouse_engine(settings) as engine:
            warehouse.record_run(
                engine,
                run.run_id,
                run.ds,
                "failed",
                reason=reason,
                summary=ledger_summary(run),
            )
    except Exception:  # the original error matters more than the ledger's
        logger.exception("could not record the failure of run %s", run.run_id)


def ledger_summary(run: RunContext) -> dict[str, Any]:
    """The run's figures for the ledger, gathered from its step summaries."""
    steps = run.read_summaries()
    summary: dict[str, Any] = {"ds": run.ds}
    for key, path in LEDGER_COUNTS.items():
        value: Any = steps
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            summary[key] = value
    summary["quarantined"] = summary.get("courses_quarantined", 0) + summary.get(
        "progress_quarantined", 0
    )
    if "progress_in" in summary:
        summary["rows_in"] = summary.get("courses_in", 0) + summary["progress_in"]
    if "recommendations" in summary:
        summary["rows_out"] = summary["recommendations"]
    summary["timings"] = {
        step: data["seconds"] for step, data in steps.items() if "seconds" in data
    }
    if "evaluate" in steps:
        summary["metrics"] = steps["evaluate"].get("metrics")
        summary["recall_at_10"] = (summary["metrics"] or {}).get("recall_at_10")
        summary["quality_gate"] = steps["evaluate"].get("gate")
    if "validate" in steps:
        summary["validation"] = steps["validate"].get("expectations")
        summary["data_docs"] = steps["validate"].get("data_docs")
    if "cluster" in steps:
        summary["cluster_sizes"] = steps["cluster"].get("cluster_sizes")
        summary["k_choice"] = steps["cluster"].get("k_choice")
    return summary


def _validate(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Validate, then log the quarantine in the warehouse whatever the outcome."""
    from recs import warehouse
    from recs.validate import validate

    try:
        return validate(run, settings)
    finally:
        quarantine = run.run_dir / "quarantine.parquet"
        if quarantine.exists():
            with warehouse_engine(settings) as engine:
                warehouse.write_quarantine(engine, run.run_id, quarantine)


def _publish(run: RunContext, settings: Settings) -> dict[str, Any]:
    from recs import warehouse
    from recs.recommend import OUTPUT_TABLES

    out_dir = run.partition("recommendations")
    tables = {name: out_dir / f"{name}.parquet" for name in OUTPUT_TABLES}
    with warehouse_engine(settings) as engine:
        result = warehouse.publish_run(
            engine,
            run.run_id,
            run.ds,
            tables,
            ledger_summary(run),
            keep_runs=settings.keep_runs,
        )
    run.write_summary("publish", result)
    return result


def run_pipeline(
    settings: Settings,
    ds: str | None = None,
    key: str | None = None,
    steps: tuple[str, ...] = STEPS,
    on_step: Callable[[str, int, int, dict[str, Any] | None], None] | None = None,
) -> tuple[RunContext, dict[str, dict[str, Any]]]:
    """Run ``steps`` in order for one date; stop at the first failure.

    ``on_step(name, index, total, summary)`` is called before each step
    (summary None) and after it, for progress display.
    """
    run = RunContext.create(settings.data_root, ds=ds, key=key)
    start_run(run, settings)
    results: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(steps, start=1):
        if on_step:
            on_step(name, index, len(steps), None)
        results[name] = run_step(name, run, settings)
        if on_step:
            on_step(name, index, len(steps), results[name])
    return run, results
