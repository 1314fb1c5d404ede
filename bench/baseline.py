"""Reproduce the origin notebook's features and cluster step, for benchmarks only.

This is a reference implementation of what the proof-of-concept notebook did
(see ``ORIGIN.md``), kept so benchmarks can compare the product against it on
speed and on the values it gets right. It is not part of the ``recs``
package and must not be used to make recommendations.

Method, as the notebook had it:

1. drop courses with no categories;
2. for each category name (from splitting the category strings on ``|``),
   select the courses whose category string *contains* the name, average
   each student's progress (as a fraction 0-1) over those courses with a
   groupby, round to two places and outer-merge the column onto the table
   built so far;
3. replace missing averages with 0.

Unlike the notebook, each column is named when it is built (the notebook
renamed columns after the merges, which could shift names against data), and
the match uses ``regex=False``: with the default regex match ``C++`` raises
(``ArrowInvalid`` under pandas 3) and ``.NET`` matches any character followed
by ``NET``.

Substring matching is wrong
---------------------------
A category's column also averages the courses of every *other* category
whose name contains it. A name cannot match across the ``|`` separator, so
the wrong columns are exactly the categories that are substrings of another
category name (:func:`substring_categories` lists them). In the vocabulary
of ``recs.generate`` these are:

- ``Go``, matched by ``Google Cloud``;
- ``Cloud``, matched by ``Google Cloud``;
- ``AI``, matched by ``AI Ethics``;
- ``Data``, matched by ``Data Science``;
- ``Java``, matched by ``JavaScript``.

Every other generated category (including ``C++``, ``C#`` and ``.NET``) gets
the right average here, up to the two-place rounding, so a benchmark should
compare feature values only on :func:`exact_categories`, and pass
``decimals=None`` or allow an absolute difference of 0.005.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd

logger = logging.getLogger(__name__)

MASTERED = 0.9


def baseline_features(
    courses: pd.DataFrame, progress: pd.DataFrame, decimals: int | None = 2
) -> pd.DataFrame:
    """Build the notebook's student x category table of mean progress.

    Parameters
    ----------
    courses : pandas.DataFrame
        Columns ``courseId``, ``title``, ``categories`` (names joined by ``|``).
    progress : pandas.DataFrame
        Columns ``studentId``, ``courseId``, ``progress`` (``"85%"`` strings).
    decimals : int or None, default=2
        Round each average to this many places, as the notebook did;
        ``None`` keeps full precision.

    Returns
    -------
    pandas.DataFrame
        One row per student (index ``studentId``, sorted) with a progress
        average in 0-1 somewhere in a categorised course; one column per
        category, in sorted order; 0 where the student took no matching
        course.

    Raises
    ------
    ValueError
        If a required column is missing.
    """
    _require(courses, ("courseId", "categories"), "courses")
    _require(progress, ("studentId", "courseId", "progress"), "progress")
    courses = courses.dropna(subset=["categories"])
    courses = courses[courses["categories"].str.strip() != ""]
    fractions = progress.assign(progress=_fraction(progress["progress"]))

    table: pd.DataFrame | None = None
    for category in all_categories(courses["categories"]):
        matches = courses["categories"].str.contains(category, regex=False)
        rows = fractions[fractions["courseId"].isin(courses.loc[matches, "courseId"])]
        column = rows.groupby("studentId")["progress"].mean().rename(category)
        if decimals is not None:
            column = column.round(decimals)
        frame = column.reset_index()
        table = (
            frame
            if table is None
            else table.merge(frame, on="studentId", how="outer")
        )
    if table is None:
        return pd.DataFrame(index=pd.Index([], name="studentId"))
    table = table.fillna(0).set_index("studentId").sort_index()
    logger.debug("baseline features: %d students x %d categories", *table.shape)
    return table


def baseline_cluster_mastered(
    progress: pd.DataFrame, labels: pd.Series
) -> dict[object, set[object]]:
    """List the courses each cluster's students mastered, as the notebook did.

    Parameters
    ----------
    progress : pandas.DataFrame
        Columns ``studentId``, ``courseId``, ``progress`` (``"85%"`` strings).
    labels : pandas.Series
        Cluster label per student, indexed by ``studentId``.

    Returns
    -------
    dict
        Cluster label to the set of course ids with progress above 90% among
        its students (empty when none).
    """
    _require(progress, ("studentId", "courseId", "progress"), "progress")
    fractions = _fraction(progress["progress"])
    mastered: dict[object, set[object]] = {}
    for label in pd.unique(labels):
        students = labels.index[labels == label]
        rows = progress["studentId"].isin(students) & (fractions > MASTERED)
        mastered[label] = set(progress.loc[rows, "courseId"])
    return mastered


def baseline_cluster_categories(
    courses: pd.DataFrame, mastered: dict[object, set[object]]
) -> dict[object, set[str]]:
    """Map each cluster's mastered courses to their categories."""
    _require(courses, ("courseId", "categories"), "courses")
    names = courses.dropna(subset=["categories"]).set_index("courseId")["categories"]
    return {
        label: {
            name
            for course in course_ids
            if course in names.index
            for name in str(names[course]).split("|")
            if name
        }
        for label, course_ids in mastered.items()
    }


def all_categories(categories: Iterable[str]) -> list[str]:
    """Return the distinct category names of ``|``-joined strings, sorted."""
    return sorted({n for joined in categories for n in str(joined).split("|") if n})


def substring_categories(categories: Iterable[str]) -> dict[str, list[str]]:
    """Return the names the baseline gets wrong and the names that contain them.

    Parameters
    ----------
    categories : iterable of str
        Category names (not ``|``-joined strings).

    Returns
    -------
    dict
        Each name that is a substring of another name, mapped to the sorted
        names that contain it, e.g. ``{"Go": ["Google Cloud"]}``.
    """
    names = sorted(set(categories))
    wrong = {a: [b for b in names if a != b and a in b] for a in names}
    return {a: containers for a, containers in wrong.items() if containers}


def exact_categories(categories: Iterable[str]) -> list[str]:
    """Return the sorted names on which the baseline's averages are right."""
    names = set(categories)
    return sorted(names - substring_categories(names).keys())


def _fraction(progress: pd.Series) -> pd.Series:
    return progress.astype(str).str.rstrip("%").astype(float) / 100


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {missing}, got {list(frame.columns)}"
        )
