"""The API description at ``/docs``: a real server serves the OpenAPI document
and a Swagger UI that needs nothing from the internet.

The spec is checked for what a reader relies on (a title and version, a summary
and a schema for every operation, no docstring leaked from a library) and
against the server's real answers: every JSON answer of the REST API has the
fields its schema names as required and none it does not name. The page is
loaded in Chromium with every request off the server's origin aborted.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import re
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.browser import chromium, new_context
from tests.server import RunningServer, demo_models_file, run_server

SPEC_PATH = "/docs/openapi.json"
#: requests that carry a JSON body; every other POST reads none
BODY_OPERATIONS = {
    ("post", "/api/v1/conversations"),
    ("post", "/api/v1/conversations/{conversation_id}/messages"),
}
MESSAGE_POST = ("post", "/api/v1/conversations/{conversation_id}/messages")
#: what sanic-ext shows when it falls back to a handler's docstring
LIBRARY_DOCSTRINGS = [
    inspect.getdoc(functools.partial) or "",
    "partial(",
    "functools",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = demo_models_file(tmp_path_factory.mktemp("models"), ttft_ms=1, reply_tokens=3)
    with run_server({"SANIC_CHAT_MODELS": models}) as running:
        yield running


@pytest.fixture(scope="module")
def spec(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(server.base_url + SPEC_PATH)
    assert response.status_code == 200
    return dict(response.json())


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete", "head", "options"}:
                yield method, path, operation


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its ``$ref`` (and a single ``allOf`` wrapper) followed."""
    while True:
        if "$ref" in schema:
            ref = schema["$ref"]
            assert ref.startswith("#/components/schemas/"), ref
            name = ref.rsplit("/", 1)[1]
            assert name in spec["components"]["schemas"], f"dangling {ref}"
            schema = spec["components"]["schemas"][name]
        elif len(schema.get("allOf", ())) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def success_schema(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation = spec["paths"][path][method]
    for status, response in operation["responses"].items():
        if status.startswith("2") and "content" in response:
            return resolve(spec, response["content"]["application/json"]["schema"])
    raise AssertionError(f"{method} {path} has no JSON 2xx schema")


def conforms(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    """``value`` has every required property of ``schema`` and no other than
    it names, recursively through objects and arrays; types are checked for
    strings, numbers and booleans."""
    schema = resolve(spec, schema)
    if value is None:
        assert schema.get("nullable"), f"{where}: null where the schema says not nullable"
        return
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        properties = schema["properties"]
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{where}: required {sorted(missing)} missing from {sorted(value)}"
        unknown = set(value) - set(properties)
        assert not unknown, f"{where}: {sorted(unknown)} not in the schema"
        for key, item in value.items():
            conforms(spec, properties[key], item, f"{where}.{key}")
    elif kind == "object":
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
    elif kind == "array":
        assert isinstance(value, list), f"{where}: {value!r} is not an array"
        for index, item in enumerate(value):
            conforms(spec, schema["items"], item, f"{where}[{index}]")
    elif kind == "string":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
        if "enum" in schema:
            assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"


# ------------------------------------------------------------------ the document


def test_the_spec_names_the_product_and_its_version(spec: dict[str, Any]) -> None:
    info = spec["info"]
    assert info["title"] == "sanic-chat"
    assert info["version"] == importlib.metadata.version("sanic-chat")
    assert "docs/protocol.md" in info.get("description", "")


def test_every_operation_has_a_summary_a_tag_and_no_leaked_docstring(
    spec: dict[str, Any],
) -> None:
    seen = []
    for method, path, operation in operations(spec):
        seen.append((method, path))
        summary = operation.get("summary", "")
        assert summary.strip(), f"{method} {path} has no summary"
        assert operation.get("tags"), f"{method} {path} has no tag"
        for text in (summary, operation.get("description", "")):
            for leaked in LIBRARY_DOCSTRINGS:
                assert leaked not in text, f"{method} {path} shows {leaked[:40]!r}"
    # the page is not part of the API; the WebSocket and SSE endpoints are
    assert ("get", "/") not in seen
    assert ("get", "/ws") in seen
    assert ("get", "/api/v1/conversations/{conversation_id}/events") in seen
    assert "docs/protocol.md" in spec["paths"]["/ws"]["get"]["description"]
    for name, schema in spec["components"]["schemas"].items():
        # a dataclass without a docstring would show its generated signature
        assert not schema.get("description", "").startswith(f"{name}("), name


def test_every_body_is_described_and_only_bodies_are(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        if (method, path) in BODY_OPERATIONS:
            body = operation.get("requestBody")
            assert body, f"{method} {path} has no requestBody"
            schema = resolve(spec, body["content"]["application/json"]["schema"])
            assert schema["type"] == "object" and schema["properties"], (method, path)
        else:
            assert "requestBody" not in operation, f"{method} {path} reads no body"
    message = resolve(
        spec,
        spec["paths"][MESSAGE_POST[1]]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ],
    )
    assert set(message["required"]) == {"client_id", "content"}
    assert {"client_id", "content", "model"} <= set(message["properties"])


def test_every_operation_has_a_success_response_with_a_schema(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        responses = operation["responses"]
        successes = {status: r for status, r in responses.items() if status.startswith("2")}
        if path == "/ws":
            # an upgrade: the only success is 101, then frames (docs/protocol.md)
            assert "101" in responses, responses
            continue
        assert successes, f"{method} {path} has no 2xx response"
        for status, response in successes.items():
            assert response.get("description"), (method, path, status)
            if status == "204":
                assert "content" not in response
                continue
            content = response.get("content")
            assert content, f"{method} {path} {status} has no content"
            for media_type, entry in content.items():
                schema = resolve(spec, entry["schema"])
                if media_type == "application/json":
                    assert schema.get("type") == "object", (method, path, status)
                    assert schema.get("properties"), (method, path, status)
                else:
                    assert media_type == "text/event-stream", (method, path, media_type)
                    assert schema.get("type") == "string"
        for status, response in responses.items():
            if status.startswith(("4", "5")) and (path, status) != ("/readyz", "503"):
                error = resolve(spec, response["content"]["application/json"]["schema"])
                assert set(error["required"]) == {"error"}, (method, path, status)


def test_the_schemas_match_what_the_server_answers(
    server: RunningServer, spec: dict[str, Any]
) -> None:
    api = server.base_url + "/api/v1"
    with httpx.Client(timeout=10) as http:

        def check(method: str, path: str, response: httpx.Response) -> dict[str, Any]:
            assert response.is_success, (method, path, response.status_code, response.text)
            operation = spec["paths"][path][method]
            assert str(response.status_code) in operation["responses"], (
                method,
                path,
                response.status_code,
            )
            body = response.json()
            conforms(spec, success_schema(spec, method, path), body, f"{method} {path}")
            return dict(body)

        created = check(
            "post",
            "/api/v1/conversations",
            http.post(f"{api}/conversations", json={"title": "docs", "model": "demo"}),
        )
        cid = created["id"]
        check("get", "/api/v1/conversations", http.get(f"{api}/conversations?limit=1"))
        check(
            "get", "/api/v1/conversations/{conversation_id}", http.get(f"{api}/conversations/{cid}")
        )
        posted = check(
            MESSAGE_POST[0],
            MESSAGE_POST[1],
            http.post(
                f"{api}/conversations/{cid}/messages",
                json={"client_id": str(uuid.uuid4()), "content": "hello"},
            ),
        )
        cancel = http.post(f"{api}/generations/{posted['generation_id']}/cancel")
        check("post", "/api/v1/generations/{generation_id}/cancel", cancel)
        page = check(
            "get",
            "/api/v1/conversations/{conversation_id}/messages",
            http.get(f"{api}/conversations/{cid}/messages"),
        )
        assert {m["role"] for m in page["items"]} == {"user", "assistant"}
        check("get", "/api/v1/models", http.get(f"{api}/models"))
        check("post", "/api/v1/tickets", http.post(f"{api}/tickets"))
        check("get", "/healthz", http.get(server.base_url + "/healthz"))
        check("get", "/readyz", http.get(server.base_url + "/readyz"))
        # an error answer has the documented shape too
        missing = http.get(f"{api}/conversations/{uuid.uuid4()}")
        assert missing.status_code == 404
        path_item = spec["paths"]["/api/v1/conversations/{conversation_id}"]["get"]
        error_schema = path_item["responses"]["404"]["content"]["application/json"]["schema"]
        conforms(spec, error_schema, missing.json(), "404")


# ------------------------------------------------------------------ the page


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.urls.append(str(values["src"]))
        if tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))


def test_the_page_loads_only_from_its_own_server(server: RunningServer) -> None:
    page = httpx.get(server.base_url + "/docs")
    assert page.status_code == 200
    assert "<title>sanic-chat" in page.text
    parser = _Assets()
    parser.feed(page.text)
    assert len(parser.urls) >= 2, parser.urls  # Swagger UI's script and stylesheet
    origin = urlsplit(server.base_url).netloc
    for url in parser.urls:
        absolute = urljoin(server.base_url + "/docs", url)
        assert urlsplit(absolute).netloc == origin, f"{url} is not served by the server"
        asset = httpx.get(absolute)
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.content, url
    # nothing in the page points off the server (a CDN, the online validator)
    assert not re.search(r"https?://", page.text), re.findall(r"https?://\S+", page.text)


@pytest.mark.browser
def test_swagger_ui_renders_the_operations_offline(server: RunningServer) -> None:
    port = urlsplit(server.base_url).port
    # a name that is not localhost: Swagger UI would ask its online validator
    # for any other host, and a deployment is never on localhost
    host = "sanic-chat-docs.test"
    origin = f"http://{host}:{port}"
    elsewhere: list[str] = []

    def only_the_server(route: Any) -> None:
        url = route.request.url
        if url.startswith(origin + "/"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    with chromium(f"--host-resolver-rules=MAP {host} 127.0.0.1") as browser:
        context = new_context(browser)
        context.route("**/*", only_the_server)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(origin + "/docs")
        title = page.locator(".information-container .title")
        title.wait_for()
        assert "sanic-chat" in title.inner_text()
        post = page.locator(
            ".opblock-post:has([data-path='/api/v1/conversations/{conversation_id}/messages'])"
        )
        post.first.wait_for()
        assert post.first.is_visible()
        assert page.locator(".opblock").count() >= 10
        assert errors == []
    assert elsewhere == [], f"the page asked outside its server: {elsewhere}"
