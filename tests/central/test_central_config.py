"""CentralConfig: the example file, defaults, and every kind of wrong value reported with file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.central.config import (
    CentralConfig,
    CentralLayout,
    MqttSection,
    default_server_names,
    load_central_config,
    parse_central_config,
)
from edge.config.base import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "central.toml"

MINIMAL = """\
[central]
id = "central-hq"
store_dir = "/srv/central"
"""


def _parse(extra: str, *, central: str = MINIMAL) -> CentralConfig:
    return parse_central_config(central + extra, "central.toml")


def _problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_central_config(text, "central.toml")
    return str(caught.value)


def test_example_file_loads_with_production_settings() -> None:
    config = load_central_config(EXAMPLE)
    assert config.central.id == "central-hq"
    assert config.central.store_dir == Path("/var/lib/evidence-central")
    assert config.server.port == 8443
    assert config.server.insecure_plain_http is False
    # `tls_cert = ""` means "the one init makes", never Path("") (which is the current directory).
    assert config.server.tls_cert is None and config.server.tls_key is None
    assert config.server_cert_path == Path("/var/lib/evidence-central/identity/server.crt")
    assert config.server_key_path == Path("/var/lib/evidence-central/identity/server.key")
    assert config.uploads.max_size_bytes == 65536 << 20
    assert config.uploads.expire_incomplete_s == 72 * 3600


def test_example_file_documents_every_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    config = CentralConfig.model_validate({"central": {"id": "x", "store_dir": "/x"}})
    for section_name, section in config:
        # An optional section that is off by default ([mqtt]) is shown commented out, every key documented.
        model = type(section) if section is not None else MqttSection
        header = f"[{section_name}]" if section is not None else f"# [{section_name}]"
        assert header in lines, f"section [{section_name}] missing from the example"
        for key in model.model_fields:
            numbers = [i for i, line in enumerate(lines) if re.match(rf"#?\s*{key}\s*=", line)]
            assert numbers, f"{section_name}.{key} is not in the example"
            # A comment explains it: on a line above, within the block of comments leading to it.
            above = lines[max(0, numbers[0] - 4) : numbers[0]]
            assert any(line.startswith("#") for line in above), f"{section_name}.{key} has no comment"


def test_minimal_config_has_safe_defaults() -> None:
    config = _parse("")
    assert config.server.listen == "0.0.0.0"
    assert config.server.port == 8443
    assert config.server.insecure_plain_http is False
    assert {"localhost", "127.0.0.1", "::1"} <= set(config.server.names)
    assert config.server.names == default_server_names()
    assert config.uploads.max_size_mb == 65536
    assert config.uploads.expire_incomplete_h == 72
    assert config.uploads.chunk_timeout_s == 60
    assert config.identity.station_cert_days == 730


def test_layout_paths() -> None:
    layout = CentralLayout(Path("/srv/central"))
    assert _parse("").layout == layout
    assert layout.identity_dir == Path("/srv/central/identity")
    assert layout.ca_cert.name == "ca.crt" and layout.ca_key.name == "ca.key"
    assert layout.server_cert.name == "server.crt" and layout.server_key.name == "server.key"
    assert layout.signing_key == Path("/srv/central/identity/signing.key")
    assert layout.signing_pub == Path("/srv/central/identity/signing.key.pub")
    assert layout.uploads_dir == Path("/srv/central/uploads")
    assert layout.objects_dir == Path("/srv/central/objects")
    assert layout.index_db == Path("/srv/central/index.db")


def test_configured_tls_files_override_the_layout() -> None:
    config = _parse('[server]\ntls_cert = "/etc/pki/c.crt"\ntls_key = "/etc/pki/c.key"\n')
    assert config.server_cert_path == Path("/etc/pki/c.crt")
    assert config.server_key_path == Path("/etc/pki/c.key")


def test_unknown_key_names_file_line_and_key() -> None:
    message = _problem(MINIMAL + "[server]\nport = 8443\nlisten_adress = '::'\n")
    assert message.startswith("central.toml: 1 problem(s)")
    assert "line 6: server.listen_adress: unknown key" in message


def test_unknown_section_is_an_error() -> None:
    assert "tls: unknown key" in _problem(MINIMAL + "[tls]\ncert = 'x'\n")


def test_missing_central_section() -> None:
    assert "central: required key is missing" in _problem("[server]\nport = 8443\n")


@pytest.mark.parametrize("port", ["0", "-1", "65536", "1e9", '"https"'])
def test_port_out_of_range(port: str) -> None:
    message = _problem(MINIMAL + f"[server]\nport = {port}\n")
    assert "line 5: server.port" in message


def test_relative_store_dir_is_refused() -> None:
    message = _problem('[central]\nid = "c"\nstore_dir = "var/central"\n')
    assert "line 3: central.store_dir" in message and "absolute" in message


@pytest.mark.parametrize("value", ['"../x"', '""', '"central hq"', '"-c"', '"' + "a" * 65 + '"'])
def test_bad_central_id(value: str) -> None:
    assert "central.id" in _problem(f"[central]\nid = {value}\nstore_dir = '/x'\n")


@pytest.mark.parametrize(
    "names",
    [
        "[]",
        '["*.example.org"]',
        '["central.example.org", "CENTRAL.example.org"]',
        '["bad_name"]',
        '["a..b"]',
        '["-lead.example"]',
        '["' + "a" * 64 + '.example"]',
        '"central.example.org"',
    ],
)
def test_bad_server_names(names: str) -> None:
    assert "server.names" in _problem(MINIMAL + f"[server]\nnames = {names}\n")


def test_ip_and_dns_names_accepted() -> None:
    config = _parse('[server]\nnames = ["central.gov.cn", "10.0.0.5", "fd00::1", "host"]\n')
    assert config.server.names == ["central.gov.cn", "10.0.0.5", "fd00::1", "host"]


@pytest.mark.parametrize("listen", ['"0.0.0.0"', '"::"', '"127.0.0.1"', '"central.local"'])
def test_listen_addresses(listen: str) -> None:
    assert _parse(f"[server]\nlisten = {listen}\n").server.listen == listen.strip('"')


def test_bad_listen_address() -> None:
    assert "server.listen" in _problem(MINIMAL + '[server]\nlisten = "0.0.0.0:8443"\n')


@pytest.mark.parametrize("value", ['"yes"', '"true"', "1"])
def test_plain_http_switch_takes_only_a_boolean(value: str) -> None:
    assert "server.insecure_plain_http" in _problem(MINIMAL + f"[server]\ninsecure_plain_http = {value}\n")


def test_plain_http_must_be_asked_for() -> None:
    config = _parse('[server]\ninsecure_plain_http = true\nlisten = "127.0.0.1"\n')
    assert config.server.insecure_plain_http is True


@pytest.mark.parametrize("listen", ["0.0.0.0", "::", "192.168.10.20", "fe80::1", "central.example.org"])
def test_plain_http_binds_loopback_only(listen: str) -> None:
    message = _problem(MINIMAL + f'[server]\ninsecure_plain_http = true\nlisten = "{listen}"\n')
    assert "loopback" in message and listen in message
    # Control: the same address is fine with TLS.
    assert _parse(f'[server]\nlisten = "{listen}"\n').server.listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.53", "::1", "localhost", "LOCALHOST."])
def test_plain_http_on_loopback_is_accepted(listen: str) -> None:
    config = _parse(f'[server]\ninsecure_plain_http = true\nlisten = "{listen}"\n')
    assert config.server.listen == listen


def test_bounds_have_safe_defaults_and_are_validated() -> None:
    server = _parse("").server
    assert server.max_concurrent_requests == 256 and server.retry_after_s == 10
    assert server.max_json_body_bytes == 32 << 20 and server.max_buffered_body_bytes == 256 << 20
    assert server.request_header_timeout_s == 30 and server.access_log is True
    uploads = _parse("").uploads
    assert uploads.expire_unregistered_s == 72 * 3600
    assert uploads.station_quota_bytes == 262144 << 20
    for bad in ("max_concurrent_requests = 0", "request_header_timeout_s = 0", "retry_after_s = 0",
                "max_json_body_mb = 0", 'access_log = "yes"', "request_header_timeout_s = 1e9"):
        assert f"server.{bad.split(' ')[0]}" in _problem(MINIMAL + f"[server]\n{bad}\n")
    assert "max_buffered_body_mb" in _problem(MINIMAL + "[server]\nmax_json_body_mb = 64\n"
                                                        "max_buffered_body_mb = 32\n")
    for bad in ("expire_unregistered_h = 0", "station_quota_mb = 0"):
        assert f"uploads.{bad.split(' ')[0]}" in _problem(MINIMAL + f"[uploads]\n{bad}\n")
    assert "station_quota_mb" in _problem(MINIMAL + "[uploads]\nmax_size_mb = 100\nstation_quota_mb = 99\n")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_size_mb", "0"),
        ("max_size_mb", "-5"),
        ("expire_incomplete_h", "0"),
        ("expire_incomplete_h", "-1.5"),
        ("chunk_timeout_s", "0"),
        ("chunk_timeout_s", "1e6"),
        ("chunk_timeout_s", "nan"),
    ],
)
def test_upload_sizes_must_be_positive(key: str, value: str) -> None:
    assert f"uploads.{key}" in _problem(MINIMAL + f"[uploads]\n{key} = {value}\n")


@pytest.mark.parametrize("key", ["station_cert_days", "reader_cert_days", "server_cert_days"])
def test_certificate_days_bounded(key: str) -> None:
    assert f"identity.{key}" in _problem(MINIMAL + f"[identity]\n{key} = 0\n")
    assert f"identity.{key}" in _problem(MINIMAL + f"[identity]\n{key} = 100000\n")


def test_tls_cert_and_key_go_together() -> None:
    assert "tls_cert and tls_key" in _problem(MINIMAL + '[server]\ntls_cert = "/etc/c.crt"\n')
    assert "tls_cert and tls_key" in _problem(MINIMAL + '[server]\ntls_key = "/etc/c.key"\n')


def test_tls_paths_absolute() -> None:
    message = _problem(MINIMAL + '[server]\ntls_cert = "c.crt"\ntls_key = "/c.key"\n')
    assert "server.tls_cert" in message and "absolute" in message


def test_retention_takes_nothing_yet() -> None:
    assert _parse("[retention]\n").retention is not None
    assert "retention.days: unknown key" in _problem(MINIMAL + "[retention]\ndays = 180\n")


def test_config_is_immutable() -> None:
    config = _parse("")
    with pytest.raises(ValueError):
        config.server.port = 1  # type: ignore[misc]


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[central\nid = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"central.toml: not valid TOML"):
        load_central_config(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "central.toml"
    path.write_bytes(b'[central]\nid = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_central_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read"):
        load_central_config(tmp_path / "missing.toml")


def test_every_problem_is_reported_at_once() -> None:
    message = _problem('[central]\nid = ""\nstore_dir = "rel"\n[server]\nport = 0\n')
    assert message.startswith("central.toml: 3 problem(s)")


@pytest.mark.parametrize("key", ["max_upload_connections", "station_max_writes"])
@pytest.mark.parametrize("value", ["0", "-3", '"many"'])
def test_upload_write_bounds_are_validated(key: str, value: str) -> None:
    message = _problem(MINIMAL + f"[uploads]\n{key} = {value}\n")
    assert f"line 5: uploads.{key}" in message
    # Control: a positive number is taken.
    assert getattr(_parse(f"[uploads]\n{key} = 7\n").uploads, key) == 7
