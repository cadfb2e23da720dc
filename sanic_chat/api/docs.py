"""The API description at ``/docs``: sanic-ext's OpenAPI document, shown by a
Swagger UI served from this process -- no request leaves the server, so the
page works offline and behind a firewall.

Swagger UI's files come from the ``swagger-ui-bundle`` package and are served
under ``/docs/assets/``; the page is ``api-docs.html`` (sanic-ext fills in its
``__PLACEHOLDERS__``). ``/docs`` is public (``_PUBLIC_PREFIXES`` in app.py): it
describes the API and reads nothing of any user's.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import swagger_ui_bundle
from sanic import Sanic
from sanic_ext import openapi
from sanic_ext.extensions.openapi.builders import SpecificationBuilder

from .schemas import errors, no_content, register_components

__all__ = ["DOCS_PREFIX", "configure_api_docs", "describe_websocket"]

DOCS_PREFIX = "/docs"
_PAGE = Path(__file__).resolve().parent.parent / "web" / "api-docs.html"

_DESCRIPTION = """\
A real-time AI chat server. This page describes the HTTP API; the WebSocket
(`/ws`) and the Server-Sent Events streams carry the events described in
**docs/protocol.md** (the wire contract: frames, events, resuming, errors).

Authentication: with `SANIC_CHAT_AUTH=none` (the default) every request is the
user `local` and needs nothing. With `SANIC_CHAT_AUTH=jwt` send
`Authorization: Bearer <jwt>` (the Authorize button); browsers open `/ws` and
the streams with a one-time `?ticket=` from `POST /api/v1/tickets`.

Errors answer `{"error": {"code", "message"}}` with a stable `code`.
"""

#: the order and meaning of the groups on the page
_TAGS = {
    "conversations": "Create, list, read and delete conversations; read their messages",
    "replies": "Post a message and follow its reply over Server-Sent Events; Stop",
    "websocket": "The WebSocket transport (docs/protocol.md)",
    "tickets": "One-time tickets for browsers (JWT auth)",
    "operations": "Models, liveness and readiness",
}


def configure_api_docs(app: Sanic[Any, Any]) -> None:
    """Set sanic-ext's OpenAPI settings and serve Swagger UI's files. Runs
    before ``Extend(app)``, which reads these settings."""
    config = app.config
    config.OAS_URL_PREFIX = DOCS_PREFIX
    config.OAS_UI_DEFAULT = "swagger"
    config.OAS_UI_REDOC = False  # its page loads redoc from a CDN
    config.OAS_PATH_TO_SWAGGER_HTML = str(_PAGE)
    config.OAS_UI_SWAGGER_HTML_TITLE = "sanic-chat API"
    # the online validator badge would ask validator.swagger.io about this spec
    config.SWAGGER_UI_CONFIGURATION = {
        "docExpansion": "list",
        "validatorUrl": None,
        "tryItOutEnabled": False,
    }
    config.API_TITLE = "sanic-chat"
    config.API_VERSION = importlib.metadata.version("sanic-chat")
    config.API_DESCRIPTION = _DESCRIPTION
    config.API_LICENSE_NAME = "MIT"
    app.static(
        f"{DOCS_PREFIX}/assets",
        Path(str(swagger_ui_bundle.swagger_ui_path)),
        name="api_docs_assets",
    )
    spec = SpecificationBuilder()  # process-wide: the same for every app
    for name, description in _TAGS.items():
        spec.tag(name, description=description)
    spec.add_security_scheme(
        "bearer",
        "http",
        bearer_format="JWT",
        description="SANIC_CHAT_AUTH=jwt only; with auth none, leave it empty",
    )
    if not spec.security:
        # optional ({} or bearer): with SANIC_CHAT_AUTH=none nothing is sent
        spec.secured()
        spec.secured("bearer")
    register_components()


def describe_websocket(app: Sanic[Any, Any], route_name: str) -> None:
    """Document ``GET /ws``. Sanic registers a WebSocket handler wrapped in a
    ``functools.partial``, so decorators on the handler never reach the route
    (and sanic-ext would show the partial's docstring): the route's own handler
    is documented here, after it is added."""
    route = app.router.find_route_by_view_name(route_name)
    assert route is not None, route_name
    handler = route.handler
    openapi.no_autodoc(handler)
    openapi.tag("websocket")(handler)
    openapi.summary("The WebSocket: chat, follow and resume replies")(handler)
    openapi.description(
        "Upgrade to a WebSocket of JSON text frames: `message.create`, "
        "`conversation.subscribe`, `generation.resume`, `generation.cancel`, `ping` in; "
        "the conversation's events out. One connection serves any number of "
        "conversations. The frames, close codes and resuming are in docs/protocol.md "
        "(WebSocket: /ws); Swagger UI cannot open it."
    )(handler)
    openapi.parameter("ticket", str, description="a one-time ticket (JWT auth, browsers)")(handler)
    no_content(101, "switching protocols: frames follow (docs/protocol.md)")(handler)
    errors(401, 403, 429)(handler)
