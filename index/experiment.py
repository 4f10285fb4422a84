"""The experiment contract: ``<root>/EXPERIMENT``, its arms, and which arm a user is in.

An experiment serves one or more *arms* (each a bundle id and a share of users) beside
the *control* arm, which is whatever ``CURRENT`` names. The file is JSON::

    {"format": 1, "id": "exp-…", "salt": "…", "started_at": 1765130000.0,
     "arms": [{"name": "canary", "bundle_id": "20261207T120000Z-ab12", "share": 0.1}]}

:func:`arm_of` assigns a user by a salted hash of the user id: sticky, the same on every
worker and replica, independent of request order. Arms take consecutive ranges of the
unit interval in file order; the rest is control. Parsing is strict (unknown fields,
bad names, shares outside (0, 1) or summing to 1 or more are errors), and nothing here
writes a root: that is :mod:`recall.index.roots`' and the CLI's job.
:class:`ExperimentState` is what a root's EXPERIMENT holds at one moment, as
:class:`recall.index.current.CurrentState` is for CURRENT; :func:`inspect_experiment`
reads it from a local root the way :func:`recall.index.current.inspect_current` does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recall.index.bundle import BundleError
from recall.index.current import BUNDLE_ID, Key, read_small_file
from recall.index.ids import ExternalId

__all__ = [
    "ARM_NAME",
    "CONTROL",
    "EXPERIMENT",
    "MAX_EXPERIMENT_BYTES",
    "Arm",
    "Experiment",
    "ExperimentState",
    "arm_of",
    "inspect_experiment",
    "parse_experiment",
    "user_point",
]

EXPERIMENT = "EXPERIMENT"
#: The arm of every user outside the experiment's arms: the bundle CURRENT names.
CONTROL = "control"
#: What an arm name may look like (it appears in metrics labels and URLs).
ARM_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: An experiment file is small; anything much longer is not ours.
MAX_EXPERIMENT_BYTES = 16384


class Arm(BaseModel):
    """One arm: ``share`` of all users (0 < share < 1) served from ``bundle_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=f"^{ARM_NAME.pattern}$")]
    bundle_id: Annotated[str, Field(pattern=f"^{BUNDLE_ID.pattern}$")]
    share: Annotated[float, Field(gt=0.0, lt=1.0)]

    @model_validator(mode="after")
    def _not_control(self) -> Arm:
        if self.name == CONTROL:
            raise ValueError(f"an arm cannot be named {CONTROL!r}: that is CURRENT's arm")
        return self


class Experiment(BaseModel):
    """The running experiment: its ``id`` (names its counters), the hash ``salt``, when it
    started (unix seconds) and its arms (distinct names, shares summing to less than 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Annotated[int, Field(ge=1, le=1)] = 1
    id: Annotated[str, Field(pattern=f"^{BUNDLE_ID.pattern}$")]
    salt: Annotated[str, Field(min_length=1, max_length=200)]
    started_at: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    arms: Annotated[tuple[Arm, ...], Field(min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _arms_fit(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        total = sum(arm.share for arm in self.arms)
        if total >= 1.0:
            raise ValueError(f"the arms' shares sum to {total:g}; control needs the rest (< 1)")
        return self

    def arm(self, name: str) -> Arm | None:
        """The arm called ``name`` (None for control or an unknown name)."""
        return next((arm for arm in self.arms if arm.name == name), None)

    def to_json(self) -> bytes:
        """The file's bytes (one JSON object and a newline)."""
        return (self.model_dump_json() + "\n").encode()


def parse_experiment(raw: bytes, where: str = EXPERIMENT) -> Experiment:
    """An experiment file's bytes -> :class:`Experiment`; :class:`BundleError` naming
    ``where`` and the first problem when they are not a valid one."""
    if len(raw) > MAX_EXPERIMENT_BYTES:
        raise BundleError(f"{where}: longer than {MAX_EXPERIMENT_BYTES} bytes")
    try:
        return Experiment.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(
            f"{where}: not a valid experiment: {loc + ': ' if loc else ''}{first['msg']}"
        ) from None


@dataclass(frozen=True)
class ExperimentState:
    """What a root's EXPERIMENT holds now. ``key``: None when there is none (no
    experiment running), else a value that changes whenever the file does (local: as
    CURRENT's; S3: ``("s3", etag)``). ``experiment``: the valid experiment it holds;
    ``problem``: why it holds none (server-log text), else None."""

    key: Key | None
    experiment: Experiment | None = None
    problem: str | None = None

    @classmethod
    def parse(cls, key: Key, raw: bytes, where: str) -> ExperimentState:
        """The state of a file ``where`` whose bytes are ``raw``; never raises."""
        try:
            return cls(key, parse_experiment(raw, where))
        except BundleError as e:
            return cls(key, problem=str(e))

    def running(self) -> Experiment | None:
        """The experiment, None when there is none; BundleError when the file is invalid."""
        if self.problem is not None:
            raise BundleError(self.problem)
        return self.experiment


def inspect_experiment(root: Path) -> ExperimentState:
    """What ``root/EXPERIMENT`` holds now (a regular file, not followed if a symlink)."""
    found = read_small_file(root / EXPERIMENT, MAX_EXPERIMENT_BYTES)
    if found.key is None:
        return ExperimentState(None)
    if found.raw is None:
        return ExperimentState(found.key, problem=found.problem)
    return ExperimentState.parse(found.key, found.raw, str(root / EXPERIMENT))


def user_point(salt: str, user_id: ExternalId) -> float:
    """The user's point in [0, 1): the first 8 bytes of blake2b(salt, NUL, user id as JSON).

    ``7`` and ``"7"`` hash differently: pass the id as the bundle types it
    (:meth:`recall.index.ids.IdMap.canonical`)."""
    message = salt.encode() + b"\0" + json.dumps(user_id).encode()
    digest = hashlib.blake2b(message, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def arm_of(experiment: Experiment | None, user_id: ExternalId) -> str:
    """The arm ``user_id`` is in: an arm's name, or :data:`CONTROL` (also with no experiment)."""
    if experiment is None:
        return CONTROL
    point = user_point(experiment.salt, user_id)
    edge = 0.0
    for arm in experiment.arms:
        edge += arm.share
        if point < edge:
            return arm.name
    return CONTROL
