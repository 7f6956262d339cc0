"""Review rev11d (issue 11, LOW): the [[rooms.room.source]] gb28181 field's description (shown by the config
reference and --validate-config) still says a GB channel's G.711 sound is not recorded and asks for a
microphone source, while the feed now records it (edge.rooms.gb_feed). Control: the description is there."""

from __future__ import annotations

from edge.config.rooms import RoomSourceConfig


def test_the_gb28181_field_does_not_say_its_sound_is_not_recorded() -> None:
    description = RoomSourceConfig.model_fields["gb28181"].description or ""
    assert "GB/T 28181" in description  # control: the field is documented
    assert "not recorded" not in description and "microphone source" not in description, description
