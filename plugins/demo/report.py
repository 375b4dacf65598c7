"""The demo report: one Markdown and one HTML page over the figures the demo wrote beside them.

A report is a list of sections; a section holds paragraphs, tables and figures (PNG files in the
report's folder, referenced by relative name, so the folder can be moved or zipped as a whole).
The HTML page carries a small script that marks, once the page has loaded, how many of its images
decoded (``data-images-ok`` / ``data-images-total`` on ``<body>``): :mod:`diffcore_plugins.demo.check`
reads that back from headless Chromium.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Report", "Section", "Table"]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    file: str  # a file name inside the report folder
    caption: str
    width: int | None = None  # CSS pixels in the HTML page; None: the image's own width, capped


@dataclass
class Section:
    title: str
    anchor: str
    items: list[str | Table | Figure] = field(default_factory=list)

    def text(self, paragraph: str) -> Section:
        self.items.append(paragraph)
        return self

    def table(self, header: list[str], rows: list[list[Any]], caption: str = "") -> Section:
        self.items.append(Table(header, rows, caption))
        return self

    def figure(self, file: str | Path, caption: str, width: int | None = None) -> Section:
        self.items.append(Figure(Path(file).name, caption, width))
        return self


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1b1f24; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; } table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f6f8fa; }
figure { margin: 1em 0; } figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figcaption { color: #57606a; font-size: 0.92em; } .meta { color: #57606a; }
code { background: #f6f8fa; padding: 0 0.25em; }
"""

# After load: count the images that decoded, so a headless browser can report broken ones.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; });
  var bad = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-ok', ok.length);
  document.body.setAttribute('data-images-broken', bad.map(function (im) { return im.getAttribute('src'); }).join(' '));
});
"""


@dataclass
class Report:
    title: str
    intro: list[str]
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, anchor: str) -> Section:
        s = Section(title, anchor)
        self.sections.append(s)
        return s

    def figures(self) -> list[str]:
        return [it.file for s in self.sections for it in s.items if isinstance(it, Figure)]

    # ------------------------------------------------------------------ Markdown
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [p + "\n" for p in self.intro]
        out.append(" | ".join(f"[{s.title}](#{s.anchor})" for s in self.sections) + "\n")
        for s in self.sections:
            out += [f'<a id="{s.anchor}"></a>', f"## {s.title}", ""]
            for it in s.items:
                if isinstance(it, str):
                    out += [it, ""]
                elif isinstance(it, Table):
                    if it.caption:
                        out += [f"*{it.caption}*", ""]
                    out.append("| " + " | ".join(it.header) + " |")
                    out.append("|" + "|".join("---" for _ in it.header) + "|")
                    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in it.rows]
                    out.append("")
                else:
                    out += [f"![{it.caption}]({it.file})", "", f"*{it.caption}*", ""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ HTML
    def html(self) -> str:
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            f"<style>{_STYLE}</style>",
            f"<script>{_SCRIPT}</script>",
            "</head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        parts += [f'<p class="meta">{e(p)}</p>' for p in self.intro]
        parts.append("<nav>" + "".join(f'<a href="#{e(s.anchor)}">{e(s.title)}</a>' for s in self.sections) + "</nav>")
        for s in self.sections:
            parts.append(f'<h2 id="{e(s.anchor)}">{e(s.title)}</h2>')
            for it in s.items:
                if isinstance(it, str):
                    parts.append(f"<p>{_inline(it)}</p>")
                elif isinstance(it, Table):
                    rows = "".join("<tr>" + "".join(_td(v) for v in r) + "</tr>" for r in it.rows)
                    cap = f"<caption>{e(it.caption)}</caption>" if it.caption else ""
                    head = "".join(f"<th>{e(h)}</th>" for h in it.header)
                    parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
                else:
                    style = f' style="width:{it.width}px"' if it.width else ""
                    parts.append(
                        f'<figure><img src="{e(it.file)}" alt="{e(it.caption)}"{style}>'
                        f"<figcaption>{e(it.caption)}</figcaption></figure>"
                    )
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        missing = [f for f in self.figures() if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"report figures missing in {folder}: {missing}")
        md, page = folder / "report.md", folder / "report.html"
        md.write_text(self.markdown())
        page.write_text(self.html())
        return md, page


def _td(value: Any) -> str:
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{html.escape(_cell(value))}</td>' if num else f"<td>{html.escape(_cell(value))}</td>"


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only Markdown the paragraphs use)."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
