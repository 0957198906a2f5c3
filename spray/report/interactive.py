"""The interactive t-SNE page of a class (Bokeh), working offline from a folder or an artifact.

Hovering a point shows its dataset index, cluster, relevance map and (for the stored example
samples) its input; tapping a point lists every member of its cluster. BokehJS is copied once
into the report folder and loaded by a relative path: no CDN, no server. One Bokeh figure is
serialised once per process and only its data is substituted per class, which keeps a page
at a few milliseconds.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from spray.report.figures import PALETTE, heat_rgb, input_rgb, to_uint8

#: points above this count get no hover thumbnails (keeps pages of huge classes small)
MAX_THUMBNAILS = 4000
THUMB_PX = 64

_TAP_CODE = """
const i = source.selected.indices[0];
const out = document.getElementById('members');
if (i === undefined || out === null) { return; }
const c = source.data.cluster[i];
const members = [];
for (let j = 0; j < source.data.index.length; j++) {
  if (source.data.cluster[j] === c) { members.push(source.data.index[j]); }
}
out.textContent = 'cluster ' + c + ': ' + members.length + ' samples (dataset indices): '
  + members.join(', ');
"""

_TOOLTIP = """<div style="font-size:12px">dataset index <b>@index</b>, cluster <b>@cluster</b>
<br><img src="@heat" width="64" height="64" style="image-rendering:pixelated;margin:2px">
<img src="@input" width="64" height="64" style="image-rendering:pixelated;margin:2px"></div>"""

_TEMPLATE = None
_COLUMNS = ("x", "y", "index", "cluster", "colour", "size", "heat", "input")
_TITLE = "spray-title-placeholder"
_DATA_JSON = json.dumps({"type": "map", "entries": [[k, []] for k in _COLUMNS]})
#: a transparent pixel for points without a stored input
_BLANK = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
          "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def bokeh_script(out: Path) -> str:
    """Copy BokehJS into the report folder once; returns its file name."""
    import bokeh
    from bokeh.util.paths import bokehjs_path

    name = f"bokeh-{bokeh.__version__}.min.js"
    target = out / name
    if not target.is_file():
        shutil.copyfile(Path(bokehjs_path()) / "js" / "bokeh.min.js", target)
    return name


def _template() -> str:
    """The process' serialised Bokeh figure (``bokeh.embed.json_item``) with placeholders for
    the data and the title: built once, then each class only substitutes its own."""
    global _TEMPLATE
    if _TEMPLATE is None:
        from bokeh.embed import json_item
        from bokeh.models import ColumnDataSource, CustomJS, HoverTool
        from bokeh.plotting import figure

        source = ColumnDataSource({k: [] for k in _COLUMNS})
        fig = figure(width=640, height=560, tools="pan,wheel_zoom,box_zoom,reset,tap",
                     active_scroll="wheel_zoom", toolbar_location="above", title=_TITLE)
        fig.scatter("x", "y", source=source, fill_color="colour", line_color="colour",
                    size="size", alpha=0.85)
        fig.add_tools(HoverTool(tooltips=_TOOLTIP))
        fig.xaxis.visible = fig.yaxis.visible = False
        fig.grid.visible = False
        fig.title.text_font_size = "13px"
        source.selected.js_on_change("indices", CustomJS(args={"source": source},
                                                         code=_TAP_CODE))
        text = json.dumps(json_item(fig, target="tsne"))
        if text.count(_DATA_JSON) != 1 or text.count(json.dumps(_TITLE)) != 1:
            raise RuntimeError("unexpected Bokeh serialisation of the t-SNE figure")
        _TEMPLATE = text
    return _TEMPLATE


def _data_uri(rgb: np.ndarray) -> str:
    """A thumbnail in its own pixels (the tooltip scales it up without smoothing)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(rgb, 2 * THUMB_PX)).save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tsne_item(xy: np.ndarray, labels: np.ndarray, index: np.ndarray, suspects, title: str,
              maps: np.ndarray | None, examples: dict) -> str:
    """The Bokeh JSON item (``bokeh.embed.json_item``) of a class's t-SNE map.

    ``maps``: every sample's relevance map (hover thumbnails; None: none), ``examples``: row →
    stored example input.
    """
    template = _template()
    xy = np.asarray(xy, dtype=np.float64)
    ids = [int(i) for i in np.unique(labels)]
    suspects = {int(s) for s in suspects}
    n = len(labels)
    heat, inputs = [_BLANK] * n, [_BLANK] * n
    if maps is not None and n <= MAX_THUMBNAILS:
        heat = [_data_uri(heat_rgb(m)) for m in maps]
    for row, image in examples.items():
        inputs[int(row)] = _data_uri(input_rgb(image))
    data = {
        "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "index": [int(i) for i in index],
        "cluster": [int(c) for c in labels],
        "colour": [PALETTE[ids.index(int(c)) % len(PALETTE)] for c in labels],
        "size": [9 if int(c) in suspects else 6 for c in labels], "heat": heat,
        "input": inputs}
    entries = json.dumps({"type": "map", "entries": [[k, data[k]] for k in _COLUMNS]})
    return template.replace(_DATA_JSON, entries).replace(json.dumps(_TITLE), json.dumps(title))


def tsne_page(path: Path, item: str, script: str, title: str, back: str, style: str) -> None:
    """Write the interactive page (``title`` already HTML-escaped)."""
    safe = item.replace("</", "<\\/")
    path.write_text(
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<script src='{script}'></script><style>{style}</style></head><body>"
        f"<p><a href='{back}'>← class page</a> · <a href='index.html'>overview</a></p>"
        f"<h1>{title}</h1><p class=note>Hover a point for its relevance map (and input, for "
        f"the stored examples); tap a point to list the members of its cluster. Wheel: zoom; "
        f"drag: pan.</p><div id=tsne></div><p id=members class=note>No cluster selected.</p>"
        f"<script>Bokeh.embed.embed_item({safe});</script></body></html>", encoding="utf-8")
