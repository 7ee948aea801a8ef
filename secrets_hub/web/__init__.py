"""Everything HTTP: the REST API, the pages, error translation. The only code that sees `request`."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from secrets_hub import users

login_manager = LoginManager()
csrf = CSRFProtect()
# Counters live in SECRETS_HUB_RATELIMIT_STORAGE, so with Redis every process and node shares them.
limiter = Limiter(key_func=get_remote_address)


@login_manager.user_loader
def _load_user(session_id: str):
    return users.load_session_user(session_id)


# Only our own static files may run or style anything; no page may be framed, no address leaks onward.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON responses, encoded by orjson: a list of 1,000 secrets encodes ten times faster.

    The same JSON as Flask's (keys sorted, compact, Flask's conversions for dates and dataclasses),
    except that non-ASCII text is written as UTF-8 rather than escaped. What orjson refuses (a lone
    surrogate a client sent, echoed in a message) goes through Flask's own encoder.
    """

    OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME
               | orjson.OPT_PASSTHROUGH_DATACLASS)

    def body(self, obj: Any) -> bytes:
        """`obj` as the body of a JSON response; needs no app context."""
        if not self._app.debug and self.compact is not False:
            try:
                return orjson.dumps(obj, default=self.default, option=self.OPTIONS)
            except orjson.JSONEncodeError:
                pass
        return super().response(obj).get_data()

    def response(self, *args, **kwargs):
        return self._app.response_class(self.body(self._prepare_response_obj(args, kwargs)), mimetype=self.mimetype)


def security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response


def _limit_pages_only(app: Flask, pages: str) -> None:
    """Only sign-in carries a flask-limiter limit (the API counts failed authentications itself): its
    hooks, which init_app adds for every request, are moved onto the pages' blueprint, so the API's
    requests skip their work (about a tenth of a write's CPU)."""
    def limiters(hook) -> bool:
        owner = hook.args[0] if isinstance(hook, partial) else getattr(hook, "__self__", None)
        return owner is limiter

    for hooks in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        moved = [hook for hook in hooks.get(None, []) if limiters(hook)]
        hooks[None] = [hook for hook in hooks[None] if not limiters(hook)]
        hooks.setdefault(pages, []).extend(moved)


def init_app(app: Flask) -> None:
    from secrets_hub.web import api, errors, pages
    from secrets_hub.web.hot_path import HotPath

    app.json = JSONProvider(app)
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.extensions["secrets_hub"].settings.ratelimit_storage)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "pages.login"
    csrf.init_app(app)
    # The API checks CSRF itself, and only for cookie-authenticated writes: Bearer clients have no cookie to forge.
    csrf.exempt(api.bp)
    csrf.exempt(api.health_bp)
    # Werkzeug would answer `/api/secrets//OTHER` with a redirect to `/api/secrets/OTHER`, which clients
    # follow with the same method: a DELETE aimed at one odd key would delete another secret.
    app.url_map.merge_slashes = False
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health_bp)
    app.register_blueprint(pages.bp)
    _limit_pages_only(app, pages.bp.name)
    errors.init_app(app)
    app.after_request(security_headers)
    app.wsgi_app = HotPath(app, app.wsgi_app)
    hops = app.extensions["secrets_hub"].settings.proxy_hops
    if hops:
        # Behind that many reverse proxies, the client's address and scheme come from X-Forwarded-*;
        # outermost, so that the hot path sees them too.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
