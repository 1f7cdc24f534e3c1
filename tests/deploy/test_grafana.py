"""deploy/grafana/: the dashboard loads, covers what operators need and queries only real metrics."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from support.deploy import DEPLOY, exported_metrics, promql_metric_names, rnnserve_metrics

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rnn-serve.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    found = []
    for panel in dashboard()["panels"]:
        found += [panel, *panel.get("panels", [])]  # a collapsed row holds its panels
    return found


def targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]


def test_dashboard_is_valid_json_with_unique_panel_ids():
    board = dashboard()
    assert board["uid"] == "rnn-serve"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(("title", "expr"), targets(), ids=lambda x: x if len(x) < 60 else None)
def test_every_query_uses_only_metrics_the_service_exports(title, expr):
    names = promql_metric_names(expr)
    assert names, f"{title}: no metric found in {expr!r}"
    unknown = names - exported_metrics()
    assert not unknown, f"{title}: unknown metrics {sorted(unknown)} in {expr!r}"


def test_template_variables_query_real_metrics():
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.match(r"label_values\((\w+)", variable["query"]["query"]).group(1)
            assert metric in exported_metrics()


def test_dashboard_shows_every_custom_metric_and_the_request_metrics():
    used = set().union(*(promql_metric_names(expr) for _, expr in targets()))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    wanted = {re.sub(r"_(bucket|sum|count)$", "", name) for name in rnnserve_metrics()}
    assert wanted <= families, f"not on the dashboard: {sorted(wanted - families)}"
    assert {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket"} <= used
    exprs = " ".join(expr for _, expr in targets())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (endpoint, le) " \
               "(rate(bentoml_service_request_duration_seconds_bucket" in exprs


def test_provisioning_points_at_the_dashboard_and_the_compose_prometheus():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"]
                  if volume.startswith("./"))
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rnn-serve.yml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
