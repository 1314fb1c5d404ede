"""Shared test fixtures: locations of the shared cases and data, run helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from recs.context import RunContext
from recs.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared folder beside the repository (cases and real data sets)."""
    configured = os.environ.get("RECS_SHARED_DIR")
    return Path(configured) if configured else REPO.parent / "shared"


def require_shared(*parts: str) -> Path:
    """Path inside shared/; skip locally when absent, fail under CI."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            raise FileNotFoundError(
                f"{path} is missing; CI needs shared/ beside the repo"
            )
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture
def run(tmp_path: Path) -> RunContext:
    """A run context writing under a temporary data root."""
    return RunContext.create(tmp_path / "var", ds="2026-12-03", key="test")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings pointing at a temporary data root and SQLite warehouse."""
    return Settings.from_env(
        env={},
        data_dir=str(tmp_path / "var"),
        warehouse_url=f"sqlite:///{tmp_path / 'warehouse.db'}",
    )


def write_clean(run: RunContext, courses: pd.DataFrame, progress: pd.DataFrame) -> None:
    """Write already-validated inputs (text ids) where the model steps read them."""
    import pyarrow as pa

    from recs import clean

    data = clean.encode(courses, progress)
    courses = courses.assign(row_number=range(1, len(courses) + 1))
    if "title" not in courses:
        courses = courses.assign(title=None)
    columns = {"student": data.student, "course": data.course,
               "progress": data.progress}
    if "timestamp" in progress:
        columns["timestamp"] = pa.array(progress["timestamp"])
    columns["row_number"] = pa.array(range(1, len(progress) + 1), pa.int64())
    clean.write_clean(
        run,
        pa.Table.from_pandas(courses, preserve_index=False),
        pa.array(data.students, pa.string()),
        pa.table(columns),
    )
