#!/usr/bin/env bash
# Run the DAG end to end through Airflow on the bundled sample, into the
# SQLite warehouse var/warehouse.db, then show where the table is and some rows.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source scripts/airflow_env.sh

"$root/.venv/bin/airflow" db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 \
  || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
echo "Running DAG course_recommendations with 'airflow dags test' (log: $AIRFLOW_HOME/dags-test.log)"
if ! "$root/.venv/bin/airflow" dags test course_recommendations \
    > "$AIRFLOW_HOME/dags-test.log" 2>&1; then
  tail -n 60 "$AIRFLOW_HOME/dags-test.log"
  echo "demo: the DAG run failed; full log in $AIRFLOW_HOME/dags-test.log" >&2
  exit 1
fi
grep -E "DagRun Finished|state=" "$AIRFLOW_HOME/dags-test.log" | tail -n 3 || true
"$root/.venv/bin/python" scripts/show_table.py "$RECS_WAREHOUSE_URL"
