"""`edge central migrate`: an embedded store (SQLite and a local folder) moved into PostgreSQL and S3."""

from edge.central.migration.run import (
    MigrationConfigError,
    MigrationFailed,
    MigrationSummary,
    migrate_central,
)

__all__ = ["MigrationConfigError", "MigrationFailed", "MigrationSummary", "migrate_central"]
