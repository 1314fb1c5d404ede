"""Alembic environment of the warehouse schema (ledger, quarantine, views).

``recs.warehouse.ensure_schema`` runs it with its own connection, inside a
transaction it owns. From a shell (a source checkout), give the URL with
``-x url=...`` or ``RECS_WAREHOUSE_URL``::

    alembic -c recs/migrations/alembic.ini -x url=sqlite:///var/warehouse.db \\
        upgrade head

Revisions are written by hand: the per-run tables and the reader views are
managed by ``recs.warehouse``, so autogenerate would only propose to drop them.
"""

from __future__ import annotations

import os

from alembic import context

from recs.warehouse import VERSION_TABLE, get_engine

config = context.config


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table=VERSION_TABLE,
        transactional_ddl=True,
    )


def run_migrations_offline() -> None:
    """Write the migration SQL for the URL instead of running it."""
    context.configure(
        url=_url(),
        literal_binds=True,
        version_table=VERSION_TABLE,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection, or on a new one."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = get_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("RECS_WAREHOUSE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise ValueError("no warehouse URL: pass -x url=... or set RECS_WAREHOUSE_URL")
    return url


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
