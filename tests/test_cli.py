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
    status = main(
        [
            "run",
            "--courses",
            str(tmp_path / "nope.csv"),
            "--progress",
            str(tmp_path / "students.csv"),
            *_common(tmp_path),
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "nope.csv" in err and "not found" in err


def test_run_wrong_column_names_the_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = tmp_path / "students.csv"
    progress.write_text("learner;course;progress\n1;2;50%\n")
    courses = tmp_path / "courses.csv"
    courses.write_text("courseId,title,categories\n2,Intro,Data\n")
    status = main(
        [
            "run",
            "--courses",
            str(courses),
            "--progress",
            str(progress),
            *_common(tmp_path),
        ]
    )
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--courses", "c.csv"], "courses file given without a progress file"),
        (["--progress", "p.csv"], "progress file given without a courses file"),
        (["--courses-query", "select 1"], "need source_url"),
        (["--date", "2026-13-45"], "run date '2026-13-45' is not a valid date"),
    ],
)
def test_run_refuses_incomplete_or_wrong_options(
    options: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = [o for o in _common(tmp_path) if o not in ("--date", "2026-12-03")]
    assert main(["run", *options, *common]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "warehouse.db").exists()


def test_read_commands_on_a_missing_warehouse_say_so_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warehouse = f"sqlite:///{tmp_path / 'none.db'}"
    for command in (["show", "1"], ["runs"], ["rollback"]):
        assert main([*command, "--warehouse", warehouse]) == 1
        assert "nothing was published there" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_unreachable_warehouse_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "run",
            "--warehouse",
            "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "--data-dir",
            str(tmp_path / "var"),
        ]
    )
    assert status == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recs run: error: OperationalError:")
    assert len(err.splitlines()) == 1


def test_runs_lists_the_ledger_as_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *_common(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["runs", "--warehouse", f"sqlite:///{tmp_path / 'warehouse.db'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run_id", "ds", "status"]
    assert "published" in lines[1] and "yes" in lines[1] and "1000" in lines[1]
