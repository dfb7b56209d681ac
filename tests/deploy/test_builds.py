"""Images on OpenShift: an ImageStream and a binary Docker BuildConfig per image,
and Deployments that roll, by digest, when a build lands (image change triggers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .manifests import (
    REPO,
    Doc,
    containers,
    deployment,
    main_container,
    named,
    of_kind,
    render,
    temp_overlay,
)

COMPONENTS = ("webui", "worker")


def triggers(dep: Doc) -> list[Doc]:
    text = dep["metadata"].get("annotations", {}).get("image.openshift.io/triggers", "[]")
    found: list[Doc] = json.loads(text)
    return found


def trigger_targets(dep: Doc) -> dict[str, str]:
    """container name -> [namespace/]ImageStreamTag whose new images are written into it."""
    out = {}
    for trigger in triggers(dep):
        assert trigger["from"]["kind"] == "ImageStreamTag"
        match = re.fullmatch(
            r'spec\.template\.spec\.(containers|initContainers)\[\?\(@\.name=="([^"]+)"\)\]\.image',
            trigger["fieldPath"],
        )
        assert match, f"unexpected fieldPath {trigger['fieldPath']}"
        namespace, name = trigger["from"].get("namespace"), trigger["from"]["name"]
        out[match.group(2)] = f"{namespace}/{name}" if namespace else name
    return out


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_binary_docker_build_per_image(docs: list[Doc], component: str) -> None:
    build = named(docs, "BuildConfig", f"sluice-{component}")
    assert build is not None
    spec = build["spec"]
    # `oc start-build sluice-<component> --from-dir=.` uploads the checkout.
    assert spec["source"] == {"type": "Binary", "binary": {}}
    assert spec["strategy"]["type"] == "Docker"
    dockerfile = spec["strategy"]["dockerStrategy"]["dockerfilePath"]
    assert (REPO / dockerfile).is_file() and dockerfile == f"Dockerfile.{component}"
    # Pushes to an ImageStream of this overlay, which resolves short names locally.
    assert spec["output"]["to"] == {"kind": "ImageStreamTag", "name": f"sluice-{component}:latest"}
    stream = named(docs, "ImageStream", f"sluice-{component}")
    assert stream is not None and stream["spec"]["lookupPolicy"]["local"] is True
    # The ONNX export in the build stage loads torch: a default 512Mi build pod would be killed.
    assert spec["resources"]["limits"]["memory"] in ("8Gi", "6Gi", "4Gi")


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_build_rolls_its_deployment_by_digest(docs: list[Doc], component: str) -> None:
    """Every container running the image is a trigger target, so no container
    (the migrate init container included) stays on the previous build."""
    dep = deployment(docs, component)
    pod = dep["spec"]["template"]["spec"]
    own = [c for c in containers(pod) if f"sluice-{component}" in c["image"]]
    assert own, "no container runs the Sluice image"
    targets = trigger_targets(dep)
    for c in own:
        assert targets.get(c["name"]) == f"sluice-{component}:latest", c["name"]
        # The stream's tag (resolved by lookupPolicy, then replaced by the
        # trigger's digest), never a registry host or a namespace.
        assert c["image"] == f"sluice-{component}:latest"
    # Every trigger names a container that exists and a stream the overlay
    # creates, or the cluster's own oauth-proxy stream.
    names = {c["name"] for c in containers(pod)}
    for container, tag in targets.items():
        assert container in names
        if "/" in tag:
            assert (container, tag) == ("oauth-proxy", "openshift/oauth-proxy:v4.4")
        else:
            assert named(docs, "ImageStream", tag.split(":")[0]) is not None
    assert main_container(dep)["name"] == component


def test_no_registry_host_or_namespace_in_image_paths(docs: list[Doc]) -> None:
    """Images come from this namespace's streams: an overlay deploys to any namespace."""
    for dep in of_kind(docs, "Deployment"):
        for c in containers(dep["spec"]["template"]["spec"]):
            image = c["image"]
            assert "image-registry.openshift-image-registry.svc" not in image, image
            namespace = dep["metadata"].get("namespace")
            assert not namespace or f"/{namespace}/" not in image, image


def test_another_registry_by_digest(tmp_path: Path) -> None:
    """components/external-registry + `images:` with digests: no triggers left, every
    Sluice container on the pushed digest."""
    digest = "sha256:" + "ab" * 32
    docs = render(temp_overlay(tmp_path, f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {{kustomize}}/overlays/dev
components:
  - {{kustomize}}/components/external-registry
images:
  - name: sluice-webui
    newName: quay.io/acme/sluice-webui
    digest: {digest}
  - name: sluice-worker
    newName: quay.io/acme/sluice-worker
    digest: {digest}
"""))
    for component in COMPONENTS:
        dep = deployment(docs, component)
        assert not triggers(dep)
        for c in containers(dep["spec"]["template"]["spec"]):
            assert c["image"] == f"quay.io/acme/sluice-{component}@{digest}"
