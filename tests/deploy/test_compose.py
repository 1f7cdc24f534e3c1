"""deploy/docker-compose.yaml: it cannot run here (no Docker engine), so check that its parts fit."""

from __future__ import annotations

import yaml

from support.deploy import DEPLOY


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


def test_stack_has_the_service_prometheus_and_grafana():
    assert {"rnn-serve", "prometheus", "grafana"} <= compose()["services"].keys()


def test_every_bind_mount_exists():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_the_compose_service_with_the_alert_rules():
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (target,) = config["scrape_configs"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "rnn-serve" and f"{port}:{port}" in services["rnn-serve"]["ports"][0]
    mounted = {volume.split(":")[1] for volume in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/" + config["rule_files"][0] in mounted
