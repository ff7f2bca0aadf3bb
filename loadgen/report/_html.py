"""The page around the charts: one self-contained HTML file, inline CSS, no script, printable."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from loadgen.files import write_atomically
from loadgen.report._results import number

CSS = """
:root { --ink: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --pass: #0b7a3e; --fail: #b3261e;
        --warn: #8a5a00; --warn-bg: #fff4d6; --fail-bg: #fde7e6; --pass-bg: #e5f5ea; --none-bg: #eef0f3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1120px; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.sub, .muted { color: var(--muted); }
code, pre { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
pre { background: #f6f7f9; border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; font-weight: 700; font-size: 20px; padding: 6px 14px; border-radius: 6px;
         margin: 4px 0 8px; }
.badge.pass { background: var(--pass-bg); color: var(--pass); }
.badge.fail { background: var(--fail-bg); color: var(--fail); }
.badge.none { background: var(--none-bg); color: var(--muted); }
.banner { border-left: 5px solid var(--warn); background: var(--warn-bg); padding: 8px 12px; margin: 8px 0; }
.banner.fail { border-color: var(--fail); background: var(--fail-bg); }
.banner strong { text-transform: uppercase; letter-spacing: .02em; }
tr.fail td, td.fail, span.fail { color: var(--fail); font-weight: 600; }
tr.pass td.verdict, td.pass, span.pass { color: var(--pass); }
td.warn, span.warn { color: var(--warn); font-weight: 600; }
figure.chart { margin: 10px 0 18px; break-inside: avoid; page-break-inside: avoid; }
figure.chart svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 4px 24px; }
.grid div { border-bottom: 1px dotted var(--line); padding: 2px 0; display: flex; justify-content: space-between;
            gap: 12px; }
.grid span:first-child { color: var(--muted); white-space: nowrap; }
.grid span:last-child { font-variant-numeric: tabular-nums; font-weight: 600; text-align: right;
                        overflow-wrap: anywhere; }
ul.tight { margin: 4px 0; padding-left: 20px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; page-break-after: avoid; }
  pre { white-space: pre-wrap; }
}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Iterable[int] = (), row_class=None) -> str:
    """A table; ``numeric`` names the columns set right-aligned, ``row_class(row)`` a class per row.

    Cells are escaped unless given as :class:`Raw`.
    """
    numeric = set(numeric)
    head = "".join(
        f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>" for i, h in enumerate(headers)
    )
    out = [f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>"]
    for row in rows:
        cls = row_class(row) if row_class else None
        cells = []
        for i, cell in enumerate(row):
            attr = ' class="num"' if i in numeric else ""
            if isinstance(cell, Raw):
                attr = f' class="{cell.cls}{" num" if i in numeric else ""}"' if cell.cls else attr
                cells.append(f"<td{attr}>{cell.text}</td>")
            else:
                cells.append(f"<td{attr}>{esc(cell)}</td>")
        out.append(f"<tr{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{''.join(cells)}</tr>")
    out.append("</tbody>\n</table>")
    return "\n".join(out)


class Raw:
    """A table cell given as HTML, optionally with a class (pass, fail, warn)."""

    def __init__(self, text: str, cls: str = "") -> None:
        self.text = text
        self.cls = cls


def chart(name: str, svg: str | None, caption: str, missing: str = "Nothing to draw here.") -> str:
    """A chart with its caption, or the sentence ``missing`` saying why there is none."""
    if svg is None:
        return f'<p class="muted">{esc(missing)}</p>'
    return f'<figure class="chart" id="chart-{esc(name)}">\n{svg}\n<figcaption>{esc(caption)}</figcaption>\n</figure>'


def banner(label: str, text: str, fail: bool = False) -> str:
    return f'<div class="banner{" fail" if fail else ""}"><strong>{esc(label)}</strong> {esc(text)}</div>'


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    return (
        '<div class="grid">'
        + "".join(f"<div><span>{esc(k)}</span><span>{esc(v)}</span></div>" for k, v in pairs)
        + "</div>"
    )


def fmt_ms(value) -> str:
    found = number(value)
    if found is None:
        return "—"
    size = abs(found)
    if size >= 100:
        return f"{found:,.0f} ms"
    return f"{found:.1f} ms" if size >= 10 else f"{found:.2f} ms" if size >= 1 else f"{found:.3f} ms"


def fmt_count(value) -> str:
    found = number(value)
    return "—" if found is None else f"{found:,.0f}" if float(found).is_integer() else f"{found:,.2f}"


def fmt_rate(value) -> str:
    """A fraction as a percentage with enough digits to tell 0 from very little."""
    found = number(value)
    if found is None:
        return "—"
    if found == 0:
        return "0%"
    return f"{found * 100:.3g}%"


def write_html(text: str, path: Path) -> None:
    write_atomically(path, text.encode("utf-8"))
