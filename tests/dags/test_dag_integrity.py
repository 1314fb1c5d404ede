"""DAG integrity: dags/ parses cleanly and each DAG is set up the way operators expect.

dags/ is parsed in a fresh interpreter by ``dag_probe.py`` (the way Airflow's DAG
processor does it), so ``sys.modules`` there shows what parsing alone imports.
Each failure message names the DAG id and its file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
PROBE = Path(__file__).with_name("dag_probe.py")
IO_TASKS = ("start", "extract", "publish")
PUBLISHED_ASSET = "student_recommendations"


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What parsing dags/ produced, from a clean interpreter and AIRFLOW_HOME."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECS_"))
    }
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    })
    done = subprocess.run(
        [sys.executable, str(PROBE), str(DAGS)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dags(parsed: dict[str, Any]) -> dict[str, Any]:
    assert parsed["dags"], f"no DAG found in {DAGS}"
    return parsed["dags"]


def _where(dag_id: str, dag: dict[str, Any]) -> str:
    return f"DAG {dag_id!r} in {dag['fileloc']}"


def test_dags_import_without_errors_or_warnings(parsed: dict[str, Any]) -> None:
    assert parsed["import_errors"] == {}, parsed["import_errors"]
    assert parsed["warnings"] == {}, parsed["warnings"]


def test_dags_parse_without_heavy_imports(parsed: dict[str, Any]) -> None:
    assert parsed["heavy_modules"] == [], (
        f"parsing {DAGS} imported {parsed['heavy_modules']}; "
        "import them inside task bodies"
    )


def test_dags_parse_without_connections_or_variables(parsed: dict[str, Any]) -> None:
    assert parsed["secret_lookups"] == []


def test_dags_parse_quickly(parsed: dict[str, Any]) -> None:
    assert parsed["seconds"] < 5, f"parsing {DAGS} took {parsed['seconds']:.1f} s"


def test_course_recommendations_is_found(dags: dict[str, Any]) -> None:
    assert "course_recommendations" in dags
    dag = dags["course_recommendations"]
    assert Path(dag["fileloc"]).name == "course_recommendations.py"


def test_dags_have_tags_doc_and_owner(dags: dict[str, Any]) -> None:
    for dag_id, dag in dags.items():
        where = _where(dag_id, dag)
        assert dag["tags"], f"{where} has no tags"
        assert dag["doc_md"] and len(dag["doc_md"].strip()) > 100, (
            f"{where} has no doc_md for the UI"
        )
        for task_id, task in dag["tasks"].items():
            assert task["owner"] not in ("", "airflow"), (
                f"{where}: task {task_id} has the default owner"
            )
            assert task["doc"], f"{where}: task {task_id} has no docstring"


def test_course_recommendations_schedule(dags: dict[str, Any]) -> None:
    dag = dags["course_recommendations"]
    assert dag["schedule"] == "0 2 * * *"
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1


@pytest.mark.parametrize("task_id", IO_TASKS)
def test_course_recommendations_retries_io_tasks(
    dags: dict[str, Any], task_id: str
) -> None:
    dag = dags["course_recommendations"]
    task = dag["tasks"][task_id]
    assert task["retries"] >= 1, f"{_where('course_recommendations', dag)}: {task_id}"
    assert task["retry_exponential_backoff"]


def test_course_recommendations_params_are_described(dags: dict[str, Any]) -> None:
    dag = dags["course_recommendations"]
    assert {"courses", "progress", "n_clusters", "top_n", "max_bad_share",
            "quality_gate", "settings"} <= set(dag["params"])
    for name, param in dag["params"].items():
        assert param["description"], f"param {name} has no description"
        assert param["schema"].get("type"), f"param {name} has no type"


def test_course_recommendations_params_validate(
    parsed: dict[str, Any], dags: dict[str, Any]
) -> None:
    cases = dags["course_recommendations"]["param_cases"]
    wrong = [
        f"{name}={value!r}: accepted={got}, expected {want}"
        for (name, value, got), (_, _, want) in zip(
            cases, parsed["param_expected"], strict=True
        )
        if got != want
    ]
    assert wrong == []


def test_course_recommendations_publishes_asset(dags: dict[str, Any]) -> None:
    tasks = dags["course_recommendations"]["tasks"]
    outlets = {t: [a["name"] for a in task["outlets"]] for t, task in tasks.items()}
    assert outlets["publish"] == [PUBLISHED_ASSET]
    assert [t for t, names in outlets.items() if names] == ["publish"]


def test_course_recommendations_logs_one_failure_line(dags: dict[str, Any]) -> None:
    for task_id, task in dags["course_recommendations"]["tasks"].items():
        lines = [line for line in task["failure_log"] if line.startswith("ERROR")]
        assert len(lines) == 1, task["failure_log"]
        assert f"task {task_id}" in lines[0]
        assert "run scheduled__2026-12-03" in lines[0]
        assert "12% bad rows" in lines[0]
