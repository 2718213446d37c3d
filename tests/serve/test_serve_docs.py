"""The OpenAPI docs at ``/docs`` work offline: Swagger UI comes from this server (the swagger-ui-bundle wheel), not a
CDN, under a Content-Security-Policy that names no other host and allows only the page's own inline script."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from pneumo.serve.schemas import CSP

DOCS = "/docs"
# What a CSP source may be here: this origin, nothing, inline data/blob URLs, or a script pinned by its hash.
LOCAL_SOURCES = ("'self'", "'none'", "data:", "blob:")


class PageParts(HTMLParser):
    """The URLs a page loads (script src, link href, img src) and the texts of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        url = attributes.get("src") if tag in ("script", "img") else attributes.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)
        if tag == "script" and not url:
            self._script = []

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.inline_scripts.append("".join(self._script))
            self._script = None


def page_parts(html: str) -> PageParts:
    parts = PageParts()
    parts.feed(html)
    parts.close()
    return parts


def directives(csp: str) -> dict[str, list[str]]:
    """``"a x y; b z"`` -> ``{"a": ["x", "y"], "b": ["z"]}``."""
    return {name: sources for name, *sources in (part.split() for part in csp.split(";") if part.strip())}


def sha256_source(script: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(script.encode('utf-8')).digest()).decode('ascii')}'"


def test_docs_page_loads_its_scripts_styles_and_icon_from_this_server_only(client: TestClient) -> None:
    page = client.get(DOCS)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = page_parts(page.text).urls
    assert len(urls) >= 3  # Swagger UI's script, its stylesheet and the favicon
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not parts.path.startswith("/"), url  # relative (a prefix)
        assert client.get("/" + url).status_code == 200, url


@pytest.mark.parametrize(("name", "content_types"), [
    ("swagger-ui-bundle.js", ("text/javascript", "application/javascript")),
    ("swagger-ui.css", ("text/css",)),
    ("favicon.png", ("image/png",)),
])
def test_swagger_ui_files_are_served_with_their_content_types(client: TestClient, name: str,
                                                              content_types: tuple[str, ...]) -> None:
    url = next(u for u in page_parts(client.get(DOCS).text).urls if u.endswith("/" + name))
    response = client.get(url)
    assert response.status_code == 200 and len(response.content) > 0
    assert response.headers["content-type"].split(";")[0].strip() in content_types
    assert response.headers["x-content-type-options"] == "nosniff"


def test_swagger_ui_script_is_the_bundle_the_page_starts(client: TestClient) -> None:
    parts = page_parts(client.get(DOCS).text)
    script = client.get(next(u for u in parts.urls if u.endswith(".js"))).text
    assert "SwaggerUIBundle" in script
    assert len(parts.inline_scripts) == 1 and "SwaggerUIBundle(" in parts.inline_scripts[0]
    assert "'openapi.json'" in parts.inline_scripts[0]  # relative: also behind a proxy's path prefix


def test_docs_page_does_not_ask_swagger_io_to_validate_the_schema(client: TestClient) -> None:
    (start,) = page_parts(client.get(DOCS).text).inline_scripts
    assert '"validatorUrl": null' in start


def test_docs_csp_names_no_other_host_and_allows_only_the_page_inline_script(client: TestClient) -> None:
    page = client.get(DOCS)
    policy = directives(page.headers["content-security-policy"])
    expected_hashes = {sha256_source(script) for script in page_parts(page.text).inline_scripts}
    assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    assert set(policy["script-src"]) == {"'self'", *expected_hashes}
    for name, sources in policy.items():
        for source in sources:
            assert source in LOCAL_SOURCES or (name == "script-src" and source in expected_hashes), (name, source)


def test_docs_csp_differs_from_the_page_csp_only_by_the_script_hash(client: TestClient) -> None:
    docs, page = (directives(client.get(path).headers["content-security-policy"]) for path in (DOCS, "/"))
    assert {k: v for k, v in docs.items() if k != "script-src"} == {k: v for k, v in page.items() if k != "script-src"}
    assert [s for s in docs["script-src"] if not s.startswith("'sha256-")] == page["script-src"] == ["'self'"]


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/healthz", "/openapi.json", "/api/v1/model",
                                  "/docs/assets/swagger-ui.css", "/redoc"])
def test_every_other_response_keeps_the_strict_csp(client: TestClient, path: str) -> None:
    assert client.get(path).headers["content-security-policy"] == CSP
    assert "'sha256-" not in CSP and "unsafe" not in CSP


def test_openapi_schema_is_still_served_and_leaves_the_docs_out(client: TestClient) -> None:
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/predict" in paths and not any(path.startswith(DOCS) for path in paths)


def test_redoc_is_not_served_because_it_would_need_a_cdn(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404


def test_docs_and_schema_stay_open_when_an_api_key_is_set(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="s3cret-key")
    urls = [DOCS, "/openapi.json", *page_parts(client.get(DOCS).text).urls]
    assert [client.get(url).status_code for url in urls] == [200] * len(urls)
    assert client.get("/api/v1/model").status_code == 401
    assert client.get("/api/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
