"""Every rendered object is schema-valid: core kinds with kubernetes-validate
(strict: unknown fields are errors), the others (KEDA, Route, ServiceMonitor,
PrometheusRule, ImageStream, BuildConfig) with the JSON schemas vendored in
deploy/schemas."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .manifests import REPO, SCHEMAS, Doc

# The Kubernetes versions of the OpenShift releases we target: 4.16 (1.29,
# the oldest with EUS support), 4.17 (1.30) and 4.18 (1.31).
KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0")

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
    ("route.openshift.io/v1", "Route"): "route.openshift.io/route_v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
    ("image.openshift.io/v1", "ImageStream"): "image.openshift.io/imagestream_v1.json",
    ("build.openshift.io/v1", "BuildConfig"): "build.openshift.io/buildconfig_v1.json",
}


@cache
def crd_schema(path: str) -> dict[str, Any]:
    file = SCHEMAS / path
    assert file.is_file(), f"{file} is missing: see deploy/schemas/README.md"
    schema: dict[str, Any] = json.loads(file.read_text())
    return schema


def validator(path: str) -> jsonschema.protocols.Validator:
    schema = crd_schema(path)
    # openapi2jsonschema (the OpenShift files) writes the draft-less
    # "http://json-schema.org/schema#"; its output is draft 4.
    if schema.get("$schema") == "http://json-schema.org/schema#":
        return jsonschema.Draft4Validator(schema)
    return jsonschema.validators.validator_for(schema)(schema)


def _is_crd(doc: Doc) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_validate_strictly(docs: list[Doc], version: str) -> None:
    errors = []
    for doc in docs:
        if _is_crd(doc):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{doc['apiVersion']} {doc['kind']}: no schema (unknown kind?)")
    assert not errors, "\n".join(errors)


def test_custom_resources_validate(docs: list[Doc]) -> None:
    errors = []
    for doc in docs:
        if not _is_crd(doc):
            continue
        for err in validator(CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).iter_errors(doc):
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
    assert not errors, "\n".join(errors)


def test_the_crd_validator_catches_mistakes() -> None:
    """The vendored schemas reject what they should (they are not `{}`)."""
    bad_route = {
        "apiVersion": "route.openshift.io/v1", "kind": "Route", "metadata": {"name": "x"},
        "spec": {"to": {"kind": "Service", "name": "x"}, "tls": {"termination": "edgy"}},
    }
    assert list(validator(CRD_SCHEMAS[("route.openshift.io/v1", "Route")]).iter_errors(bad_route))
    bad_scaled = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "prometheus",
                                                                "metadata": {"threshold": 4}}]},
    }
    assert list(validator(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).iter_errors(bad_scaled))
    # Strict OpenShift schemas: a misspelt field is an error.
    bad_build = {
        "apiVersion": "build.openshift.io/v1", "kind": "BuildConfig", "metadata": {"name": "x"},
        "spec": {"source": {"type": "Binary"}, "strategy": {"type": "Docker",
                                                            "dockerStrategy": {"dockerfile": "D"}}},
    }
    assert list(validator(CRD_SCHEMAS[("build.openshift.io/v1", "BuildConfig")]).iter_errors(bad_build))
    bad_stream = {
        "apiVersion": "image.openshift.io/v1", "kind": "ImageStream", "metadata": {"name": "x"},
        "spec": {"lookupPolicy": {"local": "yes"}},
    }
    assert list(validator(CRD_SCHEMAS[("image.openshift.io/v1", "ImageStream")]).iter_errors(bad_stream))


def test_schemas_are_vendored_and_documented() -> None:
    """Each schema lives in the repository, is listed with its source and licence,
    and is used (a stale file would give false confidence)."""
    assert SCHEMAS.is_relative_to(REPO)
    on_disk = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("*.json")}
    assert on_disk == set(CRD_SCHEMAS.values())
    readme = (SCHEMAS / "README.md").read_text()
    for path in on_disk:
        assert f"`{path}`" in readme, f"{path} is not listed in deploy/schemas/README.md"
    assert "MIT License" in readme
    assert "Apache License" in (SCHEMAS / "LICENSE-Apache-2.0.txt").read_text()


# Spelled in parts, so that this file does not contain what it looks for.
OUTSIDE = ("../" + "shared", "k8s" + "-schemas")


def test_nothing_reaches_outside_the_repository() -> None:
    """A fresh clone anywhere must build and test: no tracked file points at the reading
    folder beside the repository (`shared/` next to it), nor at its schema copies."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        # This file names the pattern it looks for; the schema README names their origin.
        if path == Path(__file__) or name.startswith("deploy/schemas/") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        if any(needle in text for needle in OUTSIDE):
            offenders.append(name)
    assert not offenders, f"files that depend on a folder outside the repository: {offenders}"
