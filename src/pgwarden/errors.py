"""Exceptions whose message is the one sentence a user sees."""


class PgwardenError(Exception):
    """An error reported to the user as one sentence and a non-zero exit."""

    exit_code = 1


class ConfigError(PgwardenError):
    """The configuration is invalid; `problems` holds one `(field path, message)` per error."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))

    def lines(self) -> list[str]:
        """One line per problem, `path: message`."""
        return [f"{path}: {msg}" if path else msg for path, msg in self.problems]
