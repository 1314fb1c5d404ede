"""Measure recommendation quality offline on a holdout, and gate publishing on it."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recs.clean import Encoded, clean_paths, read_encoded
from recs.context import RunContext
from recs.errors import QualityGateError
from recs.settings import Settings

logger = logging.getLogger(__name__)

K = 10
METHODS = ("clusters", "popularity", "cf")
METRICS = (
    "precision_at_10",
    "recall_at_10",
    "ndcg_at_10",
    "hit_rate_at_10",
    "coverage",
)
CF_COMPONENTS = 50
MAX_EVAL_STUDENTS = 100_000
MAX_TRAIN_STUDENTS = 200_000
SCORE_CELLS = 20_000_000


@dataclass(frozen=True)
class Truth:
    """The hidden mastered courses of the evaluated students.

    Attributes
    ----------
    students : numpy.ndarray of int
        Codes of the evaluated students, ascending; row ``i`` of every
        recommendation matrix belongs to ``students[i]``.
    student, course : numpy.ndarray of int
        One entry per hidden (student code, course code), sorted by student.
    """

    students: np.ndarray
    student: np.ndarray
    course: np.ndarray

    @property
    def n_students(self) -> int:
        return len(self.students)


def holdout_split(
    data: Encoded, settings: Settings, timestamps: np.ndarray | None = None
) -> tuple[Encoded, Truth]:
    """Hide part of the mastered courses of students with enough of them.

    Students with at least ``settings.min_mastered_for_eval`` mastered
    courses (progress above ``settings.mastery_threshold``) are evaluated;
    when there are more than ``MAX_EVAL_STUDENTS`` of them a seeded sample
    is. Each loses ``settings.holdout_share`` of its mastered courses
    (rounded down, at least one): a seeded random choice, or the most recent
    ones when ``timestamps`` are given (ties and missing times broken at
    random). Hidden rows are removed from the training data entirely.

    Parameters
    ----------
    data : Encoded
        All progress rows.
    settings : Settings
        Threshold, share, minimum and ``random_state``.
    timestamps : numpy.ndarray of float, optional
        Last activity of each row (any increasing number; NaN when unknown).

    Returns
    -------
    train : Encoded
        Same students and courses (same codes), without the hidden rows.
    truth : Truth
        The hidden rows of the evaluated students.
    """
    if not 0 < settings.holdout_share < 1:
        raise ValueError(
            f"holdout_share must be in (0, 1), got {settings.holdout_share}"
        )
    if timestamps is not None and len(timestamps) != len(data.student):
        raise ValueError(
            f"timestamps has {len(timestamps)} entries, expected one per progress "
            f"row ({len(data.student)})"
        )
    rng = np.random.default_rng(settings.random_state)
    mastered = np.flatnonzero(data.progress > settings.mastery_threshold)
    counts = np.bincount(data.student[mastered], minlength=data.n_students)
    eligible = np.flatnonzero(counts >= settings.min_mastered_for_eval)
    if len(eligible) > MAX_EVAL_STUDENTS:
        eligible = np.sort(rng.choice(eligible, MAX_EVAL_STUDENTS, replace=False))
    is_eligible = np.zeros(data.n_students, dtype=bool)
    is_eligible[eligible] = True
    rows = mastered[is_eligible[data.student[mastered]]]

    student = data.student[rows]
    tiebreak = rng.random(len(rows))
    recency = np.zeros(len(rows))
    if timestamps is not None:
        recency = -np.nan_to_num(
            np.asarray(timestamps, dtype=np.float64)[rows], nan=-np.inf
        )
    order = np.lexsort((tiebreak, recency, student))
    rows, student = rows[order], student[order]
    starts = np.searchsorted(student, eligible)
    position = np.arange(len(rows)) - starts[np.searchsorted(eligible, student)]
    n_hide = np.maximum(
        1, np.floor(counts * settings.holdout_share + 1e-9).astype(np.int64)
    )
    hidden_rows = rows[position < n_hide[student]]

    keep = np.ones(len(data.student), dtype=bool)
    keep[hidden_rows] = False
    train = Encoded(
        student_ids=data.student_ids,
        courses=data.courses,
        student=data.student[keep],
        course=data.course[keep],
        progress=data.progress[keep],
    )
    hidden_rows = hidden_rows[
        np.lexsort((data.course[hidden_rows], data.student[hidden_rows]))
    ]
    truth = Truth(
        students=eligible.astype(np.int64),
        student=data.student[hidden_rows].astype(np.int64),
        course=data.course[hidden_rows].astype(np.int64),
    )
    return train, truth


def hit_matrix(recommended: np.ndarray, truth: Truth) -> np.ndarray:
    """Whether each recommended course is among its student's hidden courses.

    Parameters
    ----------
    recommended : numpy.ndarray of int, shape (n_evaluated, k)
        Course codes, best first; ``-1`` pads a short list.
    truth : Truth
        Row ``i`` of ``recommended`` belongs to ``truth.students[i]``.

    Returns
    -------
    numpy.ndarray of bool, shape (n_evaluated, k)
    """
    if len(recommended) != truth.n_students:
        raise ValueError(
            f"recommended has {len(recommended)} rows, expected one per evaluated "
            f"student ({truth.n_students})"
        )
    width = int(max(recommended.max(initial=-1), truth.course.max(initial=-1))) + 1
    truth_row = np.searchsorted(truth.students, truth.student)
    keys = np.sort(truth_row * width + truth.course)
    rec_keys = np.arange(len(recommended))[:, None] * width + recommended
    if len(keys) == 0:
        return np.zeros(recommended.shape, dtype=bool)
    found = np.minimum(np.searchsorted(keys, rec_keys), len(keys) - 1)
    return (keys[found] == rec_keys) & (recommended >= 0)


def relevant_counts(truth: Truth) -> np.ndarray:
    """Number of hidden courses of each evaluated student."""
    return np.bincount(
        np.searchsorted(truth.students, truth.student), minlength=truth.n_students
    )


def precision_at_k(hits: np.ndarray, k: int = K) -> float:
    """Mean share of the k slots that hold a hidden course (short lists count k)."""
    return float(np.mean(hits[:, :k].sum(axis=1) / k))


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int = K) -> float:
    """Mean share of each student's hidden courses found in the first k."""
    _check_relevant(n_relevant)
    return float(np.mean(hits[:, :k].sum(axis=1) / n_relevant))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int = K) -> float:
    """Mean NDCG at k with binary relevance.

    DCG sums ``1 / log2(rank + 1)`` over the hits; the ideal DCG puts
    ``min(n_relevant, k)`` hits in the first ranks.
    """
    _check_relevant(n_relevant)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discount[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_relevant, k)]
    return float(np.mean(dcg / ideal))


def hit_rate_at_k(hits: np.ndarray, k: int = K) -> float:
    """Share of students with at least one hidden course in their first k."""
    return float(np.mean(hits[:, :k].any(axis=1)))


def catalogue_coverage(recommended: np.ndarray, n_courses: int) -> float:
    """Distinct courses recommended to anyone, over the catalogue size."""
    if n_courses < 1:
        raise ValueError(f"n_courses must be >= 1, got {n_courses}")
    return float(len(np.unique(recommended[recommended >= 0])) / n_courses)


def score_lists(
    recommended: np.ndarray, truth: Truth, n_courses: int
) -> dict[str, float | None]:
    """Every metric at 10 of one method's lists; None when nobody is evaluated."""
    if truth.n_students == 0:
        return dict.fromkeys(METRICS)
    hits = hit_matrix(recommended, truth)
    n_relevant = relevant_counts(truth)
    return {
        "precision_at_10": precision_at_k(hits),
        "recall_at_10": recall_at_k(hits, n_relevant),
        "ndcg_at_10": ndcg_at_k(hits, n_relevant),
        "hit_rate_at_10": hit_rate_at_k(hits),
        "coverage": catalogue_coverage(recommended, n_courses),
    }


def _check_relevant(n_relevant: np.ndarray) -> None:
    if (n_relevant < 1).any():
        raise ValueError(
            f"every evaluated student needs a hidden course; "
            f"{int((n_relevant < 1).sum())} have none"
        )


def recommend_clusters(
    train: Encoded,
    courses: pd.DataFrame,
    students: np.ndarray,
    settings: Settings,
    population: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Top-10 lists of the product's recommender, built as the pipeline builds it.

    Features, k and the ranking come from the same functions the pipeline's
    features, cluster and recommend steps call, on the training rows only.
    ``population`` is the number of students the cluster step fits (default:
    those of ``train``); it picks the estimator, so that an evaluation on a
    sample of a large population measures mini-batch k-means when the
    pipeline uses it.

    Returns
    -------
    recommended : numpy.ndarray of int, shape (len(students), 10)
    details : dict
        k, how it was chosen, and the number of features.
    """
    from recs.cluster import fit_kmeans, resolve_k, stack_features
    from recs.features import student_features
    from recs.recommend import rank_for_clusters

    means, _, factors = student_features(train, courses, settings)
    matrix = stack_features(means, factors, settings.category_weight)
    k, distinct, choice = resolve_k(matrix, settings)
    population = train.n_students if population is None else population
    minibatch = population > settings.minibatch_above
    model = fit_kmeans(matrix, k, settings.random_state, minibatch)
    ranked = rank_for_clusters(
        train, model.labels_.astype(np.int32), settings.mastery_threshold, K
    )
    lists = np.full((train.n_students, K), -1, dtype=np.int64)
    lists[ranked.student, ranked.rank.astype(np.int64) - 1] = ranked.course
    details = {
        "n_clusters": k,
        "distinct_profiles": distinct,
        "k_choice": choice,
        "features": matrix.shape[1],
        "estimator": type(model).__name__,
    }
    return lists[students], details


def recommend_popular(
    train: Encoded, students: np.ndarray, settings: Settings
) -> np.ndarray:
    """Top-10 lists by global mastery popularity, without mastered courses."""
    from recs.recommend import mastered_mask, popularity_order

    order, _ = popularity_order(train, mastered_mask(train, settings.mastery_threshold))
    score = np.empty(train.n_courses)
    score[order] = -np.arange(train.n_courses, dtype=np.float64)
    return _top_k(
        train,
        students,
        settings,
        lambda block: np.broadcast_to(score, (len(block), train.n_courses)),
    )


def recommend_cf(
    train: Encoded, students: np.ndarray, settings: Settings
) -> np.ndarray:
    """Top-10 lists from a truncated SVD of the student x course progress matrix.

    A course's score is the reconstructed progress (about ``CF_COMPONENTS``
    factors); the student's mastered courses are left out.
    """
    from sklearn.decomposition import TruncatedSVD

    from recs.features import (
        GRAM_MAX_COURSES,
        progress_matrix,
        top_right_singular_vectors,
    )

    n_components = min(CF_COMPONENTS, train.n_courses - 1, train.n_students - 1)
    if n_components < 1:
        return recommend_popular(train, students, settings)
    matrix = progress_matrix(train)
    if train.n_courses <= GRAM_MAX_COURSES:
        # Exact components in one pass; only the evaluated rows are projected.
        components = top_right_singular_vectors(matrix, n_components)
        return _top_k(
            train,
            students,
            settings,
            lambda block: (matrix[block] @ components.T) @ components,
        )
    svd = TruncatedSVD(n_components=n_components, random_state=settings.random_state)
    weights = svd.fit_transform(matrix)
    return _top_k(
        train, students, settings, lambda block: weights[block] @ svd.components_
    )


def _top_k(
    train: Encoded,
    students: np.ndarray,
    settings: Settings,
    scores_for: Any,
) -> np.ndarray:
    """Best 10 courses by score per student, mastered ones excluded (chunked)."""
    from scipy import sparse

    mastered = train.progress > settings.mastery_threshold
    taken = sparse.csr_matrix(
        (
            np.ones(int(mastered.sum()), dtype=np.int8),
            (train.student[mastered], train.course[mastered]),
        ),
        shape=(train.n_students, train.n_courses),
    )
    out = np.full((len(students), K), -1, dtype=np.int64)
    take = min(K, train.n_courses)
    chunk = max(1, SCORE_CELLS // max(train.n_courses, 1))
    for start in range(0, len(students), chunk):
        block = students[start : start + chunk]
        scores = np.array(scores_for(block), dtype=np.float64)
        rows, cols = taken[block].nonzero()
        scores[rows, cols] = -np.inf
        if take < train.n_courses:
            top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        else:
            top = np.broadcast_to(np.arange(take), (len(block), take))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        out[start : start + len(block), :take] = np.where(
            np.isfinite(top_scores), top, -1
        )
    return out


def sample_students(
    data: Encoded,
    timestamps: np.ndarray | None,
    random_state: int,
    limit: int | None = None,
) -> tuple[Encoded, np.ndarray | None]:
    """Keep a seeded sample of ``limit`` students with all their rows.

    ``limit`` defaults to :data:`MAX_TRAIN_STUDENTS`.

    The evaluation rebuilds features and clusters from its training rows;
    above ``limit`` students it does so on a sample, whose figures estimate
    the whole population's at a fraction of the cost.
    """
    limit = MAX_TRAIN_STUDENTS if limit is None else limit
    if data.n_students <= limit:
        return data, timestamps
    rng = np.random.default_rng(random_state)
    keep = np.zeros(data.n_students, dtype=bool)
    keep[rng.choice(data.n_students, limit, replace=False)] = True
    rows = keep[data.student]
    new_code = np.cumsum(keep) - 1
    logger.info("evaluating on a sample of %d of %d students", limit, data.n_students)
    sampled = Encoded(
        student_ids=data.student_ids.filter(pa.array(keep)),
        courses=data.courses,
        student=new_code[data.student[rows]].astype(data.student.dtype),
        course=data.course[rows],
        progress=data.progress[rows],
    )
    return sampled, None if timestamps is None else timestamps[rows]


def evaluate_data(
    courses: pd.DataFrame,
    data: Encoded,
    settings: Settings,
    timestamps: np.ndarray | None = None,
) -> dict[str, Any]:
    """Hold out, recommend with every method from the training rows, and score.

    Parameters
    ----------
    courses : pandas.DataFrame
        The validated catalogue.
    data : Encoded
        The validated progress rows, as :func:`recs.clean.read_encoded`
        returns them.
    settings : Settings
        The product's configuration; the ``clusters`` method uses it as is.
    timestamps : numpy.ndarray, optional
        Last activity of each progress row; the holdout then hides the most
        recent mastered courses.

    Returns
    -------
    dict
        ``clusters``, ``popularity`` and ``cf`` metrics (each with
        ``students_evaluated``), ``students_evaluated`` and ``details``.
    """
    started = time.perf_counter()
    n_students = data.n_students
    data, timestamps = sample_students(data, timestamps, settings.random_state)
    train, truth = holdout_split(data, settings, timestamps)
    logger.info(
        "holding out %d mastered courses of %d students (%s split)",
        len(truth.course),
        truth.n_students,
        "time" if timestamps is not None else "random",
    )
    details: dict[str, Any] = {
        "students": n_students,
        "students_sampled": data.n_students,
        "courses": data.n_courses,
        "hidden_rows": len(truth.course),
        "split": "most recent" if timestamps is not None else "random",
        "seconds": {},
    }
    report: dict[str, Any] = {}
    for method in METHODS:
        method_started = time.perf_counter()
        if truth.n_students == 0:
            lists = np.zeros((0, K), dtype=np.int64)
        elif method == "clusters":
            lists, details["clusters"] = recommend_clusters(
                train, courses, truth.students, settings, population=n_students
            )
        elif method == "popularity":
            lists = recommend_popular(train, truth.students, settings)
        else:
            lists = recommend_cf(train, truth.students, settings)
        report[method] = {
            **score_lists(lists, truth, data.n_courses),
            "students_evaluated": truth.n_students,
        }
        details["seconds"][method] = round(time.perf_counter() - method_started, 3)
        logger.info(
            "%s: recall@10 %s, NDCG@10 %s over %d students",
            method,
            _fmt(report[method]["recall_at_10"]),
            _fmt(report[method]["ndcg_at_10"]),
            truth.n_students,
        )
    report["students_evaluated"] = truth.n_students
    details["seconds"]["total"] = round(time.perf_counter() - started, 3)
    report["details"] = details
    return report


def apply_gate(
    report: dict[str, Any], previous_recall: float | None, settings: Settings
) -> dict[str, Any]:
    """Decide the quality gate from the evaluation figures.

    The gate fails when the clusters' recall@10 is below popularity's, or
    below the last published run's by more than ``settings.max_recall_drop``
    (relative). With fewer than ``settings.min_eval_students`` evaluated
    students it is skipped, unless a run with figures is published: then it
    fails, since that run would be replaced by one nobody measured. It is
    overridden (recorded, not blocking) when ``settings.quality_gate`` is
    False.

    Returns
    -------
    dict
        ``status`` (passed, failed, skipped or overridden), ``why``, and the
        figures compared.
    """
    n = report["students_evaluated"]
    recall = report["clusters"]["recall_at_10"]
    baseline = report["popularity"]["recall_at_10"]
    figures = {
        "recall_at_10": recall,
        "popularity_recall_at_10": baseline,
        "previous_recall_at_10": previous_recall,
        "max_recall_drop": settings.max_recall_drop,
    }
    if n < settings.min_eval_students:
        few = (
            f"only {n} students have at least {settings.min_mastered_for_eval} "
            f"mastered courses to evaluate, fewer than min_eval_students="
            f"{settings.min_eval_students}"
        )
        if previous_recall is None:
            why = f"{few}; figures recorded, not gated"
            return {"status": "skipped", "why": why, **figures}
        # The published run could be measured and this one cannot: a sign
        # that the data or the settings changed (a wrong progress scale, say,
        # leaves nobody with a mastered course), not a run to publish blind.
        why = (
            f"{few}, where the published run scored recall@10 "
            f"{previous_recall:.4f}: check the progress format and scale, or "
            "turn the gate off for this run if the change is intended"
        )
        if not settings.quality_gate:
            return {
                "status": "overridden",
                "why": f"quality gate turned off for this run: {why}",
                "would_fail": True,
                **figures,
            }
        return {"status": "failed", "why": why, **figures}
    failures = []
    if recall < baseline:
        failures.append(
            f"clusters recall@10 {recall:.4f} is below popularity's {baseline:.4f}"
        )
    if previous_recall is not None:
        floor = previous_recall * (1 - settings.max_recall_drop)
        if recall < floor:
            failures.append(
                f"clusters recall@10 {recall:.4f} dropped more than "
                f"{settings.max_recall_drop:.0%} from the last published run's "
                f"{previous_recall:.4f} (floor {floor:.4f})"
            )
    checked = (
        f"clusters recall@10 {recall:.4f} vs popularity {baseline:.4f}, "
        "last published "
        + ("n/a" if previous_recall is None else f"{previous_recall:.4f}")
        + f", over {n} students"
    )
    if not settings.quality_gate:
        outcome = "; ".join(failures) if failures else "the checks passed"
        why = f"quality gate turned off for this run: {outcome} ({checked})"
        return {
            "status": "overridden",
            "why": why,
            "would_fail": bool(failures),
            **figures,
        }
    if failures:
        why = "; ".join(failures) + f" ({n} students evaluated)"
        return {"status": "failed", "why": why, **figures}
    return {"status": "passed", "why": checked, **figures}


def last_published_recall(settings: Settings) -> float | None:
    """recall@10 of the run currently published in the warehouse, if any."""
    from recs import warehouse
    from recs.pipeline import warehouse_engine

    with warehouse_engine(settings) as engine:
        previous = warehouse.last_published_metrics(engine)
    if not previous:
        return None
    value = (previous.get("metrics") or {}).get(
        "recall_at_10", previous.get("recall_at_10")
    )
    return None if value is None else float(value)


def evaluate_run(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Evaluate a run's recommender offline and apply the quality gate.

    Reads the run's validated data, scores the ``clusters`` method (the
    product as configured) against ``popularity`` and ``cf`` on a holdout,
    writes ``evaluation/ds=<date>/report.json`` and the ``evaluate``
    summary, then applies :func:`apply_gate`.

    Raises
    ------
    QualityGateError
        The gate failed; the summary with the figures is written first.
    """
    started = time.perf_counter()
    courses, data = read_encoded(run)
    timestamps = read_timestamps(run)
    report = evaluate_data(courses, data, settings, timestamps)
    report_path = run.partition("evaluation") / "report.json"
    report_path.write_text(json.dumps(report, indent=2))
    logger.info("wrote the evaluation report to %s", report_path)

    gate = apply_gate(report, last_published_recall(settings), settings)
    summary = {
        "metrics": report["clusters"],
        "baselines": {m: report[m] for m in METHODS if m != "clusters"},
        "gate": gate,
        "students_evaluated": report["students_evaluated"],
        "n_clusters": report["details"].get("clusters", {}).get("n_clusters"),
        "report_path": str(report_path),
        "seconds": round(time.perf_counter() - started, 3),
    }
    run.write_summary("evaluate", summary)
    if gate["status"] == "failed":
        raise QualityGateError(f"quality gate failed: {gate['why']}", metrics=summary)
    worrying = gate["status"] == "skipped" or gate.get("would_fail", False)
    log = logger.warning if worrying else logger.info
    log("quality gate %s: %s", gate["status"], gate["why"])
    return summary


def read_timestamps(run: RunContext) -> np.ndarray | None:
    """Last activity of each clean progress row as a number, if the run has it."""
    progress_path = clean_paths(run).progress
    if "timestamp" not in pq.read_schema(progress_path).names:
        return None
    values = pq.read_table(progress_path, columns=["timestamp"]).column(0).to_pandas()
    return to_number(values)


def to_number(values: pd.Series) -> np.ndarray | None:
    """Timestamps (numbers, datetimes or ISO text) as float, NaN when unknown.

    The column is read as numbers when most of its values are numbers, else
    as ISO dates and times. Values that cannot be read are logged (they
    count as the oldest in the split); when none can be, the split falls
    back to random, with a warning, and None is returned.
    """
    given = int(values.notna().sum())
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values if values.dt.tz is not None else values.dt.tz_localize("UTC")
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        if given and numbers.notna().sum() * 2 >= given:
            return _known_times(numbers.to_numpy(np.float64, na_value=np.nan), values)
        stamps = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return _known_times(seconds.to_numpy(np.float64, na_value=np.nan), values)


def _known_times(out: np.ndarray, values: pd.Series) -> np.ndarray | None:
    unread = values.notna().to_numpy() & ~np.isfinite(out)
    if not np.isfinite(out).any():
        logger.warning(
            "no timestamp could be read (e.g. %r): the holdout hides a random "
            "share instead of the most recent mastered courses",
            values.dropna().iloc[0] if values.notna().any() else None,
        )
        return None
    if unread.any():
        logger.warning(
            "%d of %d timestamps could not be read (e.g. %r); those rows count "
            "as the oldest in the holdout split",
            int(unread.sum()), len(values), values[unread].iloc[0],
        )
    return out


def evaluate_sources(
    settings: Settings, ds: str | None = None, report_path: Path | None = None
) -> dict[str, Any]:
    """Extract and validate the configured sources, then evaluate (``recs evaluate``).

    No gate is applied and nothing is published.

    Parameters
    ----------
    settings : Settings
        Sources and the product's configuration.
    ds : str, optional
        Run date whose partitions are written (default today, UTC).
    report_path : pathlib.Path, optional
        Where to write the JSON report as well.

    Returns
    -------
    dict
        The report of :func:`evaluate_data`.
    """
    from recs.extract import extract
    from recs.pipeline import use_arrow_memory_pool
    from recs.validate import validate

    use_arrow_memory_pool()
    run = RunContext.create(settings.data_root, ds)
    extract(run, settings)
    validate(run, settings)
    courses, data = read_encoded(run)
    report = evaluate_data(courses, data, settings, read_timestamps(run))
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2))
        logger.info("wrote the evaluation report to %s", report_path)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report's metrics as a plain text table, one method per line."""
    header = (
        "method",
        "precision@10",
        "recall@10",
        "NDCG@10",
        "hit rate@10",
        "coverage",
    )
    lines = ["{:<12}{:>14}{:>11}{:>9}{:>13}{:>10}".format(*header)]
    for method in METHODS:
        values = [_fmt(report[method][name]) for name in METRICS]
        lines.append("{:<12}{:>14}{:>11}{:>9}{:>13}{:>10}".format(method, *values))
    lines.append(f"students evaluated: {report['students_evaluated']}")
    k = (report.get("details") or {}).get("clusters", {}).get("n_clusters")
    if k is not None:
        lines.append(f"clusters: k={k}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
