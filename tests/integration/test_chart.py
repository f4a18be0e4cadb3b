"""The Helm chart against the real control plane: rendered by Helm, accepted by the API server,
and its RBAC enough for the operator to do its work.

The operator runs here as a local process, but with a token of the chart's ServiceAccount and the
arguments and settings of the chart's Deployment (ports, the webhook's address and the store's
path made local), so every request it makes is authorized by the chart's ClusterRole: a missing
rule fails the test.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from studbook.controllers.webhook import CONFIGURATION, SERVICE_PORT
from tests.builders import Body
from tests.cluster.controlplane import ControlPlane, free_port, helm_binary
from tests.cluster.fixtures import (
    apply_peering_crds,
    grant,
    service_account_client,
    service_account_token,
)
from tests.cluster.images import image
from tests.manifests import example
from tests.operator_fixtures import (
    REPO,
    OperatorProcess,
    apply,
    descendant_status,
    provisioned,
    read_resource,
    wait_for,
    webhook_configured,
)

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "studbook"
LOCAL_SELECTOR = {"studbook.dev/local-runner": "true"}
"""The local pod runner's node, where pods run as processes (kwok's nodes only play them)."""
LOCAL_TOLERATION = {
    "key": "studbook.dev/local-runner",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}


def _render(
    release: str, namespace: str, watched: str | None, built: bool = False
) -> list[dict[str, Any]]:
    """``helm template`` of the chart with its default values, or else watching one namespace;
    ``built`` sets the images to those `make images` built, as a user sets their registry's."""
    values = [] if watched is None else ["--set", f"watchNamespaces={{{watched}}}"]
    if built:
        values += ["--set", f"image.operator={image('operator')}"]
        values += ["--set", f"image.trainer={image('trainer')}"]
    rendered = subprocess.run(
        [str(helm_binary()), "template", release, str(CHART), "--namespace", namespace, *values],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _operator_pod(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec of the chart's Deployment, and its one container."""
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _token_kubeconfig(cluster: ControlPlane, kube: client.ApiClient, sa: str, ns: str) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount, with a token the API server issues."""
    token = service_account_token(kube, ns, sa, seconds=3600)
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = {"cluster": admin["clusters"][0]["name"], "user": sa}
    config = {
        **admin,
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": context}],
        "current-context": sa,
    }
    path = cluster.workdir / f"kubeconfig-{ns}-{sa}"
    path.write_text(json.dumps(config))
    return path


def _local(args: list[str], tls: Path | None) -> list[str]:
    """The Deployment's operator arguments, with ports free on this machine. Without ``tls``,
    the webhook is served on 127.0.0.1 with a certificate of its own (the chart's names the
    Service, which the API server cannot reach here); with it, as the chart has it, from the
    chart's certificate files in ``tls``."""
    local: list[str] = []
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in ("--metrics-port", "--webhook-port"):
            local.append(f"{flag}={free_port()}")
        elif flag == "--liveness":
            local.append(f"{flag}=http://127.0.0.1:{free_port()}/healthz")
        elif flag == "--webhook-tls":
            local += [f"{flag}={tls}"] if tls else []
        elif flag == "--webhook-service" and not tls:
            local.append("--webhook-host=127.0.0.1")
        else:
            local.append(arg)
    return local


@contextmanager
def _installed(
    cluster: ControlPlane,
    kube: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    watched: str | None,
    through_service: bool = False,
    without: RuleId | None = None,
) -> Iterator[tuple[OperatorProcess, list[dict[str, Any]]]]:
    """The chart installed into a namespace of its own, watching ``watched`` or, as by default,
    all namespaces; the operator run as the chart's ServiceAccount with the Deployment's
    arguments and settings. ``without`` names a rule of its RBAC left out."""
    home = f"{namespace[:50]}-sys"
    release = f"sb-{namespace[-6:]}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": home}})
    apply_peering_crds(kube)
    objects = _render(release, home, watched, built=True)
    if without is not None:
        role = next(o for o in objects if o["kind"] == without[0])
        role["rules"].remove(_rule(objects, without))
    process: OperatorProcess | None = None
    try:
        for obj in objects:
            _create(kube, obj, obj["metadata"].get("namespace", home))
        pod, container = _operator_pod(objects)
        assert container["args"][0] == "operator"
        tls = None
        if through_service:
            # The Secret's files, as the Deployment mounts them.
            (secret,) = [o for o in objects if o["kind"] == "Secret"]
            tls = tmp_path / "webhook-tls"
            tls.mkdir()
            for key, value in secret["data"].items():
                (tls / key).write_bytes(base64.b64decode(value))
        store = provisioned(tmp_path / "store")
        kubeconfig = _token_kubeconfig(cluster, kube, pod["serviceAccountName"], home)
        # The chart's settings, but where the store is: a directory here, not the pod's volume.
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        for key in ("STUDBOOK_STORE", "STUDBOOK_JOB_STORE", "STUDBOOK_STORE_VOLUME"):
            del env[key]
        identity = {"POD_NAME": f"{release}-0", "POD_ID": f"{release}-0"}
        process = OperatorProcess(
            cluster,
            watched or "",
            store,
            tmp_path / "operator.log",
            extra_args=_local(container["args"][1:], tls),
            env={**env, "KUBECONFIG": str(kubeconfig), **identity},
        )
        process.start()
        yield process, objects
    finally:
        if process is not None:
            process.stop()
        _uninstall(kube, release, home)


@pytest.fixture(params=["one namespace", "all namespaces"])
def charted_operator(
    request: pytest.FixtureRequest,
    cluster: ControlPlane,
    kube: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> Iterator[tuple[OperatorProcess, list[dict[str, Any]]]]:
    """The chart installed, watching ``namespace`` or, as by default, all namespaces."""
    watched = namespace if request.param == "one namespace" else None
    with _installed(cluster, kube, namespace, tmp_path, watched) as installed:
        yield installed


RuleId = tuple[str, str, str]
"""A rule of the chart's RBAC: the kind of role it is in, its first resource and first verb."""

NAMESPACED_RULES: tuple[RuleId, ...] = (
    ("Role", "kopfpeerings", "get"),
    ("Role", "descendants", "get"),
    ("Role", "breedingpolicies", "get"),
    ("Role", "descendants/status", "patch"),
    ("Role", "jobs", "get"),
    ("Role", "pods", "list"),
    ("Role", "configmaps", "get"),
    ("Role", "networkpolicies", "list"),
    ("Role", "events", "create"),
)
CLUSTER_RULES: tuple[RuleId, ...] = (
    ("ClusterRole", "customresourcedefinitions", "list"),
    ("ClusterRole", "validatingwebhookconfigurations", "create"),
    ("ClusterRole", "validatingwebhookconfigurations", "patch"),
    ("ClusterRole", "namespaces", "list"),
)
CLUSTER_PEERING: RuleId = ("ClusterRole", "clusterkopfpeerings", "get")
"""The one rule only an operator that watches all namespaces has of its own."""


def _rule_ids(objects: list[dict[str, Any]]) -> list[RuleId]:
    return [
        (o["kind"], rule["resources"][0], rule["verbs"][0])
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
        for rule in o["rules"]
    ]


def _rule(objects: list[dict[str, Any]], wanted: RuleId) -> dict[str, Any]:
    (found,) = [
        rule
        for o in objects
        if o["kind"] == wanted[0]
        for rule in o["rules"]
        if (o["kind"], rule["resources"][0], rule["verbs"][0]) == wanted
    ]
    return found


def _create(kube: client.ApiClient, obj: dict[str, Any], namespace: str) -> None:
    objects = client.CustomObjectsApi(kube)
    if obj["kind"] == "KopfPeering":
        objects.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", obj)
        return
    if obj["kind"] == "ClusterKopfPeering":
        objects.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", obj)
        return
    # Validated by the API server but not stored: no replica may run on the cluster's nodes (the
    # pod runner would start it); the test's process plays it.
    dry_run = "All" if obj["kind"] == "Deployment" else None
    utils.create_from_dict(kube, obj, namespace=namespace, dry_run=dry_run)


def _uninstall(kube: client.ApiClient, release: str, home: str) -> None:
    """Remove what the chart and the operator left outside the namespaces the test deletes."""
    rbac = client.RbacAuthorizationV1Api(kube)
    admission = client.AdmissionregistrationV1Api(kube)

    def cluster_peering(name: str) -> None:
        client.CustomObjectsApi(kube).delete_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", name
        )

    for delete, name in (
        (cluster_peering, "studbook"),
        (rbac.delete_cluster_role_binding, f"{release}-operator"),
        (rbac.delete_cluster_role, f"{release}-operator"),
        (admission.delete_validating_webhook_configuration, CONFIGURATION),
        (admission.delete_mutating_webhook_configuration, CONFIGURATION),
        (admission.delete_validating_admission_policy_binding, f"{release}-store-guard"),
        (admission.delete_validating_admission_policy, f"{release}-store-guard"),
        (client.CoreV1Api(kube).delete_namespace, home),
    ):
        try:
            delete(name)
        except ApiException as error:
            if error.status != 404:
                raise


def test_the_chart_installs_and_its_rbac_lets_the_operator_work(
    kube: client.ApiClient,
    namespace: str,
    charted_operator: tuple[OperatorProcess, list[dict[str, Any]]],
) -> None:
    operator, objects = charted_operator
    # kopf peers through one object per watched namespace, or one for the cluster; the rights
    # in a watched namespace are a Role there.
    peering_kind = "KopfPeering" if operator.namespace else "ClusterKopfPeering"
    roles = ["Role", "RoleBinding"] if operator.namespace else []
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            *roles,
            "Deployment",
            peering_kind,
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    # A read-only root filesystem: what the operator writes (the scratch files of a parent's
    # signature check) goes to a volume at the temporary directory.
    pod, container = _operator_pod(objects)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]

    assert _work(kube, namespace, operator)
    log = operator.log.read_text()
    assert "forbidden: User" not in log and "(403)" not in log, log[-4000:]
    assert operator.proc is not None and operator.proc.poll() is None, log[-4000:]


class Stopped(Exception):
    """The operator was refused something: what it did next is beside the point."""


def _work(
    kube: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    stop_when: Callable[[], bool] = lambda: False,
) -> bool:
    """Have the operator do everything it does, each thing through the right of one rule of the
    chart's RBAC; whether it all happened. Waits end early, with ``False``, once ``stop_when``."""

    def wait(probe: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        found = wait_for(lambda: stop_when() or probe(), timeout, what, operator.log)
        if stop_when():
            raise Stopped
        return found

    try:
        _everything(kube, namespace, operator, wait)
    except Stopped:
        return False
    return True


def _everything(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess, wait: Callable[..., Any]
) -> None:
    peers = client.CustomObjectsApi(kube)

    def record() -> Any:
        if operator.namespace:
            found = peers.get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", "studbook"
            )
        else:
            found = peers.get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", "studbook"
            )
        return found.get("status")

    # The replica keeps its record in the chart's peering object, and acts alone.
    peering = wait(record, "the replica's peering record")
    assert list(peering) == [operator.env["POD_ID"]]

    # Status of policies and suites. The policy trusts a keyless signer (its trust configuration
    # is a ConfigMap) and lets descendants onto the local runner's node.
    scheduling = example("policy")["spec"]["scheduling"]
    policy = (
        Body.of("policy")
        .set("spec.allowedOperators", ["import", "lora"])
        .set(
            "spec.scheduling.allowedNodeSelector",
            {**scheduling["allowedNodeSelector"], **{k: [v] for k, v in LOCAL_SELECTOR.items()}},
        )
        .set(
            "spec.scheduling.allowedTolerations",
            [*scheduling["allowedTolerations"], LOCAL_TOLERATION],
        )
    )
    apply(kube, namespace, policy.manifest)
    apply(kube, namespace, example("suite"))
    for plural, name in (("breedingpolicies", "standard"), ("evaluationsuites", "sentiment-topic")):
        status = wait(
            lambda: read_resource(kube, namespace, plural, name).get("status"),  # noqa: B023
            f"{plural} status",
        )
        assert status["phase"] == "Valid", status

    # The webhook's configuration, which kopf registers: a refused Descendant is denied at apply.
    wait(lambda: webhook_configured(kube), "the webhook configured")
    with pytest.raises(ApiException) as denied:
        apply(kube, namespace, example("ties-merge"))
    assert denied.value.status == 422, denied.value.body
    assert "OperatorForbidden" in denied.value.body, denied.value.body

    # A Descendant: its NetworkPolicy, its Job, events, status; a Job that leaves no result is
    # a failed attempt.
    founder = Body.of("founder-import").set("spec.resources", {"backoffLimit": 0}).manifest
    apply(kube, namespace, founder)
    name = founder["metadata"]["name"]
    wait(
        lambda: descendant_status(kube, namespace, name).get("phase") == "Failed",
        "the founder Failed",
        timeout=90,
    )
    status = descendant_status(kube, namespace, name)
    assert "left no model in its output" in status["message"]
    jobs = client.BatchV1Api(kube).list_namespaced_job(namespace).items
    assert [j.metadata.name for j in jobs] == [f"{name}-breed-1"]
    # The chart's values reach the Jobs.
    assert jobs[0].spec.template.spec.containers[0].image == image("trainer")
    policies = client.NetworkingV1Api(kube).list_namespaced_network_policy(namespace).items
    assert [p.metadata.name for p in policies] == ["studbook-steps"]
    reasons = {
        e.reason
        for e in client.CoreV1Api(kube).list_namespaced_event(namespace).items
        if e.involved_object.name == name
    }
    assert {"Breeding", "Failed"} <= reasons, reasons

    # A Job whose container fails, on the local runner's node: the operator reads the reason
    # from its pod.
    broken = (
        Body.of("founder-import")
        .set("metadata.name", "broken-founder")
        .set("spec.operator.import.uri", "/nonexistent/founder")
        .set(
            "spec.resources",
            {"backoffLimit": 0, "nodeSelector": LOCAL_SELECTOR, "tolerations": [LOCAL_TOLERATION]},
        )
    )
    apply(kube, namespace, broken.manifest)
    failed = wait(
        lambda: (
            descendant_status(kube, namespace, "broken-founder").get("phase") == "Failed"
            and descendant_status(kube, namespace, "broken-founder")
        ),
        "the broken founder Failed with its reason",
        timeout=120,
    )
    assert "does not exist" in failed["message"], failed["message"]

    # A child of a Ready parent: verifying the parent reads the keyless signer's ConfigMap.
    forged = {
        "phase": "Ready",
        "observedGeneration": read_resource(kube, namespace, "descendants", name)["metadata"][
            "generation"
        ],
        "artifact": {
            "id": "sha256:" + "ab" * 32,
            "shortId": "abababababab",
            "uri": "/work/sha256/" + "ab" * 32,
            "sizeBytes": 1,
            "signer": "key:forged",
        },
    }
    peers.patch_namespaced_custom_object_status(
        "breeding.studbook.dev", "v1alpha1", namespace, "descendants", name, {"status": forged}
    )
    apply(kube, namespace, example("lora-specialist"))
    child = wait(
        lambda: (
            descendant_status(kube, namespace, "minilm-sentiment").get("phase") == "Rejected"
            and descendant_status(kube, namespace, "minilm-sentiment")
        ),
        "the child of an unverifiable parent Rejected",
    )
    assert "ParentTampered" in json.dumps(child["conditions"]), child


def test_the_signing_key_stays_in_the_operators_namespace(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str
) -> None:
    home = f"{namespace[:50]}-sys"
    objects = _render("sb", home, None)
    secret = yaml.safe_load((CHART / "values.yaml").read_text())["signing"]["secret"]
    # Only the operator's pod mounts the key, in the release's namespace; no Job is given it.
    pod, container = _operator_pod(objects)
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret]
    assert {"name": volume["name"], "mountPath": "/etc/studbook/signing", "readOnly": True} in (
        container["volumeMounts"]
    )
    assert {"name": "STUDBOOK_SIGNING_DIR", "value": "/etc/studbook/signing"} in container["env"]
    assert secret not in json.dumps([o for o in objects if o["kind"] != "Deployment"])
    assert "secrets" not in json.dumps([o for o in objects if o["kind"] == "ClusterRole"])
    # A tenant with every right in its own namespace cannot read the key in the operator's.
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": home}})
    try:
        core.create_namespaced_secret(
            home, {"metadata": {"name": secret}, "stringData": {"key.pem": "not a real key"}}
        )
        tenant = service_account_client(cluster, kube, namespace, "tenant")
        everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
        grant(kube, namespace, "tenant", "tenant-admin", everything)

        def rights_in_its_namespace() -> bool:
            try:
                client.CoreV1Api(tenant).list_namespaced_secret(namespace)
            except ApiException:
                return False  # RBAC's cache has not seen the binding yet
            return True

        wait_for(rights_in_its_namespace, what="the tenant's rights in its namespace")
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(tenant).read_namespaced_secret(secret, home)
        assert refused.value.status == 403
    finally:
        core.delete_namespace(home)


def test_every_rbac_rule_is_one_the_next_test_takes_away() -> None:
    one = _render("sb", "studbook-system", "ml-breeding")
    assert sorted(_rule_ids(one)) == sorted([*NAMESPACED_RULES, *CLUSTER_RULES])
    every = _render("sb", "studbook-system", None)
    cluster_wide = [("ClusterRole", resource, verb) for _, resource, verb in NAMESPACED_RULES]
    cluster_wide.remove(("ClusterRole", "kopfpeerings", "get"))
    assert sorted(_rule_ids(every)) == sorted([*CLUSTER_RULES, CLUSTER_PEERING, *cluster_wide])


@pytest.mark.parametrize(
    "rule", [*CLUSTER_RULES, *NAMESPACED_RULES, CLUSTER_PEERING], ids=lambda r: "-".join(r)
)
def test_without_any_one_rbac_rule_the_operator_is_refused(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path, rule: RuleId
) -> None:
    # The same work as the test above, as far as it gets: the API server refuses the operator
    # something that rule, and only it, allowed.
    watched = None if rule == CLUSTER_PEERING else namespace
    resources = _rule(_render("sb", "studbook-system", watched), rule)["resources"]

    # The API server's words, quoted plainly or inside a JSON body.
    names = "|".join(map(re.escape, resources))
    said = re.compile(rf'cannot \w+ resource \\?"({names})\\?"')

    def refused() -> bool:
        return said.search(operator.log.read_text()) is not None

    with _installed(cluster, kube, namespace, tmp_path, watched, without=rule) as (operator, _):
        assert not _work(kube, namespace, operator, stop_when=refused)


def test_helm_lints_the_chart() -> None:
    linted = subprocess.run(
        [str(helm_binary()), "lint", "--strict", str(CHART)], capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in linted.stdout


def test_the_charts_webhook_is_announced_through_its_service_with_its_ca(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    # The API server cannot reach a Service here (no cluster network), so this checks what it
    # would be told: the Service, and a CA that the served certificate chains to.
    with _installed(cluster, kube, namespace, tmp_path, namespace, through_service=True) as (
        operator,
        objects,
    ):
        wait_for(lambda: webhook_configured(kube), what="the webhook configured", log=operator.log)
        configuration = client.AdmissionregistrationV1Api(
            kube
        ).read_validating_webhook_configuration(CONFIGURATION)
        (service,) = [
            o
            for o in objects
            if o["kind"] == "Service" and o["metadata"]["name"].endswith("-webhook")
        ]
        (secret,) = [o for o in objects if o["kind"] == "Secret"]
        home, name = service["metadata"]["namespace"], service["metadata"]["name"]
        for webhook in configuration.webhooks:
            config = webhook.client_config
            assert config.url is None
            assert (config.service.namespace, config.service.name) == (home, name)
            assert config.service.port == SERVICE_PORT == service["spec"]["ports"][0]["port"]
            assert config.ca_bundle == secret["data"]["ca.crt"]
        ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
        served = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        served.verify_directly_issued_by(ca)
        sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"{name}.{home}.svc" in sans.get_values_for_type(x509.DNSName)
        assert operator.proc is not None and operator.proc.poll() is None


def _mounting(kind: str, claim: str) -> dict[str, Any]:
    """A Pod or a Job whose pod mounts the PersistentVolumeClaim ``claim``, and can never run:
    no node has the label it selects, so admission is all that happens to it."""
    pod = {
        "nodeSelector": {"studbook.dev/test-no-such-node": "true"},
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": image("trainer"), "command": ["true"]}],
        "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": claim}}],
    }
    name = f"mounts-{kind.lower()}"
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }


def test_only_the_operators_jobs_and_their_pods_mount_the_store(
    cluster: ControlPlane, kube: client.ApiClient, namespace: str
) -> None:
    """The chart's store guard: a tenant with every right in its namespace, and even the cluster
    admin, cannot create a Pod or Job mounting the store's claim; the operator's ServiceAccount
    creates such a Job, and the Job controller its Pod."""
    home, release = f"{namespace[:50]}-sys", f"sb-{namespace[-6:]}"
    objects = _render(release, home, namespace)
    guard = [o for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")]
    assert [o["kind"] for o in guard] == [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    claim = yaml.safe_load((CHART / "values.yaml").read_text())["store"]["volume"]
    claim = claim["persistentVolumeClaim"]["claimName"]
    core, admission = client.CoreV1Api(kube), client.AdmissionregistrationV1Api(kube)
    core.create_namespace({"metadata": {"name": home}})
    try:
        for obj in guard:
            _create(kube, obj, home)
        (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
        operator = service_account_client(cluster, kube, home, account["metadata"]["name"])
        tenant = service_account_client(cluster, kube, namespace, "tenant")
        grant(
            kube,
            namespace,
            "tenant",
            "tenant-admin",
            [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
        )
        rbac = client.RbacAuthorizationV1Api(kube)
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "operator-tenant-admin"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "tenant-admin",
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": account["metadata"]["name"],
                        "namespace": home,
                    }
                ],
            },
        )

        def refusal(api: client.ApiClient, body: dict[str, Any]) -> str | None:
            """What the API server says to a dry run of creating ``body``; None: accepted."""
            try:
                utils.create_from_dict(api, body, namespace=namespace, dry_run="All")
            except utils.FailToCreateError as failed:
                (error,) = failed.api_exceptions
                return str(json.loads(error.body)["message"])
            return None

        def guarded() -> bool:
            said = refusal(tenant, _mounting("Pod", claim))
            # Until RBAC and the policy are in force, the refusal is another or there is none.
            return said is not None and "artifact store" in said

        wait_for(guarded, what="the store guard in force")
        who = f"system:serviceaccount:{namespace}:tenant"
        said = "may create a {} that mounts the artifact store; " + who + " may not"
        assert (refusal(tenant, _mounting("Pod", claim)) or "").endswith(
            "only the Job controller " + said.format("Pod")
        )
        assert (refusal(tenant, _mounting("Job", claim)) or "").endswith(
            "only the Studbook operator " + said.format("Job")
        )
        assert "artifact store" in (refusal(kube, _mounting("Pod", claim)) or "")
        # Another claim is not the store; the operator's Job is accepted.
        assert refusal(tenant, _mounting("Pod", "scratch")) is None
        assert refusal(operator, _mounting("Job", claim)) is None
        # And the Job controller creates its Pod (which no node runs).
        utils.create_from_dict(operator, _mounting("Job", claim), namespace=namespace)

        def pod_created() -> bool:
            selector = "job-name=mounts-job"
            return bool(core.list_namespaced_pod(namespace, label_selector=selector).items)

        wait_for(pod_created, what="the Job controller's Pod of the operator's Job")
    finally:
        for delete in (
            admission.delete_validating_admission_policy_binding,
            admission.delete_validating_admission_policy,
        ):
            try:
                delete(f"{release}-store-guard")
            except ApiException as error:
                if error.status != 404:
                    raise
        core.delete_namespace(home)
