"""Extract courses and progress from the source into raw Parquet snapshots."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
# Rows the CSV parser could not split into the header's fields. ``lines`` is
# how many source rows one covers: more than one when an unbalanced quote
# made the parser read on into the following rows.
REJECT_SCHEMA = pa.schema([
    ("row_number", pa.int64()),
    ("text", pa.string()),
    ("reason", pa.string()),
    ("lines", pa.int64()),
])
# Longest text of a malformed row kept in the quarantine and in messages.
REJECT_TEXT_CHARS = 200
# A raw snapshot is written as one Parquet part per CPU (in parallel), each
# part holding at least this many rows; parts are read back in name order.
PART_MIN_ROWS = 1 << 20
# Text columns with few distinct values, dictionary-encoded in the snapshot.
_DICTIONARY_COLUMNS = ("course_id", "title", "categories", "progress")
_BLANK = b"\xef\xbb\xbf \t\r\n"


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
    markers_parsed = False
    if settings.uses_sql_source:
        table, rejects = _read_sql(location, settings), _empty_rejects()
    elif _is_parquet(location):
        table, rejects = _read_parquet(location), _empty_rejects()
    else:
        table, rejects, markers_parsed = _read_csv(
            location, settings.null_values, settings.csv_delimiter
        )
    table = _select_columns(table, mapping, location, settings.csv_delimiter)
    return _clean_text(table, settings.null_values, markers_parsed), rejects


def extract(run: RunContext, settings: Settings) -> dict[str, Any]:
    """Snapshot courses and progress for the run's date as raw Parquet.

    Returns
    -------
    dict
        Row counts, rejected (malformed) rows and output paths, plus
        ``phase_seconds``: the time spent reading the sources (parse, trim,
        null markers, row numbers) and writing the snapshot.
    """
    started = time.perf_counter()
    summary: dict[str, Any] = {"source": _describe_source(settings)}
    phases = {"read": 0.0, "write": 0.0}
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
        mark = time.perf_counter()
        table, rejects = read_source(location, kind, settings)
        phases["read"] += time.perf_counter() - mark
        mark = time.perf_counter()
        data_path, rejects_path = raw_paths(run, kind)
        write_snapshot(table, data_path)
        pq.write_table(rejects, rejects_path)
        phases["write"] += time.perf_counter() - mark
        malformed = malformed_rows(rejects)
        if malformed:
            first = rejects.slice(0, 1).to_pylist()[0]
            logger.warning(
                "%s: %d malformed rows set aside for the quarantine; first, row "
                "%s: %s", _describe(location, settings), malformed,
                first["row_number"], first["reason"],
            )
        logger.info(
            "read %d %s rows from %s (%d malformed) into %s",
            table.num_rows,
            kind,
            _describe(location, settings),
            malformed,
            data_path.parent,
        )
        summary[kind] = {
            "location": _describe(location, settings),
            "rows": table.num_rows + malformed,
            "malformed": malformed,
            "path": str(data_path),
        }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
    run.write_summary("extract", summary)
    return summary


def malformed_rows(rejects: pa.Table) -> int:
    """Source rows the malformed records of ``rejects`` cover.

    Rejects written before records counted their ``lines`` count one each.
    """
    if "lines" not in rejects.column_names:
        return rejects.num_rows
    return int(pc.sum(rejects.column("lines")).as_py() or 0)


def raw_paths(run: RunContext, kind: str) -> tuple[Path, Path]:
    """Paths of the raw snapshot and its rejected rows for ``kind``.

    The snapshot is a directory of Parquet parts: read it with
    :func:`read_snapshot`, which keeps the row order.
    """
    out_dir = run.partition("raw", kind)
    return out_dir / kind, out_dir / "rejects.parquet"


def write_snapshot(table: pa.Table, directory: Path) -> list[Path]:
    """Write ``table`` as numbered Parquet parts, one per CPU, in parallel.

    Each part is a consecutive slice of at least :data:`PART_MIN_ROWS` rows
    (a small table is one part); parts left by an earlier write are removed.
    The snapshot is read back whole, once, so no column statistics are
    written; low-cardinality text is dictionary-encoded, other text written
    plain (cheaper, and as small once compressed) and ``row_number``
    delta-encoded.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for old in _part_files(directory):
        old.unlink()
    n_parts = max(1, min(os.cpu_count() or 1, table.num_rows // PART_MIN_ROWS))
    step = -(-table.num_rows // n_parts)
    width = max(2, len(str(n_parts - 1)))
    paths = [directory / f"part-{i:0{width}d}.parquet" for i in range(n_parts)]
    names = table.column_names
    dictionary = [name for name in _DICTIONARY_COLUMNS if name in names]
    encoding = {"row_number": "DELTA_BINARY_PACKED"} if "row_number" in names else None

    def write(i: int) -> None:
        pq.write_table(
            table.slice(i * step, step),
            paths[i],
            use_dictionary=dictionary,
            column_encoding=encoding,
            write_statistics=False,
        )

    if n_parts == 1:
        write(0)
    else:
        with ThreadPoolExecutor(n_parts) as pool:
            list(pool.map(write, range(n_parts)))
    return paths


def read_snapshot(directory: Path) -> pa.Table:
    """Read a raw snapshot written by :func:`write_snapshot`, parts in order."""
    parts = _part_files(directory)
    if not parts:
        raise FileNotFoundError(f"{directory}: no raw snapshot parts")
    return pa.concat_tables([pq.read_table(part) for part in parts])


def _part_files(directory: Path) -> list[Path]:
    parts = directory.glob("part-[0-9]*.parquet") if directory.is_dir() else []
    return sorted(parts, key=lambda p: int(p.stem.removeprefix("part-")))


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


def _local_path(location: str) -> Path | None:
    """The local file behind ``location`` (None for a remote fsspec URL)."""
    if "://" in location and not location.startswith("file://"):
        return None
    path = Path(location.removeprefix("file://"))
    if not path.exists():
        raise InputFileError(location, "file not found")
    if path.is_dir():
        raise InputFileError(location, "is a directory, expected a file")
    return path


def _open(location: str) -> Any:
    path = _local_path(location)
    if path is None:
        import fsspec

        return fsspec.open(location, "rb").open()
    return path.open("rb")


def _read_all(location: str) -> bytes:
    with _open(location) as handle:
        return handle.read()


def _read_head(location: str) -> bytes:
    """The file's first bytes: through its first line and first non-blank byte."""
    pieces = bytearray()
    with _open(location) as handle:
        while True:
            piece = handle.read(1 << 16)
            pieces += piece
            ends_line = b"\n" in pieces or b"\r" in pieces
            if not piece or (ends_line and pieces.strip(_BLANK)):
                return bytes(pieces)


def _read_csv(
    location: str, null_values: tuple[str, ...] = (), delimiter: str = ","
) -> tuple[pa.Table, pa.Table, bool]:
    """Read a CSV as text; malformed rows are set aside with their row numbers.

    The file is parsed straight from its path (or fsspec URL) by Arrow's
    multi-threaded reader; fields equal to a null marker (quoted or not)
    become nulls as they are parsed, trimming is left to :func:`_clean_text`.
    The last value returned says whether the null markers were applied.
    """
    head = _read_head(location)
    if not head.strip(_BLANK):
        raise InputFileError(location, "file is empty (no header, no rows)")
    header = _read_header(head, location, delimiter)
    markers = _parse_markers(null_values)
    table, rejects = _parse_file(location, header, markers, delimiter)
    if markers and not set(table.column_names) <= set(header):
        # Columns the first line does not name (it is blank, say) get their
        # type inferred with Arrow's own null markers: parse them as such.
        markers = []
        table, rejects = _parse_file(location, header, markers, delimiter)
    if rejects:
        # The fast multi-threaded parse cannot say where a bad row was; parse
        # again serially, which numbers every row, to report them exactly.
        data = pa.py_buffer(_read_all(location))
        table, rejects = _parse_csv(
            data, header, markers, location, fast=False, delimiter=delimiter
        )
    reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    covered = [
        number
        for r in rejects
        if r["row_number"] is not None
        for number in range(r["row_number"], r["row_number"] + r["lines"])
    ]
    numbers = _row_numbers(table.num_rows, covered)
    table = table.append_column("row_number", numbers)
    return table, reject_table, bool(markers)


def _parse_file(
    location: str, header: list[str], markers: list[str], delimiter: str = ","
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Parse the whole file with Arrow's multi-threaded reader."""
    path = _local_path(location)
    if path is None:
        with _open(location) as source:
            return _parse_csv(
                source, header, markers, location, fast=True, delimiter=delimiter
            )
    # An OSFile, not the path: given a path, Arrow decompresses by extension.
    with pa.OSFile(str(path)) as source:
        return _parse_csv(
            source, header, markers, location, fast=True, delimiter=delimiter
        )


def _parse_markers(null_values: tuple[str, ...]) -> list[str]:
    """The null markers a raw CSV field can be matched against before trimming.

    A marker with whitespace at either end can never equal a trimmed value,
    so it is left out (it never turns anything into a null). Python's
    ``str.strip`` removes exactly the characters Arrow's
    ``utf8_trim_whitespace`` does.
    """
    return [m for m in sorted(set(null_values)) if m == m.strip()]


def _parse_csv(
    source: Any,
    header: list[str],
    markers: list[str],
    location: str,
    fast: bool,
    delimiter: str = ",",
) -> tuple[pa.Table, list[dict[str, Any]]]:
    rejects: list[dict[str, Any]] = []
    # Without markers, Arrow's default null values still apply to any column
    # whose type is inferred (not named in the header), as they always have.
    nulls = {"null_values": markers} if markers else {}
    # Source rows that unbalanced quotes folded into earlier records, so that
    # later records keep the row numbers of the rows they are.
    folded = 0

    def on_invalid(row: Any) -> str:
        nonlocal folded
        text = row.text or ""
        lines = text.count("\n") + 1
        number = None if row.number is None else row.number - 1 + folded
        reason = (
            f"malformed row: expected {row.expected_columns} fields, "
            f"found {row.actual_columns}"
        )
        if lines > 1 and number is not None:
            reason = (
                f"malformed row: rows {number} to {number + lines - 1} were read "
                f"as one record, from a quote that opens on row {number}; "
                f"expected {row.expected_columns} fields, found "
                f"{row.actual_columns}"
            )
        rejects.append(
            {"row_number": number, "text": _shorten(text), "reason": reason,
             "lines": lines}
        )
        folded += lines - 1
        return "skip"

    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(use_threads=fast, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                invalid_row_handler=on_invalid,
                newlines_in_values=not fast,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                **nulls,
                strings_can_be_null=bool(markers),
                quoted_strings_can_be_null=bool(markers),
            ),
        )
    except pa.ArrowInvalid as err:
        raise InputFileError(
            location, _explain_csv_error(err, _read_all(location))
        ) from None
    return table, rejects


def _shorten(text: str) -> str:
    if len(text) <= REJECT_TEXT_CHARS:
        return text
    return f"{text[:REJECT_TEXT_CHARS]}... ({len(text)} characters)"


def _read_header(data: bytes, location: str, delimiter: str = ",") -> list[str]:
    """The column names on the first line (lines may end in LF, CRLF or CR)."""
    import csv

    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    first = data[: min(ends)] if ends else data
    try:
        text = first.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(
            location, "header is not UTF-8 text; save the file as UTF-8"
        ) from None
    try:
        return next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error as err:
        raise InputFileError(location, f"cannot read the header: {err}") from None


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


def _row_numbers(n_rows: int, skipped: Sequence[int | None] = ()) -> pa.Array:
    """Source row numbers (1 = first data row) of the rows that were kept."""
    import numpy as np

    numbers = np.arange(1, n_rows + len(skipped) + 1, dtype=np.int64)
    gone = [n for n in skipped if n is not None]
    if gone:
        numbers = numbers[~np.isin(numbers, gone)]
    return pa.array(numbers[:n_rows])


def _read_parquet(location: str) -> pa.Table:
    try:
        with _open(location) as handle:
            table = pq.read_table(handle)
    except pa.ArrowInvalid as err:
        raise InputFileError(location, f"not a readable Parquet file: {err}") from None
    return table.append_column("row_number", _row_numbers(table.num_rows))


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
    return table.append_column("row_number", _row_numbers(table.num_rows))


def _select_columns(
    table: pa.Table, mapping: dict[str, str | None], location: str, delimiter: str = ","
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
        # One column found where several are wanted: another delimiter?
        others = [] if len(found) != 1 else [
            s for s in ",;\t|" if s != delimiter and s in found[0]
        ]
        if others:
            hint = (
                f"; the file seems to use another delimiter than {delimiter!r} "
                f"(set csv_delimiter, e.g. --csv-delimiter {others[0]!r})"
            )
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


def _clean_text(
    table: pa.Table, null_values: tuple[str, ...], markers_parsed: bool = False
) -> pa.Table:
    """Trim whitespace and turn null markers into nulls, in every text column.

    ``markers_parsed`` says the values that are exactly a marker are already
    null (the CSV reader did it), so only trimmed chunks are looked up.
    """
    markers = pa.array(sorted(set(null_values)), pa.string())
    longest = max((len(m.encode()) for m in set(null_values)), default=-1)
    columns = []
    for name in table.column_names:
        column = table.column(name)
        if name != "row_number":
            column = pa.chunked_array(
                [
                    _clean_chunk(chunk, markers, longest, markers_parsed)
                    for chunk in column.chunks
                ],
                pa.string(),
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _clean_chunk(
    chunk: pa.Array, markers: pa.Array, longest: int, markers_parsed: bool = False
) -> pa.Array:
    """Trim and null-mark one text chunk, skipping work that cannot change it.

    Trimming is skipped when the chunk's bytes hold no ASCII control or
    space character and no non-ASCII byte (so no whitespace of any kind);
    markers are looked up only for values no longer than the longest one,
    and not at all in an untrimmed chunk when ``markers_parsed``.
    """
    import numpy as np

    data = chunk.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    if len(raw) and (raw.min() <= 0x20 or raw.max() >= 0x80):
        chunk = pc.utf8_trim_whitespace(chunk)
    elif markers_parsed:
        return chunk
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
