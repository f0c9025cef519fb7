"""Tiny HTML builders for the static QC page (escaped text, tables, figures; inline CSS, no JS)."""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Mapping, Sequence

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.status { font-weight: bold; } .done { color: #1a7f37; } .notrun { color: #9a6700; }
.error { color: #b42318; } .note { color: #555; font-size: 0.9em; }
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    """Cell text: floats rounded, None/NaN as an en dash, lists joined."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{round(v, digits)}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x, digits) for x in v)
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """An HTML table; numbers right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(fmt(c))}</td>' if _is_num(c) else f"<td>{esc(fmt(c))}</td>"
                         for c in r) + "</tr>\n"
        for r in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>\n{body}</table>\n"


def kv_table(items: Mapping[str, Any]) -> str:
    """Two-column table of ``name: value``."""
    return table(("", "value"), list(items.items()))


def figure(href: str, caption: str = "", width: int | None = None) -> str:
    w = f' style="width:{width}px"' if width else ""
    return (f'<figure{w}><a href="{esc(href)}"><img src="{esc(href)}" alt="{esc(caption or href)}"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>\n")


def link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def para(text: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{esc(text)}</p>\n"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>\n'
            f"<style>{CSS}</style></head>\n<body>\n{body}</body></html>\n")
