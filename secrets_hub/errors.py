"""Domain errors. Each carries the status and the exact message SPEC.md gives it; entry points translate."""

from __future__ import annotations


class SecretsHubError(Exception):
    """Base of every error a user may see; `message` is safe to show (never a value or a token)."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(SecretsHubError):
    """The configuration cannot work (bad setting, wrong master key, database not initialised)."""


class ValidationError(SecretsHubError):
    status = 400


class PayloadTooLargeError(SecretsHubError):
    status = 413


class AuthenticationError(SecretsHubError):
    status = 401

    def __init__(self, message: str = "Authentication required"):
        super().__init__(message)


class ForbiddenError(SecretsHubError):
    status = 403


class NotFoundError(SecretsHubError):
    status = 404


class ConflictError(SecretsHubError):
    status = 409


class UnsupportedMediaTypeError(SecretsHubError):
    status = 415


class TooManyRequestsError(SecretsHubError):
    status = 429


class IntegrityCheckError(SecretsHubError):
    """A ciphertext failed its GCM check: tampered with, moved to another row, or under an unknown key."""

    status = 500


class BackupFileError(SecretsHubError):
    """A backup file that is unreadable, damaged, foreign or of an unknown format."""

    status = 400


class DatabaseUnavailableError(SecretsHubError):
    status = 503

    def __init__(self, message: str = "Database unavailable"):
        super().__init__(message)


class DecryptionError(Exception):
    """Raised by `crypto` alone; the service turns it into an IntegrityCheckError naming the secret."""


class UnresolvedReferencesError(SecretsHubError):
    """`{{ secrets.KEY }}` references that could not be resolved; names every one of them."""

    status = 400

    def __init__(self, problems: list[str]):
        super().__init__("Unresolved secret references: " + ", ".join(problems))
        self.problems = problems
