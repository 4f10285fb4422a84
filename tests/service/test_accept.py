"""The Accept rule for vector lookups: .npy only when named with q > 0 and >= JSON's."""

from __future__ import annotations

import pytest

from recall.service.accept import media_ranges, wants_npy


@pytest.mark.parametrize(
    ("accept", "npy"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/*", False),
        ("application/json", False),
        ("application/x-npy", True),
        ("Application/X-NPY", True),
        ("application/x-npy, */*", True),
        ("application/x-npy, application/json", True),
        ("application/x-npy;q=0, application/json", False),
        ("application/x-npy;q=0", False),
        ("application/x-npy;q=0.0", False),
        ("application/x-npy;q=0.4, application/json;q=0.5", False),
        ("application/x-npy;q=0.5, application/json;q=0.5", True),
        ("application/json;q=0.5, application/x-npy", True),
        ("application/x-npy;q=0.5, application/*;q=0.9", False),
        ("application/x-npy;q=0.5, application/json;q=0.1, */*", True),
        ("application/x-npy;q=nonsense", False),
        ("application/x-npy;q=2", False),
        ("text/html, application/x-npy ; q=0.9", True),
        (",,;", False),
    ],
)
def test_wants_npy(accept: str | None, npy: bool) -> None:
    assert wants_npy(accept) is npy


def test_media_ranges_parse_q_values() -> None:
    assert media_ranges("a/b;q=0.5, c/d ;level=1, a/b;q=0.7") == {"a/b": 0.7, "c/d": 1.0}
