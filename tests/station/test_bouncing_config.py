"""[dock.bouncing]: when a bay counts as bouncing is configuration, validated by `edge check-config` with
errors that name the bad key, refused (with the rest of [dock]) by a reload, and taken by the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.config.reload import compare_configs
from edge.config.station import load_config, parse_config
from edge.sources.usb.bay_presence import BAY_CALM_S, BAY_CHANGES_MAX, BayPresenceDebounce

MINIMAL = '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'


def check(tmp_path: Path, bouncing: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "station.toml"
    path.write_text(MINIMAL + "[dock.bouncing]\n" + bouncing)
    status = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return status, captured.err + captured.out


@pytest.mark.parametrize(
    ("bouncing", "named", "why"),
    [
        ("changes_max = 2\n", "dock.bouncing.changes_max", "greater than or equal to 3"),
        ("changes_max = 4.5\n", "dock.bouncing.changes_max", "integer"),
        ("window_s = 0\n", "dock.bouncing.window_s", "greater than 0"),
        ("calm_s = 0.1\n", "dock.bouncing.calm_s", "greater than 0.25"),
        ("report_first_s = 1\n", "dock.bouncing.report_first_s", "greater than or equal to 10"),
        ("report_max_s = 60\n", "dock.bouncing.report_max_s", "greater than or equal to 300"),
        # Cross-field: the error is the section's, and its words name the keys.
        ("changes_max = 8\nwindow_s = 2.0\n", "dock.bouncing",
         "window_s = 2 is too short for changes_max = 8"),
        ("report_first_s = 900\nreport_max_s = 600\n", "dock.bouncing",
         "report_max_s = 600 is shorter than report_first_s = 900"),
        ("chnages_max = 5\n", "dock.bouncing.chnages_max", "unknown key"),
    ],
)
def test_check_config_refuses_bad_bouncing_settings_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bouncing: str, named: str, why: str
) -> None:
    status, said = check(tmp_path, bouncing, capsys)
    assert status == 78, said
    assert named in said and why in said, said


def test_check_config_accepts_sound_bouncing_settings_and_the_agent_takes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control of the refusals above: values at the limits pass, and reach the debounce."""
    settings = "changes_max = 3\nwindow_s = 0.8\ncalm_s = 0.3\nreport_first_s = 10\nreport_max_s = 300\n"
    status, said = check(tmp_path, settings, capsys)
    assert status == 0, said
    config = load_config(tmp_path / "station.toml")
    debounce = BayPresenceDebounce(bouncing=config.dock.bouncing)
    assert (debounce.changes_max, debounce.changes_window_s, debounce.calm_s) == (3, 0.8, 0.3)
    assert (debounce.report_first_s, debounce.report_max_s) == (10, 300)
    # Without the section: the defaults documented in config/station.toml.
    default = parse_config(MINIMAL).dock.bouncing
    assert (default.changes_max, default.calm_s) == (BAY_CHANGES_MAX, BAY_CALM_S) == (4, 30.0)


def test_a_reload_that_changes_the_bouncing_settings_is_refused_with_the_rest_of_dock() -> None:
    """[dock] shapes the running bay board loop: its settings need a restart, and a reload that changes
    them is refused whole (edge.config.reload); the control: a live section alone reloads."""
    old = parse_config(MINIMAL)
    changed = parse_config(MINIMAL + "[dock.bouncing]\ncalm_s = 60\n")
    decision = compare_configs(old, changed)
    assert decision.fixed == ("dock",) and decision.changed == ()
    live = parse_config(MINIMAL + "[wipe]\npolicy = \"never\"\n")
    assert compare_configs(old, live).fixed == ()
