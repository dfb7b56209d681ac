"""Rendered overlays, once per session."""

from __future__ import annotations

import pytest

from .manifests import OVERLAYS, Doc, configured, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(configured() / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(rendered: dict[str, list[Doc]], overlay: str) -> list[Doc]:
    return rendered[overlay]
