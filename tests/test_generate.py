"""Tests for the synthetic courses and progress generator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recs.generate import CATEGORIES, THEMES, generate, latent_groups, main

PERCENT = re.compile(r"^(?:100|[1-9]?[0-9](?:\.[1-9])?)%$")


def _read(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    courses = pd.read_csv(out_dir / "courses.csv", dtype=str, keep_default_na=False)
    students = pd.read_csv(out_dir / "students.csv", dtype=str, keep_default_na=False)
    return courses, students


def _progress(students: pd.DataFrame) -> pd.Series:
    return students["progress"].str.removesuffix("%").astype(float)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("generated")
    summary = generate(3000, 100, seed=7, out_dir=out_dir)
    return out_dir, summary


def test_generate_same_seed_same_bytes(tmp_path: Path) -> None:
    generate(500, 40, seed=3, out_dir=tmp_path / "a")
    generate(500, 40, seed=3, out_dir=tmp_path / "b")
    for name in ("courses.csv", "students.csv"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name


def test_generate_other_seed_differs(tmp_path: Path) -> None:
    generate(500, 40, seed=3, out_dir=tmp_path / "a")
    generate(500, 40, seed=4, out_dir=tmp_path / "b")
    for name in ("courses.csv", "students.csv"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first != (tmp_path / "b" / name).read_bytes(), name


def test_generate_source_layout(sample: tuple[Path, dict]) -> None:
    out_dir, _ = sample
    course_text = (out_dir / "courses.csv").read_text(encoding="utf-8")
    student_text = (out_dir / "students.csv").read_text(encoding="utf-8")
    assert course_text.startswith("courseId,title,categories\n")
    assert student_text.startswith("studentId,courseId,progress\n")
    assert '"' not in course_text
    assert '"' not in student_text
    assert "\r" not in student_text


def test_generate_rows_are_valid(sample: tuple[Path, dict]) -> None:
    out_dir, summary = sample
    courses, students = _read(out_dir)
    bad = students.loc[~students["progress"].str.fullmatch(PERCENT), "progress"]
    assert bad.empty, bad.head().tolist()
    assert students["courseId"].isin(courses["courseId"]).all()
    assert not students.duplicated(["studentId", "courseId"]).any()
    assert courses["courseId"].is_unique
    ids = students["studentId"].astype(int)
    assert set(ids) == set(range(1, 3001))
    assert summary["rows"] == len(students)
    assert summary["students"] == 3000
    assert summary["courses"] == len(courses) == 100


def test_generate_courses_have_one_to_four_known_categories(
    sample: tuple[Path, dict],
) -> None:
    out_dir, _ = sample
    courses, _ = _read(out_dir)
    split = courses["categories"].str.split("|")
    assert split.map(len).between(1, 4).all()
    used = {name for names in split for name in names}
    assert used <= set(CATEGORIES)
    assert 15 <= len(used) <= 30
    assert (courses["title"].str.len() > 0).all()
    assert not courses["title"].str.contains(",").any()


def test_generate_vocabulary_has_matching_traps() -> None:
    for short, long in (("Go", "Google Cloud"), ("AI", "AI Ethics")):
        assert short in CATEGORIES
        assert long in CATEGORIES
    assert {"C++", "C#", ".NET"} <= set(CATEGORIES)


def test_generate_rows_per_student_mean(sample: tuple[Path, dict]) -> None:
    out_dir, _ = sample
    _, students = _read(out_dir)
    per_student = students.groupby("studentId").size()
    assert per_student.min() >= 1
    assert 18 <= per_student.mean() <= 22


def test_generate_mastered_share(sample: tuple[Path, dict]) -> None:
    out_dir, summary = sample
    _, students = _read(out_dir)
    progress = _progress(students)
    share = (progress > 90).mean()
    assert 0.2 <= share <= 0.3
    assert summary["mastered_share"] == pytest.approx(share, abs=1e-4)
    assert (progress == 90).sum() > 0
    assert (progress == 100).sum() > 0
    assert students["progress"].str.contains(".", regex=False).mean() > 0.03


def test_generate_groups_share_top_categories(sample: tuple[Path, dict]) -> None:
    out_dir, _ = sample
    courses, students = _read(out_dir)
    categories = courses.assign(
        category=courses["categories"].str.split("|")
    ).explode("category")[["courseId", "category"]]
    counts = (
        students.merge(categories, on="courseId")
        .groupby(["studentId", "category"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["studentId", "n", "category"], ascending=[True, False, True])
    )
    top = counts.drop_duplicates("studentId").set_index("studentId")["category"]
    top.index = top.index.astype(int)
    groups = pd.Series(latent_groups(3000, seed=7), index=range(1, 3001))
    frame = pd.DataFrame({"group": groups, "top": top})
    within = pd.crosstab(frame["group"], frame["top"], normalize="index")
    weights = frame["group"].value_counts(normalize=True)
    same_group = float((weights * (within**2).sum(axis=1)).sum())
    random_pair = float((frame["top"].value_counts(normalize=True) ** 2).sum())
    assert same_group > 2 * random_pair


def test_latent_groups_cover_every_theme() -> None:
    groups = latent_groups(5000, seed=1)
    assert groups.shape == (5000,)
    assert set(np.unique(groups)) == set(range(len(THEMES)))
    assert np.array_equal(groups[:100], latent_groups(100, seed=1))


def test_generate_small_catalogue_caps_rows(tmp_path: Path) -> None:
    summary = generate(50, 3, seed=0, out_dir=tmp_path, rows_per_student=20)
    _, students = _read(tmp_path)
    assert students.groupby("studentId").size().max() <= 3
    assert summary["rows"] == len(students)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_students": 0}, "n_students must be at least 1, got 0"),
        ({"n_courses": -5}, "n_courses must be at least 1, got -5"),
        ({"seed": -1}, "seed must be non-negative, got -1"),
        ({"rows_per_student": 0.0}, "rows_per_student must be positive, got 0.0"),
    ],
)
def test_generate_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict, match: str
) -> None:
    arguments = {"n_students": 10, "n_courses": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        generate(**arguments, out_dir=tmp_path)


def test_generate_rejects_float_count(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="n_students must be an int, got 2.5"):
        generate(2.5, out_dir=tmp_path)  # type: ignore[arg-type]


def test_main_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(["--students", "20", "--courses", "10", "--out", str(tmp_path)])
    assert status == 0
    assert (tmp_path / "courses.csv").exists()
    assert (tmp_path / "students.csv").exists()
    assert "20 students" in capsys.readouterr().out
