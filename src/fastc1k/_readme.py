"""Blocks of the README that a command writes: the text between `<!-- NAME:start -->` and
`<!-- NAME:end -->` is replaced whole, so that no figure there is typed by hand."""
from __future__ import annotations

__all__ = ["markers", "replace_block", "write_block"]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_block(text: str, name: str, block: str) -> str:
    """`text` with the block `name` replaced by `block`; ValueError without its markers."""
    start, end = markers(name)
    a, b = text.find(start), text.find(end)
    if a < 0 or b < a:
        raise ValueError(f"no {start} ... {end} markers")
    return text[:a + len(start)] + "\n" + block.rstrip("\n") + "\n" + text[b:]


def write_block(path: str, name: str, block: str) -> bool:
    """Rewrite the block `name` of the file at `path`; False when the file or its markers
    are missing (a checkout without the README, e.g. an installed package)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = replace_block(text, name, block)
    except (OSError, ValueError):
        return False
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return True
