"""The device side of every driver protocol, over real OS primitives."""
