"""Server-rendered pages: first-run setup, sign-in, sign-out, and the settings page shell.

The settings tabs fill themselves from the REST API (static/app.js), so the rules stay in one place.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from secrets_hub import __version__, auth, bootstrap, users
from secrets_hub.errors import ConflictError, ValidationError
from secrets_hub.runtime import runtime
from secrets_hub.web import limiter

bp = Blueprint("pages", __name__)
TABS = ("account", "secrets", "tokens", "skills", "audit", "app")
LOGIN_LIMIT = "5 per minute"
TOO_MANY_LOGINS = "Too many failed sign-ins. Wait a minute and try again."


def _login_limit_key() -> str:
    # One address guessing one account: other people behind the same address are not locked out.
    return f"login|{request.remote_addr}|{request.form.get('email', '').strip().lower()}"


@bp.get("/")
def index():
    if users.count_users() == 0:
        return redirect(url_for("pages.setup"))
    return redirect(url_for("pages.settings" if current_user.is_authenticated else "pages.login"))


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """Create the first (admin) account; gone once anyone exists."""
    if users.count_users() > 0:
        abort(404)
    error = None
    if request.method == "POST":
        if request.form.get("password") != request.form.get("confirm"):
            error = "Passwords do not match"
        else:
            try:
                user = users.create_user(None, request.form.get("email"), request.form.get("password"), is_admin=True,
                                         remote_addr=request.remote_addr)
            except (ValidationError, ConflictError) as refused:
                error = refused.message
            else:
                login_user(user)
                return redirect(url_for("pages.settings"))
    return render_template("setup.html", error=error, email=request.form.get("email", "")), 400 if error else 200


def _too_many_logins(_limit):
    return make_response(render_template("login.html", error=TOO_MANY_LOGINS, email=request.form.get("email", "")), 429)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(LOGIN_LIMIT, key_func=_login_limit_key, methods=["POST"], on_breach=_too_many_logins,
               deduct_when=lambda response: response.status_code == 401)
def login():
    error = None
    if request.method == "POST":
        user = users.sign_in(request.form.get("email", ""), request.form.get("password", ""), request.remote_addr)
        if user is not None:
            login_user(user)
            return redirect(url_for("pages.settings"))
        error = "Invalid email or password"
    return render_template("login.html", error=error, email=request.form.get("email", "")), 401 if error else 200


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    logout_user()
    return redirect(url_for("pages.login"))


@bp.get("/settings")
@login_required
def settings():
    tab = request.args.get("tab", "secrets")
    if tab not in TABS:
        tab = "secrets"
    state = runtime()
    facts = {
        "Version": __version__,
        "Database": state.settings.backend,
        "Master key id": state.keyring.key_id,
        "Key check": "passes" if bootstrap.key_check_passes(state.store, state.keyring) else "FAILS",
        "Master key from": "environment" if not state.settings.master_key_source.startswith("/") else "key file",
        "Plugins folder": str(state.settings.plugins_dir),
    }
    return render_template("settings.html", tab=tab, tabs=TABS, facts=facts)


@bp.post("/settings/password")
@login_required
def change_password():
    caller = auth.caller_for_user(current_user, "ui", request.remote_addr)
    if request.form.get("new_password") != request.form.get("confirm"):
        flash("New passwords do not match", "error")
    else:
        try:
            user = users.change_password(caller, request.form.get("current_password"), request.form.get("new_password"))
        except ValidationError as refused:
            flash(refused.message, "error")
        else:
            login_user(user)  # the old session id carried the old password's tag
            flash("Password changed", "status")
    return redirect(url_for("pages.settings", tab="account"))
