"""Group students with similar interests with k-means."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recs.context import RunContext
from recs.settings import Settings

logger = logging.getLogger(__name__)

SILHOUETTE_SAMPLE = 5_000


def feature_matrix(
    run: RunContext, settings: Settings
) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Student ids and the clustering matrix (category means, then factors).

    The matrix is filled column by column straight from the Parquet tables,
    without intermediate copies of a million-row matrix.
    """
    category_path = run.partition("features", "student_category") / "features.parquet"
    table = pq.read_table(category_path)
    factor_table = None
    factor_path = run.partition("features", "student_factors") / "factors.parquet"
    if factor_path.exists():
        factor_table = pq.read_table(factor_path)
        if factor_table.num_rows != table.num_rows:
            factor_table = None
    n_means = table.num_columns - 1
    n_factors = 0 if factor_table is None else factor_table.num_columns - 1
    matrix = np.empty((table.num_rows, n_means + n_factors), np.float32)
    _fill_columns(matrix[:, :n_means], table)
    matrix[:, :n_means] *= np.float32(settings.category_weight)
    if factor_table is not None:
        _fill_columns(matrix[:, n_means:], factor_table)
    return table.column("student_id"), matrix


def stack_features(
    means: np.ndarray, factors: np.ndarray | None, category_weight: float
) -> np.ndarray:
    """The clustering matrix: weighted category means, then the course factors.

    Parameters
    ----------
    means : numpy.ndarray, shape (n_students, n_categories)
        Mean progress per category, 0-1.
    factors : numpy.ndarray, shape (n_students, n_factors), or None
        Unit-length course factors, when there are any.
    category_weight : float
        Multiplies the category block; 0 clusters on the factors alone.

    Returns
    -------
    numpy.ndarray of float32, shape (n_students, n_categories + n_factors)
    """
    n_means = means.shape[1]
    n_factors = 0 if factors is None else factors.shape[1]
    matrix = np.empty((len(means), n_means + n_factors), np.float32)
    # Cast, then weigh in float32: the same rounding as feature_matrix.
    matrix[:, :n_means] = means
    matrix[:, :n_means] *= np.float32(category_weight)
    if n_factors:
        matrix[:, n_means:] = factors
    return matrix


def _fill_columns(out: np.ndarray, table: pa.Table) -> None:
    """Copy every column but the first (the id) of ``table`` into ``out``."""
    for index, name in enumerate(table.column_names[1:]):
        start = 0
        for chunk in table.column(name).chunks:
            out[start : start + len(chunk), index] = chunk.to_numpy()
            start += len(chunk)


def count_distinct_rows(matrix: np.ndarray) -> int:
    """Number of distinct rows, by hashing (linear time)."""
    if len(matrix) == 0:
        return 0
    hashes = pd.util.hash_pandas_object(pd.DataFrame(matrix), index=False)
    return int(hashes.nunique())


def fit_kmeans(
    matrix: np.ndarray, k: int, random_state: int, minibatch: bool = False
) -> Any:
    """Fit k-means, or mini-batch k-means (for very large inputs)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if minibatch:
        model = MiniBatchKMeans(
            n_clusters=k, random_state=random_state, batch_size=8192, n_init=3
        )
    else:
        model = KMeans(n_clusters=k, random_state=random_state, n_init="auto")
    return model.fit(matrix)


def silhouette(
    matrix: np.ndarray, labels: np.ndarray, random_state: int
) -> float | None:
    """Silhouette on a seeded sample; None when it is undefined."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(matrix):
        return None
    return float(
        silhouette_score(
            matrix,
            labels,
            sample_size=min(len(matrix), SILHOUETTE_SAMPLE),
            random_state=random_state,
        )
    )


def choose_k(
    matrix: np.ndarray, candidates: tuple[int, ...], limit: int, settings: Settings
) -> tuple[int, dict[str, Any]]:
    """Pick k from ``candidates`` by silhouette on a seeded sample."""
    rng = np.random.default_rng(settings.random_state)
    sample = matrix
    if len(matrix) > 20_000:
        sample = matrix[rng.choice(len(matrix), 20_000, replace=False)]
    scores = {}
    for k in sorted({min(c, limit) for c in candidates if c >= 2}):
        if k >= len(sample):
            continue
        labels = fit_kmeans(sample, k, settings.random_state).labels_
        scores[k] = silhouette(sample, labels, settings.random_state)
    valid = {k: s for k, s in scores.items() if s is not None}
    if not valid:
        return max(1, min(limit, 20)), {
            "candidates": scores,
            "why": "no k could be scored",
        }
    best = max(valid, key=lambda k: (valid[k], -k))
    why = (
        f"k={best} had the best silhouette ({valid[best]:.3f}) "
        f"on {len(sample)} students"
    )
    return best, {"candidates": scores, "why": why}


def resolve_k(
    matrix: np.ndarray, settings: Settings
) -> tuple[int, int, dict[str, Any]]:
    """The k to fit: ``settings.n_clusters``, or chosen when it is ``"auto"``.

    k never exceeds the number of distinct rows of ``matrix``; a reduction
    is logged as a warning.

    Returns
    -------
    k : int
    distinct : int
        Number of distinct rows (student profiles).
    choice : dict
        Candidates and the reason for the choice when ``"auto"``; else empty.
    """
    distinct = count_distinct_rows(matrix)
    if settings.n_clusters == "auto":
        k, choice = choose_k(matrix, settings.auto_k_range, distinct, settings)
        logger.info("chose %s", choice["why"])
        return k, distinct, choice
    requested = int(settings.n_clusters)
    k = min(requested, distinct)
    if k < requested:
        logger.warning(
            "k=%d reduced to %d because only %d students (%d distinct profiles)",
            requested,
            k,
            len(matrix),
            distinct,
        )
    return k, distinct, {}


def fit_clusters(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Cluster the run's students and keep the assignments and the model.

    k is ``settings.n_clusters`` (``"auto"`` picks it by silhouette), reduced
    to the number of distinct student profiles when there are fewer; the
    reduction is logged. Writes ``clusters/ds=<date>/assignments.parquet``
    (student_id, cluster_id) and ``models/ds=<date>/kmeans.joblib``.
    """
    import joblib

    started = time.perf_counter()
    students, matrix = feature_matrix(run, settings)
    if len(students) == 0:
        raise ValueError("no students with usable progress to cluster")
    k, distinct, choice = resolve_k(matrix, settings)
    requested = None if settings.n_clusters == "auto" else int(settings.n_clusters)
    minibatch = len(matrix) > settings.minibatch_above
    model = fit_kmeans(matrix, k, settings.random_state, minibatch)
    labels = model.labels_.astype(np.int32)
    score = silhouette(matrix, labels, settings.random_state)
    assignments = pa.table(
        {
            "student_id": students,
            "cluster_id": pa.array(labels),
        }
    )
    assign_path = run.partition("clusters") / "assignments.parquet"
    pq.write_table(assignments, assign_path)
    model_path = run.partition("models") / "kmeans.joblib"
    joblib.dump(model, model_path)
    sizes = np.bincount(labels, minlength=k)
    logger.info(
        "clustered %d students into k=%d (inertia %.2f, %s iterations, silhouette %s)",
        len(students),
        k,
        model.inertia_,
        getattr(model, "n_iter_", "?"),
        "n/a" if score is None else f"{score:.3f}",
    )
    summary = {
        "students": len(students),
        "features": matrix.shape[1],
        "distinct_profiles": distinct,
        "n_clusters_requested": settings.n_clusters if requested is None else requested,
        "n_clusters": k,
        "estimator": type(model).__name__,
        "inertia": float(model.inertia_),
        "iterations": int(getattr(model, "n_iter_", 0)),
        "silhouette": score,
        "cluster_sizes": sizes.tolist(),
        "k_choice": choice,
        "assignments_path": str(assign_path),
        "model_path": str(model_path),
        "seconds": round(time.perf_counter() - started, 3),
    }
    run.write_summary("cluster", summary)
    return summary


def assignments_path(run: RunContext) -> Path:
    """Path of a run's cluster assignments."""
    return run.partition("clusters") / "assignments.parquet"
