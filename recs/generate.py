"""Generate synthetic course catalogues and progress exports for tests and demos.

The files have exactly the source layout the pipeline reads:

- ``courses.csv``: ``courseId,title,categories`` with categories joined by
  ``|`` (``AWS|Certification|Cloud``);
- ``students.csv``: ``studentId,courseId,progress`` with progress as a
  percent string (``85%``, ``92.5%``).

The data has the structure the product looks for. Every student belongs to
one latent interest group (see :func:`latent_groups`); a group prefers a few
categories, takes courses in them far more often than others (Zipf-like
popularity inside the interests, plus some exploration of the whole
catalogue) and finishes them more often. About a quarter of the rows are
mastered (progress above 90%); some rows are exactly 90% and 100%.

The category names include the cases the notebook's substring matching got
wrong: names contained in other names (``Go`` in ``Google Cloud``, ``AI`` in
``AI Ethics``, ``Data`` in ``Data Science``, ``Java`` in ``JavaScript``,
``Cloud`` in ``Google Cloud``) and regex metacharacters (``C++``, ``C#``,
``.NET``).

Run ``python -m recs.generate --students N --out DIR`` to write the files.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

logger = logging.getLogger(__name__)

# Latent interest groups: a name and the categories its students prefer.
THEMES: dict[str, tuple[str, ...]] = {
    "aws": ("AWS", "Cloud", "Certification", "DevOps"),
    "azure": ("Azure", "Cloud", ".NET", "C#"),
    "google": ("Google Cloud", "Go", "Kubernetes", "Cloud"),
    "data": ("Data", "SQL", "Python", "Excel"),
    "ml": ("Machine Learning", "AI", "Python", "Data Science"),
    "ai-policy": ("AI Ethics", "AI", "Leadership", "Project Management"),
    "security": ("Security", "Networking", "Linux", "Certification"),
    "web": ("Web", "JavaScript", "Java", "Design"),
    "systems": ("C++", "Linux", "Go", "C#"),
    "platform": ("DevOps", "Kubernetes", "Linux", "Cloud"),
}
CATEGORIES: tuple[str, ...] = tuple(
    sorted({name for names in THEMES.values() for name in names})
)
TITLE_TEMPLATES: tuple[str, ...] = (
    "Introduction to {a}",
    "{a} Fundamentals",
    "{a} Essentials",
    "Hands-on {a}",
    "{a} in Practice",
    "Advanced {a}",
    "Mastering {a}",
    "{a} for Beginners",
    "{a} Deep Dive",
    "{a} Bootcamp",
    "{a} with {b}",
    "{a} for {b} Teams",
    "From {b} to {a}",
)
CERTIFICATION_TEMPLATES: tuple[str, ...] = (
    "{a} Certification Exam Prep",
    "Certified {a} Practitioner",
    "{a} Certification Practice Tests",
)
COURSE_SCHEMA = pa.schema(
    [("courseId", pa.int64()), ("title", pa.string()), ("categories", pa.string())]
)
STUDENT_SCHEMA = pa.schema(
    [("studentId", pa.int64()), ("courseId", pa.int64()), ("progress", pa.string())]
)
BLOCK_STUDENTS = 1 << 15  # students per random stream; fixes the output per seed
KEYS_PER_SLICE = 1 << 22  # student x course keys held at once while sampling
EXPLORATION = 0.15  # share of course choices made outside the interests
ZIPF_EXPONENT = 1.0
WORKERS = 2  # threads drawing blocks; the output does not depend on it
COUNT_SHAPE = 4.0  # gamma shape of courses per student; lower = more spread
WRITE_OPTIONS = pacsv.WriteOptions(
    quoting_style="none", quoting_header="none", batch_size=1 << 16
)
# Progress in tenths of a percent, 0..1000, rendered once: "85%", "92.5%".
PERCENT_TEXT = pa.array(
    [f"{t // 10}%" if t % 10 == 0 else f"{t / 10:.1f}%" for t in range(1001)]
)


@dataclass(frozen=True)
class Catalogue:
    """Courses with their categories and how much each group wants them."""

    course_ids: np.ndarray
    titles: list[str]
    categories: list[str]
    log_choice: np.ndarray  # (groups, courses): log probability of choosing
    fit: np.ndarray  # (groups, courses): share of categories the group likes


def generate(
    n_students: int,
    n_courses: int = 100,
    seed: int = 0,
    *,
    out_dir: Path,
    rows_per_student: float = 20.0,
) -> dict[str, Any]:
    """Write a synthetic ``courses.csv`` and ``students.csv`` into ``out_dir``.

    Parameters
    ----------
    n_students : int
        Number of students (ids ``1..n_students``), at least 1.
    n_courses : int, default=100
        Number of courses (ids ``1..n_courses``), at least 1.
    seed : int, default=0
        Seed of every random choice; the same arguments give the same bytes.
    out_dir : Path
        Directory to write into; created if missing. Existing files of the
        same names are replaced.
    rows_per_student : float, default=20.0
        Mean number of courses per student (Poisson, at least 1, at most
        ``n_courses``).

    Returns
    -------
    dict
        ``courses_path``, ``students_path``, ``courses``, ``students``,
        ``rows``, ``mastered_share`` and ``seconds``.

    Raises
    ------
    ValueError
        If a count is below 1, the seed is negative or ``rows_per_student``
        is not positive.
    """
    _check_arguments(n_students, n_courses, seed, rows_per_student)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalogue = build_catalogue(n_courses, seed)
    courses_path = out_dir / "courses.csv"
    students_path = out_dir / "students.csv"

    course_table = pa.table(
        [catalogue.course_ids, catalogue.titles, catalogue.categories],
        schema=COURSE_SCHEMA,
    )
    pacsv.write_csv(course_table, courses_path, WRITE_OPTIONS)
    logger.info("wrote %d courses to %s", n_courses, courses_path)

    rows = mastered = 0
    with pacsv.CSVWriter(
        students_path, STUDENT_SCHEMA, write_options=WRITE_OPTIONS
    ) as writer:
        for table, block_mastered in _progress_blocks(
            catalogue, n_students, seed, rows_per_student
        ):
            writer.write_table(table)
            rows += table.num_rows
            mastered += block_mastered
    seconds = time.perf_counter() - started
    logger.info(
        "wrote %d progress rows for %d students to %s in %.1f s",
        rows,
        n_students,
        students_path,
        seconds,
    )
    return {
        "courses_path": str(courses_path),
        "students_path": str(students_path),
        "courses": n_courses,
        "students": n_students,
        "rows": rows,
        "mastered_share": round(mastered / rows, 4),
        "seconds": round(seconds, 3),
    }


def latent_groups(n_students: int, seed: int = 0) -> np.ndarray:
    """Return the latent interest group of each student that ``generate`` used.

    This is the ground truth a clustering should recover; the CSV files do
    not contain it.

    Parameters
    ----------
    n_students : int
        Number of students, as passed to :func:`generate`.
    seed : int, default=0
        Seed, as passed to :func:`generate`.

    Returns
    -------
    numpy.ndarray
        Group index (into ``list(THEMES)``) of students ``1..n_students``.
    """
    shares = _group_shares(seed)
    blocks = [
        _block_groups(seed, block, stop - start, shares)
        for block, start, stop in _blocks(n_students)
    ]
    return np.concatenate(blocks) if blocks else np.empty(0, dtype=np.int64)


def build_catalogue(n_courses: int, seed: int = 0) -> Catalogue:
    """Draw the courses, their titles and categories, and group preferences.

    Parameters
    ----------
    n_courses : int
        Number of courses, at least 1.
    seed : int, default=0
        Seed of the draw.

    Returns
    -------
    Catalogue
        Courses ``1..n_courses`` and per-group choice and fit matrices.
    """
    rng = np.random.default_rng([seed, 0])
    themes = list(THEMES.values())
    index = {name: i for i, name in enumerate(CATEGORIES)}
    member = np.zeros((len(themes), len(CATEGORIES)), dtype=bool)
    for g, names in enumerate(themes):
        member[g, [index[name] for name in names]] = True
    has = np.zeros((n_courses, len(CATEGORIES)), dtype=bool)
    titles: list[str] = []
    joined: list[str] = []
    home = rng.integers(len(themes), size=n_courses)
    sizes = rng.choice(4, size=n_courses, p=[0.3, 0.35, 0.25, 0.1]) + 1
    for c in range(n_courses):
        names = _course_categories(rng, themes[home[c]], int(sizes[c]))
        has[c, [index[name] for name in names]] = True
        titles.append(_course_title(rng, names))
        joined.append("|".join(sorted(names)))

    # Zipf popularity over a random ranking of the courses.
    rank = rng.permutation(n_courses) + 1
    popularity = rank.astype(np.float64) ** -ZIPF_EXPONENT
    popularity /= popularity.sum()
    liked = has.astype(np.float64) @ member.T.astype(np.float64)  # (c, g)
    fit = (liked / has.sum(axis=1, keepdims=True)).T
    interest = popularity * fit
    totals = interest.sum(axis=1, keepdims=True)
    interest = np.divide(
        interest, totals, out=np.zeros_like(interest), where=totals > 0
    )
    choice = (1 - EXPLORATION) * interest + EXPLORATION * popularity
    choice[totals[:, 0] == 0] = popularity
    return Catalogue(
        course_ids=np.arange(1, n_courses + 1, dtype=np.int64),
        titles=titles,
        categories=joined,
        log_choice=np.log(choice).astype(np.float32),
        fit=fit.astype(np.float32),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and write the files; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m recs.generate",
        description="Write a synthetic courses.csv and students.csv.",
    )
    parser.add_argument("--students", type=int, required=True)
    parser.add_argument("--courses", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-student", type=float, default=20.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = generate(
            args.students,
            args.courses,
            args.seed,
            out_dir=args.out,
            rows_per_student=args.rows_per_student,
        )
    except ValueError as err:
        parser.error(str(err))
    print(
        f"{summary['rows']} rows for {summary['students']} students and "
        f"{summary['courses']} courses in {summary['seconds']} s "
        f"({summary['mastered_share']:.1%} mastered) -> {args.out}"
    )
    return 0


def _check_arguments(
    n_students: int, n_courses: int, seed: int, rows_per_student: float
) -> None:
    for name, value in (("n_students", n_students), ("n_courses", n_courses)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed!r}")
    if not rows_per_student > 0:
        raise ValueError(f"rows_per_student must be positive, got {rows_per_student!r}")


def _course_categories(
    rng: np.random.Generator, theme: tuple[str, ...], size: int
) -> list[str]:
    """Draw ``size`` distinct categories, mostly from the course's theme."""
    names = [theme[rng.integers(len(theme))]]
    while len(names) < size:
        pool = theme if rng.random() < 0.8 else CATEGORIES
        name = pool[rng.integers(len(pool))]
        if name not in names:
            names.append(name)
    return names


def _course_title(rng: np.random.Generator, names: list[str]) -> str:
    subjects = [name for name in names if name != "Certification"] or names
    a = subjects[0]
    b = subjects[1] if len(subjects) > 1 else None
    if "Certification" in names and a != "Certification":
        templates = CERTIFICATION_TEMPLATES
    else:
        templates = tuple(t for t in TITLE_TEMPLATES if b or "{b}" not in t)
    return templates[rng.integers(len(templates))].format(a=a, b=b)


def _group_shares(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    return rng.dirichlet(np.full(len(THEMES), 8.0))


def _blocks(n_students: int) -> Iterator[tuple[int, int, int]]:
    for block, start in enumerate(range(0, n_students, BLOCK_STUDENTS)):
        yield block, start, min(start + BLOCK_STUDENTS, n_students)


def _block_groups(seed: int, block: int, size: int, shares: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([seed, 2, block])
    return rng.choice(len(shares), size=size, p=shares)


def _progress_blocks(
    catalogue: Catalogue, n_students: int, seed: int, rows_per_student: float
) -> Iterator[tuple[pa.Table, int]]:
    """Yield each block's progress rows and mastered count, in student order.

    Blocks have their own random streams, so they are drawn on a few threads
    (numpy and Arrow release the GIL) without changing the output.
    """
    shares = _group_shares(seed)
    pending: deque[Future[list[tuple[pa.Table, int]]]] = deque()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for block, start, stop in _blocks(n_students):
            pending.append(
                pool.submit(
                    _progress_block,
                    catalogue, seed, block, start, stop, shares, rows_per_student,
                )
            )
            if len(pending) > 2 * WORKERS:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _progress_block(
    catalogue: Catalogue,
    seed: int,
    block: int,
    start: int,
    stop: int,
    shares: np.ndarray,
    rows_per_student: float,
) -> list[tuple[pa.Table, int]]:
    """Draw the progress rows of students ``start + 1 .. stop``."""
    n_courses = len(catalogue.course_ids)
    step = max(1, KEYS_PER_SLICE // n_courses)
    groups = _block_groups(seed, block, stop - start, shares)
    rng = np.random.default_rng([seed, 3, block])
    # Gamma-Poisson: mean rows_per_student, a long tail of keen students.
    extra = rng.gamma(
        COUNT_SHAPE, max(rows_per_student - 1, 0) / COUNT_SHAPE, size=stop - start
    )
    counts = np.minimum(rng.poisson(extra) + 1, n_courses)
    diligence = rng.normal(0.0, 0.7, size=stop - start).astype(np.float32)
    tables = []
    for lo in range(0, stop - start, step):
        hi = min(lo + step, stop - start)
        courses = _choose_courses(rng, catalogue, groups[lo:hi], counts[lo:hi])
        owner = np.repeat(np.arange(lo, hi), counts[lo:hi])
        tenths = _draw_progress(
            rng, catalogue.fit[groups[owner], courses], diligence[owner]
        )
        table = pa.table(
            [
                pa.array(owner + start + 1, pa.int64()),
                pa.array(catalogue.course_ids[courses]),
                PERCENT_TEXT.take(pa.array(tenths)),
            ],
            schema=STUDENT_SCHEMA,
        )
        tables.append((table, int(np.count_nonzero(tenths > 900))))
    return tables


def _choose_courses(
    rng: np.random.Generator,
    catalogue: Catalogue,
    groups: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
    """Draw ``counts[i]`` distinct courses per student, by group preference.

    Gumbel top-k: adding Gumbel noise to log probabilities and keeping the k
    largest keys samples k items without replacement.
    """
    keys = rng.gumbel(size=(len(groups), catalogue.log_choice.shape[1])).astype(
        np.float32
    )
    keys += catalogue.log_choice[groups]
    order = np.argsort(-keys, axis=1)
    keep = np.arange(keys.shape[1]) < counts[:, None]
    return order[keep]


def _draw_progress(
    rng: np.random.Generator, fit: np.ndarray, diligence: np.ndarray
) -> np.ndarray:
    """Draw progress in tenths of a percent (0..1000) from interest fit."""
    n = len(fit)
    logit = -2.9 + 2.8 * fit + diligence
    mastered = rng.random(n, dtype=np.float32) < 1 / (1 + np.exp(-logit))
    decimal = rng.random(n, dtype=np.float32) < 0.12
    started = rng.beta(0.7 + 1.5 * fit, 1.3).astype(np.float32)
    tenths = np.where(
        decimal,
        np.floor(started * 900),
        np.floor(started * 90) * 10,
    )
    tenths[rng.random(n, dtype=np.float32) < 0.03] = 900
    top = np.where(
        decimal,
        rng.integers(901, 1000, size=n),
        rng.integers(91, 100, size=n) * 10,
    )
    top[rng.random(n, dtype=np.float32) < 0.45] = 1000
    return np.where(mastered, top, tenths).astype(np.int32)


if __name__ == "__main__":
    raise SystemExit(main())
