"""The operator's alert rules: checked and unit-tested by promtool, loaded by a real Prometheus
that scrapes a real operator, and shipped by the chart as a PrometheusRule."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.controlplane import helm_binary
from tests.cluster.prometheus import Prometheus, promtool
from tests.manifests import example
from tests.operator_fixtures import REPO, OperatorProcess, apply, descendant_status, wait_for

CHART = REPO / "charts" / "studbook"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = CHART / "tests" / "alerts.test.yaml"


def _alerts() -> dict[str, dict[str, Any]]:
    """The chart's alert rules by name."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


# -- promtool ----------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in checked.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert is tested both ways: expected to fire at some time, and to be silent at another.
    checks = [
        check
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for check in test["alert_rule_test"]
    ]
    for alert in _alerts():
        mine = [check.get("exp_alerts") or [] for check in checks if check["alertname"] == alert]
        assert any(mine) and not all(mine), alert


MUTANTS = {
    # what it breaks: (alert, what of its expression to replace, by what). Each breaks a
    # behaviour the unit tests pin down: firing at all, a threshold, the guards.
    "never fires (job failures)": ("StudbookJobFailuresHigh", ">= 3", ">= 3000"),
    "threshold 2 (job failures)": ("StudbookJobFailuresHigh", ">= 3", ">= 2"),
    "new series missed (verification)": (
        "StudbookSignatureVerificationFailed",
        "studbook_signature_verification_failures_total offset 15m",
        "studbook_signature_verification_failures_total",
    ),
    "restart re-reports (verification)": (
        "StudbookSignatureVerificationFailed",
        "< on (job, instance)",
        "<= on (job, instance)",
    ),
    "old failures fire (verification)": ("StudbookSignatureVerificationFailed", ") > 0", ") >= 0"),
    "threshold 1 % (reconcile errors)": ("StudbookReconcileErrors", "> 0.1", "> 0.01"),
    "threshold 10 min (stuck)": ("StudbookDescendantStuck", "> 7200", "> 600"),
    "paused peer counted (stuck)": ("StudbookDescendantStuck", "[10m])) > 0)", "[10m])) >= 0)"),
}


@pytest.mark.parametrize("mutant", [*MUTANTS, "no for (job failures)"])
def test_a_broken_rule_fails_its_unit_tests(mutant: str, tmp_path: Path) -> None:
    """A copy of the rules with one alert broken fails promtool's tests: they can fail."""
    document = yaml.safe_load(ALERTS.read_text())
    rules = {r["alert"]: r for group in document["groups"] for r in group["rules"]}
    if mutant in MUTANTS:
        alert, old, new = MUTANTS[mutant]
        assert rules[alert]["expr"].count(old) == 1, rules[alert]["expr"]
        rules[alert]["expr"] = rules[alert]["expr"].replace(old, new)
    else:
        alert = "StudbookJobFailuresHigh"
        del rules[alert]["for"]
    # The same layout as the chart's, so the tests' relative rule_files path finds the copy.
    (tmp_path / "files").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "files" / "alerts.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "tests" / "alerts.test.yaml").write_text(ALERT_TESTS.read_text())
    assert promtool("check", "rules", str(tmp_path / "files" / "alerts.yaml")).returncode == 0
    tested = promtool("test", "rules", str(tmp_path / "tests" / "alerts.test.yaml"))
    assert tested.returncode != 0, tested.stdout
    assert f"alertname: {alert}" in tested.stdout + tested.stderr


# -- the chart's PrometheusRule ----------------------------------------------------------------


def _render(*values: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(helm_binary()), "template", "studbook", str(CHART), "--namespace", "studbook"]
        + [arg for value in values for arg in ("--set", value)],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_the_chart_renders_the_rules_as_a_prometheus_rule_only_when_enabled() -> None:
    assert not [d for d in _render() if d["kind"] == "PrometheusRule"]
    (rule,) = [
        d
        for d in _render(
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=kube-prometheus-stack",
        )
        if d["kind"] == "PrometheusRule"
    ]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "studbook"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "studbook"
    # Verbatim: Helm left the annotations' {{ $labels... }} for Prometheus.
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert "{{ $labels.phase }}" in str(rule["spec"])


# -- a real Prometheus scraping a real operator ------------------------------------------------


def _value(result: list[dict[str, Any]]) -> float | None:
    """The value of a one-element result vector; None when empty."""
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.mark.cluster
def test_prometheus_scrapes_the_operator_and_evaluates_the_chart_alerts(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    # Its parent never appears: it stays Pending, so its age in the phase keeps growing.
    apply(kube, namespace, example("policy"))
    apply(kube, namespace, example("suite"))
    apply(kube, namespace, example("lora-specialist"))
    scrape = {
        "job_name": "studbook",
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
    }
    with Prometheus(tmp_path / "prometheus", [scrape], rule_files=[ALERTS]) as prom:

        def wait(expr: str, what: str) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = wait_for(
                lambda: prom.query(expr), timeout=120, what=what, log=operator.log
            )
            return found

        up = wait('up{job="studbook"} == 1', "the operator scraped")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{operator.metrics_port}"
        wait_for(
            lambda: (
                descendant_status(kube, namespace, "minilm-sentiment").get("phase") == "Pending"
            ),
            timeout=120,
            what="the Descendant Pending",
            log=operator.log,
        )
        reconciles = wait(
            'studbook_reconciles_total{job="studbook",kind="Descendant",outcome="ok"} > 0',
            "reconciles scraped",
        )
        assert reconciles[0]["metric"]["instance"] == up[0]["metric"]["instance"]
        wait(
            'studbook_descendants{job="studbook",phase="Pending",stage="none"} == 1',
            "the Pending Descendant counted",
        )
        # The wait's age grows with the clock: sampled twice, the second is older by at least
        # the time between the samples (both come from the operator's own clock).
        age = 'studbook_descendant_oldest_phase_age_seconds{job="studbook",phase="Pending"}'
        first = _value(wait(age, "the Pending age scraped"))
        assert first is not None and first >= 0
        later = wait_for(
            lambda: (v := _value(prom.query(age))) is not None and v >= first + 2 and v,
            timeout=60,
            what="the Pending age growing",
            log=operator.log,
        )
        assert later < first + 600

        # Every alert of the chart's file is loaded and evaluates without error against what
        # the operator exports; none fires on this healthy operator.
        expected = set(_alerts())

        def evaluated() -> dict[str, dict[str, Any]] | None:
            rules = {
                rule["name"]: rule
                for group in prom.rule_groups()
                if group["file"] == str(ALERTS)
                for rule in group["rules"]
            }
            # Before its first evaluation a rule's health is "unknown".
            done = set(rules) == expected and all(
                r["health"] != "unknown" and not r["lastEvaluation"].startswith("0001-")
                for r in rules.values()
            )
            return rules if done else None

        rules = wait_for(evaluated, timeout=120, what="the chart's rules evaluated")
        for name, rule in rules.items():
            assert rule["type"] == "alerting", name
            assert rule["health"] == "ok", (name, rule.get("lastError"))
            assert rule["state"] == "inactive", (name, rule["alerts"])
        assert prom.query('ALERTS{alertstate="firing"}') == []
