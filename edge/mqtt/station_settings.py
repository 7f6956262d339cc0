"""The station's `MqttSettings` from its validated `[mqtt]` section (and `[uplink]` for the identity)."""

from __future__ import annotations

from pathlib import Path

from edge.config.station import MqttProtocolVersion, StationConfig
from edge.mqtt.client import MqttSettings, ProtocolVersion, WillMessage
from edge.mqtt.client_ids import load_or_create_client_secret, load_or_create_hex_secret, secret_client_id
from edge.pki.bundle import BUNDLE_CA_CERT
from edge.pki.tls import broker_ssl_context

# The secret part of the station's client ids (edge.mqtt.client_ids), beside state.db.
CLIENT_SECRET_FILE = "mqtt-client.secret"
# The HMAC key of the device ids telemetry publishes (edge.mqtt.telemetry), beside it: 32 random bytes made
# once, so ids stay the same across restarts and key rotations, differ between stations, and nobody who
# reads the broker can recompute them from a serial.
TELEMETRY_SALT_FILE = "mqtt-telemetry.salt"
TELEMETRY_SALT_BYTES = 32


def client_secret_path(config: StationConfig) -> Path:
    return config.station.store_dir / CLIENT_SECRET_FILE


def telemetry_salt_path(config: StationConfig) -> Path:
    return config.station.store_dir / TELEMETRY_SALT_FILE


def telemetry_device_salt(config: StationConfig) -> bytes:
    """The station's telemetry salt, made at the first start (private, never replaced); raises
    `IdentityError` when the file is not one."""
    text = load_or_create_hex_secret(
        telemetry_salt_path(config), hex_digits=2 * TELEMETRY_SALT_BYTES, what="MQTT telemetry salt",
        if_removed="the device ids telemetry publishes then change")
    assert text is not None  # made when missing
    return bytes.fromhex(text)


def station_client_id(config: StationConfig, *, create: bool = True) -> str:
    """`[mqtt] client_id` when set (it must be as secret), else ``<station id>-<secret>``, the secret
    made at the first start; without `create` (check-config) a missing secret gives a stand-in id."""
    if config.mqtt.client_id:
        return config.mqtt.client_id
    secret = load_or_create_client_secret(client_secret_path(config), create=create)
    return secret_client_id(config.station.id, secret or "0" * 20)


def station_mqtt_settings(
    config: StationConfig, *, will: WillMessage | None = None, create_secret: bool = True
) -> MqttSettings:
    """Settings for `MqttClient`: TLS with the station's enrolled client certificate, or the password
    login of `[mqtt] username`/`password` (resolved at each connection, never held here), under the
    station's unguessable client id (`station_client_id`). Raises `IdentityError` when a certificate, key
    or the client secret cannot be used."""
    mqtt = config.mqtt
    if not mqtt.enabled:
        raise ValueError("[mqtt] broker_url is empty: MQTT is off")
    identity = config.mqtt_identity_dir
    ca_file = mqtt.ca_file if mqtt.ca_file is not None else (identity / BUNDLE_CA_CERT if identity else None)
    if ca_file is None:  # StationConfig's validation requires one of them
        raise ValueError("[mqtt] needs ca_file, or an identity_dir whose ca.crt issued the broker's cert")
    host, port = mqtt.host_port
    return MqttSettings(
        host=host,
        port=port,
        client_id=station_client_id(config, create=create_secret),
        tls=broker_ssl_context(ca_file=ca_file, bundle_dir=None if mqtt.username else identity),
        protocol=ProtocolVersion.V5 if mqtt.protocol is MqttProtocolVersion.V5 else ProtocolVersion.V311,
        keepalive_s=mqtt.keepalive_s,
        session_expiry_s=mqtt.session_expiry_s,
        username=mqtt.username,
        password=mqtt.password.resolve if mqtt.password is not None else None,
        connect_timeout_s=mqtt.connect_timeout_s,
        publish_timeout_s=mqtt.publish_timeout_s,
        will=will,
    )
