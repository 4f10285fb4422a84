"""The HTTP API as committed: ``docs/openapi.json`` is the service's OpenAPI document with the
default settings, so any change to a path, method or schema is a deliberate edit of that file.

After an intended API change, write the new document and review its diff::

    .venv/bin/python -m tests.service.test_openapi
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from recall.service.app import create_app
from recall.service.settings import Settings

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def current_document() -> dict[str, Any]:
    """The app's OpenAPI document with the default settings (no bundle needed)."""
    with tempfile.TemporaryDirectory() as root:
        app = create_app(Settings.model_validate({"root": Path(root)}))
        return app.openapi()


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_the_api_is_the_committed_document() -> None:
    committed = DOCUMENT.read_text(encoding="utf-8")
    assert _text(current_document()) == committed, (
        "the OpenAPI document changed: if intended, run"
        " `.venv/bin/python -m tests.service.test_openapi` and commit docs/openapi.json"
    )


if __name__ == "__main__":
    DOCUMENT.write_text(_text(current_document()), encoding="utf-8")
