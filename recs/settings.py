"""Run settings: one object, read once from ``RECS_*`` environment variables."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).parent / "sample_data"
PROGRESS_FORMATS = ("percent", "number")
ENV_PREFIX = "RECS_"
_SAMPLE_COURSES = str(SAMPLE_DIR / "courses.csv")
_SAMPLE_PROGRESS = str(SAMPLE_DIR / "students.csv")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, with defaults that run the bundled sample.

    Every field can be set from the environment as ``RECS_<FIELD>`` (upper
    case); tuples are comma-separated there. ``Settings.from_env(**overrides)``
    applies keyword overrides on top, which is how the CLI and the DAG's params
    reach the library.
    """

    # Source: files (CSV or Parquet, local path or fsspec URL) or SQL queries.
    # Neither given: the bundled sample.
    courses: str | None = None
    progress: str | None = None
    source_url: str | None = None
    courses_query: str | None = None
    progress_query: str | None = None

    # Source column names, mapped onto the product's own names.
    course_id_column: str = "courseId"
    title_column: str = "title"
    categories_column: str = "categories"
    student_id_column: str = "studentId"
    progress_course_id_column: str = "courseId"
    progress_column: str = "progress"
    timestamp_column: str | None = None

    # How values are written in the source.
    csv_delimiter: str = ","
    category_separator: str = "|"
    no_category_values: tuple[str, ...] = ()
    null_values: tuple[str, ...] = ("", "N/A", "NA", "n/a", "null", "NULL", "None")
    progress_format: str = "percent"
    progress_scale: float = 100.0

    # Where results go.
    data_dir: str = "var"
    warehouse_url: str = "sqlite:///var/warehouse.db"
    keep_runs: int = 3

    # Model and recommendation knobs.
    n_clusters: int | str = 20
    random_state: int = 0
    mastery_threshold: float = 0.9
    top_n: int = 10
    svd_components: int = 32
    svd_min_students: int = 100
    category_weight: float = 0.25
    minibatch_above: int = 200_000
    auto_k_range: tuple[int, ...] = (5, 10, 15, 20, 25, 30)

    # Gates.
    max_bad_share: float = 0.05
    quality_gate: bool = True
    max_recall_drop: float = 0.2
    min_eval_students: int = 30
    holdout_share: float = 0.2
    min_mastered_for_eval: int = 5

    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.progress_format not in PROGRESS_FORMATS:
            raise ValueError(
                f"progress_format must be one of {PROGRESS_FORMATS}, "
                f"got {self.progress_format!r}"
            )
        if not self.progress_scale > 0:
            raise ValueError(f"progress_scale must be > 0, got {self.progress_scale}")
        if not 0 <= self.max_bad_share <= 1:
            raise ValueError(
                f"max_bad_share must be in [0, 1], got {self.max_bad_share}"
            )
        if not 0 < self.mastery_threshold < 1:
            raise ValueError(
                f"mastery_threshold must be in (0, 1), got {self.mastery_threshold}"
            )
        if len(self.csv_delimiter) != 1 or self.csv_delimiter in "\"\r\n":
            raise ValueError(
                "csv_delimiter must be one character other than a quote or a "
                f"line break, got {self.csv_delimiter!r}"
            )
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n}")
        if self.n_clusters != "auto" and int(self.n_clusters) < 1:
            raise ValueError(
                f"n_clusters must be >= 1 or 'auto', got {self.n_clusters!r}"
            )
        self._check_sources()
        if self.keep_runs < 2:
            raise ValueError(
                f"keep_runs must be >= 2 to allow rollback, got {self.keep_runs}"
            )

    def _check_sources(self) -> None:
        """Refuse half a source: a run on mismatched inputs would look fine."""
        queries = (self.courses_query, self.progress_query)
        if self.source_url:
            if not all(queries):
                raise ValueError(
                    "a SQL source (source_url) needs both courses_query and "
                    "progress_query"
                )
            return
        if any(queries):
            raise ValueError(
                "courses_query/progress_query need source_url, the database to "
                "run them on"
            )
        given = (self.courses is not None, self.progress is not None)
        if given == (False, False):
            object.__setattr__(self, "courses", _SAMPLE_COURSES)
            object.__setattr__(self, "progress", _SAMPLE_PROGRESS)
        elif given != (True, True):
            named, missing = (
                ("courses", "progress") if given[0] else ("progress", "courses")
            )
            raise ValueError(
                f"{named} file given without a {missing} file; give both "
                "(only with neither does the run use the bundled sample)"
            )

    @property
    def uses_sample(self) -> bool:
        """True when the run reads the bundled sample data."""
        return not self.source_url and (self.courses, self.progress) == (
            _SAMPLE_COURSES,
            _SAMPLE_PROGRESS,
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``RECS_*`` variables, then apply ``overrides``.

        Overrides whose value is ``None`` are ignored, so optional CLI flags
        can be passed straight through.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        for name in names:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _parse(name, raw)
        _warn_unknown_variables(env, names)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in {f.name for f in dataclasses.fields(cls)}:
                raise TypeError(f"unknown setting {name!r}")
            values[name] = _coerce(name, value)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (``None`` values ignored)."""
        changes = {k: _coerce(k, v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    @property
    def data_root(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    @property
    def uses_sql_source(self) -> bool:
        """True when courses and progress come from SQL queries."""
        return self.source_url is not None

    def public_dict(self) -> dict[str, Any]:
        """Settings as a JSON-ready dict, with credentials masked."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra"
        }
        if self.source_url:
            out["courses"] = out["progress"] = None
        for key in ("warehouse_url", "source_url"):
            if out[key]:
                out[key] = mask_url(out[key])
        return out


def mask_url(url: str) -> str:
    """Hide the password of a database URL (for logs and summaries)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a database URL; nothing to hide
        return url


_INT_FIELDS = {
    "keep_runs",
    "random_state",
    "top_n",
    "svd_components",
    "minibatch_above",
    "svd_min_students",
    "min_eval_students",
    "min_mastered_for_eval",
}
_FLOAT_FIELDS = {
    "progress_scale",
    "mastery_threshold",
    "max_bad_share",
    "max_recall_drop",
    "holdout_share",
    "category_weight",
}
_TUPLE_FIELDS = {"no_category_values", "null_values", "auto_k_range"}
_BOOL_FIELDS = {"quality_gate"}
_TAB_NAMES = {"tab", "\\t"}  # ways to write a tab delimiter on a command line
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# RECS_* variables that name no setting but are read elsewhere.
_OTHER_VARIABLES = {"RECS_TEST_POSTGRES_URL", "RECS_BENCH_PG_URL", "RECS_SHARED_DIR"}


def _warn_unknown_variables(env: Mapping[str, str], names: list[str]) -> None:
    """Log each ``RECS_*`` variable that names no setting (a typo is ignored)."""
    known = {ENV_PREFIX + name.upper() for name in names} | _OTHER_VARIABLES
    for variable in sorted(v for v in env if v.startswith(ENV_PREFIX)):
        if variable not in known:
            close = difflib.get_close_matches(variable, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("ignoring %s: no such setting%s", variable, hint)


def _coerce(name: str, value: Any) -> Any:
    if isinstance(value, str):
        return _parse(name, value)
    if name == "auto_k_range":
        return tuple(int(v) for v in value)
    if name in _TUPLE_FIELDS:
        return tuple(value)
    return value


def _parse(name: str, raw: str) -> Any:
    if name == "csv_delimiter" and raw in _TAB_NAMES:
        return "\t"
    try:
        if name == "n_clusters":
            return "auto" if raw.strip().lower() == "auto" else int(raw)
        if name in _INT_FIELDS:
            return int(raw)
        if name in _FLOAT_FIELDS:
            return float(raw)
        if name == "auto_k_range":
            return tuple(int(v) for v in raw.split(",") if v.strip())
        if name in _TUPLE_FIELDS:
            return tuple(v.strip() for v in raw.split(","))
        if name in _BOOL_FIELDS:
            word = raw.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(
                    f"expected one of {sorted(_TRUE)} or {sorted(_FALSE)}"
                )
            return word in _TRUE
    except ValueError as err:
        raise ValueError(f"setting {name}: cannot read {raw!r}: {err}") from None
    if name in {
        "source_url",
        "courses_query",
        "progress_query",
        "timestamp_column",
        "courses",
        "progress",
    }:
        return raw or None
    return raw
