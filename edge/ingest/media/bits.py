"""A bounded bit reader for codec parameter sets (H.264/H.265 SPS, AAC AudioSpecificConfig). Pure."""

from __future__ import annotations

from edge.ingest.media.errors import NotUnderstood

# Exp-Golomb codes in a parameter set never need more leading zeros than this (values < 2**32).
MAX_LEADING_ZEROS = 31


def unescape_rbsp(nal: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 -> 00 00) from a NAL unit payload."""
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0  # in bits
        self.limit = len(data) * 8

    def bits(self, count: int) -> int:
        if count < 0 or self.position + count > self.limit:
            raise NotUnderstood(f"parameter set ends after {self.limit} bits, needed {self.position + count}")
        value = 0
        for _ in range(count):
            byte = self.data[self.position >> 3]
            value = (value << 1) | ((byte >> (7 - (self.position & 7))) & 1)
            self.position += 1
        return value

    def flag(self) -> bool:
        return self.bits(1) == 1

    def skip(self, count: int) -> None:
        if count < 0 or self.position + count > self.limit:
            raise NotUnderstood("parameter set ends inside a field")
        self.position += count

    def ue(self) -> int:
        """Unsigned exp-Golomb."""
        zeros = 0
        while not self.flag():
            zeros += 1
            if zeros > MAX_LEADING_ZEROS:
                raise NotUnderstood("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """Signed exp-Golomb."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)
