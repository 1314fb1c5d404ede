"""Benchmark the whole pipeline, CSV files in to warehouse out, step by step.

For each size (number of students, about 20 progress rows each) this script

1. generates the synthetic inputs with :func:`recs.generate.generate`, cached
   under ``bench/out/data/n<size>/`` (the same arguments give the same bytes);
2. runs every step of the pipeline (``start``, then :data:`recs.pipeline.STEPS`)
   on them, once per warehouse (SQLite, and PostgreSQL in a database created
   for the run and dropped after it), each step in a subprocess of its own so
   that its peak RSS is that process's ``ru_maxrss`` (``os.wait4``);
3. measures, on the same files in the same run, the physical anchors: a bare
   ``pyarrow.csv.read_csv`` of both CSV files against our ``extract``, and a
   bare psycopg ``COPY`` of the same recommendation rows into an unindexed
   table against our ``publish``;
4. runs the origin notebook's method (``bench/baseline.py``) for the feature
   step and for its per-cluster ``isin`` recommendation step, and checks that
   our feature table equals the baseline's unrounded averages on every
   category the baseline's substring matching does not get wrong.

It prints one table per size, the 100k -> 1M time ratios (10x is linear),
and writes ``bench/out/pipeline_bench.json`` and ``pipeline_bench.md``.
Usage (see ``bench/README.md``)::

    .venv/bin/python bench/pipeline_bench.py --sizes 10000,100000,1000000 \\
        --warehouse both
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STEPS = ("start", "extract", "validate", "features", "cluster", "recommend",
         "evaluate", "publish")
# Steps run again beside their anchors (see run_pipeline).
REPEATED = ("extract", "features", "publish")
# Which count a step's rows/s is computed from (its main input).
ROWS_OF = {
    "start": None,
    "extract": "progress_rows",
    "validate": "progress_rows",
    "features": "clean_rows",
    "cluster": "students",
    "recommend": "clean_rows",
    "evaluate": "clean_rows",
    "publish": "recommendations",
}
TARGETS = {
    "job_seconds": 120.0,
    "peak_rss_mib": 6 * 1024.0,
    "extract_vs_read_csv": 1.5,
    "publish_vs_copy": 1.5,
    "baseline_features_speedup": 10.0,
}


# --------------------------------------------------------------------------
# Measuring a subprocess


def measure(kind: str, spec: dict[str, Any], env: dict[str, str],
            log_dir: Path, tag: str | None = None) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; return its result, wall and RSS.

    The wall time is the whole process (interpreter start and imports
    included, as an Airflow task pays them too); ``seconds`` is the worker's
    own timing of the work; ``rss_mib`` is the process's peak resident set.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = (tag or spec.get("step") or kind).replace("#", "-")
    spec_path = log_dir / f"{tag}.spec.json"
    result_path = log_dir / f"{tag}.result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--spec", str(spec_path)]
    with open(log_dir / f"{tag}.log", "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log,
                                   cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    out: dict[str, Any] = {
        "wall": round(wall, 3),
        "cpu": round(usage.ru_utime + usage.ru_stime, 2),
        "rss_mib": round(usage.ru_maxrss / 1024, 1),
        "exit": process.returncode,
    }
    if result_path.exists():
        out.update(json.loads(result_path.read_text()))
    if process.returncode != 0:
        tail = (log_dir / f"{tag}.log").read_text(errors="replace")[-2000:]
        out["error"] = out.get("error") or tail.strip().splitlines()[-1:] or tail
        print(f"  !! {tag} failed (exit {process.returncode}); log: "
              f"{log_dir / (tag + '.log')}", flush=True)
    return out


# --------------------------------------------------------------------------
# Workers (run in the subprocess)


def worker(kind: str, spec_path: Path) -> int:
    """Entry point of a measured subprocess: do one thing, write its result."""
    import logging

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = json.loads(spec_path.read_text())
    result: dict[str, Any] = {}
    # Steps, anchors and the baseline all allocate Arrow memory from the
    # pool the pipeline uses, so that they are compared on equal terms.
    from recs.pipeline import use_arrow_memory_pool

    use_arrow_memory_pool()
    try:
        result = WORKERS[kind](spec)
    except Exception as err:
        result = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        Path(spec["result"]).write_text(json.dumps(result, default=str))
        raise
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


def _work_step(spec: dict[str, Any]) -> dict[str, Any]:
    from recs.context import RunContext
    from recs.pipeline import run_step, start_run
    from recs.settings import Settings

    settings = Settings.from_env()
    run = RunContext.from_dict(spec["run"])
    started = time.perf_counter()
    if spec["step"] == "start":
        start_run(run, settings)
        summary: dict[str, Any] = {}
    else:
        summary = run_step(spec["step"], run, settings)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "summary": _small(summary)}


def _work_read_csv(spec: dict[str, Any]) -> dict[str, Any]:
    """Bare ``pyarrow.csv.read_csv`` of both files, then a bare Parquet write.

    ``seconds`` is the read alone (the anchor of reading the CSVs);
    ``write_seconds`` a default ``pyarrow.parquet.write_table`` of what was
    read, so that read + write is the anchor of the whole extract step.
    """
    import tempfile

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    started = time.perf_counter()
    tables = {name: pacsv.read_csv(spec[name]) for name in ("courses", "progress")}
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=OUT) as scratch:
        started = time.perf_counter()
        for name, table in tables.items():
            pq.write_table(table, Path(scratch) / f"{name}.parquet")
        write_seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "write_seconds": round(write_seconds, 3),
        "rows": {name: table.num_rows for name, table in tables.items()},
    }


def _work_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """Bare COPY of the recommendation rows into a new table with no index.

    ``spec["format"]`` is ``csv`` (pyarrow's CSV writer, the usual way) or
    ``binary`` (pgpq's encoder, as ``recs.warehouse`` loads).
    """
    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from recs import warehouse

    columns = [c for c, _, _ in warehouse.READER_COLUMNS["student_recommendations"]]
    types = {
        "student_id": "text", "rank": "integer", "course_id": "text",
        "score": "double precision", "cluster_id": "integer", "strategy": "text",
        "reason": "text",
    }
    binary = spec.get("format") == "binary"
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(spec["dsn"]) as conn, conn.cursor() as cursor:
        definition = ", ".join(f"{c} {types[c]}" for c in columns)
        cursor.execute(f"CREATE TABLE bare_copy ({definition})")
        source = pq.ParquetFile(spec["path"])
        batches = source.iter_batches(batch_size=200_000, columns=columns)
        sql = (f"COPY bare_copy ({', '.join(columns)}) FROM STDIN "
               f"(FORMAT {'binary' if binary else 'csv'})")
        with cursor.copy(sql) as copy:
            if binary:
                from pgpq import ArrowToPostgresBinaryEncoder

                encoder = None
                for batch in batches:
                    batch = pa.RecordBatch.from_arrays(
                        [c.dictionary_decode() if pa.types.is_dictionary(c.type)
                         else c for c in batch.columns],
                        names=batch.schema.names,
                    )
                    if encoder is None:
                        encoder = ArrowToPostgresBinaryEncoder(batch.schema)
                        copy.write(encoder.write_header())
                    copy.write(encoder.write_batch(batch))
                    rows += batch.num_rows
                if encoder is not None:
                    copy.write(encoder.finish())
            else:
                options = pacsv.WriteOptions(include_header=False)
                for batch in batches:
                    buffer = io.BytesIO()
                    pacsv.write_csv(batch, buffer, options)
                    copy.write(buffer.getbuffer())
                    rows += batch.num_rows
        conn.commit()
        seconds = time.perf_counter() - started
        cursor.execute("DROP TABLE bare_copy")
        conn.commit()
    return {"seconds": round(seconds, 3), "rows": rows}


def _read_inputs_pandas(spec: dict[str, Any]) -> tuple[Any, Any]:
    """The CSV files as the notebook would hold them (ids as text)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text = pacsv.ConvertOptions(column_types={
        "courseId": pa.string(), "studentId": pa.string(), "progress": pa.string(),
        "categories": pa.string(), "title": pa.string(),
    })
    courses = pacsv.read_csv(spec["courses"], convert_options=text).to_pandas()
    progress = pacsv.read_csv(spec["progress"], convert_options=text).to_pandas()
    return courses, progress


def _best_of(times: int, work: Callable[..., Any], *args: Any) -> float:
    """The shortest wall time of ``times`` calls of ``work(*args)``."""
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        work(*args)
        best = min(best, time.perf_counter() - started)
    return best


def _work_baseline_features(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the notebook's features against ours and compare their values."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    from baseline import baseline_features, exact_categories, substring_categories

    from recs.clean import read_encoded
    from recs.context import RunContext
    from recs.features import (
        category_means,
        course_categories,
        progress_matrix,
        student_features,
    )
    from recs.settings import Settings

    courses, progress = _read_inputs_pandas(spec)
    started = time.perf_counter()
    base = baseline_features(courses, progress, decimals=None)
    baseline_seconds = time.perf_counter() - started
    del progress

    # Both sides start from data in memory: the notebook's frames from the
    # source CSVs, our codes from the validated Parquet; neither pays for
    # reading.
    run = RunContext.from_dict(spec["run"])
    clean_courses, data = read_encoded(run)
    import scipy.sparse  # noqa: F401  (imports are outside both timings)
    import threadpoolctl  # noqa: F401

    def core(data: Any) -> None:
        pair_course, pair_category, labels = course_categories(
            clean_courses, data.courses, spec["separator"]
        )
        category_means(progress_matrix(data), pair_course, pair_category, len(labels))

    # Category means alone, then everything the features step computes
    # (means and course factors), from the same codes in memory: no
    # imports, no Parquet. Each is timed twice and the best kept, as the
    # first run of whichever goes first also pays for the process's fresh
    # memory.
    core_seconds = _best_of(2, core, data)
    in_memory_seconds = _best_of(
        2, student_features, data, clean_courses, Settings.from_env()
    )
    del data

    ours = pq.read_table(spec["features_path"]).to_pandas().set_index("student_id")
    names = list(base.columns)
    exact = [c for c in exact_categories(names) if c in ours.columns]
    common = base.index.intersection(ours.index)
    diff = np.abs(
        base.loc[common, exact].to_numpy(np.float64)
        - ours.loc[common, exact].to_numpy(np.float64)
    )
    wrong = substring_categories(names)
    off = {
        c: round(float(np.abs(base.loc[common, c].to_numpy()
                              - ours.loc[common, c].to_numpy()).max()), 4)
        for c in wrong if c in ours.columns
    }
    return {
        "seconds": round(baseline_seconds, 3),
        "ours_core_seconds": round(core_seconds, 3),
        "ours_in_memory_seconds": round(in_memory_seconds, 3),
        "students_baseline": len(base),
        "students_ours": len(ours),
        "students_compared": len(common),
        "categories_compared": len(exact),
        "categories_skipped": sorted(wrong),
        "max_abs_diff": float(diff.max()) if diff.size else None,
        "equal": bool(diff.size and diff.max() <= 1e-9
                      and len(common) == len(base) == len(ours)),
        "baseline_error_on_skipped": off,
        "ours_columns_missing_in_baseline": sorted(
            set(ours.columns) - set(names) - {"student_id"}
        ),
        "pandas": pd.__version__,
    }


def _work_baseline_recommend(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the notebook's per-cluster ``isin`` mastered-course step."""
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    from baseline import baseline_cluster_categories, baseline_cluster_mastered

    courses, progress = _read_inputs_pandas(spec)
    labels = (
        pq.read_table(spec["assignments_path"]).to_pandas()
        .set_index("student_id")["cluster_id"]
    )
    started = time.perf_counter()
    mastered = baseline_cluster_mastered(progress, labels)
    baseline_cluster_categories(courses, mastered)
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "clusters": len(mastered),
    }


WORKERS = {
    "step": _work_step,
    "read_csv": _work_read_csv,
    "copy": _work_copy,
    "baseline_features": _work_baseline_features,
    "baseline_recommend": _work_baseline_recommend,
}


def _small(summary: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts of a step summary (no long lists) for the report."""
    keep = {}
    for key, value in summary.items():
        scalar = isinstance(value, (int, float, str, bool)) or value is None
        small = isinstance(value, dict) and len(json.dumps(value, default=str)) < 600
        if scalar or small:
            keep[key] = value
    return keep


# --------------------------------------------------------------------------
# Orchestration (parent process)


def ensure_data(size: int, seed: int, rows_per_student: float) -> dict[str, Any]:
    """Generate the inputs for ``size`` students once; later runs reuse them."""
    directory = OUT / "data" / f"n{size}"
    marker = directory / "generated.json"
    wanted = {"students": size, "seed": seed, "rows_per_student": rows_per_student}
    if marker.exists():
        info = json.loads(marker.read_text())
        if all(info.get(k) == v for k, v in wanted.items()):
            return info
    from recs.generate import generate

    print(f"generating {size} students into {directory} ...", flush=True)
    info = generate(size, seed=seed, out_dir=directory,
                    rows_per_student=rows_per_student)
    info.update(wanted)
    marker.write_text(json.dumps(info))
    return info


def create_database(admin_url: str) -> tuple[str, str]:
    """Create a scratch database; return its name and DSN."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"recs_pipebench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    return name, make_conninfo(**params)


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    user = p.get("user", "postgres")
    auth = user + (f":{p['password']}" if p.get("password") else "")
    host = p.get("host", "127.0.0.1")
    port = p.get("port", "5432")
    return f"postgresql+psycopg://{auth}@{host}:{port}/{p['dbname']}"


def checkpoint(dsn: str) -> None:
    """Flush PostgreSQL's dirty pages so the next load starts from the same state."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def run_pipeline(size: int, data: dict[str, Any], warehouse: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Run every step once in its own process, then the repeats and anchors.

    The first pass gives the job's figures. Then, ``args.repeat`` times, the
    anchors (bare ``read_csv``; on PostgreSQL the bare COPYs) are measured,
    interleaved with another run of each step in :data:`REPEATED`, so that
    the ratios compare medians of samples taken side by side. On PostgreSQL
    every load (publish or bare COPY) starts after a ``CHECKPOINT``.
    """
    from recs.context import RunContext

    label = f"n{size}-{warehouse}"
    root = OUT / "runs" / label
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    database = dsn = None
    if warehouse == "postgres":
        database, dsn = create_database(args.pg_url)
        url = sqlalchemy_url(dsn)
    else:
        url = f"sqlite:///{root / 'warehouse.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECS_")}
    env.update({
        "RECS_COURSES": str(Path(data["courses_path"]).resolve()),
        "RECS_PROGRESS": str(Path(data["students_path"]).resolve()),
        "RECS_DATA_DIR": str(root / "var"),
        "RECS_WAREHOUSE_URL": url,
        "PYTHONPATH": str(REPO),
    })
    run = RunContext.create(root / "var", ds="2026-12-03", key=label)
    logs = OUT / "logs" / label
    steps: dict[str, dict[str, Any]] = {}
    anchors: dict[str, list[dict[str, Any]]] = {}
    files = {"courses": data["courses_path"], "progress": data["students_path"]}
    recs_path = (run.data_root / "recommendations" / f"ds={run.ds}"
                 / "student_recommendations.parquet")

    def step(name: str, tag: str) -> dict[str, Any]:
        if dsn and name == "publish":
            checkpoint(dsn)
        figures = measure("step", {"step": name, "run": run.as_dict()}, env,
                          logs, tag=tag)
        print(f"  {tag:<12} {figures['wall']:>8.2f} s wall "
              f"{figures.get('seconds', float('nan')):>8.2f} s in step "
              f"{figures['cpu']:>8.2f} s cpu {figures['rss_mib']:>8.0f} MiB",
              flush=True)
        return figures

    def anchor(kind: str, spec: dict[str, Any], tag: str) -> None:
        if dsn and kind == "copy":
            checkpoint(dsn)
        figures = measure(kind, spec, env, logs, tag=tag)
        anchors.setdefault(tag.rsplit("#", 1)[0], []).append(figures)
        print(f"  {tag:<12} {figures.get('seconds', float('nan')):>8.2f} s",
              flush=True)

    print(f"pipeline {label} ({database or url})", flush=True)
    try:
        for name in STEPS:
            steps[name] = step(name, name)
            if steps[name]["exit"] != 0:
                break
        complete = all(steps.get(s, {}).get("exit") == 0 for s in STEPS)
        for index in range(args.repeat if complete else 0):
            anchor("read_csv", files, f"read_csv#{index + 1}")
            for name in REPEATED:
                if name == "publish" and not dsn:
                    continue
                if index:
                    steps[name].setdefault("repeats", []).append(
                        step(name, f"{name}#{index + 1}")
                    )
                if name == "publish":
                    for form in ("csv", "binary"):
                        anchor("copy", {"dsn": dsn, "path": str(recs_path),
                                        "format": form},
                               f"copy_{form}#{index + 1}")
    finally:
        if database:
            drop_database(args.pg_url, database)
    return {"steps": steps, "anchors": anchors, "run": run.as_dict(),
            "env": env, "root": str(root)}


def step_rows(size: int, data: dict[str, Any], steps: dict[str, Any]) -> dict:
    """Counts each step's rows/s is based on."""
    validate = steps.get("validate", {}).get("summary", {})
    progress = validate.get("progress") or {}
    return {
        "progress_rows": data["rows"],
        "clean_rows": progress.get("kept", data["rows"]),
        "students": steps.get("cluster", {}).get("summary", {}).get("students", size),
        "recommendations": steps.get("recommend", {}).get("summary", {})
        .get("recommendations"),
    }


def bench_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    data = ensure_data(size, args.seed, args.rows_per_student)
    out: dict[str, Any] = {"size": size, "progress_rows": data["rows"],
                           "pipelines": {}}
    kept_root: str | None = None
    for warehouse in args.warehouses:
        pipeline = run_pipeline(size, data, warehouse, args)
        counts = step_rows(size, data, pipeline["steps"])
        for name, figures in pipeline["steps"].items():
            rows = counts.get(ROWS_OF[name]) if ROWS_OF[name] else None
            figures["rows"] = rows
            figures["rows_per_s"] = (
                round(rows / figures["seconds"]) if rows and figures.get("seconds")
                else None
            )
        steps = pipeline["steps"]
        complete = all(steps.get(s, {}).get("exit") == 0 for s in STEPS)
        out["pipelines"][warehouse] = {
            "steps": steps,
            "complete": complete,
            "total_wall": round(sum(f["wall"] for f in steps.values()), 2),
            "total_in_step": round(
                sum(f.get("seconds", 0) for f in steps.values()), 2
            ),
            "total_cpu": round(sum(f.get("cpu", 0) for f in steps.values()), 2),
            "peak_rss_mib": max(f["rss_mib"] for f in steps.values()),
            "anchors": pipeline["anchors"],
        }
        if kept_root is None and steps.get("recommend", {}).get("exit") == 0:
            kept_root, kept = pipeline["root"], pipeline
        elif not args.keep_runs:
            shutil.rmtree(pipeline["root"], ignore_errors=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECS_")}
    env["PYTHONPATH"] = str(REPO)
    logs = OUT / "logs" / f"n{size}-baseline"
    files = {"courses": data["courses_path"], "progress": data["students_path"]}
    if kept_root is not None and size <= args.baseline_max:
        run = kept["run"]
        var = Path(run["data_root"])
        ds = f"ds={run['ds']}"
        spec = {
            **files, "run": run, "separator": "|",
            "features_path": str(var / "features" / "student_category" / ds
                                 / "features.parquet"),
            "assignments_path": str(var / "clusters" / ds / "assignments.parquet"),
        }
        out["baseline_features"] = measure("baseline_features", spec, env, logs)
        print(f"  baseline features {out['baseline_features'].get('seconds')} s",
              flush=True)
        out["baseline_recommend"] = measure("baseline_recommend", spec, env, logs)
        print(f"  baseline recommend {out['baseline_recommend'].get('seconds')} s",
              flush=True)
    if kept_root is not None and not args.keep_runs:
        shutil.rmtree(kept_root, ignore_errors=True)
    return out


# --------------------------------------------------------------------------
# Report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _samples(figures: dict[str, Any] | None, *path: str) -> list[float]:
    """A measured value of the first pass and of every repeat, where present."""
    out = []
    for sample in [figures or {}, *((figures or {}).get("repeats") or [])]:
        value: Any = sample
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and sample.get("exit", 0) == 0:
            out.append(float(value))
    return out


def _anchor(pipeline: dict[str, Any], name: str, key: str = "seconds") -> list:
    return [a[key] for a in pipeline.get("anchors", {}).get(name, [])
            if a.get("exit") == 0 and isinstance(a.get(key), (int, float))]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _best(values: list[float]) -> float | None:
    return min(values) if values else None


def comparisons(result: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the anchors and the baseline, per warehouse.

    Ratios divide medians of the samples taken side by side (``*_best``:
    the fastest of each instead).
    """
    out: dict[str, Any] = {}
    base_f = result.get("baseline_features", {})
    base_r = result.get("baseline_recommend", {})
    for warehouse, pipeline in result["pipelines"].items():
        steps = pipeline["steps"]
        extract = _samples(steps.get("extract"), "seconds")
        read = _samples(steps.get("extract"), "summary", "phase_seconds", "read")
        bare_read = _anchor(pipeline, "read_csv")
        bare_write = _anchor(pipeline, "read_csv", "write_seconds")
        bare_both = [r + w for r, w in zip(bare_read, bare_write, strict=False)]
        features = _samples(steps.get("features"), "seconds")
        entry = {
            "extract_read_vs_read_csv": _ratio(_median(read), _median(bare_read)),
            "extract_read_vs_read_csv_best": _ratio(_best(read), _best(bare_read)),
            "extract_vs_read_csv": _ratio(_median(extract), _median(bare_read)),
            "extract_vs_read_and_write": _ratio(_median(extract),
                                                _median(bare_both)),
            "features_speedup_vs_baseline": _ratio(base_f.get("seconds"),
                                                   _median(features)),
            "features_in_memory_speedup_vs_baseline": _ratio(
                base_f.get("seconds"), base_f.get("ours_in_memory_seconds")),
            "features_core_speedup_vs_baseline": _ratio(
                base_f.get("seconds"), base_f.get("ours_core_seconds")),
            "recommend_speedup_vs_baseline_isin": _ratio(
                base_r.get("seconds"), steps.get("recommend", {}).get("seconds")),
        }
        publish = _samples(steps.get("publish"), "seconds")
        load = _samples(steps.get("publish"), "summary", "seconds", "load")
        copy_csv, copy_binary = (_anchor(pipeline, "copy_csv"),
                                 _anchor(pipeline, "copy_binary"))
        if copy_csv:
            entry.update({
                "publish_vs_copy": _ratio(_median(publish), _median(copy_csv)),
                "publish_vs_copy_best": _ratio(_best(publish), _best(copy_csv)),
                "publish_vs_copy_binary": _ratio(_median(publish),
                                                 _median(copy_binary)),
                "publish_load_vs_copy_binary": _ratio(_median(load),
                                                      _median(copy_binary)),
            })
        out[warehouse] = entry
    return out


def scaling(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Time ratio per step between consecutive sizes (10x size: ~10x = linear)."""
    out: dict[str, Any] = {}
    ordered = sorted(results, key=lambda r: r["size"])
    for small, large in zip(ordered, ordered[1:], strict=False):
        key = f"{small['size']}->{large['size']}"
        out[key] = {"size_ratio": round(large["size"] / small["size"], 2)}
        for warehouse in large["pipelines"]:
            if warehouse not in small["pipelines"]:
                continue
            a, b = small["pipelines"][warehouse], large["pipelines"][warehouse]
            ratios = {
                step: _ratio(b["steps"].get(step, {}).get("seconds"),
                             a["steps"].get(step, {}).get("seconds"))
                for step in STEPS
            }
            ratios["total_in_step"] = _ratio(b["total_in_step"], a["total_in_step"])
            ratios["total_wall"] = _ratio(b["total_wall"], a["total_wall"])
            out[key][warehouse] = ratios
    return out


def render(report: dict[str, Any]) -> str:
    """The report as Markdown tables (also printed)."""
    lines = [
        f"# Pipeline benchmark, {report['started']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}",
        "",
        "wall = the step's whole process (start-up and imports included); "
        "in step = the step's own work; rows/s = main input rows / in-step "
        "seconds (progress rows; students for cluster; recommendation rows "
        "for publish).",
    ]
    for result in report["results"]:
        for warehouse, pipeline in result["pipelines"].items():
            lines += [
                "",
                f"## {result['size']:,} students, {result['progress_rows']:,} "
                f"progress rows, {warehouse}",
                "",
                "| step | wall s | in step s | CPU s | peak RSS MiB | rows/s |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for step, f in pipeline["steps"].items():
                status = "" if f["exit"] == 0 else " (FAILED)"
                lines.append(
                    f"| {step}{status} | {_fmt(f['wall'])} | "
                    f"{_fmt(f.get('seconds'))} | {_fmt(f.get('cpu'))} | "
                    f"{_fmt(f['rss_mib'], 0)} | "
                    f"{_fmt(f.get('rows_per_s'))} |"
                )
            lines.append(
                f"| **total** | **{_fmt(pipeline['total_wall'])}** | "
                f"**{_fmt(pipeline['total_in_step'])}** | "
                f"**{_fmt(pipeline['total_cpu'])}** | "
                f"**{_fmt(pipeline['peak_rss_mib'], 0)}** (max) | |"
            )
        lines += ["", f"Repeated steps and anchors at {result['size']:,} "
                  "(in-step seconds of each sample; median, best):", ""]
        for warehouse, pipeline in result["pipelines"].items():
            steps = pipeline["steps"]
            rows = [
                ("extract (whole step)", _samples(steps.get("extract"), "seconds")),
                ("extract: reading the CSVs",
                 _samples(steps.get("extract"), "summary", "phase_seconds", "read")),
                ("extract: writing the snapshot",
                 _samples(steps.get("extract"), "summary", "phase_seconds", "write")),
                ("bare `pyarrow.csv.read_csv`", _anchor(pipeline, "read_csv")),
                ("bare `pyarrow.parquet.write_table` of it",
                 _anchor(pipeline, "read_csv", "write_seconds")),
                ("features", _samples(steps.get("features"), "seconds")),
                ("publish", _samples(steps.get("publish"), "seconds")),
                ("publish: load",
                 _samples(steps.get("publish"), "summary", "seconds", "load")),
                ("publish: index",
                 _samples(steps.get("publish"), "summary", "seconds", "index")),
                ("bare COPY, CSV", _anchor(pipeline, "copy_csv")),
                ("bare COPY, binary", _anchor(pipeline, "copy_binary")),
            ]
            for label, values in rows:
                if values:
                    lines.append(
                        f"- {warehouse}, {label}: "
                        + ", ".join(_fmt(v) for v in values)
                        + f" (median {_fmt(_median(values))}, "
                        f"best {_fmt(_best(values))})"
                    )
        base_f = result.get("baseline_features")
        if base_f:
            lines.append(
                f"- notebook features: {_fmt(base_f.get('seconds'))} s "
                f"(ours from the same data in memory: "
                f"{_fmt(base_f.get('ours_in_memory_seconds'))} s, category "
                f"means only {_fmt(base_f.get('ours_core_seconds'))} s); values "
                f"equal on "
                f"{base_f.get('categories_compared')} exact categories x "
                f"{_fmt(base_f.get('students_compared'))} students: "
                f"**{base_f.get('equal')}** (max abs diff "
                f"{base_f.get('max_abs_diff')}); skipped (substring-wrong): "
                f"{', '.join(base_f.get('categories_skipped') or [])}; "
                f"baseline's error there: {base_f.get('baseline_error_on_skipped')}"
            )
        base_r = result.get("baseline_recommend")
        if base_r:
            lines.append(f"- notebook per-cluster isin mastered step: "
                         f"{_fmt(base_r.get('seconds'))} s")
        for warehouse, ratios in report["comparisons"][str(result["size"])].items():
            lines.append(f"- ratios ({warehouse}): " + ", ".join(
                f"{k} {_fmt(v)}" for k, v in ratios.items()))
    for key, per_warehouse in report["scaling"].items():
        lines += ["", f"## Time ratio {key} (size x{per_warehouse['size_ratio']}, "
                  "in-step seconds; ~10 = linear)", ""]
        warehouses = [w for w in per_warehouse if w != "size_ratio"]
        lines.append("| step | " + " | ".join(warehouses) + " |")
        lines.append("|---|" + "---:|" * len(warehouses))
        for step in [*STEPS, "total_in_step", "total_wall"]:
            lines.append(f"| {step} | " + " | ".join(
                _fmt(per_warehouse[w].get(step)) for w in warehouses) + " |")
    lines += ["", "## Targets", ""]
    for line in report["verdicts"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def verdicts(report: dict[str, Any]) -> list[str]:
    """Each target against the largest size measured."""
    out = []
    largest = max(report["results"], key=lambda r: r["size"])
    size = largest["size"]
    for warehouse, pipeline in largest["pipelines"].items():
        ok = pipeline["complete"] and pipeline["total_wall"] <= TARGETS["job_seconds"]
        out.append(f"{size:,} {warehouse}: job wall {pipeline['total_wall']} s "
                   f"(target <= {TARGETS['job_seconds']:.0f} s): "
                   f"{'met' if ok else 'NOT met'}")
        ok = pipeline["peak_rss_mib"] <= TARGETS["peak_rss_mib"]
        out.append(f"{size:,} {warehouse}: peak RSS {pipeline['peak_rss_mib']} MiB "
                   f"(target <= {TARGETS['peak_rss_mib']:.0f}): "
                   f"{'met' if ok else 'NOT met'}")
    checks = (
        ("extract_read_vs_read_csv", "extract's reading of the CSVs / bare read_csv",
         "extract_vs_read_csv", "<="),
        ("extract_vs_read_and_write",
         "whole extract / (bare read_csv + bare Parquet write)", "extract_vs_read_csv",
         "<="),
        ("publish_vs_copy", "publish / bare COPY (CSV)", "publish_vs_copy", "<="),
        ("publish_vs_copy_binary", "publish / bare COPY (binary)",
         "publish_vs_copy", "<="),
        ("features_speedup_vs_baseline", "features step speed-up over the notebook",
         "baseline_features_speedup", ">="),
    )
    for warehouse, ratios in report["comparisons"][str(size)].items():
        for key, label, target, sense in checks:
            value = ratios.get(key)
            if value is None:
                continue
            limit = TARGETS[target]
            met = value <= limit if sense == "<=" else value >= limit
            out.append(f"{size:,} {warehouse}: {label} = {value} (median; target "
                       f"{sense} {limit:g}): {'met' if met else 'NOT met'}")
    base_f = largest.get("baseline_features")
    if base_f:
        out.append(f"{size:,}: features equal to the baseline on exact categories: "
                   f"{base_f.get('equal')}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated numbers of students")
    parser.add_argument("--warehouse", default="both",
                        choices=("sqlite", "postgres", "both"))
    parser.add_argument("--pg-url", default=os.environ.get("RECS_BENCH_PG_URL",
                                                           DEFAULT_PG_URL),
                        help="admin DSN used to create and drop scratch databases")
    parser.add_argument("--repeat", type=int, default=3,
                        help="samples of the repeated steps and their anchors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-student", type=float, default=20.0)
    parser.add_argument("--baseline-max", type=int, default=10**7,
                        help="skip the notebook baseline above this many students")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep each run's files under bench/out/runs/")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, Path(args.spec))

    sys.path.insert(0, str(REPO))
    args.warehouses = (("sqlite", "postgres") if args.warehouse == "both"
                       else (args.warehouse,))
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/pipeline_bench.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, "
                   f"Python {platform.python_version()}",
        "targets": TARGETS,
        "results": [],
    }
    for size in sizes:
        report["results"].append(bench_size(size, args))
    report["comparisons"] = {str(r["size"]): comparisons(r) for r in report["results"]}
    report["scaling"] = scaling(report["results"])
    report["verdicts"] = verdicts(report)
    text = render(report)
    print("\n" + text)
    suffix = f"-{args.tag}" if args.tag else ""
    (OUT / f"pipeline_bench{suffix}.json").write_text(
        json.dumps(report, indent=2, default=str))
    (OUT / f"pipeline_bench{suffix}.md").write_text(text)
    print(f"wrote {OUT / f'pipeline_bench{suffix}.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
