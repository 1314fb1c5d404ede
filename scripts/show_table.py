"""Print where the recommendation table is and a few of its rows."""

from __future__ import annotations

import sys

import sqlalchemy as sa

from recs.settings import mask_url


def main(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT COUNT(*) FROM student_recommendations"))
        rows = conn.execute(sa.text(
            "SELECT student_id, rank, course_id, score, strategy, reason "
            "FROM student_recommendations ORDER BY student_id, rank LIMIT 12"
        )).all()
        count = total.scalar_one()
    print(f"\nstudent_recommendations in {mask_url(url)}: {count} rows; first rows:")
    header = ("student", "rank", "course", "score", "strategy")
    print("{:<10} {:>4}  {:<8} {:>6}  {:<9} reason".format(*header))
    for row in rows:
        print(f"{row.student_id:<10} {row.rank:>4}  {row.course_id:<8} "
              f"{row.score:>6.3f}  {row.strategy:<9} {row.reason}")
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
