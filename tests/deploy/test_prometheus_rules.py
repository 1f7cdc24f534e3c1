"""deploy/prometheus/: promtool checks the config and the rules, and runs the alerts' unit tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from support.deploy import DEPLOY, exported_metrics, promql_metric_names

PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
# Metrics of other exporters that an alert may use: kube-state-metrics (readiness of the pods).
EXTERNAL_METRICS = {"kube_deployment_status_replicas_unavailable"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not found: install Debian's prometheus package (apt-get install prometheus); "
           ".ci/run does")


def promtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_rules_pass_promtool_check():
    result = promtool("check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_scrape_config_passes_promtool_check(config):
    promtool("check", "config", config)


@needs_promtool
def test_alert_unit_tests_pass():
    assert UNIT_TESTS
    promtool("test", "rules", *(str(path.relative_to(PROMETHEUS)) for path in UNIT_TESTS))


def test_every_alert_has_a_firing_unit_test():
    fired = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {check["alertname"] for check in case.get("alert_rule_test", []) if check["exp_alerts"]}
    assert {rule["alert"] for rule in alert_rules()} <= fired


def test_the_issue_asks_for_these_alerts():
    names = {rule["alert"] for rule in alert_rules()}
    assert {"RNNServeHighErrorRatio", "RNNServeHighLatencyP99", "RNNServeQueueWaitHigh",
            "RNNServeReplicaDown", "RNNServeReplicasNotReady", "RNNServeNoTraffic"} <= names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alerts_query_only_metrics_that_exist(rule):
    names = promql_metric_names(rule["expr"])
    assert names, f"{rule['alert']}: no metric name read from {rule['expr']!r}"
    unknown = names - exported_metrics() - EXTERNAL_METRICS
    assert not unknown, f"{rule['alert']} queries metrics nobody exports: {sorted(unknown)}"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert {"summary", "description"} <= rule["annotations"].keys()


def test_both_scrape_configs_name_the_job_the_alerts_use():
    for config in ("prometheus.yml", "prometheus-k8s.yml"):
        parsed = yaml.safe_load((PROMETHEUS / config).read_text())
        assert [job["job_name"] for job in parsed["scrape_configs"]] == ["rnn-serve"]
        assert parsed["rule_files"] == [ALERTS.name]
    for rule in alert_rules():
        assert 'job="rnn-serve"' in rule["expr"] or "kube_" in rule["expr"], rule["alert"]
