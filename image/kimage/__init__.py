"""Kestrel SD-card image recipe (docs/image.md)."""
