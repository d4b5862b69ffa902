"""The OpenAPI documents inside the provider seed files, and response checks against them.

A seed file is a provider doc page with the OpenAPI YAML in a ````yaml fence. The seeds live in
`../shared/seeds` beside the repository (override with RECEIVER_SEEDS_DIR).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

SEEDS_DIR = Path(
    os.environ.get("RECEIVER_SEEDS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "seeds"
)

# The body of the first ````yaml fence, up to the closing fence.
_FENCE = re.compile(r"^````ya?ml[^\n]*\n(.*?)^````", re.DOTALL | re.MULTILINE)


@functools.cache
def load_openapi(seed_name: str) -> dict[str, Any]:
    """The OpenAPI document embedded in one seed file."""
    text = (SEEDS_DIR / seed_name).read_text(encoding="utf-8")
    match = _FENCE.search(text)
    if match is None:
        raise ValueError(f"{seed_name} holds no ````yaml fence")
    document: dict[str, Any] = yaml.safe_load(match.group(1))
    return document


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
