"""Every overlay renders cleanly, with every kubectl at hand, and names stay wired."""

from __future__ import annotations

from pathlib import Path

import pytest

from .manifests import (
    CLUSTER_PARAMS,
    KUSTOMIZE,
    OVERLAYS,
    Doc,
    configured,
    kubectl_binaries,
    kustomize,
    named,
    of_kind,
    pod_specs,
    render,
    temp_overlay,
)


@pytest.mark.parametrize("binary", kubectl_binaries() or ["kubectl"])
@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders_without_warnings(name: str, binary: str) -> None:
    out = kustomize(configured() / "overlays" / name, binary)
    assert out.returncode == 0, out.stderr
    # Deprecated fields (commonLabels, patchesStrategicMerge, vars, ...) print
    # "# Warning: ..." here; oc shows the same to whoever applies the overlay.
    assert out.stderr == ""
    assert out.stdout.count("\nkind: ") >= 10


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_unset_storage_class_fails_the_render_clearly(name: str) -> None:
    """As committed (cluster.env not filled in), an overlay does not render, and
    the error names the parameter to set: no PVC Pending on a class that only
    exists on someone else's cluster."""
    out = kustomize(KUSTOMIZE / "overlays" / name)
    assert out.returncode != 0
    assert "data.RWX_STORAGE_CLASS" in out.stderr and "sluice-cluster-params" in out.stderr
    # The file says how to set it, and which classes are known to work.
    env = (KUSTOMIZE / "overlays" / name / "cluster.env").read_text()
    assert "# RWX_STORAGE_CLASS=" in env and "ocs-storagecluster-cephfs" in env


def test_the_storage_class_comes_from_cluster_env(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        pvc = named(docs, "PersistentVolumeClaim", "sluice-uploads")
        assert pvc is not None
        assert pvc["spec"]["storageClassName"] == CLUSTER_PARAMS["RWX_STORAGE_CLASS"]
        # local-config: the parameters are never applied to the cluster.
        assert not named(docs, "ConfigMap", "sluice-cluster-params")


def test_base_renders_on_its_own() -> None:
    docs = render(KUSTOMIZE / "base")
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Route", "ConfigMap"}


def _references(docs: list[Doc]) -> list[tuple[str, str, str]]:
    """(referring object, kind, name) of every reference between objects that we use."""
    refs: list[tuple[str, str, str]] = []
    for d in docs:
        who = f"{d['kind']}/{d['metadata']['name']}"
        spec = d.get("spec", {})
        if d["kind"] == "Route":
            refs.append((who, "Service", spec["to"]["name"]))
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            refs.append((who, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]))
        if d["kind"] == "ScaledObject":
            for trigger in spec["triggers"]:
                if "authenticationRef" in trigger:
                    refs.append((who, "TriggerAuthentication", trigger["authenticationRef"]["name"]))
        if d["kind"] == "TriggerAuthentication":
            refs += [(who, "Secret", ref["name"]) for ref in spec.get("secretTargetRef", [])]
            refs += [(who, "ConfigMap", ref["name"]) for ref in spec.get("configMapTargetRef", [])]
            refs += [(who, "ServiceAccount", ref["serviceAccountName"])
                     for ref in spec.get("boundServiceAccountToken", [])]
        if d["kind"] == "RoleBinding":
            refs.append((who, d["roleRef"]["kind"], d["roleRef"]["name"]))
            # A subject in another namespace (KEDA's operator) is not ours to create.
            refs += [(who, s["kind"], s["name"]) for s in d["subjects"]
                     if s.get("namespace") in (None, d["metadata"].get("namespace"))]
        if d["kind"] == "Secret" and d.get("type") == "kubernetes.io/service-account-token":
            account = d["metadata"]["annotations"]["kubernetes.io/service-account.name"]
            refs.append((who, "ServiceAccount", account))
    for who, pod in pod_specs(docs):
        refs.append((who, "ServiceAccount", pod.get("serviceAccountName", "default")))
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                refs.append((who, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
            if "configMap" in volume:
                refs.append((who, "ConfigMap", volume["configMap"]["name"]))
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    refs.append((who, "ConfigMap", source["configMapRef"]["name"]))
                if "secretRef" in source:
                    refs.append((who, "Secret", source["secretRef"]["name"]))
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    refs.append((who, "ConfigMap", ref["name"]))
    return refs


# Created by the operator, never by the overlays (see base/secret.example.yaml).
EXTERNAL = {("Secret", "sluice-secrets"), ("ServiceAccount", "default"),
            # Optional (the volume says so): the Postgres CA, for sslmode=verify-full.
            ("ConfigMap", "sluice-db-ca")}


def _assert_references_resolve(docs: list[Doc]) -> None:
    dangling = [
        (who, kind, name) for who, kind, name in _references(docs)
        if (kind, name) not in EXTERNAL and named(docs, kind, name) is None
    ]
    assert not dangling, f"references to objects the overlay does not contain: {dangling}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_reference_resolves(name: str, rendered: dict[str, list[Doc]]) -> None:
    _assert_references_resolve(rendered[name])


def test_references_follow_a_name_prefix(tmp_path: Path) -> None:
    """namePrefix/nameSuffix reach into the CRDs (base/kustomizeconfig.yaml)."""
    docs = render(temp_overlay(tmp_path, """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: blue-
nameSuffix: -x
resources:
  - {kustomize}/overlays/prod
"""))
    assert named(docs, "Deployment", "blue-worker-x")
    assert of_kind(docs, "ScaledObject")[0]["spec"]["scaleTargetRef"]["name"] == "blue-worker-x"
    assert of_kind(docs, "Route")[0]["spec"]["to"]["name"] == "blue-webui-x"
    _assert_references_resolve(docs)


def test_migration_job_component(tmp_path: Path) -> None:
    """The optional Job renders next to the base and uses the same config."""
    docs = render(temp_overlay(tmp_path, """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: mig-
resources:
  - {kustomize}/base
components:
  - {kustomize}/components/migration-job
"""))
    job = named(docs, "Job", "mig-sluice-migrate")
    assert job is not None
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["sluice", "migrate"]
    _assert_references_resolve(docs)
