"""Buckets on the test Ceph gateway (tests/central/ceph.py), and a plain S3 client to act as someone who
holds the keys (an attacker or a careless administrator) does."""

from __future__ import annotations

import secrets
from typing import Any

import boto3
from botocore.config import Config

from edge.central.config import S3ObjectsConfig
from edge.central.s3_objects import S3ObjectStore
from tests.central.ceph import CephGateway

SECRET_ENV = "EDGE_TEST_S3_SECRET"


def raw_client(gateway: CephGateway) -> Any:
    """An S3 client with the central's own keys, outside the central."""
    return boto3.session.Session().client(
        "s3", endpoint_url=gateway.endpoint, aws_access_key_id=gateway.access_key_id,
        aws_secret_access_key=gateway.secret_access_key, region_name=gateway.region,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def new_bucket(gateway: CephGateway, *, object_lock: bool = True) -> str:
    name = f"evidence-{secrets.token_hex(6)}"
    raw_client(gateway).create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


def s3_objects_config(gateway: CephGateway, bucket: str, **overrides: Any) -> S3ObjectsConfig:
    return S3ObjectsConfig.model_validate({
        "type": "s3", "endpoint": gateway.endpoint, "bucket": bucket, "region": gateway.region,
        "access_key_id": gateway.access_key_id, "secret_access_key": f"env:{SECRET_ENV}",
        "part_size_mb": 5, "connect_timeout_s": 5, "read_timeout_s": 60, "max_attempts": 2, **overrides,
    })


def s3_store(gateway: CephGateway, bucket: str | None = None, **overrides: Any) -> S3ObjectStore:
    """A checked store on a fresh bucket with Object Lock (or on ``bucket``)."""
    config = s3_objects_config(gateway, bucket or new_bucket(gateway), **overrides)
    store = S3ObjectStore(config, gateway.secret_access_key)
    store.check_bucket()
    return store
