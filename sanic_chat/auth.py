"""Who is asking: ``none`` (everyone is the single user ``local``) or ``jwt``
(``Authorization: Bearer <jwt>``; ``sub`` is the user id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from .config import Settings
from .core.errors import Unauthorized
from .transports.base import Authenticate

__all__ = ["LOCAL_USER", "build_authenticator"]

LOCAL_USER = "local"


def build_authenticator(settings: Settings) -> Authenticate:
    if settings.auth == "none":

        async def local(request: Any) -> str:
            return LOCAL_USER

        return local

    if settings.jwt_public_key_path:
        key: str = Path(settings.jwt_public_key_path).expanduser().read_text()
        algorithms = ["RS256"]
    else:
        assert settings.jwt_secret is not None
        key, algorithms = settings.jwt_secret, ["HS256"]

    def verify(token: str) -> str:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,  # pinned: no alg=none, no algorithm confusion
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                options={"require": ["sub", "exp"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 200:
            raise Unauthorized("the token's sub must be a user id")
        return sub

    async def bearer(request: Any) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send Authorization: Bearer <jwt>")
        return verify(token.strip())

    return bearer
