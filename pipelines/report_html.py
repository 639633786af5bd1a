"""HTML pieces of the report (``pipelines.report``): one self-contained file, no network.

Images are embedded as base64 PNG; the style and the few lines of script that sort a
table by a clicked column are inline. Every text from the store is escaped.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 96em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
table.kv td { text-align: left; white-space: normal; }
.scroll { overflow-x: auto; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #666; font-size: .9em; }
"""

# Sort a table by the clicked column: numbers by value (a leading "≥" or ">" and a
# trailing "± std" ignored), text alphabetically; a cell without a number ("–") last.
SCRIPT = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    var m = text.replace(/^[\\u2265>]\\s*/, '').match(/^[-+]?\\d*\\.?\\d+(?:[eE][-+]?\\d+)?/);
    return m ? parseFloat(m[0]) : null;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null && y === null) {
            var order = a.cells[col].textContent.localeCompare(b.cells[col].textContent);
            return asc ? order : -order;
          }
          if (x === null) return 1;
          if (y === null) return -1;
          return asc ? x - y : y - x;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

NUMERIC = re.compile(r"^(?:[≥>]\s*)?[-+]?\d*\.?\d+|^–$")  # right-aligned cells

UNITS_NOTE = ("Accuracies (Acc, UA), MIA scores, disparity, FR, MRR and U-LiRA in %, as the "
              "papers print them; Forget Q., F-score and 1-JS in [0, 1]; storage in MB, "
              "time in seconds; mean ± std over the replicates. Click a column to sort.")


def table(header: Sequence[str], body: Sequence[Sequence[str]], table_id: str = "",
          sortable: bool = True) -> str:
    ident = f' id="{escape(table_id)}"' if table_id else ""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    rows = "\n".join("<tr>" + "".join(
        f"<td>{escape(c)}</td>" if NUMERIC.match(c) else f'<td class="text">{escape(c)}</td>'
        for c in row) + "</tr>" for row in body)
    return (f'<div class="scroll"><table{ident}{cls}><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{rows}\n</tbody></table></div>")


def key_values(items: Sequence[tuple[str, str]]) -> str:
    rows = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>\n{rows}\n</tbody></table>'


def image(png: bytes, caption: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def page(title: str, sections: Sequence[str]) -> str:
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")
