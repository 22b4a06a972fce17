"""Records per hour as a server-side SVG line chart (pure: numbers in, SVG text out; no script)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

__all__ = ["hourly_svg", "PALETTE"]

PALETTE = ("#1f6feb", "#d4731a", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#b7950b")
W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 240, 56, 16, 16, 44


def _hour_label(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y-%m-%d %H:00Z")


def hourly_svg(series: Mapping[str, Sequence[tuple[int, int]]], *, title: str) -> str:
    """One polyline per label over whole hours (unix time // 3600), missing hours drawn as 0."""
    points = [(h, n) for s in series.values() for h, n in s]
    label = escape(title)
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{label}: no records" '
            f'width="{W}" height="60" viewBox="0 0 {W} 60"><title>{label}</title>'
            f'<text x="{LEFT}" y="34" font-size="14" fill="#444">no records yet</text></svg>'
        )
    h0, h1 = min(h for h, _ in points), max(h for h, _ in points)
    top = max(n for _, n in points)
    span = max(1, h1 - h0)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(h: int) -> float:
        return LEFT + (h - h0) / span * pw if h1 > h0 else LEFT + pw / 2

    def y(n: int) -> float:
        return TOP + ph - n / top * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{label}" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11"><title>{label}</title>',
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
        f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{W - RIGHT}" y2="{TOP + ph}" stroke="#555"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="#555"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + ph}" text-anchor="end">0</text>',
        f'<text x="{LEFT}" y="{H - 24}">{_hour_label(h0)}</text>',
        f'<text x="{W - RIGHT}" y="{H - 24}" text-anchor="end">{_hour_label(h1)}</text>',
        f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle">records per hour (record time, UTC)</text>',
    ]
    for i, (name, data) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        counts = dict(data)
        hours = range(h0, h1 + 1) if h1 - h0 <= 24 * 366 else sorted(counts)
        pts = " ".join(f"{x(h):.1f},{y(counts.get(h, 0)):.1f}" for h in hours)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="3" points="{pts}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        if h1 == h0:
            parts.append(f'<circle cx="{x(h0):.1f}" cy="{y(counts.get(h0, 0)):.1f}" r="5" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)
