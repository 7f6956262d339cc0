"""The local API's default socket follows systemd's $RUNTIME_DIRECTORY, so an agent started outside
the unit with its own runtime directory (tests, a bench store) never takes the production socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config.station import ApiSection, default_api_socket


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("/run/evidence-edge", "/run/evidence-edge/station.sock"),
        ("/tmp/edge-run-x:/run/other", "/tmp/edge-run-x/station.sock"),  # systemd joins several with ':'
        ("relative/dir", "/run/evidence-edge/station.sock"),  # not absolute: not trusted
        ("", "/run/evidence-edge/station.sock"),
    ],
)
def test_the_default_socket_is_in_the_runtime_directory(
    monkeypatch: pytest.MonkeyPatch, runtime: str, expected: str
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", runtime)
    assert default_api_socket() == Path(expected)
    assert ApiSection().socket_path == Path(expected)


def test_without_a_runtime_directory_the_socket_is_the_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert ApiSection().socket_path == Path("/run/evidence-edge/station.sock")
    # Control: an explicit socket_path wins over the environment.
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/tmp/elsewhere")
    assert ApiSection(socket_path=Path("/srv/api.sock")).socket_path == Path("/srv/api.sock")
