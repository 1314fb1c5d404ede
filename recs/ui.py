"""Serve the Recommendations page: runs, clusters, one student's list, Data Docs.

The page is a small FastAPI app. Airflow mounts it through the plugin in
``plugins/``, but this module never imports Airflow: the plugin passes in the
sign-in check (``auth``) and the warehouse URL. Every route runs ``auth``
first, so nothing is shown to a caller who is not signed in to Airflow.
"""

from __future__ import annotations

import html
import logging
import math
import mimetypes
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

logger = logging.getLogger(__name__)

Auth = Callable[[Request], Awaitable[str | None]]
"""Return the signed-in user's name, None when not signed in.

Raise ``PermissionError`` when the user is signed in but may not see the page.
"""

MAX_STUDENT_ID = 200
RECENT_RUNS = 20
TOP_CATEGORIES = 3
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class NotSignedIn(Exception):
    """The caller has no valid Airflow token."""


def create_app(
    *,
    auth: Auth,
    warehouse_url: str | Callable[[], str],
    login_url: str | Callable[[], str] = "/auth/login",
    store: ModuleType | Any | None = None,
) -> FastAPI:
    """Build the page's app.

    Parameters
    ----------
    auth : callable
        ``await auth(request)`` returns the signed-in user's name, or None
        when the request carries no valid Airflow token; it raises
        ``PermissionError`` when the user may not see the page. Required:
        there is no unauthenticated mode.
    warehouse_url : str or callable
        SQLAlchemy URL of the warehouse, or a function that returns it; a
        function is called once, at the first request that needs it.
    login_url : str or callable
        Where the "sign in" link of the 401 page points.
    store : module, optional
        The warehouse reader (``get_engine``, ``current_run``,
        ``recent_runs``, ``student_recommendations``); default
        ``recs.warehouse``. Tests pass a fake.

    Returns
    -------
    fastapi.FastAPI
        The app, to be mounted (the plugin mounts it at ``/recs``).
    """
    if not callable(auth):
        raise TypeError(f"auth must be an async callable, got {auth!r}")
    warehouse = _Warehouse(warehouse_url, store)
    app = FastAPI(
        title="Course recommendations",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def signed_in(request: Request) -> str:
        try:
            user = await auth(request)
        except PermissionError as err:
            detail = str(err) or "Forbidden"
            raise HTTPException(status_code=403, detail=detail) from None
        if not user:
            raise NotSignedIn
        return user

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        target = _value(login_url)
        body = (
            "<h1>Sign in required</h1><p>This page shows student data to signed-in "
            f'Airflow users only. <a href="{html.escape(target)}" target="_top">'
            "Sign in to Airflow</a>, then open it again.</p>"
        )
        return HTMLResponse(
            _document("Sign in required", body),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", **PAGE_HEADERS},
        )

    @app.get("/", response_class=HTMLResponse)
    def page(
        request: Request,
        user: str = Depends(signed_in),
        student: str | None = Query(None, max_length=MAX_STUDENT_ID),
    ) -> HTMLResponse:
        student = (student or "").strip() or None
        try:
            body = _render_page(request, warehouse, user, student)
            status = 200
        except sa.exc.SQLAlchemyError as err:
            logger.error(
                "could not read the warehouse %s: %s", warehouse.masked_url(), err
            )
            body = (
                "<h1>Course recommendations</h1><p class=bad>The warehouse could "
                "not be read; see the API server log. Has the DAG run yet?</p>"
            )
            status = 503
        return HTMLResponse(
            _document("Course recommendations", body),
            status_code=status,
            headers=PAGE_HEADERS,
        )

    @app.get("/runs/{run_id}/docs/{path:path}", name="data_docs")
    def data_docs(
        run_id: str, path: str, user: str = Depends(signed_in)
    ) -> FileResponse:
        run = warehouse.run(run_id)
        root = _docs_root(run)
        if root is None:
            raise HTTPException(404, f"run {run_id!r} has no Data Docs")
        target = safe_join(root, path or "index.html")
        if target is None:
            raise HTTPException(404, "no such file in the Data Docs")
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media_type)

    return app


def safe_join(root: Path, relative: str) -> Path | None:
    """Return the file ``relative`` names inside ``root``, or None.

    None when the name is absolute, climbs out of ``root`` (``..``, or a
    symlink that points outside), or is not an existing regular file.
    """
    relative = unquote(relative)
    if "\x00" in relative or relative.startswith(("/", "\\")):
        return None
    parts = Path(relative).parts
    if any(part in ("..", "") for part in parts) or "\\" in relative:
        return None
    base = root.resolve()
    try:
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


def top_categories(
    engine: sa.Engine, per_cluster: int = TOP_CATEGORIES
) -> dict[int, list[dict[str, Any]]]:
    """Return the published run's ``per_cluster`` leading categories per cluster.

    Reads the ``cluster_categories`` view; ``per_cluster`` is sent as a bound
    parameter.
    """
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be >= 1, got {per_cluster}")
    view = sa.table(
        "cluster_categories",
        sa.column("cluster_id", sa.Integer()),
        sa.column("category", sa.Text()),
        sa.column("share", sa.Float()),
        sa.column("mastered", sa.Integer()),
    )
    place = (
        sa.func.row_number()
        .over(
            partition_by=view.c.cluster_id,
            order_by=(view.c.share.desc(), view.c.category),
        )
        .label("place")
    )
    ranked = sa.select(view, place).subquery()
    query = (
        sa.select(ranked.c.cluster_id, ranked.c.category, ranked.c.share,
                  ranked.c.mastered)
        .where(ranked.c.place <= sa.bindparam("per_cluster"))
        .order_by(ranked.c.cluster_id, ranked.c.place)
    )
    out: dict[int, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query, {"per_cluster": per_cluster}).mappings():
            out.setdefault(int(row["cluster_id"]), []).append(dict(row))
    return out


def sqlalchemy_url(uri: str) -> str:
    """Turn an Airflow connection URI into a SQLAlchemy URL (psycopg 3 driver)."""
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri.removeprefix(prefix)
    return uri


class _Warehouse:
    """Lazily opened warehouse engine, shared by the app's requests."""

    def __init__(self, url: str | Callable[[], str], store: Any | None) -> None:
        self._url = url
        self._store = store
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> Any:
        if self._store is None:
            from recs import warehouse

            self._store = warehouse
        return self._store

    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                url = _value(self._url)
                self._engine = self.store.get_engine(url)
                logger.info("Recommendations page reads %s", self.masked_url())
        return self._engine

    def masked_url(self) -> str:
        from recs.settings import mask_url

        return mask_url(str(_value(self._url)))

    def run(self, run_id: str) -> dict[str, Any] | None:
        for run in self.store.recent_runs(self.engine, limit=100):
            if run["run_id"] == run_id:
                return run
        return None


def _value(value: str | Callable[[], str]) -> str:
    return value() if callable(value) else value


def _docs_root(run: Mapping[str, Any] | None) -> Path | None:
    """Directory of a run's Data Docs, from the ledger's ``data_docs`` path."""
    if not run:
        return None
    docs = (run.get("summary") or {}).get("data_docs")
    if not docs:
        return None
    if docs.startswith("file://"):
        docs = unquote(urlsplit(docs).path)
    path = Path(docs)
    root = path if path.suffix == "" else path.parent
    return root if root.is_dir() else None


def _render_page(
    request: Request, warehouse: _Warehouse, user: str, student: str | None
) -> str:
    store, engine = warehouse.store, warehouse.engine
    runs = store.recent_runs(engine, limit=RECENT_RUNS)
    current = store.current_run(engine)
    categories = top_categories(engine) if current else {}
    found = store.student_recommendations(engine, student) if student else None

    parts = [
        f"<h1>Course recommendations</h1><p class=muted>Signed in as "
        f"{_e(user)}. Published by the <code>course_recommendations</code> DAG.</p>",
        _lookup_section(student, found),
        _current_section(request, current, categories),
        _runs_section(request, runs),
    ]
    return "\n".join(parts)


def _lookup_section(student: str | None, found: Mapping[str, Any] | None) -> str:
    form = (
        '<form method="get" action="" class=lookup><label>Student id '
        f'<input name="student" value="{_e(student or "")}" '
        f'maxlength="{MAX_STUDENT_ID}" required></label> '
        "<button type=submit>Show recommendations</button></form>"
    )
    if student is None:
        result = ""
    elif found is None:
        result = (
            f"<p id=student-result>No recommendations for student "
            f"<b>{_e(student)}</b> in the published run.</p>"
        )
    else:
        rows = [
            [r["rank"], r["course_id"], _num(r["score"], 3), r["strategy"],
             r["reason"]]
            for r in found["recommendations"]
        ]
        result = (
            f"<div id=student-result><p>Student <b>{_e(found['student_id'])}</b>, "
            f"cluster {_e(found['cluster_id'])}, run {_e(found['run_id'])}</p>"
            + _table(["rank", "course", "score", "strategy", "reason"], rows)
            + "</div>"
        )
    return f"<section><h2>One student</h2>{form}{result}</section>"


def _current_section(
    request: Request,
    run: Mapping[str, Any] | None,
    categories: Mapping[int, list[dict[str, Any]]],
) -> str:
    if run is None:
        return "<section><h2>Published run</h2><p>No run published yet.</p></section>"
    summary = run.get("summary") or {}
    facts = [
        ("run", run["run_id"]),
        ("date", run["ds"]),
        ("published", run.get("published_at")),
        ("students", run.get("students")),
        ("recommendations", run.get("recommendations")),
        ("quarantined rows", run.get("quarantined")),
        ("clusters", run.get("n_clusters")),
        ("silhouette", _num(run.get("silhouette"), 3)),
        ("recall@10", _num(run.get("recall_at_10"), 3)),
    ]
    fact_list = "".join(
        f"<dt>{_e(k)}</dt><dd data-fact=\"{_e(k)}\">{_e(v)}</dd>" for k, v in facts
    )
    sizes = summary.get("cluster_sizes") or []
    if isinstance(sizes, Mapping):
        sizes = [sizes.get(str(i), sizes.get(i)) for i in range(len(sizes))]
    cluster_rows = []
    for cluster_id in sorted(set(categories) | set(range(len(sizes)))):
        size = sizes[cluster_id] if cluster_id < len(sizes) else None
        top = ", ".join(
            f"{c['category']} ({_num(100 * c['share'], 0)}%)"
            for c in categories.get(cluster_id, [])
        )
        cluster_rows.append([cluster_id, size, top])
    return (
        f"<section id=current-run><h2>Published run</h2><dl>{fact_list}</dl>"
        f"{_docs_link(request, run)}"
        "<h3>Offline metrics</h3>"
        + _mapping_table(summary.get("metrics"))
        + "<h3>Step timings (s)</h3>"
        + _mapping_table(summary.get("timings"))
        + "<h3>Clusters: size and top categories</h3>"
        + _table(["cluster", "students", "top categories (share of mastered)"],
                 cluster_rows)
        + "</section>"
    )


def _runs_section(request: Request, runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return "<section><h2>Recent runs</h2><p>No runs yet.</p></section>"
    rows = []
    for run in runs:
        summary = run.get("summary") or {}
        timings = summary.get("timings") or {}
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        rows.append([
            run["run_id"] + (" (current)" if run.get("is_current") else ""),
            run["ds"],
            run["status"],
            run.get("reason") or "",
            run.get("students"),
            run.get("recommendations"),
            run.get("quarantined"),
            run.get("n_clusters"),
            _num(run.get("inertia"), 1),
            _num(run.get("silhouette"), 3),
            _num(run.get("recall_at_10"), 3),
            _num(total, 1) if timings else "",
            _Raw(_docs_link(request, run, short=True)),
        ])
    headers = ["run", "date", "status", "reason", "students", "recommendations",
               "quarantined", "k", "inertia", "silhouette", "recall@10",
               "seconds", "Data Docs"]
    return f"<section id=runs><h2>Recent runs</h2>{_table(headers, rows)}</section>"


def _docs_link(request: Request, run: Mapping[str, Any], short: bool = False) -> str:
    if _docs_root(run) is None:
        return "" if short else "<p>No Data Docs for this run.</p>"
    url = request.url_for("data_docs", run_id=run["run_id"], path="index.html")
    label = "open" if short else "Great Expectations Data Docs of this run"
    link = f'<a href="{_e(url.path)}" target="_blank" rel="noopener">{label}</a>'
    return link if short else f"<p>{link}</p>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p class=muted>None.</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mapping_table(values: Any) -> str:
    if not isinstance(values, Mapping) or not values:
        return "<p class=muted>None recorded.</p>"
    rows = [[k, _num(v, 4) if isinstance(v, float) else v] for k, v in values.items()]
    return _table(["name", "value"], rows)


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    return _e("" if value is None else value)


def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _document(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2433; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; }}
th, td {{ border: 1px solid #d0d5dd; padding: .25rem .5rem; text-align: left; }}
th {{ background: #f2f4f7; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; }}
dt {{ color: #475467; }} dd {{ margin: 0; }}
.muted {{ color: #667085; }} .bad {{ color: #b42318; }}
</style></head>
<body>{body}</body></html>"""

