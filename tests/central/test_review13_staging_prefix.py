"""Review 13: the content prefix must not lie under the tus staging prefix uploads/ (README: "the central
refuses to start otherwise"); the check in TusStaging only refuses prefixes that uploads/ starts with."""

from types import SimpleNamespace

import pytest

from edge.central.objects import ObjectStoreError
from edge.central.tus_staging import TusStaging


def _objects(prefix: str) -> SimpleNamespace:
    return SimpleNamespace(prefix=prefix, client=None, bucket="evidence",
                           config=SimpleNamespace(staging_bucket=None))


def test_control_root_prefix_refused() -> None:
    with pytest.raises(ObjectStoreError):
        TusStaging(_objects(""))  # type: ignore[arg-type]


def test_control_default_prefix_accepted() -> None:
    TusStaging(_objects("objects/"))  # type: ignore[arg-type]


def test_prefix_under_staging_refused() -> None:
    # Content objects at uploads/objects/<sha256> fall under the README's lifecycle rule on uploads/
    # (Expiration: a delete marker over every locked content object after 7 days).
    with pytest.raises(ObjectStoreError):
        TusStaging(_objects("uploads/objects/"))  # type: ignore[arg-type]
