"""Secrets never leave the process: URLs are shown with their credentials masked.

A backend's URL may carry a password (``ws://user:pass@host``) or a secret in its query
(Janus' ``apisecret`` and ``admin_key``, a token); the URL still appears in logs, the
summary and the report, so every place that shows it shows this instead.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

MASK = "***"
#: query keys whose values are secrets: any key naming one of these
SECRET_WORDS = ("secret", "key", "token", "pass", "pwd", "auth_token", "signature", "sig")


def _secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def url_for_display(url: str | None) -> str | None:
    """``url`` with any password and secret query values replaced by ``***``."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}:{MASK}@{host}" + (f":{port}" if port is not None else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(k) for k, _ in pairs):
            query = "&".join(f"{k}={MASK if _secret(k) else v}" for k, v in pairs)
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def args_for_display(argv: list[str]) -> list[str]:
    """A command line with every URL in it (``--host URL`` or ``--host=URL``) shown masked."""
    shown = []
    for arg in argv:
        flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if "://" in value:
            arg = f"{flag}{equals}{url_for_display(value)}"
        shown.append(arg)
    return shown
