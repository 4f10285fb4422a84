"""``recall experiment start|status|stop``: the EXPERIMENT file of a root.

``start`` verifies every arm's bundle (the replicas' rule), loads its users into the
state store where the replicas keep them there (``--state-url``), then creates
``ROOT/EXPERIMENT`` unless one exists; ``stop`` removes it, after ``--promote NAME`` made
that arm's bundle CURRENT through the publish switch of ``recall publish``. Bad input
(a share outside (0, 1) or shares summing to 1 or more, an arm named ``control`` or
badly, an unknown or unverifiable bundle, a second experiment, a stop with none running,
the promotion of an unknown arm) exits 2 with one line and writes nothing; 3: the object
store of an ``s3://`` root did not answer; 4: another publish replaced CURRENT during a
promotion (EXPERIMENT then stays).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recall.cli.command import Subcommands
from recall.cli.users import add_state_url

if TYPE_CHECKING:
    from recall.index.experiment import Experiment
    from recall.index.roots import Root

logger = logging.getLogger("recall")


def add_parser(sub: Subcommands) -> None:
    experiment = sub.add_parser(
        "experiment",
        help="serve other bundles beside CURRENT to a sticky share of users",
        description="an experiment: arms served beside CURRENT (the control arm) to a "
        "sticky, salted-hash share of users each",
    )
    actions = experiment.add_subparsers(
        dest="experiment_command", required=True, metavar="ACTION", help="what to do"
    )
    start = actions.add_parser(
        "start",
        help="verify the arms' bundles and start the experiment",
        description="verify every arm's bundle, load its users into the state store "
        "(Redis mode), then write ROOT/EXPERIMENT (refused while one runs)",
    )
    start.set_defaults(handler=run_start)
    start.add_argument("root", help="the bundle root: a directory or s3://bucket/prefix")
    start.add_argument(
        "--arm",
        action="append",
        required=True,
        metavar="NAME=BUNDLE_ID",
        help="an arm and the bundle of the root it serves (repeat for more arms)",
    )
    start.add_argument(
        "--share",
        action="append",
        required=True,
        type=float,
        help="the share of users of each arm, in (0, 1): once for every arm, or once per "
        "arm in --arm order; control gets the rest",
    )
    start.add_argument("--salt", help="the assignment's hash salt (default: random)")
    add_state_url(start)
    status = actions.add_parser(
        "status",
        help="the running experiment: arms, shares, bundles, start",
        description="the running experiment of ROOT: arms, shares, bundles, when it started",
    )
    status.set_defaults(handler=run_status)
    status.add_argument("root", help="the bundle root: a directory or s3://bucket/prefix")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    stop = actions.add_parser(
        "stop",
        help="stop the experiment (optionally promoting an arm's bundle to CURRENT)",
        description="remove ROOT/EXPERIMENT; with --promote, that arm's bundle becomes "
        "CURRENT first (the switch of recall publish)",
    )
    stop.set_defaults(handler=run_stop)
    stop.add_argument("root", help="the bundle root: a directory or s3://bucket/prefix")
    stop.add_argument("--promote", metavar="NAME", help="make this arm's bundle CURRENT first")
    stop.add_argument("--keep", type=int, default=3, help="bundles a promotion's retention keeps")
    add_state_url(stop)


def new_experiment(arms: list[str], shares: list[float], salt: str | None) -> Experiment:
    """The experiment the flags describe, with a time-ordered id; ValueError naming the
    first problem."""
    from recall.index.bundle import BundleError
    from recall.index.experiment import parse_experiment

    if len(shares) not in (1, len(arms)):
        raise ValueError(f"give one --share for every arm or one per arm ({len(arms)})")
    parsed = []
    for text, share in zip(arms, shares * len(arms) if len(shares) == 1 else shares, strict=True):
        name, sep, bundle_id = text.partition("=")
        if not sep:
            raise ValueError(f"--arm {text!r}: expected NAME=BUNDLE_ID")
        parsed.append({"name": name, "bundle_id": bundle_id, "share": share})
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    body = {
        "id": f"exp-{stamp}-{secrets.token_hex(3)}",
        "salt": secrets.token_hex(8) if salt is None else salt,
        "started_at": now,
        "arms": parsed,
    }
    try:
        return parse_experiment(json.dumps(body).encode(), "the experiment")
    except BundleError as e:
        raise ValueError(str(e)) from None


def run_start(args: argparse.Namespace) -> int:
    from recall.cli.users import user_sink
    from recall.index.roots import open_root

    experiment = new_experiment(args.arm, args.share, args.salt)
    root = open_root(args.root)
    with user_sink(args) as users:
        root.start_experiment(experiment, users=users)
    sys.stdout.write(f"{experiment.id}\n")
    return 0


def status_of(root: Root) -> dict[str, Any]:
    """``{"experiment": the file's content | null, "control": {"bundle_id", "share"}}``."""
    experiment = root.experiment().running()
    shares = 0.0 if experiment is None else sum(arm.share for arm in experiment.arms)
    return {
        "experiment": None if experiment is None else experiment.model_dump(),
        "control": {"bundle_id": root.current_id(), "share": 1.0 - shares},
    }


def run_status(args: argparse.Namespace) -> int:
    from recall.index.roots import LocalRoot, open_root

    root = open_root(args.root)
    if isinstance(root, LocalRoot) and not root.path.is_dir():  # a typo, not "no experiment"
        raise ValueError(f"{root.url}: no such directory")
    status = status_of(root)
    if args.json:
        sys.stdout.write(json.dumps(status) + "\n")
        return 0
    experiment, control = status["experiment"], status["control"]
    if experiment is None:
        current = control["bundle_id"] or "absent"
        sys.stdout.write(f"no experiment is running; CURRENT is {current}\n")
        return 0
    started = datetime.fromtimestamp(experiment["started_at"], UTC).isoformat(timespec="seconds")
    lines = [f"experiment {experiment['id']} (started {started})"]
    rows = [("control", str(control["bundle_id"]) + " (CURRENT)", control["share"])]
    rows += [(a["name"], a["bundle_id"], a["share"]) for a in experiment["arms"]]
    width = max(len(name) for name, _, _ in rows)
    lines += [f"  {name:<{width}}  {share:6.1%}  {bundle}" for name, bundle, share in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from recall.cli.publish import publish_bundle
    from recall.cli.users import user_sink
    from recall.index.experiment import CONTROL
    from recall.index.roots import S3Root, open_root

    root = open_root(args.root)
    seen = root.experiment()
    if seen.key is None:
        raise ValueError(f"{root.url}: no experiment is running")
    if args.promote is not None:
        experiment = seen.running()
        assert experiment is not None  # seen.key is set and it is valid
        arm = experiment.arm(args.promote)
        if arm is None:
            names = ", ".join(a.name for a in experiment.arms)
            why = "control is CURRENT already" if args.promote == CONTROL else "no such arm"
            raise ValueError(f"--promote {args.promote!r}: {why} (the arms: {names})")
        bundle: str | Path = (
            f"{root.url}/{arm.bundle_id}"
            if isinstance(root, S3Root)
            else Path(root.url) / arm.bundle_id
        )
        with user_sink(args) as users:
            code = publish_bundle(bundle, None, keep=args.keep, users=users)
        if code != 0:
            return code
    root.stop_experiment(seen)
    if args.promote is not None:
        logger.info("promoted %s: CURRENT is %s", args.promote, root.current_id())
    return 0
