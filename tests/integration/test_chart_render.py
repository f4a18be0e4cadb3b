"""The Helm chart as rendered: its values schema, what each value does to the manifests, and
every manifest accepted by the test control plane's API server (Kubernetes 1.37) under strict
field validation, with default values, with every optional feature on and with cert-manager
issuing the webhook's certificate; and, as Argo CD syncs it, a second sync that changes nothing.

tests/integration/test_chart.py installs the chart and runs the operator with it; this file checks
the manifests themselves.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from studbook import metrics
from studbook.controllers.webhook import WebhookOptions
from tests.cluster.controlplane import ControlPlane, helm_binary
from tests.cluster.fixtures import apply_crds, apply_peering_crds, load_crds
from tests.operator_fixtures import REPO

CHART = REPO / "charts" / "studbook"
PROMETHEUS_OPERATOR_CRDS = REPO / "tests" / "cluster" / "vendor" / "prometheus-operator"
CERT_MANAGER_CRDS = REPO / "tests" / "cluster" / "vendor" / "cert-manager"
DOCS = REPO / "docs" / "chart.md"

EVERYTHING_ON = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
    "metrics.serviceMonitor.scrapeTimeout=10s",
    "metrics.prometheusRule.enabled=true",
    "metrics.service.annotations.example\\.com/team=ml-platform",
    "dashboard.enabled=true",
    "dashboard.annotations.grafana_folder=Studbook",
    "podDisruptionBudget.enabled=true",
    "webhook.tlsSecret=studbook-webhook-cert-manager",
    "serviceAccount.annotations.example\\.com/role=studbook",
    "imagePullSecrets[0].name=registry",
    "priorityClassName=studbook-critical",
    "nodeSelector.kubernetes\\.io/os=linux",
    "tolerations[0].key=dedicated",
    "tolerations[0].operator=Exists",
    "tolerations[0].effect=NoSchedule",
    "podAnnotations.example\\.com/owner=ml-platform",
)
"""Every optional feature on (with watchNamespaces, set per test)."""

CERT_MANAGER = ("webhook.certManager.enabled=true",)
"""cert-manager issues the webhook's certificate, from the chart's own CA."""
CERT_MANAGER_ISSUER = (
    *CERT_MANAGER,
    "webhook.certManager.issuerRef.name=platform-ca",
    "webhook.certManager.issuerRef.kind=ClusterIssuer",
)
"""cert-manager issues it from an issuer of the user's."""
EVERYTHING_BUT_THE_TLS_SECRET = tuple(v for v in EVERYTHING_ON if "tlsSecret" not in v)


@functools.cache
def _helm_path() -> str:
    return str(helm_binary())  # build.sh checks its cache each call: once is enough


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm_path(), *args], capture_output=True, text=True)


def _template(namespace: str = "studbook-system", *values: str) -> str:
    """``helm template`` of the chart with ``--set`` ``values`` (its defaults otherwise)."""
    sets = [arg for value in values for arg in ("--set", value)]
    rendered = _helm("template", "sb", str(CHART), "--namespace", namespace, *sets)
    assert rendered.returncode == 0, rendered.stderr
    return rendered.stdout


def _render(namespace: str = "studbook-system", *values: str) -> list[dict[str, Any]]:
    """The objects of :func:`_template`."""
    return [doc for doc in yaml.safe_load_all(_template(namespace, *values)) if doc]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def _operator(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod template and its one container."""
    template: dict[str, Any] = _one(objects, "Deployment")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template, container


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# Values and their documentation.


def test_helm_lint_strict_is_clean() -> None:
    everything = [
        a for v in ("watchNamespaces={ml-breeding}", *EVERYTHING_ON) for a in ("--set", v)
    ]
    cert_manager = [a for v in CERT_MANAGER_ISSUER for a in ("--set", v)]
    for options in ([], ["--strict"], ["--strict", *everything], ["--strict", *cert_manager]):
        linted = _helm("lint", *options, str(CHART))
        assert linted.returncode == 0, linted.stdout + linted.stderr
        assert "[WARNING]" not in linted.stdout and "[ERROR]" not in linted.stdout, linted.stdout
        assert "1 chart(s) linted, 0 chart(s) failed" in linted.stdout


WRONG_VALUES = {
    "a word for a number": (["--set", "replicas=two"], "at '/replicas': got string, want integer"),
    "a word for a boolean": (
        ["--set-string", "webhook.enabled=yes"],
        "at '/webhook/enabled': got string, want boolean",
    ),
    "a port out of range": (["--set", "metrics.port=70000"], "at '/metrics/port'"),
    "a number for a duration": (
        ["--set", "metrics.serviceMonitor.interval=30"],
        "at '/metrics/serviceMonitor/interval': got number, want string",
    ),
    "not a duration": (
        ["--set", "metrics.serviceMonitor.interval=half a minute"],
        "at '/metrics/serviceMonitor/interval'",
    ),
    "not a number or percentage": (
        ["--set", "podDisruptionBudget.minAvailable=half"],
        "at '/podDisruptionBudget/minAvailable'",
    ),
    "not a namespace name": (["--set", "watchNamespaces={ML_Breeding}"], "at '/watchNamespaces/0'"),
    "a misspelt value": (["--set", "replica=2"], "additional properties 'replica' not allowed"),
}


@pytest.mark.parametrize(("value", "said"), WRONG_VALUES.values(), ids=WRONG_VALUES.keys())
def test_a_value_of_the_wrong_type_is_refused_by_the_schema(value: list[str], said: str) -> None:
    rendered = _helm("template", "sb", str(CHART), *value)
    assert rendered.returncode != 0, rendered.stdout[:500]
    assert "values don't meet the specifications of the schema" in rendered.stderr
    assert said in rendered.stderr, rendered.stderr


def _value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every value's dotted path, sections left out; a value whose schema leaves its keys free
    (a map of labels, a volume source) is one value."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        properties = schema["properties"].get(key, {})
        if isinstance(value, dict) and "properties" in properties:
            paths += _value_paths(value, properties, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_the_schema_describes_every_value_and_only_those() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node: dict[str, Any], values: Any, prefix: str) -> None:
        assert node.get("description"), f"{prefix or 'the schema'} has no description"
        if "properties" not in node:
            return
        # Strict: a misspelt value is refused rather than ignored.
        assert node.get("additionalProperties") is False, prefix
        documented = set(node["properties"]) - {"global"}
        assert documented == set(values), f"{prefix}: schema {documented} ≠ values {set(values)}"
        for key, child in node["properties"].items():
            if key != "global":
                walk(child, values[key], f"{prefix}{key}.")

    walk(schema, values, "")


def test_docs_and_values_yaml_explain_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = DOCS.read_text()
    missing = [p for p in _value_paths(values, schema) if f"`{p}`" not in documented]
    assert not missing, f"docs/chart.md does not describe {missing}"
    # values.yaml explains itself (`helm show values`): a comment just above each top-level
    # value or section.
    lines = (CHART / "values.yaml").read_text().splitlines()
    for key in values:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}:")]
        assert lines[index - 1].startswith("#"), f"values.yaml: {key} has no comment above it"


# What the values render.


def test_every_object_carries_the_charts_labels() -> None:
    objects = _render("studbook-system", "watchNamespaces={ml-breeding}", *EVERYTHING_ON)
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert labels.get("helm.sh/chart") == "studbook-0.1.0", where
        assert labels.get("app.kubernetes.io/name") == "studbook", where
        assert labels.get("app.kubernetes.io/instance") == "sb", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/component"), where
    # The rest goes through the helpers too: a release's names follow fullnameOverride.
    renamed = _render("studbook-system", "fullnameOverride=breeder")
    names = {o["metadata"]["name"] for o in renamed if o["kind"] != "ClusterKopfPeering"}
    assert all(name.startswith("breeder-") for name in names), names


def test_the_operator_is_probed_on_kopfs_liveness_endpoint() -> None:
    for values in ((), ("health.port=8181",)):
        _, container = _operator(_render("studbook-system", *values))
        (liveness,) = [a for a in container["args"] if a.startswith("--liveness=")]
        served = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)(/\S+)", liveness)
        assert served, liveness
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert (ports[get["port"]], get["path"]) == (int(served[1]), served[2]), probe
            assert container[probe]["periodSeconds"] >= 1
    assert served[1] == "8181"


def test_scheduling_values_reach_the_operators_pod() -> None:
    template, container = _operator(_render("studbook-system", *EVERYTHING_ON))
    pod = template["spec"]
    assert pod["priorityClassName"] == "studbook-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert template["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    # Without an affinity of the user's, the replicas prefer different nodes.
    spread = _operator(_render())[0]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = spread["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"], template["metadata"]["labels"]
    )
    mine = _render("studbook-system", "affinity.nodeAffinity.x=y")
    assert _operator(mine)[0]["spec"]["affinity"] == {"nodeAffinity": {"x": "y"}}


@pytest.mark.parametrize(
    ("values", "budget"),
    [
        ((), {"minAvailable": 1}),
        (("replicas=1",), {"maxUnavailable": 1}),
        (("podDisruptionBudget.maxUnavailable=50%",), {"maxUnavailable": "50%"}),
        (("replicas=3", "podDisruptionBudget.minAvailable=2"), {"minAvailable": 2}),
        (("podDisruptionBudget.enabled=false",), None),
    ],
    ids=["two replicas", "one replica", "a percentage", "three replicas", "disabled"],
)
def test_the_disruption_budget(values: tuple[str, ...], budget: dict[str, Any] | None) -> None:
    objects = _render("studbook-system", *values)
    found = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    if budget is None:
        assert not found
        return
    (pdb,) = found
    spec = dict(pdb["spec"])
    selector = spec.pop("selector")["matchLabels"]
    assert spec == budget
    assert _selects(selector, _operator(objects)[0]["metadata"]["labels"])


def test_a_disruption_budget_with_both_bounds_is_refused() -> None:
    both = ("podDisruptionBudget.minAvailable=1", "podDisruptionBudget.maxUnavailable=1")
    rendered = _helm("template", "sb", str(CHART), *(a for v in both for a in ("--set", v)))
    assert rendered.returncode != 0
    assert "set minAvailable or maxUnavailable, not both" in rendered.stderr


def test_the_services_reach_the_operator_and_the_service_monitor_its_metrics() -> None:
    objects = _render("studbook-system", "metrics.serviceMonitor.enabled=true", "metrics.port=9191")
    template, container = _operator(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert "--metrics-port=9191" in container["args"] and ports["metrics"] == 9191
    metrics_service = _one(objects, "Service", "sb-metrics")
    webhook_service = _one(objects, "Service", "sb-webhook")
    for service in (metrics_service, webhook_service):
        assert _selects(service["spec"]["selector"], template["metadata"]["labels"])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, port
    (port,) = metrics_service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("metrics", 9191)
    # The ServiceMonitor picks the metrics Service alone, by its port's name.
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    chosen = [
        s["metadata"]["name"]
        for s in objects
        if s["kind"] == "Service"
        and _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert chosen == ["sb-metrics"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["studbook-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "metrics",
        "/metrics",
        "30s",
    )
    # Off by default: its CRD may not be installed.
    assert not [o for o in _render() if o["kind"] in ("ServiceMonitor", "ConfigMap")]


def test_a_tls_secret_of_the_users_replaces_the_generated_one() -> None:
    objects = _render("studbook-system", "webhook.tlsSecret=from-cert-manager")
    assert not [o for o in objects if o["kind"] == "Secret"]
    template, _ = _operator(objects)
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == "from-cert-manager"
    generated = _render()
    assert _one(generated, "Secret")["metadata"]["name"] == "sb-webhook-tls"
    # With it, as Argo CD renders (`helm template`), every render is the same, so the
    # application stays in sync; without it, the generated certificate differs every time.
    again = ("webhook.tlsSecret=from-cert-manager", *EVERYTHING_ON)
    assert _render("studbook-system", *again) == _render("studbook-system", *again)
    assert _one(_render(), "Secret")["data"] != _one(generated, "Secret")["data"]


def _webhook_tls_secret(objects: list[dict[str, Any]]) -> str:
    template, _ = _operator(objects)
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "webhook-tls"]
    return str(volume["secret"]["secretName"])


def test_cert_manager_issues_the_webhooks_certificate_from_the_charts_own_ca() -> None:
    objects = _render("studbook-system", *CERT_MANAGER)
    assert not [o for o in objects if o["kind"] == "Secret"]  # cert-manager writes it
    issuers = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Issuer"}
    certificates = {
        o["spec"]["secretName"]: o["spec"] for o in objects if o["kind"] == "Certificate"
    }
    for obj in objects:
        if obj["kind"] in ("Issuer", "Certificate"):
            assert obj["apiVersion"] == "cert-manager.io/v1"
            assert obj["metadata"]["namespace"] == "studbook-system"
    # The Secret the operator mounts is the serving certificate's, for the names the operator
    # serves under (those the API server checks).
    serving = certificates.pop(_webhook_tls_secret(objects))
    _, container = _operator(objects)
    (service,) = [
        a.partition("=")[2] for a in container["args"] if a.startswith("--webhook-service=")
    ]
    assert serving["dnsNames"] == WebhookOptions(9443, service=service).names()
    assert serving["dnsNames"][0] == "sb-webhook.studbook-system.svc"
    assert "isCA" not in serving and "server auth" in serving["usages"]
    # It is signed by the chart's CA Issuer, whose CA a self-signed Issuer signs: nothing else.
    ((ca_secret, ca),) = certificates.items()
    (selfsigned,) = [name for name, spec in issuers.items() if spec == {"selfSigned": {}}]
    ref = serving["issuerRef"]
    assert (ref["kind"], ref["group"]) == ("Issuer", "cert-manager.io")
    assert issuers[ref["name"]] == {"ca": {"secretName": ca_secret}}
    assert ca["isCA"] is True
    assert ca["issuerRef"] == {"name": selfsigned, "kind": "Issuer", "group": "cert-manager.io"}
    assert len(issuers) == 2


def test_cert_manager_issues_it_from_an_issuer_of_the_users() -> None:
    objects = _render("studbook-system", *CERT_MANAGER_ISSUER)
    assert not [o for o in objects if o["kind"] in ("Secret", "Issuer")]
    (serving,) = [o["spec"] for o in objects if o["kind"] == "Certificate"]
    assert serving["secretName"] == _webhook_tls_secret(objects) == "sb-webhook-tls"
    assert serving["issuerRef"] == {
        "name": "platform-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


@pytest.mark.parametrize(
    "values",
    [CERT_MANAGER, CERT_MANAGER_ISSUER, ("webhook.tlsSecret=from-cert-manager",)],
    ids=["cert-manager", "cert-manager with an issuer", "a TLS secret"],
)
def test_helm_template_renders_the_same_bytes_every_time(values: tuple[str, ...]) -> None:
    # What Argo CD compares with the live objects: one byte more and the application would show
    # OutOfSync after every refresh.
    everything = ("watchNamespaces={ml-breeding}", *EVERYTHING_BUT_THE_TLS_SECRET, *values)
    assert _template("studbook-system", *everything) == _template("studbook-system", *everything)


def test_a_tls_secret_and_cert_manager_together_are_refused() -> None:
    both = ("webhook.tlsSecret=mine", *CERT_MANAGER)
    rendered = _helm("template", "sb", str(CHART), *(a for v in both for a in ("--set", v)))
    assert rendered.returncode != 0
    said = "webhook.tlsSecret and webhook.certManager.enabled are both set: set one"
    assert said in rendered.stderr, rendered.stderr


def test_an_existing_service_account_is_bound_instead() -> None:
    objects = _render(
        "studbook-system",
        "serviceAccount.create=false",
        "serviceAccount.name=platform-operator",
        "watchNamespaces={ml-breeding}",
    )
    assert not [o for o in objects if o["kind"] == "ServiceAccount"]
    assert _operator(objects)[0]["spec"]["serviceAccountName"] == "platform-operator"
    bindings = [o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert len(bindings) == 2
    for binding in bindings:
        assert [s["name"] for s in binding["subjects"]] == ["platform-operator"]
    refused = _helm("template", "sb", str(CHART), "--set", "serviceAccount.create=false")
    assert refused.returncode != 0
    assert "serviceAccount.name is required" in refused.stderr


def _metric_names() -> dict[str, set[str]]:
    """Each of the operator's metric families, and the series names it exposes."""
    names: dict[str, set[str]] = {}
    for family in metrics.REGISTRY.collect():
        if not family.name.startswith("studbook_"):
            continue
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names[family.name] = {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_the_dashboard_shows_every_metric_of_the_operator_and_no_other() -> None:
    objects = _render("studbook-system", "dashboard.enabled=true", "dashboard.namespace=monitoring")
    config_map = _one(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    used = {name for expr in exprs for name in re.findall(r"\bstudbook_\w+", expr)}
    families = _metric_names()
    assert "studbook_gpu_hours" in families and "studbook_descendants" in families, families
    exposed = set().union(*families.values())
    assert used <= exposed, used - exposed
    unshown = [family for family, series in families.items() if not series & used]
    assert not unshown, f"no panel shows {unshown}"
    # Every panel asks the data source the user picks.
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # The sidecar's label is a value.
    relabelled = _render("studbook-system", "dashboard.enabled=true", "dashboard.labels.team=ml")
    assert _one(relabelled, "ConfigMap")["metadata"]["labels"]["team"] == "ml"


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    from tests.cluster.prometheus import promtool

    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    grafana = {"$__rate_interval": "2m", "$__range": "6h", "$job": ".+"}
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in grafana.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr.replace('"$1"', ""), expr  # a variable Grafana would not fill
            rules.append({"record": f"studbook:panel{len(rules)}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout, checked.stdout


# Every manifest against the API server.


def _validate(kube: client.ApiClient, obj: dict[str, Any], namespace: str) -> None:
    """Create ``obj`` as a server-side dry run with strict field validation: the API server
    checks it against its schemas (unknown or duplicate fields included) and stores nothing."""
    resource = DynamicClient(kube).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    resource.create(
        body=obj,
        namespace=obj["metadata"].get("namespace", namespace),
        dry_run="All",
        query_params=[("fieldValidation", "Strict")],
    )


@pytest.fixture
def vendored_crds(kube: client.ApiClient) -> None:
    """prometheus-operator's ServiceMonitor and PrometheusRule CRDs, cert-manager's Certificate
    and Issuer ones, and kopf's peering ones."""
    apply_crds(kube, load_crds(PROMETHEUS_OPERATOR_CRDS) + load_crds(CERT_MANAGER_CRDS))
    apply_peering_crds(kube)


@pytest.mark.cluster
@pytest.mark.usefixtures("vendored_crds")
@pytest.mark.parametrize(
    "features", ["defaults", "everything on", "cert-manager", "cert-manager with an issuer"]
)
def test_the_api_server_accepts_every_rendered_object(
    kube: client.ApiClient, namespace: str, features: str
) -> None:
    home = f"{namespace[:50]}-sys"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": home}})
    try:
        if features == "defaults":
            objects = _render(home)
        elif features.startswith("cert-manager"):
            own_ca = features == "cert-manager"
            objects = _render(home, *(CERT_MANAGER if own_ca else CERT_MANAGER_ISSUER))
            kinds = [o["kind"] for o in objects]
            assert kinds.count("Certificate") == (2 if own_ca else 1), kinds
            assert kinds.count("Issuer") == (2 if own_ca else 0), kinds
            assert "Secret" not in kinds
        else:
            objects = _render(home, f"watchNamespaces={{{namespace}}}", *EVERYTHING_ON)
            kinds = {o["kind"] for o in objects}
            wanted = {"ServiceMonitor", "ConfigMap", "PodDisruptionBudget", "Role", "KopfPeering"}
            assert wanted <= kinds, kinds
            assert "Secret" not in kinds  # the user's TLS Secret
            # The PrometheusRule's template belongs to the alerting work; once it exists, its
            # object is checked too.
            if (CHART / "templates" / "prometheusrule.yaml").exists():
                assert "PrometheusRule" in kinds
        assert {"Deployment", "Service", "PodDisruptionBudget"} <= {o["kind"] for o in objects}
        for obj in objects:
            try:
                _validate(kube, obj, home)
            except ApiException as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.body}")
    finally:
        client.CoreV1Api(kube).delete_namespace(home)


@pytest.mark.cluster
@pytest.mark.usefixtures("vendored_crds")
def test_the_validation_refuses_an_unknown_field(kube: client.ApiClient, namespace: str) -> None:
    # The check above could not pass by accident: an unknown field, in a core kind, in the
    # ServiceMonitor and in a Certificate (so their CRDs' schemas are the real ones), is refused.
    objects = _render(namespace, "metrics.serviceMonitor.enabled=true", *CERT_MANAGER_ISSUER)
    deployment = _one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    monitor = _one(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    certificate = _one(objects, "Certificate")
    certificate["spec"]["dnsName"] = certificate["spec"]["dnsNames"]
    for obj in (deployment, monitor, certificate):
        with pytest.raises(ApiException) as refused:
            _validate(kube, obj, namespace)
        assert refused.value.status in (400, 422), refused.value.body
        assert "unknown field" in refused.value.body, refused.value.body


ARGO_CD = "argocd-controller"
"""The field manager Argo CD's application controller applies with."""


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def _apply(dynamic: DynamicClient, obj: dict[str, Any]) -> str:
    """Server-side apply ``obj`` as Argo CD does (its field manager, taking over conflicting
    fields); Argo CD's managed-fields entry after it (its fields, and when it last changed them).

    Controllers change an object's status and annotations at their own pace; this entry
    changes only when Argo CD's own apply changes what it manages.
    """
    resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    applied = resource.server_side_apply(
        body=obj,
        namespace=obj["metadata"].get("namespace"),
        field_manager=ARGO_CD,
        force_conflicts=True,
    ).to_dict()
    (entry,) = [
        f
        for f in applied["metadata"]["managedFields"]
        if f["manager"] == ARGO_CD and f["operation"] == "Apply"
    ]
    return json.dumps(entry, sort_keys=True)


@pytest.mark.cluster
@pytest.mark.usefixtures("vendored_crds")
def test_argo_cd_syncs_the_chart_and_a_second_sync_changes_nothing(
    kube: client.ApiClient, namespace: str
) -> None:
    # Argo CD renders with `helm template` at every refresh and server-side applies what it
    # renders. With cert-manager issuing the certificate, a second sync must be a no-op: had the
    # chart generated anything, Argo CD's apply would change it again.
    # The release's names (cluster-scoped ones too) are this test's alone.
    name = f"argo-{namespace[-6:]}"
    values = (*CERT_MANAGER, f"fullnameOverride={name}", f"peering={name}")
    objects = _render(namespace, *values)
    kinds = {o["kind"] for o in objects}
    assert {"Certificate", "Issuer", "Deployment", "ClusterRole"} <= kinds and "Secret" not in kinds
    dynamic = DynamicClient(kube)
    try:
        before = {_key(obj): _apply(dynamic, obj) for obj in objects}
        # Managed-fields times are whole seconds: a change by the second sync must show as a
        # later one.
        time.sleep(1.1)
        again = _render(namespace, *values)
        after = {_key(obj): _apply(dynamic, obj) for obj in again}
        changed = sorted(key for key in before if after[key] != before[key])
        assert not changed, f"the second sync changed what Argo CD manages in: {changed}"
        # The comparison sees a change: an object that does differ is changed by Argo CD again.
        service = _one(again, "Service", f"{name}-webhook")
        service["metadata"]["annotations"] = {"example.com/changed": "true"}
        assert _apply(dynamic, service) != before[_key(service)]
    finally:
        # The namespace fixture removes the rest.
        for obj in objects:
            if "namespace" not in obj["metadata"]:
                resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                try:
                    resource.delete(name=obj["metadata"]["name"])
                except ApiException as error:
                    if error.status != 404:
                        raise


@pytest.mark.cluster
@pytest.mark.usefixtures("vendored_crds")
@pytest.mark.parametrize("features", ["defaults", "everything on", "cert-manager", "keyless"])
def test_the_notes_say_what_was_installed_and_how_to_check_it(
    cluster: ControlPlane, namespace: str, features: str
) -> None:
    # NOTES.txt renders only at install; a client-side dry run renders it without installing.
    values = {
        "defaults": [],
        "everything on": ["watchNamespaces={ml-breeding}", *EVERYTHING_ON],
        "cert-manager": list(CERT_MANAGER),
        "keyless": ["signing.mode=keyless"],
    }[features]
    installed = _helm(
        "install",
        "sb",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        namespace,
        "--kubeconfig",
        str(cluster.kubeconfig),
        *(a for v in values for a in ("--set", v)),
    )
    assert installed.returncode == 0, installed.stderr
    notes = installed.stdout.partition("\nNOTES:\n")[2]
    assert f"kubectl -n {namespace} rollout status deployment/sb-operator" in notes, notes
    if features == "keyless":
        account = _one(_render(namespace), "ServiceAccount")["metadata"]["name"]
        identity = f"https://kubernetes.io/namespaces/{namespace}/serviceaccounts/{account}"
        assert identity in notes and "create configmap studbook-sigstore" in notes, notes
        assert "secret generic" not in notes
    else:
        assert "create secret generic studbook-signing" in notes
    assert "Service sb-metrics" in notes
    if features == "defaults":
        assert "watching all namespaces" in notes and "ClusterKopfPeering studbook" in notes
        assert "sb-webhook-tls (generated by the chart)" in notes
        assert "ServiceMonitor" not in notes and "dashboard" not in notes
    elif features == "cert-manager":
        assert "TLS from Secret sb-webhook-tls (issued by cert-manager);" in notes
    elif features == "everything on":
        assert "watching the namespaces ml-breeding" in notes
        assert "ServiceMonitor sb-operator" in notes and "PrometheusRule" in notes
        assert "ConfigMap sb-dashboard" in notes and "PodDisruptionBudget sb-operator" in notes
        assert "Secret studbook-webhook-cert-manager;" in notes


def test_keyless_signing_mounts_a_token_for_fulcio_and_no_key() -> None:
    """Keyless, the operator's signing directory holds the trust configuration and a token of
    its own service account for Fulcio's audience only; no Secret is mounted anywhere."""
    template, container = _operator(
        _render("studbook-system", "signing.mode=keyless", "signing.audience=fulcio.example")
    )
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "signing"]
    config, token = volume["projected"]["sources"]
    assert config["configMap"]["name"] == "studbook-sigstore"
    assert config["configMap"]["items"] == [
        {"key": "trust_config.json", "path": "trust_config.json"}
    ]
    assert token["serviceAccountToken"] == {
        "audience": "fulcio.example",
        "expirationSeconds": 3600,
        "path": "token",
    }
    assert {"name": "signing", "mountPath": "/etc/studbook/signing", "readOnly": True} in (
        container["volumeMounts"]
    )
    assert not [v for v in template["spec"]["volumes"] if "secret" in v and v["name"] == "signing"]
    default, _ = _operator(_render("studbook-system"))
    (volume,) = [v for v in default["spec"]["volumes"] if v["name"] == "signing"]
    assert volume["secret"]["secretName"] == "studbook-signing"
