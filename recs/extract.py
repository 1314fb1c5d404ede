"""Extract courses and progress from the source into raw Parquet snapshots."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recs.context import RunContext
from recs.errors import InputFileError
from recs.settings import Settings, mask_url

logger = logging.getLogger(__name__)

COURSE_COLUMNS = ("course_id", "title", "categories")
PROGRESS_COLUMNS = ("student_id", "course_id", "progress", "timestamp")
REJECT_SCHEMA = pa.schema(
    [("row_number", pa.int64()), ("text", pa.string()), ("reason", pa.string())]
)


def source_columns(settings: Settings, kind: str) -> dict[str, str | None]:
    """Map the product's column names onto the source's, for ``kind``."""
    if kind == "courses":
        return {
            "course_id": settings.course_id_column,
            "title": settings.title_column,
            "categories": settings.categories_column,
        }
    return {
        "student_id": settings.student_id_column,
        "course_id": settings.progress_course_id_column,
        "progress": settings.progress_column,
        "timestamp": settings.timestamp_column,
    }


_OPTIONAL = {"title"}


def read_source(
    location: str, kind: str, settings: Settings
) -> tuple[pa.Table, pa.Table]:
    """Read one input as text columns with the product's names.

    Parameters
    ----------
    location : str
        A CSV or Parquet path or fsspec URL, or a SQL query when
        ``settings.source_url`` is set.
    kind : {"courses", "progress"}
        Which input this is; decides the expected columns.
    settings : Settings
        Column names, null markers and the source database.

    Returns
    -------
    table : pyarrow.Table
        All columns as trimmed strings (nulls for null markers), plus
        ``row_number`` (1 = first data row).
    rejects : pyarrow.Table
        Rows that could not be parsed at all (wrong number of fields).

    Raises
    ------
    InputFileError
        The input is missing, empty, not UTF-8, or lacks a required column.
    """
    mapping = source_columns(settings, kind)
    if settings.uses_sql_source:
        table, rejects = _read_sql(location, settings), _empty_rejects()
    elif _is_parquet(location):
        table, rejects = _read_parquet(location), _empty_rejects()
    else:
        table, rejects = _read_csv(location)
    table = _select_columns(table, mapping, location)
    return _clean_text(table, settings.null_values), rejects


def extract(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Snapshot courses and progress for the run's date as raw Parquet.

    Returns
    -------
    dict
        Row counts, rejected (malformed) rows and output paths.
    """
    started = time.perf_counter()
    summary: dict[str, Any] = {"source": _describe_source(settings)}
    for kind, location in (
        (
            "courses",
            settings.courses_query if settings.uses_sql_source else settings.courses,
        ),
        (
            "progress",
            settings.progress_query if settings.uses_sql_source else settings.progress,
        ),
    ):
        if not location:
            raise ValueError(f"no {kind} source given (file path or SQL query)")
        table, rejects = read_source(location, kind, settings)
        out_dir = run.partition("raw", kind)
        pq.write_table(table, out_dir / f"{kind}.parquet")
        pq.write_table(rejects, out_dir / "rejects.parquet")
        logger.info(
            "read %d %s rows from %s (%d malformed) into %s",
            table.num_rows,
            kind,
            _describe(location, settings),
            rejects.num_rows,
            out_dir,
        )
        summary[kind] = {
            "location": _describe(location, settings),
            "rows": table.num_rows + rejects.num_rows,
            "malformed": rejects.num_rows,
            "path": str(out_dir / f"{kind}.parquet"),
        }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    run.write_summary("extract", summary)
    return summary


def raw_paths(run: RunContext, kind: str) -> tuple[Path, Path]:
    """Paths of the raw snapshot and its rejected rows for ``kind``."""
    out_dir = run.partition("raw", kind)
    return out_dir / f"{kind}.parquet", out_dir / "rejects.parquet"


def _describe_source(settings: Settings) -> str:
    if settings.uses_sql_source:
        return mask_url(settings.source_url or "")
    return "files"


def _describe(location: str, settings: Settings) -> str:
    if settings.uses_sql_source:
        return "query: " + " ".join(location.split())[:120]
    return location


def _is_parquet(location: str) -> bool:
    return location.lower().rstrip("/").endswith((".parquet", ".pq"))


def _empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def _open(location: str) -> Any:
    if "://" in location and not location.startswith("file://"):
        import fsspec

        return fsspec.open(location, "rb").open()
    path = Path(location.removeprefix("file://"))
    if not path.exists():
        raise InputFileError(location, "file not found")
    if path.is_dir():
        raise InputFileError(location, "is a directory, expected a file")
    return path.open("rb")


def _read_csv(location: str) -> tuple[pa.Table, pa.Table]:
    """Read a CSV as text; malformed rows are set aside with their row numbers."""
    with _open(location) as handle:
        data = handle.read()
    blank = b"\xef\xbb\xbf \t\r\n"
    if not data[:65536].strip(blank) and not data.strip(blank):
        raise InputFileError(location, "file is empty (no header, no rows)")
    table, rejects = _parse_csv(data, location, fast=True)
    if rejects:
        # The fast multi-threaded parse cannot say where a bad row was; parse
        # again serially, which numbers every row, to report them exactly.
        table, rejects = _parse_csv(data, location, fast=False)
    reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    numbers = _row_numbers(table.num_rows, [r["row_number"] for r in rejects])
    return table.append_column("row_number", pa.array(numbers)), reject_table


def _parse_csv(
    data: bytes, location: str, fast: bool
) -> tuple[pa.Table, list[dict[str, Any]]]:
    rejects: list[dict[str, Any]] = []

    def on_invalid(row: Any) -> str:
        rejects.append(
            {
                "row_number": (row.number - 1) if row.number is not None else None,
                "text": row.text,
                "reason": (
                    f"malformed row: expected {row.expected_columns} fields, "
                    f"found {row.actual_columns}"
                ),
            }
        )
        return "skip"

    header = _read_header(data, location)
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(use_threads=fast, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=on_invalid, newlines_in_values=not fast
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        raise InputFileError(location, _explain_csv_error(err, data)) from None
    return table, rejects


def _read_header(data: bytes, location: str) -> list[str]:
    end = data.find(b"\n")
    first = (data if end < 0 else data[:end]).removeprefix(b"\xef\xbb\xbf")
    first = first.rstrip(b"\r")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(
            location, "header is not UTF-8 text; save the file as UTF-8"
        ) from None
    import csv

    return next(csv.reader([text]), [])


def _explain_csv_error(err: Exception, data: bytes) -> str:
    message = str(err)
    if "invalid UTF8" in message:
        line = _first_non_utf8_line(data)
        return (
            f"not UTF-8 text (first bad bytes on line {line}); save the file as UTF-8"
        )
    return f"cannot parse as CSV: {message}"


def _first_non_utf8_line(data: bytes) -> int:
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return 0


def _row_numbers(n_rows: int, skipped: list[int | None]) -> list[int] | Any:
    """Source row numbers (1 = first data row) of the rows that were kept."""
    import numpy as np

    numbers = np.arange(1, n_rows + len(skipped) + 1, dtype=np.int64)
    gone = [n for n in skipped if n is not None]
    if gone:
        numbers = numbers[~np.isin(numbers, gone)]
    return numbers[:n_rows]


def _read_parquet(location: str) -> pa.Table:
    try:
        with _open(location) as handle:
            table = pq.read_table(handle)
    except pa.ArrowInvalid as err:
        raise InputFileError(location, f"not a readable Parquet file: {err}") from None
    return table.append_column(
        "row_number", pa.array(range(1, table.num_rows + 1), pa.int64())
    )


def _read_sql(query: str, settings: Settings) -> pa.Table:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(settings.source_url or "")
    try:
        with engine.connect() as conn:
            frame = pd.read_sql_query(sa.text(query), conn, dtype_backend="pyarrow")
    except sa.exc.SQLAlchemyError as err:
        raise InputFileError(
            f"query on {mask_url(settings.source_url or '')}",
            f"query failed: {err.__class__.__name__}: {str(err).splitlines()[0]}",
        ) from None
    finally:
        engine.dispose()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.append_column(
        "row_number", pa.array(range(1, table.num_rows + 1), pa.int64())
    )


def _select_columns(
    table: pa.Table, mapping: dict[str, str | None], location: str
) -> pa.Table:
    stripped = [name.strip() for name in table.column_names]
    repeated = sorted({name for name in stripped if stripped.count(name) > 1})
    if repeated:
        raise InputFileError(
            location,
            f"column(s) {', '.join(map(repr, repeated))} appear twice in the header",
            column=repeated[0],
        )
    names = {name.strip(): name for name in table.column_names}
    missing = [
        source
        for ours, source in mapping.items()
        if source and ours not in _OPTIONAL and source not in names
    ]
    if missing:
        found = [n for n in table.column_names if n != "row_number"]
        hint = ""
        if len(found) == 1 and any(sep in found[0] for sep in ";\t|"):
            hint = "; the file seems to use another delimiter than ','"
        raise InputFileError(
            location,
            f"missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, found))}{hint}",
            column=missing[0],
        )
    arrays, out_names = [], []
    for ours, source in mapping.items():
        if source and source in names:
            column = table.column(names[source])
            if column.type != pa.string():
                column = pc.cast(column, pa.string())
            arrays.append(column)
            out_names.append(ours)
    arrays.append(table.column("row_number"))
    out_names.append("row_number")
    return pa.Table.from_arrays(arrays, names=out_names)


def _clean_text(table: pa.Table, null_values: tuple[str, ...]) -> pa.Table:
    """Trim whitespace and turn null markers into nulls, in every text column."""
    markers = pa.array(sorted(set(null_values)), pa.string())
    longest = max((len(m.encode()) for m in set(null_values)), default=-1)
    columns = []
    for name in table.column_names:
        column = table.column(name)
        if name != "row_number":
            column = pa.chunked_array(
                [_clean_chunk(chunk, markers, longest) for chunk in column.chunks],
                pa.string(),
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _clean_chunk(chunk: pa.Array, markers: pa.Array, longest: int) -> pa.Array:
    """Trim and null-mark one text chunk, skipping work that cannot change it.

    Trimming is skipped when the chunk's bytes hold no ASCII control or
    space character and no non-ASCII byte (so no whitespace of any kind);
    markers are looked up only for values no longer than the longest one.
    """
    import numpy as np

    data = chunk.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    if len(raw) and (raw.min() <= 0x20 or raw.max() >= 0x80):
        chunk = pc.utf8_trim_whitespace(chunk)
    if longest < 0:
        return chunk
    lengths = pc.fill_null(pc.binary_length(chunk), longest + 1)
    short = np.flatnonzero(lengths.to_numpy() <= longest)
    if len(short) == 0:
        return chunk
    hits = pc.is_in(chunk.take(pa.array(short)), value_set=markers)
    hits = short[hits.to_numpy(zero_copy_only=False)]
    if len(hits) == 0:
        return chunk
    mask = np.zeros(len(chunk), bool)
    mask[hits] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), chunk)
