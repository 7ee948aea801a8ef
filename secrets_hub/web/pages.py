"""Server-rendered pages: first-run setup, sign-in, sign-out, and the settings page."""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from secrets_hub import users
from secrets_hub.errors import ConflictError, ValidationError

bp = Blueprint("pages", __name__)


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
                user = users.create_user(None, request.form.get("email"), request.form.get("password"), is_admin=True)
            except (ValidationError, ConflictError) as refused:
                error = refused.message
            else:
                login_user(user)
                return redirect(url_for("pages.settings"))
    return render_template("setup.html", error=error, email=request.form.get("email", "")), 400 if error else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        user = users.check_password(request.form.get("email", ""), request.form.get("password", ""))
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
    return render_template("settings.html")
