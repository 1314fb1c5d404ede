"""Register the Recommendations page (recs.ui) with Airflow's API server and nav.

This file only wires things: the page lives in ``recs.ui``, which does not
import Airflow. The sign-in check is here because it needs Airflow's auth
manager: the page accepts the caller's Airflow JWT (``Authorization: Bearer``
or the UI's ``_token`` cookie) only when the auth manager validates it and
lets that user see custom views.
"""

from __future__ import annotations

import logging

from airflow.plugins_manager import AirflowPlugin
from fastapi import Request

from recs.ui import create_app, sqlalchemy_url

WAREHOUSE_CONN_ID = "recs_warehouse"
URL_PREFIX = "/recs"
VIEW_NAME = "Recommendations"
log = logging.getLogger(__name__)


async def airflow_user(request: Request) -> str | None:
    """Name of the Airflow user whose token the request carries, or None."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import (
        COOKIE_NAME_JWT_TOKEN,
    )
    from jwt import InvalidTokenError

    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else ""
    token = token or request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")
    if not token:
        return None
    manager = get_auth_manager()
    try:
        user = await manager.get_user_from_token(token)
    except InvalidTokenError:
        return None
    if not manager.is_authorized_custom_view(
        method="GET", resource_name=VIEW_NAME, user=user
    ):
        raise PermissionError(f"{user.get_name()} may not see {VIEW_NAME}")
    return user.get_name()


def warehouse_url() -> str:
    """The ``recs_warehouse`` connection's URL, else RECS_WAREHOUSE_URL/default."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    from recs.settings import Settings

    try:
        conn = Connection.get_connection_from_secrets(WAREHOUSE_CONN_ID)
    except AirflowNotFoundException:
        log.info("no %s connection; using RECS_WAREHOUSE_URL", WAREHOUSE_CONN_ID)
        return Settings.from_env().warehouse_url
    return sqlalchemy_url(conn.get_uri())


def login_url() -> str:
    """The auth manager's sign-in page."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_url_login()


class RecommendationsPlugin(AirflowPlugin):
    """The Recommendations page: an app under /recs and a nav entry for it."""

    name = "recommendations"
    fastapi_apps = [
        {
            "app": create_app(
                auth=airflow_user, warehouse_url=warehouse_url, login_url=login_url
            ),
            "url_prefix": URL_PREFIX,
            "name": VIEW_NAME,
        }
    ]
    external_views = [
        {
            "name": VIEW_NAME,
            "href": URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "url_route": "recommendations",
            "category": "browse",
        }
    ]
