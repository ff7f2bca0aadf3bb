"""Load profiles: YAML read into frozen dataclasses, checked once, errors naming file, line and key.

A profile holds one section per scenario; a run reads the section of its own scenario and
ignores the others, so one file can describe a whole review::

    messaging:
      rooms: 20
      post_rate: 1.0

Each knob is a dataclass field whose metadata gives its bounds and its one-line help, which
also feed docs/profile.md.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ProfileError(ValueError):
    """A profile that cannot be used; the message names file, line and key."""

    def __init__(self, path: str, line: int | None, key: str, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.path = path
        self.line = line
        self.key = key


def knob(default, help: str, minimum: float | None = None, maximum: float | None = None):
    return field(default=default, metadata={"help": help, "min": minimum, "max": maximum})


@dataclass(frozen=True)
class MessagingProfile:
    """Chat users: rooms, rates and churn."""

    rooms: int = knob(20, "number of chat rooms users spread over", 1)
    rooms_per_user: int = knob(1, "rooms each user joins", 1, 50)
    post_rate: float = knob(1.0, "room messages per user per second (Poisson, open model)", 0)
    dm_rate: float = knob(0.1, "direct messages per user per second", 0)
    read_rate: float = knob(0.2, "read receipts per user per second, for the latest unread message", 0)
    reconnect_rate: float = knob(0.005, "per user per second: drop the connection, reconnect, sync history", 0)
    body_bytes: int = knob(64, "size of a message body in bytes", 1, 65536)


#: scenario name -> its section's dataclass
SECTIONS: dict[str, type] = {"messaging": MessagingProfile}


@dataclass(frozen=True)
class Profile:
    path: str | None = None
    messaging: MessagingProfile = field(default_factory=MessagingProfile)


def _line(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def _mapping(node: yaml.Node, path: str, key: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ProfileError(path, _line(node), key, "must be a mapping of keys to values")
    return {k.value: (k, v) for k, v in node.value}


def _convert(value_node: yaml.Node, kind: type, spec: dataclasses.Field, path: str, key: str):
    line = _line(value_node)
    if not isinstance(value_node, yaml.ScalarNode):
        raise ProfileError(path, line, key, f"must be a {kind.__name__}")
    value = yaml.safe_load(yaml.serialize(value_node))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProfileError(path, line, key, f"must be a {kind.__name__}, got {value_node.value!r}")
    low, high = spec.metadata.get("min"), spec.metadata.get("max")
    if low is not None and value < low:
        raise ProfileError(path, line, key, f"must be at least {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ProfileError(path, line, key, f"must be at most {high:g}, got {value!r}")
    return value


def _section(cls: type, node: yaml.Node, path: str, name: str):
    entries = _mapping(node, path, name)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, (key_node, value_node) in entries.items():
        spec = specs.get(key)
        if spec is None:
            known = ", ".join(specs)
            raise ProfileError(path, _line(key_node), f"{name}.{key}", f"unknown key (known: {known})")
        values[key] = _convert(value_node, hints[key], spec, path, f"{name}.{key}")
    return cls(**values)


def load_profile(path: str | Path | None) -> Profile:
    """Read and check a profile; ``None`` gives the defaults."""
    if path is None:
        return Profile()
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(path, None, "", f"cannot read: {exc.strerror}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise ProfileError(path, line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if root is None:
        return Profile(path=path)
    sections: Mapping[str, tuple[yaml.Node, yaml.Node]] = _mapping(root, path, "")
    values = {}
    for name, (key_node, value_node) in sections.items():
        cls = SECTIONS.get(name)
        if cls is None:
            raise ProfileError(path, _line(key_node), name, f"unknown section (known: {', '.join(SECTIONS)})")
        values[name] = _section(cls, value_node, path, name)
    return Profile(path=path, **values)
