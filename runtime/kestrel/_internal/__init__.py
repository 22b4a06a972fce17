"""Internal helpers. Not part of the public API."""
