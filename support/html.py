"""A self-contained HTML page: sections of text, images (embedded as data URIs) and tables.

The page carries a small script that, once loaded, counts images that failed to decode and
writes the count to `<body data-broken-images="N">`, so a headless browser can check it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0; } figcaption, .reading { color: #555; font-size: .92em; }
.reading { font-style: italic; margin: .3em 0 1em; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f5f5f5; } .missing { color: #a33; } .warning { color: #a00; font-weight: bold; }
"""

CHECK_IMAGES = """
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (im) {
    return !im.complete || im.naturalWidth === 0; });
  document.body.setAttribute('data-broken-images', String(broken.length));
});
"""


@dataclass
class Section:
    """One heading with its blocks (HTML strings) in order."""

    title: str
    blocks: list[str] = field(default_factory=list)

    def text(self, text: str, reading: bool = False) -> Section:
        cls = ' class="reading"' if reading else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def warning(self, text: str) -> Section:
        """A statement of something that failed, shown first-class (red, bold)."""
        self.blocks.append(f'<p class="warning">{html.escape(text)}</p>')
        return self

    def image(self, path: Path, caption: str) -> Section:
        """Embed a PNG (or say it is missing, naming the file)."""
        if not path.is_file():
            self.blocks.append(f'<p class="missing">missing: {html.escape(str(path))}</p>')
            return self
        data = base64.b64encode(path.read_bytes()).decode()
        self.blocks.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return self

    def table(self, frame: pd.DataFrame, caption: str = "", digits: int = 3) -> Section:
        body = frame.round(digits).to_html(border=0, na_rep="", escape=True)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f"<figure>{cap}{body}</figure>")
        return self


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one HTML string."""
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(s.title)}</h2>' + "".join(s.blocks) for i, s in enumerate(sections))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style><script>{CHECK_IMAGES}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p><ul>{toc}</ul>{body}</body></html>"
    )


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-style markdown table (index as the first column), for Prefect artifacts."""
    frame = frame.round(digits)
    head = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + ["" if pd.isna(v) else str(v) for v in row]) + " |")
    return "\n".join(lines)
