"""Load the OULAD CSV files into a SQL source database, as a platform's own DB.

Usage::

    python examples/oulad/load_oulad.py ../shared/data/oulad sqlite:///var/oulad.db

Every table keeps its file name (``courses``, ``assessments``, ``vle``,
``studentInfo``, ``studentRegistration``, ``studentAssessment``) and its
columns as text, as read; the queries beside this script do the join.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

TABLES = (
    "courses", "assessments", "vle", "studentInfo", "studentRegistration",
    "studentAssessment",
)


def load(source_dir: Path, url: str) -> dict[str, int]:
    """Copy each OULAD file into a table of the same name; return row counts."""
    engine = sa.create_engine(url)
    counts = {}
    with engine.begin() as conn:
        for name in TABLES:
            frame = pd.read_csv(
                source_dir / f"{name}.csv", dtype=str, keep_default_na=False
            )
            frame.to_sql(name, conn, if_exists="replace", index=False)
            counts[name] = len(frame)
    engine.dispose()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="folder with the OULAD CSVs")
    parser.add_argument("url", help="SQLAlchemy URL of the database to fill")
    args = parser.parse_args()
    Path("var").mkdir(exist_ok=True)
    for name, rows in load(args.source_dir, args.url).items():
        print(f"{name}: {rows} rows")


if __name__ == "__main__":
    main()
