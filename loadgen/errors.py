"""The one shape of a configuration error: the file, the line and the key at fault."""

from __future__ import annotations


class ConfigError(ValueError):
    """A file that cannot be used; the message reads ``path:line: key: problem``."""

    def __init__(self, path: str, line: int | None, key: str, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.path = path
        self.line = line
        self.key = key
        self.problem = problem
