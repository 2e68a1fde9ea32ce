"""What a sweep shows: pareto.png (the metric against the task's x axis, the Pareto front marked), the
self-contained sweep.html of one recipe (every point's table, the plot embedded) and the index.html of a
matrix sweep. Rendering only: :mod:`tokexport.sweep` runs the points and writes these files."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .report import fmt_value
from .tasks.axes import axis_of_report

PLOT_SIZE = (8.0, 5.0)  # inches; at PLOT_DPI the PNG is 800 x 500 pixels
PLOT_DPI = 100


def plot(summary: dict, path: Path) -> None:
    """pareto.png: accuracy metric vs the x axis, one series per method, the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, xkey = [p for p in summary["points"] if p.get("status", "done") == "done"], summary["x"]["key"]
    vkey = summary["varied"]["key"]
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    if not pts:
        ax.text(
            0.5,
            0.5,
            f"no point converted ({len(summary['points'])} failed: see sweep.json)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_title(f"{summary['recipe']['name']}: no results", fontsize=10)
        fig.savefig(path, dpi=PLOT_DPI)
        plt.close(fig)
        return
    for method in dict.fromkeys(p["method"] for p in pts):
        ser = sorted((p for p in pts if p["method"] == method), key=lambda p: p[xkey])
        ax.plot([p[xkey] for p in ser], [p["metric"] for p in ser], "o-", label=method)
        for p in ser:
            ax.annotate(f"{p[vkey]:g}", (p[xkey], p["metric"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p[xkey])
    ax.plot([p[xkey] for p in front], [p["metric"] for p in front], "--", color="black", lw=1, zorder=1)
    ax.scatter(
        [p[xkey] for p in front],
        [p["metric"] for p in front],
        s=160,
        facecolors="none",
        edgecolors="black",
        linewidths=1.5,
        label="Pareto front",
        zorder=3,
    )
    orig = summary["original"]
    ax.scatter(
        [1.0],
        [orig["metric"]],
        marker="*",
        s=180,
        color="gold",
        edgecolors="black",
        zorder=4,
        label="original (no reduction)",
    )
    ax.set_xlabel(summary["x"]["label"])
    lower = summary.get("metric_better") == "lower"
    ax.set_ylabel(f"{summary['metric']} (reduced{'; lower is better' if lower else ''})")
    ax.set_title(
        f"{summary['recipe']['name']}: {summary['metric']} vs {summary['x_short']}"
        f"\n(point labels: {summary['varied']['label']})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def _columns(summary: dict) -> list[tuple[str, object]]:
    """(header, cell of a point) of the HTML table; the task's own columns come from its axis."""

    def fmt(v, d=4):
        return html.escape("→".join(map(str, v)) if isinstance(v, list) else fmt_value(v, d))

    cols: list[tuple[str, object]] = [("method", lambda p: fmt(p["method"]))]
    cols += axis_of_report(summary["task_kind"]).html_columns(summary, fmt)
    cols += [
        (f"{summary['metric']} (original → reduced)", lambda p: f"{p['metric_original']:.4f} → {p['metric']:.4f}"),
        ("drop", lambda p: f"{p['metric_drop']:+.4f}"),
        ("parity max abs", lambda p: f"{p['parity_max_abs_diff']:.1e}"),
        ("report", lambda p: f'<a href="{html.escape(p["run_dir"])}/report.md">{fmt(p["passed"])}</a>'),
        ("Pareto", lambda p: "★" if p["pareto"] else ""),
    ]
    return cols


def render_html(summary: dict, png: bytes) -> str:
    """Self-contained page: the table of every point and the plot as a data URI."""
    cols = _columns(summary)
    done = [p for p in summary["points"] if p.get("status", "done") == "done"]
    rows = ["<tr>" + "".join(f"<td>{cell(p)}</td>" for _, cell in cols) + "</tr>" for p in done]
    failed = [p for p in summary["points"] if p.get("status", "done") != "done"]
    vkey = summary["varied"]["key"]
    failed_table = (
        ""
        if not failed
        else (
            "<h2>Failed points</h2><table><thead><tr><th>method</th><th>"
            + html.escape(summary["varied"]["label"])
            + "</th><th>exit code</th><th>error</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td>{html.escape(str(p['method']))}</td><td>{html.escape(fmt_value(p[vkey]))}</td>"
                f'<td>{p["exit_code"]}</td><td style="text-align:left">{html.escape(str(p["error"]))}</td></tr>'
                for p in failed
            )
            + "</tbody></table>"
        )
    )
    img = base64.b64encode(png).decode("ascii")
    title = html.escape(f"tokexport sweep — {summary['recipe']['name']}")
    # computed before the template: a nested f-string inside it would need same-quote nesting (Python 3.12+)
    alt = f"{html.escape(summary['metric'])} vs {html.escape(summary['x_short'])}"
    original = summary["original"]["metric"]
    original_line = "" if original is None else f"Original model: {html.escape(summary['metric'])} = {original:.4f}."
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>{title}</h1>
<p>{html.escape(summary["description"])}</p>
<img alt="{alt}" src="data:image/png;base64,{img}">
<table><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h, _ in cols)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{failed_table}
<p>{original_line}
{html.escape(summary["accuracy_description"])}</p>
<p>{html.escape(summary.get("timing", ""))}</p>
<script type="application/json" id="sweep-data">{html.escape(json.dumps(summary["points"]), quote=False)}</script>
</body></html>
"""


def render_index(index: dict, summaries: list[dict], root: Path) -> str:
    """The matrix sweep's page: every recipe's Pareto plot (embedded) with a link to its own sweep.html."""
    parts = []
    for entry, s in zip(index["recipes"], summaries):
        png = base64.b64encode((root / entry["dir"] / "pareto.png").read_bytes()).decode("ascii")
        sub = html.escape(entry["dir"])
        failed = f", {s['failed']} failed" if s["failed"] else ""
        parts.append(f"""<section><h2><a href="{sub}/sweep.html">{html.escape(s["recipe_path"])}</a></h2>
<p>{html.escape(s["task_kind"])}: {len(s["points"])} points over {html.escape(s["varied"]["label"])}{failed};
{html.escape(s["metric"])} vs {html.escape(s["x_short"])}.</p>
<img alt="{html.escape(s["metric"])} vs {html.escape(s["x_short"])} ({sub})" src="data:image/png;base64,{png}">
</section>""")
    b = index["backend"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tokexport sweep — {len(summaries)} recipes</title>
<style>body{{font-family:sans-serif;margin:2em}}section{{margin-bottom:2em}}</style></head>
<body><h1>tokexport sweep — {len(summaries)} recipes</h1>
<p>Backend: {html.escape(b["name"])}, {b["parallel"]} conversion(s) at a time. {html.escape(index["timing"])}</p>
{"".join(parts)}
<script type="application/json" id="sweep-index">{html.escape(json.dumps(index["recipes"]), quote=False)}</script>
</body></html>
"""
