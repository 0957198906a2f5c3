"""The report's figures, drawn without a plotting library's figure machinery.

Charts (spectra, t-SNE maps) are inline SVG: text stays text at any zoom, in the page's fonts
(with the browser's fallbacks for CJK), and a chart costs microseconds instead of the tenths of
a second of a Matplotlib figure, which is what lets a 1000-class report finish in a minute.
Images (mean relevance, inputs, overlays) are PNG strips written with Pillow in their own
pixels (up to twice their displayed size) and scaled up by the browser without smoothing, so
each cell of a map stays a sharp square on any screen.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

#: displayed edge of one image tile in CSS pixels (PNG holds twice as many)
TILE_PX = 96
#: categorical colours of clusters (the Tableau 10 palette)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
SUSPECT = "#d62728"
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def clean_label(text, limit: int | None = None) -> str:
    """A class name or label fit to print: control characters and bidirectional overrides
    removed (ANSI escape sequences as a whole), whitespace collapsed, cut to ``limit``."""
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", str(text))
    text = _BIDI.sub("", text)
    text = "".join(" " if ch in "\t\n\r" else ch for ch in text
                   if unicodedata.category(ch) != "Cc")
    text = " ".join(text.split())
    if limit and len(text) > limit:
        text = text[:limit - 1] + "…"
    return text or "?"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------ images

def heat_rgb(values: np.ndarray, lim: float | None = None) -> np.ndarray:
    """Relevance as colours, blue (−) – white (0) – red (+), symmetric around 0; ``(H, W, 3)``."""
    v = np.asarray(values, dtype=np.float32)
    lim = float(np.abs(v).max()) if lim is None else float(lim)
    v = np.clip(v / lim, -1.0, 1.0) if lim > 0 else np.zeros_like(v)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    return np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)


def input_rgb(img: np.ndarray) -> np.ndarray:
    """An input as RGB in [0, 1]: one channel as grey, three as colour, scaled to its range."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a


def overlay_rgb(img: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """The input with its relevance laid over it; transparent where the relevance is 0."""
    base = input_rgb(img)
    rel = np.asarray(relevance, dtype=np.float32)
    lim = float(np.abs(rel).max()) or 1.0
    alpha = (0.75 * np.abs(rel) / lim)[..., None]
    return (1.0 - alpha) * base + alpha * heat_rgb(rel, lim)


def to_uint8(rgb: np.ndarray, px: int) -> np.ndarray:
    """An RGB tile in [0, 1] as uint8, reduced to ``px`` pixels on its long side if larger."""
    img = np.clip(np.asarray(rgb) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    if max(h, w) > px:
        f = px / max(h, w)
        img = np.asarray(Image.fromarray(img).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                     Image.Resampling.LANCZOS))
    return img


def png_strip(rows: list[list[np.ndarray | None]], path: Path, tile: int = TILE_PX) -> dict:
    """Write rows of RGB tiles (``None``: empty cell) as one PNG, each tile shown ``tile`` CSS
    pixels wide.

    A tile keeps its own pixels when it has at most twice as many as it is shown with (the
    page scales it up with ``image-rendering: pixelated``, so every cell of a map stays a sharp
    square at any zoom or screen density); larger inputs are reduced to twice the shown size.
    Tiles sit on a grey grid one pixel apart. Returns the file name and the shown size for the
    ``<img>``.
    """
    tiles = [[None if t is None else to_uint8(t, 2 * tile) for t in row] for row in rows]
    size = max(max(t.shape[0], t.shape[1]) for row in tiles for t in row if t is not None)
    n_cols = max(len(r) for r in rows)
    step = size + 1
    canvas = np.full((len(rows) * step + 1, n_cols * step + 1, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, t in enumerate(row):
            y, x = i * step, j * step
            if t is None:
                continue
            canvas[y:y + size + 2, x:x + size + 2] = 190  # the grid line around the tile
            canvas[y + 1:y + 1 + size, x + 1:x + 1 + size] = 255
            canvas[y + 1:y + 1 + t.shape[0], x + 1:x + 1 + t.shape[1]] = t
    Image.fromarray(canvas).save(path, compress_level=6)
    scale = tile / size
    return {"src": path.name, "width": round(canvas.shape[1] * scale),
            "height": round(canvas.shape[0] * scale)}


def img_tag(strip: dict, alt: str) -> str:
    return (f"<img src='{_esc(strip['src'])}' width={strip['width']} height={strip['height']} "
            f"alt='{_esc(alt)}'>")


# ------------------------------------------------------------------------------ charts

def _ticks(top: float, n: int = 4) -> list[float]:
    if top <= 0:
        return [0.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def _num(v: float) -> str:
    return f"{v:.3g}"


def spectrum_svg(eigenvalues, k: int, title: str = "", width: int = 520, height: int = 270,
                 top: float | None = None, colour: str = "#1f77b4", small: bool = False) -> str:
    """Eigenvalues λ1..λm of L_sym (dots and line) with the chosen eigengap shaded.

    ``top`` fixes the upper end of the y axis (shared scales in small multiples).
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    font = 11 if small else 13
    left, right, head, foot = (38 if small else 52), 10, (22 if title else 8), (22 if small else 40)
    pw, ph = width - left - right, height - head - foot
    m = max(len(ev), 2)
    top = float(top if top is not None else (ev.max() if len(ev) else 1.0)) or 1.0
    top *= 1.05

    def sx(i: float) -> float:
        return left + (i - 0.5) / m * pw

    def sy(v: float) -> float:
        return head + ph - max(0.0, min(v, top)) / top * ph

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' class=chart width={width} "
             f"height={height} viewBox='0 0 {width} {height}' font-size='{font}' role=img>"]
    if title:
        parts.append(f"<text x='{width / 2:.1f}' y='{font + 2}' text-anchor=middle "
                     f"font-weight=bold fill='{colour}'>{_esc(title)}</text>")
    if 0 < k < len(ev):
        parts.append(f"<rect x='{sx(k + 0.05):.1f}' y='{head}' width='{sx(k + 0.95) - sx(k + 0.05):.1f}'"
                     f" height='{ph}' fill='{colour}' opacity='0.18'/>")
    for t in _ticks(top / 1.05, 3 if small else 4):
        y = sy(t)
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{y:.1f}' y2='{y:.1f}' "
                     f"stroke='#e4e4e4'/><text x='{left - 4}' y='{y + font / 3:.1f}' "
                     f"text-anchor=end fill='#444'>{_num(t)}</text>")
    step = max(1, math.ceil(len(ev) / (6 if small else 12)))
    for i in range(1, len(ev) + 1, step):
        parts.append(f"<text x='{sx(i):.1f}' y='{head + ph + font + 3}' text-anchor=middle "
                     f"fill='#444'>{i}</text>")
    parts.append(f"<rect x='{left}' y='{head}' width='{pw}' height='{ph}' fill=none "
                 f"stroke='#888'/>")
    pts = " ".join(f"{sx(i + 1):.1f},{sy(v):.1f}" for i, v in enumerate(ev))
    parts.append(f"<polyline points='{pts}' fill=none stroke='{colour}' stroke-width='1.5'/>")
    r = 2.5 if small else 3.2
    parts.extend(f"<circle cx='{sx(i + 1):.1f}' cy='{sy(v):.1f}' r='{r}' fill='{colour}'>"
                 f"<title>λ{i + 1} = {v:.4g}</title></circle>" for i, v in enumerate(ev))
    if not small:
        parts.append(f"<text x='{left + pw / 2:.1f}' y='{height - 6}' text-anchor=middle "
                     f"fill='#444'>index i of the eigenvalue λ_i of L_sym</text>")
        if 0 < k < len(ev):
            parts.append(f"<text x='{left + pw - 6:.1f}' y='{head + ph - 8:.1f}' "
                         f"text-anchor=end fill='{colour}'>chosen gap λ{k} → λ{k + 1}: "
                         f"K = {k}</text>")
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(xy: np.ndarray, labels: np.ndarray, suspects, width: int = 480,
                height: int = 420) -> str:
    """The t-SNE map coloured by cluster; suspect clusters ringed, with a 'suspect' label kept
    inside the frame. The legend is the page's HTML (:func:`legend_html`)."""
    xy = np.asarray(xy, dtype=np.float64)
    pad = 14
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    px = pad + (xy[:, 0] - lo[0]) / span[0] * (width - 2 * pad)
    py = height - pad - (xy[:, 1] - lo[1]) / span[1] * (height - 2 * pad)
    ids = [int(i) for i in np.unique(labels)]
    suspects = {int(s) for s in suspects}
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' class=chart width={width} "
             f"height={height} viewBox='0 0 {width} {height}' font-size='13' role=img>"
             f"<rect x='0.5' y='0.5' width='{width - 1}' height='{height - 1}' fill=none "
             f"stroke='#888'/>"]
    for cid in sorted(ids, key=lambda i: i in suspects):  # suspects drawn on top
        sel = labels == cid
        colour = PALETTE[ids.index(cid) % len(PALETTE)]
        ring = " stroke='#000' stroke-width='0.8'" if cid in suspects else ""
        r = 3.6 if cid in suspects else 2.6
        parts.append(f"<g fill='{colour}'{ring}>" + "".join(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r}'/>" for x, y in zip(px[sel], py[sel]))
            + "</g>")
    for cid in sorted(suspects & set(ids)):
        sel = labels == cid
        cx, cy = float(np.median(px[sel])), float(np.median(py[sel]))
        text = f"suspect (cluster {cid})"
        tw = 7.2 * len(text)
        tx = min(max(cx + 12, 6), width - tw - 6)
        ty = min(max(cy - 12, 18), height - 8)
        parts.append(f"<line x1='{cx:.1f}' y1='{cy:.1f}' x2='{tx:.1f}' y2='{ty - 4:.1f}' "
                     f"stroke='{SUSPECT}'/><text x='{tx:.1f}' y='{ty:.1f}' fill='{SUSPECT}' "
                     f"font-weight=bold paint-order=stroke stroke='#fff' stroke-width='3'>"
                     f"{_esc(text)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def legend_html(labels: np.ndarray, suspects) -> str:
    """The cluster legend of :func:`scatter_svg` as HTML (it never covers points)."""
    ids = [int(i) for i in np.unique(labels)]
    suspects = {int(s) for s in suspects}
    items = [f"<span class=key><span class=dot style='background:"
             f"{PALETTE[j % len(PALETTE)]}'></span>cluster {cid}"
             f"{' (suspect)' if cid in suspects else ''}, n = {int(np.sum(labels == cid))}</span>"
             for j, cid in enumerate(ids)]
    return "<p class=legend>" + " ".join(items) + "</p>"
