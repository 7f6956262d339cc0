"""Serial boards (pyserial, any `serial_for_url` URL).

- `dock_protocol`: the dock bay controller line protocol, a pure codec (see `DOCK_PROTOCOL.md`).
- `dock`: `DockDriver`, the async host side of it.

Nothing is re-exported here, so importing a codec does not pull in a transport.
"""
