"""docker/k8s/: the manifests validate (kubernetes-validate --strict, offline), and they
run what the images and the service really have: probes on real routes and the port the
settings bind, the images' commands and users, settings the service accepts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from recall.service.app import create_app
from recall.service.settings import Settings
from recall.service.state.redis_client import is_cluster_url, parse_cluster_url
from tests.live import live_server
from tests.live import settings as live_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
VENV_BIN = Path(sys.executable).parent


def _makefile_version() -> str:
    match = re.search(r"^K8S_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile has no K8S_VERSION"
    return match.group(1)


def _resources() -> dict[str, dict[str, Any]]:
    """``kind/name`` -> the resource, for every file the kustomization lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def _dockerfile(name: str) -> tuple[list[str], str]:
    """The image's CMD (exec form) and USER of docker/Dockerfile.<name>."""
    text = (REPO / "docker" / f"Dockerfile.{name}").read_text()
    cmd = re.findall(r"^CMD (\[.*\])$", text, re.M)
    user = re.findall(r"^USER (\d+):\d+$", text, re.M)
    return json.loads(cmd[-1]), user[-1]


def _pod(resource: dict[str, Any]) -> dict[str, Any]:
    spec = resource["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    )
    pod: dict[str, Any] = template["spec"]
    return pod


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_manifests_validate_strictly() -> None:
    done = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", _makefile_version()]
        + [
            str(K8S / name)
            for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_replicas_run_the_image_on_real_routes(published_root: Path) -> None:
    resources = _resources()
    pod = _pod(resources["Deployment/recall"])
    (container,) = pod["containers"]
    command, uid = _dockerfile("service")
    assert container["command"] == command
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsNonRoot"] is True
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]

    settings = resources["ConfigMap/recall-settings"]["data"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(settings["RECALL_PORT"])
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    with live_server(create_app(live_settings(published_root))) as url:
        for probe in probes.values():
            assert probe["port"] == "http"
            assert httpx.get(url + probe["path"], timeout=10).status_code == 200, probe
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[settings["RECALL_CACHE_DIR"]] == "cache"
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert requests["memory"] == "1Gi" and limits["memory"] == "2Gi"  # README's sizing

    service = resources["Service/recall"]
    assert (
        service["spec"]["selector"]
        == resources["Deployment/recall"]["spec"]["selector"]["matchLabels"]
    )
    assert (
        resources["PodDisruptionBudget/recall"]["spec"]["selector"]["matchLabels"]
        == (service["spec"]["selector"])
    )
    target = resources["HorizontalPodAutoscaler/recall"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "recall")


def test_the_trainer_job_runs_the_image_and_publishes_to_the_bucket() -> None:
    resources = _resources()
    pod = _pod(resources["CronJob/recall-trainer"])
    (container,) = pod["containers"]
    command, uid = _dockerfile("trainer")
    assert container["command"] == command
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"configMapRef": {"name": "recall-settings"}} in container["envFrom"]
    settings = resources["ConfigMap/recall-settings"]["data"]
    assert settings["RECALL_ROOT"].startswith("s3://")
    script = (REPO / "docker" / "train-and-publish.sh").read_text()
    assert "TRAINER_BUNDLES" in script and "--root" in script


def test_the_settings_are_ones_the_service_accepts() -> None:
    data = _resources()["ConfigMap/recall-settings"]["data"]
    fields = set(Settings.model_fields)
    for key in data:
        if key.startswith("RECALL_"):
            assert key.removeprefix("RECALL_").lower() in fields, key
    values = {
        key.removeprefix("RECALL_").lower(): value
        for key, value in data.items()
        if key.startswith("RECALL_")
    }
    settings = Settings.model_validate(values)
    assert str(settings.root) == data["RECALL_ROOT"]
    # a Redis Cluster URL the cluster backend parses (the test reaches no cluster)
    assert is_cluster_url(settings.state_url)
    assert parse_cluster_url(settings.state_url).nodes
