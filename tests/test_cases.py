"""Every input case from shared/cases, run end to end with its exact outcome.

Each case folder holds courses.csv, students.csv and expected.json (see the
cases' README): what is kept, what is quarantined and why, the features, and
the exact (student, course) pairs recommended from peers' mastery.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recs.clean import read_progress_frame
from recs.context import RunContext
from recs.pipeline import run_pipeline
from recs.settings import Settings
from tests.conftest import require_shared, shared_dir

REASON_WORDS = {
    "format": ("format",),
    "range": ("range",),
    "missing": ("missing",),
    "unknown_course": ("unknown course", "not in the catalogue"),
    "categories": ("categories",),
    "duplicate": ("duplicate",),
    "malformed": ("malformed",),
}


def _case_dirs() -> list[Path]:
    root = shared_dir() / "cases"
    if not root.exists():
        return []
    found = sorted(p.parent for p in root.glob("*/expected.json"))
    found += sorted(p.parent for p in root.glob("*/*/expected.json"))
    return found


def _run_case(case: Path, tmp_path: Path) -> tuple[RunContext, Settings, dict]:
    expected = json.loads((case / "expected.json").read_text())
    args = expected.get("args", {})
    settings = Settings.from_env(
        env={},
        courses=str(case / expected["inputs"]["courses"]),
        progress=str(case / expected["inputs"]["progress"]),
        data_dir=str(tmp_path / "var"),
        warehouse_url=f"sqlite:///{tmp_path / 'warehouse.db'}",
        n_clusters=args.get("n_clusters"),
        max_bad_share=1.0,
    )
    run, _ = run_pipeline(settings, ds="2026-12-03", key=case.name)
    return run, settings, expected


def _matches(reason: str, gist: str) -> bool:
    return any(
        word in reason.lower()
        for part in gist.split("|")
        for word in REASON_WORDS[part]
    )


@pytest.mark.parametrize("case", _case_dirs(), ids=lambda p: p.name)
def test_case_outcome(case: Path, tmp_path: Path) -> None:
    require_shared("cases")
    run, settings, expected = _run_case(case, tmp_path)
    assert expected["exit"] == "success"

    kept = read_progress_frame(run)
    assert len(kept) == expected["kept_progress_rows"]

    quarantine = pd.read_parquet(run.run_dir / "quarantine.parquet")
    bad = quarantine[~quarantine.reason.str.contains("duplicate")]
    for source, count in expected["quarantined_count"].items():
        assert (bad.source == source).sum() == count, source
    for item in expected.get("quarantined", []):
        rows = bad[
            (bad.source == item["source"]) & (bad.row_number == item["row_number"])
        ]
        assert len(rows) == 1, item
        assert _matches(rows.reason.iloc[0], item["reason_gist"]), rows.reason.iloc[0]
    for item in expected.get("quarantined_optional", []):
        rows = quarantine[
            (quarantine.source == item["source"])
            & (quarantine.row_number == item["row_number"])
        ]
        assert len(rows) == 1 and _matches(rows.reason.iloc[0], item["reason_gist"])

    features = pd.read_parquet(
        run.partition("features", "student_category") / "features.parquet"
    ).set_index("student_id")
    assert list(features.columns) == list(expected["categories"]) or (
        sorted(features.columns) == sorted(expected["categories"])
    )
    assert sorted(features.index) == sorted(expected["features"])
    for student, values in expected["features"].items():
        for category, value in values.items():
            assert features.loc[student, category] == pytest.approx(value, abs=1e-9)

    engine = sa.create_engine(settings.warehouse_url)
    with engine.connect() as conn:
        published = pd.read_sql_query(
            sa.text("SELECT * FROM student_recommendations"), conn
        )
    engine.dispose()
    pairs = published[published.strategy == "cluster"][["student_id", "course_id"]]
    assert sorted(map(list, pairs.itertuples(index=False))) == sorted(
        expected["cluster_pairs"]
    )
    _assert_contract(published, kept, settings)
    for student in expected.get("absent_students", []):
        assert student not in set(published.student_id)
        assert student not in features.index
    for course in expected.get("absent_courses", []):
        assert course not in set(published.course_id)


def _assert_contract(
    published: pd.DataFrame, progress: pd.DataFrame, settings: Settings
) -> None:
    """Ranks 1..n without gaps; never a mastered course; ids kept as text."""
    ranks = published.groupby("student_id")["rank"].agg(list)
    for student, values in ranks.items():
        assert values == list(range(1, len(values) + 1)), student
    mastered = progress[progress.progress > settings.mastery_threshold]
    clash = published.merge(mastered, on=["student_id", "course_id"])
    assert clash.empty
    assert published.student_id.map(type).eq(str).all()


def test_every_case_folder_is_run() -> None:
    cases = require_shared("cases")
    folders = {p.parent for p in cases.rglob("students.csv")}
    assert folders == set(_case_dirs())
    assert len(folders) >= 10
