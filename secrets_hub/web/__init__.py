"""Everything HTTP: the REST API, the pages, error translation. The only code that sees `request`."""

from __future__ import annotations

from flask import Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

from secrets_hub import users

login_manager = LoginManager()
csrf = CSRFProtect()


@login_manager.user_loader
def _load_user(session_id: str):
    return users.load_session_user(session_id)


def init_app(app: Flask) -> None:
    from secrets_hub.web import api, errors, pages

    app.config.setdefault("RATELIMIT_STORAGE_URI", app.extensions["secrets_hub"].settings.ratelimit_storage)
    pages.limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "pages.login"
    csrf.init_app(app)
    # The API checks CSRF itself, and only for cookie-authenticated writes: Bearer clients have no cookie to forge.
    csrf.exempt(api.bp)
    csrf.exempt(api.health_bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health_bp)
    app.register_blueprint(pages.bp)
    errors.init_app(app)
