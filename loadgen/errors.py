"""The one shape of a configuration error: the file, the line and the key at fault."""

from __future__ import annotations

import yaml


class ConfigError(ValueError):
    """A file that cannot be used; the message reads ``path:line: key: problem``."""

    def __init__(self, path: str, line: int | None, key: str, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.path = path
        self.line = line
        self.key = key
        self.problem = problem


def compose_yaml(text: str, path: str, error: type[ConfigError] = ConfigError):
    """Parse YAML keeping line numbers (a node tree); bad YAML raises ``error`` naming the line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise error(path, line, "", f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
