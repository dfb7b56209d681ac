"""Every rendered object is schema-valid: core kinds with kubernetes-validate
(strict: unknown fields are errors), CRDs with the JSON schemas in
../shared/k8s-schemas (KEDA, Route, ServiceMonitor, PrometheusRule)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .manifests import SCHEMAS, Doc

# The Kubernetes versions of the OpenShift releases we target: 4.16 (1.29,
# the oldest with EUS support), 4.17 (1.30) and 4.18 (1.31).
KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0")

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
    ("route.openshift.io/v1", "Route"): "route.openshift.io/route_v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
}


@cache
def crd_schema(path: str) -> dict[str, Any]:
    file = SCHEMAS / path
    assert file.is_file(), (
        f"{file} is missing: CI expects shared/ beside the repository (../shared/k8s-schemas)"
    )
    schema: dict[str, Any] = json.loads(file.read_text())
    return schema


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
        schema = crd_schema(CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])])
        validator = jsonschema.validators.validator_for(schema)(schema)
        for err in validator.iter_errors(doc):
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
    assert not errors, "\n".join(errors)


def test_the_crd_validator_catches_mistakes() -> None:
    """The vendored schemas reject what they should (they are not `{}`)."""
    schema = crd_schema(CRD_SCHEMAS[("route.openshift.io/v1", "Route")])
    bad_route = {
        "apiVersion": "route.openshift.io/v1", "kind": "Route", "metadata": {"name": "x"},
        "spec": {"to": {"kind": "Service", "name": "x"}, "tls": {"termination": "edgy"}},
    }
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(bad_route))
    schema = crd_schema(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])
    bad_scaled = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "prometheus",
                                                                "metadata": {"threshold": 4}}]},
    }
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(bad_scaled))


def test_schemas_dir_is_beside_the_repo() -> None:
    assert SCHEMAS == Path(__file__).resolve().parents[2].parent / "shared" / "k8s-schemas"
    assert SCHEMAS.is_dir(), f"{SCHEMAS} missing"
