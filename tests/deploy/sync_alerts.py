"""Copy the alert rules of deploy/alerts/sluice-alerts.yaml into the PrometheusRule.

kustomize cannot embed a file into a field of a custom resource, so the
PrometheusRule in components/monitoring carries the same groups inline and
tests/deploy/test_manifests.py fails when the two differ. After editing the
rules, run:

    .venv/bin/python tests/deploy/sync_alerts.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "alerts" / "sluice-alerts.yaml"
PROMETHEUS_RULE = REPO / "deploy" / "kustomize" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Sluice's alerts, for OpenShift user workload monitoring.
#
# GENERATED from deploy/alerts/sluice-alerts.yaml (the rules' source, with
# their promtool unit tests) by `python tests/deploy/sync_alerts.py`: edit
# that file, then run the script. kustomize cannot embed a file into a field
# of a custom resource, so the groups are copied inline; tests/deploy fails
# when the copy differs from the source.
"""


def alert_groups(path: Path = ALERTS) -> list[dict[str, Any]]:
    """The `groups` of a Prometheus rule file (or of a PrometheusRule)."""
    doc = yaml.safe_load(path.read_text())
    groups = doc.get("spec", doc).get("groups")
    if not isinstance(groups, list):
        raise ValueError(f"{path}: no rule groups")
    return groups


class _Dumper(yaml.SafeDumper):
    """Long strings (PromQL, runbooks) as folded blocks: short lines, same value."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = ">" if len(value) > 80 or "\n" in value.rstrip("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(groups: list[dict[str, Any]]) -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sluice-alerts",
            "labels": {
                "app.kubernetes.io/name": "sluice",
                "app.kubernetes.io/component": "monitoring",
            },
        },
        "spec": {"groups": groups},
    }
    body: str = yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main() -> int:
    PROMETHEUS_RULE.write_text(render(alert_groups()))
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
