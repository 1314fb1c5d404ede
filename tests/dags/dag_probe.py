"""Parse dags/ the way Airflow's DAG processor does; print what the tests check.

Run as a script in a fresh interpreter (``python dag_probe.py <dags folder>``)
so that ``sys.modules`` shows what parsing alone imported. Prints one JSON
object on the last line of stdout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

HEAVY = ("pandas", "sklearn", "scipy", "great_expectations")
PARAM_CASES = [
    ("n_clusters", 20, True),
    ("n_clusters", "auto", True),
    ("n_clusters", None, True),
    ("n_clusters", 0, False),
    ("n_clusters", "twenty", False),
    ("top_n", 10, True),
    ("top_n", 0, False),
    ("top_n", 101, False),
    ("max_bad_share", 0.1, True),
    ("max_bad_share", 1.5, False),
    ("quality_gate", False, True),
    ("quality_gate", "yes", False),
    ("settings", {"progress_format": "number"}, True),
    ("settings", "progress_format=number", False),
    ("courses", "/data/courses.csv", True),
    ("courses", 3, False),
]


def watch_secrets(calls: list[str]) -> None:
    """Record any connection or variable lookup made while parsing."""
    import airflow.sdk
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable

    def record(kind: str) -> Any:
        def lookup(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{kind} {args} {kwargs}")
            raise RuntimeError(f"{kind} looked up while parsing")

        return staticmethod(lookup)

    airflow.sdk.Connection.get = record("Connection.get")
    airflow.sdk.Variable.get = record("Variable.get")
    Connection.get_connection_from_secrets = record("Connection.from_secrets")
    Variable.get = record("Variable.get")


def check_params(dag: Any) -> list[list[Any]]:
    from airflow.sdk.definitions.param import ParamValidationError

    results = []
    for name, value, _expected in PARAM_CASES:
        param = dag.params.get_param(name)
        try:
            param.resolve(value)
            accepted = True
        except ParamValidationError:
            accepted = False
        results.append([name, value, accepted])
    return results


def failure_line(task: Any) -> list[str]:
    """Run the task's failure callbacks on a fake context; return what they log."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.getMessage()}")

    handler = Keep()
    logging.getLogger().addHandler(handler)
    context = {
        "run_id": "scheduled__2026-12-03T02:00:00+00:00",
        "task_instance": type("TI", (), {"task_id": task.task_id})(),
        "exception": ValueError("progress: 12% bad rows, above 5%"),
    }
    try:
        for callback in task.on_failure_callback or []:
            callback(context)
    finally:
        logging.getLogger().removeHandler(handler)
    return records


def main(folder: str) -> None:
    calls: list[str] = []
    watch_secrets(calls)
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=folder)
    seconds = time.perf_counter() - started
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "fileloc": dag.fileloc,
            "tags": sorted(dag.tags),
            "doc_md": dag.doc_md,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "schedule": str(dag.schedule),
            "params": {
                name: {"description": p.description, "schema": p.schema}
                for name, p in dag.params.items()
            },
            "param_cases": check_params(dag),
            "tasks": {
                t.task_id: {
                    "owner": t.owner,
                    "retries": t.retries,
                    "retry_exponential_backoff": bool(t.retry_exponential_backoff),
                    "doc": t.doc_md or t.doc or "",
                    "outlets": [
                        {"name": a.name, "uri": a.uri} for a in t.outlets
                    ],
                    "failure_log": failure_line(t),
                }
                for t in dag.tasks
            },
        }
    print(json.dumps({
        "import_errors": {str(k): v for k, v in bag.import_errors.items()},
        "warnings": {str(k): list(v) for k, v in bag.captured_warnings.items()},
        "seconds": seconds,
        "heavy_modules": heavy,
        "secret_lookups": calls,
        "dags": dags,
        "param_expected": PARAM_CASES,
    }, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
