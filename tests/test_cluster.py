"""Tests of clustering: k reduction, determinism and saved outputs."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recs.cluster import count_distinct_rows, fit_clusters
from recs.context import RunContext
from recs.features import build_features
from recs.settings import Settings
from tests.conftest import write_clean

COURSES = pd.DataFrame({
    "course_id": ["C1", "C2", "C3"], "categories": ["Cloud", "Cloud", "Data"],
})


def _cluster(run: RunContext, settings: Settings, progress: pd.DataFrame) -> dict:
    write_clean(run, COURSES, progress)
    build_features(run, settings)
    return fit_clusters(run, settings)


def test_fit_clusters_reduces_k_to_distinct_profiles_and_logs_it(
    run: RunContext, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    progress = pd.DataFrame({
        "student_id": ["S1", "S1", "S2", "S2", "S3"],
        "course_id": ["C1", "C3", "C2", "C3", "C3"],
        "progress": [0.95, 0.5, 0.95, 0.5, 1.0],
    })
    with caplog.at_level(logging.WARNING, logger="recs.cluster"):
        summary = _cluster(run, settings, progress)
    assert summary["n_clusters"] == 2
    assert "k=20 reduced to 2" in caplog.text
    labels = pq.read_table(summary["assignments_path"]).to_pandas()
    by_student = dict(zip(labels.student_id, labels.cluster_id, strict=True))
    assert by_student["S1"] == by_student["S2"] != by_student["S3"]


def test_fit_clusters_single_student_gets_one_cluster(
    run: RunContext, settings: Settings
) -> None:
    progress = pd.DataFrame({
        "student_id": ["S1", "S1"], "course_id": ["C1", "C3"], "progress": [0.95, 0.5],
    })
    summary = _cluster(run, settings, progress)
    assert summary["n_clusters"] == 1
    assert summary["silhouette"] is None


def test_fit_clusters_is_repeatable(run: RunContext, settings: Settings) -> None:
    rng = np.random.default_rng(1)
    progress = pd.DataFrame({
        "student_id": [f"S{i}" for i in range(60) for _ in range(2)],
        "course_id": ["C1", "C3"] * 60,
        "progress": rng.uniform(0, 1, 120),
    })
    first = _cluster(run, settings.replace(n_clusters=4), progress)
    labels_first = pq.read_table(first["assignments_path"]).column("cluster_id")
    second = fit_clusters(run, settings.replace(n_clusters=4))
    labels_second = pq.read_table(second["assignments_path"]).column("cluster_id")
    assert first["n_clusters"] == 4
    assert labels_first.equals(labels_second)
    assert first["inertia"] == second["inertia"]


def test_count_distinct_rows() -> None:
    matrix = np.array([[0, 1], [0, 1], [1, 0]], dtype=np.float32)
    assert count_distinct_rows(matrix) == 2
    assert count_distinct_rows(matrix[:0]) == 0


def test_feature_matrix_of_a_run_equals_stack_features_of_its_arrays(
    run: RunContext, settings: Settings
) -> None:
    # The evaluation stacks in-memory features; the cluster step reads the
    # written ones. Both must give the clustering matrix bit for bit.
    from recs.clean import read_encoded
    from recs.cluster import feature_matrix, stack_features
    from recs.features import student_features

    rng = np.random.default_rng(4)
    progress = pd.DataFrame({
        "student_id": [f"S{i:03d}" for i in range(150) for _ in range(3)],
        "course_id": ["C1", "C2", "C3"] * 150,
        "progress": rng.uniform(0, 1, 450),
    })
    settings = settings.replace(svd_min_students=100, category_weight=0.3)
    write_clean(run, COURSES, progress)
    build_features(run, settings)
    students, matrix = feature_matrix(run, settings)
    courses, data = read_encoded(run)
    means, _, factors = student_features(data, courses, settings)
    assert factors is not None and factors.shape[1] > 0
    assert matrix.dtype == np.float32
    assert np.array_equal(matrix, stack_features(means, factors, 0.3))
    assert students.to_pylist() == list(data.students)
