"""deploy/ checked by the tools people deploy with: docker-compose validates the compose
file, kubernetes-validate every Kubernetes manifest and what `kubectl kustomize` builds
of the base and each overlay, and checkov the Dockerfiles and the manifests, with every
skipped check justified in the file it is skipped in.

The tools come from scripts/deploy-tools.sh (which scripts/test.sh sources), never from
Rung's own dependencies; kubectl is the machine's own (our machines carry kubectl 1.32).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = Path(os.environ.get("RUNG_DEPLOY_TOOLS", ROOT / ".deploy-tools" / "bin"))
K8S = sorted((DEPLOY / "k8s").rglob("*.yaml"))
# Custom resources: their operators' CRDs are not in kubernetes-validate's schemas.
CUSTOM_KINDS = {"RabbitmqCluster", "ScaledObject", "TriggerAuthentication", "Kustomization"}


def _tool(name: str, fix: str = "run `source scripts/deploy-tools.sh` first") -> str:
    found = TOOLS / name if (TOOLS / name).exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: {fix}")
    return str(found)


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600, check=False)


def test_docker_compose_accepts_the_compose_file(tmp_path: Path) -> None:
    compose = DEPLOY / "compose" / "compose.yaml"
    env = tmp_path / ".env"
    env.write_text("RUNG_SEARCHER_PASSWORD=s\nRUNG_WORKER_PASSWORD=w\nRUNG_CLIENT_PASSWORD=c\n")
    done = _run(
        _tool("docker-compose"), "--env-file", str(env), "-f", str(compose), "config", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    # A missing password is refused with a message that names it.
    env.write_text("RUNG_WORKER_PASSWORD=w\nRUNG_CLIENT_PASSWORD=c\n")
    done = _run(_tool("docker-compose"), "--env-file", str(env), "-f", str(compose), "config")
    assert done.returncode != 0
    assert "RUNG_SEARCHER_PASSWORD" in done.stderr


def _documents() -> list[tuple[Path, dict[str, object]]]:
    return [
        (path, document)
        for path in K8S
        for document in yaml.safe_load_all(path.read_text())
        if isinstance(document, dict)
    ]


def test_kubernetes_validate_accepts_every_manifest(tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate")
    checked = 0
    for path, document in _documents():
        if document.get("kind") in CUSTOM_KINDS:
            continue
        single = tmp_path / f"{checked}-{path.name}"
        single.write_text(yaml.safe_dump(document))
        done = _run(validate, "--strict", str(single))
        assert done.returncode == 0, f"{path.relative_to(ROOT)}: {done.stdout}{done.stderr}"
        checked += 1
    assert checked >= 6


def _kustomize_build(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    done = _run(kubectl, "kustomize", str(directory))
    assert done.returncode == 0, f"kustomize build {directory.relative_to(ROOT)}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if isinstance(d, dict)]


def _worker_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (worker,) = [
        d for d in documents if (d["kind"], d["metadata"]["name"]) == ("Deployment", "rung-worker")
    ]
    container: dict[str, Any] = worker["spec"]["template"]["spec"]["containers"][0]
    return container


def test_kubernetes_validate_accepts_each_kustomize_build(tmp_path: Path) -> None:
    """`kubectl kustomize` (kustomize 5, as in kubectl 1.27 and later) builds the base and
    each overlay; kubernetes-validate --strict checks what it built."""
    kubectl = _tool("kubectl", "install kubectl 1.27 or later, which carries kustomize 5")
    validate = _tool("kubernetes-validate")
    builds = {}
    for name in ("base", "overlays/cpu", "overlays/gpu"):
        documents = _kustomize_build(kubectl, DEPLOY / "k8s" / name)
        builds[name] = documents
        standard = [d for d in documents if d["kind"] not in CUSTOM_KINDS]
        assert len(standard) >= 6
        built = tmp_path / f"{name.replace('/', '-')}.yaml"
        built.write_text(yaml.safe_dump_all(standard))
        done = _run(validate, "--strict", str(built))
        assert done.returncode == 0, f"build of {name}: {done.stdout}{done.stderr}"
        # Everything lands in Rung's namespace.
        namespaced = [d for d in documents if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"rung"}
    cpu, gpu = _worker_container(builds["overlays/cpu"]), _worker_container(builds["overlays/gpu"])
    assert cpu["image"] == "ghcr.io/rung-hpo/rung:0.1.0"
    assert "nvidia.com/gpu" not in json.dumps(cpu["resources"])
    assert gpu["image"] == "ghcr.io/rung-hpo/rung-gpu:0.1.0"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert gpu["args"][gpu["args"].index("--gpus") + 1] == "auto"


def test_every_kustomization_names_what_exists() -> None:
    """What `kustomize build` needs, checked without kubectl, so that a machine without
    it still checks something: every resource path exists, and every patch targets a
    resource of the base, by kind and name."""
    names = set()
    for _, document in _documents():
        metadata = document.get("metadata")
        if isinstance(metadata, dict) and "name" in metadata:
            names.add((document.get("kind"), metadata["name"]))
    kustomizations = list((DEPLOY / "k8s").rglob("kustomization.yaml"))
    assert len(kustomizations) == 3  # the base and two overlays
    for path in kustomizations:
        kustomization = yaml.safe_load(path.read_text())
        for entry in kustomization.get("resources", []):
            assert (path.parent / entry).exists(), f"{path}: {entry} does not exist"
        for patch in kustomization.get("patches", []):
            target = patch["target"]
            assert (target["kind"], target["name"]) in names, f"{path}: {target}"
            operations = yaml.safe_load(patch["patch"])
            assert all(op["op"] in ("add", "replace", "remove") for op in operations)


def test_checkov_passes_the_dockerfiles_and_manifests() -> None:
    checkov = _tool("checkov")
    done = _run(
        checkov,
        "--quiet",
        "--compact",
        "--output",
        "json",
        "--framework",
        "dockerfile",
        "kubernetes",
        "--directory",
        str(DEPLOY),
    )
    reports = json.loads(done.stdout) if done.stdout.strip().startswith(("[", "{")) else []
    if isinstance(reports, dict):
        reports = [reports]
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['file_path']}:{c['resource']})"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    assert done.returncode == 0, done.stderr[-2000:]
    # A skip is a `checkov:skip=CKV_...:reason` comment in the file: the reason must say why.
    for report in reports:
        for check in report.get("results", {}).get("skipped_checks", []):
            reason = str(check.get("suppress_comment", ""))
            assert len(reason) >= 20, f"{check['check_id']} in {check['file_path']}: {reason!r}"
