"""Tests of the feature tables: exact category means, codes and factors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recs import features
from recs.clean import Encoded, encode
from recs.context import RunContext
from recs.features import (
    build_features,
    category_means,
    course_categories,
    progress_matrix,
)
from recs.settings import Settings
from tests.conftest import write_clean

COURSES = pd.DataFrame(
    {
        "course_id": ["C1", "C2", "C3"],
        "categories": ["AWS|Cloud", "Cloud", "Data"],
    }
)


def _means(courses: pd.DataFrame, progress: pd.DataFrame) -> pd.DataFrame:
    data = encode(courses, progress)
    pairs_course, pairs_category, labels = course_categories(courses, data.courses)
    means = category_means(
        progress_matrix(data), pairs_course, pairs_category, len(labels)
    )
    return pd.DataFrame(means, index=data.students, columns=labels)


def test_category_means_course_in_several_categories_counts_in_each() -> None:
    progress = pd.DataFrame(
        {
            "student_id": ["S1", "S1", "S1", "S2"],
            "course_id": ["C1", "C2", "C3", "C2"],
            "progress": [0.9, 0.5, 0.2, 1.0],
        }
    )
    means = _means(COURSES, progress)
    assert list(means.columns) == ["AWS", "Cloud", "Data"]
    assert means.loc["S1", "AWS"] == pytest.approx(0.9)
    assert means.loc["S1", "Cloud"] == pytest.approx((0.9 + 0.5) / 2)
    assert means.loc["S1", "Data"] == pytest.approx(0.2)
    assert means.loc["S2"].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_category_means_keep_exact_labels_with_regex_characters() -> None:
    courses = pd.DataFrame(
        {
            "course_id": ["a", "b", "c"],
            "categories": ["C++", "C", "Regex (PCRE)|.NET"],
        }
    )
    progress = pd.DataFrame(
        {
            "student_id": ["s", "s"],
            "course_id": ["a", "c"],
            "progress": [0.95, 0.1],
        }
    )
    means = _means(courses, progress)
    assert means.loc["s"].to_dict() == pytest.approx(
        {"C++": 0.95, "C": 0.0, "Regex (PCRE)": 0.1, ".NET": 0.1}
    )


def test_encode_keeps_ids_as_text() -> None:
    courses = pd.DataFrame({"course_id": ["007", "07", "7"], "categories": ["X"] * 3})
    progress = pd.DataFrame(
        {
            "student_id": ["00042", "042"],
            "course_id": ["007", "7"],
            "progress": [1.0, 0.5],
        }
    )
    data = encode(courses, progress)
    assert data.students.tolist() == ["00042", "042"]
    assert data.courses.tolist() == ["007", "07", "7"]
    assert data.course.tolist() == [0, 2]


def test_encode_rejects_progress_on_unknown_course() -> None:
    progress = pd.DataFrame(
        {"student_id": ["s"], "course_id": ["C9"], "progress": [1.0]}
    )
    with pytest.raises(ValueError, match="C9"):
        encode(COURSES, progress)


def test_build_features_writes_float64_table_and_skips_factors_for_tiny_batch(
    run: RunContext, settings: Settings
) -> None:
    progress = pd.DataFrame(
        {
            "student_id": ["S1", "S2"],
            "course_id": ["C1", "C3"],
            "progress": [0.8, 0.3],
        }
    )
    write_clean(run, COURSES, progress)
    summary = build_features(run, settings)
    table = pq.read_table(summary["category_path"])
    assert table.column_names == ["student_id", "AWS", "Cloud", "Data"]
    assert str(table.schema.field("AWS").type) == "double"
    assert table.column("Cloud").to_pylist() == [0.8, 0.0]
    assert "factor_path" not in summary


def test_build_features_adds_unit_length_factors_for_enough_students(
    run: RunContext, settings: Settings
) -> None:
    rng = np.random.default_rng(0)
    n = 150
    progress = pd.DataFrame(
        {
            "student_id": [f"S{i:03d}" for i in range(n) for _ in range(2)],
            "course_id": rng.choice(["C1", "C2", "C3"], size=2 * n),
            "progress": rng.uniform(0.1, 1.0, size=2 * n),
        }
    ).drop_duplicates(["student_id", "course_id"])
    write_clean(run, COURSES, progress)
    summary = build_features(run, settings.replace(svd_components=2))
    factors = pq.read_table(summary["factor_path"]).to_pandas().set_index("student_id")
    assert factors.shape == (n, 2)
    assert np.linalg.norm(factors.to_numpy(), axis=1) == pytest.approx(
        np.ones(n), abs=1e-5
    )


def test_course_factors_match_an_exact_truncated_svd() -> None:
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    rng = np.random.default_rng(3)
    dense = rng.uniform(0, 1, (400, 30)) * (rng.uniform(0, 1, (400, 30)) < 0.3)
    dense[:, :5] += 2 * rng.uniform(0, 1, (400, 1))  # a few strong directions
    matrix = sparse.csr_matrix(dense)
    ours = features.course_factors(matrix, n_components=4, random_state=0)
    exact = TruncatedSVD(4, algorithm="arpack").fit_transform(matrix)
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    # Singular vectors are defined up to sign: align each column first.
    signs = np.sign((ours * exact).sum(axis=0))
    assert ours.dtype == np.float32
    assert np.abs(ours - exact * signs).max() < 1e-4


def test_read_numpy_joins_row_groups_in_file_order(tmp_path: Path) -> None:
    from recs.clean import read_numpy

    path = tmp_path / "codes.parquet"
    student = np.repeat(np.arange(50, dtype=np.int32), 3)
    progress = np.linspace(0, 1, len(student))
    pq.write_table(
        pa.table({"student": student, "progress": progress, "other": progress}),
        path,
        row_group_size=16,
    )
    assert pq.ParquetFile(path).metadata.num_row_groups > 2
    out = read_numpy(path, {"student": np.int32, "progress": np.float64})
    assert list(out) == ["student", "progress"]
    assert out["student"].dtype == np.int32
    assert out["student"].tolist() == student.tolist()
    assert out["progress"].tolist() == progress.tolist()


@pytest.mark.parametrize(
    "student",
    [
        [2, 2, 0, 1, 1, 1, 3],  # one run per student, codes out of order
        [0, 0, 1, 1, 2, 3, 3],  # already in code order
        [1, 0, 1, 2, 3, 0, 3],  # students split across runs
        [1, 1, 3, 3, 2, 2, 2],  # student 0 has no rows (a training split)
        [1, 1, 0, 0, 1, 3, 3],  # as many runs as students, yet one split
    ],
)
def test_progress_matrix_puts_rows_in_code_order(student: list[int]) -> None:
    course = np.array([0, 2, 1, 0, 2, 1, 1], np.int32)
    progress = np.linspace(0.1, 0.7, 7)
    data = Encoded(
        student_ids=pa.array(["a", "b", "c", "d"]),
        courses=np.array(["x", "y", "z"]),
        student=np.array(student, np.int32),
        course=course,
        progress=progress,
    )
    matrix = progress_matrix(data)
    expected = np.zeros((4, 3))
    np.add.at(expected, (np.array(student), course), progress)
    assert matrix.shape == (4, 3)
    assert matrix.nnz == 7
    assert np.array_equal(matrix.toarray(), expected)
    # Each row holds its student's entries in source order.
    for code in range(4):
        row = matrix[code]
        rows = np.flatnonzero(np.array(student) == code)
        assert row.indices.tolist() == course[rows].tolist()
        assert row.data.tolist() == progress[rows].tolist()


@pytest.mark.parametrize("gram_max_courses", [2_000, 0])  # Gram, TruncatedSVD
def test_student_features_do_not_depend_on_the_order_of_students(
    monkeypatch: pytest.MonkeyPatch, gram_max_courses: int
) -> None:
    monkeypatch.setattr(features, "ROW_BLOCK", 16)  # several blocks
    monkeypatch.setattr(features, "GRAM_MAX_COURSES", gram_max_courses)
    n_courses = 40
    rng = np.random.default_rng(8)
    n_students = 120
    lengths = rng.integers(1, 6, n_students)
    student = np.repeat(np.arange(n_students, dtype=np.int32), lengths)
    course = np.concatenate(
        [rng.choice(n_courses, k, replace=False) for k in lengths]
    ).astype(np.int32)
    progress = rng.uniform(0, 1, len(student))
    courses = pd.DataFrame(
        {
            "course_id": [f"c{i:04d}" for i in range(n_courses)],
            "title": None,
            "categories": [("A", "B|A", "C")[i % 3] for i in range(n_courses)],
        }
    )
    ids = pa.array([f"s{i:03d}" for i in range(n_students)])

    def encoded(order: np.ndarray) -> Encoded:
        rows = np.concatenate([np.flatnonzero(student == s) for s in order])
        return Encoded(
            student_ids=ids,
            courses=courses["course_id"].to_numpy(dtype=str),
            student=student[rows],
            course=course[rows],
            progress=progress[rows],
        )

    settings = Settings(svd_components=3, svd_min_students=10)
    by_code = features.student_features(encoded(np.arange(n_students)), courses,
                                         settings)
    shuffled = encoded(rng.permutation(n_students))
    assert features.student_rows(shuffled)[1] is not None  # rows stay in place
    by_run = features.student_features(shuffled, courses, settings)
    assert by_run[1] == by_code[1]
    assert np.array_equal(by_run[0], by_code[0])
    if gram_max_courses == 0:  # randomized SVD, fitted in code order
        assert np.array_equal(by_run[2], by_code[2])
    else:  # the Gram matrix adds the rows up in another order
        assert np.abs(by_run[2] - by_code[2]).max() < 1e-4


def test_count_codes_equals_bincount_across_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recs import clean

    monkeypatch.setattr(clean, "COUNT_SLICE", 7)
    codes = np.random.default_rng(1).integers(0, 9, 100).astype(np.int32)
    counts = clean.count_codes(codes, 12)
    assert counts.tolist() == np.bincount(codes, minlength=12).tolist()


def test_category_means_and_gram_match_a_loop_over_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scipy import sparse

    rng = np.random.default_rng(5)
    n_students, n_courses = 700, 9
    student = np.sort(rng.integers(0, n_students, 4_000)).astype(np.int32)
    course = rng.integers(0, n_courses, 4_000).astype(np.int32)
    progress = rng.choice([0.0, 0.3, 0.8, 1.0], 4_000)  # 0% still counts as taken
    indptr = np.searchsorted(student, np.arange(n_students + 1))
    matrix = sparse.csr_matrix(
        (progress, course, indptr), shape=(n_students, n_courses)
    )
    pair_course = np.array([0, 1, 1, 2, 5, 8], np.int32)
    pair_category = np.array([0, 0, 1, 2, 2, 3], np.int32)
    # Small blocks, so that every product runs over several.
    monkeypatch.setattr(features, "GRAM_BLOCK_CELLS", 5 * n_courses)
    monkeypatch.setattr(features, "ROW_BLOCK", 64)

    means = category_means(matrix, pair_course, pair_category, 4)
    gram = features.gram_matrix(matrix)

    assert np.allclose(gram, (matrix.T @ matrix).toarray(), rtol=1e-12, atol=0)
    hits = np.zeros((n_students, 4))
    sums = np.zeros((n_students, 4))
    for s, c, p in zip(student, course, progress, strict=True):
        for cat in pair_category[pair_course == c]:
            hits[s, cat] += 1
            sums[s, cat] += p
    expected = np.divide(sums, hits, out=np.zeros_like(sums), where=hits > 0)
    assert np.allclose(means, expected, rtol=0, atol=1e-12)
