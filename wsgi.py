"""WSGI entry point for any WSGI server: `granian --interface wsgi wsgi:app`, `gunicorn wsgi:app`.

Run `secrets-hub init` once before, so the schema and the master key exist.
"""

from secrets_hub.app import create_app

app = create_app()
