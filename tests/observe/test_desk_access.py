"""Who may reach the check-out desk's routes (Access.DESK): the socket's operators; over TCP the dock screen
on this PC only, and only with [equipment] screen_checkout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.usb.protocol import RecorderInfo, RecorderSettings
from edge.config.station import ApiSection
from edge.equipment.checkout import CheckoutDesk, CheckoutPolicy, DockedRecorder, IdentityWritten
from edge.equipment.station_desk import StationDesk
from edge.ingest.store import StationStore
from edge.observe.api import Access, Caller, authorised, build_app
from edge.observe.board import StatusBoard
from edge.observe.desk_api import desk_routes


class NoRecorders:
    """A bench with nothing docked (who may call the routes is the question here, not what they do)."""

    async def docked(self) -> list[DockedRecorder]:
        return []

    async def write_identity(self, recorder: DockedRecorder, info: RecorderInfo, *, set_clock: bool,
                             settings: RecorderSettings | None = None) -> IdentityWritten:
        raise AssertionError("nothing is docked")

    async def show_issued(self, recorder: DockedRecorder) -> None:
        raise AssertionError("nothing is docked")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def desk(store: StationStore) -> StationDesk:
    async def untrusted() -> bool:
        return False

    checkout = CheckoutDesk(store, NoRecorders(), CheckoutPolicy(), clock_trusted=untrusted)
    return StationDesk(checkout, pin_attempts_per_minute=12, card_max_age_s=10.0)


@pytest.mark.parametrize("over_tcp", [True, False])
def test_the_desk_takes_a_pin_over_tcp_from_this_pc_only(store: StationStore, over_tcp: bool) -> None:
    settings = ApiSection(tcp_host="0.0.0.0", tcp_port=8470, allow_non_loopback=True)
    app = build_app(StatusBoard(identity={"id": "TEST-STATION"}, bays=[1]), store, settings,
                    [desk_routes(desk(store), over_tcp=over_tcp)])
    here, elsewhere = Caller("tcp", address="127.0.0.1"), Caller("tcp", address="192.0.2.7")
    # The kiosk (another host too, where the screen is served to one) reads the outcomes ...
    assert authorised(app, elsewhere, Access.KIOSK) is None
    # ... but a PIN is taken from this PC's own screen only, and only with screen_checkout.
    if over_tcp:
        assert authorised(app, here, Access.DESK) is None
        assert "must not cross the network" in str(authorised(app, elsewhere, Access.DESK))
    else:
        assert "screen_checkout is off" in str(authorised(app, here, Access.DESK))
    # The socket: root, as for every operator route; a stranger's uid is refused there too.
    assert authorised(app, Caller("unix", uid=0, gid=0), Access.DESK) is None
    assert authorised(app, Caller("unix", uid=54321, gid=54321), Access.DESK) is not None
