"""Style of the YAML under deploy/ and of the kustomizations themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .manifests import KUSTOMIZE, REPO

YAMLLINT_CONFIG = Path(__file__).with_name("yamllint.yaml")
DEPRECATED = {"commonLabels", "patchesStrategicMerge", "patchesJson6902", "vars", "bases", "imageTags"}


def test_yamllint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-f", "parsable", "-c", str(YAMLLINT_CONFIG), "deploy/"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_kustomizations_use_no_deprecated_fields() -> None:
    files = sorted(KUSTOMIZE.rglob("kustomization.yaml"))
    assert len(files) >= 7
    for file in files:
        used = DEPRECATED & set(yaml.safe_load(file.read_text()))
        assert not used, f"{file.relative_to(REPO)} uses {used}"
