"""The experiment contract: strict parsing and a sticky, salted, share-true assignment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recall.index.bundle import BundleError
from recall.index.experiment import CONTROL, Arm, Experiment, arm_of, parse_experiment


def _experiment(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": "exp-1",
        "salt": "s1",
        "started_at": 1.0,
        "arms": [{"name": "canary", "bundle_id": "b-2", "share": 0.1}],
    }
    body.update(overrides)
    return body


def test_round_trip() -> None:
    experiment = Experiment.model_validate(_experiment())
    assert parse_experiment(experiment.to_json()) == experiment
    assert experiment.arm("canary") == Arm(name="canary", bundle_id="b-2", share=0.1)
    assert experiment.arm(CONTROL) is None


@pytest.mark.parametrize(
    ("arms", "problem"),
    [
        ([{"name": "control", "bundle_id": "b", "share": 0.1}], "cannot be named 'control'"),
        ([{"name": "a", "bundle_id": "b", "share": 0.0}], "greater than 0"),
        ([{"name": "a", "bundle_id": "b", "share": 1.0}], "less than 1"),
        (
            [
                {"name": "a", "bundle_id": "b", "share": 0.6},
                {"name": "c", "bundle_id": "d", "share": 0.4},
            ],
            "sum to 1",
        ),
        ([{"name": "a", "bundle_id": "b", "share": 0.1}] * 2, "repeat"),
        ([{"name": "A b", "bundle_id": "b", "share": 0.1}], "pattern"),
        ([{"name": "a", "bundle_id": "../x", "share": 0.1}], "pattern"),
        ([], "at least 1"),
    ],
)
def test_bad_experiments_are_refused(arms: object, problem: str) -> None:
    with pytest.raises(BundleError, match=problem):
        parse_experiment(json.dumps(_experiment(arms=arms)).encode(), "root/EXPERIMENT")


def test_unknown_fields_and_garbage_are_refused() -> None:
    with pytest.raises(BundleError, match="Extra inputs"):
        parse_experiment(json.dumps(_experiment(extra=1)).encode())
    with pytest.raises(BundleError, match="not a valid experiment"):
        parse_experiment(b"\xff not json")
    with pytest.raises(BundleError, match="longer than"):
        parse_experiment(b" " * 20000)


def test_assignment_is_sticky_salted_and_matches_the_shares() -> None:
    experiment = Experiment.model_validate(
        _experiment(
            arms=[
                {"name": "a", "bundle_id": "b-a", "share": 0.1},
                {"name": "b", "bundle_id": "b-b", "share": 0.3},
            ]
        )
    )
    users = range(20_000)
    arms = [arm_of(experiment, u) for u in users]
    assert arms == [arm_of(experiment, u) for u in reversed(users)][::-1]  # order-free
    share = {name: float(np.mean([a == name for a in arms])) for name in ("a", "b", CONTROL)}
    # 20k users: a share's standard error is below 0.0033; 4 of them is a sure bound.
    assert abs(share["a"] - 0.1) < 0.013
    assert abs(share["b"] - 0.3) < 0.013
    assert abs(share[CONTROL] - 0.6) < 0.013
    other_salt = experiment.model_copy(update={"salt": "s2"})
    moved = np.mean([arm_of(other_salt, u) != a for u, a in zip(users, arms, strict=True)])
    assert moved > 0.2  # a new salt reshuffles the users
    assert arm_of(None, 7) == CONTROL
    assert arm_of(experiment, 7) == arm_of(experiment, 7)
    # ids are hashed as typed: str "7" is a different user from int 7 in general
    assert {arm_of(experiment, str(u)) for u in range(50)} <= {"a", "b", CONTROL}
