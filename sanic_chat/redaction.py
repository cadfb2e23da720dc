"""URLs fit for messages and logs: the one URL redaction.

A neutral module (standard library only, no part of sanic_chat) so that every
part may use it: the composition root and start-up for database and bus URLs,
the bus for its own errors, providers for a model's base URL. (Log lines as a
whole are filtered by :mod:`sanic_chat.security.redaction`.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["redact_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def redact_url(url: str, *, host_only: bool = False) -> str:
    """``url`` without what may be secret in it.

    By default only the password goes (``scheme://user:***@host/path``: the
    database or bus a message is about stays recognisable). ``host_only`` keeps
    ``host[:port]`` alone, the port only when it is not the scheme's default: a
    model's base URL may carry a key in its user, path or query too.
    A URL that does not parse is ``<unparsable>`` (``?`` with ``host_only``),
    never its text, which may hold a password."""
    if not host_only and ("@" not in url or "://" not in url):
        return url
    try:
        parts = urlsplit(url)
        if host_only:
            host = parts.hostname or ""
            port = parts.port
    except ValueError:
        return "?" if host_only else "<unparsable>"
    if host_only:
        if not host:
            return "?"
        if ":" in host:  # IPv6
            host = f"[{host}]"
        if port is None or port == _DEFAULT_PORTS.get(parts.scheme.lower()):
            return host
        return f"{host}:{port}"
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return parts._replace(netloc=netloc).geturl()
