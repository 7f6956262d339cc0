"""Central receiver configuration: a TOML file validated by pydantic models.

Same rules as the station's `edge/config.py`, whose helpers this module reuses: unknown keys are
errors, and `load_central_config` raises the same `ConfigError` whose message names the file, the line,
the key and what was expected. The central holds no secrets in its configuration: its keys live in
files under `<store_dir>/identity/` made by `edge central init`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.config.base import (
    HTTP_URL_OR_EMPTY,
    IDENTIFIER,
    ConfigError,
    SecretRef,
    StrictModel,
    parse_toml_model,
    read_config_text,
)
from edge.config.station import MQTT_DEFAULT_PORT, MQTT_TOPIC_PREFIX

__all__ = [
    "CONSOLE_READ_TIME_LIMIT_S",
    "STATION_READ_TIME_LIMIT_S",
    "CentralConfig",
    "CentralLayout",
    "CentralSection",
    "ConfigError",
    "ConsoleSection",
    "FileObjectsConfig",
    "IdentitySection",
    "LogSection",
    "MqttSection",
    "PostgresIndexConfig",
    "RetentionSection",
    "S3ObjectsConfig",
    "ServerSection",
    "SqliteIndexConfig",
    "UploadsSection",
    "default_server_names",
    "is_loopback_listen",
    "load_central_config",
    "parse_central_config",
]

# RFC 1123 host name labels; no wildcards: a station must reach one named server, not a family.
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def default_server_names() -> list[str]:
    """Names the server certificate answers to unless `server.names` says otherwise."""
    host = socket.gethostname()
    # A host name that is not a valid DNS name (underscores, say) cannot go into a certificate.
    names = ([host] if host and _is_dns_name(host) else []) + ["localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(names))


def _is_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in labels)


def is_loopback_listen(listen: str) -> bool:
    """Whether a ``listen`` value names this host only: a loopback IP address, or ``localhost``."""
    try:
        return ipaddress.ip_address(listen).is_loopback
    except ValueError:
        return listen.rstrip(".").lower() == "localhost"


def _absolute(value: Path, what: str) -> Path:
    if not value.is_absolute():
        raise ValueError(f"expected an absolute path for {what}, found relative path {str(value)!r}")
    return value


# The pydantic error type of a database URL that is refused: its value is never echoed (edge.config.base),
# since a mistyped URL may still carry a password.
_URL_REFUSED = "url_userinfo"
# libpq connection parameters that carry a secret (or point at one the central does not manage).
_SECRET_CONNINFO_KEYS = frozenset({"password", "passfile", "sslpassword"})


# The longest one statement read for a station, or for the console, runs before the database stops it
# (PostgreSQL's statement_timeout; SQLite: edge.central.sqlite.reads), so that a held table or a slow query
# does not keep a reader thread: a station retries, an auditor's search over a province may take longer.
# Configurable: [central.index] station_statement_timeout_s, console_statement_timeout_s.
STATION_READ_TIME_LIMIT_S = 10.0
CONSOLE_READ_TIME_LIMIT_S = 30.0


class _ReadTimeLimits(StrictModel):
    """The reader threads' time limits, the same on either backend."""

    # A held table or a slow query must not keep a reader thread indefinitely (review 13): the database
    # stops a reader's statement past these (PostgreSQL: statement_timeout, lock waits included; SQLite:
    # edge.central.sqlite.reads); the request answers 503.
    station_statement_timeout_s: float = Field(
        STATION_READ_TIME_LIMIT_S, ge=0.1, le=600, description="Time limit of a statement read for a station "
        "(authentication, registration and ledger reads, the MQTT API), in its own reader threads"
    )
    console_statement_timeout_s: float = Field(
        CONSOLE_READ_TIME_LIMIT_S, ge=0.1, le=3600, description="Time limit of a statement read for the "
        "console, the read side, auditors, statistics, readiness and metrics, in their own reader threads"
    )



class SqliteIndexConfig(_ReadTimeLimits):
    """The embedded index: one SQLite file, ``<store_dir>/index.db`` (one site, the demo, most tests)."""

    type: Literal["sqlite"] = "sqlite"


class PostgresIndexConfig(_ReadTimeLimits):
    """The index on a PostgreSQL server (edge.central.postgres), shared by several receivers."""

    type: Literal["postgresql"]
    url: str = Field(
        description="libpq connection URL without a password: postgresql://USER@HOST:PORT/DATABASE "
        "(a unix socket: postgresql://USER@/DATABASE?host=/run/postgresql)"
    )
    password: SecretRef | None = Field(
        None, description="The role's password as a secret reference (env:, file:, credential:); none for "
        "peer or certificate authentication"
    )
    # Least privilege (README: PostgreSQL roles for the agency DBA): the owner's URL is used only to apply
    # the migrations at start, over a connection closed before the receiver serves anything.
    owner_url: str | None = Field(
        None, description="libpq URL (no password) of the role that owns the tables, used only to apply the "
        "schema migrations at start; with it, url's role must own nothing and be a member of "
        "edge_central_runtime. Without it, url's role migrates (and owns) the schema as before"
    )
    owner_password: SecretRef | None = Field(
        None, description="The owner role's password as a secret reference (env:, file:, credential:)"
    )

    @field_validator("url", "owner_url")
    @classmethod
    def _url_without_secrets(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from psycopg.conninfo import conninfo_to_dict

        if not value.startswith(("postgresql://", "postgres://")):
            raise PydanticCustomError(_URL_REFUSED, "expected a postgresql:// URL")
        try:
            parameters = conninfo_to_dict(value)
        except Exception:  # libpq's message may quote the URL, password and all
            raise PydanticCustomError(_URL_REFUSED, "not a valid PostgreSQL connection URL") from None
        secret = sorted(_SECRET_CONNINFO_KEYS & set(parameters))
        if secret:
            raise PydanticCustomError(
                _URL_REFUSED, "the URL carries {keys}: give the password as index.password (owner_password "
                "for owner_url), a secret reference, never in the URL", {"keys": ", ".join(secret)},
            )
        if not parameters.get("dbname"):
            raise PydanticCustomError(_URL_REFUSED, "the URL names no database (postgresql://USER@HOST/DATABASE)")
        return value


class FileObjectsConfig(StrictModel):
    """Objects as read-only files under ``<store_dir>/objects`` (one site, the demo, most tests)."""

    type: Literal["files"] = "files"


# S3 bucket names (AWS rules, which Ceph RGW also enforces): 3-63 lower-case letters, digits, dots, hyphens.
_S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class S3ObjectsConfig(StrictModel):
    """Objects in an S3-compatible bucket created with Object Lock (edge.central.s3_objects)."""

    type: Literal["s3"]
    endpoint: str = Field(
        pattern=r"^https?://[^\s/?#@]+(:[0-9]{1,5})?/?$",
        description="The S3 endpoint URL, scheme host and port only: https://s3.example.org (Ceph RGW, AWS)",
    )
    bucket: str = Field(pattern=_S3_BUCKET, description="The bucket; it must have been created with Object "
                        "Lock enabled (checked at start: the central refuses to run on a bucket without it)")
    region: str = Field("us-east-1", pattern=r"^[a-z0-9-]{1,40}$",
                        description="The bucket's region (signing)")
    access_key_id: str = Field(pattern=r"^[A-Za-z0-9+/=_.-]{1,128}$", description="The S3 access key id")
    secret_access_key: SecretRef = Field(
        description="The S3 secret key as a secret reference (env:, file:, credential:), never the key"
    )
    prefix: str = Field(
        "objects/", pattern=r"^([A-Za-z0-9._-]+/)*$",
        description="Key prefix of the objects in the bucket (each object: <prefix><sha256>)",
    )
    staging_bucket: str | None = Field(
        None, pattern=_S3_BUCKET,
        description="A bucket of its own for the parts of unfinished tus uploads (uploads/<id>/<part>) of "
        "receivers sharing PostgreSQL: versioned, without Object Lock, same endpoint and keys. Empty: the "
        "parts go in the content bucket, where a default retention locks them so the purge cannot delete "
        "them (a lifecycle rule must)",
    )
    part_size_mb: int = Field(
        64, ge=5, le=5120,
        description="Objects larger than this go up in multipart parts of this size, in MiB: the memory one "
        "upload takes while it is sent (S3 parts are 5 MiB to 5 GiB)",
    )
    addressing_style: Literal["path", "virtual"] = Field(
        "path", description="path: https://host/bucket/key (Ceph RGW and most servers without wildcard DNS); "
        "virtual: https://bucket.host/key (AWS)",
    )
    checksum_mode: Literal["when_required", "when_supported"] = Field(
        "when_required",
        description="botocore's request_checksum_calculation and response_checksum_validation. when_required "
        "suits non-AWS servers (boto3 >= 1.36 otherwise sends CRC trailers some servers refuse); the central "
        "computes SHA-256 itself and sends Content-MD5 with every part either way",
    )
    payload_signing: Literal["auto", "signed", "unsigned"] = Field(
        "auto",
        description="Whether each request body's SHA-256 is part of the SigV4 signature. auto (botocore's "
        "choice): signed over plain http, not over https (TLS and Content-MD5 protect it there). unsigned: "
        "UNSIGNED-PAYLOAD everywhere, one SHA-256 pass of every byte fewer on the central; over plain http "
        "only Content-MD5 then guards the body, which catches damage in transit but not someone on the path "
        "who rewrites body and MD5 (the central's own SHA-256 of each object still names what was stored). "
        "signed: always. Use an https endpoint",
    )
    ca_file: Path | None = Field(
        None, description="CA certificate(s) for an https endpoint (PEM); empty: the system's")
    connect_timeout_s: float = Field(5.0, gt=0, le=300, description="Connection time limit per request")
    read_timeout_s: float = Field(60.0, gt=0, le=3600, description="Read time limit per request")
    max_attempts: int = Field(3, ge=1, le=20, description="Attempts per request (botocore retries)")

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint_without_userinfo(cls, value: object) -> object:
        if isinstance(value, str) and "@" in value:  # refused without echoing: it may carry a key
            raise PydanticCustomError(_URL_REFUSED, "the endpoint URL must not carry credentials (user@): "
                                      "give "
                                      "access_key_id and secret_access_key")
        return value

    @field_validator("ca_file", mode="before")
    @classmethod
    def _empty_ca(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("ca_file")
    @classmethod
    def _ca_absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value, "objects.ca_file")

    @field_validator("staging_bucket", mode="before")
    @classmethod
    def _empty_staging_bucket(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _staging_bucket_is_another(self) -> S3ObjectsConfig:
        if self.staging_bucket == self.bucket:
            raise ValueError(f"staging_bucket must be another bucket than bucket ({self.bucket}): the "
                             "content bucket has Object Lock, the staging bucket must not (leave it empty to "
                             "stage the parts in the content bucket)")
        return self

    @property
    def part_size_bytes(self) -> int:
        return self.part_size_mb << 20

    @property
    def sign_payload(self) -> bool | None:
        """botocore's ``s3.payload_signing_enabled``: None leaves the choice to botocore (auto)."""
        return {"auto": None, "signed": True, "unsigned": False}[self.payload_signing]


class CentralSection(StrictModel):
    id: Annotated[
        str,
        Field(
            pattern=IDENTIFIER,
            description="Central id: origin of the Merkle log and its signed tree heads; in every receipt",
        ),
    ]
    store_dir: Path = Field(
        description="Central store: identity (CA, server and signing keys), uploads, objects, index.db"
    )
    index: SqliteIndexConfig | PostgresIndexConfig = Field(
        default_factory=SqliteIndexConfig, discriminator="type",
        description="Where the index and the Merkle log are kept: {type = \"sqlite\"} (the default: "
        "<store_dir>/index.db) or {type = \"postgresql\", url = ..., password = \"env:...\"}",
    )
    objects: FileObjectsConfig | S3ObjectsConfig = Field(
        default_factory=FileObjectsConfig, discriminator="type",
        description="Where accepted content is kept: {type = \"files\"} (the default: <store_dir>/objects) "
        "or "
        "{type = \"s3\", endpoint = ..., bucket = ..., access_key_id = ..., secret_access_key = \"env:...\"}",
    )

    @field_validator("store_dir")
    @classmethod
    def _store_dir_absolute(cls, value: Path) -> Path:
        return _absolute(value, "store_dir")


class ServerSection(StrictModel):
    listen: str = Field("0.0.0.0", description="Address to bind: an IP address or a host name")
    port: int = Field(8443, ge=1, le=65535, description="TCP port (below 1024 needs CAP_NET_BIND_SERVICE)")
    # strict: a security switch takes only TOML true/false, not "yes" or 1.
    insecure_plain_http: bool = Field(
        False,
        strict=True,
        description="Development only: plain HTTP without TLS, station id taken from the X-Edge-Station "
        "header (anyone can claim any station). Never in production",
    )
    names: list[str] = Field(
        default_factory=default_server_names,
        min_length=1,
        description="DNS names and IP addresses put into the server certificate (subjectAltName); "
        "stations must connect to one of them",
    )
    tls_cert: Path | None = Field(
        None, description="Server certificate (PEM); empty: <store_dir>/identity/server.crt"
    )
    tls_key: Path | None = Field(
        None, description="Server private key (PEM, mode 0600); empty: <store_dir>/identity/server.key"
    )
    max_concurrent_requests: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Requests in progress at once (uploads included); more get 503 with Retry-After",
    )
    max_json_body_mb: int = Field(
        32, ge=1, le=1024, description="Largest JSON request body (a ledger segment, a registration), in MiB"
    )
    max_buffered_body_mb: int = Field(
        256,
        ge=1,
        le=64 * 1024,
        description="JSON request bodies held in memory together, in MiB; more get 503 with Retry-After",
    )
    retry_after_s: int = Field(
        10, ge=1, le=3600, description="Retry-After sent with 503 (busy) and 507 (quota) refusals, in seconds"
    )
    request_header_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="A connection must deliver a complete request head this long after it opened or after "
        "its previous response, or it is closed (slow headers, idle keep-alive, TLS handshake)",
    )
    access_log: bool = Field(
        True, strict=True, description="One line per request on the edge.central.access logger"
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="TCP port of the loopback-only (127.0.0.1) plain-HTTP listener serving /metrics, "
        "/healthz and /readyz; 0: no such listener",
    )

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _is_dns_name(value):
                raise ValueError(f"expected an IP address or a host name, found {value!r}") from None
        return value

    @field_validator("names")
    @classmethod
    def _names_valid(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if not _is_dns_name(name):
                    raise ValueError(
                        f"expected DNS names or IP addresses (no wildcards), found {name!r}"
                    ) from None
        if len({n.lower() for n in value}) != len(value):
            raise ValueError("names must be unique")
        return value

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        # The example file writes `tls_cert = ""`; Path("") would be ".", a truthy directory.
        return None if value == "" else value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _tls_paths_absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value, "a TLS file")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> ServerSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together (or both left empty)")
        return self

    @model_validator(mode="after")
    def _plain_http_on_loopback_only(self) -> ServerSection:
        # Without TLS anyone who reaches the port can claim any station: only this host may reach it.
        if self.insecure_plain_http and not is_loopback_listen(self.listen):
            raise ValueError(
                f"insecure_plain_http serves without authentication, so listen must be a loopback address "
                f"(127.0.0.1, ::1 or localhost), found {self.listen!r}"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> ServerSection:
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(f"metrics_port must differ from port ({self.port}): the metrics listener is a "
                             f"separate loopback-only socket")
        return self

    @model_validator(mode="after")
    def _one_json_body_fits_the_buffer(self) -> ServerSection:
        if self.max_buffered_body_mb < self.max_json_body_mb:
            raise ValueError(
                f"max_buffered_body_mb ({self.max_buffered_body_mb}) must be at least max_json_body_mb "
                f"({self.max_json_body_mb}), or the largest JSON body could never be accepted"
            )
        return self

    @property
    def max_json_body_bytes(self) -> int:
        return self.max_json_body_mb << 20

    @property
    def max_buffered_body_bytes(self) -> int:
        return self.max_buffered_body_mb << 20


class UploadsSection(StrictModel):
    max_size_mb: int = Field(65536, gt=0, le=16 << 20, description="Largest upload accepted, in MiB")
    expire_incomplete_h: float = Field(
        72.0, gt=0, le=24 * 365, description="Incomplete uploads are purged this many hours after creation"
    )
    chunk_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A request body that stalls this long is cut off (slow clients)"
    )
    expire_unregistered_h: float = Field(
        72.0,
        gt=0,
        le=24 * 365,
        description="Complete uploads that no registration took are purged this many hours after completion",
    )
    s3_part_mb: int = Field(
        8, ge=5, le=5120,
        description="With PostgreSQL and S3 (several receivers): uploads are kept in the bucket in parts of "
        "this size, in MiB (S3's minimum is 5); a PATCH's tail that does not fill a part is re-sent, so the "
        "stations' uplink.chunk_mb should be a multiple of it (both default to 8)",
    )
    station_quota_mb: int = Field(
        262144,
        gt=0,
        le=1 << 30,
        description="Per station: the sum of Upload-Length of its uploads not yet registered, in MiB; "
        "a creation beyond it gets 507 quota_exceeded with Retry-After",
    )

    max_upload_connections: int = Field(
        20,
        ge=1,
        le=10_000,
        description="With PostgreSQL and S3 (several receivers): upload writes (a PATCH, a creation with a "
        "body) in progress at once on this receiver, each holding a PostgreSQL connection of its own for "
        "its whole request; more get 503 uploads_busy with Retry-After. Count it, per receiver, in the "
        "server's max_connections (default 100)",
    )
    station_max_writes: int = Field(
        4,
        ge=1,
        le=1024,
        description="Upload writes (a PATCH, a creation with a body) of one station in progress at once on "
        "this receiver; more get 429 too_many_writes with Retry-After (the station's uplink.concurrency, "
        "default 2, is what it needs)",
    )

    @model_validator(mode="after")
    def _largest_upload_fits_the_quota(self) -> UploadsSection:
        if self.station_quota_mb < self.max_size_mb:
            raise ValueError(
                f"station_quota_mb ({self.station_quota_mb}) must be at least max_size_mb "
                f"({self.max_size_mb}), or the largest upload could never be created"
            )
        return self

    @property
    def max_size_bytes(self) -> int:
        return self.max_size_mb << 20

    @property
    def expire_incomplete_s(self) -> float:
        return self.expire_incomplete_h * 3600.0

    @property
    def expire_unregistered_s(self) -> float:
        return self.expire_unregistered_h * 3600.0

    @property
    def station_quota_bytes(self) -> int:
        return self.station_quota_mb << 20


class IdentitySection(StrictModel):
    station_cert_days: int = Field(730, gt=0, le=3650, description="Validity of station certificates")
    reader_cert_days: int = Field(365, gt=0, le=3650, description="Validity of auditor certificates")
    server_cert_days: int = Field(825, gt=0, le=3650, description="Validity of the server certificate")


class LogSection(StrictModel):
    """The Merkle log's outside anchors: RFC 3161 time-stamps of its checkpoints."""

    tsa_url: str = Field(
        "", pattern=HTTP_URL_OR_EMPTY,
        description="RFC 3161 time-stamping authority (HTTP POST application/timestamp-query); empty: none",
    )
    tsa_root_cert: Path | None = Field(
        None, description="PEM root certificate(s) the TSA's responses must chain to (needed with tsa_url)"
    )
    tsa_interval_s: float = Field(
        300.0, gt=0, le=86400, description="How often the newest tree head without a token is time-stamped"
    )
    tsa_timeout_s: float = Field(10.0, gt=0, le=300, description="Time limit of one request to the TSA")

    @field_validator("tsa_root_cert", mode="before")
    @classmethod
    def _empty_root_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _root_with_url(self) -> LogSection:
        if self.tsa_url and self.tsa_root_cert is None:
            raise ValueError("tsa_url needs tsa_root_cert (the root the TSA's responses must chain to)")
        return self


_RETENTION_CLASS = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RetentionSection(StrictModel):
    """How long each retention class (an item's case.retention) keeps its content locked in an S3 object
    store (COMPLIANCE: nobody can delete it or shorten the lock); a local folder has no lock."""

    class_days: dict[
        Annotated[str, Field(pattern=_RETENTION_CLASS)], Annotated[int, Field(ge=1, le=36600)]
    ] = (
        Field(default_factory=lambda: {"6-months": 183},
              description="Days each retention class is kept, counted from acceptance (or from the tag that "
              "set the class)")
    )
    default_class: str = Field(
        "6-months", pattern=_RETENTION_CLASS,
        description="The class of an item whose manifest names none",
    )
    permanent_classes: list[Annotated[str, Field(pattern=_RETENTION_CLASS)]] = Field(
        default_factory=lambda: ["permanent"],
        description="Classes kept for ever: a legal hold (no end date) besides the default class's lock",
    )
    lock_retry_interval_s: float = Field(
        60.0, gt=0, le=86400,
        description="How often a lock extension the object store has not confirmed (a class change while "
        "the bucket was out of reach) is asked again; also once at start",
    )

    @model_validator(mode="after")
    def _default_class_known(self) -> RetentionSection:
        if self.default_class not in self.class_days:
            raise ValueError(f"default_class {self.default_class!r} must be one of class_days "
                             f"({', '.join(sorted(self.class_days))})")
        return self


class ConsoleSection(StrictModel):
    """The auditor console (edge.central.console): sessions and sign-in limits."""

    session_idle_min: float = Field(
        30.0, gt=0, le=24 * 60, description="A console session ends after this many minutes without a request"
    )
    session_max_h: float = Field(
        8.0, gt=0, le=72, description="A console session ends this many hours after sign-in, however busy"
    )
    lockout_after: int = Field(
        5, ge=1, le=100, description="An account is locked after this many failed sign-ins in a row"
    )
    lockout_min: float = Field(
        15.0, gt=0, le=24 * 60, description="How long a locked account refuses every sign-in, in minutes"
    )
    sign_in_per_minute: int = Field(
        10, ge=1, le=10_000,
        description="Sign-in attempts accepted per client address in any minute (429 beyond)",
    )
    listen: str = Field(
        "",
        description="Address of the console's own TLS listener (password sign-in, no client certificate); "
                    "empty: none, the console only for reader certificates on the main port",
    )
    port: int = Field(8444, ge=0, le=65535, description="Port of the console's listener (0: any free port)")
    password_checks_at_once: int = Field(
        2, ge=1, le=16,
        description="Password sign-ins checked at once (argon2id, 64 MiB each); more get 503 + Retry-After",
    )
    allow_password_only: bool = Field(
        False,
        description="Let password accounts without TOTP sign in (warned at start); off: they are refused",
    )


# mqtts://host[:port]: the central's broker connection is TLS with its client certificate, nothing else.
_MQTTS_URL = r"^(mqtts://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|mqtts://\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?)$"


class MqttSection(StrictModel):
    """The central's MQTT receiver (edge.central.mqtt_receiver): evidence content (EMQX file-transfer
    commands under each station's topics) and the station API, both through shared subscriptions."""

    broker_url: str = Field(
        pattern=_MQTTS_URL,
        description="mqtts://host[:port] of the agency's broker (port 8883 when omitted); TLS only",
    )
    ca_file: Path = Field(description="CA certificate that issued the broker's certificate (PEM)")
    client_bundle_dir: Path = Field(
        description="Directory with client.crt and client.key: the central's broker identity, whose "
        "certificate CN is the central id (the broker's ACL grants that user every station's topics)",
    )
    client_id: str = Field(
        "", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
        description="MQTT client id; empty: '<central id>-<secret>' (edge.mqtt.client_ids, the secret kept "
        "in identity/mqtt-client.secret). The broker keeps this process's persistent session under it: "
        "stable across restarts, and secret (Mosquitto lets any client it accepts take a session over by "
        "its id)",
    )
    topic_prefix: str = Field(
        "evidence", pattern=MQTT_TOPIC_PREFIX,
        description="First levels of every topic; a station's are <prefix>/stations/<station id>/...",
    )
    shared_group: str = Field(
        "edge-central", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Shared-subscription group ($share/<group>/...): the processes of one group split the "
        "messages between them",
    )
    protocol: str = Field("5", pattern=r"^5$", description="MQTT protocol version: 5 only")
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keep-alive, in seconds")
    session_expiry_s: int = Field(
        7 * 86400, ge=60, le=0xFFFFFFFE,
        description="How long the broker keeps this process's session (and queues its messages) while it "
        "is away, in seconds",
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="TCP connect and TLS handshake limit")
    publish_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A result or reply not acknowledged by the broker this long fails"
    )
    max_segment_kb: int = Field(
        2048, ge=1, le=256 * 1024,
        description="Largest segment payload accepted, in KiB; a larger one is refused (0x83, nothing "
        "stored). Keep it at or above what the broker's max_packet_size lets through",
    )
    max_request_kb: int = Field(
        2048, ge=1, le=256 * 1024,
        description="Largest API request payload accepted, in KiB; a larger one gets a 413 reply",
    )
    transfers_dir: Path | None = Field(
        None, description="Where transfers are assembled; empty: <store_dir>/mqtt-transfers. Processes "
        "sharing the group may share it (every transfer has its own file lock)",
    )
    broker_crl_file: Path | None = Field(
        None, description="The revocation list the broker reads (mosquitto.conf crlfile), when this host "
        "can read it: the CRL gauge on /metrics and the /readyz warning report its time left. Empty: the "
        "copy last installed by `edge central crl --out` or `broker-cert`, else the central's own "
        "identity/ca.crl",
    )
    queue_per_station: int = Field(
        64, ge=1, le=100_000,
        description="Messages of one station waiting in this process's receive queue (fin and API requests, "
        "acknowledged to the broker once queued); more are answered busy at once (fin: 0x97, API: 503) "
        "and the station sends them again later",
    )
    queue_per_station_kb: int = Field(
        16 * 1024, ge=1, le=4 * 1024 * 1024,
        description="Payload bytes of one station waiting in the receive queue, in KiB; at least "
        "max_request_kb (a largest request must fit)",
    )
    queue_concurrency: int = Field(
        4, ge=1, le=64,
        description="Stations whose queued messages are handled at once, per lane (fins and API requests "
        "have separate slots; each station's one at a time, in order)",
    )

    @field_validator("ca_file", "client_bundle_dir", "transfers_dir", "broker_crl_file")
    @classmethod
    def _paths_absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value, "an [mqtt] path")

    @field_validator("transfers_dir", "broker_crl_file", mode="before")
    @classmethod
    def _empty_path(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _port_in_range(self) -> MqttSection:
        port = self.host_port[1]
        if not 1 <= port <= 65535:
            raise ValueError(f"broker_url port must be within 1-65535, got {port}")
        return self

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> MqttSection:
        if self.queue_per_station_kb < self.max_request_kb:
            raise ValueError(f"queue_per_station_kb ({self.queue_per_station_kb}) must be at least "
                             f"max_request_kb ({self.max_request_kb}): a largest request must fit the queue")
        return self

    @property
    def queue_per_station_bytes(self) -> int:
        return self.queue_per_station_kb << 10

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of ``broker_url`` (an IPv6 address without its brackets)."""
        rest = self.broker_url.removeprefix("mqtts://")
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = rest.partition(":")
        return host, int(port) if port else MQTT_DEFAULT_PORT

    @property
    def max_segment_bytes(self) -> int:
        return self.max_segment_kb << 10

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_kb << 10


class CentralConfig(StrictModel):
    central: CentralSection
    server: ServerSection = Field(default_factory=ServerSection)
    uploads: UploadsSection = Field(default_factory=UploadsSection)
    identity: IdentitySection = Field(default_factory=IdentitySection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    log: LogSection = Field(default_factory=LogSection)
    console: ConsoleSection = Field(default_factory=ConsoleSection)
    # None (no [mqtt] section): no MQTT receiver, HTTP only.
    mqtt: MqttSection | None = None

    @property
    def layout(self) -> CentralLayout:
        return CentralLayout(self.central.store_dir)

    @property
    def mqtt_transfers_dir(self) -> Path:
        """Where the MQTT receiver assembles transfers ([mqtt] transfers_dir or the store's default)."""
        if self.mqtt is not None and self.mqtt.transfers_dir is not None:
            return self.mqtt.transfers_dir
        return self.layout.mqtt_transfers_dir

    @property
    def server_cert_path(self) -> Path:
        return self.server.tls_cert or self.layout.server_cert

    @property
    def server_key_path(self) -> Path:
        return self.server.tls_key or self.layout.server_key


@dataclass(frozen=True)
class CentralLayout:
    """Where everything lives under the central's store directory."""

    store_dir: Path

    @property
    def identity_dir(self) -> Path:
        return self.store_dir / "identity"

    @property
    def ca_cert(self) -> Path:
        return self.identity_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.identity_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.identity_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.identity_dir / "server.key"

    @property
    def signing_key(self) -> Path:
        return self.identity_dir / "signing.key"

    @property
    def console_key(self) -> Path:
        """Seals the console's TOTP secrets and keys its trails' chain (edge.central.console.secret_key)."""
        return self.identity_dir / "console.key"

    @property
    def signing_pub(self) -> Path:
        """Written by StationKey beside the private key; copied into every enrollment bundle."""
        return self.identity_dir / "signing.key.pub"

    @property
    def crl_file(self) -> Path:
        """The CA's revocation list, for the broker (edge.central.revocation)."""
        return self.identity_dir / "ca.crl"

    @property
    def mqtt_client_secret(self) -> Path:
        """The secret part of the central's MQTT client ids (edge.mqtt.client_ids)."""
        return self.identity_dir / "mqtt-client.secret"

    @property
    def issued_dir(self) -> Path:
        """A copy of every client certificate the CA issued (a CRL names certificates by serial)."""
        return self.identity_dir / "issued"

    @property
    def issue_order_file(self) -> Path:
        """The SHA-256 of each certificate the CA issued, one a line, in the order it issued them: which of
        two identities is the newer, whatever their notBefore says (edge.central.identity.issue_order)."""
        return self.identity_dir / "issued.order"

    @property
    def issue_order_copy_file(self) -> Path:
        """The second copy of the issue order, outside identity/: restoring identity/ from a backup cannot
        lose the places of the certificates issued since (edge.central.identity.issue_order)."""
        return self.store_dir / "issued-order.copy"

    @property
    def crl_installed_file(self) -> Path:
        """Where and until when the revocation list was installed (`edge central crl --out`, `broker-cert`),
        per destination: the time left the central reports (edge.central.revocation.crl_standing)."""
        return self.identity_dir / "crl-installed.json"

    @property
    def tsa_roots_dir(self) -> Path:
        """Copies of the configured TSA roots, to check the store's time-stamps with later."""
        return self.identity_dir / "tsa-roots"

    @property
    def uploads_dir(self) -> Path:
        return self.store_dir / "uploads"

    @property
    def objects_dir(self) -> Path:
        return self.store_dir / "objects"

    @property
    def mqtt_transfers_dir(self) -> Path:
        """MQTT file transfers being assembled (edge.central.mqtt_ingest_store)."""
        return self.store_dir / "mqtt-transfers"

    @property
    def index_db(self) -> Path:
        return self.store_dir / "index.db"


def parse_central_config(text: str, source: str = "<string>") -> CentralConfig:
    """Validate TOML text; `ConfigError` names `source`, the line and the key of every problem."""
    return parse_toml_model(text, source, CentralConfig, role="central")


def load_central_config(path: Path) -> CentralConfig:
    """Read and validate a central configuration file; raises `ConfigError`."""
    path = Path(path)
    return parse_central_config(read_config_text(path), str(path))
