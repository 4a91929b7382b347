"""Byte sizes as people write and read them: "512MiB" or "2GB" in settings, "1.5 GiB" in messages."""

from __future__ import annotations

from pydantic import ByteSize, TypeAdapter, ValidationError

_BYTE_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


def parse_byte_size(value: str) -> int:
    """"512MiB", "2GB" or "1000" as a number of bytes (ValueError otherwise)."""
    try:
        return int(_BYTE_SIZE.validate_python(value.strip()))
    except ValidationError:
        raise ValueError(f"cannot read {value!r} as a byte count") from None


def human_bytes(n: float) -> str:
    """`1.5 GiB`, `12.0 KiB`, `512 B`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
