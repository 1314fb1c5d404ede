#!/usr/bin/env bash
# Run the test suite. PostgreSQL tests read RECS_TEST_POSTGRES_URL (default:
# the local server); the browser test needs Debian's chromium packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export RECS_TEST_POSTGRES_URL="${RECS_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
exec .venv/bin/python -m pytest "$@"
