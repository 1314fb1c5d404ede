"""Validate the raw snapshot: expectation suites, quarantine and the bad-row gate."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recs.clean import count_codes, sorted_ids, write_clean
from recs.context import RunContext
from recs.errors import ValidationGateError
from recs.extract import malformed_rows, raw_paths, source_columns
from recs.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
PATTERNS = {
    "percent": r"^[0-9]+(?:\.[0-9]+)?[ \t]*%$",
    "number": r"^[0-9]+(?:\.[0-9]+)?$",
}
QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("row_number", pa.int64()),
    ("column", pa.string()),
    ("value", pa.string()),
    ("reason", pa.string()),
    ("run_id", pa.string()),
])
N_EXAMPLES = 3
DEDUP_BITMAP_KEYS = 1 << 30


@dataclass(frozen=True)
class ProgressFormat:
    """The declared progress format: its anchored pattern and its scale."""

    name: str
    pattern: str
    scale: float

    @property
    def unit(self) -> str:
        """Unit suffix used in messages ("%" for percent strings)."""
        return "%" if self.name == "percent" else ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ProgressFormat:
        """Read the format from ``settings`` (percent strings are always 0-100)."""
        percent = settings.progress_format == "percent"
        scale = 100.0 if percent else settings.progress_scale
        return cls(settings.progress_format, PATTERNS[settings.progress_format], scale)


@dataclass(frozen=True)
class ParsedProgress:
    """Per-value verdicts of :func:`parse_progress`; all arrays align with the input."""

    matches: np.ndarray
    value: np.ndarray
    in_range: np.ndarray
    missing: np.ndarray

    def problems(self) -> np.ndarray:
        """Reason gist per value: "", "missing", "format" or "range"."""
        return np.select(
            [self.missing, ~self.matches, ~self.in_range],
            ["missing", "format", "range"],
            default="",
        )


def parse_progress(
    values: pa.Array | list[str | None], fmt: ProgressFormat
) -> ParsedProgress:
    """Parse progress text by the declared format, vectorised.

    Text is converted to a number only after it fully matches ``fmt.pattern``,
    so ``1e2%``, ``nan%`` or ``inf%`` never become numbers.

    Parameters
    ----------
    values : pyarrow.Array or list of str
        Trimmed progress text; nulls are missing values.
    fmt : ProgressFormat
        The declared format.

    Returns
    -------
    ParsedProgress
        ``value`` holds the number in source units (NaN unless the text
        matches); ``in_range`` is True for matching values in ``[0, scale]``.
    """
    text = pc.utf8_trim_whitespace(_as_array(values))
    missing = pc.is_null(text).to_numpy(zero_copy_only=False)
    matches = pc.fill_null(pc.match_substring_regex(text, fmt.pattern), False)
    digits = pc.replace_substring_regex(text, r"[ \t]*%$", "") if fmt.unit else text
    checked = pc.if_else(matches, digits, pa.scalar(None, pa.string()))
    number = pc.cast(checked, pa.float64()).to_numpy(zero_copy_only=False)
    matches_np = matches.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        in_range = matches_np & (number >= 0) & (number <= fmt.scale)
    return ParsedProgress(matches_np, number, in_range, missing)


def normalise_categories(
    values: pa.Array | list[str | None],
    separator: str = "|",
    ignore: tuple[str, ...] = (),
    keep: np.ndarray | None = None,
) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Split, trim and match category lists exactly, ignoring case.

    Parameters
    ----------
    values : pyarrow.Array or list of str
        One category list per course, e.g. ``"AWS | Cloud"``.
    separator : str
        Literal separator (never a regular expression).
    ignore : tuple of str
        Values that mean "no category", compared ignoring case.
    keep : numpy.ndarray of bool, optional
        Courses whose spellings decide the labels (default: all).

    Returns
    -------
    joined : pyarrow.Array
        Per course, its labels joined by ``separator``, each once, in the
        order written; null when the course has no usable category.
    counts : numpy.ndarray
        Number of distinct usable categories per course.
    labels : list of str
        All labels of the kept courses, in first-seen order; a label is the
        first spelling met in file order.
    """
    text = _as_array(values)
    n = len(text)
    lists = pc.split_pattern(pc.fill_null(text, ""), separator)
    parent = pc.list_parent_indices(lists).to_numpy()
    parts = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    keys = pc.utf8_lower(parts)
    ignored = pa.array(sorted({v.strip().lower() for v in ignore}), pa.string())
    usable = pc.and_(pc.not_equal(parts, ""), pc.invert(pc.is_in(keys, ignored)))
    usable_np = usable.to_numpy(zero_copy_only=False)
    parent, parts, keys = parent[usable_np], parts.filter(usable), keys.filter(usable)

    codes = pc.dictionary_encode(keys).indices.to_numpy().astype(np.int64)
    pair = parent.astype(np.int64) * (len(keys) + 1) + codes
    _, first = np.unique(pair, return_index=True)
    once = np.zeros(len(pair), bool)
    once[first] = True
    parent, parts, codes = parent[once], parts.filter(pa.array(once)), codes[once]
    counts = np.bincount(parent, minlength=n)

    keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
    kept_part = keep[parent]
    kept_codes = codes[kept_part]
    uniq, first_at = np.unique(kept_codes, return_index=True)
    order = np.argsort(first_at, kind="stable")
    kept_parts = parts.filter(pa.array(kept_part))
    labels = [kept_parts[int(i)].as_py() for i in first_at[order]]
    label_of = np.full(max(len(codes) and int(codes.max()) + 1, 1), -1, np.int64)
    label_of[uniq[order]] = np.arange(len(uniq))
    label_array = pa.array(labels, pa.string())

    rows = kept_part
    row_labels = label_array.take(pa.array(label_of[codes[rows]]))
    row_counts = np.bincount(parent[rows], minlength=n)
    offsets = np.concatenate([[0], np.cumsum(row_counts)]).astype(np.int32)
    nested = pa.ListArray.from_arrays(pa.array(offsets), row_labels)
    joined = pc.binary_join(nested, separator)
    joined = pc.if_else(pa.array(row_counts > 0), joined, pa.scalar(None, pa.string()))
    return joined, counts, labels


def _as_array(values: pa.Array | pa.ChunkedArray | list[str | None]) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(values, pa.string())


def load_suite(name: str, directory: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    """Read a stored expectation suite (GX 1.x JSON) and check what it holds.

    Raises
    ------
    ValueError
        The file does not describe a suite, or an expectation has no batch.
    """
    path = directory / f"{name}.json"
    data = json.loads(path.read_text())
    expectations = data.get("expectations")
    if data.get("name") != name or not isinstance(expectations, list):
        raise ValueError(f"{path}: not the expectation suite {name!r}")
    for exp in expectations:
        exp.pop("id", None)
        if not (exp.get("meta") or {}).get("batch"):
            raise ValueError(f"{path}: expectation {exp.get('type')} has no meta.batch")
    return data


def validate(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Check the raw snapshot, quarantine bad rows and write the clean inputs.

    Parameters
    ----------
    run : RunContext
        The run whose raw snapshot (see :func:`recs.extract.extract`) is read.
    settings : Settings
        Column names, the declared progress format and ``max_bad_share``.

    Returns
    -------
    dict
        Counts per input, the result of every expectation, the paths of the
        quarantine and of the Data Docs index, and the category labels.

    Raises
    ------
    ValidationGateError
        The bad share of an input exceeds ``settings.max_bad_share`` or no
        usable progress row remains. Quarantine and summary are written first.
    """
    started = time.perf_counter()
    fmt = ProgressFormat.from_settings(settings)
    # Importing Great Expectations and building its context is seconds of
    # Python; reading and encoding the snapshot is Arrow work that releases
    # the GIL. Do both at once.
    with ThreadPoolExecutor(1) as pool:
        checker_ready = pool.submit(_Checker, run)
        courses, course_rejects = _read_raw(run, "courses")
        progress, progress_rejects = _read_raw(run, "progress")
        encoded = _encode_progress(progress)
        parsed = parse_progress(encoded["progress"][1], fmt)
        checker = checker_ready.result()

    course_result = _check_courses(courses, settings, checker)
    progress_result = _check_progress(
        progress, settings, fmt, checker, course_result.kept_ids, encoded, parsed
    )

    paths = write_clean(
        run, course_result.clean, progress_result.students, progress_result.clean
    )
    quarantine = pa.concat_tables([
        _rejects_to_quarantine("courses", course_rejects, run.run_id),
        _with_run_id(course_result.quarantine, run.run_id),
        _rejects_to_quarantine("progress", progress_rejects, run.run_id),
        _with_run_id(progress_result.quarantine, run.run_id),
    ]).cast(QUARANTINE_SCHEMA)
    quarantine_path = run.run_dir / "quarantine.parquet"
    pq.write_table(quarantine, quarantine_path)
    docs = checker.build_docs()

    reports = {
        "courses": _report("courses", courses, course_rejects, course_result),
        "progress": _report("progress", progress, progress_rejects, progress_result),
    }
    summary: dict[str, Any] = {
        "courses": reports["courses"].counts,
        "progress": reports["progress"].counts,
        "expectations": checker.records,
        "data_docs": str(docs),
        "quarantine_path": str(quarantine_path),
        "clean_courses_path": str(paths.courses),
        "clean_students_path": str(paths.students),
        "clean_progress_path": str(paths.progress),
        "categories": course_result.labels,
        "seconds": round(time.perf_counter() - started, 3),
    }
    run.write_summary("validate", summary)
    logger.info(
        "kept %d of %d courses and %d of %d progress rows; quarantined %d rows "
        "to %s",
        course_result.clean.num_rows, reports["courses"].counts["rows"],
        progress_result.clean.num_rows, reports["progress"].counts["rows"],
        quarantine.num_rows, quarantine_path,
    )
    _gate(reports, settings)
    return summary


@dataclass
class _SourceResult:
    clean: pa.Table
    quarantine: pa.Table
    failures: list[dict[str, Any]]
    duplicates: int = 0
    kept_ids: pa.Array | None = None
    labels: list[str] | None = None
    students: pa.Array | None = None


@dataclass
class _Report:
    source: str
    counts: dict[str, Any]
    failures: list[dict[str, Any]]


class _Checker:
    """Runs expectation suites with GX on pandas frames and keeps the results."""

    def __init__(self, run: RunContext) -> None:
        with warnings.catch_warnings():
            # GX 1.24 imports the deprecated sre_constants and sre_parse modules.
            warnings.filterwarnings(
                "ignore",
                r"module 'sre_(constants|parse)' is deprecated",
                DeprecationWarning,
            )
            import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.docs_dir = run.run_dir / "data_docs"
        shutil.rmtree(self.docs_dir, ignore_errors=True)
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            data_docs_sites={
                "run": {
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(self.docs_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                }
            },
        )
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.source = self.context.data_sources.add_pandas("recs")
        self.records: list[dict[str, Any]] = []

    def run(
        self,
        suite: dict[str, Any],
        batch: str,
        frame: Any,
        index_column: str,
        parameters: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Validate ``frame`` against the suite's expectations for ``batch``."""
        expectations = [
            {k: v for k, v in exp.items() if k != "id"}
            for exp in suite["expectations"]
            if exp["meta"]["batch"] == batch
        ]
        name = f"{suite['name']}.{batch}"
        gx_suite = self.gx.ExpectationSuite(name=name, expectations=expectations)
        if len(gx_suite.expectations) != len(expectations):
            raise ValueError(f"suite {name}: GX rejected some expectations")
        gx_suite = self.context.suites.add(gx_suite)
        asset = self.source.add_dataframe_asset(name)
        definition = self.context.validation_definitions.add(
            self.gx.ValidationDefinition(
                name=name,
                data=asset.add_batch_definition_whole_dataframe("all"),
                suite=gx_suite,
            )
        )
        started = time.perf_counter()
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [index_column],
                "return_unexpected_index_query": False,
            },
        )
        outcomes = [r.to_json_dict() for r in result.results]
        logger.debug(
            "GX suite %s on %d rows took %.2f s",
            name, len(frame), time.perf_counter() - started,
        )
        for outcome in outcomes:
            message = _raised_exception(outcome.get("exception_info") or {})
            if message is not None:
                raise RuntimeError(
                    f"suite {name}: {outcome['expectation_config']['type']} could "
                    f"not run: {message}"
                )
        return outcomes

    def record(self, entry: dict[str, Any]) -> None:
        """Keep one expectation's outcome for the summary."""
        self.records.append(entry)

    def build_docs(self) -> Path:
        """Render the Data Docs of every validation run so far."""
        self.context.build_data_docs(site_names=["run"])
        return self.docs_dir / "index.html"


def _raised_exception(info: dict[str, Any]) -> str | None:
    """The message of an exception GX caught, at the top or per metric."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _read_raw(run: RunContext, kind: str) -> tuple[pa.Table, pa.Table]:
    from recs.extract import read_snapshot

    data_path, rejects_path = raw_paths(run, kind)
    return read_snapshot(data_path), pq.read_table(rejects_path)


def _failed_indices(result: dict[str, Any], index_column: str) -> np.ndarray:
    rows = result["result"].get("unexpected_index_list") or []
    return np.array([r[index_column] for r in rows], dtype=np.int64)


def _column_of(result: dict[str, Any]) -> str:
    kwargs = result["expectation_config"]["kwargs"]
    return kwargs.get("column") or ", ".join(kwargs.get("column_list", []))


def _check_courses(
    table: pa.Table, settings: Settings, checker: _Checker
) -> _SourceResult:
    import pandas as pd

    names = source_columns(settings, "courses")
    suite = load_suite("courses")
    ids, cats = table.column("course_id"), table.column("categories")
    row_number = table.column("row_number").to_numpy()
    _, counts, _ = normalise_categories(
        cats.combine_chunks(), settings.category_separator, settings.no_category_values
    )
    frame = pd.DataFrame({
        "course_id": ids.to_pandas(),
        "categories": cats.to_pandas(),
        "category_count": counts.astype(np.int64),
        "row_number": row_number,
    })
    results = checker.run(suite, "rows", frame, "row_number", {})

    failed: dict[str, np.ndarray] = {}
    failures = []
    for result in results:
        column = _column_of(result)
        mask = np.isin(row_number, _failed_indices(result, "row_number"))
        kind = result["expectation_config"]["type"]
        failed[f"{kind}:{column}"] = mask
        source_column = names.get(column) or names["categories"]
        failures.append(
            _failure_entry("courses", result, source_column, mask, row_number,
                           ids if column == "course_id" else cats)
        )
        checker.record(failures[-1]["record"])

    missing_id = failed.get("expect_column_values_to_not_be_null:course_id", 0)
    repeated = failed.get("expect_column_values_to_be_unique:course_id", 0) & (
        frame["course_id"].duplicated(keep="first").to_numpy()
    )
    missing_cats = failed.get("expect_column_values_to_not_be_null:categories", 0)
    no_cats = failed.get("expect_column_values_to_be_between:category_count", 0)
    code = np.select(
        [missing_id, repeated, missing_cats, no_cats], [1, 2, 3, 4], default=0
    )
    ok = code == 0
    joined, _, labels = normalise_categories(
        cats.combine_chunks(), settings.category_separator,
        settings.no_category_values, keep=ok,
    )
    title = (
        table.column("title") if "title" in table.column_names
        else pa.nulls(table.num_rows, pa.string())
    )
    clean = pa.table({
        "course_id": ids, "title": title, "categories": joined,
        "row_number": table.column("row_number"),
    }).filter(pa.array(ok))

    id_col, cat_col = names["course_id"], names["categories"]
    reasons = [
        (1, id_col, ids, "course id is missing", ""),
        (2, id_col, ids, "duplicate course id '", "' (the first row with it is kept)"),
        (3, cat_col, cats, "categories are missing", ""),
        (4, cat_col, cats, "no usable categories in '", "'"),
    ]
    quarantine = _quarantine_rows("courses", code, row_number, reasons)
    return _SourceResult(
        clean=clean, quarantine=quarantine,
        failures=[f["failure"] for f in failures if f["failure"]["rows"]],
        kept_ids=clean.column("course_id").combine_chunks(), labels=labels,
    )


def _failure_entry(
    source: str,
    result: dict[str, Any],
    column: str,
    mask: np.ndarray,
    row_number: np.ndarray,
    values: pa.ChunkedArray,
) -> dict[str, Any]:
    """Turn one GX result into a summary record and a gate failure."""
    positions = np.flatnonzero(mask)[:N_EXAMPLES]
    examples = [
        {"row_number": int(row_number[i]), "value": values[int(i)].as_py()}
        for i in positions
    ]
    kind = result["expectation_config"]["type"]
    rows = int(mask.sum())
    record = {
        "source": source, "expectation": kind, "column": column,
        "checked": len(mask), "failed": rows, "success": bool(result["success"]),
    }
    failure = {
        "source": source, "expectation": kind, "column": column, "rows": rows,
        "examples": examples,
    }
    return {"record": record, "failure": failure}


def _quarantine_rows(
    source: str,
    code: np.ndarray,
    row_number: np.ndarray,
    reasons: list[tuple[Any, ...]],
) -> pa.Table:
    """Build quarantine rows for every non-zero code, one reason each.

    Each entry of ``reasons`` is ``(code, column, values, prefix, suffix)``
    plus optionally the array quoted in the reason (default ``values``).
    """
    parts = []
    for value, column, values, prefix, suffix, *about in reasons:
        mask = pa.array(code == value)
        if not pc.any(mask).as_py():
            continue
        text = values.filter(mask)
        subject = about[0].filter(mask) if about else text
        if not pa.types.is_string(subject.type):
            subject = pc.cast(subject, pa.string())
        if suffix or prefix.endswith("'"):
            reason = pc.binary_join_element_wise(
                prefix, pc.fill_null(subject, ""), suffix, ""
            )
        else:
            reason = pa.array([prefix] * len(text), pa.string())
        parts.append(pa.table({
            "source": pa.array([source] * len(text), pa.string()),
            "row_number": pa.array(row_number[code == value], pa.int64()),
            "column": pa.array([column] * len(text), pa.string()),
            "value": text,
            "reason": reason,
        }))
    if not parts:
        return QUARANTINE_SCHEMA.remove(5).empty_table()
    return pa.concat_tables(parts).sort_by("row_number")


def _with_run_id(table: pa.Table, run_id: str) -> pa.Table:
    return table.append_column(
        "run_id", pa.array([run_id] * table.num_rows, pa.string())
    )


def _rejects_to_quarantine(source: str, rejects: pa.Table, run_id: str) -> pa.Table:
    n = rejects.num_rows
    return pa.table({
        "source": pa.array([source] * n, pa.string()),
        "row_number": rejects.column("row_number"),
        "column": pa.nulls(n, pa.string()),
        "value": rejects.column("text"),
        "reason": rejects.column("reason"),
        "run_id": pa.array([run_id] * n, pa.string()),
    })


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Distinct values (null included) of a column, each row's index and counts."""
    encoded = pc.dictionary_encode(column, null_encoding="encode").combine_chunks()
    indices = encoded.indices.to_numpy()
    counts = count_codes(indices, len(encoded.dictionary))
    return indices, encoded.dictionary, counts


def _first_true(conditions: list[np.ndarray]) -> np.ndarray:
    """Per row, 1 + the index of the first true condition, or 0 (int8).

    ``np.select`` with the same effect builds int64 arrays of every row.
    """
    code = np.zeros(len(conditions[0]), np.int8)
    for value, condition in reversed(list(enumerate(conditions, start=1))):
        code[condition] = value
    return code


def _encode_progress(table: pa.Table) -> dict[str, tuple[Any, ...]]:
    """:func:`_encode` of each checked text column of the raw progress."""
    columns = ("student_id", "course_id", "progress")
    return {column: _encode(table.column(column)) for column in columns}


def _check_progress(
    table: pa.Table,
    settings: Settings,
    fmt: ProgressFormat,
    checker: _Checker,
    catalogue: pa.Array,
    encoded: dict[str, tuple[Any, ...]],
    parsed: ParsedProgress,
) -> _SourceResult:
    import pandas as pd

    names = source_columns(settings, "progress")
    suite = load_suite("progress")
    row_number = table.column("row_number").to_numpy()
    parameters = {
        "progress_regex": fmt.pattern,
        "progress_max": fmt.scale,
        "catalogue_course_ids": catalogue.to_pylist(),
    }

    row_masks: dict[str, np.ndarray] = {}
    failures = []
    for column in ("student_id", "course_id", "progress"):
        indices, dictionary, counts = encoded[column]
        frame = pd.DataFrame({
            "value_id": np.arange(len(dictionary), dtype=np.int64),
            column: dictionary.to_pandas(),
            "rows": counts,
        })
        if column == "progress":
            frame["progress_value"] = parsed.value
        for result in checker.run(suite, f"distinct_{column}", frame, "value_id",
                                  parameters):
            value_mask = np.zeros(len(dictionary), bool)
            value_mask[_failed_indices(result, "value_id")] = True
            mask = value_mask[indices]
            kind = result["expectation_config"]["type"]
            row_masks[f"{kind}:{_column_of(result)}"] = mask
            entry = _failure_entry("progress", result, names[column], mask,
                                   row_number, table.column(column))
            entry["record"]["distinct_values"] = len(dictionary)
            entry["record"]["failed_values"] = int(value_mask.sum())
            hint = _progress_hint(kind, fmt)
            if hint and column == "progress":
                entry["failure"]["hint"] = hint
            failures.append(entry)
            checker.record(entry["record"])
    _check_parser_agrees(row_masks, parsed, encoded["progress"][0])

    zero = np.zeros(table.num_rows, bool)
    conditions = [
        row_masks.get("expect_column_values_to_not_be_null:student_id", zero),
        row_masks.get("expect_column_values_to_not_be_null:course_id", zero),
        row_masks.get("expect_column_values_to_not_be_null:progress", zero),
        row_masks.get("expect_column_values_to_match_regex:progress", zero),
        row_masks.get("expect_column_values_to_be_between:progress_value", zero),
        row_masks.get("expect_column_values_to_be_in_set:course_id", zero),
    ]
    code = _first_true(conditions)
    fraction = (parsed.value / fmt.scale)[encoded["progress"][0]]
    keep, superseded, kept_row = _deduplicate(
        encoded["student_id"][0], encoded["course_id"][0], fraction, row_number,
        code == 0,
    )
    code[superseded] = 7

    students, student_code = _sorted_codes(*encoded["student_id"][:2], keep)
    course_code = _catalogue_codes(*encoded["course_id"][:2], keep, catalogue)
    row_filter = None if keep.all() else pa.array(keep)
    columns = {
        "student": pa.array(student_code),
        "course": pa.array(course_code),
        "progress": pa.array(fraction if row_filter is None else fraction[keep]),
    }
    for name in ("timestamp", "row_number"):
        if name in table.column_names:
            column = table.column(name)
            columns[name] = column if row_filter is None else column.filter(row_filter)
    clean = pa.table(columns)
    # Per kept student: rows, and distinct courses among them. They are equal
    # exactly when no (student, course) pair repeats; GX compares them on
    # one row per student instead of hashing every kept row.
    pairs = _rows_and_courses(student_code, course_code, len(students), len(catalogue))
    for result in checker.run(suite, "kept_students", pairs, "student", {}):
        repeated = np.zeros(len(pairs), bool)
        repeated[_failed_indices(result, "student")] = True
        mask = np.zeros(table.num_rows, bool)
        if repeated.any():
            mask[np.flatnonzero(keep)[repeated[student_code]]] = True
        entry = _failure_entry("progress", result, names["student_id"] + ", "
                               + names["course_id"], mask, row_number,
                               table.column("course_id"))
        entry["record"]["checked"] = clean.num_rows
        entry["record"]["students"] = len(pairs)
        failures.append(entry)
        checker.record(entry["record"])

    progress_text = table.column("progress")
    unit, scale = fmt.unit, f"{fmt.scale:g}"
    example = "'85%'" if fmt.name == "percent" else f"like '{fmt.scale / 2:g}'"
    kept_text = pa.array(kept_row)  # quoted as text for superseded rows only
    reasons = [
        (1, names["student_id"], table.column("student_id"),
         "student id is missing", ""),
        (2, names["course_id"], table.column("course_id"), "course id is missing", ""),
        (3, names["progress"], progress_text,
         "progress is missing (empty or a null marker)", ""),
        (4, names["progress"], progress_text, "progress '",
         f"' has a bad format: expected a {fmt.name} like {example}"),
        (5, names["progress"], progress_text, "progress '",
         f"' is out of range 0-{scale}{unit}"),
        (6, names["course_id"], table.column("course_id"), "unknown course '",
         "': not in the catalogue (or quarantined there)"),
        (7, names["progress"], progress_text,
         "duplicate (student, course) row superseded by row ",
         " with the highest progress", kept_text),
    ]
    quarantine = _quarantine_rows("progress", code, row_number, reasons)
    duplicates = int(superseded.sum())
    if duplicates:
        logger.warning(
            "%d duplicate (student, course) progress rows superseded", duplicates
        )
    return _SourceResult(
        clean=clean, quarantine=quarantine,
        failures=[f["failure"] for f in failures if f["failure"]["rows"]],
        duplicates=duplicates, students=students,
    )


def _rows_and_courses(
    student: np.ndarray, course: np.ndarray, n_students: int, n_courses: int
) -> pd.DataFrame:
    """Per student code: its number of rows and of distinct courses."""
    import pandas as pd

    key = student.astype(np.int64)
    key *= max(n_courses, 1)
    key += course
    space = n_students * max(n_courses, 1)
    if space <= DEDUP_BITMAP_KEYS:
        seen = np.zeros(space, bool)
        seen[key] = True
        distinct = seen.reshape(n_students, max(n_courses, 1)).sum(axis=1)
    else:
        distinct = np.bincount(
            np.unique(key) // max(n_courses, 1), minlength=n_students
        )
    return pd.DataFrame({
        "student": np.arange(n_students, dtype=np.int64),
        "rows": count_codes(student, n_students),
        "courses": distinct,
    })


def _sorted_codes(
    indices: np.ndarray, dictionary: pa.Array, keep: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    """The ids of the kept rows, sorted, and each kept row's position among them."""
    kept = indices if keep.all() else indices[keep]
    used = np.flatnonzero(count_codes(kept, len(dictionary)))
    ids = dictionary.take(pa.array(used))
    order = pc.array_sort_indices(ids).to_numpy()
    code = np.full(len(dictionary), -1, np.int32)
    code[used[order]] = np.arange(len(order), dtype=np.int32)
    return ids.take(pa.array(order)), code[kept]


def _catalogue_codes(
    indices: np.ndarray, dictionary: pa.Array, keep: np.ndarray, catalogue: pa.Array
) -> np.ndarray:
    """Each kept row's position of its course among the catalogue's sorted ids."""
    position = pc.index_in(dictionary, value_set=sorted_ids(catalogue))
    code = pc.fill_null(position, -1).to_numpy().astype(np.int32)[indices[keep]]
    if (code < 0).any():
        raise RuntimeError("a kept progress row names a course outside the catalogue")
    return code


def _check_parser_agrees(
    row_masks: dict[str, np.ndarray], parsed: ParsedProgress, indices: np.ndarray
) -> None:
    """Fail loudly if GX's verdicts on progress differ from the parser's."""
    problems = parsed.problems()
    pairs = [
        ("expect_column_values_to_not_be_null:progress",
         (problems == "missing")[indices]),
        ("expect_column_values_to_match_regex:progress",
         (problems == "format")[indices]),
        ("expect_column_values_to_be_between:progress_value",
         (problems == "range")[indices]),
    ]
    for key, expected in pairs:
        if key in row_masks and not np.array_equal(row_masks[key], expected):
            raise RuntimeError(
                f"Great Expectations and the progress parser disagree on {key}: "
                f"{int(row_masks[key].sum())} vs {int(expected.sum())} rows"
            )


def _deduplicate(
    students: np.ndarray,
    courses: np.ndarray,
    fraction: np.ndarray,
    row_number: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the highest progress per (student, course); ties keep the first row.

    Returns the kept mask, the superseded mask, and per row the row number
    of the row kept in its place (0 where not superseded).
    """
    n = len(students)
    keep = valid.copy()
    superseded = np.zeros(n, bool)
    kept_row = np.zeros(n, np.int64)
    if np.count_nonzero(valid) < 2:
        return keep, superseded, kept_row
    every = bool(valid.all())
    # Keys built in place, from the whole arrays when every row is valid:
    # each temporary of twenty million int64 is 160 MB of fresh pages.
    key = (students if every else students[valid]).astype(np.int64)
    key *= int(courses.max()) + 1
    key += courses if every else courses[valid]
    space = int(key.max()) + 1
    if space <= DEDUP_BITMAP_KEYS:
        # Without repeated keys there is nothing to sort: a bitmap tells.
        seen = np.zeros(space, bool)
        seen[key] = True
        if np.count_nonzero(seen) == len(key):
            return keep, superseded, kept_row
    positions = np.flatnonzero(valid)
    order = np.lexsort((row_number[positions], -fraction[positions], key))
    sorted_key = key[order]
    starts = np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]])
    if starts.all():
        return keep, superseded, kept_row
    group = np.cumsum(starts) - 1
    first_position = positions[order][starts]
    losers = positions[order][~starts]
    keep[losers] = False
    superseded[losers] = True
    kept_row[losers] = row_number[first_position[group[~starts]]]
    return keep, superseded, kept_row


def _report(
    source: str, table: pa.Table, rejects: pa.Table, result: _SourceResult
) -> _Report:
    malformed = malformed_rows(rejects)  # one reject may cover several rows
    rows = table.num_rows + malformed
    quarantined = result.quarantine.num_rows + rejects.num_rows
    bad = result.quarantine.num_rows - result.duplicates + malformed
    counts: dict[str, Any] = {
        "rows": rows,
        "kept": result.clean.num_rows,
        "quarantined": quarantined,
    }
    if source == "progress":
        counts["duplicates"] = result.duplicates
    counts["bad"] = bad
    counts["bad_share"] = round(bad / rows, 6) if rows else 0.0
    failures = list(result.failures)
    if rejects.num_rows:
        failures.insert(0, {
            "source": source, "expectation": "well-formed CSV row", "column": None,
            "rows": malformed,
            "examples": [
                {"row_number": r["row_number"], "value": r["text"]}
                for r in rejects.slice(0, N_EXAMPLES).to_pylist()
            ],
        })
    return _Report(source, counts, failures)


def _gate(reports: dict[str, _Report], settings: Settings) -> None:
    """Raise when an input is too bad, or when no usable row of either is left."""
    files = {
        "courses": _source_name(settings.courses_query or settings.courses, settings),
        "progress": _source_name(settings.progress_query or settings.progress,
                                 settings),
    }
    messages, failures = [], []
    for source, report in reports.items():
        counts = report.counts
        empty = counts["kept"] == 0
        if counts["bad_share"] <= settings.max_bad_share and not empty:
            continue
        head = (
            f"{files[source]}: {counts['bad']} of {counts['rows']} rows bad "
            f"({counts['bad_share']:.1%} > {settings.max_bad_share:.1%})"
        )
        if empty:
            head = (
                f"{files[source]}: no usable {source} rows remain "
                f"({counts['bad']} of {counts['rows']} rows bad, "
                f"{counts['bad_share']:.1%}; limit {settings.max_bad_share:.1%})"
            )
        details = "; ".join(_describe_failure(f) for f in report.failures)
        messages.append(f"{head}: {details}" if details else head)
        failures.extend(report.failures)
    if messages:
        raise ValidationGateError(" | ".join(messages), failures=failures)


def _progress_hint(expectation: str, fmt: ProgressFormat) -> str | None:
    """What to check when progress values fail their format or range."""
    if expectation == "expect_column_values_to_match_regex":
        if fmt.name == "percent":
            return (
                "progress is declared as percent strings like '85%'; for plain "
                "numbers set progress_format=number and progress_scale "
                "(--progress-format, --progress-scale)"
            )
        return (
            "progress is declared as plain numbers; for strings like '85%' set "
            "progress_format=percent (--progress-format)"
        )
    if expectation == "expect_column_values_to_be_between":
        return (
            f"progress is declared on a scale of 0-{fmt.scale:g}{fmt.unit}; check "
            "progress_scale (--progress-scale)"
        )
    return None


def _describe_failure(failure: dict[str, Any]) -> str:
    examples = ", ".join(
        f"row {e['row_number']} ({e['value']!r})" for e in failure["examples"]
    )
    column = f" on '{failure['column']}'" if failure["column"] else ""
    hint = f" ({failure['hint']})" if failure.get("hint") else ""
    return (
        f"{failure['expectation']}{column} failed on {failure['rows']} rows"
        + (f", e.g. {examples}" if examples else "")
        + hint
    )


def _source_name(location: str | None, settings: Settings) -> str:
    if settings.uses_sql_source:
        return "query: " + " ".join((location or "").split())[:80]
    return Path(location or "").name or str(location)
