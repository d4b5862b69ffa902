"""The OpenAPI documents of the provider seeds, and response checks against them.

A seed is a provider doc page with its OpenAPI YAML in a ````yaml fence; each fence is kept as a
YAML file in tests/data (tests/data/README.md names the page it comes from).

The Firecrawl seeds list fields without `required` and allow any other, so a body missing
`status` would pass them: `firecrawl_contract()` requires what every answer a real server gave
(tests/data/captures/firecrawl) holds, and no field the captures never show.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from tests.data import DATA

# Firecrawl's seeds: GET /v2/batch/scrape/{id} (seed 000) and DELETE of it (seed 001).
FIRECRAWL_SEEDS = ("firecrawl_batch_scrape_get.yaml", "firecrawl_batch_scrape_delete.yaml")


@dataclass(frozen=True)
class Observed:
    """The top level of every answer captured for one method, path and status."""

    required: tuple[str, ...]  # in every captured body
    added: dict[str, Any] = field(default_factory=dict)  # captured, but not in the seed


# By (method, seed path, status). GET 402/429/500 and DELETE 500 were never captured: the
# seed stays as written for them.
FIRECRAWL_OBSERVED: dict[tuple[str, str, int], Observed] = {
    ("get", "/batch/scrape/{id}", 200): Observed(
        ("success", "status", "completed", "total", "creditsUsed", "expiresAt", "data"),
        {"success": {"type": "boolean"}},  # in all 29 captures, absent from the seed
    ),
    ("delete", "/batch/scrape/{id}", 200): Observed(("status",)),
    ("delete", "/batch/scrape/{id}", 404): Observed(("error",)),
}


@functools.cache
def load_openapi(name: str) -> dict[str, Any]:
    """The OpenAPI document of one seed, from its YAML file in tests/data."""
    document: dict[str, Any] = yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
    return document


def tightened(
    document: Mapping[str, Any], observed: Mapping[tuple[str, str, int], Observed]
) -> dict[str, Any]:
    """A copy of the document whose observed responses require their fields, allow no other
    at the top level, and declare the captured fields the seed lacks."""
    tight: dict[str, Any] = copy.deepcopy(dict(document))
    for (method, path, status), seen in observed.items():
        response = tight["paths"].get(path, {}).get(method, {}).get("responses", {})
        if str(status) not in response:
            continue
        schema = response[str(status)]["content"]["application/json"]["schema"]
        if "$ref" in schema:  # "#/components/schemas/Name"
            schema = tight["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        schema.setdefault("properties", {}).update(copy.deepcopy(seen.added))
        schema["required"] = list(seen.required)
        schema["additionalProperties"] = False
    return tight


@functools.cache
def firecrawl_contract() -> OpenApiContract:
    """Firecrawl's seeds held to the captures (FIRECRAWL_OBSERVED)."""
    return OpenApiContract(
        *(tightened(load_openapi(seed), FIRECRAWL_OBSERVED) for seed in FIRECRAWL_SEEDS)
    )


def firecrawl_next_drift(url: str, body: Mapping[str, Any]) -> str:
    """Why a status answer's `next` departs from every capture, or "" when it does not.

    A real server sends `next` exactly when the documents after `skip` and this page are
    fewer than `total`, and leaves it out (not null) otherwise.
    """
    skip = int(parse_qs(urlsplit(url).query).get("skip", ["0"])[0])
    wanted = body["total"] > skip + len(body["data"])
    if wanted and not isinstance(body.get("next"), str):
        return f"no `next` with {body['total']} in total, {len(body['data'])} here after {skip}"
    if not wanted and "next" in body:
        return f"a `next` with all {body['total']} given after {skip}"
    return ""


def _template_pattern(template: str) -> re.Pattern[str]:
    """`/batch/scrape/{id}` as a regex matching one concrete path."""
    parts = re.split(r"(\{[^}/]+\})", template)
    body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


class OpenApiContract:
    """Response schemas of one or more OpenAPI documents, looked up by method, path and status."""

    def __init__(self, *documents: dict[str, Any]) -> None:
        self.documents = documents

    def response_schema(
        self, method: str, path: str, status: int
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(schema, document) for a concrete request path such as /v2/batch/scrape/<id>."""
        for document in self.documents:
            operation = self._operation(document, method, path)
            response = (operation or {}).get("responses", {}).get(str(status))
            if response is not None:
                content = response.get("content", {}).get("application/json", {})
                return content.get("schema", {}), document
        return None

    def documents_status(self, method: str, path: str, status: int) -> bool:
        return self.response_schema(method, path, status) is not None

    def validate(self, method: str, path: str, status: int, body: Any) -> bool:
        """Raise jsonschema's ValidationError on a drift; False when the seed is silent on it."""
        found = self.response_schema(method, path, status)
        if found is None:
            return False
        schema, document = found
        # `#/components/...` references resolve against the root, so the root carries them.
        root = {"components": document.get("components", {}), "allOf": [schema]}
        OAS30Validator(root, format_checker=oas30_format_checker).validate(body)
        return True

    @staticmethod
    def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
        prefix = urlsplit(document.get("servers", [{}])[0].get("url", "")).path.rstrip("/")
        if not path.startswith(prefix):
            return None
        relative = path[len(prefix) :]
        for template, item in document.get("paths", {}).items():
            if _template_pattern(template).match(relative):
                operation: dict[str, Any] | None = item.get(method.lower())
                return operation
        return None
