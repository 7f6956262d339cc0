"""Review 13: the least-privilege runtime role can still defeat the append-only triggers. The trigger
functions of 0001 read their tables unqualified and pin no search_path; PostgreSQL searches pg_temp first
for relations, and PUBLIC has TEMPORARY on the database. A compromised receiver creates a temp table named
like the one a trigger reads, and its INSERT into the real (schema-qualified) table is checked against the
temp table: here a Merkle leaf that leaves a gap in the log (idx 5 on an empty log) is accepted.
Control: the same INSERT without the shadow is refused (EE001)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from edge.central.postgres import PostgresDatabase
from tests.central.pg import SplitRoles

LEAF = ("INSERT INTO {}.merkle_leaves (idx, entry, leaf_hash) "
        "VALUES (5, 'forged', decode(repeat('00', 32), 'hex'))")


def _migrated(split: SplitRoles) -> None:
    PostgresDatabase.open(split.url(split.runtime), password=split.runtime_password,
                          owner_url=split.url(split.owner), owner_password=split.owner_password).close()


def test_control_gap_refused(split_roles: SplitRoles) -> None:
    _migrated(split_roles)
    with split_roles.connect(split_roles.runtime, split_roles.runtime_password) as runtime:
        schema = str(runtime.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        with pytest.raises(psycopg.Error) as caught:
            runtime.execute(sql.SQL(LEAF).format(sql.Identifier(schema)))
        assert caught.value.sqlstate == "EE001"


def test_temp_shadow_cannot_bypass_the_leaf_trigger(split_roles: SplitRoles) -> None:
    _migrated(split_roles)
    with split_roles.connect(split_roles.runtime, split_roles.runtime_password) as runtime:
        schema = str(runtime.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        runtime.execute("CREATE TEMP TABLE merkle_leaves (idx bigint)")
        runtime.execute("INSERT INTO pg_temp.merkle_leaves VALUES (4)")
        with pytest.raises(psycopg.Error) as caught:
            runtime.execute(sql.SQL(LEAF).format(sql.Identifier(schema)))
        assert caught.value.sqlstate == "EE001"
