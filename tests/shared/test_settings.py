"""Settings: safe defaults, NullPool refused without a pooler, bad values name themselves."""

from __future__ import annotations

import pytest

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
