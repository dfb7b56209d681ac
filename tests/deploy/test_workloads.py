"""The webui and worker workloads: probes, resources, shutdown, shared config and storage."""

from __future__ import annotations

import base64
import re
from urllib.parse import urlsplit

import yaml

from shared.settings import Settings, load_settings

from .manifests import (
    CLUSTER_PARAMS,
    KUSTOMIZE,
    Doc,
    component_config,
    component_config_map,
    config,
    config_map,
    containers,
    deployment,
    main_container,
    named,
    of_kind,
    one,
    pod_specs,
    quantity_cpu,
    quantity_mib,
    sluice_containers,
)

SECRET_SETTINGS = {"DATABASE_URL", "REDIS_URL"}
# Measured: RSS of a worker with the model loaded (see base/worker-deployment.yaml).
WORKER_RSS_MIB = 700


def _port_names(container: Doc) -> set[str]:
    return {p["name"] for p in container.get("ports", []) if "name" in p}


def test_every_container_has_probes_and_limits(docs: list[Doc]) -> None:
    problems = []
    for dep in of_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for c in containers(pod):
            where = f"{dep['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(kind, {}):
                        problems.append(f"{where}: no {resource} {kind}")
            if {"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(
                res.get("limits", {})
            ):
                if quantity_cpu(res["requests"]["cpu"]) > quantity_cpu(res["limits"]["cpu"]):
                    problems.append(f"{where}: cpu request above limit")
                if quantity_mib(res["requests"]["memory"]) > quantity_mib(res["limits"]["memory"]):
                    problems.append(f"{where}: memory request above limit")
        for c in pod["containers"]:  # init containers cannot have probes
            where = f"{dep['metadata']['name']}/{c['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                spec = c.get(probe)
                if not spec:
                    problems.append(f"{where}: no {probe}")
                    continue
                port = (spec.get("httpGet") or spec.get("tcpSocket") or {}).get("port")
                if isinstance(port, str) and port not in _port_names(c):
                    problems.append(f"{where}: {probe} uses unknown port {port}")
                if "exec" in spec and any("pgrep" in part for part in spec["exec"]["command"]):
                    problems.append(f"{where}: {probe} greps for a process")
    assert not problems, "\n".join(problems)


def test_webui_probes_mean_something(docs: list[Doc]) -> None:
    web = main_container(deployment(docs, "webui"))
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"  # alive; no dependencies
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"  # Postgres + Redis reachable
    # /readyz gives each of its two checks up to 3 s.
    assert web["readinessProbe"]["timeoutSeconds"] >= 6


def test_worker_liveness_checks_no_dependency(docs: list[Doc]) -> None:
    """/metrics reads Redis at scrape time: a slow Redis must not restart workers."""
    worker = main_container(deployment(docs, "worker"))
    liveness = worker["livenessProbe"]
    assert "tcpSocket" in liveness or liveness["httpGet"]["path"] != "/metrics"
    assert worker["readinessProbe"]["timeoutSeconds"] >= float(config(docs)["REDIS_SOCKET_TIMEOUT"])


def test_startup_probes_cover_model_load(docs: list[Doc]) -> None:
    """Imports ~5 s + model 0.4 s + warm-up, measured; allow a slow node 30x that."""
    for component in ("webui", "worker"):
        probe = main_container(deployment(docs, component))["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget >= 150, f"{component}: startupProbe allows only {budget} s"


def test_worker_grace_period_covers_a_job(docs: list[Doc]) -> None:
    """SIGTERM lets the running job finish: the grace period must outlast JOB_TIMEOUT."""
    job_timeout = int(config(docs)["JOB_TIMEOUT"])
    pod = deployment(docs, "worker")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= job_timeout + 30, f"grace {grace} s < JOB_TIMEOUT {job_timeout} s + 30 s margin"
    # A shell would swallow SIGTERM: exec form, the worker itself is PID 1.
    assert main_container(deployment(docs, "worker"))["command"] == ["sluice", "worker"]


def test_webui_grace_period_covers_drain(docs: list[Doc]) -> None:
    """A rollout does not cut uploads: uvicorn drains (WEBUI_DRAIN_SECONDS) for as long
    as a maximal upload takes at 1 Mbit/s, and the grace period covers preStop + drain."""
    data = config(docs)
    pod = deployment(docs, "webui")["spec"]["template"]["spec"]
    web = main_container(deployment(docs, "webui"))
    pre_stop = web["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 5  # endpoints leave the router first
    drain = int(data["WEBUI_DRAIN_SECONDS"])
    assert drain >= int(data["MAX_UPLOAD_MB"]) * 8
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 10
    assert web["command"] == ["sluice", "webui"]


def component_of(who: str, docs: list[Doc]) -> str | None:
    """webui / worker for their Deployments, None for other pods (the migration Job)."""
    kind, name = who.split("/", 1)
    for component in ("webui", "worker"):
        if kind == "Deployment" and deployment(docs, component)["metadata"]["name"] == name:
            return component
    return None


def test_webui_and_worker_share_config_and_secret(docs: list[Doc]) -> None:
    """Same ConfigMap and Secret for every Sluice container (init containers too),
    so QUEUE_NAME and the DB/Redis URLs cannot diverge; plus each component's own
    pool sizes, so no container carries a pool setting it does not use."""
    cm_name = config_map(docs)["metadata"]["name"]
    settings = {name.upper() for name in Settings.model_fields}
    for who, pod in sluice_pod_specs(docs):
        for c in sluice_containers(pod):
            component = component_of(who, docs)
            expected = [{"configMapRef": {"name": cm_name}}]
            if component:
                own = component_config_map(docs, component)["metadata"]["name"]
                expected.append({"configMapRef": {"name": own}})
            expected.append({"secretRef": {"name": secret_name(docs)}})
            assert c["envFrom"] == expected, f"{who}/{c['name']}"
            # No per-container override of a setting.
            overridden = {e["name"] for e in c.get("env", [])} & settings
            assert not overridden, f"{who}/{c['name']} overrides {overridden}"


def test_config_map_holds_every_setting_and_only_settings(docs: list[Doc]) -> None:
    shared = set(config(docs))
    own = {c: set(component_config_map(docs, c)["data"]) for c in ("webui", "worker")}
    # Each setting in exactly one place; the pools where they are used.
    assert not shared & own["webui"] and not shared & own["worker"] and not own["webui"] & own["worker"]
    assert own["webui"] == {"DATABASE_POOL_SIZE", "DATABASE_POOL_MAX_OVERFLOW"}
    assert own["worker"] == {"WORKER_DB_POOL_SIZE"}
    data = shared | own["webui"] | own["worker"]
    settings = {name.upper() for name in Settings.model_fields}
    missing = settings - SECRET_SETTINGS - set(data)
    assert not missing, f"settings missing from base/config.env: {sorted(missing)}"
    unknown = set(data) - settings
    assert not unknown, f"not settings (typo?): {sorted(unknown)}"
    assert not set(data) & SECRET_SETTINGS, "secrets belong in the Secret, not the ConfigMap"


def test_config_values_are_valid_settings(docs: list[Doc]) -> None:
    """The ConfigMap passes Settings' own validation (what the pods do at start)."""
    values = {k.lower(): v for c in ("webui", "worker") for k, v in component_config(docs, c).items()}
    settings = load_settings(database_url="postgresql://u:p@db:5432/sluice",
                             redis_url="redis://redis:6379/0", **values)
    assert not settings.bench_reload_model_per_job
    assert not settings.uses_null_pool
    # The images carry no torch (Dockerfile.*: torch only in the export stage).
    assert settings.embedding_backend in ("onnx", "onnx-int8")


def test_ports_match_settings(docs: list[Doc]) -> None:
    data = config(docs)
    assert data["HOST"] == "0.0.0.0"  # the default 127.0.0.1 is unreachable from the Service
    web = main_container(deployment(docs, "webui"))
    assert [p["containerPort"] for p in web["ports"] if p["name"] == "http"] == [int(data["PORT"])]
    worker = main_container(deployment(docs, "worker"))
    assert [p["containerPort"] for p in worker["ports"] if p["name"] == "metrics"] == [
        int(data["WORKER_METRICS_PORT"])
    ]
    assert data["WORKER_METRICS_HOST"] == "0.0.0.0"


def test_worker_threads_and_memory_fit_its_limits(docs: list[Doc]) -> None:
    data = config(docs)
    worker = main_container(deployment(docs, "worker"))
    limits = worker["resources"]["limits"]
    threads = int(data["EMBED_THREADS"])
    assert 1 <= threads <= quantity_cpu(limits["cpu"]), "more torch threads than CPUs given"
    omp = next(e for e in worker["env"] if e["name"] == "OMP_NUM_THREADS")
    assert omp["valueFrom"]["configMapKeyRef"]["key"] == "EMBED_THREADS"
    # The worker with its model, plus the isolated parser child at its cap.
    assert quantity_mib(limits["memory"]) >= WORKER_RSS_MIB + int(data["PARSE_MEMORY_MB"])


def test_uploads_are_shared_read_write_many(docs: list[Doc]) -> None:
    upload_dir = config(docs)["UPLOAD_DIR"]
    claims = set()
    for component in ("webui", "worker"):
        dep = deployment(docs, component)
        pod = dep["spec"]["template"]["spec"]
        (mount,) = [m for m in main_container(dep)["volumeMounts"] if m["mountPath"] == upload_dir]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, claims
    pvc = named(docs, "PersistentVolumeClaim", claims.pop())
    assert pvc is not None
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The default class is usually RWO-only: the overlay must name an RWX class
    # (its cluster.env, see test_render).
    assert pvc["spec"].get("storageClassName") == CLUSTER_PARAMS["RWX_STORAGE_CLASS"]


def test_images_are_the_right_ones(docs: list[Doc]) -> None:
    """The webui pod runs the webui image, the worker pod the worker image (init
    containers too); how they are pinned to a digest is test_builds'."""
    for component in ("webui", "worker"):
        pod = deployment(docs, component)["spec"]["template"]["spec"]
        for c in sluice_containers(pod):
            pinned = rf"sluice-{component}(:latest|@sha256:[0-9a-f]{{64}})"
            assert re.fullmatch(pinned, c["image"]), c["image"]


def test_rollouts_add_at_most_one_pod_each(docs: list[Doc]) -> None:
    """test_budget counts one transient pod per Deployment (a draining pod and its
    replacement); these strategies keep it at one."""
    web = deployment(docs, "webui")["spec"]["strategy"]
    assert web["type"] == "RollingUpdate" and web["rollingUpdate"]["maxSurge"] == 0
    assert deployment(docs, "worker")["spec"]["strategy"]["type"] == "Recreate"


def test_spread_and_disruption_budgets(docs: list[Doc]) -> None:
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for component in ("webui", "worker"):
        dep = deployment(docs, component)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert "kubernetes.io/hostname" in {s["topologyKey"] for s in spread}
        for s in spread:
            assert s["labelSelector"]["matchLabels"].items() <= labels.items()
        covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, component
        assert covering[0]["spec"]["maxUnavailable"] == 1


def test_secret_is_a_template_only() -> None:
    """The Secret is never rendered; its template names the keys the pods read."""
    base = yaml.safe_load((KUSTOMIZE / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base["resources"]
    example = yaml.safe_load((KUSTOMIZE / "base" / "secret.example.yaml").read_text())
    assert example["metadata"]["name"] == "sluice-secrets"
    assert set(example["stringData"]) == SECRET_SETTINGS
    assert all("CHANGE-ME" in value for value in example["stringData"].values())


def secret_name(docs: list[Doc]) -> str:
    """sluice-secrets: created by the operator, or generated (with a hash) by the dev component."""
    generated = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"].startswith("sluice-secrets-")]
    return generated[0]["metadata"]["name"] if generated else "sluice-secrets"


def sluice_pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """Pods running Sluice itself (not the dev component's Postgres and Redis)."""
    return [(who, pod) for who, pod in pod_specs(docs)
            if any(c["command"][0] == "sluice" for c in sluice_containers(pod) if "command" in c)]


def test_no_secret_data_is_rendered(docs: list[Doc]) -> None:
    for secret in of_kind(docs, "Secret"):
        if secret["metadata"]["name"] == secret_name(docs) != "sluice-secrets":
            # The dev component's URLs: the in-namespace servers, no password in them.
            values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
            assert set(values) == SECRET_SETTINGS
            for url in values.values():
                parsed = urlsplit(url)
                assert parsed.password is None and parsed.hostname in ("sluice-postgres", "sluice-redis")
            continue
        raise AssertionError(f"a Secret is rendered: {secret['metadata']['name']}")


def test_dev_runs_its_own_postgres_and_redis(rendered: dict[str, list[Doc]]) -> None:
    """`oc apply -k overlays/dev` on an empty project: the servers the URLs point at exist."""
    docs = rendered["dev"]
    for service, port in (("sluice-postgres", 5432), ("sluice-redis", 6379)):
        svc = named(docs, "Service", service)
        assert svc is not None and svc["spec"]["ports"][0]["port"] == port
    (postgres,) = one(docs, "Deployment", "sluice-postgres")["spec"]["template"]["spec"]["containers"]
    assert "pgvector" in postgres["image"] and "0.8" in postgres["image"]
    assert "max_connections=100" in postgres["args"]
    assert config_map(docs)["metadata"]["annotations"]["sluice/postgres-max-connections"] == "100"
    # Trust auth is fenced: only Sluice's pods reach the two servers.
    (policy,) = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "sluice-dev-services"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sluice"}}}]
    assert not named(rendered["prod"], "Deployment", "sluice-postgres")


def test_the_postgres_ca_can_reach_every_sluice_container(docs: list[Doc]) -> None:
    """DATABASE_URL's sslrootcert=/etc/sluice/db-ca/ca.crt works in every container that
    connects (migrate, webui, worker); the ConfigMap is optional, so no TLS needs none."""
    for who, pod in sluice_pod_specs(docs):
        if not who.startswith("Deployment/"):
            continue
        (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "sluice-db-ca"]
        assert volume["configMap"]["optional"] is True
        for c in sluice_containers(pod):
            assert {"name": volume["name"], "mountPath": "/etc/sluice/db-ca", "readOnly": True} in c[
                "volumeMounts"], f"{who}/{c['name']}"
