"""Settings: safe defaults, NullPool refused without a pooler, bad values name themselves."""

from __future__ import annotations

import pytest

from shared import embedding
from shared.settings import SettingsError, load_settings


def test_defaults_are_a_real_pool() -> None:
    s = load_settings()
    assert s.database_pool_size > 0
    assert s.database_pool_pre_ping is True
    assert s.database_pool_recycle > 0
    assert not s.uses_null_pool


def test_null_pool_is_refused_without_an_external_pooler() -> None:
    with pytest.raises(SettingsError, match="DATABASE_POOL_SIZE=0 selects NullPool") as err:
        load_settings(database_pool_size=0)
    assert "DATABASE_EXTERNAL_POOLER" in str(err.value)


def test_null_pool_is_allowed_behind_a_declared_pooler() -> None:
    s = load_settings(database_pool_size=0, database_external_pooler=True)
    assert s.uses_null_pool


@pytest.mark.parametrize(
    ("var", "value"),
    [("JOB_TIMEOUT", "abc"), ("DATABASE_POOL_SIZE", "-1"), ("REDIS_MAX_CONNECTIONS", "1"),
     ("DATABASE_POOL_PRE_PING", "maybe"), ("LOG_LEVEL", "LOUD")],
)
def test_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_overlap_must_be_smaller_than_chunk_size() -> None:
    with pytest.raises(SettingsError, match="CHUNK_OVERLAP"):
        load_settings(chunk_size=64, chunk_overlap=64)


@pytest.mark.parametrize(("backend", "sharing", "expected"), [
    ("torch", 1, 4), ("torch", 2, 2), ("torch", 8, 1),  # threads that wait for each other
    ("onnx", 2, 4), ("onnx-int8", 2, 4), ("onnx-int8", 8, 4),  # lanes: one per CPU each
])
def test_workers_sharing_the_cpus_divide_torch_threads_not_onnx_lanes(
    monkeypatch: pytest.MonkeyPatch, backend: str, sharing: int, expected: int
) -> None:
    monkeypatch.setattr(embedding, "cpu_quota", lambda: 4.0)
    settings = load_settings(embedding_backend=backend, embed_threads=0)
    assert embedding.embed_threads(settings, sharing) == expected
    assert embedding.embed_threads(load_settings(embedding_backend=backend, embed_threads=3),
                                   sharing) == 3  # EMBED_THREADS wins
