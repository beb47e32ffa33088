"""Following the structure of a zstd frame (RFC 8878) through the bytes zstd is fed.

zstd's stream reader stops without an error when its input ends inside a frame, so it
cannot tell a frame whose last bytes are missing from a complete one, and only a complete
frame has its content checksum verified. `FrameFollower` sits between the records and the
reader: it hands the bytes on unchanged and reads the frame header's flags, each block
header and the checksum's place on the way, so the decoder knows at the end whether zstd
was given one whole frame, nothing more, and whether that frame carries a checksum.
Blocks' contents are skipped, not parsed: following costs a few operations per block
(128 KiB of plaintext at most).
"""

from __future__ import annotations

from pgwarden.codec.format import CodecError

TYPE_CHECKING = False  # typing costs milliseconds to import; the codec must load fast
if TYPE_CHECKING:
    from collections.abc import Callable

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DICTIONARY_ID_SIZES = (0, 1, 2, 4)
_CONTENT_SIZE_SIZES = (0, 2, 4, 8)  # by flag; flag 0 means 1 byte in a single-segment frame
_RLE_BLOCK, _RESERVED_BLOCK = 1, 3
_BLOCK_SIZE_MAX = 128 << 10
_CHECKSUM_SIZE = 4

# Where the follower is: in a field it parses (the frame header's first 5 bytes, a block
# header), or in bytes it skips (the rest of the frame header, a block's content, the
# checksum), or past the end of the frame.
_START, _HEADER_REST, _BLOCK_HEADER, _BLOCK, _CHECKSUM, _END = range(6)
_PARSED = (_START, _BLOCK_HEADER)


class FrameFollower:
    """A file-like source for zstd that passes on `read`'s bytes and follows the frame.

    Once zstd has stopped reading: `complete` tells whether one whole frame went through,
    `extra` counts the bytes that followed its end, `checksum` whether it carries a
    content checksum (None before its header went through)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._state = _START
        self._field = bytearray()  # a parsed field's bytes, gathered across reads
        self._need = 5  # bytes still wanted by the current field or skip
        self._last_block = False
        self.checksum: bool | None = None
        self.extra = 0

    @property
    def complete(self) -> bool:
        return self._state == _END

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        self.follow(data)
        return data

    def follow(self, data: bytes) -> None:
        """Take note of the next bytes of the stream; CodecError if they cannot be zstd's."""
        position, end = 0, len(data)
        while position < end:
            if self._state == _END:
                self.extra += end - position
                return
            taken = min(self._need, end - position)
            if self._state in _PARSED:
                self._field += data[position : position + taken]
            position += taken
            self._need -= taken
            while self._need == 0 and self._state != _END:
                self._next()

    def _next(self) -> None:
        """The current field or skip is complete: parse it, and say what comes next."""
        state = self._state
        if state == _START:
            self._start(bytes(self._field))
        elif state == _BLOCK_HEADER:
            self._block(bytes(self._field))
        elif state == _HEADER_REST or (state == _BLOCK and not self._last_block):
            self._state, self._need = _BLOCK_HEADER, 3
        elif state == _BLOCK and self.checksum:
            self._state, self._need = _CHECKSUM, _CHECKSUM_SIZE
        else:  # the last block without a checksum, or the checksum
            self._state = _END
        self._field.clear()

    def _start(self, field: bytes) -> None:
        if field[:4] != ZSTD_MAGIC:
            raise _corrupted("does not start with a zstd frame")
        descriptor = field[4]
        if descriptor & 0x08:
            raise _corrupted("starts with a zstd frame header that sets a reserved bit")
        single_segment = bool(descriptor & 0x20)
        content_size = _CONTENT_SIZE_SIZES[descriptor >> 6] or int(single_segment)
        self.checksum = bool(descriptor & 0x04)
        window = 0 if single_segment else 1
        self._state = _HEADER_REST
        self._need = window + _DICTIONARY_ID_SIZES[descriptor & 0x03] + content_size

    def _block(self, field: bytes) -> None:
        word = int.from_bytes(field, "little")
        block_type, size = (word >> 1) & 0x03, word >> 3
        if block_type == _RESERVED_BLOCK:
            raise _corrupted("holds a zstd block of the reserved type")
        if size > _BLOCK_SIZE_MAX:
            raise _corrupted(f"holds a zstd block of {size} bytes, more than zstd allows")
        self._last_block = bool(word & 0x01)
        self._state = _BLOCK
        self._need = 1 if block_type == _RLE_BLOCK else size


def _corrupted(what: str) -> CodecError:
    return CodecError(f"object is corrupted: its compressed data {what}")
