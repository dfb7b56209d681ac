"""Autoscaling, monitoring, network policy and the Route, checked against the
workloads they point at."""

from __future__ import annotations

import re

from .manifests import (
    REPO,
    Doc,
    config,
    deployment,
    duration_seconds,
    main_container,
    of_kind,
    one,
)

ALERTS = REPO / "deploy" / "alerts" / "sluice-alerts.yaml"


def test_route_is_edge_tls_with_an_upload_timeout(docs: list[Doc]) -> None:
    (route,) = of_kind(docs, "Route")
    assert route["spec"]["tls"]["termination"] == "edge"
    assert route["spec"]["tls"]["insecureEdgeTerminationPolicy"] == "Redirect"
    service = one(docs, "Service", route["spec"]["to"]["name"])
    assert route["spec"]["port"]["targetPort"] in {p["name"] for p in service["spec"]["ports"]}
    timeout = duration_seconds(route["metadata"]["annotations"]["haproxy.router.openshift.io/timeout"])
    # A maximal upload at 1 Mbit/s must finish before the router cuts it off.
    assert timeout >= int(config(docs)["MAX_UPLOAD_MB"]) * 8


def test_services_select_the_pods_and_ports(docs: list[Doc]) -> None:
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        targets = [d for d in of_kind(docs, "Deployment")
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, service["metadata"]["name"]
        ports = {p["name"] for p in main_container(targets[0])["ports"]}
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
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"bearerToken", "ca"}


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


def test_network_policy_allows_only_what_is_needed(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert deny[0]["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "sluice"}

    egress = set().union(*(_allowed_ports(p, "egress") for p in policies))
    assert egress == {("TCP", 5432), ("TCP", 6379), ("UDP", 53), ("TCP", 53), ("UDP", 5353), ("TCP", 5353)}

    for component, port in (("webui", "http"), ("worker", "metrics")):
        labels = deployment(docs, component)["spec"]["template"]["metadata"]["labels"]
        ingress = set().union(*(
            _allowed_ports(p, "ingress") for p in policies
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ))
        assert ingress == {("TCP", port)}, component
        assert port in {p["name"] for p in main_container(deployment(docs, component))["ports"]}

    (web_in,) = [p for p in policies if p["metadata"]["name"].endswith("webui-ingress")]
    peers = web_in["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"network.openshift.io/policy-group": "ingress"}}} in peers


def test_prod_applies_components(rendered: dict[str, list[Doc]]) -> None:
    kinds = {d["kind"] for d in rendered["prod"]}
    assert kinds >= {"ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler",
                     "ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    for doc in rendered["prod"]:
        assert doc["metadata"]["namespace"] == "sluice" or doc["kind"] == "Namespace"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sluice", doc["kind"]

