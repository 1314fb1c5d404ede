"""The validation gate end to end: what a bad night does to the warehouse."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recs.errors import ValidationGateError
from recs.pipeline import run_pipeline
from recs.settings import SAMPLE_DIR, Settings


def _corrupt(tmp_path: Path, share: float) -> Path:
    """The sample's progress file with ``share`` of its values made unreadable."""
    frame = pd.read_csv(SAMPLE_DIR / "students.csv", dtype=str)
    bad = frame.sample(frac=share, random_state=0).index
    frame.loc[bad, "progress"] = "abc"
    path = tmp_path / f"students-{share}.csv"
    frame.to_csv(path, index=False)
    return path


def _settings(tmp_path: Path, progress: Path) -> Settings:
    return Settings.from_env(
        env={},
        courses=str(SAMPLE_DIR / "courses.csv"),
        progress=str(progress),
        data_dir=str(tmp_path / "var"),
        warehouse_url=f"sqlite:///{tmp_path / 'warehouse.db'}",
        quality_gate=False,
    )


def _read(settings: Settings, query: str) -> pd.DataFrame:
    engine = sa.create_engine(settings.warehouse_url)
    with engine.connect() as conn:
        frame = pd.read_sql_query(sa.text(query), conn)
    engine.dispose()
    return frame


def test_three_percent_bad_publishes_and_twenty_percent_changes_nothing(
    tmp_path: Path,
) -> None:
    few_bad = _settings(tmp_path, _corrupt(tmp_path, 0.03))
    run, _ = run_pipeline(few_bad, ds="2026-12-02")
    quarantine = _read(few_bad, "SELECT * FROM quarantine")
    assert len(quarantine) == round(19951 * 0.03)
    assert set(quarantine.source) == {"progress"}
    assert quarantine.reason.str.contains("format").all()
    published = _read(few_bad, "SELECT * FROM student_recommendations")
    assert set(published.run_id) == {run.run_id}

    many_bad = _settings(tmp_path, _corrupt(tmp_path, 0.20))
    with pytest.raises(ValidationGateError, match=r"20\.0% > 5\.0%") as caught:
        run_pipeline(many_bad, ds="2026-12-03")
    assert "expect_column_values_to_match_regex" in str(caught.value)
    assert "'abc'" in str(caught.value)

    after = _read(many_bad, "SELECT * FROM student_recommendations")
    pd.testing.assert_frame_equal(after, published)
    runs = _read(many_bad, "SELECT ds, status, reason FROM recommendation_runs")
    failed = runs[runs.ds == "2026-12-03"]
    assert failed.status.tolist() == ["failed"]
    assert "validate" in failed.reason.iloc[0]
    assert runs[runs.ds == "2026-12-02"].status.tolist() == ["published"]
    logged = _read(many_bad, "SELECT run_id FROM quarantine")
    assert logged.run_id.nunique() == 2
    assert (logged.run_id != run.run_id).sum() == round(19951 * 0.20)


def test_ledger_records_rows_in_and_out(tmp_path: Path) -> None:
    settings = _settings(tmp_path, SAMPLE_DIR / "students.csv")
    run, _ = run_pipeline(settings, ds="2026-12-03")
    ledger = _read(settings, "SELECT * FROM recommendation_runs")
    row = ledger.iloc[0]
    assert row.status == "published"
    assert (row.rows_in, row.rows_out) == (100 + 19951, 10000)
    assert row.students == 1000 and row.quarantined == 0


def test_steps_take_arrow_memory_from_jemalloc_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow as pa

    from recs.pipeline import use_arrow_memory_pool

    before = pa.default_memory_pool()
    try:
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
        assert use_arrow_memory_pool() == "jemalloc"
        pa.set_memory_pool(pa.system_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
        assert use_arrow_memory_pool() == "system"
    finally:
        pa.set_memory_pool(before)
