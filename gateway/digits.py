"""Numbers sent by clients in headers and parameters: ASCII digits only."""

from __future__ import annotations

MAX_DIGITS = 18  # every value below 10**18 fits an int64; int() of a long digit string is slow, then refused


def ascii_int(value: str | bytes) -> int | None:
    """`value` as an int when it is 1 to 18 ASCII digits 0-9 and nothing else; None otherwise.

    `str.isdigit()` alone also accepts '²' and other Unicode digits, which `int()` refuses, and `int()` also
    accepts signs, spaces, underscores and Unicode decimal digits such as '١'."""
    if not 0 < len(value) <= MAX_DIGITS or not value.isascii() or not value.isdigit():
        return None
    return int(value)
