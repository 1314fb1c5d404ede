"""Build the per-student feature tables that clustering reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recs.clean import Encoded, read_encoded
from recs.context import RunContext
from recs.settings import Settings

logger = logging.getLogger(__name__)

GRAM_MAX_COURSES = 2_000
GRAM_BLOCK_CELLS = 1 << 20
# Rows per block of the blockwise products and writes: each block's
# temporaries are a few MB that the next block reuses, where whole-matrix
# products made temporaries as large as the output (with the float32
# projection, the step's peak at a million students fell from 1.8 to 1.3 GB).
ROW_BLOCK = 1 << 16
WRITE_ROWS = 1 << 18


def _row_blocks(n_rows: int, size: int | None = None) -> Iterator[slice]:
    size = size or ROW_BLOCK
    return (slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size))


def course_categories(
    courses: pd.DataFrame, course_ids: np.ndarray, separator: str = "|"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Course-category membership pairs as codes, and the category labels.

    Categories in the validated catalogue are already normalised labels; the
    labels keep their order of first appearance in the catalogue.

    Returns
    -------
    course_code, category_code : numpy.ndarray of int32
        One entry per (course, category) pair.
    labels : list of str
    """
    exploded = (
        courses[["course_id", "categories"]]
        .assign(category=courses["categories"].str.split(separator, regex=False))
        .explode("category", ignore_index=True)
    )
    exploded = exploded[exploded["category"].notna() & (exploded["category"] != "")]
    category_codes, labels = pd.factorize(exploded["category"], sort=False)
    pairs = pd.DataFrame(
        {
            "course": pd.Index(course_ids).get_indexer(exploded["course_id"]),
            "category": category_codes,
        }
    ).drop_duplicates()
    return (
        pairs["course"].to_numpy(np.int32),
        pairs["category"].to_numpy(np.int32),
        [str(label) for label in labels],
    )


def progress_matrix(data: Encoded) -> Any:
    """Student x course progress as a CSR matrix, one row per student code.

    Repeated (student, course) rows stay separate entries, so every product
    below counts each row on its own.
    """
    matrix, codes = student_rows(data)
    return matrix if codes is None else matrix[np.argsort(codes)]


def student_rows(data: Encoded) -> tuple[Any, np.ndarray | None]:
    """Progress as a CSR matrix of one row per student, rows where they lie.

    Sources usually list a student's rows together, though seldom in the
    order of the codes. When every student's rows form one run, each run
    becomes a matrix row as it lies, and the products below write their
    results to the rows' codes: no row is moved, where sorting twenty
    million codes took a second and putting the matrix rows in code order
    copied every entry.

    Returns
    -------
    matrix : scipy.sparse.csr_matrix, shape (n_students, n_courses)
    codes : numpy.ndarray of int, or None
        The student code of each matrix row; None when row i is student i.
    """
    from scipy import sparse

    student, course, progress = data.student, data.course, data.progress
    shape = (data.n_students, data.n_courses)
    starts = np.concatenate([[0], np.flatnonzero(student[1:] != student[:-1]) + 1])
    if len(student) and len(starts) == data.n_students:
        codes = student[starts]
        if np.array_equal(np.sort(codes), np.arange(data.n_students)):
            indptr = np.concatenate([starts, [len(student)]])
            matrix = sparse.csr_matrix((progress, course, indptr), shape=shape)
            in_order = np.array_equal(codes, np.arange(data.n_students))
            return matrix, None if in_order else codes
    if len(student) > 1 and (student[1:] < student[:-1]).any():
        order = np.argsort(student, kind="stable")
        student, course, progress = student[order], course[order], progress[order]
    # Row starts by binary search in the sorted codes: no per-row temporary
    # (np.bincount would first copy twenty million codes to int64).
    indptr = np.searchsorted(
        student, np.arange(data.n_students + 1, dtype=student.dtype)
    )
    return sparse.csr_matrix((progress, course, indptr), shape=shape), None


def category_means(
    matrix: Any,
    pair_course: np.ndarray,
    pair_category: np.ndarray,
    n_categories: int,
    codes: np.ndarray | None = None,
) -> np.ndarray:
    """Each student's mean progress over the courses of each category.

    A course in several categories counts once in each; a category where
    the student has no progress is 0.

    Parameters
    ----------
    matrix : scipy.sparse.csr_matrix, shape (n_students, n_courses)
        Progress, as :func:`progress_matrix` builds it.
    pair_course, pair_category : numpy.ndarray of int
        Course-category membership pairs (:func:`course_categories`).
    n_categories : int
    codes : numpy.ndarray of int, optional
        The student of each matrix row (:func:`student_rows`); rows of the
        result are students in code order either way.

    Returns
    -------
    numpy.ndarray of float64, shape (n_students, n_categories), column order
    """
    from scipy import sparse

    # Sums and counts per (student, category) as two products with the
    # course x category membership matrix, block by block of students:
    # linear in rows, no row expansion. Counts are small integers, exact in
    # float32.
    membership = np.zeros((matrix.shape[1], n_categories))
    membership[pair_course, pair_category] = 1.0
    counted = membership.astype(np.float32)
    # Column order: each category's column is contiguous, as the Parquet
    # writer takes it.
    means = np.zeros((matrix.shape[0], n_categories), order="F")
    for block in _row_blocks(matrix.shape[0]):
        rows = matrix[block]
        taken = sparse.csr_matrix(
            (np.ones(rows.nnz, np.float32), rows.indices, rows.indptr),
            shape=rows.shape,
        )
        hits = np.asarray(taken @ counted)
        sums = np.asarray(rows @ membership)
        if codes is None:
            np.divide(sums, hits, out=means[block], where=hits > 0)
        else:
            means[codes[block]] = np.divide(
                sums, hits, out=np.zeros_like(sums), where=hits > 0
            )
    return means


def course_factors(
    matrix: Any,
    n_components: int,
    random_state: int,
    codes: np.ndarray | None = None,
) -> np.ndarray:
    """Unit-length student factors from a truncated SVD of student x course progress.

    They carry which courses a student actually took, which category
    averages alone lose; rows are normalised so that clustering compares
    directions of taste rather than amounts of activity.

    Parameters
    ----------
    matrix : scipy.sparse.csr_matrix, shape (n_students, n_courses)
        Progress, as :func:`progress_matrix` builds it.
    codes : numpy.ndarray of int, optional
        The student of each matrix row (:func:`student_rows`); rows of the
        result are students in code order either way.

    Returns
    -------
    numpy.ndarray of float32, shape (n_students, n_factors)
    """
    n_students, n_courses = matrix.shape
    n_components = min(n_components, n_courses - 1, n_students - 1)
    if n_components < 1:
        return np.zeros((n_students, 0), dtype=np.float32)
    if n_courses <= GRAM_MAX_COURSES:
        from scipy import sparse

        # Products in float32, the factors' own type: twice to three times
        # faster than in float64 (the Gram matrix still adds its blocks up
        # in float64; factors agree with float64's to about 1e-5).
        single = sparse.csr_matrix(
            (matrix.data.astype(np.float32), matrix.indices, matrix.indptr),
            shape=matrix.shape,
        )
        components = top_right_singular_vectors(single, n_components)
        # Projected block by block into column order, as the Parquet writer
        # takes it.
        loadings = np.ascontiguousarray(components.T, dtype=np.float32)
        factors = np.empty((n_students, n_components), np.float32, order="F")
        for block in _row_blocks(n_students):
            rows = block if codes is None else codes[block]
            factors[rows] = single[block] @ loadings
    else:
        from sklearn.decomposition import TruncatedSVD

        # Rows in code order: randomized SVD's result depends on the order of
        # the rows, and the factors must not depend on that of the source.
        if codes is not None:
            matrix = matrix[np.argsort(codes)]
        svd = TruncatedSVD(n_components=n_components, random_state=random_state)
        factors = svd.fit_transform(matrix.astype(np.float32)).astype(np.float32)
    # Row norms without np.linalg.norm's temporary of squares (a matrix as
    # large as the factors); a student without progress keeps a zero row.
    norms = np.sqrt(np.einsum("ij,ij->i", factors, factors))[:, None]
    return np.divide(factors, norms, out=factors, where=norms > 0)


def top_right_singular_vectors(matrix: Any, n_components: int) -> np.ndarray:
    """The ``n_components`` leading right singular vectors of a sparse matrix.

    Exact, from the eigenvectors of the small column x column Gram matrix
    ``X^T X``: one pass over the rows, where randomized SVD makes several.
    Meant for a catalogue of at most ``GRAM_MAX_COURSES`` columns. Signs
    follow scikit-learn's ``svd_flip``: each vector's largest loading is
    positive.

    Returns
    -------
    numpy.ndarray of float64, shape (n_components, n_columns)
        Rows ordered by singular value, largest first (like
        ``TruncatedSVD.components_``).
    """
    values, vectors = np.linalg.eigh(gram_matrix(matrix))
    vectors = vectors[:, np.argsort(values)[::-1][:n_components]]
    largest = np.abs(vectors).argmax(axis=0)
    vectors *= np.sign(vectors[largest, np.arange(vectors.shape[1])])
    return np.ascontiguousarray(vectors.T)


def gram_matrix(matrix: Any) -> np.ndarray:
    """``X^T X`` of a sparse matrix with few columns, as a dense float64 array.

    Blocks of rows are made dense and multiplied with BLAS, which beats a
    sparse-sparse product by far once rows hold a handful of entries each;
    a block is kept to about ``GRAM_BLOCK_CELLS`` cells. Block products are
    made in the matrix's own type and added up in float64.
    """
    from threadpoolctl import threadpool_limits

    n_rows, n_columns = matrix.shape
    gram = np.zeros((n_columns, n_columns))
    step = max(1, GRAM_BLOCK_CELLS // max(n_columns, 1))
    buffer = np.empty((min(step, n_rows), n_columns), dtype=matrix.dtype)
    # One BLAS thread: these products are small, and OpenBLAS threads that
    # compete with other work for the cores were measured 10x slower. One
    # dense buffer for every block: fresh memory costs page faults each time.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n_rows, step):
            rows = matrix[start : start + step]
            block = rows.toarray(out=buffer[: rows.shape[0]])
            gram += block.T @ block
    return gram


def student_features(
    data: Encoded,
    courses: pd.DataFrame,
    settings: Settings,
    on_means: Callable[[np.ndarray, list[str]], None] | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Category means and, from ``settings.svd_min_students`` up, course factors.

    This is the in-memory core of :func:`build_features`; the offline
    evaluation calls it on its training split so that it measures exactly
    what the pipeline builds.

    Parameters
    ----------
    on_means : callable, optional
        Called with the means and their labels as soon as they are ready,
        while the factors are still being learned on another thread (the
        features step writes the means then).

    Returns
    -------
    means : numpy.ndarray of float64, shape (n_students, n_categories)
    labels : list of str
        Category labels, one per column of ``means``.
    factors : numpy.ndarray of float32, shape (n_students, n_factors), or None
        None when factors are turned off or there are too few students.
    """
    pair_course, pair_category, labels = course_categories(
        courses, data.courses, settings.category_separator
    )
    matrix, codes = student_rows(data)
    with_factors = (
        settings.svd_components > 0 and data.n_students >= settings.svd_min_students
    )
    # The two are independent and release the GIL in their heavy parts
    # (sparse products, BLAS): learn the factors on the other core.
    with ThreadPoolExecutor(1) as pool:
        factors = (
            pool.submit(
                course_factors,
                matrix,
                settings.svd_components,
                settings.random_state,
                codes,
            )
            if with_factors
            else None
        )
        means = category_means(matrix, pair_course, pair_category, len(labels), codes)
        if on_means is not None:
            on_means(means, labels)
        return means, labels, None if factors is None else factors.result()


def build_features(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Write the student x category feature table (and course factors) for a run.

    Outputs ``features/student_category/ds=<date>/features.parquet`` (one row
    per student with kept progress; one float64 column per category, mean
    progress 0-1) and, when ``settings.svd_components`` > 0,
    ``features/student_factors/ds=<date>/factors.parquet``.

    Notes
    -----
    Course factors are learned only from ``settings.svd_min_students``
    students up: a decomposition of a handful of students says nothing about
    taste, and small batches are clustered on category interests alone.
    """
    started = time.perf_counter()
    courses, data = read_encoded(run)
    category_path = run.partition("features", "student_category") / "features.parquet"
    means, labels, factors = student_features(
        data,
        courses,
        settings,
        on_means=lambda means, labels: write_matrix(
            category_path, data.student_ids, means, labels
        ),
    )
    summary: dict[str, Any] = {
        "students": data.n_students,
        "courses": data.n_courses,
        "categories": len(labels),
        "category_path": str(category_path),
    }
    if factors is not None:
        factor_path = run.partition("features", "student_factors") / "factors.parquet"
        names = [f"f{j:02d}" for j in range(factors.shape[1])]
        write_matrix(factor_path, data.student_ids, factors, names)
        summary["factors"] = factors.shape[1]
        summary["factor_path"] = str(factor_path)
    logger.info(
        "wrote %d students x %d categories to %s", data.n_students, len(labels),
        category_path,
    )
    if factors is not None:
        logger.info(
            "wrote %d course factors per student to %s", factors.shape[1], factor_path
        )
    summary["seconds"] = round(time.perf_counter() - started, 3)
    run.write_summary("features", summary)
    return summary


def write_matrix(
    path: Path, student_ids: pa.Array, matrix: np.ndarray, names: list[str]
) -> None:
    """Write one row per student: ``student_id``, then one column per name.

    Written plain: no dictionaries, compression or statistics (distinct
    floats and ids shrink little, and the cluster step reads every row),
    and every column declared non-null, which spares the definition levels
    (the write took a third less time). A matrix in column order (as the
    features are made) is written without copies; rows go out a row group
    at a time.
    """
    value_type = pa.from_numpy_dtype(matrix.dtype)
    schema = pa.schema(
        [pa.field("student_id", student_ids.type, nullable=False),
         *(pa.field(name, value_type, nullable=False) for name in names)]
    )
    with pq.ParquetWriter(
        path, schema, use_dictionary=False, compression="none", write_statistics=False
    ) as writer:
        for block in _row_blocks(len(matrix), WRITE_ROWS):
            values = matrix[block]
            # A column of a matrix in column order is taken without a copy.
            columns = [pa.array(values[:, j]) for j in range(values.shape[1])]
            writer.write_table(
                pa.Table.from_arrays([student_ids[block], *columns], schema=schema)
            )
