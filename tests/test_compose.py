"""docker-compose.yml and the Dockerfile agree with the code they deploy.

No Docker engine is needed: the file is parsed with PyYAML (merge keys and
anchors resolved) and checked against dags/, plugins/ and recs.settings.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from recs.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
AIRFLOW_HOME = "/opt/airflow"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
OTHER_SERVICES = ("postgres", "warehouse", "redis", "airflow-init")
JWT = "AIRFLOW__API_AUTH__JWT_SECRET"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _constant(path: Path, name: str) -> Any:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of each volume of a service."""
    out = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def _default(value: str) -> str:
    """Resolve ``${NAME:-default}`` references to their defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert set(AIRFLOW_SERVICES) | set(OTHER_SERVICES) <= set(services)


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_run_their_component(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service["command"] == AIRFLOW_SERVICES[name]
    assert service["build"] == "."
    assert _env(service)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "postgres", "warehouse", "redis"])
def test_long_running_services_have_health_checks(
    services: dict[str, Any], name: str
) -> None:
    check = services[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no health check"
    assert check.get("interval") and check.get("retries")


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_wait_for_init_and_databases(
    services: dict[str, Any], name: str
) -> None:
    needs = services[name]["depends_on"]
    assert needs["airflow-init"]["condition"] == "service_completed_successfully"
    for base in ("postgres", "redis", "warehouse"):
        assert needs[base]["condition"] == "service_healthy"


def test_init_migrates_the_database_and_seeds_the_user(
    services: dict[str, Any],
) -> None:
    init = services["airflow-init"]
    env = _env(init)
    assert env["_AIRFLOW_DB_MIGRATE"] == "true"
    script = "\n".join(init["command"])
    passwords = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert passwords in script and "AIRFLOW_ADMIN_PASSWORD" in script
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0]
    assert f'"{user}"' in script


@pytest.mark.parametrize(
    ("folder", "target"), [("dags", "dags"), ("plugins", "plugins")]
)
def test_dag_and_plugin_folders_exist_and_are_mounted(
    services: dict[str, Any], folder: str, target: str
) -> None:
    assert (REPO / folder).is_dir()
    assert list((REPO / folder).glob("*.py")), f"{folder}/ has no Python file"
    for name in AIRFLOW_SERVICES:
        assert _mounts(services[name]).get(f"{AIRFLOW_HOME}/{target}") == f"./{folder}"


def test_jwt_secret_is_one_required_value(services: dict[str, Any]) -> None:
    names = [*AIRFLOW_SERVICES, "airflow-init"]
    secrets = {_env(services[name]).get(JWT) for name in names}
    assert len(secrets) == 1, secrets
    (secret,) = secrets
    assert secret and secret.startswith("${") and ":?" in secret, (
        f"{JWT} must come from .env and be required, got {secret!r}"
    )


def test_warehouse_connection_matches_dag_and_plugin(services: dict[str, Any]) -> None:
    dag = REPO / "dags" / "course_recommendations.py"
    plugin = REPO / "plugins" / "recs_plugin.py"
    conn_id = _constant(dag, "WAREHOUSE_CONN_ID")
    assert conn_id == _constant(plugin, "WAREHOUSE_CONN_ID")
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    warehouse = _env(services["warehouse"])
    for name in AIRFLOW_SERVICES:
        uri = urlsplit(_default(_env(services[name])[variable]))
        assert uri.scheme == "postgresql"
        assert uri.hostname == "warehouse" and (uri.port or 5432) == 5432
        assert uri.username == warehouse["POSTGRES_USER"]
        assert uri.path.lstrip("/") == warehouse["POSTGRES_DB"]
        assert uri.password == _default(warehouse["POSTGRES_PASSWORD"])


def test_recs_settings_are_real_fields(services: dict[str, Any]) -> None:
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    used = {
        key
        for service in services.values()
        for key in _env(service)
        if key.startswith(ENV_PREFIX)
    }
    assert used, "no RECS_* setting in docker-compose.yml"
    assert used <= fields, f"not settings: {sorted(used - fields)}"
    values = {k: _default(v) for k, v in _env(services["airflow-worker"]).items()
              if k.startswith(ENV_PREFIX)}
    Settings.from_env(env=values)


def test_metadata_db_and_broker_point_at_their_services(
    services: dict[str, Any],
) -> None:
    env = _env(services["airflow-scheduler"])
    metadata = urlsplit(_default(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    assert metadata.hostname == "postgres"
    assert metadata.path.lstrip("/") == _env(services["postgres"])["POSTGRES_DB"]
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert urlsplit(_default(env["AIRFLOW__CELERY__RESULT_BACKEND"])).hostname == (
        "postgres"
    )


def test_api_server_port_matches_execution_api_url(services: dict[str, Any]) -> None:
    api = services["airflow-apiserver"]
    published = {p.split(":")[-1]: p.split(":")[-2] for p in api["ports"]}
    execution = urlsplit(_env(api)["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution.hostname == "airflow-apiserver"
    assert str(execution.port) in published
    assert execution.path == "/execution/"
    assert f":{execution.port}/" in " ".join(api["healthcheck"]["test"])


def test_run_data_is_shared_by_worker_and_api_server(services: dict[str, Any]) -> None:
    data_dir = _env(services["airflow-worker"])["RECS_DATA_DIR"]
    worker = _mounts(services["airflow-worker"]).get(data_dir)
    api = _mounts(services["airflow-apiserver"]).get(data_dir)
    assert worker and worker == api and not worker.startswith(".")


def test_dockerfile_builds_on_the_installed_airflow() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base == f"apache/airflow:{version('apache-airflow')}-python3.11"
    assert re.search(r'pip install .*\[postgres\]', text)
    assert "COPY --chown=airflow:root expectations" in text
