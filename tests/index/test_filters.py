"""compile_filter: filter specs -> allowed masks over real ItemAttributes."""

from __future__ import annotations

import numpy as np
import pytest

from recall.index.attributes import ItemAttributes
from recall.index.filters import FilterError, compile_filter


@pytest.fixture(scope="module")
def attributes() -> ItemAttributes:
    raw = {
        "genres": np.array(["Comedy|Drama", "Drama", "", "Action|Comedy", "Horror", "Drama"]),
        "year": np.array(["1994", "1999", "2001", "", "1990", "2000"]),
        "language": np.array(["en", "fr", "en", "xx", "", "en"]),
    }
    return ItemAttributes.from_raw(raw, 6)


def _rows(mask: np.ndarray) -> list[int]:
    assert mask.dtype == np.bool_ and mask.shape == (6,)
    return np.flatnonzero(mask).tolist()


def test_conditions_are_anded_across_attributes_and_operators(
    attributes: ItemAttributes,
) -> None:
    assert _rows(compile_filter({"genres": {"any": ["Comedy", "Drama"]}}, attributes)) == [
        0,
        1,
        3,
        5,
    ]
    assert _rows(compile_filter({"year": {"gte": 1990, "lt": 2000}}, attributes)) == [0, 1, 4]
    spec: dict[str, dict[str, object]] = {
        "genres": {"any": ["Comedy", "Drama"]},
        "year": {"gte": 1990, "lt": 2000},
        "language": {"none": ["xx"]},
    }
    assert _rows(compile_filter(spec, attributes)) == [0, 1]
    # missing values: never match any/ranges, always match none
    assert _rows(compile_filter({"language": {"none": ["en", "fr"]}}, attributes)) == [3, 4]
    assert _rows(compile_filter({"year": {"any": [2001, 1990]}}, attributes)) == [2, 4]
    # a value nobody has matches nothing: an empty mask, not an error
    assert _rows(compile_filter({"genres": {"any": ["Western"]}}, attributes)) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "filter is empty"),
        ({"year": {}}, "empty condition"),
        ({"year": 1990}, "a condition is an object"),
        ({"colour": {"any": ["red"]}}, "unknown attribute 'colour'.*genres \\(multi\\)"),
        ({"genres": {"gte": 3}}, "numeric attributes only"),
        ({"year": {"gte": "1990"}}, "takes numbers"),
        ({"genres": {"any": []}}, "at least one value"),
        ({"genres": {"any": "Drama"}}, "takes a list"),
        ({"language": {"any": [1]}}, "takes strings"),
        ({"year": {"between": [1, 2]}}, "unknown operator"),
    ],
)
def test_bad_filters_are_filter_errors_naming_the_problem(
    attributes: ItemAttributes, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(FilterError, match=message):
        compile_filter(spec, attributes)  # type: ignore[arg-type]


def test_a_bundle_without_attributes_cannot_filter() -> None:
    with pytest.raises(FilterError, match="no item attributes"):
        compile_filter({"year": {"gte": 1990}}, None)
    assert issubclass(FilterError, ValueError)
