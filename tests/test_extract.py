"""Tests of recs.extract: file-level problems are named with the file."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recs.context import RunContext
from recs.errors import InputFileError
from recs.extract import extract, raw_paths, read_snapshot
from recs.settings import Settings

COURSES = "courseId,title,categories\nC1,One,Data\n"


def _extract(tmp_path: Path, progress: bytes) -> RunContext:
    courses = tmp_path / "courses.csv"
    courses.write_text(COURSES)
    students = tmp_path / "students.csv"
    students.write_bytes(progress)
    run = RunContext.create(tmp_path, ds="2026-12-03")
    settings = Settings.from_env(
        env={}, courses=str(courses), progress=str(students), data_dir=str(tmp_path)
    )
    extract(run, settings)
    return run


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"studentId,progress\nS1,85%\n", "missing column(s) 'courseId'"),
        (b"studentId;courseId;progress\nS1;C1;85%\n", "another delimiter"),
        (b"", "file is empty"),
        (b"\xef\xbb\xbf\r\n", "file is empty"),
        (b"studentId,courseId,progress\nS\xe9,C1,85%\n", "not UTF-8"),
        (b"stud\xe9ntId,courseId,progress\nS1,C1,85%\n", "not UTF-8"),
    ],
)
def test_extract_names_file_and_problem(
    tmp_path: Path, data: bytes, problem: str
) -> None:
    with pytest.raises(InputFileError, match="students.csv") as info:
        _extract(tmp_path, data)
    assert problem in str(info.value)


def test_extract_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as info:
        _extract(tmp_path, b"studentId,progress\nS1,85%\n")
    assert info.value.column == "courseId"


def test_extract_strips_bom_and_crlf(tmp_path: Path) -> None:
    run = _extract(
        tmp_path, b"\xef\xbb\xbfstudentId,courseId,progress\r\nS1,C1, 95% \r\n"
    )
    table = read_snapshot(raw_paths(run, "progress")[0])
    assert table.column_names == ["student_id", "course_id", "progress", "row_number"]
    assert table.to_pylist() == [
        {"student_id": "S1", "course_id": "C1", "progress": "95%", "row_number": 1}
    ]


def test_extract_sets_malformed_rows_aside_with_row_numbers(tmp_path: Path) -> None:
    run = _extract(
        tmp_path,
        b"studentId,courseId,progress\nS1,C1,85%\nS2,C1,80%,x\nS3,C1,N/A\n",
    )
    table = read_snapshot(raw_paths(run, "progress")[0]).to_pylist()
    rejects = pq.read_table(raw_paths(run, "progress")[1]).to_pylist()
    assert [r["row_number"] for r in table] == [1, 3]
    assert table[1]["progress"] is None
    assert rejects[0]["row_number"] == 2
    assert "malformed row" in rejects[0]["reason"]
