"""Start and stop a production-shaped Airflow on this machine, without containers.

Same topology as docker-compose.yml: metadata database on PostgreSQL, the
CeleryExecutor with Redis as broker and a Celery worker process, a separate
PostgreSQL warehouse given as the ``recs_warehouse`` connection, and the API
server, scheduler and DAG processor as their own processes. Every run gets
fresh databases (``recs_airflow_<hex>``, ``recs_wh_<hex>``), an unused Redis
database number and a temporary AIRFLOW_HOME; :meth:`AirflowStack.stop`
removes all of them.

The browser test reuses the same stack through :func:`shared_stack`, so the
slow start happens once per pytest session.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
DAG_ID = "course_recommendations"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DBS = range(8, 16)
REDIS_CLAIM = "recs:prodlike:claimed-by"
ADMIN = "admin"
VIEWER = "viewer"
PR_SET_PDEATHSIG = 1
COMPONENTS = {
    "api-server": ["api-server", "--workers", "1"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "worker": ["celery", "worker", "--concurrency", "2"],
}


def require_services() -> None:
    """Skip when PostgreSQL or Redis is not reachable; under CI=true, fail."""
    missing = [
        f"{name} at {host}:{port}"
        for name, host, port in (
            ("PostgreSQL", PG_HOST, PG_PORT),
            ("Redis", REDIS_HOST, REDIS_PORT),
        )
        if not _reachable(host, port)
    ]
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            raise RuntimeError(message + " (CI=true, so this cannot be skipped)")
        pytest.skip(message)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    what: str, check: Callable[[], Any], timeout: float, every: float = 1.0
) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError) as err:
            last_error = err
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


class AirflowStack:
    """One production-shaped Airflow with its databases and processes."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(4)
        self.home = Path(tempfile.mkdtemp(prefix="recs_prodlike_"))
        self.metadata_db = f"recs_airflow_{suffix}"
        self.warehouse_db = f"recs_wh_{suffix}"
        self.redis_db = self._claim_redis_db()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.passwords = {ADMIN: secrets.token_urlsafe(12), VIEWER: "viewer-pass"}
        self.warehouse_url = (
            f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.warehouse_db}"
        )
        self.data_dir = self.home / "data"
        self.unused_sqlite = self.home / "must-not-be-used.db"
        self.procs: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self._token: str | None = None
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        metadata = f"{PG_USER}@{PG_HOST}:{PG_PORT}/{self.metadata_db}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "RECS_", "_AIRFLOW"))
        }
        env.update({
            "PATH": f"{BIN}:{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{metadata}",
            "AIRFLOW__CELERY__BROKER_URL":
                f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{metadata}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers"
            ".simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS":
                f"{ADMIN}:admin,{VIEWER}:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
                str(self.home / "passwords.json"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # Only triggered runs: unpausing would otherwise also start today's
            # 02:00 run, and with max_active_runs=1 the tests would wait for it.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT":
                str(_free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__TRIGGERER__TRIGGERER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW_CONN_RECS_WAREHOUSE":
                f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.warehouse_db}",
            "RECS_DATA_DIR": str(self.data_dir),
            "RECS_WAREHOUSE_URL": f"sqlite:///{self.unused_sqlite}",
        })
        return env

    def _claim_redis_db(self) -> int:
        """Claim an empty Redis database atomically, so parallel stacks never share.

        The claim is a key set with NX in the database; a database holding
        anything else is left alone. :meth:`stop` flushes the database, which
        also releases the claim.
        """
        import redis

        for number in REDIS_DBS:
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
            try:
                if client.set(REDIS_CLAIM, self.home.name, nx=True, ex=3600):
                    if client.dbsize() == 1:
                        return number
                    client.delete(REDIS_CLAIM)
            finally:
                client.close()
        raise RuntimeError(f"no free Redis database among {list(REDIS_DBS)}")

    def start(self) -> None:
        """Create databases, migrate, start every component, wait until healthy."""
        started = time.monotonic()
        self._admin_sql(f'CREATE DATABASE "{self.metadata_db}"')
        self._admin_sql(f'CREATE DATABASE "{self.warehouse_db}"')
        (self.home / "passwords.json").write_text(json.dumps(self.passwords))
        self.data_dir.mkdir()
        self._run("db", "migrate", timeout=240)
        self.timings["migrate"] = time.monotonic() - started
        for name, args in COMPONENTS.items():
            with (self.home / f"{name}.log").open("wb") as log:
                self.procs[name] = subprocess.Popen(
                    [AIRFLOW, *args],
                    env=self.env,
                    cwd=self.home,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        wait_until("the API server", self._healthy, timeout=120)
        self.timings["healthy"] = time.monotonic() - started

    def _healthy(self) -> bool:
        self._check_alive()
        response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        if response.status_code != 200:
            return False
        health = response.json()
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "dag_processor")
        )

    def _check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow components exited: {dead}")

    def stop(self) -> None:
        """Stop every process, then drop the databases and the Redis database."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)  # leftover task children
        for db in (self.metadata_db, self.warehouse_db):
            self._admin_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        import redis

        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db)
        try:
            client.flushdb()
        finally:
            client.close()
        self._keep_logs()
        shutil.rmtree(self.home, ignore_errors=True)

    def _keep_logs(self) -> None:
        """Copy component and task logs to tests/artifacts/ (gitignored)."""
        target = ARTIFACTS / "prodlike-logs"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in self.home.glob("*.log"):
            shutil.copy(path, target / path.name)
        if (self.home / "logs").is_dir():
            shutil.copytree(self.home / "logs", target / "tasks")

    def _admin_sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
            autocommit=True, connect_timeout=10,
        ) as conn:
            conn.execute(statement)

    def _run(self, *args: str, timeout: float) -> str:
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env, cwd=self.home, capture_output=True,
            text=True, timeout=timeout,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{output[-4000:]}")
        return output

    def warehouse_rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a query on the stack's warehouse, as dicts."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.warehouse_url)
        try:
            with engine.connect() as conn:
                result = conn.execute(sa.text(sql), params).mappings()
                return [dict(row) for row in result]
        finally:
            engine.dispose()

    def current_run_id(self) -> str:
        """Run id of the run the warehouse currently publishes."""
        rows = self.warehouse_rows(
            "SELECT run_id FROM recommendation_runs WHERE is_current"
        )
        assert len(rows) == 1, rows
        return rows[0]["run_id"]

    def token(self, user: str = ADMIN) -> str:
        """A JWT from the auth manager's token endpoint, as the UI gets one."""
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": self.passwords[user]},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the REST API as the admin user."""
        if self._token is None:
            self._token = self.token()
        headers = {"Authorization": f"Bearer {self._token}"}
        return httpx.request(
            method, f"{self.url}{path}", headers=headers, timeout=15, **kwargs
        )

    def wait_for_dag(self, timeout: float = 120) -> None:
        """Wait until the DAG processor has parsed the DAG."""
        def parsed() -> bool:
            self._check_alive()
            return self.api("GET", f"/api/v2/dags/{DAG_ID}").status_code == 200

        wait_until(f"DAG {DAG_ID} to be parsed", parsed, timeout)

    def unpause(self) -> None:
        response = self.api(
            "PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}
        )
        response.raise_for_status()

    def trigger(self, conf: dict[str, Any] | None = None) -> str:
        """Trigger a run through the REST API; return its run id."""
        response = self.api(
            "POST",
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def wait_for_run(self, run_id: str, timeout: float = 300) -> str:
        """Wait until a run finishes; return its state."""
        def finished() -> str | None:
            self._check_alive()
            response = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
            state = response.json()["state"]
            return state if state in ("success", "failed") else None

        return wait_until(f"run {run_id}", finished, timeout, every=2)

    def latest_run(self) -> dict[str, Any] | None:
        response = self.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns",
            params={"order_by": "-run_after", "limit": 1},
        )
        runs = response.json()["dag_runs"]
        return runs[0] if runs else None

    def task_states(self, run_id: str) -> dict[str, str]:
        response = self.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
        )
        return {
            ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]
        }

    def diagnostics(self) -> str:
        """Component log tails and every task log, for a failure message."""
        parts = []
        for name in COMPONENTS:
            path = self.home / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace")[-3000:]
                parts.append(f"===== {name}.log (tail)\n{tail}")
        for path in sorted((self.home / "logs").rglob("*.log")):
            if "dag_id=" in str(path):
                tail = path.read_text(errors="replace")[-2500:]
                parts.append(f"===== {path.relative_to(self.home)}\n{tail}")
        return "\n".join(parts)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (Linux prctl)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


_SHARED: dict[str, Any] = {}


def shared_stack(request: pytest.FixtureRequest) -> AirflowStack:
    """The session's one stack: started on first use, stopped at session end."""
    if "error" in _SHARED:
        raise RuntimeError("the Airflow stack failed to start; see the first error")
    if "stack" not in _SHARED:
        require_services()
        stack = AirflowStack()
        request.config.add_cleanup(stack.stop)
        try:
            stack.start()
            stack.wait_for_dag()
            stack.unpause()
        except Exception as err:
            _SHARED["error"] = err
            raise RuntimeError(f"{err}\n{stack.diagnostics()}") from err
        _SHARED["stack"] = stack
    return _SHARED["stack"]
