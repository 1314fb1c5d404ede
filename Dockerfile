# Airflow 3.3.2 with the recs package installed, for every Airflow service in
# docker-compose.yml. dags/ and plugins/ are mounted at run time, not copied.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root pyproject.toml README.md constraints.txt /opt/recs/
COPY --chown=airflow:root recs /opt/recs/recs
COPY --chown=airflow:root expectations /opt/recs/expectations

# Editable, because recs.validate reads the suites from expectations/ beside
# the package; a plain wheel install would leave them behind. The constraints
# pin apache-airflow to the image's own 3.3.2, so pip cannot swap Airflow out.
RUN pip install --no-cache-dir -c /opt/recs/constraints.txt -e "/opt/recs[postgres]"

ENV RECS_DATA_DIR=/opt/airflow/data
