"""The ``recs`` command line: run the pipeline, inspect and manage its output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recs.errors import RecsError
from recs.settings import Settings, mask_url

logger = logging.getLogger(__name__)


def _source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("source")
    group.add_argument("--courses", help="courses file (CSV or Parquet, path or URL)")
    group.add_argument("--progress", help="progress file (CSV or Parquet, path or URL)")
    group.add_argument("--source-url", help="SQLAlchemy URL of a source database")
    group.add_argument(
        "--courses-query", help="SQL giving the courses; @FILE reads it from FILE"
    )
    group.add_argument(
        "--progress-query", help="SQL giving the progress; @FILE reads it from FILE"
    )
    group.add_argument("--course-id-column", help="courses: id column (courseId)")
    group.add_argument("--title-column", help="courses: title column (title)")
    group.add_argument("--categories-column", help="courses: categories (categories)")
    group.add_argument(
        "--student-id-column", help="progress: student column (studentId)"
    )
    group.add_argument(
        "--progress-course-id-column", help="progress: course column (courseId)"
    )
    group.add_argument("--progress-column", help="progress: value column (progress)")
    group.add_argument("--timestamp-column", help="progress: last-activity column")
    group.add_argument(
        "--progress-format",
        choices=("percent", "number"),
        help="percent strings like 85%% (default) or plain numbers",
    )
    group.add_argument(
        "--progress-scale",
        type=float,
        help="top of the scale for --progress-format number, e.g. 100, 1, 5",
    )
    group.add_argument(
        "--no-category",
        action="append",
        dest="no_category_values",
        metavar="VALUE",
        help="a categories value meaning 'none', e.g. '(no genres listed)'",
    )
    group.add_argument("--csv-delimiter", help="field delimiter of CSV sources (,)")
    group.add_argument("--category-separator", help="separator of categories (|)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", help="run date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--warehouse", dest="warehouse_url", help="warehouse URL")
    parser.add_argument("--data-dir", help="data root for Parquet outputs (./var)")
    parser.add_argument(
        "--n-clusters",
        type=_clusters,
        help="number of clusters, or 'auto' (default 20)",
    )
    parser.add_argument("--top-n", type=int, help="recommendations per student (10)")
    parser.add_argument("--random-state", type=int, help="seed (0)")
    parser.add_argument("--mastery-threshold", type=float, help="mastered above (0.9)")
    parser.add_argument(
        "--min-mastered-for-eval",
        type=int,
        metavar="N",
        help="evaluate students with at least N mastered courses (5)",
    )
    parser.add_argument(
        "--max-bad-share",
        type=float,
        metavar="FRACTION",
        help="largest share of bad rows per input before the run stops (0.05)",
    )


def _clusters(value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or 'auto', got {value!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``recs`` command."""
    parser = argparse.ArgumentParser(
        prog="recs", description="Course recommendations from learning progress."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (-v info, -vv debug)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every step for one date")
    _source_options(run)
    _run_options(run)
    run.add_argument(
        "--skip-quality-gate",
        action="store_true",
        help="publish even if the offline evaluation gate fails (this run only)",
    )

    evaluate = commands.add_parser("evaluate", help="offline evaluation on a holdout")
    _source_options(evaluate)
    _run_options(evaluate)
    evaluate.add_argument("--report", type=Path, help="also write the JSON report here")

    show = commands.add_parser("show", help="print one student's recommendations")
    show.add_argument("student_id")
    show.add_argument("--warehouse", dest="warehouse_url")

    runs = commands.add_parser("runs", help="list recent runs from the ledger")
    runs.add_argument("--warehouse", dest="warehouse_url")
    runs.add_argument("--limit", type=int, default=10)
    runs.add_argument("--json", action="store_true", help="one JSON object per run")

    rollback = commands.add_parser("rollback", help="put the previous run back")
    rollback.add_argument("--warehouse", dest="warehouse_url")

    generate = commands.add_parser(
        "generate",
        help="write synthetic source data",
        description="Write courses.csv and students.csv in the source format: "
        "skewed course popularity, students with a few interest groups, about "
        "20 progress rows each; the same seed gives the same bytes.",
    )
    generate.add_argument("--students", type=int, required=True,
                          help="number of students")
    generate.add_argument("--courses", type=int, default=100,
                          help="size of the catalogue (default 100)")
    generate.add_argument("--seed", type=int, default=0,
                          help="random seed (default 0)")
    generate.add_argument("--out", type=Path, required=True,
                          help="folder for courses.csv and students.csv")
    return parser


SETTING_ARGS = (
    "courses",
    "progress",
    "source_url",
    "courses_query",
    "progress_query",
    "course_id_column",
    "title_column",
    "categories_column",
    "student_id_column",
    "progress_course_id_column",
    "progress_column",
    "timestamp_column",
    "progress_format",
    "progress_scale",
    "no_category_values",
    "csv_delimiter",
    "category_separator",
    "warehouse_url",
    "data_dir",
    "n_clusters",
    "top_n",
    "random_state",
    "mastery_threshold",
    "max_bad_share",
    "min_mastered_for_eval",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the options given."""
    overrides = {name: getattr(args, name, None) for name in SETTING_ARGS}
    for name in ("courses_query", "progress_query"):
        query = overrides.get(name)
        if query and query.startswith("@"):
            overrides[name] = Path(query[1:]).read_text()
    if getattr(args, "skip_quality_gate", False):
        overrides["quality_gate"] = False
    return Settings.from_env(**overrides)


def _progress_printer(started: float) -> Any:
    step_started = {}

    def on_step(name: str, index: int, total: int, summary: dict | None) -> None:
        if summary is None:
            step_started[name] = time.perf_counter()
            print(f"[{index}/{total}] {name} ...", file=sys.stderr, flush=True)
            return
        seconds = time.perf_counter() - step_started[name]
        print(
            f"[{index}/{total}] {name} done in {seconds:.1f} s: "
            f"{_brief(name, summary)}",
            file=sys.stderr,
            flush=True,
        )

    return on_step


def _brief(name: str, summary: dict[str, Any]) -> str:
    if name == "extract":
        return (
            f"{summary['courses']['rows']} course rows, "
            f"{summary['progress']['rows']} progress rows"
        )
    if name == "validate":
        c, p = summary["courses"], summary["progress"]
        return (
            f"kept {c['kept']} courses, {p['kept']} progress rows; quarantined "
            f"{c['quarantined']} + {p['quarantined']}, {p.get('duplicates', 0)} "
            "duplicates"
        )
    if name == "features":
        return f"{summary['students']} students x {summary['categories']} categories"
    if name == "cluster":
        return f"k={summary['n_clusters']}, silhouette {_num(summary['silhouette'], 3)}"
    if name == "recommend":
        return (
            f"{summary['recommendations']} rows ({summary['fallback_rows']} fallback)"
        )
    if name == "evaluate":
        metrics = summary.get("metrics") or {}
        return (
            f"recall@10 {_num(metrics.get('recall_at_10'), 4)}; gate: "
            f"{(summary.get('gate') or {}).get('status')}"
        )
    if name == "publish":
        return f"published run {summary.get('run_id')}"
    return ""


def cmd_run(args: argparse.Namespace) -> int:
    from recs.pipeline import run_pipeline

    settings = settings_from_args(args)
    started = time.perf_counter()
    run, results = run_pipeline(
        settings, ds=args.date, on_step=_progress_printer(started)
    )
    validate = results["validate"]
    if settings.uses_sql_source:
        source = f"SQL on {mask_url(settings.source_url or '')}"
    else:
        source = f"{settings.courses}, {settings.progress}"
    if settings.uses_sample:
        source += " (the bundled sample)"
    print(
        f"run {run.run_id} for {run.ds} published in "
        f"{time.perf_counter() - started:.1f} s"
    )
    print(f"  inputs:              {source}")
    print(f"  progress rows in:    {validate['progress']['rows']}")
    progress, courses = validate["progress"], validate["courses"]
    print(
        f"  quarantined rows:    {progress['quarantined']} progress, "
        f"{courses['quarantined']} courses ({progress['bad']} + {courses['bad']} "
        "bad source rows)"
    )
    print(
        f"  students:            {results['cluster']['students']} in "
        f"{results['cluster']['n_clusters']} clusters"
    )
    print(f"  recommendations:     {results['recommend']['recommendations']}")
    metrics = results.get("evaluate", {}).get("metrics") or {}
    if metrics:
        print(f"  recall@10:           {_num(metrics.get('recall_at_10'), 4)}")
    print(f"  warehouse:           {mask_url(settings.warehouse_url)}")
    print(f"  data:                {run.run_dir.parent.parent}")
    print(f"  data docs:           {validate.get('data_docs')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recs.evaluate import evaluate_sources, format_table

    settings = settings_from_args(args)
    if args.report is not None:
        if args.report.is_dir():
            raise ValueError(f"--report {args.report} is a directory, expected a file")
        if not args.report.parent.is_dir():
            raise ValueError(
                f"--report {args.report}: folder {args.report.parent} does not exist"
            )
    report = evaluate_sources(settings, ds=args.date, report_path=args.report)
    print(format_table(report))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from recs import warehouse

    with _existing_warehouse(args.warehouse_url) as engine:
        found = warehouse.student_recommendations(engine, args.student_id)
        if found is None:
            print(
                f"student {args.student_id!r} has no recommendations in the current "
                "run; the fallback list for new students is:"
            )
            rows = warehouse.popular_courses(engine)
            for row in rows:
                print(f"  {row['rank']:>3}  {row['course_id']:<12} {row['reason']}")
            return 0
        print(
            f"student {args.student_id}: cluster {found['cluster_id']} "
            f"(run {found['run_id']})"
        )
        for row in found["recommendations"]:
            print(
                f"  {row['rank']:>3}  {row['course_id']:<12} {row['score']:.3f}  "
                f"{row['strategy']:<8}  {row['reason']}"
            )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from recs import warehouse

    with _existing_warehouse(args.warehouse_url) as engine:
        rows = warehouse.recent_runs(engine, limit=args.limit)
        if args.json:
            for row in rows:
                print(json.dumps(row, default=str))
            return 0
        print(
            f"{'run_id':<20} {'ds':<10} {'status':<11} {'current':<7} "
            f"{'tables':<7} {'students':>8} {'recs':>8} {'quarant.':>8} {'k':>3} "
            f"{'recall@10':>9}  reason"
        )
        for row in rows:
            # A run whose tables retention dropped cannot be rolled back to.
            tables = "kept" if row.get("table_key") else "-"
            print(
                f"{row['run_id']:<20} {row['ds']:<10} {row['status']:<11} "
                f"{'yes' if row.get('is_current') else '':<7} {tables:<7} "
                f"{_num(row.get('students')):>8} "
                f"{_num(row.get('recommendations')):>8} "
                f"{_num(row.get('quarantined')):>8} "
                f"{_num(row.get('n_clusters')):>3} "
                f"{_num(row.get('recall_at_10'), 4):>9}  "
                f"{(row.get('reason') or '')[:60]}"
            )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from recs import warehouse

    with _existing_warehouse(args.warehouse_url) as engine:
        result = warehouse.rollback(engine)
    print(f"rolled back: current run is now {result.get('run_id')}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from recs.generate import generate

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file, expected a folder")
    summary = generate(
        n_students=args.students,
        n_courses=args.courses,
        seed=args.seed,
        out_dir=args.out,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


@contextmanager
def _existing_warehouse(url: str | None) -> Iterator[Any]:
    """Engine of a warehouse that has been published to; error if there is none."""
    import sqlalchemy as sa

    from recs import warehouse
    from recs.errors import NoPublishedRunError

    url = Settings.from_env(warehouse_url=url).warehouse_url
    parsed = sa.engine.make_url(url)
    database = parsed.database or ""
    on_disk = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if on_disk and not Path(database).exists():
        raise NoPublishedRunError(
            f"no warehouse at {mask_url(url)}: nothing was published there "
            "(give --warehouse or set RECS_WAREHOUSE_URL)"
        )
    engine = warehouse.get_engine(url)
    try:
        if not sa.inspect(engine).has_table("recommendation_runs"):
            raise NoPublishedRunError(
                f"{mask_url(url)} holds no recommendation tables: nothing was "
                "published there"
            )
        yield engine
    finally:
        engine.dispose()


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else str(value)


COMMANDS = {
    "run": cmd_run,
    "evaluate": cmd_evaluate,
    "show": cmd_show,
    "runs": cmd_runs,
    "rollback": cmd_rollback,
    "generate": cmd_generate,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recs`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader stopped early (``recs runs | head``): not an error. Point
        # stdout at /dev/null so that the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # one clear line for the operator, details on -v
        print(f"recs {args.command}: error: {_explain(err)}", file=sys.stderr)
        if args.verbose:
            logger.exception("details")
        return 1


def _explain(err: Exception) -> str:
    """The reason of a failure in one line, without a traceback."""
    if isinstance(err, RecsError | ValueError | OSError):
        return str(err)
    original = getattr(err, "orig", None)
    text = str(original if original is not None else err).strip()
    first = text.splitlines()[0] if text else ""
    name = type(original if original is not None else err).__name__
    return f"{name}: {first} (run with -v for details)"


if __name__ == "__main__":
    sys.exit(main())
