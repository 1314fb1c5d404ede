"""Recommend to each student what peers of the same cluster mastered."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recs.clean import Encoded, read_encoded
from recs.context import RunContext
from recs.features import course_categories
from recs.settings import Settings

logger = logging.getLogger(__name__)

DENSE_CELLS = 1 << 29
STRATEGY_CLUSTER = "cluster"
STRATEGY_FALLBACK = "fallback"
OUTPUT_TABLES = (
    "student_recommendations",
    "student_clusters",
    "cluster_categories",
    "popular_courses",
)


@dataclass(frozen=True)
class Ranked:
    """Top-N recommendations as parallel arrays of codes, ordered by student, rank."""

    student: np.ndarray
    rank: np.ndarray
    course: np.ndarray
    score: np.ndarray
    from_cluster: np.ndarray
    peers: np.ndarray


def mastered_mask(data: Encoded, threshold: float) -> np.ndarray:
    """Rows whose progress is strictly above the mastery threshold."""
    return data.progress > threshold


def popularity_order(
    data: Encoded, mastered: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Courses from most to least popular, and each course's mastery count.

    Popularity is the number of students who mastered a course; ties go to
    the number of students who took it, then to the course id.
    """
    mastered_count = np.bincount(data.course[mastered], minlength=data.n_courses)
    taken = np.bincount(data.course, minlength=data.n_courses)
    order = np.lexsort((np.arange(data.n_courses), -taken, -mastered_count))
    return order.astype(np.int32), mastered_count


def rank_for_clusters(
    data: Encoded,
    labels: np.ndarray,
    threshold: float,
    top_n: int,
) -> Ranked:
    """Rank courses for every student from the mastery of their cluster.

    For each cluster, courses are ordered by the share of the cluster that
    mastered them (ties: popularity, then course id); every course no peer
    mastered follows in popularity order as a fallback. Each student gets
    the first ``top_n`` courses of that list that they have not mastered.

    Parameters
    ----------
    data : Encoded
        Progress rows as codes.
    labels : numpy.ndarray of int
        Cluster of each student code.
    threshold : float
        Progress strictly above it counts as mastered.
    top_n : int
        Length of each student's list (shorter only when the catalogue runs
        out of courses the student has not mastered).
    """
    if len(labels) != data.n_students:
        raise ValueError(
            f"labels has {len(labels)} entries, expected one per student "
            f"({data.n_students})"
        )
    mastered = mastered_mask(data, threshold)
    n_courses = data.n_courses
    pop_order, _ = popularity_order(data, mastered)
    pop_rank = np.empty(n_courses, dtype=np.int64)
    pop_rank[pop_order] = np.arange(n_courses)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    cluster_size = np.bincount(labels, minlength=n_clusters)
    peer_counts = np.bincount(
        labels[data.student[mastered]].astype(np.int64) * n_courses
        + data.course[mastered],
        minlength=n_clusters * n_courses,
    ).reshape(n_clusters, n_courses)
    # One full ordering of the catalogue per cluster: mastered by peers first.
    cluster_order = np.lexsort(
        (np.broadcast_to(pop_rank, peer_counts.shape), -peer_counts), axis=1
    ).astype(np.int32)
    own_mastered = np.bincount(data.student[mastered], minlength=data.n_students)
    length = np.minimum(n_courses, top_n + own_mastered).astype(np.int64)
    entry_student = np.repeat(np.arange(data.n_students, dtype=np.int64), length)
    position = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    entry_cluster = labels[entry_student]
    entry_course = cluster_order[entry_cluster, position]
    keep = ~_has_mastered(data, mastered, entry_student, entry_course)
    entry_student, entry_course, entry_cluster = (
        entry_student[keep],
        entry_course[keep],
        entry_cluster[keep],
    )
    starts = np.searchsorted(entry_student, np.arange(data.n_students))
    rank = np.arange(len(entry_student)) - starts[entry_student] + 1
    within = rank <= top_n
    student, course, cluster, rank = (
        entry_student[within],
        entry_course[within],
        entry_cluster[within],
        rank[within],
    )
    peers = peer_counts[cluster, course]
    from_cluster = peers > 0
    share = peers / cluster_size[cluster]
    mastered_count = np.bincount(data.course[mastered], minlength=n_courses)
    popular_share = mastered_count[course] / max(data.n_students, 1)
    return Ranked(
        student=student.astype(np.int32),
        rank=rank.astype(np.int16),
        course=course.astype(np.int32),
        score=np.where(from_cluster, share, popular_share).astype(np.float64),
        from_cluster=from_cluster,
        peers=peers.astype(np.int32),
    )


def _has_mastered(
    data: Encoded,
    mastered: np.ndarray,
    student: np.ndarray,
    course: np.ndarray,
) -> np.ndarray:
    """Whether each (student, course) entry is a course the student mastered."""
    n_courses = data.n_courses
    if data.n_students * n_courses <= DENSE_CELLS:
        # A student x course bitmap: one lookup per entry, no sorting.
        table = np.zeros(data.n_students * n_courses, dtype=bool)
        table[data.student[mastered].astype(np.int64) * n_courses
              + data.course[mastered]] = True
        return table[student * n_courses + course]
    keys = data.student[mastered].astype(np.int64) * n_courses + data.course[mastered]
    keys.sort()
    if len(keys) == 0:
        return np.zeros(len(student), dtype=bool)
    entry_keys = student * n_courses + course
    found = np.searchsorted(keys, entry_keys)
    return (found < len(keys)) & (keys[np.minimum(found, len(keys) - 1)] == entry_keys)


def popular_list(data: Encoded, threshold: float, top_n: int) -> pd.DataFrame:
    """The fallback list for students with no usable progress (cold start)."""
    mastered = mastered_mask(data, threshold)
    order, mastered_count = popularity_order(data, mastered)
    order = order[:top_n]
    n = max(data.n_students, 1)
    reasons = [
        f"popular: mastered by {int(c)} of {n} learners"
        if c
        else "in the catalogue; no learner has mastered it yet"
        for c in mastered_count[order]
    ]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1, dtype=np.int32),
            "course_id": data.courses[order],
            "score": mastered_count[order] / n,
            "reason": reasons,
        }
    )


def cluster_categories(
    data: Encoded,
    labels: np.ndarray,
    courses: pd.DataFrame,
    threshold: float,
    separator: str = "|",
) -> pd.DataFrame:
    """Categories of the courses each cluster mastered, with their shares.

    ``share`` is the fraction of the cluster's mastered (student, course)
    pairs whose course carries the category; a course in two categories
    counts toward both, so shares of a cluster may add up to more than 1.
    """
    mastered = mastered_mask(data, threshold)
    pair_course, pair_category, category_labels = course_categories(
        courses, data.courses, separator
    )
    n_categories = len(category_labels)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    cluster_of_row = labels[data.student[mastered]]
    totals = np.bincount(cluster_of_row, minlength=n_clusters)
    per_course = np.bincount(
        cluster_of_row.astype(np.int64) * data.n_courses + data.course[mastered],
        minlength=n_clusters * data.n_courses,
    ).reshape(n_clusters, data.n_courses)
    counts = np.zeros((n_clusters, n_categories), dtype=np.int64)
    np.add.at(counts.T, pair_category, per_course[:, pair_course].T)
    cluster_idx, category_idx = np.nonzero(counts)
    frame = pd.DataFrame(
        {
            "cluster_id": cluster_idx.astype(np.int32),
            "category": np.asarray(category_labels, dtype=object)[category_idx],
            "share": counts[cluster_idx, category_idx] / totals[cluster_idx],
            "mastered": counts[cluster_idx, category_idx].astype(np.int64),
        }
    )
    return frame.sort_values(
        ["cluster_id", "share", "category"],
        ascending=[True, False, True],
        ignore_index=True,
    )


def read_labels(run: RunContext, students: np.ndarray) -> np.ndarray:
    """Cluster label of each student code, from the run's assignments."""
    table = pq.read_table(run.partition("clusters") / "assignments.parquet")
    ids = table.column("student_id").to_numpy(zero_copy_only=False).astype(str)
    position = pd.Index(ids).get_indexer(students)
    if (position < 0).any():
        raise ValueError("cluster assignments do not cover every student with progress")
    return table.column("cluster_id").to_numpy()[position].astype(np.int32)


def _reasons(ranked: Ranked, labels: np.ndarray, sizes: np.ndarray) -> pa.Array:
    """Why each course is recommended, dictionary-encoded (one text per case)."""
    cluster = labels[ranked.student].astype(np.int64)
    peers = ranked.peers.astype(np.int64)
    fallback = (~ranked.from_cluster).astype(np.int64)
    span = int(peers.max(initial=0)) + 1
    key = (cluster * span + peers) * 2 + fallback
    if len(key) and int(key.max()) < max(4 * len(key), 1 << 20):
        # Dense key space: number the keys present without sorting them.
        present = np.zeros(int(key.max()) + 1, dtype=bool)
        present[key] = True
        unique = np.flatnonzero(present)
        number = np.cumsum(present, dtype=np.int64) - 1
        inverse = number[key]
    else:
        unique, inverse = np.unique(key, return_inverse=True)
    texts = [
        "popular with learners overall"
        if u % 2
        else f"mastered by {(u // 2) % span} of {sizes[u // 2 // span]} learners "
        "in your cluster"
        for u in unique.tolist()
    ]
    return pa.DictionaryArray.from_arrays(
        pa.array(inverse.ravel().astype(np.int32)), pa.array(texts, pa.string())
    )


def recommend(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Write a run's recommendations, cluster categories and popular list.

    Outputs, under ``recommendations/ds=<date>/``: ``student_recommendations``,
    ``student_clusters``, ``cluster_categories`` and ``popular_courses``
    Parquet files, shaped like the warehouse tables of the same names.
    """
    started = time.perf_counter()
    courses, data = read_encoded(run)
    labels = read_labels(run, data.students)
    ranked = rank_for_clusters(data, labels, settings.mastery_threshold, settings.top_n)
    sizes = np.bincount(labels)
    out_dir = run.partition("recommendations")
    student_ids = data.student_ids
    # Columns with few distinct values stay dictionary-encoded: no text is
    # copied per row, and Parquet stores them as the dictionaries they are.
    recommendations = pa.table(
        {
            "student_id": student_ids.take(ranked.student),
            "rank": pa.array(ranked.rank.astype(np.int32)),
            "course_id": pa.DictionaryArray.from_arrays(
                pa.array(ranked.course.astype(np.int32)),
                pa.array(data.courses, pa.string()),
            ),
            "score": pa.array(ranked.score),
            "cluster_id": pa.array(labels[ranked.student]),
            "strategy": pa.DictionaryArray.from_arrays(
                pa.array(ranked.from_cluster.astype(np.int8)),
                pa.array([STRATEGY_FALLBACK, STRATEGY_CLUSTER]),
            ),
            "reason": _reasons(ranked, labels, sizes),
        }
    )
    paths = {name: out_dir / f"{name}.parquet" for name in OUTPUT_TABLES}
    # Statistics on student_id only (the file is sorted by it); on the other
    # columns they cost a third of the write and serve no filter.
    pq.write_table(
        recommendations,
        paths["student_recommendations"],
        write_statistics=["student_id"],
    )
    pq.write_table(
        pa.table(
            {
                "student_id": student_ids,
                "cluster_id": pa.array(labels),
            }
        ),
        paths["student_clusters"],
    )
    categories = cluster_categories(
        data, labels, courses, settings.mastery_threshold, settings.category_separator
    )
    pq.write_table(
        pa.Table.from_pandas(categories, preserve_index=False),
        paths["cluster_categories"],
    )
    popular = popular_list(data, settings.mastery_threshold, settings.top_n)
    pq.write_table(
        pa.Table.from_pandas(popular, preserve_index=False), paths["popular_courses"]
    )
    n_cluster_rows = int(ranked.from_cluster.sum())
    logger.info(
        "wrote %d recommendations for %d students to %s "
        "(%d from clusters, %d fallback)",
        len(ranked.student),
        data.n_students,
        out_dir,
        n_cluster_rows,
        len(ranked.student) - n_cluster_rows,
    )
    summary = {
        "students": data.n_students,
        "recommendations": len(ranked.student),
        "cluster_rows": n_cluster_rows,
        "fallback_rows": len(ranked.student) - n_cluster_rows,
        "students_on_fallback_only": int(
            np.count_nonzero(
                np.bincount(
                    ranked.student[ranked.from_cluster], minlength=data.n_students
                )
                == 0
            )
        ),
        "paths": {name: str(path) for name, path in paths.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    run.write_summary("recommend", summary)
    return summary
