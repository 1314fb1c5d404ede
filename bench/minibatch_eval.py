"""Compare mini-batch k-means with full k-means on the offline evaluation.

For each data set (the bundled sample, MovieLens, OULAD and a generated
population of ``--students`` students), this validates the inputs once and
then runs the offline evaluation (``recs.evaluate``) twice on the same
validated rows: once with scikit-learn's ``KMeans`` and once with
``MiniBatchKMeans`` (the estimator the cluster step switches to above
``minibatch_above`` students). It prints, per estimator, the cluster
recommender's figures at 10, the popularity baseline's recall for scale, and
the seconds the clustering method took. Usage (from the repository root)::

    .venv/bin/python bench/minibatch_eval.py --students 1000000

MovieLens and OULAD are read from ``../shared/data`` (see
``scripts/evaluation_table.py``); the generated data set is cached under
``bench/out/data`` like the pipeline benchmark's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ESTIMATORS = {"KMeans": 10**12, "MiniBatchKMeans": 0}


def _data_sets(work: Path, students: int) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(REPO / "scripts"))
    from evaluation_table import data_sets

    sets = data_sets(work)
    sets.pop("MovieLens (time split)")
    if students:
        sys.path.insert(0, str(HERE))
        from pipeline_bench import ensure_data

        data = ensure_data(students, seed=0, rows_per_student=20.0)
        sets[f"generated, {students:,} students"] = {
            "courses": data["courses_path"],
            "progress": data["students_path"],
        }
    return sets


def compare(name: str, overrides: dict[str, Any], work: Path) -> list[str]:
    """Evaluate one data set with each estimator; return Markdown rows."""
    from recs.clean import read_encoded
    from recs.context import RunContext
    from recs.evaluate import evaluate_data
    from recs.extract import extract
    from recs.settings import Settings
    from recs.validate import validate

    settings = Settings.from_env(env={}, data_dir=str(work), **overrides)
    run = RunContext.create(settings.data_root, ds="2026-12-03")
    extract(run, settings)
    validate(run, settings)
    courses, data = read_encoded(run)
    rows = []
    for estimator, minibatch_above in ESTIMATORS.items():
        chosen = dataclasses.replace(settings, minibatch_above=minibatch_above)
        report = evaluate_data(courses, data, chosen)
        clusters, popularity = report["clusters"], report["popularity"]
        seconds = report["details"]["seconds"]["clusters"]
        rows.append(
            f"| {name} | {estimator} | {clusters['recall_at_10']:.4f} | "
            f"{clusters['ndcg_at_10']:.4f} | {clusters['hit_rate_at_10']:.4f} | "
            f"{popularity['recall_at_10']:.4f} | {report['students_evaluated']:,} | "
            f"{seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=1_000_000,
                        help="size of the generated data set (0: none)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    header = (
        "| data set | estimator | recall@10 | NDCG@10 | hit rate@10 "
        "| popularity recall@10 | students evaluated | clusters method s |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    print(header, flush=True)
    with tempfile.TemporaryDirectory(dir=HERE / "out") as scratch:
        work = Path(scratch)
        rows = []
        for index, (name, overrides) in enumerate(
            _data_sets(work, args.students).items()
        ):
            rows += compare(name, overrides, work / f"set{index}")
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
