"""deploy/k8s/: every manifest against the Kubernetes schemas (offline), and the pieces fit each other."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.config import Settings

from support.deploy import DEPLOY

K8S = DEPLOY / "k8s"
# The oldest and the newest Kubernetes minor the manifests are meant for.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def manifests() -> list[tuple[Path, dict]]:
    """(file, document) for every resource in deploy/k8s except the kustomization."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def resource(kind: str, name: str = "rnn-serve") -> dict:
    matches = [doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}"
    return matches[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), manifests(),
                         ids=lambda x: x.name if isinstance(x, Path) else x["kind"])
def test_manifest_matches_the_kubernetes_schema(path, doc, version):
    # strict: an unknown (misspelt) field fails too. A kind without a bundled schema (a CRD) raises.
    kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    image = resource("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] in {entry["name"] for entry in kustomization["images"]}


def test_selectors_reach_the_deployment_pods():
    deployment = resource("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for service in (resource("Service"), resource("Service", "rnn-serve-metrics")):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = resource("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The headless Service lists not-ready pods, so Prometheus still sees (and alerts on) them.
    assert resource("Service", "rnn-serve-metrics")["spec"]["clusterIP"] == "None"
    assert resource("Service", "rnn-serve-metrics")["spec"]["publishNotReadyAddresses"] is True


def container() -> dict:
    return resource("Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_probes_use_the_service_health_endpoints():
    spec = container()
    port = {p["name"]: p["containerPort"] for p in spec["ports"]}["http"]
    assert port == 3000  # BentoML's port, EXPOSEd by the generated Dockerfile
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = spec["startupProbe"]
    # Models load and warm within ~60 s on a slow node: the budget must exceed that.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port


def test_pods_run_as_the_image_user_with_resources_and_grace():
    pod = resource("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    resources = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys()
    # Grace must cover the preStop sleep plus the longest request the service lets run.
    env = {item["name"]: item["value"] for item in container()["env"]}
    pre_stop = int(container()["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(env["RNNSERVE_TIMEOUT_S"])


def test_environment_is_the_service_configuration():
    env = {item["name"]: item["value"] for item in container()["env"]}
    known = {name for name, _, _ in Settings.describe()}
    assert env.keys() <= known, f"not settings of service/config.py: {sorted(env.keys() - known)}"
    settings = Settings.from_env(env)  # raises on a value the service would refuse at start
    assert settings.workers == 1
