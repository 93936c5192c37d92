"""``lauf-dvc report --html``: one HTML page that needs nothing else to open (inline SVG,
CSS and a few lines of script; no network, no fonts to fetch).

A pure function of :class:`~lauf_dvc.report.RunReport` values. Every string that comes
from the database or the pipeline (stage names, workers, reasons, logs) goes through
:func:`html.escape`. Each stage run is one ``<g class="bar" data-attempt=...>`` in the
timeline, with its stage, worker, outcome and times as ``data-`` attributes and a
``<title>`` (what a browser shows on hover).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lauf_dvc.report import (
    OUTCOMES,
    RunReport,
    clock,
    counts_text,
    headline,
    outcome,
    path_text,
    percent,
    seconds,
)
from lauf_dvc.scheduler.audit import Attempt, Run

COLOURS = {"ran": "#2f9e44", "restored": "#1c7ed6", "cut off": "#a9e34b", "failed": "#e03131",
           "killed": "#f76707", "running": "#7048e8"}  # fmt: skip
LABEL_W, CHART_W, LANE_H, LANE_GAP, AXIS_H = 200, 900, 22, 6, 22
CHAR_W = 6.6  # a character of the 11 px sans-serif in the bars, about

CSS = """
body { font: 14px/1.4 system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
       color: #1f2328; margin: 24px; max-width: 1160px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
h3 { font-size: 14px; margin: 12px 0 4px; }
.sub { color: #59636e; margin: 0 0 12px; }
.totals { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
          gap: 8px; margin: 12px 0; }
.totals div { background: #f6f8fa; border-radius: 6px; padding: 6px 10px; }
.totals b { display: block; font-size: 18px; }
.totals span { color: #59636e; font-size: 12px; }
.legend span { margin-right: 14px; font-size: 12px; white-space: nowrap; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
            vertical-align: -2px; margin-right: 4px; }
svg { display: block; margin: 8px 0; }
svg text { font: 11px system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
svg .lane { fill: #f6f8fa; } svg .tick { stroke: #d0d7de; } svg .now { stroke: #7048e8; }
.bar { cursor: pointer; } .bar text { fill: #fff; pointer-events: none; }
.bar.crit rect { stroke: #1f2328; stroke-width: 2; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e5e7ea; text-align: left;
         vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.hl { background: #fff3bf; }
.o { display: inline-block; padding: 0 6px; border-radius: 8px; color: #fff;
     font-size: 12px; }
pre { background: #1f2328; color: #e6edf3; padding: 8px 10px; overflow-x: auto;
      font-size: 12px; max-height: 360px; border-radius: 6px; }
ol.path li { margin: 2px 0; }
"""
CSS += "".join(f'.o-{k.replace(" ", "-")} rect, .o.o-{k.replace(" ", "-")} {{ fill: {c}; '
               f"background: {c}; }}\n" for k, c in COLOURS.items())  # fmt: skip
CSS += ".o-cut-off text, .o.o-cut-off { fill: #1f2328; color: #1f2328; }\n"

# Click a bar: its stage's row in the table below is highlighted and scrolled to.
SCRIPT = """
document.addEventListener("click", function (ev) {
  var bar = ev.target.closest ? ev.target.closest("[data-attempt]") : null;
  if (!bar) { return; }
  var run = bar.closest("section.run");
  run.querySelectorAll("tr.hl").forEach(function (row) { row.classList.remove("hl"); });
  run.querySelectorAll("tr[data-stage]").forEach(function (row) {
    if (row.dataset.stage === bar.dataset.stage) {
      row.classList.add("hl");
      row.scrollIntoView({block: "nearest"});
    }
  });
});
"""


def esc(text: object) -> str:
    """Escaped for HTML text and attribute values alike."""
    return html.escape(str(text), quote=True)


def css_class(name: str) -> str:
    return "o-" + name.replace(" ", "-")


def html_page(reports: Sequence[RunReport], *, generated: float) -> str:
    """The whole page: one section per run, oldest first."""
    title = "lauf-dvc report" + (f": run {reports[-1].run.number}" if len(reports) == 1 else "")
    body = "\n".join(_run_section(r, first=sum(len(x.run.attempts) for x in reports[:i]))
                     for i, r in enumerate(reports))  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<h1>{esc(title)}</h1>\n<p class="sub">generated {esc(clock(generated, date=True))}'
        " from the scheduler database's audit trail</p>\n"
        f"{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def _run_section(r: RunReport, *, first: int) -> str:
    return "\n".join([
        f'<section class="run" data-run="{r.run.number}">',
        f"<h2>{esc(headline(r))}</h2>",
        f'<p class="sub">{esc(counts_text(r))}</p>',
        _totals(r),
        "<h3>Timeline</h3>",
        _legend(),
        _timeline(r, first=first),
        "<h3>Critical path</h3>",
        _path(r),
        "<h3>Stages: what ran and why</h3>",
        _stage_table(r),
        _failures(r),
        _not_run(r.run),
        "</section>",
    ])  # fmt: skip


def _totals(r: RunReport) -> str:
    t = r.totals
    cells = [
        ("wall time", seconds(t.wall), "first write to the last worker leaving"),
        ("workers", str(t.workers), "lanes below"),
        ("stage time", seconds(t.busy), "sum of every stage run"),
        ("parallel efficiency", percent(t.efficiency), "stage time / (wall x workers)"),
        ("critical path", seconds(r.path.length), f"{len(r.path.tasks)} stage(s)"),
        ("first stage after", seconds(t.first_start), "sync and worker start-up"),
        ("idle before first", seconds(t.before), "worker time, all workers"),
        ("idle between stages", seconds(t.between),
         f"{seconds(t.latency)} with the next stage ready"),
        ("idle after last", seconds(t.after), "worker time, all workers"),
    ]  # fmt: skip
    inner = "".join(f"<div><span>{esc(k)}</span><b>{esc(v)}</b><span>{esc(note)}</span></div>"
                    for k, v, note in cells)  # fmt: skip
    return f'<div class="totals">{inner}</div>'


def _legend() -> str:
    items = "".join(f'<span><i style="background:{COLOURS[o]}"></i>{esc(o)}</span>'
                    for o in OUTCOMES)  # fmt: skip
    crit = '<span><i style="border:2px solid #1f2328"></i>critical path</span>'
    return f'<p class="legend">{items}{crit}</p>'


def _ticks(span: float) -> float:
    """A round step giving at most about ten ticks over ``span`` seconds."""
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / step <= 10:
            return float(step)
    return 7200.0 * max(1, int(span / 72000) + 1)


def _timeline(r: RunReport, *, first: int) -> str:
    run = r.run
    span = max(run.wall, 1e-6)
    lanes = {lane.id: i for i, lane in enumerate(run.lanes)}
    height = AXIS_H + max(1, len(lanes)) * (LANE_H + LANE_GAP)
    parts = [f'<svg width="{LABEL_W + CHART_W + 10}" '
             f'height="{height}" role="img" aria-label="timeline of run {run.number}">',
             _stripes(run.number)]  # fmt: skip
    parts += _axis(span, height)
    for lane, i in lanes.items():
        y = AXIS_H + i * (LANE_H + LANE_GAP)
        parts.append(f'<rect class="lane" x="{LABEL_W}" y="{y}" width="{CHART_W}" '
                     f'height="{LANE_H}"/><text x="4" y="{y + 15}">{esc(_short(lane, 30))}'
                     f"<title>{esc(lane)}</title></text>")  # fmt: skip
    crit = set(r.path.tasks)
    for n, a in enumerate(run.attempts, first + 1):
        parts.append(_bar(a, n, run, lanes.get(a.worker, 0), span, a.task in crit))
    if run.live:
        x = LABEL_W + CHART_W
        parts.append(f'<line class="now" x1="{x}" x2="{x}" y1="0" y2="{height}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _stripes(number: int) -> str:
    return (f'<defs><pattern id="stripes-{number}" width="8" height="8" '
            'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            f'<rect width="8" height="8" fill="{COLOURS["running"]}"/>'
            '<rect width="3" height="8" fill="#9775fa"/></pattern></defs>')  # fmt: skip


def _axis(span: float, height: int) -> list[str]:
    step = _ticks(span)
    out = []
    k = 0
    while k * step <= span + 1e-9:
        x = LABEL_W + k * step / span * CHART_W
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS_H - 4}" '
                   f'y2="{height}"/><text x="{x + 2:.1f}" y="12">{esc(_offset(k * step))}'
                   "</text>")  # fmt: skip
        k += 1
    return out


def _offset(value: float) -> str:
    if value >= 60:
        return seconds(value)
    return f"{value:g}s"


def _bar(a: Attempt, n: int, run: Run, lane: int, span: float, crit: bool) -> str:
    name = outcome(a)
    x = LABEL_W + (a.start - run.start) / span * CHART_W
    w = max(2.0, a.duration / span * CHART_W)
    y = AXIS_H + lane * (LANE_H + LANE_GAP)
    fill = f' fill="url(#stripes-{run.number})"' if name == "running" else ""
    classes = f"bar {css_class(name)}" + (" crit" if crit else "")
    label = _fit(a.task, w - 6)
    text = f'<text x="{x + 3:.1f}" y="{y + 15}">{esc(label)}</text>' if label else ""
    return (f'<g class="{classes}" data-attempt="{n}" data-stage="{esc(a.task)}" '
            f'data-worker="{esc(a.worker)}" data-outcome="{esc(name)}" '
            f'data-start="{a.start - run.start:.3f}" data-end="{a.end - run.start:.3f}">'
            f'<rect x="{x:.1f}" y="{y + 1}" width="{w:.1f}" height="{LANE_H - 2}" rx="3"'
            f"{fill}/>{text}<title>{esc(_hover(a, name, run))}</title></g>")  # fmt: skip


def _hover(a: Attempt, name: str, run: Run) -> str:
    end = "now (still running)" if name == "running" else clock(a.end)
    lines = [f"{a.task}: {name}", f"worker {a.worker}" + (" (joined)" if a.joined else ""),
             f"{clock(a.start)} - {end} ({seconds(a.duration)})",
             f"waited {seconds(a.wait)} ready" if a.wait is not None else "",
             f"why: {' -> '.join(a.why)}" if a.why else "",
             f"attempt {a.number} (retry {a.number - 1})" if a.number > 1 else "",
             f"{a.ended.value}: {a.reason}" if a.reason else ""]  # fmt: skip
    return "\n".join(line for line in lines if line)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _fit(text: str, width: float) -> str:
    """``text`` cut to fit ``width`` pixels of the bar, or nothing when not 3 letters."""
    room = int(width / CHAR_W)
    return "" if room < 3 else _short(text, room)


def _path(r: RunReport) -> str:
    if not r.path.tasks:
        return f"<p>{esc(path_text(r))}</p>"
    times = {s.task: s.time for s in r.stages}
    items = "".join(f"<li>{esc(t)} <span class=\"sub\">{esc(seconds(times.get(t, 0.0)))}</span>"
                    "</li>" for t in r.path.tasks)  # fmt: skip
    return (f'<p>{esc(seconds(r.path.length))} of stage time in a chain: the run could not '
            f'take less with any number of workers.</p><ol class="path">{items}</ol>')  # fmt: skip


def _stage_table(r: RunReport) -> str:
    head = ("<tr><th>stage</th><th>outcome</th><th>worker</th><th>started</th><th>time</th>"
            "<th>waited</th><th>runs</th><th>why it ran</th></tr>")  # fmt: skip
    rows = []
    for s in r.stages:
        start = s.attempts[0].start - r.run.start
        rows.append(
            f'<tr data-stage="{esc(s.task)}"><td>{esc(s.task)}</td>'
            f'<td><span class="o {css_class(s.outcome)}">{esc(s.outcome)}</span></td>'
            f'<td>{esc(", ".join(s.workers))}</td><td class="n">+{esc(seconds(start))}</td>'
            f'<td class="n">{esc(seconds(s.time))}</td><td class="n">{esc(seconds(s.wait))}</td>'
            f'<td class="n">{len(s.own)}</td><td>{esc(" -> ".join(s.why))}</td></tr>'
        )
    if not rows:
        return "<p>No stage ran in this run.</p>"
    return f"<table>{head}{''.join(rows)}</table>"


def _failures(r: RunReport) -> str:
    if not r.failures:
        return ""
    out = [f"<h3>Failures ({len(r.failures)})</h3>"]
    for a in r.failures:
        info = a.info
        facts = [f"worker {a.worker}", f"at {clock(a.end)}", f"attempt {a.number}"]
        if info.get("exit_code") is not None:
            facts.append(f"exit code {info['exit_code']}")
        if info.get("log"):
            facts.append(f"log {info['log']}")
        tail = str(info.get("log_tail") or "").rstrip()
        out.append(f'<article class="failure" data-stage="{esc(a.task)}">'
                   f"<h3>{esc(a.task)}: {esc(a.ended.value)}: {esc(a.reason or a.ended.value)}</h3>"
                   f"<p class=\"sub\">{esc('; '.join(facts))}</p>"
                   + (f"<pre>{esc(tail)}</pre>" if tail else "") + "</article>")  # fmt: skip
    return "\n".join(out)


def _not_run(run: Run) -> str:
    """The stages of the run that no worker ran: found up to date, or held back."""
    out = []
    if run.held_back:
        out.append(f"<h3>Not run: an upstream stage failed ({len(run.held_back)})</h3>"
                   f'<p class="held">{esc(", ".join(run.held_back))}</p>')  # fmt: skip
    if run.up_to_date:
        out.append(f"<details><summary>{len(run.up_to_date)} stage(s) found up to date "
                   f"without running</summary><p>{esc(', '.join(run.up_to_date))}</p>"
                   "</details>")  # fmt: skip
    return "\n".join(out)
