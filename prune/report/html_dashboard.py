"""The offline dashboard: one self-contained HTML file (plotly, plotly.js embedded) per sweep folder.

Per-layer panels (``prune.report.panels``) in one figure: one line per x value (e.g. ``seq_len``) with a band
of ± one standard deviation over seeds and the values on hover; a dropdown picks the combination of the
other swept settings (ratio, method, ...); the report's verdict lines sit beside the panels, those of the
picked combination shown. Nothing is fetched at view time: no server, no network.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from prune.files import write_text
from prune.report.panels import dashboard_data, finite

FIGURE_ID = "panels"
COLUMNS = 3
STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 1rem; color: #222; }
header p { margin: .2rem 0; color: #555; }
main { display: grid; grid-template-columns: minmax(0, 1fr) 26rem; gap: 1rem; align-items: start; }
aside { max-height: 95vh; overflow-y: auto; font-size: .85rem; }
aside li { margin-bottom: .5rem; }
aside li.primary { font-weight: 600; }
aside li.hidden { display: none; }
"""
# show the verdicts of the combination the dropdown picked (and those that hold for every job)
SCRIPT = """
(function () {
  var fig = document.getElementById(%(id)s);
  function show(label) {
    document.querySelectorAll('aside li[data-series]').forEach(function (li) {
      var s = li.getAttribute('data-series');
      li.classList.toggle('hidden', !(s === '' || s === 'all jobs' || s === label));
    });
  }
  show(%(first)s);
  fig.on('plotly_buttonclicked', function (e) { show(e.button.label); });
})();
"""


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def figure(data: dict):
    """The plotly figure: a grid of per-layer panels, every view's traces, a dropdown over the views."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    panels = data["panels"]
    rows = max(1, math.ceil(len(panels) / COLUMNS))
    fig = make_subplots(rows=rows, cols=COLUMNS, subplot_titles=[p["title"] for p in panels],
                        horizontal_spacing=0.07, vertical_spacing=min(0.12, 0.5 / rows))
    xs = []  # one colour per x value, the same in every view and panel
    for view in data["views"]:
        xs += [c["x"] for c in view["curves"] if c["x"] not in xs]
    palette = qualitative.Plotly
    owner = []  # the view index of every trace, for the dropdown's visibility masks
    for v, view in enumerate(data["views"]):
        for curve in view["curves"]:
            color = palette[xs.index(curve["x"]) % len(palette)]
            name = f"{data['x_key']}={curve['x']}"
            for p, panel in enumerate(panels):
                values = curve["fields"].get(panel["field"])
                if not values:
                    continue
                row, col = p // COLUMNS + 1, p % COLUMNS + 1
                layers, mean, sd = values["layers"], finite(values["mean"]), finite(values["sd"])
                if values["n"] > 1:
                    upper = [m + s for m, s in zip(values["mean"], values["sd"])]
                    lower = [m - s for m, s in zip(values["mean"], values["sd"])]
                    fig.add_trace(go.Scatter(x=layers + layers[::-1], y=finite(upper + lower[::-1]), mode="lines", fill="toself",
                                             fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
                                             legendgroup=name, showlegend=False, visible=v == 0,
                                             name=f"{name} ± sd"), row=row, col=col)
                    owner.append(v)
                fig.add_trace(go.Scatter(
                    x=layers, y=mean, mode="lines+markers", name=name, legendgroup=name, line={"color": color},
                    showlegend=p == 0, visible=v == 0, customdata=[[s, values["n"]] for s in sd],
                    hovertemplate=(f"{html.escape(name)}<br>layer %{{x}}<br>{html.escape(panel['y_label'])} "
                                   "%{y:.4g} ± %{customdata[0]:.2g} (sd, %{customdata[1]} seeds)<extra></extra>")),
                    row=row, col=col)
                owner.append(v)
    for p, panel in enumerate(panels):
        fig.update_xaxes(title_text="decoder layer", dtick=1, row=p // COLUMNS + 1, col=p % COLUMNS + 1)
        fig.update_yaxes(title_text=panel["y_label"], row=p // COLUMNS + 1, col=p % COLUMNS + 1)
    menus = []
    if len(data["views"]) > 1:
        menus = [{"type": "dropdown", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom", "pad": {"b": 40},
                  "buttons": [{"label": view["label"], "method": "restyle",
                               "args": [{"visible": [o == v for o in owner]}]} for v, view in enumerate(data["views"])]}]
    fig.update_layout(height=300 * rows + 140, template="plotly_white", hovermode="closest", updatemenus=menus,
                      margin={"t": 110, "l": 60, "r": 20, "b": 40},
                      legend={"title": {"text": data["x_label"]}, "orientation": "h", "x": 0.3, "xanchor": "left",
                              "y": 1.0, "yanchor": "top", "yref": "container"})
    return fig


def render(data: dict, plotlyjs: bool | str = True) -> str:
    """The page: header, the figure (plotly.js embedded, or ``plotlyjs`` as the path of a shared copy), verdicts."""
    fig = figure(data)
    div = fig.to_html(full_html=False, include_plotlyjs=plotlyjs, div_id=FIGURE_ID,
                      config={"displaylogo": False, "responsive": True})
    views = data["views"]
    select = f" The dropdown picks {', '.join(data['selector_keys'])}." if len(views) > 1 else ""
    intro = (f"{data['ok']} of {data['jobs']} jobs finished. Each line is one {html.escape(data['x_label'])} value, "
             f"the mean over its seeds, with a band of ± one standard deviation; hover for the values.{select}")
    items = "\n".join(
        f'<li class="{html.escape(v["role"] or "")}" data-series="{html.escape(v["series"] or "")}">{html.escape(v["text"])}</li>'
        for v in data["verdicts"]) or "<li>no verdicts (the report found nothing to compare)</li>"
    empty = "" if data["panels"] else "<p>No job recorded per-layer values.</p>"
    script = SCRIPT % {"id": json.dumps(FIGURE_ID), "first": json.dumps(views[0]["label"] if views else "")}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data['sweep'])}: per-layer dashboard</title>
<style>{STYLE}</style></head>
<body><header><h1>{html.escape(data['sweep'])}: per-layer dashboard</h1><p>{intro}</p></header>
<main><section id="figure">{empty}{div}</section>
<aside><h2>Verdicts</h2><ol>{items}</ol></aside></main>
<script>{script}</script>
</body></html>
"""


def write_dashboard(sweep, verdicts: list[dict] | None = None, plotlyjs: bool | str = True) -> Path:
    """``<sweep>/dashboard.html`` from a ``Sweep`` and the report's structured verdict rows. ``plotlyjs``: True
    embeds plotly.js; a path relative to the sweep folder loads a shared copy from there (written if absent,
    e.g. ``../plotly.min.js`` for the committed studies)."""
    if isinstance(plotlyjs, str) and not (sweep.dir / plotlyjs).exists():
        from plotly.offline import get_plotlyjs

        write_text(sweep.dir / plotlyjs, get_plotlyjs(), encoding="utf-8")
    path = sweep.dir / "dashboard.html"
    write_text(path, render(dashboard_data(sweep, verdicts), plotlyjs), encoding="utf-8")
    return path
