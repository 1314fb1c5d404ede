"""The validated inputs, stored once as integer codes for every model step.

The validate step writes three tables per run date:

``clean/courses/ds=<date>/courses.parquet``
    The kept catalogue in file order: ``course_id``, ``title``,
    ``categories`` (normalised labels joined by the separator) and
    ``row_number``.
``clean/students/ds=<date>/students.parquet``
    ``student_id``: every student with a kept progress row, sorted; a
    student's code is its position.
``clean/progress/ds=<date>/progress.parquet``
    One kept row per (student, course): ``student`` and ``course`` (int32
    codes; a course code is the position of its id among the kept course
    ids, sorted), ``progress`` (fraction 0-1), ``timestamp`` when the source
    declares one, and the source ``row_number``.

Text ids are stored once and each progress row carries two small integers,
so the features, recommend and evaluate steps read twenty million rows in
well under a second instead of hashing the ids again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recs.context import RunContext


@dataclass(frozen=True, kw_only=True)
class Encoded:
    """Progress rows as integer codes, the shared input of every model step.

    Attributes
    ----------
    student_ids : pyarrow.Array of str
        Sorted distinct student ids; a student code is a position here.
    courses : numpy.ndarray of str
        Sorted distinct course ids; a course code is a position here.
    student, course : numpy.ndarray of int32
        Codes of each progress row.
    progress : numpy.ndarray of float64
        Progress of each row as a fraction 0-1.
    """

    student_ids: pa.Array
    courses: np.ndarray
    student: np.ndarray
    course: np.ndarray
    progress: np.ndarray

    @cached_property
    def students(self) -> np.ndarray:
        """``student_ids`` as NumPy text, made on first use (the features
        step writes the Arrow ids as they are and never needs it)."""
        return self.student_ids.to_numpy(zero_copy_only=False).astype(str)

    @property
    def n_students(self) -> int:
        return len(self.student_ids)

    @property
    def n_courses(self) -> int:
        return len(self.courses)


class CleanPaths(NamedTuple):
    """Where a run's validated tables live."""

    courses: Path
    students: Path
    progress: Path


def clean_paths(run: RunContext) -> CleanPaths:
    """Paths of a run's validated courses, students and progress."""
    return CleanPaths(
        run.partition("clean", "courses") / "courses.parquet",
        run.partition("clean", "students") / "students.parquet",
        run.partition("clean", "progress") / "progress.parquet",
    )


COUNT_SLICE = 1 << 20


def count_codes(codes: np.ndarray, minlength: int) -> np.ndarray:
    """``np.bincount`` of integer codes, a slice at a time.

    ``np.bincount`` first copies int32 codes to int64; on twenty million
    rows that is a 160 MB temporary, where slices of a million reuse one
    small buffer.
    """
    counts = np.zeros(minlength, np.int64)
    for start in range(0, len(codes), COUNT_SLICE):
        counts += np.bincount(codes[start : start + COUNT_SLICE], minlength=minlength)
    return counts


def sorted_ids(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Distinct non-null ids in byte order, the order codes number them in."""
    distinct = pc.unique(ids).drop_null()
    return distinct.take(pc.array_sort_indices(distinct))


def write_clean(
    run: RunContext, courses: pa.Table, students: pa.Array, progress: pa.Table
) -> CleanPaths:
    """Write the validated tables (see the module docstring for their shapes)."""
    paths = clean_paths(run)
    pq.write_table(courses, paths.courses)
    pq.write_table(pa.table({"student_id": students}), paths.students)
    # Read whole by three steps, never filtered: no statistics. Student codes
    # and row numbers mostly grow by small steps, which delta encoding packs
    # into a few bits; courses and progress take few distinct values, which
    # dictionaries hold (for 1M students: 45 MB, read in 0.08 s, where a
    # dictionary of courses alone gave 80 MB and 0.2 s).
    deltas = [c for c in ("student", "row_number") if c in progress.column_names]
    pq.write_table(
        progress,
        paths.progress,
        use_dictionary=["course", "progress"],
        column_encoding=dict.fromkeys(deltas, "DELTA_BINARY_PACKED"),
        write_statistics=False,
    )
    return paths


def read_courses(run: RunContext) -> pd.DataFrame:
    """A run's validated catalogue: course_id, title and categories."""
    return pq.read_table(
        clean_paths(run).courses, columns=["course_id", "title", "categories"]
    ).to_pandas()


def read_encoded(run: RunContext) -> tuple[pd.DataFrame, Encoded]:
    """A run's validated catalogue and its progress rows as codes."""
    paths = clean_paths(run)
    courses = read_courses(run)
    students = pq.read_table(paths.students).column("student_id").combine_chunks()
    codes = read_numpy(
        paths.progress,
        {"student": np.int32, "course": np.int32, "progress": np.float64},
    )
    course_ids = sorted_ids(pa.array(courses["course_id"], pa.string()))
    return courses, Encoded(
        student_ids=students,
        courses=course_ids.to_numpy(zero_copy_only=False).astype(str),
        **codes,
    )


def read_numpy(path: Path, dtypes: dict[str, type]) -> dict[str, np.ndarray]:
    """Null-free columns of a Parquet file, each as one NumPy array.

    Row groups are decoded on two threads, each copied into its place in
    arrays allocated once: reading the whole table and then joining its
    chunks touched twice the memory, and fresh memory is the larger part
    of the cost of reading twenty million rows.
    """
    metadata = pq.ParquetFile(path).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    out = {name: np.empty(starts[-1], dtype) for name, dtype in dtypes.items()}

    def read_group(index: int) -> None:
        # A reader of its own per call: a ParquetFile is not for sharing
        # between threads.
        group = pq.ParquetFile(path).read_row_group(
            index, columns=list(dtypes), use_threads=False
        )
        for name, array in out.items():
            at = starts[index]
            for chunk in group.column(name).chunks:
                array[at : at + len(chunk)] = chunk.to_numpy()
                at += len(chunk)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(read_group, range(len(sizes))))
    return out


def read_progress_frame(run: RunContext) -> pd.DataFrame:
    """A run's validated progress with its ids as text, for people and tests."""
    paths = clean_paths(run)
    courses = read_courses(run)
    students = pq.read_table(paths.students).column("student_id").combine_chunks()
    progress = pq.read_table(paths.progress)
    course_ids = sorted_ids(pa.array(courses["course_id"], pa.string()))
    columns = {
        "student_id": students.take(progress.column("student")),
        "course_id": course_ids.take(progress.column("course")),
    }
    for name in progress.column_names:
        if name not in ("student", "course"):
            columns[name] = progress.column(name)
    return pa.table(columns).to_pandas()


def encode(courses: pd.DataFrame, progress: pd.DataFrame) -> Encoded:
    """Encode frames of validated courses and progress (text ids) as codes.

    The pipeline reads codes that validate wrote (:func:`read_encoded`);
    this is for frames built in memory, e.g. by tests or benchmarks.
    """
    course_ids = np.sort(courses["course_id"].to_numpy(dtype=object)).astype(str)
    student_codes, student_ids = pd.factorize(progress["student_id"], sort=True)
    course_codes = pd.Index(course_ids).get_indexer(progress["course_id"])
    if (course_codes < 0).any():
        unknown = progress["course_id"][course_codes < 0].iloc[0]
        raise ValueError(f"progress refers to course {unknown!r} missing from courses")
    return Encoded(
        student_ids=pa.array(np.asarray(student_ids, dtype=str), pa.string()),
        courses=course_ids,
        student=student_codes.astype(np.int32),
        course=course_codes.astype(np.int32),
        progress=progress["progress"].to_numpy(dtype=np.float64),
    )
