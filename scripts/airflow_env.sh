# Environment for a project-local Airflow: sourced by demo.sh and the tests.
root=${root:-$(pwd)}
export PATH="$root/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$root/airflow_home}"
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$root/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export RECS_DATA_DIR="${RECS_DATA_DIR:-$root/var}"
export RECS_WAREHOUSE_URL="${RECS_WAREHOUSE_URL:-sqlite:///$root/var/warehouse.db}"
mkdir -p "$AIRFLOW_HOME" "$RECS_DATA_DIR"
