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
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rung.broker.limits import BROKER_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES

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


COMPOSE = DEPLOY / "compose" / "compose.yaml"
RUNG_SERVICES = ("searcher", "worker", "cli", "operator")


def test_docker_compose_accepts_the_compose_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("RUNG_WORKER_SLOTS=4\n")
    done = _run(
        _tool("docker-compose"), "--env-file", str(env), "-f", str(COMPOSE), "config", "--quiet"
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- limits and defaults


def _max_message_size(config: str) -> int:
    (value,) = re.findall(r"^\s*max_message_size\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    return int(value)


def test_every_shipped_broker_config_takes_rungs_largest_message() -> None:
    """Review finding #11: the shipped configs said 1 MiB while Rung sent up to 96 MiB.
    Every config the deploy files ship sets max_message_size to the one constant, which
    is above the largest message Rung sends."""
    assert BROKER_MAX_MESSAGE_BYTES > MAX_MESSAGE_BYTES
    conf = DEPLOY / "rabbitmq" / "rabbitmq.conf"
    assert _max_message_size(conf.read_text()) == BROKER_MAX_MESSAGE_BYTES
    # Compose mounts that file into RabbitMQ's conf.d.
    rabbitmq = yaml.safe_load(COMPOSE.read_text())["services"]["rabbitmq"]
    assert any(v.startswith("../rabbitmq/rabbitmq.conf:") for v in rabbitmq["volumes"])
    # Kubernetes: the RabbitmqCluster's own configuration.
    (cluster,) = [d for _, d in _documents() if d.get("kind") == "RabbitmqCluster"]
    spec = cluster["spec"]
    assert isinstance(spec, dict)
    assert _max_message_size(spec["rabbitmq"]["additionalConfig"]) == BROKER_MAX_MESSAGE_BYTES


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _no_password_in(url: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme == "amqps", url
    assert parts.port == 5671, url
    assert parts.username, url
    assert parts.password is None, url


def test_compose_is_secure_by_default() -> None:
    """amqps with the broker's certificate checked, passwords from files (never in the
    environment or on a command line), worker users verified, trials as another user."""
    document = yaml.safe_load(COMPOSE.read_text())
    services = document["services"]
    tls = (DEPLOY / "rabbitmq" / "tls.conf").read_text()
    assert re.search(r"^listeners\.tcp\s*=\s*none$", tls, re.MULTILINE)
    assert any(v.startswith("../rabbitmq/tls.conf:") for v in services["rabbitmq"]["volumes"])
    for name in RUNG_SERVICES:
        service = services[name]
        env = service["environment"]
        _no_password_in(env["RUNG_BROKER_URL"])
        secret = env["RUNG_BROKER_PASSWORD_FILE"]
        assert secret.startswith("/run/secrets/"), name
        assert service["secrets"] == [secret.removeprefix("/run/secrets/")], name
        assert env["RUNG_TLS_CA"], name
        assert not [k for k in env if "PASSWORD" in k and not k.endswith("_FILE")], name
    for service in services.values():
        words = " ".join(
            str(w) for w in [*service.get("command", []), *service.get("entrypoint", [])]
        )
        assert "password=" not in words.lower().replace("--password-file", "")
    assert "--verify-worker-users" in services["searcher"]["command"]
    worker = services["worker"]["command"]
    assert worker[worker.index("--trial-user") + 1] == "rung-trial"
    assert all(
        path.startswith("./secrets/") for path in [s["file"] for s in document["secrets"].values()]
    )


def test_kubernetes_is_secure_by_default() -> None:
    """The same in the manifests: amqps only, password files, worker users verified, and
    a worker whose password file its trials (another uid) cannot read."""
    documents: dict[tuple[str, str], Any] = {
        (str(d["kind"]), str(d["metadata"]["name"])): d  # type: ignore[index]
        for _, d in _documents()
        if "metadata" in d
    }
    cluster = documents[("RabbitmqCluster", "rabbitmq")]["spec"]
    assert cluster["tls"]["disableNonTLSListeners"] is True
    assert cluster["tls"]["secretName"]
    pods = {
        name: documents[(kind, name)]["spec"]["template"]["spec"]
        for kind, name in (("StatefulSet", "rung-searcher"), ("Deployment", "rung-worker"))
    }
    for name, pod in pods.items():
        (container,) = pod["containers"]
        env = _env(container)
        _no_password_in(env["RUNG_BROKER_URL"])
        assert env["RUNG_BROKER_PASSWORD_FILE"].startswith("/var/run/secrets/rung/"), name
        assert env["RUNG_TLS_CA"], name
        assert not [k for k in env if "PASSWORD" in k and not k.endswith("_FILE")], name
        password = next(v for v in pod["volumes"] if v["name"] == "broker-password")
        assert password["secret"]["defaultMode"] == 0o400, name
    searcher = pods["rung-searcher"]["containers"][0]["args"]
    assert "--verify-worker-users" in searcher
    assert searcher[searcher.index("--operator") + 1] == "rung-operator"
    worker_pod = pods["rung-worker"]
    worker = worker_pod["containers"][0]
    assert worker["args"][worker["args"].index("--trial-user") + 1] == "rung-trial"
    # The secret is root's (no fsGroup gives a group of it away); trials run as 10002.
    assert worker_pod["securityContext"]["runAsUser"] == 0
    assert "fsGroup" not in worker_pod["securityContext"]
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The gpu overlay keeps the trial user.
    gpu = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "gpu" / "kustomization.yaml").read_text())
    (args,) = [
        op["value"]
        for patch in gpu["patches"]
        for op in yaml.safe_load(patch["patch"])
        if op["path"].endswith("/args")
    ]
    assert args[args.index("--trial-user") + 1] == "rung-trial"


def test_the_images_have_a_trial_user() -> None:
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DEPLOY / "docker" / name).read_text()
        assert "useradd --uid 10002 --gid rung-trial" in text, name


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


def test_make_certs_makes_what_compose_mounts(tmp_path: Path) -> None:
    """deploy/tls/make-certs.sh makes the files compose mounts into RabbitMQ and Rung, at
    the paths deploy/rabbitmq/tls.conf names, and a server certificate its CA verifies
    for the host name the Rung services connect to."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    made = tmp_path / "tls"
    done = _run("bash", str(DEPLOY / "tls" / "make-certs.sh"), str(made), "rabbitmq", "localhost")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounted: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if source.startswith("./tls/"):
                assert (made / source.removeprefix("./tls/")).exists(), source
                mounted[target] = source
    tls = (DEPLOY / "rabbitmq" / "tls.conf").read_text()
    for path in re.findall(r"^ssl_options\.\w+\s*=\s*(/\S+)$", tls, re.MULTILINE):
        assert path in mounted, f"tls.conf names {path}, which compose does not mount"
    verified = _run(
        "openssl", "verify", "-CAfile", str(made / "ca.pem"), "-verify_hostname", "rabbitmq",
        str(made / "server.pem"),
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    host = urlsplit(services["searcher"]["environment"]["RUNG_BROKER_URL"]).hostname
    assert host == "rabbitmq"
