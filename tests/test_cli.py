"""Tests of the ``recs`` command line: exit status, messages, summary, show."""

from __future__ import annotations

from pathlib import Path

import pytest

from recs.cli import main


def _common(tmp_path: Path) -> list[str]:
    return [
        "--data-dir",
        str(tmp_path / "var"),
        "--warehouse",
        f"sqlite:///{tmp_path / 'warehouse.db'}",
        "--date",
        "2026-12-03",
    ]


def test_run_missing_file_exits_non_zero_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["run", "--courses", str(tmp_path / "nope.csv"), *_common(tmp_path)])
    assert status == 1
    err = capsys.readouterr().err
    assert "nope.csv" in err and "not found" in err


def test_run_wrong_column_names_the_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = tmp_path / "students.csv"
    progress.write_text("learner;course;progress\n1;2;50%\n")
    status = main(["run", "--progress", str(progress), *_common(tmp_path)])
    assert status == 1
    err = capsys.readouterr().err
    assert "students.csv" in err and "'studentId'" in err and "delimiter" in err


def test_run_sample_then_show_a_student(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *_common(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "published" in out and "recommendations:" in out

    warehouse = f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert main(["show", "1", "--warehouse", warehouse]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("student 1: cluster")
    assert len([line for line in shown.splitlines() if line.startswith("  ")]) == 10

    assert main(["show", "no-such-student", "--warehouse", warehouse]) == 0
    assert "fallback list" in capsys.readouterr().out
