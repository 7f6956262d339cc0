"""The central's object store as its configuration chooses it ([central] objects): the one place that
knows which backends exist."""

from __future__ import annotations

from edge.central.config import CentralConfig, ConfigError
from edge.central.objects import FileObjectStore, ObjectStore, ObjectStoreError, ObjectStoreUnavailable

__all__ = ["open_object_store"]


def open_object_store(config: CentralConfig) -> ObjectStore:
    """The configured store, checked: an S3 bucket without Object Lock is refused (:class:`ConfigError`);
    one that cannot be asked raises :class:`ObjectStoreUnavailable` (the central exits 75 and is started
    again)."""
    objects = config.central.objects
    if objects.type == "files":
        return FileObjectStore(config.layout.objects_dir)
    # Imported here: boto3 is needed only by a central configured for S3.
    from edge.central.s3_objects import S3ObjectStore

    store = S3ObjectStore(objects, objects.secret_access_key.resolve())
    try:
        store.check_bucket()
    except ObjectStoreUnavailable:
        raise
    except ObjectStoreError as exc:
        raise ConfigError(f"central.objects: {exc}") from None
    return store
