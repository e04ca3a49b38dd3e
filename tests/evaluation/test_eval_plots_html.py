"""Plots are real PNGs; report.html is self-contained, escapes run text, and renders in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from fake_runs import informative_probs, write_run
from PIL import Image
from rich.console import Console

from fashiondist.errors import InputError
from fashiondist.evaluation.plots import COMPARISON_FILE, PLOT_FILES
from fashiondist.evaluation.sweep import evaluate_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # checks the chunks' CRCs; a truncated or corrupt file raises
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel
        return image.size


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _all_plots(sweep) -> list[Path]:
    per_run = [run_dir / name for run_dir in sweep["runs"] for name in PLOT_FILES.values()]
    return [*per_run, sweep["parent"] / COMPARISON_FILE]


def test_every_plot_is_a_valid_png(sweep):
    for path in _all_plots(sweep):
        width, height = _png_size(path.read_bytes())
        assert width >= 400 and height >= 300, path
    assert not list(sweep["parent"].rglob(".*.tmp")), "a temp file was left behind"


class _Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_report_html_is_self_contained_and_embeds_exactly_the_plots(sweep):
    page = (sweep["parent"] / "report.html").read_text()
    tags = _parse(page)
    ids = {attrs["id"] for _, attrs in tags if attrs.get("id")}

    assert not {tag for tag, _ in tags} & {"script", "link", "iframe", "object", "embed", "base", "frame"}
    assert "url(" not in page and "@import" not in page
    embedded = []
    for tag, attrs in tags:
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            value = attrs.get(name)
            if value is None:
                continue
            if tag == "img" and name == "src":
                assert value.startswith(DATA_PNG), value[:80]
                embedded.append(_digest(base64.b64decode(value[len(DATA_PNG) :], validate=True)))
            else:
                assert tag == "a" and name == "href" and value.startswith("#") and value[1:] in ids, (
                    tag,
                    name,
                    value,
                )
    assert sorted(embedded) == sorted(_digest(path.read_bytes()) for path in _all_plots(sweep))


def test_report_html_holds_the_tables_and_the_export_summary(sweep):
    page = (sweep["parent"] / "report.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    headings = [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]
    ranked = sorted(sweep["results"], key=lambda r: (-r.accuracy, -r.macro_f1))
    assert headings[-len(ranked) :] == [
        r.name if r.name == r.summary["model"] else f"{r.name} ({r.summary['model']})" for r in ranked
    ], "one section per variant, best first"
    for name in sweep["results"][0].metrics["class_names"]:
        assert text.count(name) >= 4 * len(ranked)  # classification, confusion (row, column), AUC tables
    assert "parity_max_abs_diff" in text and "submission.rows" in text
    assert page.count('class="best"') == 1
    assert re.search(r'<tr class="best"><td>tie-b</td>', page)


def test_a_single_run_escapes_its_text_and_gets_its_own_report(tmp_path, labels):
    num_classes = int(labels.max()) + 1
    names = tuple(f'<script>alert("{k}")</script>&' for k in range(num_classes))
    run_dir = write_run(
        tmp_path / "odd <name> & co",
        labels,
        informative_probs(labels, num_classes, 2.5, 5),
        class_names=names,
    )
    out = io.StringIO()
    results = evaluate_path(run_dir, Console(file=out, width=200))

    assert [r.name for r in results] == ["odd <name> & co"]
    page = (run_dir / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;0&quot;)&lt;/script&gt;&amp;" in page
    assert "odd &lt;name&gt; &amp; co" in page
    assert "per class" in out.getvalue() and '<script>alert("0")</script>&' in out.getvalue()
    for name in PLOT_FILES.values():
        _png_size((run_dir / name).read_bytes())
    assert json.loads((run_dir / "evaluation.json").read_text())["name"] == "odd <name> & co"


def test_a_directory_without_runs_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="neither a run directory nor a sweep directory"):
        evaluate_path(tmp_path, Console(file=io.StringIO()))


# The check runs in the page: each image's natural size, and the lowest alpha over all its pixels once drawn
# on a canvas. Our plots are opaque, so a fully decoded one has alpha 255 everywhere; Chromium shows a
# truncated PNG's missing rows as transparent, and an undecodable one has no size at all.
_CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(img => {
    let minAlpha = null;
    if (img.naturalWidth > 0) {
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      minAlpha = 255;
      for (let i = 3; i < pixels.length; i += 4) minAlpha = Math.min(minAlpha, pixels[i]);
    }
    return {id: img.id, width: img.naturalWidth, height: img.naturalHeight, minAlpha: minAlpha};
  });
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def _controls(plot: bytes) -> str:
    """Two known-broken images beside the report's: the check must flag both, or it could miss a broken one."""
    truncated = base64.b64encode(plot[: len(plot) * 6 // 10]).decode("ascii")
    return (
        '<img id="control-signature-only" alt="control" src="data:image/png;base64,iVBORw0KGgo=">\n'
        f'<img id="control-truncated" alt="control" src="{DATA_PNG}{truncated}">'
    )


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_chromium_decodes_every_image_of_the_report(sweep, tmp_path):
    page = (sweep["parent"] / "report.html").read_text()
    plots = _all_plots(sweep)
    wrapper = tmp_path / "check.html"
    wrapper.write_text(
        page.replace("</body>", f"{_controls(plots[0].read_bytes())}\n{_CHECK_SCRIPT}\n</body>")
    )
    dom = _chromium(tmp_path, "--dump-dom", wrapper.as_uri()).stdout

    found = re.search(r'<pre id="img-check">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the check script did not run: " + dom[-500:]
    images = {
        img["id"] or f"report-{i}": img for i, img in enumerate(json.loads(html.unescape(found.group(1))))
    }
    assert images.pop("control-signature-only")["width"] == 0, "the check cannot tell an undecodable image"
    assert images.pop("control-truncated")["minAlpha"] < 255, "the check cannot tell a truncated image"
    assert all(img["minAlpha"] == 255 for img in images.values()), "a report image is not fully decoded"
    rendered = [(img["width"], img["height"]) for img in images.values()]
    assert sorted(rendered) == sorted(_png_size(path.read_bytes()) for path in plots)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_chromium_renders_a_non_blank_report(sweep, tmp_path):
    shot = tmp_path / "report.png"
    report = sweep["parent"] / "report.html"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        gray = np.asarray(image.convert("L"), dtype=np.float64)
    assert gray.std() > 20, "the screenshot is (almost) one colour"
    assert (gray < 200).mean() > 0.02, "hardly anything dark on the page: text and plots missing"
    rows_with_ink = (gray < 200).any(axis=1).mean()
    assert rows_with_ink > 0.3, "content covers too little of the page height"
