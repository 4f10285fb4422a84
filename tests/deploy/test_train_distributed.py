"""docker/k8s/distributed/: the distributed trainer Job. Its manifests validate, they wire
the pods to the rendezvous the way the script expects (pod 0's stable name through the
headless Service, as many pods as TRAINER_NNODES), and docker/train-distributed.sh, the
command every pod runs, trains one model across two "pods" (two local processes on
127.0.0.1, as the Job's pods would run it) and publishes exactly one bundle."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from recall.index import bundle as b
from recall.index.current import read_current
from tests.live import free_port

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTED = REPO / "docker" / "k8s" / "distributed"
SCRIPT = REPO / "docker" / "train-distributed.sh"
VENV_BIN = Path(sys.executable).parent
CONFIG = "hidden = [16]\nbatch_size = 128\nepochs = 2\npatience = 2\nvalidation_users = 100\n"


def _resources() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((DISTRIBUTED / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        doc = yaml.safe_load((DISTRIBUTED / name).read_text())
        found[doc["kind"]] = doc
    return found


def _k8s_version() -> str:
    match = re.search(r"^K8S_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile has no K8S_VERSION"
    return match.group(1)


def test_the_manifests_validate_strictly() -> None:
    kustomization = yaml.safe_load((DISTRIBUTED / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {
        p.name for p in DISTRIBUTED.glob("*.yaml") if p.name != "kustomization.yaml"
    }
    done = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", _k8s_version()]
        + [str(DISTRIBUTED / name) for name in kustomization["resources"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_job_meets_at_its_first_pod_and_runs_the_script_the_image_installs() -> None:
    resources = _resources()
    job, service = resources["Job"], resources["Service"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}

    assert spec["completionMode"] == "Indexed"
    assert int(env["TRAINER_NNODES"]) == spec["completions"] == spec["parallelism"]
    # an indexed Job's pod i is "<job>-<i>", reachable as "<job>-<i>.<subdomain>"
    assert pod["subdomain"] == service["metadata"]["name"]
    host, port = env["TRAINER_RDZV_ENDPOINT"].split(":")
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert int(port) == service["spec"]["ports"][0]["targetPort"]
    assert int(port) in {p["containerPort"] for p in container["ports"]}
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()

    # the checkpoints and the bundle live on the volume every pod shares
    claim = resources["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    shared = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    assert volumes[shared]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    for key in ("TRAINER_BUNDLES", "TRAINER_DATA"):
        assert env[key].startswith(mounts[shared] + "/"), key

    dockerfile = (REPO / "docker" / "Dockerfile.trainer").read_text()
    (command,) = container["command"]
    assert f"COPY docker/{SCRIPT.name} /usr/local/bin/{command}" in dockerfile
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _pod(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sh", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_pods_train_one_model_and_publish_it_once(synthetic_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    root = tmp_path / "bundles"  # the shared volume; a local root publishes bundles inside it
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TRAINER_NNODES": "2",
        "TRAINER_RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
        "TRAINER_RDZV_ID": "test-run",
        "TRAINER_DATA": str(synthetic_dir),
        "TRAINER_BUNDLES": str(root),
        "RECALL_ROOT": str(root),
        "TRAINER_TRAIN_ARGS": f"--config {tmp_path / 'config.toml'}",
    }
    pods = [_pod(env), _pod(env)]
    results = [pod.communicate(timeout=300) for pod in pods]
    for pod, (_, err) in zip(pods, results, strict=True):
        assert pod.returncode == 0, err

    errors = [err for _, err in results]
    assert sum("published" in err for err in errors) == 1, errors
    assert sum("rank 0 ran on another pod" in err for err in errors) == 1, errors
    (bundle,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert read_current(root) == bundle.name
    manifest = b.read_manifest(root / bundle.name)
    for name in manifest.files:
        b.verify_file(root / bundle.name, manifest, name)


def test_a_pod_without_a_data_snapshot_exits_2_before_the_rendezvous(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TRAINER_NNODES": "2",
        "TRAINER_RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
        "TRAINER_DATA": str(tmp_path / "empty"),
        "TRAINER_BUNDLES": str(tmp_path / "bundles"),
    }
    done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "no interactions file in TRAINER_DATA" in done.stderr
    assert not (tmp_path / "bundles").exists()
