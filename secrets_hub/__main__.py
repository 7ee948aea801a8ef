"""`python -m secrets_hub` is the `secrets-hub` command."""

from secrets_hub.cli import main

main()
