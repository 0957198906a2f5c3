"""The HTML report: content, escaping, ranking, and a real headless Chromium loading every page."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import write_config

HOSTILE = "<img src=x onerror=alert(1)>one & \"two\""
CJK = "零 \x1b[31mzero\x07\u202e"  # CJK, an ANSI colour code, a bell, a bidi override


@pytest.fixture(scope="module")
def report_run(small_problem, tmp_path_factory):
    """The small planted problem run with a class name full of HTML."""
    from spray.config.run_config import load_config
    from spray.run.execute import run

    raw = dict(small_problem["raw_config"])
    raw["class_names"] = [CJK, HOSTILE, "two</td>"]
    # every class with a candidate cluster is flagged, so every page shows a suspect
    raw["pipeline"] = {"preset": "spray-default", "embedding": {"method": "tsne"},
                       "flags": {"threshold": -100.0}}
    raw["data"] = {**raw["data"], "path": str(small_problem["root"] / "data.npz")}
    raw["model"] = {**raw["model"], "weights": str(small_problem["root"] / "weights.pt")}
    root = tmp_path_factory.mktemp("report")
    shutil.copy(small_problem["root"] / "smallnet.py", root / "smallnet.py")
    cfg, base = load_config(write_config(root, "config.yaml", raw))
    out = root / "run"
    run(cfg, base, output=str(out), quiet=True)
    return out


def test_class_names_with_cjk_and_control_characters(report_run):
    """Labels keep CJK text and lose control characters; rendering warns about nothing
    (no plotting library draws text: the browser's fonts and their fallbacks do)."""
    import warnings

    from spray.report.html import write_report

    rep = report_run / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (rep / "class_0.html").unlink()  # rendered again
        write_report(report_run)
    for page in [rep / "index.html", rep / "class_0.html", rep / "class_0_tsne.html"]:
        text = page.read_text(encoding="utf-8")
        assert "零 zero" in text, page
        assert not any(ch in text for ch in "\x1b\x07\u202e"), page


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag == "a":
            self.links.append(a.get("href"))


def _parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_pages_images_links_and_ranking(report_run):
    rep = report_run / "report"
    summary = json.loads((rep / "summary.json").read_text())
    index = _parse(rep / "index.html")
    text = (rep / "index.html").read_text()
    for src in index.imgs:
        assert (rep / src).stat().st_size > 1000, src
    assert text.count("<svg") == 3  # the spectra of the three classes, side by side
    class_links = [h for h in index.links if h.startswith("class_")]
    ranked = sorted(summary["classes"], key=lambda e: -e["score"])
    assert class_links[:3] == [f"class_{e['class']}.html" for e in ranked]
    assert summary["flagged"] == [0, 1, 2]
    # what was run, when, on what
    for word in ("data", "model", "relevance", "epsilon-plus-flat", "smallnet:build",
                 "spray-default", "config hash", "written"):
        assert word in text, word
    for e in summary["classes"]:
        page = rep / f"class_{e['class']}.html"
        parsed = _parse(page)
        for src in parsed.imgs:
            assert (rep / src).is_file(), src
        names = set(parsed.imgs)
        c = e["class"]
        assert {f"class_{c}_clusters.png", f"class_{c}_suspect.png",
                f"class_{c}_suspect_examples.png"} <= names
        page_text = page.read_text()
        assert page_text.count("<svg") == 2  # spectrum and t-SNE
        assert f"class_{c}_tsne.html" in parsed.links
    flagged = (rep / "class_1.html").read_text()
    assert "FLAGGED" in flagged and "Suspect: cluster" in flagged and "contrast" in flagged
    assert "class_1_suspect.png" in flagged


def test_strings_from_data_are_escaped(report_run):
    rep = report_run / "report"
    for page in [rep / "index.html", *rep.glob("class_*.html")]:
        parsed = _parse(page)
        # the hostile name never becomes markup: every <img> is one of ours
        assert all(src and src.endswith(".png") for src in parsed.imgs), (page, parsed.imgs)
        assert not any(a.get("onerror") for _, a in parsed.tags)
    text = (rep / "class_1.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;one &amp; &quot;two&quot;" in text
    assert "two&lt;/td&gt;" in (rep / "index.html").read_text()


def test_summary_has_evidence(report_run):
    summary = json.loads((report_run / "report" / "summary.json").read_text())
    entry = summary["classes"][1]
    assert entry["rule"] == "input-contrast" and entry["flag_params"]["threshold"] == -100.0
    suspect = next(cl for cl in entry["clusters"] if cl["id"] == entry["suspect_cluster"])
    assert suspect["suspect"]
    for key in ("conductance_relevance", "conductance_input", "contrast", "contrast_stable",
                "size_penalty", "input_randomness", "randomness_penalty", "colocation",
                "colocation_penalty", "hot_spot_separation", "hot_spot_penalty",
                "concentration", "peak", "score", "members"):
        assert key in suspect, key
    assert suspect["score"] == entry["score"] >= entry["threshold"]
    # the page shows every penalty that the score subtracts, colocation included
    page = (report_run / "report" / f"class_{entry['class']}.html").read_text()
    assert f"colocation penalty {suspect['colocation_penalty']:.2f}" in page
    assert "<th>colocation</th>" in page
    assert (f"hot-spot separation {suspect['hot_spot_separation']:.2f} and its penalty "
            f"{suspect['hot_spot_penalty']:.2f}") in page


# ------------------------------------------------------------------------------ headless Chromium

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _CDP:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, binary: str):
        self.tmp = tempfile.mkdtemp(prefix="spray-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def fds():
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", f"--user-data-dir={self.tmp}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf, self.next_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_child], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self.from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
            self.events.append(ev)

    def close(self):
        with contextlib.suppress(Exception):  # the process is killed below anyway
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_child, self.from_child):
            os.close(fd)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _errors(events: list[dict], session: str) -> list[str]:
    out = []
    for ev in events:
        if ev.get("sessionId") != session:
            continue
        p = ev.get("params", {})
        if ev.get("method") == "Runtime.exceptionThrown":
            out.append(str(p.get("exceptionDetails", {}).get("text")))
        elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(json.dumps(p.get("args"))[:300])
        elif ev.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


def test_report_loads_in_headless_chromium(report_run):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (tests/run.sh installs it with apt-get)")
    rep = (report_run / "report").resolve()
    pages = [rep / "index.html"] + sorted(p for p in rep.glob("class_*.html")
                                          if not p.name.endswith("_tsne.html"))
    cdp = _CDP(binary)
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            cdp.send(method, session=session)
        for page in pages:
            cdp.events = [e for e in cdp.events if e.get("sessionId") != session]
            cdp.send("Page.navigate", {"url": page.as_uri()}, session=session)
            cdp.wait_event("Page.loadEventFired", session)
            res = cdp.send("Runtime.evaluate", {
                "expression": "JSON.stringify({title: document.title, imgs: Array.from("
                              "document.images).map(i => [i.getAttribute('src'), i.complete, "
                              "i.naturalWidth]), charts: Array.from(document.querySelectorAll("
                              "'svg.chart')).map(s => s.getBoundingClientRect().width)})",
                "returnByValue": True}, session=session)
            info = json.loads(res["result"]["value"])
            assert info["title"].startswith("spray"), page
            assert info["charts"] and min(info["charts"]) > 100, f"{page.name}: {info}"
            assert info["imgs"] or page.name == "index.html", f"{page.name}: no images"
            broken = [src for src, done, width in info["imgs"] if not done or width == 0]
            assert not broken, f"{page.name}: images not loaded: {broken}"
            errs = _errors(cdp.events, session)
            assert not errs, f"{page.name}: console errors: {errs}"
    finally:
        cdp.close()


def test_split_off_clusters_in_store_summary_and_page(report_run):
    """With every candidate a suspect (threshold -100), a side of a cluster's bisection that
    scores higher than the cluster is split off: the store's labels, the summary's clusters and
    the class page agree on it."""
    from spray.store import open_class

    rep = report_run / "report"
    summary = json.loads((rep / "summary.json").read_text())
    splits = [(e, s) for e in summary["classes"] for s in e.get("splits", [])]
    assert splits
    for e, s in splits:
        sizes = {cl["id"]: cl["size"] for cl in e["clusters"]}
        assert s["cluster"] in sizes and s["from"] in sizes
        labels = open_class(str(report_run), e["class"])["labels"][:]
        assert {int(i) for i in set(labels)} == set(sizes)
        assert all(int((labels == cid).sum()) == size for cid, size in sizes.items())
        split = next(cl for cl in e["clusters"] if cl["id"] == s["cluster"])
        assert split["split_from"] == s["from"]
        page = (rep / f"class_{e['class']}.html").read_text()
        assert f"split off cluster {s['from']}" in page
        if split.get("score") is None:
            # a later split took members from it and it was not scored again (seen at 5 and
            # fewer samples, the trained model deciding): then it is no suspect either
            assert not split["suspect"]
        else:
            assert split["suspect"] and split["members"]
    assert any(cl.get("split_from") is not None and cl.get("score") is not None
               for e, _ in splits for cl in e["clusters"])


def _open_session(cdp: _CDP) -> str:
    target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for method in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
        cdp.send(method, session=session)
    return session


def _evaluate(cdp: _CDP, session: str, expression: str):
    res = cdp.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                        "awaitPromise": True}, session=session)
    return res["result"].get("value")


def _palette_pixels(png: bytes, colour: str) -> list[tuple[int, int]]:
    """Pixels of a screenshot within reach of ``colour`` drawn at alpha 0.85 on white."""
    import io

    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    target = 0.85 * rgb + 0.15 * 255
    ys, xs = np.nonzero(np.abs(img - target).max(axis=-1) < 30)
    return list(zip(xs.tolist(), ys.tolist()))


def test_interactive_tsne_offline_in_headless_chromium(report_run):
    """The interactive t-SNE pages load from files with no network request and no console
    error, draw every point, and tapping a point lists the members of its cluster."""
    import base64

    from spray.report.figures import PALETTE

    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (tests/run.sh installs it with apt-get)")
    rep = (report_run / "report").resolve()
    summary = json.loads((rep / "summary.json").read_text())
    cdp = _CDP(binary)
    try:
        session = _open_session(cdp)
        cdp.send("Emulation.setDeviceMetricsOverride", {"width": 900, "height": 900,
                                                         "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        for e in summary["classes"]:
            page = rep / f"class_{e['class']}_tsne.html"
            cdp.events = [ev for ev in cdp.events if ev.get("sessionId") != session]
            cdp.send("Page.navigate", {"url": page.as_uri()}, session=session)
            cdp.wait_event("Page.loadEventFired", session)
            n = _evaluate(cdp, session, """new Promise(done => {
                const t0 = Date.now();
                (function poll() {
                  const ok = window.Bokeh && Bokeh.documents.length > 0;
                  if (ok || Date.now() - t0 > 15000) {
                    setTimeout(() => done(ok ? Bokeh.documents[0].roots()[0].renderers[0]
                                                 .data_source.data.x.length : -1), 1000);
                  } else { setTimeout(poll, 100); }
                })();
            })""")
            assert n == e["n_samples"], (page.name, n)
            requests = [ev["params"]["request"]["url"] for ev in cdp.events
                        if ev.get("sessionId") == session
                        and ev.get("method") == "Network.requestWillBeSent"]
            assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
            errs = _errors(cdp.events, session)
            assert not errs, f"{page.name}: console errors: {errs}"
            shot = base64.b64decode(cdp.send("Page.captureScreenshot", {"format": "png"},
                                             session=session)["data"])
            points = _palette_pixels(shot, PALETTE[0])
            assert len(points) > 50, f"{page.name}: the points are not drawn"
            x, y = points[len(points) // 2]
            for kind in ("mousePressed", "mouseReleased"):
                cdp.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                      "button": "left", "clickCount": 1},
                         session=session)
            time.sleep(0.5)
            members = _evaluate(cdp, session, "document.getElementById('members').textContent")
            assert members.startswith("cluster ") and "dataset indices" in members, members
    finally:
        cdp.close()


def test_headline_names_the_planted_patch(report_run, small_problem):
    """The planted class's page opens with a sentence computed from the evidence: how many
    images, a patch of about the stamp's size, where it is."""
    import re

    summary = json.loads((report_run / "report" / "summary.json").read_text())
    entry = summary["classes"][2]
    suspect = next(cl for cl in entry["clusters"] if cl["id"] == entry["suspect_cluster"])
    text = (report_run / "report" / "class_2.html").read_text()
    found = re.search(r"<p class=headline>(\d+) of (\d+) images of two&lt;/td&gt; get their "
                      r"relevance from a (\d+)×(\d+) patch at the (top left)", text)
    assert found, text[:3000]
    assert (int(found[1]), int(found[2])) == (suspect["size"], entry["n_samples"])
    assert all(3 <= int(v) <= 9 for v in found.groups()[2:4])  # the 5×5 stamp
    index = (report_run / "report" / "index.html").read_text()
    assert "images of two&lt;/td&gt; get their relevance" in index


def test_suspect_label_stays_inside_the_frame():
    """A suspect cluster at the right edge of the t-SNE map: its label is moved inside."""
    import re

    import numpy as np

    from spray.report.figures import scatter_svg

    xy = np.array([[0.0, 0.0], [0.1, 0.2], [0.2, 0.1], [10.0, 10.0], [9.9, 9.8], [9.8, 9.9]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    svg = scatter_svg(xy, labels, [1], width=300, height=200)
    x, y, text = re.search(r"<text x='([\d.]+)' y='([\d.]+)'[^>]*>([^<]+)</text>", svg).groups()
    assert text == "suspect (cluster 1)"
    assert float(x) >= 0 and float(x) + 7.2 * len(text) <= 300 and 13 <= float(y) <= 200


def test_pages_rendered_in_worker_processes_and_only_when_changed(report_run, monkeypatch):
    """Pages rendered by a process pool equal the in-process ones; a rerun over an unchanged
    store rewrites no class page; a class whose analysis changed is the only one rendered."""
    from spray.report import html as report_html
    from spray.store import open_class

    rep = report_run / "report"
    pages = sorted(p for p in rep.glob("class_*.html"))
    report_html.write_report(report_run)
    before = {p.name: p.read_bytes() for p in pages}
    (rep / report_html.STATE_FILE).unlink()
    for p in pages:
        p.unlink()
    monkeypatch.setattr(report_html, "POOL_MIN_PAGES", 1)  # three pages: use the pool anyway
    report_html.write_report(report_run, processes=2)
    assert {p.name: p.read_bytes() for p in pages} == before
    stamps = {p.name: p.stat().st_mtime_ns for p in pages}
    report_html.write_report(report_run)
    assert {p.name: p.stat().st_mtime_ns for p in pages} == stamps
    cg = open_class(str(report_run), 1, mode="a")
    original = dict(cg.attrs["analysis"])
    analysis = dict(original)
    analysis["seconds"] = float(analysis["seconds"]) + 1.0  # the class was analysed again
    cg.attrs["analysis"] = analysis
    time.sleep(0.01)
    report_html.write_report(report_run)
    changed = {p.name for p in pages if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == set(), changed  # same summary entry: nothing to render again
    flags = dict(analysis["flags"])
    flags["score"] = float(flags["score"]) + 0.5  # a changed verdict
    cg.attrs["analysis"] = {**analysis, "flags": flags}
    report_html.write_report(report_run)
    changed = {p.name for p in pages if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"class_1.html", "class_1_tsne.html"}, changed
    cg.attrs["analysis"] = original
    report_html.write_report(report_run)


def test_report_summary_equals_a_fresh_one_after_maps_change(report_run):
    """Maps recomputed from other samples (a chunk's sample hash changed) without a new
    analysis: the report's summary must not reuse the old entry; it equals a summary built
    from the store from scratch (the class is incomplete, not 'ok')."""
    import numpy as np

    from spray.report import html as report_html
    from spray.report.summary import build_summary
    from spray.store import open_class

    report_html.write_report(report_run)
    cg = open_class(str(report_run), 0, mode="a")
    original = cg["sample_hash"][0]
    cg["sample_hash"][0] = np.full_like(original, 7)
    try:
        report_html.write_report(report_run)
        written = json.loads((report_run / "report" / "summary.json").read_text())
        fresh = build_summary(report_run)
        assert written["classes"] == json.loads(json.dumps(fresh["classes"]))
        assert written["classes"][0]["status"] == "incomplete"
    finally:
        cg["sample_hash"][0] = original
        report_html.write_report(report_run)
    assert json.loads((report_run / "report" / "summary.json").read_text())[
        "classes"][0]["status"] == "ok"


def test_watched_class_is_shown_with_its_headline(report_run):
    """A class whose score lies just below its threshold: the overview lists it under Watch
    with its headline, and its page says watch (never flagged)."""
    from spray.report import html as report_html
    from spray.store import open_class

    cg = open_class(str(report_run), 2, mode="a")
    original = dict(cg.attrs["analysis"])
    flags = dict(original["flags"])
    flags.update({"threshold": float(flags["score"]) + 0.2, "flagged": False})
    cg.attrs["analysis"] = {**original, "flags": flags}
    try:
        report_html.write_report(report_run)
        summary = json.loads((report_run / "report" / "summary.json").read_text())
        assert summary["classes"][2]["watch"] and not summary["classes"][2]["flagged"]
        index = (report_run / "report" / "index.html").read_text()
        assert "<b>Watch</b>" in index and "<li><b>watch</b>" in index
        page = (report_run / "report" / "class_2.html").read_text()
        assert "watch — near the threshold" in page and "<p class=headline>" in page
        assert "FLAGGED" not in page
    finally:
        cg.attrs["analysis"] = original
        report_html.write_report(report_run)


def test_class_page_says_who_joined_by_agreement():
    from spray.report.class_page import _member_notes

    notes = _member_notes({"agreed_joined": 7, "pattern_joined": 0})
    assert len(notes) == 1 and notes[0].startswith("7 samples outside")
    assert "agreement_spread" in notes[0]
    assert _member_notes({"agreed_joined": 0}) == []
    anywhere = _member_notes({"anywhere_joined": 45, "agreed_joined": 0})
    assert len(anywhere) == 1 and anywhere[0].startswith("45 samples outside")
    assert "another place" in anywhere[0] and "agreement_anywhere" in anywhere[0]
    aligned = _member_notes({"aligned_joined": 19, "aligned_trimmed": 3, "peak_joined": 0})
    assert len(aligned) == 1 and "19 samples outside" in aligned[0]
    assert "3 members far from it left" in aligned[0] and "aligned_agreement" in aligned[0]
    assert _member_notes({"aligned_joined": 0, "aligned_trimmed": 0}) == []


def test_class_page_says_why_a_carried_group_is_flagged_below_the_threshold():
    from spray.report.class_page import _below_note

    cluster = {"id": 4, "score": -5.4, "followed_below": True, "suspect": True}
    placed = _below_note({"flagged": True, "clusters": [cluster]})
    carried = _below_note({"flagged": True, "clusters": [{**cluster, "carried": True}]})
    assert "alike at their place" in placed and "carried_candidates" not in placed
    assert "cluster 4" in carried and "-5.40" in carried
    assert "anywhere in the image" in carried and "carried_candidates" in carried
    assert _below_note({"flagged": False, "clusters": [{**cluster, "carried": True}]}) == ""
    detail = _below_note({"flagged": True, "clusters": [
        {**cluster, "carried": True, "recurring": True, "detail": True}]})
    assert "fine detail" in detail and "recurring_detail" in detail
    assert "recurring_candidates" not in detail
