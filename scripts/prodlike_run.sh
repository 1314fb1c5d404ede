#!/usr/bin/env bash
# Production-like run on this machine, without containers: API server,
# scheduler, DAG processor and a Celery worker on fresh PostgreSQL databases
# and a Redis database of their own; the DAG is triggered through the REST
# API, then the browser test signs in and reads the Recommendations page.
# Needs PostgreSQL (127.0.0.1:5432, trust) and Redis (127.0.0.1:6379), and
# Debian's chromium and chromium-driver for the browser part. Everything is
# stopped and dropped at the end; logs and screenshots stay in tests/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -p no:cacheprovider -m "airflow or browser" \
  tests/prodlike tests/test_browser.py "$@"
