"""Which browser pages may call the API and open ``/ws``.

A browser names the page that makes a request in ``Origin``; a script or a
server-side client sends none and is judged by its credentials alone. The
server's own origin (``Origin`` host:port equal to ``Host``) is always allowed,
and so are those listed in ``SANIC_CHAT_ALLOWED_ORIGINS``.

Without authentication the ``Host`` header is checked too: a page on
``evil.example`` that re-binds its name to 127.0.0.1 is "same origin" with
itself, but its requests carry ``Host: evil.example``. Only loopback names, IP
literals and the hosts of the allowed origins are answered then.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from ..core.errors import Unauthorized

__all__ = ["OriginPolicy", "OriginRefused", "parse_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class OriginRefused(Unauthorized):
    """403 with the stable code ``unauthorized``: the credentials may be fine,
    the page or host asking is not."""

    http_status = 403


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as (scheme, host, port), or None when it is not
    a plain origin (``null``, a path, user info, an unknown scheme)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _split_host(host: str) -> tuple[str, int | None] | None:
    """A ``Host`` header as (hostname, port or None)."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def _is_loopback_or_ip(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...], *, check_host: bool) -> None:
        self.any_origin = "*" in allowed
        self._allowed: set[tuple[str, str, int]] = set()
        for origin in allowed:
            if origin == "*":
                continue
            key = parse_origin(origin)
            if key is None:
                raise ValueError(
                    f"SANIC_CHAT_ALLOWED_ORIGINS: {origin!r} is not an origin; write "
                    "scheme://host[:port], e.g. https://chat.example.com"
                )
            self._allowed.add(key)
        self._allowed_hosts = {host for _, host, _ in self._allowed}
        self._check_host = check_host

    @property
    def cors_origins(self) -> list[str]:
        """For sanic-ext's CORS (exact strings, as browsers send them)."""
        if self.any_origin:
            return ["*"]
        return sorted(
            f"{scheme}://{host}" + ("" if _DEFAULT_PORTS[scheme] == port else f":{port}")
            for scheme, host, port in self._allowed
        )

    def check(self, origin: str | None, host: str | None) -> None:
        """Raise :class:`OriginRefused` unless this request may go on."""
        if self._check_host and host:
            split = _split_host(host)
            if split is None or not (
                _is_loopback_or_ip(split[0]) or split[0] in self._allowed_hosts
            ):
                raise OriginRefused(
                    "this host name is not served without authentication; add its origin "
                    "to SANIC_CHAT_ALLOWED_ORIGINS"
                )
        if origin is None:
            return  # not a browser: credentials decide
        key = parse_origin(origin)
        if key is not None and (self.any_origin or key in self._allowed or _same_origin(key, host)):
            return
        raise OriginRefused("this origin may not use the API (see SANIC_CHAT_ALLOWED_ORIGINS)")


def _same_origin(origin: tuple[str, str, int], host: str | None) -> bool:
    if not host:
        return False
    split = _split_host(host)
    if split is None:
        return False
    scheme, origin_host, origin_port = origin
    hostname, port = split
    return hostname == origin_host and (port or _DEFAULT_PORTS[scheme]) == origin_port
