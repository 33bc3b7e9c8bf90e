"""Errors raised while decoding index structures.

The index package works on bytes, not files, so its errors carry a byte
position within the buffer they were given; the engine adds the file name.
"""


class FormatError(Exception):
    """Bytes that do not decode as the structure they claim to be.

    ``position`` is the byte position within the decoded buffer (the start of
    the file when the buffer is a whole file) and ``what`` says what is wrong.
    """

    def __init__(self, position: int, what: str) -> None:
        super().__init__(f"at byte {position}: {what}")
        self.position = position
        self.what = what


class UnsupportedVersionError(FormatError):
    """A well-formed header whose format version this code does not know."""

    def __init__(self, position: int, what: str, version: int) -> None:
        super().__init__(position, what)
        self.version = version
