"""Tests of recs.validate: progress parser, categories, cases and the gate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recs import validate as validate_module
from recs.clean import read_progress_frame
from recs.context import RunContext
from recs.errors import ValidationGateError
from recs.extract import extract
from recs.settings import Settings
from recs.validate import (
    ProgressFormat,
    load_suite,
    normalise_categories,
    parse_progress,
    validate,
)


def _shared_dir() -> Path:
    configured = os.environ.get("RECS_SHARED_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared"


CASES = _shared_dir() / "cases"
CASE_DIRS = sorted(p.parent for p in CASES.glob("**/expected.json"))
GISTS = {
    "format": "bad format",
    "range": "out of range",
    "missing": "missing",
    "unknown_course": "unknown course",
    "categories": "categories",
    "duplicate": "duplicate",
}

PERCENT = ProgressFormat("percent", r"^[0-9]+(?:\.[0-9]+)?[ \t]*%$", 100.0)


def _format(name: str, scale: float = 100.0) -> ProgressFormat:
    settings = Settings.from_env(env={}, progress_format=name, progress_scale=scale)
    return ProgressFormat.from_settings(settings)


@pytest.mark.parametrize(
    ("text", "value", "problem"),
    [
        ("85%", 85.0, ""),
        ("85.5%", 85.5, ""),
        (" 85 % ", 85.0, ""),
        ("0%", 0.0, ""),
        ("100%", 100.0, ""),
        ("100.0%", 100.0, ""),
        ("101%", None, "range"),
        ("100.5%", None, "range"),
        ("-1%", None, "format"),
        ("abc", None, "format"),
        (None, None, "missing"),
        ("", None, "format"),
        ("N/A", None, "format"),
        ("85", None, "format"),
        ("0.85", None, "format"),
        ("85%%", None, "format"),
        ("%85", None, "format"),
        ("85,5%", None, "format"),
        ("1e2%", None, "format"),
        ("nan%", None, "format"),
        ("inf%", None, "format"),
        ("8 5%", None, "format"),
        ("85%abc", None, "format"),
        ("\u0668\u0665%", None, "format"),
    ],
)
def test_parse_progress_percent(
    text: str | None, value: float | None, problem: str
) -> None:
    parsed = parse_progress([text], _format("percent"))
    assert parsed.problems()[0] == problem
    if value is not None:
        assert parsed.value[0] == value


@pytest.mark.parametrize(
    ("scale", "text", "fraction", "problem"),
    [
        (100.0, "85", 0.85, ""),
        (100.0, "85%", None, "format"),
        (100.0, "100.1", None, "range"),
        (1.0, "0.9", 0.9, ""),
        (1.0, "1.5", None, "range"),
        (5.0, "4.5", 0.9, ""),
        (5.0, "5.5", None, "range"),
        (5.0, "1e0", None, "format"),
    ],
)
def test_parse_progress_number(
    scale: float, text: str, fraction: float | None, problem: str
) -> None:
    fmt = _format("number", scale)
    parsed = parse_progress([text], fmt)
    assert parsed.problems()[0] == problem
    if fraction is not None:
        assert parsed.value[0] / fmt.scale == pytest.approx(fraction, abs=1e-12)


def test_parse_progress_ninety_percent_is_exactly_point_nine() -> None:
    parsed = parse_progress(["90%", "90.0%"], _format("percent"))
    assert list(parsed.value / 100.0) == [0.9, 0.9]


@pytest.mark.parametrize(
    ("values", "ignore", "joined", "labels"),
    [
        (
            ["AWS | Cloud", "cloud|Security|", "aws||Certification", "|Security",
             "  Cloud  |  CLOUD ", " | "],
            (),
            ["AWS|Cloud", "Cloud|Security", "AWS|Certification", "Security",
             "Cloud", None],
            ["AWS", "Cloud", "Security", "Certification"],
        ),
        (
            ["C++", "C", "C#", ".NET", "ASP.NET|Web", "Regex (PCRE)", "Objective-C"],
            (),
            ["C++", "C", "C#", ".NET", "ASP.NET|Web", "Regex (PCRE)", "Objective-C"],
            ["C++", "C", "C#", ".NET", "ASP.NET", "Web", "Regex (PCRE)",
             "Objective-C"],
        ),
        (
            ["(no genres listed)", "Go|(No Genres Listed)", None, "Google|go"],
            ("(no genres listed)",),
            [None, "Go", None, "Google|Go"],
            ["Go", "Google"],
        ),
    ],
)
def test_normalise_categories_exact_case_insensitive(
    values: list[str | None],
    ignore: tuple[str, ...],
    joined: list[str | None],
    labels: list[str],
) -> None:
    out, counts, found = normalise_categories(values, "|", ignore)
    assert out.to_pylist() == joined
    assert list(counts) == [0 if j is None else len(j.split("|")) for j in joined]
    assert found == labels


def test_normalise_categories_labels_come_from_kept_courses() -> None:
    keep = np.array([False, True])
    out, _, labels = normalise_categories(["aws", "AWS|Data"], keep=keep)
    assert labels == ["AWS", "Data"]
    assert out.to_pylist()[1] == "AWS|Data"


def test_load_suite_has_the_required_expectations() -> None:
    kinds = {
        (e["type"], e["kwargs"].get("column")) for e in load_suite("progress")[
            "expectations"]
    }
    assert ("expect_column_values_to_match_regex", "progress") in kinds
    assert ("expect_column_values_to_not_be_null", "progress") in kinds
    assert ("expect_column_values_to_be_in_set", "course_id") in kinds
    assert ("expect_column_pair_values_to_be_equal", None) in kinds
    course_kinds = {e["type"] for e in load_suite("courses")["expectations"]}
    assert "expect_column_values_to_be_unique" in course_kinds


def _run_files(
    tmp_path: Path, courses: Path, progress: Path, **overrides: Any
) -> tuple[RunContext, Settings]:
    run = RunContext.create(tmp_path, ds="2026-12-03")
    settings = Settings.from_env(
        env={}, courses=str(courses), progress=str(progress),
        data_dir=str(tmp_path), **overrides,
    )
    extract(run, settings)
    return run, settings


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _quarantine(run: RunContext) -> pd.DataFrame:
    return pq.read_table(run.run_dir / "quarantine.parquet").to_pandas()


@pytest.mark.parametrize("case", CASE_DIRS, ids=lambda p: str(p.relative_to(CASES)))
def test_validate_shared_case(case: Path, tmp_path: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    run, settings = _run_files(
        tmp_path, case / "courses.csv", case / "students.csv", max_bad_share=1.0
    )
    summary = validate(run, settings)

    progress = read_progress_frame(run)
    courses = pq.read_table(summary["clean_courses_path"]).to_pandas()
    quarantine = _quarantine(run)
    assert len(progress) == expected["kept_progress_rows"]
    assert sorted(summary["categories"]) == sorted(expected["categories"])
    assert set(progress.course_id) <= set(courses.course_id)
    assert not progress.duplicated(["student_id", "course_id"]).any()
    for source, count in expected.get("quarantined_count", {}).items():
        bad = quarantine[
            (quarantine.source == source)
            & ~quarantine.reason.str.contains("duplicate")
        ]
        assert len(bad) == count, bad
    listed = expected.get("quarantined", []) + expected.get("quarantined_optional", [])
    for item in listed:
        rows = quarantine[
            (quarantine.source == item["source"])
            & (quarantine.row_number == item["row_number"])
        ]
        assert len(rows) == 1, item
        gists = [GISTS[g] for g in item["reason_gist"].split("|")]
        assert any(g in rows.reason.iloc[0] for g in gists), rows.reason.iloc[0]
    for student in expected.get("absent_students", []):
        assert student not in set(progress.student_id)
    for course in expected.get("absent_courses", []):
        assert course not in set(courses.course_id)
    _check_features(progress, courses, expected["features"])


def _check_features(
    progress: pd.DataFrame, courses: pd.DataFrame, features: dict[str, Any]
) -> None:
    """Mean kept progress per student and category equals the case's table."""
    cats = courses.assign(category=courses.categories.str.split("|")).explode(
        "category"
    )
    joined = progress.merge(cats[["course_id", "category"]], on="course_id")
    means = joined.groupby(["student_id", "category"]).progress.mean()
    assert set(progress.student_id) == set(features)
    for student, row in features.items():
        for category, value in row.items():
            got = means.get((student, category), 0.0)
            assert got == pytest.approx(value, abs=1e-9), (student, category)


def test_validate_keeps_parsed_values_and_ids_as_text(tmp_path: Path) -> None:
    case = CASES / "09-leading-zero-ids"
    run, settings = _run_files(tmp_path, case / "courses.csv", case / "students.csv")
    validate(run, settings)
    progress = read_progress_frame(run)
    assert list(progress.student_id) == ["00042", "00042", "042", "42", "00042"]
    assert list(progress.course_id) == ["007", "7", "07", "0100", "0100"]
    assert list(progress.progress) == [0.95, 0.1, 0.93, 0.97, 0.5]
    assert progress.row_number.dtype == np.int64


def test_validate_reports_expectations_and_data_docs(tmp_path: Path) -> None:
    case = CASES / "17-gx-regex-semantics"
    run, settings = _run_files(
        tmp_path, case / "courses.csv", case / "students.csv", max_bad_share=1.0
    )
    summary = validate(run, settings)
    failed = {
        (e["expectation"], e["column"]): e["failed"]
        for e in summary["expectations"] if e["source"] == "progress"
    }
    assert failed[("expect_column_values_to_match_regex", "progress")] == 4
    assert failed[("expect_column_values_to_not_be_null", "progress")] == 1
    assert failed[("expect_column_values_to_be_between", "progress")] == 1
    assert Path(summary["data_docs"]).name == "index.html"
    assert Path(summary["data_docs"]).is_file()
    assert summary["progress"]["bad_share"] == pytest.approx(6 / 9, abs=1e-6)
    stored = json.loads((run.run_dir / "validate.json").read_text())
    assert stored["progress"]["kept"] == 3


def _progress_csv(path: Path, good: int, bad: int) -> Path:
    lines = ["studentId,courseId,progress"]
    lines += [f"S{i},C1,{i % 100}%" for i in range(good)]
    lines += [f"B{i},C1,abc" for i in range(bad)]
    return _write(path, "\n".join(lines) + "\n")


def _courses_csv(path: Path) -> Path:
    return _write(path, "courseId,title,categories\nC1,One,Data\n")


def test_validate_gate_passes_three_percent_bad(tmp_path: Path) -> None:
    run, settings = _run_files(
        tmp_path, _courses_csv(tmp_path / "courses.csv"),
        _progress_csv(tmp_path / "students.csv", 97, 3),
    )
    summary = validate(run, settings)
    assert summary["progress"]["bad_share"] == pytest.approx(0.03)
    assert summary["progress"]["kept"] == 97


def test_validate_gate_stops_twenty_percent_bad(tmp_path: Path) -> None:
    run, settings = _run_files(
        tmp_path, _courses_csv(tmp_path / "courses.csv"),
        _progress_csv(tmp_path / "students.csv", 80, 20),
    )
    with pytest.raises(ValidationGateError, match="students.csv") as info:
        validate(run, settings)
    message = str(info.value)
    for word in ("20 of 100 rows bad", "20.0% > 5.0%",
                 "expect_column_values_to_match_regex", "'progress'",
                 "row 81 ('abc')"):
        assert word in message
    failure = info.value.failures[0]
    assert failure["column"] == "progress"
    assert failure["rows"] == 20
    assert len(_quarantine(run)) == 20
    assert (run.run_dir / "validate.json").is_file()


def test_validate_gate_stops_when_no_usable_rows(tmp_path: Path) -> None:
    run, settings = _run_files(
        tmp_path, _courses_csv(tmp_path / "courses.csv"),
        _progress_csv(tmp_path / "students.csv", 0, 2), max_bad_share=1.0,
    )
    with pytest.raises(ValidationGateError, match="no usable progress rows"):
        validate(run, settings)


def test_validate_duplicates_do_not_count_as_bad(tmp_path: Path) -> None:
    progress = _write(
        tmp_path / "students.csv",
        "studentId,courseId,progress\nS1,C1,40%\nS1,C1,95%\nS1,C1,95%\n",
    )
    run, settings = _run_files(tmp_path, _courses_csv(tmp_path / "c.csv"), progress)
    summary = validate(run, settings)
    kept = read_progress_frame(run)
    assert list(kept.row_number) == [2]
    assert summary["progress"]["duplicates"] == 2
    assert summary["progress"]["bad_share"] == 0.0
    assert list(_quarantine(run).row_number) == [1, 3]


def test_validate_expectation_catches_repeated_pairs_left_after_dedup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = _write(
        tmp_path / "students.csv",
        "studentId,courseId,progress\nS1,C1,40%\nS2,C1,50%\nS1,C1,95%\n",
    )
    run, settings = _run_files(tmp_path, _courses_csv(tmp_path / "c.csv"), progress)

    def keep_everything(students, courses, fraction, row_number, valid):
        n = len(students)
        return valid.copy(), np.zeros(n, bool), np.zeros(n, np.int64)

    monkeypatch.setattr(validate_module, "_deduplicate", keep_everything)
    summary = validate(run, settings)
    record = next(
        r for r in summary["expectations"]
        if r["expectation"] == "expect_column_pair_values_to_be_equal"
    )
    assert record["success"] is False
    assert record["failed"] == 2  # both rows of S1, the student with a repeat
    assert record["students"] == 2


@pytest.mark.parametrize("bitmap_keys", [1 << 30, 0])
def test_rows_and_courses_counts_distinct_courses_per_student(
    bitmap_keys: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate_module, "DEDUP_BITMAP_KEYS", bitmap_keys)
    student = np.array([0, 0, 0, 2, 2], np.int32)
    course = np.array([1, 1, 3, 0, 1], np.int32)
    frame = validate_module._rows_and_courses(student, course, 3, 4)
    assert frame["rows"].tolist() == [3, 0, 2]
    assert frame["courses"].tolist() == [2, 0, 2]


def test_validate_quarantines_malformed_and_missing_ids_once(tmp_path: Path) -> None:
    progress = _write(
        tmp_path / "students.csv",
        "studentId,courseId,progress\nS1,C1,50%\n,C1,abc\nS2,C1,80%,extra\n"
        "S3,C9,70%\n",
    )
    courses = _write(
        tmp_path / "courses.csv",
        "courseId,title,categories\nC1,One,Data\nC1,Again,Data\n,NoId,Data\n"
        "C2,Empty,\n",
    )
    run, settings = _run_files(tmp_path, courses, progress, max_bad_share=1.0)
    validate(run, settings)
    rows = _quarantine(run).set_index(["source", "row_number"]).reason.to_dict()
    assert "missing" in rows[("progress", 2)] and "student" in rows[("progress", 2)]
    assert "malformed" in rows[("progress", 3)]
    assert "unknown course" in rows[("progress", 4)]
    assert "duplicate course id" in rows[("courses", 2)]
    assert "course id is missing" in rows[("courses", 3)]
    assert "categories are missing" in rows[("courses", 4)]
    assert len(rows) == 6


@pytest.mark.parametrize("bitmap_keys", [1 << 30, 0])
@pytest.mark.parametrize("all_valid", [True, False])
def test_deduplicate_matches_a_sort_of_every_row(
    bitmap_keys: int, all_valid: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate_module, "DEDUP_BITMAP_KEYS", bitmap_keys)
    rng = np.random.default_rng(7)
    n = 2_000
    students = rng.integers(0, 300, n).astype(np.int32)
    courses = rng.integers(0, 12, n).astype(np.int32)
    fraction = rng.choice([0.25, 0.5, 0.95], n)  # few values: many ties
    row_number = np.arange(1, n + 1, dtype=np.int64)
    valid = np.ones(n, bool) if all_valid else rng.random(n) > 0.2

    keep, superseded, kept_row = validate_module._deduplicate(
        students, courses, fraction, row_number, valid
    )

    frame = pd.DataFrame({
        "student": students, "course": courses, "fraction": fraction,
        "row": row_number,
    })[valid]
    ranked = frame.sort_values(["fraction", "row"], ascending=[False, True])
    winners = ranked.drop_duplicates(["student", "course"])
    expected_keep = np.zeros(n, bool)
    expected_keep[winners["row"] - 1] = True
    assert superseded.any()
    assert (keep == expected_keep).all()
    assert (superseded == (valid & ~expected_keep)).all()
    winner_of = winners.set_index(["student", "course"])["row"]
    lost = np.flatnonzero(superseded)
    expected_rows = winner_of.loc[list(zip(students[lost], courses[lost], strict=True))]
    assert (kept_row[lost] == expected_rows.to_numpy()).all()
    assert (kept_row[~superseded] == 0).all()


def test_first_true_is_np_select_of_the_codes() -> None:
    rng = np.random.default_rng(3)
    conditions = [rng.random(500) > 0.7 for _ in range(6)]
    expected = np.select(conditions, [1, 2, 3, 4, 5, 6], default=0)
    assert (validate_module._first_true(conditions) == expected).all()


def test_validate_counts_rows_an_unclosed_quote_swallowed_as_bad(
    tmp_path: Path,
) -> None:
    lines = [f"S{i},C1,{i}%" for i in range(1, 41)]
    lines[30] = '"S31,C1,31%'  # rows 31 to 40 are read as one record
    progress = _write(
        tmp_path / "students.csv",
        "studentId,courseId,progress\n" + "\n".join(lines) + "\n",
    )
    run, settings = _run_files(tmp_path, _courses_csv(tmp_path / "c.csv"), progress)
    with pytest.raises(ValidationGateError, match=r"10 of 40 rows bad \(25\.0%"):
        validate(run, settings)
    quarantine = _quarantine(run)
    assert quarantine.row_number.tolist() == [31]
    assert "rows 31 to 40 were read as one record" in quarantine.reason.iloc[0]


def test_gate_message_says_how_to_declare_plain_numbers(tmp_path: Path) -> None:
    progress = _write(
        tmp_path / "students.csv",
        "studentId,courseId,progress\n" + "".join(f"S{i},C1,73\n" for i in range(9)),
    )
    run, settings = _run_files(tmp_path, _courses_csv(tmp_path / "c.csv"), progress)
    with pytest.raises(ValidationGateError) as info:
        validate(run, settings)
    assert "expect_column_values_to_match_regex on 'progress'" in str(info.value)
    assert "set progress_format=number and progress_scale" in str(info.value)


def test_rejects_written_without_line_counts_count_one_row_each() -> None:
    import pyarrow as pa

    from recs.extract import malformed_rows

    old = pa.table({"row_number": [3, 9], "text": ["a", "b"], "reason": ["x", "y"]})
    assert malformed_rows(old) == 2
    assert malformed_rows(old.append_column("lines", pa.array([1, 4]))) == 5
