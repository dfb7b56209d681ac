"""The alert rules parse, and each one fires (and stays silent) where its unit test says.

promtool comes from Debian's `prometheus` package, which `make test` installs; a
missing promtool is a failure, never a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "alerts"
RULES = ALERTS / "sluice-alerts.yaml"
RULE_TESTS = ALERTS / "sluice-alerts.test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install -y --no-install-recommends prometheus"
    return path


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_rules_are_valid(promtool: str) -> None:
    out = _run(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_rule_unit_tests_pass(promtool: str) -> None:
    out = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out


def test_every_alert_has_a_runbook_a_summary_and_a_firing_test() -> None:
    rules = RULES.read_text()
    alerts = re.findall(r"^\s+- alert: (\w+)$", rules, flags=re.M)
    assert len(alerts) >= 10
    assert rules.count("runbook:") == len(alerts)
    assert rules.count("summary:") == len(alerts)
    tests = RULE_TESTS.read_text()
    for alert in alerts:
        # A test that expects it to fire: its name followed by a non-empty exp_alerts.
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests), alert
    assert "exp_alerts: []" in tests  # and at least one that must stay silent
