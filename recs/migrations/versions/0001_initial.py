"""Create the run ledger, the quarantine log and the empty reader views.

The reader views select typed NULLs and no rows until the first publish
re-points them at a run's tables, so apps can query them from the start.
Their columns are frozen here as they were at this revision; later revisions
that change a reader table must also change every retained run table.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_READER_VIEWS = {
    "student_recommendations": (
        ("student_id", sa.Text()),
        ("rank", sa.Integer()),
        ("course_id", sa.Text()),
        ("score", sa.Float()),
        ("cluster_id", sa.Integer()),
        ("strategy", sa.Text()),
        ("reason", sa.Text()),
    ),
    "student_clusters": (
        ("student_id", sa.Text()),
        ("cluster_id", sa.Integer()),
    ),
    "cluster_categories": (
        ("cluster_id", sa.Integer()),
        ("category", sa.Text()),
        ("share", sa.Float()),
        ("mastered", sa.Integer()),
    ),
    "popular_courses": (
        ("rank", sa.Integer()),
        ("course_id", sa.Text()),
        ("score", sa.Float()),
        ("reason", sa.Text()),
    ),
}
_STAMPS = (("run_id", sa.Text()), ("generated_at", sa.DateTime(timezone=True)))


def upgrade() -> None:
    op.create_table(
        "recommendation_runs",
        sa.Column("run_id", sa.Text(), primary_key=True),
        sa.Column("ds", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("rows_in", sa.BigInteger()),
        sa.Column("rows_out", sa.BigInteger()),
        sa.Column("quarantined", sa.BigInteger()),
        sa.Column("students", sa.BigInteger()),
        sa.Column("recommendations", sa.BigInteger()),
        sa.Column("n_clusters", sa.Integer()),
        sa.Column("inertia", sa.Float()),
        sa.Column("silhouette", sa.Float()),
        sa.Column("recall_at_10", sa.Float()),
        sa.Column("summary", sa.Text()),
        sa.Column("table_key", sa.Text()),
        sa.CheckConstraint(
            "status IN ('running', 'published', 'failed', 'rolled_back', "
            "'superseded')",
            name="ck_recommendation_runs_status",
        ),
    )
    op.create_index("ix_recommendation_runs_ds", "recommendation_runs", ["ds"])
    op.create_index(
        "uq_recommendation_runs_current",
        "recommendation_runs",
        ["is_current"],
        unique=True,
        postgresql_where=sa.text("is_current"),
        sqlite_where=sa.text("is_current"),
    )
    op.create_table(
        "quarantine",
        sa.Column("source", sa.Text()),
        sa.Column("row_number", sa.BigInteger()),
        sa.Column("column", sa.Text()),
        sa.Column("value", sa.Text()),
        sa.Column("reason", sa.Text()),
        sa.Column("run_id", sa.Text(), nullable=False),
    )
    op.create_index("ix_quarantine_run_id", "quarantine", ["run_id"])

    dialect = op.get_bind().dialect
    quote = dialect.identifier_preparer.quote
    for name, columns in _READER_VIEWS.items():
        select = ", ".join(
            f"CAST(NULL AS {type_.compile(dialect=dialect)}) AS {quote(column)}"
            for column, type_ in columns + _STAMPS
        )
        op.execute(f"CREATE VIEW {quote(name)} AS SELECT {select} WHERE 1 = 0")


def downgrade() -> None:
    bind = op.get_bind()
    quote = bind.dialect.identifier_preparer.quote
    for name in _READER_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {quote(name)}")
    for table in sa.inspect(bind).get_table_names():
        if table.split("__")[0] in _READER_VIEWS and "__" in table:
            op.drop_table(table)
    op.drop_index("ix_quarantine_run_id", table_name="quarantine")
    op.drop_table("quarantine")
    op.drop_index("uq_recommendation_runs_current", table_name="recommendation_runs")
    op.drop_index("ix_recommendation_runs_ds", table_name="recommendation_runs")
    op.drop_table("recommendation_runs")
