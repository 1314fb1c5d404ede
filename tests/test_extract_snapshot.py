"""Tests of recs.extract: null markers, quoting and the multi-part snapshot."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recs import extract as extract_module
from recs.context import RunContext
from recs.errors import InputFileError
from recs.extract import (
    _clean_text,
    extract,
    raw_paths,
    read_snapshot,
    read_source,
    write_snapshot,
)
from recs.settings import Settings
from recs.validate import _read_raw

COURSES = "courseId,title,categories\nC1, Intro to Data ,Data\nC2,N/A,\n"
HEADER = b"studentId,courseId,progress\n"


def _settings(tmp_path: Path, students: Path, **overrides: object) -> Settings:
    courses = tmp_path / "courses.csv"
    courses.write_text(COURSES)
    return Settings.from_env(
        env={},
        courses=str(courses),
        progress=str(students),
        data_dir=str(tmp_path),
        **overrides,
    )


def _progress(tmp_path: Path, data: bytes, **overrides: object) -> list[dict]:
    students = tmp_path / "students.csv"
    students.write_bytes(data)
    settings = _settings(tmp_path, students, **overrides)
    table, rejects = read_source(str(students), "progress", settings)
    assert rejects.num_rows == 0
    return table.to_pylist()


def test_null_markers_become_null_trimmed_or_quoted(tmp_path: Path) -> None:
    rows = _progress(
        tmp_path,
        HEADER
        + b'S1,C1,N/A\nS2,C1, N/A \nS3,C1,"NA"\nS4,C1," null "\nS5,C1,""\n'
        + b"S6,C1,   \nS7,C1,\tNone\nS8,C1,\xc2\xa0n/a\xc2\xa0\nS9,C1,\n",
    )
    assert [r["progress"] for r in rows] == [None] * 9
    assert [r["row_number"] for r in rows] == list(range(1, 10))


def test_values_that_are_not_markers_are_kept_trimmed(tmp_path: Path) -> None:
    rows = _progress(
        tmp_path,
        HEADER + b'S1,C1," 85% "\nS2,C1,"N/A, really"\nS3,C1,"say ""NA"""\n'
        b"S4,C1,none\nS5 , C1 ,NAN\n",
    )
    assert [(r["student_id"], r["course_id"], r["progress"]) for r in rows] == [
        ("S1", "C1", "85%"),
        ("S2", "C1", "N/A, really"),
        ("S3", "C1", 'say "NA"'),
        ("S4", "C1", "none"),
        ("S5", "C1", "NAN"),
    ]


def test_configured_markers_only(tmp_path: Path) -> None:
    # Only the configured markers count; one with spaces around it can never
    # equal a trimmed value, so it turns nothing into a null.
    rows = _progress(
        tmp_path,
        HEADER + b"S1,C1,N/A\nS2,C1,missing\nS3,C1, missing \nS4,C1, x \nS5,C1,\n",
        null_values=("missing", " x"),
    )
    assert [r["progress"] for r in rows] == ["N/A", None, None, "x", ""]


def test_no_markers_keeps_every_value(tmp_path: Path) -> None:
    rows = _progress(tmp_path, HEADER + b"S1,C1,\nS2,C1, NA \n", null_values=())
    assert [r["progress"] for r in rows] == ["", "NA"]


def test_clean_text_looks_up_markers_only_where_trimmed() -> None:
    # The CSV reader already nulled exact markers; a chunk without whitespace
    # is left alone, a chunk with some is trimmed and then looked up.
    column = pa.chunked_array([["85%", None, "NA!"], [" NA ", "90%", " 1 "]])
    table = pa.table({"progress": column, "row_number": [1, 2, 3, 4, 5, 6]})
    clean = _clean_text(table, ("", "NA"), markers_parsed=True)
    assert clean.column("progress").to_pylist() == [
        "85%",
        None,
        "NA!",
        None,
        "90%",
        "1",
    ]


def test_courses_are_trimmed_and_null_marked(tmp_path: Path) -> None:
    students = tmp_path / "students.csv"
    students.write_bytes(HEADER + b"S1,C1,85%\n")
    settings = _settings(tmp_path, students)
    table, _ = read_source(settings.courses or "", "courses", settings)
    assert table.to_pylist() == [
        {
            "course_id": "C1",
            "title": "Intro to Data",
            "categories": "Data",
            "row_number": 1,
        },
        {"course_id": "C2", "title": None, "categories": None, "row_number": 2},
    ]


def test_multi_part_snapshot_keeps_row_order_and_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_module, "PART_MIN_ROWS", 10)
    monkeypatch.setattr(extract_module.os, "cpu_count", lambda: 12)
    lines = [f"S{i},C{i % 7},{i % 101}%" for i in range(1, 121)]
    lines[4] = "S5,C5,5%,extra"  # row 5 is malformed
    lines[60] = "S61, C5 , N/A "
    students = tmp_path / "students.csv"
    students.write_bytes(HEADER + "\n".join(lines).encode() + b"\n")
    settings = _settings(tmp_path, students)
    run = RunContext.create(tmp_path, ds="2026-12-03")
    summary = extract(run, settings)

    data_path, rejects_path = raw_paths(run, "progress")
    parts = sorted(p.name for p in data_path.iterdir())
    assert parts == [f"part-{i:02d}.parquet" for i in range(11)]
    assert summary["progress"] == {
        "location": str(students),
        "rows": 120,
        "malformed": 1,
        "path": str(data_path),
    }
    table = read_snapshot(data_path)
    expected = [n for n in range(1, 121) if n != 5]
    assert table.column("row_number").to_pylist() == expected
    assert table.column("student_id").to_pylist() == [f"S{n}" for n in expected]
    assert table.slice(59, 1).to_pylist() == [
        {"student_id": "S61", "course_id": "C5", "progress": None, "row_number": 61}
    ]
    rejects = pq.read_table(rejects_path).to_pylist()
    assert [r["row_number"] for r in rejects] == [5]
    read, read_rejects = _read_raw(run, "progress")
    assert read.equals(table)
    assert read_rejects.to_pylist() == rejects


def test_write_snapshot_removes_parts_of_an_earlier_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_module, "PART_MIN_ROWS", 10)
    monkeypatch.setattr(extract_module.os, "cpu_count", lambda: 4)
    big = pa.table(
        {
            "student_id": [f"S{i}" for i in range(50)],
            "row_number": pa.array(range(1, 51), pa.int64()),
        }
    )
    small = big.slice(0, 12)
    directory = tmp_path / "progress"
    assert len(write_snapshot(big, directory)) == 4
    assert len(write_snapshot(small, directory)) == 1
    assert [p.name for p in directory.iterdir()] == ["part-00.parquet"]
    assert read_snapshot(directory).equals(small)


def test_empty_table_is_one_part(tmp_path: Path) -> None:
    empty = pa.table(
        {
            "student_id": pa.array([], pa.string()),
            "row_number": pa.array([], pa.int64()),
        }
    )
    assert len(write_snapshot(empty, tmp_path / "empty")) == 1
    assert read_snapshot(tmp_path / "empty").equals(empty)


def test_fsspec_url_with_malformed_rows(tmp_path: Path) -> None:
    url = "memory://recs-test-extract/students.csv"
    with fsspec.open(url, "wb") as handle:
        handle.write(HEADER + b"S1,C1,85%\nS2,C1\nS3,C1, NA \n")
    settings = _settings(tmp_path, tmp_path / "unused.csv")
    try:
        table, rejects = read_source(url, "progress", settings)
        with fsspec.open(url, "wb") as handle:
            handle.write(b"studentId;courseId;progress\nS1;C1;85%\n")
        with pytest.raises(InputFileError, match="another delimiter"):
            read_source(url, "progress", settings)
    finally:
        fsspec.filesystem("memory").rm("/recs-test-extract", recursive=True)
    assert table.to_pylist() == [
        {"student_id": "S1", "course_id": "C1", "progress": "85%", "row_number": 1},
        {"student_id": "S3", "course_id": "C1", "progress": None, "row_number": 3},
    ]
    assert rejects.column("row_number").to_pylist() == [2]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"  \r\n\t\n", "file is empty"),
        (HEADER + b"S1,C1,85%\n" * 5000 + b"S\xff,C1,85%\n", "line 5002"),
    ],
)
def test_file_level_errors(tmp_path: Path, data: bytes, problem: str) -> None:
    students = tmp_path / "students.csv"
    students.write_bytes(data)
    settings = _settings(tmp_path, students)
    with pytest.raises(InputFileError, match="students.csv") as info:
        read_source(str(students), "progress", settings)
    assert problem in str(info.value)


def test_first_line_blank_keeps_inferred_columns(tmp_path: Path) -> None:
    # A blank first line names no column: Arrow takes the next line as the
    # header and infers the types (with its own null values), as before.
    rows = _progress(tmp_path, b"\n" + HEADER + b"007,C1,NaN\n2,C1,N/A\n")
    assert rows == [
        {"student_id": "7", "course_id": "C1", "progress": None, "row_number": 1},
        {"student_id": "2", "course_id": "C1", "progress": None, "row_number": 2},
    ]


def test_cr_line_endings_are_read(tmp_path: Path) -> None:
    rows = _progress(tmp_path, b"studentId,courseId,progress\rS1,C1,50%\rS2,C1,60%\r")
    assert [(r["student_id"], r["row_number"]) for r in rows] == [("S1", 1), ("S2", 2)]


def test_an_unclosed_quote_counts_every_row_it_swallows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_module, "REJECT_TEXT_CHARS", 20)
    lines = [f"S{i},C1,{i}%" for i in range(1, 11)]
    lines[2] = "S3,C1,5%,extra"  # one malformed row before the quote
    lines[6] = '"S7,C1,7%'  # the quote opens on row 7 and never closes
    students = tmp_path / "students.csv"
    students.write_bytes(HEADER + "\n".join(lines).encode() + b"\n")
    settings = _settings(tmp_path, students)
    run = RunContext.create(tmp_path, ds="2026-12-03")
    summary = extract(run, settings)

    assert summary["progress"]["rows"] == 10
    assert summary["progress"]["malformed"] == 1 + 4
    table, rejects = _read_raw(run, "progress")
    assert table.column("row_number").to_pylist() == [1, 2, 4, 5, 6]
    assert rejects.column("row_number").to_pylist() == [3, 7]
    assert rejects.column("lines").to_pylist() == [1, 4]
    swallowed = rejects.to_pylist()[1]
    assert "rows 7 to 10 were read as one record" in swallowed["reason"]
    assert swallowed["text"].startswith('"S7,C1,7%')
    assert swallowed["text"].endswith("characters)")


def test_a_declared_delimiter_is_used_and_a_wrong_one_named(tmp_path: Path) -> None:
    data = b"studentId;courseId;progress\nS1;C1;85%\nS2;C1;\"7,5%\"\n"
    rows = _progress(tmp_path, data, csv_delimiter=";")
    assert [(r["student_id"], r["progress"]) for r in rows] == [
        ("S1", "85%"), ("S2", "7,5%")
    ]
    students = tmp_path / "students.csv"
    settings = _settings(tmp_path, students)
    with pytest.raises(InputFileError, match=r"--csv-delimiter ';'"):
        read_source(str(students), "progress", settings)
