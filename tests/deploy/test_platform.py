"""Autoscaling, monitoring, network policy and the Route, checked against the
workloads they point at."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .manifests import (
    REPO,
    Doc,
    config,
    configured,
    deployment,
    duration_seconds,
    of_kind,
    one,
    render,
)

ALERTS = REPO / "deploy" / "alerts" / "sluice-alerts.yaml"


def test_routes_are_tls_with_hsts_and_an_upload_timeout(docs: list[Doc]) -> None:
    for route in of_kind(docs, "Route"):
        tls = route["spec"]["tls"]
        # edge: the router talks HTTP to the webui; reencrypt: TLS to the oauth-proxy.
        assert tls["termination"] in ("edge", "reencrypt")
        assert tls["insecureEdgeTerminationPolicy"] == "Redirect"
        notes = route["metadata"]["annotations"]
        assert "max-age=31536000" in notes["haproxy.router.openshift.io/hsts_header"]
        service = one(docs, "Service", route["spec"]["to"]["name"])
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert route["spec"]["port"]["targetPort"] in ports
        if tls["termination"] == "reencrypt":
            # The service CA signs the proxy's certificate, which the router trusts.
            assert route["spec"]["port"]["targetPort"] == "https"
            assert "service.beta.openshift.io/serving-cert-secret-name" in service["metadata"]["annotations"]
        timeout = duration_seconds(notes["haproxy.router.openshift.io/timeout"])
        # A maximal upload at 1 Mbit/s must finish before the router cuts it off.
        assert timeout >= int(config(docs)["MAX_UPLOAD_MB"]) * 8


def test_services_select_the_pods_and_ports(docs: list[Doc]) -> None:
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        targets = [d for d in of_kind(docs, "Deployment")
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, service["metadata"]["name"]
        pod = targets[0]["spec"]["template"]["spec"]
        ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_one_autoscaler_per_deployment_and_no_replicas_fight(docs: list[Doc]) -> None:
    targets = [h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")]
    targets += [s["spec"]["scaleTargetRef"]["name"] for s in of_kind(docs, "ScaledObject")]
    assert len(targets) == len(set(targets)), f"two autoscalers on one Deployment: {targets}"
    for name in targets:
        dep = one(docs, "Deployment", name)
        # `oc apply` would reset the autoscaler's count on every apply.
        assert "replicas" not in dep["spec"], f"{name} is autoscaled but sets spec.replicas"


def test_dev_is_one_and_one(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    assert not of_kind(docs, "HorizontalPodAutoscaler") and not of_kind(docs, "ScaledObject")
    assert deployment(docs, "webui")["spec"]["replicas"] == 1
    assert deployment(docs, "worker")["spec"]["replicas"] == 1


def test_prod_scales_webui_3_to_4_and_workers_10_to_20(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment(docs, "webui")["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (so,) = of_kind(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == deployment(docs, "worker")["metadata"]["name"]
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (10, 20)
    assert so["spec"]["fallback"]["replicas"] <= so["spec"]["maxReplicaCount"]
    down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300


def test_keda_reads_the_queue_the_workers_work(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    (so,) = of_kind(docs, "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    # The trigger Red Hat's Custom Metrics Autoscaler supports, through thanos-querier.
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "https://thanos-querier.openshift-monitoring.svc.cluster.local:9092"
    assert meta["namespace"] == so["metadata"]["namespace"]
    # The backlog in Postgres (RQ holds only a few units per worker).
    queues = re.findall(r'sluice_work_backlog\{queue="([^"]+)"\}', meta["query"])
    assert queues == [config(docs)["QUEUE_NAME"]]
    assert meta["authModes"] == "bearer"
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    # A bound (short-lived) token requested by KEDA, not a legacy token Secret.
    assert "secretTargetRef" not in auth["spec"]
    (token,) = auth["spec"]["boundServiceAccountToken"]
    assert token["parameter"] == "bearerToken"
    account = one(docs, "ServiceAccount", token["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert not [s for s in of_kind(docs, "Secret") if s.get("type") == "kubernetes.io/service-account-token"]
    # KEDA may request tokens for that account only.
    (requester,) = [r for r in of_kind(docs, "Role")
                    if any("serviceaccounts/token" in rule["resources"] for rule in r["rules"])]
    assert requester["rules"] == [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                                   "verbs": ["create"], "resourceNames": [account["metadata"]["name"]]}]
    binding = one(docs, "RoleBinding", requester["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "keda-operator",
                                    "namespace": "openshift-keda"}]
    # thanos-querier's certificate is checked against the injected service CA.
    (ca,) = auth["spec"]["configMapTargetRef"]
    assert ca["parameter"] == "ca" and ca["key"] == "service-ca.crt"
    bundle = one(docs, "ConfigMap", ca["name"])
    assert bundle["metadata"]["annotations"]["service.beta.openshift.io/inject-cabundle"] == "true"


def test_service_monitors_scrape_both_metrics_endpoints(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    scraped = set()
    for monitor in of_kind(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in of_kind(docs, "Service")
                      if selector.items() <= s["metadata"]["labels"].items()]
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"
        scraped.add(service["spec"]["selector"]["app.kubernetes.io/component"])
    assert scraped == {"webui", "worker"}


def test_prometheus_rule_carries_the_alert_rules(rendered: dict[str, list[Doc]]) -> None:
    assert ALERTS.is_file(), "deploy/alerts/sluice-alerts.yaml is missing"
    from .sync_alerts import alert_groups

    rule = one(rendered["prod"], "PrometheusRule", "sluice-alerts")
    assert rule["spec"]["groups"] == alert_groups(), (
        "the PrometheusRule differs from deploy/alerts/sluice-alerts.yaml: "
        "run `.venv/bin/python tests/deploy/sync_alerts.py`"
    )


def _allowed_ports(policy: Doc, direction: str) -> set[tuple[str, object]]:
    return {(p.get("protocol", "TCP"), p["port"])
            for rule in policy["spec"].get(direction, []) for p in rule.get("ports", [])}


def _policies_of(policies: list[Doc], labels: dict[str, str]) -> list[Doc]:
    return [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]


def test_network_policy_allows_only_what_is_needed(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert deny[0]["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "sluice"}

    dns_db_redis = {("TCP", 5432), ("TCP", 6379), ("UDP", 53), ("TCP", 53), ("UDP", 5353), ("TCP", 5353)}
    # The webui's oauth-proxy also reaches the Kubernetes API and the OAuth server.
    expected = {
        "webui": (
            {("TCP", "http"), ("TCP", "https"), ("TCP", "metrics")},
            dns_db_redis | {("TCP", 6443), ("TCP", 443)},
        ),
        "worker": ({("TCP", "metrics")}, dns_db_redis),
    }
    for component, (ingress_ports, egress_ports) in expected.items():
        dep = deployment(docs, component)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        mine = _policies_of(policies, labels)
        assert set().union(*(_allowed_ports(p, "ingress") for p in mine)) == ingress_ports, component
        assert set().union(*(_allowed_ports(p, "egress") for p in mine)) == egress_ports, component
        pod = dep["spec"]["template"]["spec"]
        names = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        assert {port for _, port in ingress_ports} <= names

    # The router, by the label OpenShift documents (not the legacy policy-group one).
    router = {"namespaceSelector": {"matchLabels": {"policy-group.network.openshift.io/ingress": ""}}}
    web_policies = _policies_of(policies, deployment(docs, "webui")["spec"]["template"]["metadata"]["labels"])
    peers = [peer for p in web_policies for rule in p["spec"].get("ingress", []) for peer in rule["from"]]
    assert router in peers
    legacy = {"namespaceSelector": {"matchLabels": {"network.openshift.io/policy-group": "ingress"}}}
    assert legacy not in peers


def test_prod_applies_components(rendered: dict[str, list[Doc]]) -> None:
    kinds = {d["kind"] for d in rendered["prod"]}
    assert kinds >= {"ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler",
                     "ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    for doc in rendered["prod"]:
        assert doc["metadata"]["namespace"] == "sluice" or doc["kind"] == "Namespace"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sluice", doc["kind"]



def test_the_connection_alert_follows_the_overlays_declarations(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """SluicePostgresConnectionsNearMax needs no Postgres exporter: Sluice's own pool
    metrics against the max_connections and reserved connections the overlay declares."""

    def expr(docs: list[Doc]) -> str:
        rule = one(docs, "PrometheusRule", "sluice-alerts")
        (group,) = [g for g in rule["spec"]["groups"] if g["name"] == "sluice.connections"]
        (alert,) = [r for r in group["rules"] if r.get("alert") == "SluicePostgresConnectionsNearMax"]
        text: str = alert["expr"]
        return text

    assert expr(rendered["prod"]) == "sum(sluice_db_pool_max) + 6 > 0.8 * 100"
    # No rule needs an exporter that is not deployed (postgres_exporter's pg_* series).
    rule = one(rendered["prod"], "PrometheusRule", "sluice-alerts")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert not [e for e in exprs if re.search(r"\bpg_\w+", e)]
    # Another server: the alert moves with the declaration.
    shutil.copytree(configured(), tmp_path / "k")
    prod = tmp_path / "k" / "overlays" / "prod" / "kustomization.yaml"
    prod.write_text(prod.read_text()
                    .replace('postgres-max-connections: "100"', 'postgres-max-connections: "400"')
                    .replace('postgres-reserved-connections: "6"', 'postgres-reserved-connections: "9"'))
    assert expr(render(prod.parent)) == "sum(sluice_db_pool_max) + 9 > 0.8 * 400"
