"""The whole DAG, run through Airflow's own test entry (`airflow dags test`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))

pytestmark = pytest.mark.airflow


def _airflow_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECS_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "RECS_DATA_DIR": str(tmp_path / "var"),
            "RECS_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'warehouse.db'}",
        }
    )
    return env


def _airflow(
    env: dict[str, str], *args: str, timeout: int = 600, succeed: bool = True
) -> str:
    done = subprocess.run(
        [AIRFLOW, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == succeed, output[-4000:]
    return output


def test_dags_test_runs_every_task_and_publishes(tmp_path: Path) -> None:
    env = _airflow_env(tmp_path)
    _airflow(env, "db", "migrate")
    assert "No data found" in _airflow(env, "dags", "list-import-errors")
    output = _airflow(env, "dags", "test", "course_recommendations", "2026-12-03")
    assert "state=success" in output or "DagRun Finished" in output, output[-4000:]

    engine = sa.create_engine(env["RECS_WAREHOUSE_URL"])
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT status, ds FROM recommendation_runs")).all()
        students = conn.execute(
            sa.text("SELECT COUNT(DISTINCT student_id) FROM student_recommendations")
        ).scalar_one()
        max_rank = conn.execute(
            sa.text("SELECT MAX(rank) FROM student_recommendations")
        ).scalar_one()
    engine.dispose()
    assert [tuple(r) for r in runs] == [("published", "2026-12-03")]
    assert students == 1000
    assert max_rank == 10


def test_dags_test_fails_a_bad_setting_at_once(tmp_path: Path) -> None:
    env = _airflow_env(tmp_path)
    _airflow(env, "db", "migrate")
    conf = '{"settings": {"bogus_setting": 1}}'
    output = _airflow(
        env, "dags", "test", "course_recommendations", "2026-12-03", "--conf", conf,
        succeed=False,
    )
    assert "bad settings: unknown setting 'bogus_setting'" in output
    assert "new_state=failed" in output
    assert "up_for_retry" not in output  # retrying cannot fix a setting
