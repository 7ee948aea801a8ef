"""The application factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from secrets_hub.auth import bearer_token
from secrets_hub.config import load_settings
from secrets_hub.crypto import SESSION_LABEL, derive_key
from secrets_hub.db import db, engine_options
from secrets_hub.hub import Hub
from secrets_hub.runtime import build_runtime

PACKAGE_DIR = Path(__file__).parent


def _asset_folder(name: str) -> str:
    """The package's own copy when installed (`pip install .`), else the top-level folder of the checkout."""
    packaged = PACKAGE_DIR / name
    return str(packaged if packaged.is_dir() else PACKAGE_DIR.parent / name)


class SessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie `Secure` whenever the request came over HTTPS.

    A request with a Bearer token is a token client: its cookie, if any, is not read, and it gets
    the null session, which is never saved; that keeps the token path lean. (Other schemes, such as
    the Basic auth of a proxy in front of the pages, keep their cookie session.)
    """

    def open_session(self, app: Flask, request):
        if bearer_token(request.headers.get("Authorization")) is not None:
            return self.make_null_session(app)
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def _end_session(_error: BaseException | None) -> None:
    try:
        db.session.remove()
    except DBAPIError:
        db.session.registry.clear()  # its connection is gone; the pool's pre-ping replaces it


def create_app(config: Mapping[str, Any] | None = None, *, web: bool = True) -> Flask:
    """Build the app from the environment plus `config`; the database must have been initialised.

    `web=False` leaves out the HTTP side (routes, sessions, CSRF, rate limits), for the command line.
    """
    settings = load_settings(config)
    state = build_runtime(settings)

    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder=_asset_folder("templates"),
        static_folder=str(PACKAGE_DIR / "static"),
    )
    app.config.update(
        SECRET_KEY=derive_key(settings.master_key, SESSION_LABEL),
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.database_url),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        # A JSON-escaped value may take six bytes per character; anything beyond is refused unread.
        MAX_CONTENT_LENGTH=max(1024 * 1024, 8 * settings.max_value_bytes),
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.testing = bool((config or {}).get("TESTING"))
    app.session_interface = SessionInterface()
    db.init_app(app)
    # Registered after flask-sqlalchemy's, so it runs first: a connection that died during the request
    # makes ending the session fail, and a failure in teardown would reach the client as a bare 500.
    app.teardown_appcontext(_end_session)
    app.extensions["secrets_hub"] = state
    with app.app_context():
        # Whoever releases the app's database connections (db.engine.dispose()) releases the store's too.
        event.listen(db.engine, "engine_disposed", lambda _engine: state.close())
    if web:
        from secrets_hub import web as http

        http.init_app(app)
    hub = app.extensions["secrets_hub.hub"] = Hub(state, app)
    state.plugins.startup(hub)
    return app
