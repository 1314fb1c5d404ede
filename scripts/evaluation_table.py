"""Evaluate every data set the README reports on, and print the Markdown table.

Usage (from the repository root, with shared/ beside it)::

    .venv/bin/python scripts/evaluation_table.py [--data-dir /tmp/recs-eval]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from recs.evaluate import METHODS, evaluate_sources
from recs.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MOVIELENS = {
    "courses": str(SHARED / "movielens-small-2018" / "movies.csv"),
    "progress": str(SHARED / "movielens-small-2018" / "ratings.csv"),
    "course_id_column": "movieId",
    "categories_column": "genres",
    "student_id_column": "userId",
    "progress_course_id_column": "movieId",
    "progress_column": "rating",
    "progress_format": "number",
    "progress_scale": 5.0,
    "no_category_values": ("(no genres listed)",),
}


def data_sets(work: Path) -> dict[str, dict[str, Any]]:
    """Settings overrides of each data set, by the name shown in the table."""
    oulad_db = work / "oulad.db"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/oulad/load_oulad.py"),
            str(SHARED / "oulad"),
            f"sqlite:///{oulad_db}",
        ],
        check=True,
        capture_output=True,
    )
    return {
        "sample": {},
        "MovieLens (random split)": MOVIELENS,
        "MovieLens (time split)": {**MOVIELENS, "timestamp_column": "timestamp"},
        "OULAD (>= 2 mastered)": {
            "source_url": f"sqlite:///{oulad_db}",
            "courses_query": (ROOT / "examples/oulad/courses.sql").read_text(),
            "progress_query": (ROOT / "examples/oulad/progress.sql").read_text(),
            "progress_format": "number",
            "progress_scale": 100.0,
            "min_mastered_for_eval": 2,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/recs-eval"))
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(
        "| data set | method | precision@10 | recall@10 | NDCG@10 | hit rate@10 "
        "| coverage | students |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for index, (name, overrides) in enumerate(data_sets(args.data_dir).items()):
        settings = Settings.from_env(
            env={}, data_dir=str(args.data_dir / f"set{index}"), **overrides
        )
        report = evaluate_sources(settings, ds="2026-12-03")
        for method in METHODS:
            m = report[method]
            print(
                f"| {name} | {method} | {m['precision_at_10']:.4f} | "
                f"{m['recall_at_10']:.4f} | {m['ndcg_at_10']:.4f} | "
                f"{m['hit_rate_at_10']:.4f} | {m['coverage']:.4f} | "
                f"{report['students_evaluated']} |"
            )


if __name__ == "__main__":
    main()
