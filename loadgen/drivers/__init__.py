"""Drivers by name, and which one a ``--host`` URL asks for.

The URL's scheme picks the protocol: ``ws://`` and ``wss://`` speak the locustfile's own
driver (the reference protocol unless a team set its own), ``xmpp+ws://`` XMPP,
``janus+ws://`` Janus. ``--driver NAME`` overrides the scheme. Drivers are imported only
when chosen, so a team's locustfile pays for none it does not use.
"""

from __future__ import annotations

from importlib import import_module

from loadgen.drivers.base import Driver
from loadgen.errors import ConfigError

#: name -> "module:class"
DRIVERS: dict[str, str] = {
    "reference": "loadgen.drivers.reference:ReferenceDriver",
    "xmpp": "loadgen.drivers.xmpp:XmppDriver",
    "janus": "loadgen.drivers.janus:JanusDriver",
}

#: URL scheme -> driver name; a plain ws/wss URL keeps the locustfile's driver
SCHEMES: dict[str, str] = {
    "xmpp+ws": "xmpp",
    "xmpp+wss": "xmpp",
    "janus+ws": "janus",
    "janus+wss": "janus",
}


class UnknownDriver(ConfigError):
    """A ``--driver`` name or URL scheme no driver answers to."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(option, None, "", problem)


def load(name: str) -> type[Driver]:
    try:
        module, _, attribute = DRIVERS[name].partition(":")
    except KeyError:
        raise UnknownDriver("--driver", f"no driver named {name!r}; known: {', '.join(sorted(DRIVERS))}") from None
    return getattr(import_module(module), attribute)


def choose(url: str, default: type[Driver], name: str | None = None) -> type[Driver]:
    """The driver class for ``url``: ``name`` when given, else the scheme's, else ``default``."""
    if name:
        return load(name)
    scheme = url.partition("://")[0].lower()
    if scheme in SCHEMES:
        return load(SCHEMES[scheme])
    if scheme not in ("ws", "wss"):
        known = ", ".join(["ws", "wss", *SCHEMES])
        raise UnknownDriver("--host", f"{url}: no driver for the scheme {scheme!r}; known schemes: {known}")
    return default


__all__ = ["DRIVERS", "SCHEMES", "UnknownDriver", "choose", "load"]
