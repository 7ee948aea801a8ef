"""The `secrets-hub` command line. Values and tokens go to stdout alone; every message goes to stderr.

Imports of the app are deferred into each command so that `secrets-hub get` starts quickly.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click


MASTER_SECRET_VARIABLES = frozenset({"SECRETS_HUB_MASTER_KEY", "SECRETS_HUB_OLD_MASTER_KEYS", "BETTER_AUTH_SECRET"})


def _note(message: str) -> None:
    click.echo(message, err=True)


def _json(schema: Any, rows: Any) -> None:
    """The same JSON shapes as the REST API, dumped by the same schemas."""
    click.echo(json.dumps(schema.dump(rows), indent=2))


@contextmanager
def _bare_runtime() -> Iterator[Any]:
    """The runtime without a Flask app or SQLAlchemy, active inside; the plugins' startup hook gets its hub."""
    from secrets_hub.runtime import activated, started_runtime

    state = started_runtime()
    try:
        with activated(state):
            yield state
    finally:
        state.close()


@contextmanager
def _session(orm: bool = False) -> Iterator[Any]:
    """The operator as caller, in a runtime; domain errors become one line and exit status 1.

    Commands on secrets and the audit log run on the bare runtime (the store, no Flask app, no
    SQLAlchemy), so that `secrets-hub get` starts fast. Those that need the ORM (users, tokens,
    rotation, backups) set `orm` and get the app, without its HTTP side.
    """
    import getpass

    from secrets_hub.auth import operator

    caller = operator(getpass.getuser())
    if orm:
        from secrets_hub.app import create_app

        with create_app(web=False).app_context():
            yield caller
        return
    with _bare_runtime():
        yield caller


class Group(click.Group):
    """Turn every failure into one clear line on stderr: never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from secrets_hub.errors import SecretsHubError

        try:
            return super().invoke(ctx)
        except SecretsHubError as error:
            raise click.ClickException(error.message) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence for a script-facing tool
            from sqlalchemy.exc import OperationalError

            if isinstance(error, OperationalError):
                raise click.ClickException("Database unavailable") from None
            raise click.ClickException(f"Unexpected error: {type(error).__name__}") from None


@click.group(cls=Group)
@click.version_option(package_name="secrets-hub")
def cli() -> None:
    """secrets-hub: encrypted secrets for your apps, scripts and AI agents."""


def main() -> None:
    """Entry point: like click's standalone mode, but a usage error is one line, as scripts expect."""
    try:
        status = cli.main(prog_name="secrets-hub", standalone_mode=False)
    except click.UsageError as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("Aborted.", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)


@cli.command()
def init() -> None:
    """Create the instance folder, the database schema and (if none is configured) the master key file."""
    from secrets_hub.bootstrap import initialize

    settings = initialize()
    _note(f"Ready: {settings.backend} database, master key from {settings.master_key_source}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Worker processes  [default: one per CPU core]")
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the web app (UI and REST API) with the granian production server; runs `init` first."""
    from secrets_hub.bootstrap import initialize
    from secrets_hub.server import DEFAULT_WORKERS, serve_app, serving

    workers = workers or DEFAULT_WORKERS
    settings = initialize()
    _note(f"secrets-hub on http://{host}:{port} ({settings.backend}, {workers} worker(s))")
    target, interface, threads = serving(settings.backend, settings.ratelimit_storage)
    serve_app(target, host, port, workers, interface, threads, factory=True)


@cli.group()
def user() -> None:
    """Manage the people who sign in to the settings page."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
@click.option("--admin/--no-admin", default=True, show_default=True, help="Give the user every scope.")
def user_create(email: str, password_stdin: bool, admin: bool) -> None:
    """Create a user."""
    from secrets_hub import users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    with _session(orm=True) as caller:
        users.create_user(caller, email, password, is_admin=admin)
    _note(f"Created user {email}")


@cli.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, required=True,
              help="secrets:read, secrets:write, mcp or admin (repeatable).")
@click.option("--allow", "allow", multiple=True, help="Limit the token to keys matching this glob (repeatable).")
@click.option("--expires-in", default=None, help="Lifetime such as 90m or 30d; never expires if omitted.")
def token_create(name: str, scopes: tuple[str, ...], allow: tuple[str, ...], expires_in: str | None) -> None:
    """Create a token and print it; it is never shown again."""
    from secrets_hub import tokens, validation

    scope_list = validation.validate_scopes(list(scopes))
    allow_list = validation.validate_allow(list(allow))
    lifetime = validation.parse_duration(expires_in)
    with _session(orm=True) as caller:
        created = tokens.create_token(caller, validation.validate_token_name(name), scope_list, allow_list, lifetime)
    click.echo(created["token"])
    _note(f"Created token {name}; store it now, it will not be shown again.")


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
def token_list(as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    from secrets_hub import schemas, tokens

    with _session(orm=True) as caller:
        rows = tokens.list_tokens(caller)
    if as_json:
        return _json(schemas.tokens_schema, rows)
    for row in rows:
        expires = row["expires_at"].isoformat() if row["expires_at"] else "never"
        click.echo(f"{row['name']}\t{' '.join(row['scopes'])}\t{' '.join(row['allow'] or ['*'])}\texpires {expires}")


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke a token by name."""
    from secrets_hub import tokens

    with _session(orm=True) as caller:
        tokens.revoke_token(caller, name)
    _note(f"Revoked token {name}")


@cli.command("set")
@click.argument("key")
@click.option("--description", default=None, help="Set the description too.")
def set_secret(key: str, description: str | None) -> None:
    """Create or update KEY with the value read from stdin (never from the command line)."""
    from secrets_hub import service
    from secrets_hub.validation import validate_key

    validate_key(key)
    value = sys.stdin.read()
    if value.endswith("\n"):
        value = value[:-1]
    with _session() as caller:
        version = service.put_secret(caller, key, value, description)
    _note(f"{'Created' if version == 1 else 'Updated'} {key} (version {version})")


@cli.command("get")
@click.argument("key")
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="An older version.")
def get_secret(key: str, version: int | None) -> None:
    """Print the value of KEY alone."""
    from secrets_hub import service

    with _session() as caller:
        value = service.read_secret(caller, key, version)["value"]
    click.echo(value)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_secrets(as_json: bool) -> None:
    """List keys and descriptions, never values."""
    from secrets_hub import schemas, service

    with _session() as caller:
        rows = service.list_secrets(caller)
    if as_json:
        return _json(schemas.secrets_meta_schema, rows)
    for row in rows:
        click.echo(f"{row['key']}\t{row['description'] or ''}")


@cli.command("delete")
@click.argument("key")
def delete_secret(key: str) -> None:
    """Delete KEY and all its versions."""
    from secrets_hub import service

    with _session() as caller:
        service.delete_secret(caller, key)
    _note(f"Deleted {key}")


@cli.command("history")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
def history(key: str, as_json: bool) -> None:
    """List the kept versions of KEY, newest first."""
    from secrets_hub import schemas, service

    with _session() as caller:
        rows = service.list_versions(caller, key)
    if as_json:
        return _json(schemas.versions_schema, rows)
    for row in rows:
        marker = "current" if row["current"] else ""
        click.echo(f"{row['version']}\t{row['created_at'].isoformat()}\t{row['created_by'] or ''}\t{marker}".rstrip())


@cli.command("audit")
@click.option("--key", default=None, help="Only events about this key.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
def audit_log(key: str | None, limit: int, as_json: bool) -> None:
    """Show the audit log, newest first."""
    from secrets_hub import schemas, service

    with _session() as caller:
        rows = service.read_audit_log(caller, key=key, limit=limit)
    if as_json:
        return _json(schemas.audit_events_schema, rows)
    for row in rows:
        click.echo("\t".join([row["at"].isoformat(), row["actor"], row["channel"], row["action"],
                              row["key"] or "-", row["outcome"], row["remote_addr"] or "-"]))


@cli.command("skills")
@click.option("--json", "as_json", is_flag=True)
def skills(as_json: bool) -> None:
    """List skill plugins, the keys each requires, and which are missing."""
    from secrets_hub import schemas, service

    with _session() as caller:
        report = service.skills_report(caller)
    if as_json:
        return _json(schemas.skills_schema, report)
    if not report:
        _note("No skill plugins are installed.")
    for skill in report:
        if skill["error"]:
            click.echo(f"{skill['name']}: BROKEN, skipped: {skill['error']}")
            continue
        missing = [r["key"] for r in skill["requires"] if r["required"] and not r["set"]]
        click.echo(f"{skill['name']}: {'missing ' + ', '.join(missing) if missing else 'ready'}")
        for requirement in skill["requires"]:
            state = "set" if requirement["set"] else "missing"
            kind = "required" if requirement["required"] else "optional"
            where = f"  (get it at {requirement['obtain_url']})" if requirement["obtain_url"] and not requirement["set"] else ""
            click.echo(f"  {requirement['key']}\t{kind}\t{state}\t{requirement['description']}{where}")


@contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    """A progress bar on stderr (stdout stays clean for scripts); yields the callback the services call."""
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


@cli.command("rotate-master-key")
def rotate_master_key() -> None:
    """Re-encrypt every secret and version under SECRETS_HUB_MASTER_KEY (former keys in SECRETS_HUB_OLD_MASTER_KEYS).

    Batches commit one by one: stop it at any time and run it again to finish.
    """
    from secrets_hub import rotation

    with _session(orm=True) as caller:
        with _progress(rotation.rows_to_rotate(), "Re-encrypting") as progress:
            result = rotation.rotate_master_key(caller, progress)
    _note(f"Re-encrypted {result['rotated']} rows; everything is under key id {result['key_id']} "
          "and the key check names it.")
    if result["failed"]:
        _note(f"Failed their integrity check and were left as they were: {', '.join(result['failed'])}")
        sys.exit(1)
    _note("The former master secrets can now be removed from SECRETS_HUB_OLD_MASTER_KEYS.")


@cli.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
def backup_command(file: Path) -> None:
    """Write every secret, version, token record and user to FILE, encrypted under the master secret."""
    from secrets_hub import backup

    if not file.resolve().parent.is_dir():
        raise click.ClickException(f"Cannot write {file}: its folder does not exist")
    with _session(orm=True) as caller:
        with _progress(backup.count_secrets(), "Backing up") as progress:
            held = backup.write_backup(caller, file, progress)
    _note(f"Wrote {file}: {held['secrets']} secrets, {held['users']} users, {held['tokens']} tokens")


@cli.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def restore_command(file: Path) -> None:
    """Restore FILE (made by `backup` under the same master secret) into an empty instance."""
    from secrets_hub import backup

    with _session(orm=True) as caller:
        payload = backup.open_for_restore(caller, file)
        with _progress(len(payload["secrets"]), "Restoring") as progress:
            held = backup.restore_backup(caller, payload, progress)
    _note(f"Restored {held['secrets']} secrets, {held['users']} users, {held['tokens']} tokens from {file}")


@cli.command("import-legacy")
@click.option("--from", "url", required=True, help="URL of the seed app's database.")
@click.option("--legacy-secret", required=True, help="The seed's BETTER_AUTH_SECRET.")
@click.option("--overwrite", is_flag=True, help="Replace secrets that already exist here.")
def import_legacy_command(url: str, legacy_secret: str, overwrite: bool) -> None:
    """Copy the secrets table of a seed-format database; exits 1 if some rows failed (the rest are imported)."""
    from secrets_hub import legacy

    with _session() as caller:
        rows = legacy.read_legacy_rows(url)
        with _progress(len(rows), "Importing") as progress:
            report = legacy.import_legacy(caller, rows, legacy_secret, overwrite, progress)
    _note(_outcome_summary(report.outcomes))
    for failure in report.failed:
        _note(f"failed: {failure}")
    if report.failed:
        sys.exit(1)


def _outcome_summary(outcomes: dict[str, int]) -> str:
    parts = [f"{outcomes.get(name, 0)} {name}" for name in ("created", "updated", "unchanged", "skipped")]
    return "Imported: " + ", ".join(parts)


@cli.command("import-env")
@click.argument("file", type=click.File("rb"))
def import_env_command(file: Any) -> None:
    """Create or update a secret for each KEY=value line of a .env FILE (`-` for stdin).

    Keys that are not SCREAMING_SNAKE_CASE are reported and skipped, never renamed; exits 1 if any were.
    """
    from secrets_hub import envfile

    try:
        text = file.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise click.ClickException(f"{file.name} is not UTF-8 text") from None
    with _session() as caller:
        report = envfile.import_env(caller, text)
    _note(_outcome_summary(report.outcomes))
    for problem in report.problems:
        _note(problem)
    if report.problems:
        sys.exit(1)


@cli.command("export-env")
@click.option("--only", "patterns", multiple=True, help="Only keys matching this glob (repeatable).")
def export_env_command(patterns: tuple[str, ...]) -> None:
    """Print the secrets as KEY="value" lines, for a .env file."""
    from secrets_hub import envfile, service

    with _session() as caller:
        values = service.read_values(caller, patterns)
    click.echo(envfile.format_env(values), nl=False)


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--only", "patterns", multiple=True, help="Only keys matching this glob (repeatable).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(patterns: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND with the secrets in its environment (nothing is written to disk); exits with its status.

    Example: secrets-hub run --only 'OPENAI_*' -- python agent.py
    """
    import os

    from secrets_hub import service
    from secrets_hub.process import run_with_env

    with _session() as caller:
        values = service.read_values(caller, patterns)
    # The command gets the secrets it asked for, never the master secret that opens all of them.
    inherited = {name: value for name, value in os.environ.items() if name not in MASTER_SECRET_VARIABLES}
    sys.exit(run_with_env(list(command), {**inherited, **values}))


@cli.command("mcp")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (http).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="Port (http).")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Worker processes (http)  [default: one per CPU core]")
def mcp_command(transport: str, host: str, port: int, workers: int | None) -> None:
    """Serve the read-only MCP tools to AI agents (stdio: token in SECRETS_HUB_TOKEN; http: Bearer per request)."""
    import os

    from secrets_hub.errors import AuthenticationError, ForbiddenError
    from secrets_hub.mcp_server import agent_caller, create_mcp_server, is_loopback, serve_http

    if transport == "http":
        from secrets_hub.config import load_settings
        from secrets_hub.runtime import build_runtime
        from secrets_hub.server import DEFAULT_WORKERS

        # Refuse a missing key or database here, in one line, before any worker starts (each builds its own).
        settings = load_settings()
        build_runtime(settings)
        if not is_loopback(host):
            _note(f"Warning: serving MCP on {host} without TLS; put a TLS-terminating reverse proxy in front of it.")
        workers = workers or DEFAULT_WORKERS
        _note(f"secrets-hub MCP server on http://{host}:{port}/mcp ({workers} worker(s))")
        serve_http(host, port, workers, proxy_headers=settings.proxy_hops > 0)
        return
    # The MCP server serves reads only: the bare runtime, no Flask app.
    with _bare_runtime() as state:
        token = os.environ.get("SECRETS_HUB_TOKEN", "").strip()
        if not token:
            _note("Error: SECRETS_HUB_TOKEN is not set: the MCP server needs an API token with the mcp scope")
            sys.exit(2)
        try:
            agent_caller(state, token)
        except (AuthenticationError, ForbiddenError) as refused:
            _note(f"Error: SECRETS_HUB_TOKEN was refused: {refused.message}")
            sys.exit(2)
        create_mcp_server(state, token).run("stdio")
