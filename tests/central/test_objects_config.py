"""[central] objects and [retention]: the local folder by default, an S3 bucket by type, the secret key
only as a reference, retention classes that hold together; every refusal names its key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge.central.config import CentralConfig, FileObjectsConfig, S3ObjectsConfig, parse_central_config
from edge.central.retention import RetentionPolicy
from edge.config.base import ConfigError

MINIMAL = '[central]\nid = "central-hq"\nstore_dir = "/srv/central"\n'
S3 = ('objects = {type = "s3", endpoint = "https://rgw.example.org", bucket = "evidence", '
      'access_key_id = "CENTRAL1", secret_access_key = "credential:s3-secret-key"')


def _parse(text: str) -> CentralConfig:
    return parse_central_config(text, "central.toml")


def _problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_central_config(text, "central.toml")
    return str(caught.value)


def test_the_local_folder_is_the_default_and_s3_is_chosen_by_type() -> None:
    assert isinstance(_parse(MINIMAL).central.objects, FileObjectsConfig)
    objects = _parse(MINIMAL + S3 + "}\n").central.objects
    assert isinstance(objects, S3ObjectsConfig)
    assert (objects.bucket, objects.addressing_style, objects.checksum_mode) == ("evidence", "path",
                                                                                 "when_required")
    assert objects.part_size_bytes == 64 << 20
    # The safe choice by default: botocore's (bodies signed over plain http, not over https with MD5).
    assert (objects.payload_signing, objects.sign_payload) == ("auto", None)
    unsigned = _parse(MINIMAL + S3 + ', payload_signing = "unsigned"}\n').central.objects
    assert isinstance(unsigned, S3ObjectsConfig) and unsigned.sign_payload is False
    assert "s3-secret-key" not in repr(objects).replace("credential:s3-secret-key", "")


S3_KEYS = {"type": '"s3"', "endpoint": '"https://rgw.example.org"', "bucket": '"evidence"',
           "access_key_id": '"CENTRAL1"', "secret_access_key": '"credential:s3-secret-key"'}


@pytest.mark.parametrize(("key", "value", "words"), [
    ("secret_access_key", '"wJalrXUtnFEMI/K7MDENG"', "env:"),
    ("bucket", '"Evidence_Bucket"', "pattern"),
    ("endpoint", '"https://user:pw@rgw.example.org"', "must not carry credentials"),
    ("part_size_mb", "4", "greater than or equal to 5"),
    ("addressing_style", '"dns"', "path"),
    ("checksum_mode", '"never"', "when_required"),
    ("payload_signing", '"off"', "unsigned"),
    ("ca_file", '"relative.pem"', "absolute"),
    ("lock", '"governance"', "unknown key"),
    ("staging_bucket", '"Staging_Bucket"', "pattern"),
])
def test_wrong_s3_settings_are_refused_naming_the_key(key: str, value: str, words: str) -> None:
    table = ", ".join(f"{name} = {text}" for name, text in {**S3_KEYS, key: value}.items())
    problem = _problem(MINIMAL + f"objects = {{{table}}}\n")
    assert f"central.objects.s3.{key}" in problem and words in problem, problem
    assert "wJalrXUtnFEMI" not in problem and "pw@" not in problem  # secrets are never echoed


def test_retention_classes_hold_together() -> None:
    problem = _problem(MINIMAL + '[retention]\nclass_days = {"1-year" = 366}\n')
    assert "default_class '6-months' must be one of class_days (1-year)" in problem
    assert "retention.class_days" in _problem(MINIMAL + '[retention]\nclass_days = {"6-months" = 0}\n')
    config = _parse(MINIMAL + '[retention]\nclass_days = {"6-months" = 183, "2-years" = 731}\n')
    policy = RetentionPolicy.from_config(config.retention)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert policy.for_class("2-years", start).until == start + timedelta(days=731)
    assert policy.for_class(None, start).until == start + timedelta(days=183)  # the default class
    permanent = policy.for_class("permanent", start)
    assert permanent.legal_hold and permanent.until == start + timedelta(days=183)
    # A class this central does not know never keeps less: the longest configured lock.
    assert policy.for_class("unheard-of", start).until == start + timedelta(days=731)
    assert not policy.for_class("unheard-of", start).legal_hold
