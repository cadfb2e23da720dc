"""Who is asking.

``SANIC_CHAT_AUTH=none``: everyone is the single user ``local``.

``SANIC_CHAT_AUTH=jwt``: ``Authorization: Bearer <jwt>``, whose ``sub`` is the
user id. The algorithm is pinned by the configuration -- HS256 with
``SANIC_CHAT_JWT_SECRET``, or RS256 with the public key at
``SANIC_CHAT_JWT_PUBLIC_KEY`` -- so a token saying ``alg: none``, or an HS256
token "signed" with the RS256 public key as its secret, is refused. ``exp`` and
``sub`` are required; ``nbf`` and ``iat`` are checked when present; ``aud`` and
``iss`` when configured (a token carrying ``aud`` needs
``SANIC_CHAT_JWT_AUDIENCE``).

Browsers cannot set headers on a WebSocket or an EventSource: there a one-time
``?ticket=`` (see :mod:`.tickets`) stands in for the header, on the routes the
transports declare (``TICKET_PATHS`` in each transport module: ``GET /ws`` and the
SSE ``GET .../events`` streams) and nowhere else. The composition root hands their
union to :func:`build_authenticator` as :class:`TicketPaths`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from ..config import ConfigError, Settings
from ..core.errors import Unauthorized

if TYPE_CHECKING:
    from .tickets import TicketStore

__all__ = [
    "LOCAL_USER",
    "Authenticate",
    "TicketPaths",
    "TokenVerifier",
    "build_authenticator",
    "load_rsa_public_key",
]

#: resolves the user of an HTTP request or WebSocket upgrade; raises Unauthorized
Authenticate = Callable[[Any], Awaitable[str]]

LOCAL_USER = "local"

#: clock skew tolerated on exp / nbf / iat
LEEWAY_S = 5

#: a user id: printable, no control characters (it is stored and used in keys)
_BAD_SUB = re.compile(r"[\x00-\x1f\x7f]")

_REASONS: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "the token has expired",
    jwt.ImmatureSignatureError: "the token is not valid yet",
    jwt.InvalidAudienceError: "the token is for another audience",
    jwt.InvalidIssuerError: "the token is from another issuer",
    jwt.InvalidAlgorithmError: "the token's algorithm is not accepted",
    jwt.InvalidSignatureError: "the token's signature does not verify",
}


class TokenVerifier:
    """Checks a JWT against the configured key and returns its ``sub``."""

    def __init__(self, settings: Settings) -> None:
        self.key: Any
        if settings.jwt_public_key_path:
            self.key = load_rsa_public_key(settings.jwt_public_key_path)
            self.algorithms = ["RS256"]
        elif settings.jwt_secret:
            self.key, self.algorithms = settings.jwt_secret, ["HS256"]
        else:
            raise ConfigError(
                "SANIC_CHAT_AUTH=jwt needs SANIC_CHAT_JWT_SECRET or SANIC_CHAT_JWT_PUBLIC_KEY"
            )
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer

    def verify(self, token: str) -> str:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,  # pinned: no alg=none, no algorithm confusion
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["sub", "exp"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            reason = next(
                (text for kind, text in _REASONS.items() if isinstance(exc, kind)),
                "the token is not a valid JWT",
            )
            raise Unauthorized(reason) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 200 or _BAD_SUB.search(sub):
            raise Unauthorized("the token's sub must be a user id")
        return sub


def load_rsa_public_key(path: str) -> Any:
    """The RSA public key (or certificate's key) in PEM at ``path``; a private
    key, another key type or garbage fail at start-up, not per request."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from cryptography.x509 import load_pem_x509_certificate

    variable = "SANIC_CHAT_JWT_PUBLIC_KEY"
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={path!r}: cannot read it ({exc.strerror})") from None
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise ConfigError(
            f"{variable}={path!r} is not a PEM public key (BEGIN PUBLIC KEY) or certificate"
        ) from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError(f"{variable}={path!r}: RS256 needs an RSA public key")
    return key


class TicketPaths:
    """The GET routes on which a one-time ``?ticket=`` stands in for ``Authorization``:
    the long-lived streams a browser opens without headers (a WebSocket upgrade, an
    EventSource). Each transport declares its own as Sanic route paths
    (``TICKET_PATHS``); a ``<parameter>`` segment matches any one path segment.
    They are also the requests that hold a connection slot while they last."""

    def __init__(self, routes: Iterable[str] = ()) -> None:
        self.routes = tuple(routes)
        alternatives = "|".join(_route_pattern(route) for route in self.routes)
        self._pattern = re.compile(alternatives) if alternatives else None

    def accepts(self, request: Any) -> bool:
        """Whether ``request`` may authenticate with ``?ticket=``."""
        return (
            self._pattern is not None
            and request.method == "GET"
            and self._pattern.fullmatch(request.path) is not None
        )


def _route_pattern(route: str) -> str:
    """``/api/v1/generations/<generation_id:uuid>/events`` as a regular expression:
    each ``<...>`` segment any one segment, the rest literally."""
    return "/".join(
        "[^/]+" if part.startswith("<") and part.endswith(">") else re.escape(part)
        for part in route.split("/")
    )


def build_authenticator(
    settings: Settings,
    tickets: TicketStore | None = None,
    ticket_paths: TicketPaths | None = None,
) -> Authenticate:
    """Resolve a request's user, or raise :class:`Unauthorized`.

    ``tickets`` (a :class:`~sanic_chat.security.tickets.TicketStore`) redeems
    ``?ticket=`` on ``ticket_paths``; without both only the header is accepted.
    """
    if settings.auth == "none":

        async def local(request: Any) -> str:
            return LOCAL_USER

        return local

    verifier = TokenVerifier(settings)
    paths = ticket_paths if ticket_paths is not None else TicketPaths()

    async def bearer(request: Any) -> str:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("send Authorization: Bearer <jwt>")
            return verifier.verify(token.strip())
        ticket = request.args.get("ticket")
        if ticket and tickets is not None and paths.accepts(request):
            user = await tickets.redeem(ticket)
            if user is None:
                raise Unauthorized("the ticket is unknown, used or expired: get a new one")
            return user
        raise Unauthorized(
            "send Authorization: Bearer <jwt> (browsers: a ticket from POST /api/v1/tickets "
            "as ?ticket= on /ws and the SSE endpoints)"
        )

    return bearer
