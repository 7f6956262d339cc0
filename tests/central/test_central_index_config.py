"""[central] index: the embedded SQLite default, a PostgreSQL server by URL with its password only as a
secret reference (the central running on it: test_central_on_postgres.py)."""

from __future__ import annotations

import pytest

from edge.central.config import (
    PostgresIndexConfig,
    SqliteIndexConfig,
    parse_central_config,
)
from edge.config.base import ConfigError

MINIMAL = '[central]\nid = "central-hq"\nstore_dir = "/srv/central"\n'
SECRET = "hunter2-not-for-logs"


def _with_index(index: str) -> str:
    return MINIMAL + f"index = {index}\n"


def _problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_central_config(text, "central.toml")
    return str(caught.value)


def test_the_default_index_is_the_embedded_sqlite_file() -> None:
    config = parse_central_config(MINIMAL, "central.toml")
    assert config.central.index == SqliteIndexConfig()


def test_a_postgresql_index_by_url_and_secret_reference() -> None:
    config = parse_central_config(_with_index(
        '{type = "postgresql", url = "postgresql://edge@db.example:5432/central", password = "env:PGPW"}'
    ), "central.toml")
    index = config.central.index
    assert isinstance(index, PostgresIndexConfig)
    assert index.url == "postgresql://edge@db.example:5432/central"
    assert index.password is not None and index.password.resolve({"PGPW": SECRET}) == SECRET


@pytest.mark.parametrize("url", [
    f"postgresql://edge:{SECRET}@db.example/central",
    f"postgresql://edge@db.example/central?password={SECRET}",
    f"postgresql://edge@db.example/central?sslpassword={SECRET}",
    f"postgresql://edge@db.example/central?passfile=/tmp/{SECRET}",
])
def test_a_password_in_the_url_is_refused_and_never_echoed(url: str) -> None:
    message = _problem(_with_index(f'{{type = "postgresql", url = "{url}"}}'))
    assert "central.index.postgresql.url" in message and "never in the URL" in message
    assert SECRET not in message


@pytest.mark.parametrize(("url", "why"), [
    ("mysql://edge@db/central", "expected a postgresql:// URL"),
    ("postgresql://edge@db.example/", "names no database"),
    (f"postgresql://edge@db.example/central?no_such_option={SECRET}",
     "not a valid PostgreSQL connection URL"),
])
def test_a_malformed_url_is_named_without_its_value(url: str, why: str) -> None:
    message = _problem(_with_index(f'{{type = "postgresql", url = "{url}"}}'))
    assert why in message and SECRET not in message and url not in message


def test_a_literal_password_is_refused() -> None:
    message = _problem(_with_index(
        f'{{type = "postgresql", url = "postgresql://edge@db/central", password = "{SECRET}"}}'
    ))
    assert "central.index.postgresql.password" in message and "secret reference" in message
    assert SECRET not in message


def test_an_unknown_index_type_is_named() -> None:
    message = _problem(_with_index('{type = "mongodb"}'))
    assert "central.index" in message and "postgresql" in message
