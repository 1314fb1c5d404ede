"""Tests for the notebook baseline kept in ``bench/`` for benchmarks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from recs.generate import CATEGORIES

BASELINE_PATH = Path(__file__).resolve().parents[1] / "bench" / "baseline.py"


def _load_baseline() -> ModuleType:
    # bench/ is not a package on sys.path; load the module from its file.
    spec = importlib.util.spec_from_file_location("bench_baseline", BASELINE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


baseline = _load_baseline()


@pytest.fixture
def courses() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "courseId": [1, 2, 3, 4, 5, 6, 7],
            "title": ["Go", "GCP", "AI", "Ethics", "C++", "None", "Empty"],
            "categories": [
                "Go",
                "Google Cloud",
                "AI|Python",
                "AI Ethics",
                "C++",
                None,
                "",
            ],
        }
    )


@pytest.fixture
def progress() -> pd.DataFrame:
    rows = [
        (1, 1, "80%"),
        (1, 2, "100%"),
        (2, 2, "60%"),
        (3, 3, "50%"),
        (3, 4, "92%"),
        (4, 5, "33%"),
        (4, 6, "100%"),
        (5, 5, "90%"),
        (5, 1, "40%"),
        (6, 7, "50%"),
    ]
    return pd.DataFrame(rows, columns=["studentId", "courseId", "progress"])


def _exact_features(courses: pd.DataFrame, progress: pd.DataFrame) -> pd.DataFrame:
    """Mean progress per student and category with exact category matching."""
    names = courses.dropna(subset=["categories"]).assign(
        category=lambda f: f["categories"].str.split("|")
    )
    names = names.explode("category").query("category != ''")
    rows = progress.assign(
        progress=progress["progress"].str.rstrip("%").astype(float) / 100
    ).merge(names[["courseId", "category"]], on="courseId")
    means = rows.groupby(["studentId", "category"])["progress"].mean()
    return means.unstack(fill_value=0.0)


def test_baseline_features_reproduce_substring_matching(
    courses: pd.DataFrame, progress: pd.DataFrame
) -> None:
    features = baseline.baseline_features(courses, progress)
    # Student 2 only took the Google Cloud course, yet gets a Go average.
    assert features.loc[2, "Go"] == 0.6
    assert features.loc[1, "Go"] == 0.9
    # The AI column also averages the AI Ethics course.
    assert features.loc[3, "AI"] == 0.71
    assert features.loc[3, "AI Ethics"] == 0.92


def test_baseline_features_right_on_exact_categories(
    courses: pd.DataFrame, progress: pd.DataFrame
) -> None:
    features = baseline.baseline_features(courses, progress, decimals=None)
    expected = _exact_features(courses, progress)
    exact = baseline.exact_categories(expected.columns)
    assert exact == ["AI Ethics", "C++", "Google Cloud", "Python"]
    pd.testing.assert_frame_equal(
        features[exact],
        expected.loc[features.index, exact],
        check_names=False,
    )
    assert features.loc[5, "C++"] == pytest.approx(0.9)
    assert features.loc[5, "Go"] == pytest.approx(0.4)


def test_baseline_features_shape_and_defaults(
    courses: pd.DataFrame, progress: pd.DataFrame
) -> None:
    features = baseline.baseline_features(courses, progress)
    assert list(features.columns) == [
        "AI",
        "AI Ethics",
        "C++",
        "Go",
        "Google Cloud",
        "Python",
    ]
    # Student 6 took only an uncategorised course, so is absent, as in the
    # notebook; missing averages are 0.
    assert list(features.index) == [1, 2, 3, 4, 5]
    assert features.loc[4].tolist() == [0.0, 0.0, 0.33, 0.0, 0.0, 0.0]


def test_baseline_features_unrounded(
    courses: pd.DataFrame, progress: pd.DataFrame
) -> None:
    features = baseline.baseline_features(courses, progress, decimals=None)
    assert features.loc[3, "AI"] == pytest.approx(0.71)
    assert features.loc[3, "Python"] == pytest.approx(0.5)


def test_baseline_features_rejects_missing_column(progress: pd.DataFrame) -> None:
    bad = pd.DataFrame({"courseId": [1], "tags": ["Go"]})
    with pytest.raises(ValueError, match="courses lacks column.*'categories'"):
        baseline.baseline_features(bad, progress)


def test_baseline_cluster_mastered(
    courses: pd.DataFrame, progress: pd.DataFrame
) -> None:
    labels = pd.Series([0, 0, 1, 1, 2], index=[1, 2, 3, 4, 5])
    mastered = baseline.baseline_cluster_mastered(progress, labels)
    # 90% exactly is not mastered; the notebook did not drop uncategorised
    # courses (6) from the progress rows it listed.
    assert mastered == {0: {2}, 1: {4, 6}, 2: set()}
    categories = baseline.baseline_cluster_categories(courses, mastered)
    assert categories == {0: {"Google Cloud"}, 1: {"AI Ethics"}, 2: set()}


def test_substring_categories_of_generated_vocabulary() -> None:
    wrong = baseline.substring_categories(CATEGORIES)
    assert wrong == {
        "AI": ["AI Ethics"],
        "Cloud": ["Google Cloud"],
        "Data": ["Data Science"],
        "Go": ["Google Cloud"],
        "Java": ["JavaScript"],
    }
    exact = baseline.exact_categories(CATEGORIES)
    assert {"C++", "C#", ".NET", "AI Ethics", "Google Cloud"} <= set(exact)
    assert len(exact) == len(CATEGORIES) - len(wrong)
