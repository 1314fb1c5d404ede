"""Tests of the offline evaluation: metrics, holdout, methods and quality gate."""

from __future__ import annotations

import contextlib
import json
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recs import evaluate
from recs.clean import Encoded, encode
from recs.context import RunContext
from recs.errors import QualityGateError
from recs.evaluate import (
    Truth,
    apply_gate,
    catalogue_coverage,
    evaluate_data,
    evaluate_run,
    format_table,
    hit_matrix,
    hit_rate_at_k,
    holdout_split,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    recommend_cf,
    recommend_clusters,
    recommend_popular,
    relevant_counts,
    score_lists,
)
from recs.settings import Settings
from tests.conftest import write_clean

PAD = -1


def _lists(*rows: list[int]) -> np.ndarray:
    """Top-10 matrix from short lists, padded with -1."""
    return np.array([row + [PAD] * (10 - len(row)) for row in rows], dtype=np.int64)


def _truth(hidden: dict[int, list[int]]) -> Truth:
    students = np.array(sorted(hidden), dtype=np.int64)
    pairs = [(s, c) for s in students for c in sorted(hidden[s])]
    return Truth(
        students=students,
        student=np.array([s for s, _ in pairs], dtype=np.int64),
        course=np.array([c for _, c in pairs], dtype=np.int64),
    )


# Three students: 0 hid {1, 2}, 1 hid {5, 6}, 2 hid {9}.
TRUTH = _truth({0: [1, 2], 1: [5, 6], 2: [9]})
RECOMMENDED = _lists([3, 1, 4, 2], [7, 5], [0, 3, 4, 7])


def test_hit_matrix_marks_hidden_courses_at_their_rank() -> None:
    hits = hit_matrix(RECOMMENDED, TRUTH)
    assert hits.shape == (3, 10)
    assert np.argwhere(hits).tolist() == [[0, 1], [0, 3], [1, 1]]


def test_hit_matrix_ignores_padding_and_other_students_courses() -> None:
    # Student 1 is recommended course 1, which only student 0 hid.
    hits = hit_matrix(_lists([PAD], [1]), _truth({0: [1], 1: [2]}))
    assert not hits.any()


def test_metrics_match_hand_computed_values() -> None:
    hits = hit_matrix(RECOMMENDED, TRUTH)
    n_relevant = relevant_counts(TRUTH)
    assert n_relevant.tolist() == [2, 2, 1]
    # Hits per student: 2, 1, 0 out of 10 slots (short lists still count 10).
    assert precision_at_k(hits) == pytest.approx((2 / 10 + 1 / 10 + 0) / 3)
    assert recall_at_k(hits, n_relevant) == pytest.approx((2 / 2 + 1 / 2 + 0) / 3)
    dcg_0 = 1 / np.log2(3) + 1 / np.log2(5)  # hits at ranks 2 and 4
    dcg_1 = 1 / np.log2(3)  # hit at rank 2
    ideal_2 = 1 + 1 / np.log2(3)  # two relevant courses
    expected_ndcg = (dcg_0 / ideal_2 + dcg_1 / ideal_2 + 0) / 3
    assert ndcg_at_k(hits, n_relevant) == pytest.approx(expected_ndcg)
    assert hit_rate_at_k(hits) == pytest.approx(2 / 3)
    # Courses 0, 1, 2, 3, 4, 5, 7 of a catalogue of 20.
    assert catalogue_coverage(RECOMMENDED, 20) == pytest.approx(7 / 20)


def test_ndcg_at_k_ideal_counts_at_most_k_relevant_courses() -> None:
    truth = _truth({0: list(range(12))})
    hits = hit_matrix(_lists(list(range(10))), truth)
    assert ndcg_at_k(hits, relevant_counts(truth)) == pytest.approx(1.0)
    assert recall_at_k(hits, relevant_counts(truth)) == pytest.approx(10 / 12)


def test_ndcg_at_k_rewards_earlier_hits() -> None:
    truth = _truth({0: [1]})
    first = hit_matrix(_lists([1, 2]), truth)
    second = hit_matrix(_lists([2, 1]), truth)
    assert ndcg_at_k(first, np.array([1])) == pytest.approx(1.0)
    assert ndcg_at_k(second, np.array([1])) == pytest.approx(1 / np.log2(3))


def test_recall_at_k_rejects_students_without_hidden_courses() -> None:
    with pytest.raises(ValueError, match="1 have none"):
        recall_at_k(np.zeros((2, 10), dtype=bool), np.array([1, 0]))


def test_hit_matrix_rejects_rows_not_matching_students() -> None:
    with pytest.raises(ValueError, match="expected one per evaluated student"):
        hit_matrix(_lists([1]), TRUTH)


def test_score_lists_gives_none_without_students() -> None:
    empty = _truth({})
    scores = score_lists(np.zeros((0, 10), dtype=np.int64), empty, 5)
    assert set(scores) == set(evaluate.METRICS)
    assert all(value is None for value in scores.values())


def _encoded(rows: list[tuple[int, int, float]], n_courses: int) -> Encoded:
    student, course, progress = (np.array(col) for col in zip(*rows, strict=True))
    n_students = int(student.max()) + 1
    return Encoded(
        student_ids=pa.array([f"s{i:03d}" for i in range(n_students)]),
        courses=np.array([f"c{i:03d}" for i in range(n_courses)]),
        student=student.astype(np.int32),
        course=course.astype(np.int32),
        progress=progress.astype(np.float64),
    )


def _mastery_data() -> Encoded:
    """Student 0: 10 mastered; 1: 5 mastered; 2: 4 mastered; 3: 12 mastered."""
    rows = [(0, c, 0.95) for c in range(10)] + [(0, 10, 0.5)]
    rows += [(1, c, 1.0) for c in range(5)] + [(1, 7, 0.9)]
    rows += [(2, c, 0.99) for c in range(4)]
    rows += [(3, c, 0.92) for c in range(12)]
    return _encoded(rows, n_courses=15)


def _pairs(student: np.ndarray, course: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(student.tolist(), course.tolist(), strict=True))


def test_holdout_split_hides_a_share_of_mastered_courses() -> None:
    data = _mastery_data()
    train, truth = holdout_split(data, Settings())
    assert truth.students.tolist() == [0, 1, 3]
    # 20% rounded down, at least one: 10 -> 2, 5 -> 1, 12 -> 2.
    assert relevant_counts(truth).tolist() == [2, 1, 2]
    progress = dict(zip(_pairs(data.student, data.course), data.progress, strict=True))
    assert all(progress[pair] > 0.9 for pair in _pairs(truth.student, truth.course))
    assert len(train.student) == len(data.student) - len(truth.course)
    assert train.student_ids is data.student_ids and train.courses is data.courses


def test_holdout_split_removes_hidden_rows_from_training() -> None:
    data = _mastery_data()
    train, truth = holdout_split(data, Settings())
    hidden = _pairs(truth.student, truth.course)
    kept = _pairs(train.student, train.course)
    assert hidden and not hidden & kept
    assert hidden | kept == _pairs(data.student, data.course)


def test_holdout_split_is_repeatable_and_seeded() -> None:
    data = _mastery_data()
    first = holdout_split(data, Settings(random_state=0))[1]
    again = holdout_split(data, Settings(random_state=0))[1]
    assert np.array_equal(first.course, again.course)
    assert np.array_equal(first.student, again.student)
    hidden = {
        tuple(holdout_split(data, Settings(random_state=seed))[1].course)
        for seed in range(10)
    }
    assert len(hidden) > 1


def test_holdout_split_hides_the_most_recent_with_timestamps() -> None:
    data = _mastery_data()
    timestamps = data.course.astype(np.float64) * 100 + data.student
    _, truth = holdout_split(data, Settings(), timestamps=timestamps)
    by_student = {
        s: sorted(truth.course[truth.student == s].tolist()) for s in truth.students
    }
    assert by_student == {0: [8, 9], 1: [4], 3: [10, 11]}


def test_holdout_split_rejects_misaligned_timestamps() -> None:
    with pytest.raises(ValueError, match="expected one per progress row"):
        holdout_split(_mastery_data(), Settings(), timestamps=np.zeros(3))


def _synthetic(n_students: int = 240, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    """Three interest groups of 10 courses each; members master their group's."""
    rng = np.random.default_rng(seed)
    names = ["Data", "Web", "Cloud"]
    courses = pd.DataFrame(
        {
            "course_id": [f"c{i:02d}" for i in range(30)],
            "title": [f"Course {i}" for i in range(30)],
            "categories": [f"{names[i // 10]}|Level {i % 3}" for i in range(30)],
        }
    )
    rows = []
    for student in range(n_students):
        group = student % 3
        own = rng.choice(10, size=7, replace=False) + 10 * group
        other = rng.choice([c for c in range(30) if c // 10 != group], 2, False)
        rows += [(student, c, rng.uniform(0.92, 1.0)) for c in own]
        rows += [(student, c, rng.uniform(0.1, 0.6)) for c in other]
    progress = pd.DataFrame(rows, columns=["student_id", "course_id", "progress"])
    progress["student_id"] = progress["student_id"].map(lambda s: f"u{s:04d}")
    progress["course_id"] = progress["course_id"].map(lambda c: f"c{c:02d}")
    return courses, progress


def test_methods_never_recommend_a_training_mastered_course() -> None:
    courses, progress = _synthetic()
    settings = Settings(n_clusters=3, svd_min_students=50)
    train, truth = holdout_split(encode(courses, progress), settings)
    mastered = _pairs(
        train.student[train.progress > 0.9], train.course[train.progress > 0.9]
    )
    for lists in (
        recommend_clusters(train, courses, truth.students, settings)[0],
        recommend_popular(train, truth.students, settings),
        recommend_cf(train, truth.students, settings),
    ):
        assert lists.shape == (truth.n_students, 10)
        assert (lists >= 0).all()
        recommended = _pairs(np.repeat(truth.students, 10), lists.ravel())
        assert not recommended & mastered
        assert all(len(set(row)) == 10 for row in lists.tolist())


def test_evaluate_data_clusters_beat_popularity_on_grouped_interests() -> None:
    courses, progress = _synthetic()
    report = evaluate_data(courses, encode(courses, progress), Settings(n_clusters=3))
    assert report["students_evaluated"] == 240
    for method in evaluate.METHODS:
        assert report[method]["students_evaluated"] == 240
        assert set(evaluate.METRICS) <= set(report[method])
    assert report["clusters"]["recall_at_10"] > 0.9
    assert report["popularity"]["recall_at_10"] < 0.6
    assert report["details"]["clusters"]["n_clusters"] == 3
    json.dumps(report)


def _report(clusters: float, popularity: float, students: int = 100) -> dict:
    def metrics(recall: float) -> dict[str, Any]:
        return {name: 0.5 for name in evaluate.METRICS} | {
            "recall_at_10": recall,
            "students_evaluated": students,
        }

    return {
        "clusters": metrics(clusters),
        "popularity": metrics(popularity),
        "cf": metrics(0.3),
        "students_evaluated": students,
        "details": {"clusters": {"n_clusters": 20}},
    }


def test_apply_gate_passes_above_popularity_and_last_run() -> None:
    gate = apply_gate(_report(0.25, 0.2), 0.26, Settings())
    assert gate["status"] == "passed"
    assert "0.2500" in gate["why"] and "0.2000" in gate["why"]


def test_apply_gate_fails_below_popularity_with_figures() -> None:
    gate = apply_gate(_report(0.15, 0.2), None, Settings())
    assert gate["status"] == "failed"
    assert "0.1500 is below popularity's 0.2000" in gate["why"]


def test_apply_gate_fails_on_a_drop_from_the_last_published_run() -> None:
    gate = apply_gate(_report(0.23, 0.2), 0.30, Settings(max_recall_drop=0.2))
    assert gate["status"] == "failed"
    assert "0.2300 dropped more than 20%" in gate["why"]
    assert "0.3000 (floor 0.2400)" in gate["why"]
    tolerated = apply_gate(_report(0.25, 0.2), 0.30, Settings(max_recall_drop=0.2))
    assert tolerated["status"] == "passed"


def test_apply_gate_skips_with_too_few_students_and_nothing_measured_before() -> None:
    gate = apply_gate(_report(0.1, 0.2, students=12), None, Settings())
    assert gate["status"] == "skipped"
    assert "only 12 students" in gate["why"] and "min_eval_students=30" in gate["why"]


def test_apply_gate_fails_when_too_few_students_would_replace_a_measured_run() -> (
    None
):
    # A wrong progress scale leaves nobody with a mastered course: the run
    # cannot be measured, and must not replace one that was.
    gate = apply_gate(_report(0.0, 0.0, students=0), 0.18, Settings())
    assert gate["status"] == "failed"
    assert "only 0 students" in gate["why"]
    assert "published run scored recall@10 0.1800" in gate["why"]
    assert "progress format and scale" in gate["why"]
    turned_off = apply_gate(
        _report(0.0, 0.0, students=0), 0.18, Settings(quality_gate=False)
    )
    assert turned_off["status"] == "overridden" and turned_off["would_fail"]


def test_apply_gate_overridden_when_turned_off() -> None:
    gate = apply_gate(_report(0.1, 0.2), None, Settings(quality_gate=False))
    assert gate["status"] == "overridden"
    assert "0.1000 is below popularity's 0.2000" in gate["why"]


def _clean_run(tmp_path: Path, timestamps: list[Any] | None = None) -> RunContext:
    run = RunContext.create(tmp_path, "2026-12-03", key="test")
    courses = pd.DataFrame(
        {"course_id": ["a", "b"], "title": ["A", "B"], "categories": ["X", "Y"]}
    )
    progress = pd.DataFrame({
        "student_id": ["1", "2"],
        "course_id": ["a", "b"],
        "progress": [1.0, 0.5],
    })
    if timestamps is not None:
        progress["timestamp"] = timestamps
    write_clean(run, courses, progress)
    return run


@pytest.fixture
def fixed_report(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Make evaluate_run see a chosen report and last published recall."""
    state: dict[str, Any] = {"report": _report(0.25, 0.2), "previous": None}
    monkeypatch.setattr(
        evaluate, "evaluate_data", lambda *args, **kwargs: state["report"]
    )
    monkeypatch.setattr(
        evaluate, "last_published_recall", lambda settings: state["previous"]
    )
    return state


def test_evaluate_run_writes_report_and_summary(
    tmp_path: Path, fixed_report: dict[str, Any]
) -> None:
    run = _clean_run(tmp_path)
    summary = evaluate_run(run, Settings())
    assert summary["gate"]["status"] == "passed"
    assert summary["metrics"]["recall_at_10"] == 0.25
    assert summary["baselines"]["popularity"]["recall_at_10"] == 0.2
    report = json.loads(Path(summary["report_path"]).read_text())
    assert set(evaluate.METHODS) <= set(report)
    assert run.read_summaries()["evaluate"]["students_evaluated"] == 100


def test_evaluate_run_records_figures_before_the_gate_stops_it(
    tmp_path: Path, fixed_report: dict[str, Any]
) -> None:
    fixed_report["report"] = _report(0.2, 0.22)
    run = _clean_run(tmp_path)
    with pytest.raises(
        QualityGateError, match=r"0\.2000 is below popularity's 0\.2200"
    ):
        evaluate_run(run, Settings())
    stored = run.read_summaries()["evaluate"]
    assert stored["gate"]["status"] == "failed"
    assert stored["metrics"]["recall_at_10"] == 0.2


def test_evaluate_run_fails_on_a_drop_from_the_published_run(
    tmp_path: Path, fixed_report: dict[str, Any]
) -> None:
    fixed_report["previous"] = 0.4
    with pytest.raises(QualityGateError, match=r"from the last published run's 0\.4"):
        evaluate_run(_clean_run(tmp_path), Settings())


@pytest.mark.parametrize(
    ("settings", "status"),
    [
        (Settings(min_eval_students=101), "skipped"),
        (Settings(quality_gate=False), "overridden"),
    ],
)
def test_evaluate_run_does_not_block_when_skipped_or_overridden(
    tmp_path: Path, fixed_report: dict[str, Any], settings: Settings, status: str
) -> None:
    fixed_report["report"] = _report(0.1, 0.2)
    summary = evaluate_run(_clean_run(tmp_path), settings)
    assert summary["gate"]["status"] == status


def test_evaluate_run_passes_timestamps_to_the_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def capture(
        courses: pd.DataFrame,
        progress: pd.DataFrame,
        settings: Settings,
        timestamps: np.ndarray | None = None,
    ) -> dict[str, Any]:
        seen["timestamps"] = timestamps
        return _report(0.25, 0.2)

    monkeypatch.setattr(evaluate, "evaluate_data", capture)
    monkeypatch.setattr(evaluate, "last_published_recall", lambda settings: None)
    evaluate_run(_clean_run(tmp_path, ["2026-01-02T00:00:00", None]), Settings())
    assert seen["timestamps"][0] == pytest.approx(1767312000.0)
    assert np.isnan(seen["timestamps"][1])


def _fake_warehouse(
    monkeypatch: pytest.MonkeyPatch, published: dict | None
) -> types.ModuleType:
    import recs
    import recs.pipeline

    module = types.ModuleType("recs.warehouse")
    module.last_published_metrics = lambda engine: published
    monkeypatch.setitem(sys.modules, "recs.warehouse", module)
    monkeypatch.setattr(recs, "warehouse", module, raising=False)
    monkeypatch.setattr(
        recs.pipeline,
        "warehouse_engine",
        lambda settings: contextlib.nullcontext(types.SimpleNamespace()),
    )
    return module


@pytest.mark.parametrize(
    ("published", "expected"),
    [
        (None, None),
        ({"metrics": {"recall_at_10": 0.31}}, 0.31),
        ({"metrics": None, "recall_at_10": 0.2}, 0.2),
        ({"metrics": {}}, None),
    ],
)
def test_last_published_recall_reads_the_published_metrics(
    monkeypatch: pytest.MonkeyPatch, published: dict | None, expected: float | None
) -> None:
    _fake_warehouse(monkeypatch, published)
    assert evaluate.last_published_recall(Settings()) == expected


def test_format_table_lists_every_method() -> None:
    table = format_table(_report(0.25, 0.2))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["method", "precision@10", "recall@10"]
    assert lines[1].split() == [
        "clusters",
        "0.5000",
        "0.2500",
        "0.5000",
        "0.5000",
        "0.5000",
    ]
    assert lines[2].split()[:3] == ["popularity", "0.5000", "0.2000"]
    assert lines[3].split()[0] == "cf"
    assert "students evaluated: 100" in table


def test_evaluate_sources_scores_the_bundled_sample(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "var"))
    report_path = tmp_path / "report.json"
    report = evaluate.evaluate_sources(
        settings, ds="2026-12-03", report_path=report_path
    )
    assert json.loads(report_path.read_text()) == report
    assert report["students_evaluated"] >= settings.min_eval_students
    clusters, popularity = report["clusters"], report["popularity"]
    assert clusters["recall_at_10"] >= 1.2 * popularity["recall_at_10"]
    assert "clusters" in format_table(report)


def test_sample_students_keeps_every_row_of_the_chosen_students() -> None:
    from recs.evaluate import sample_students

    data = Encoded(
        student_ids=pa.array(["a", "b", "c", "d"]),
        courses=np.array(["x", "y"]),
        student=np.array([0, 0, 1, 2, 3, 3], dtype=np.int32),
        course=np.array([0, 1, 0, 1, 0, 1], dtype=np.int32),
        progress=np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
    )
    times = np.arange(6, dtype=float)
    sampled, sampled_times = sample_students(data, times, random_state=0, limit=2)
    assert sampled.n_students == 2
    original = {
        (data.students[s], data.courses[c], p)
        for s, c, p in zip(data.student, data.course, data.progress, strict=True)
    }
    kept = {
        (sampled.students[s], sampled.courses[c], p)
        for s, c, p in zip(
            sampled.student, sampled.course, sampled.progress, strict=True
        )
    }
    chosen = set(sampled.students)
    assert kept == {row for row in original if row[0] in chosen}
    assert len(sampled_times) == len(sampled.student)
    same, _ = sample_students(data, None, random_state=0, limit=4)
    assert same is data


def test_evaluation_of_a_sample_fits_the_estimator_of_the_population(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A population above minibatch_above is clustered with mini-batch
    # k-means by the pipeline; its evaluation, on a smaller sample, must
    # measure the same estimator.
    from recs import evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "MAX_TRAIN_STUDENTS", 120)
    courses, progress = _synthetic(n_students=240)
    settings = Settings(n_clusters=3, svd_min_students=50, minibatch_above=200)
    data = encode(courses, progress)
    report = evaluate_data(courses, data, settings)
    details = report["details"]
    assert details["students_sampled"] == 120
    assert details["clusters"]["estimator"] == "MiniBatchKMeans"
    small = evaluate_data(courses, data, replace(settings, minibatch_above=240))
    assert small["details"]["clusters"]["estimator"] == "KMeans"


def test_to_number_reads_mostly_numeric_times_and_names_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = pd.Series(["1767312000", "yesterday", "1767398400", None])
    with caplog.at_level("WARNING", logger="recs.evaluate"):
        out = evaluate.to_number(values)
    assert out is not None
    assert out[0] == 1767312000 and out[2] == 1767398400
    assert np.isnan(out[1]) and np.isnan(out[3])
    assert "1 of 4 timestamps could not be read (e.g. 'yesterday')" in caplog.text


def test_to_number_falls_back_to_random_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="recs.evaluate"):
        assert evaluate.to_number(pd.Series(["soon", "later"])) is None
    assert "no timestamp could be read (e.g. 'soon')" in caplog.text
    iso = evaluate.to_number(pd.Series(["2026-01-02T00:00:00", "2026-01-03"]))
    assert iso is not None and iso[1] - iso[0] == 86400
