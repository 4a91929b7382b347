# ruff: noqa: E501 (the page's script and style are kept as written, one statement a line)
"""The JIT report as one HTML page that people can look at: no network, nothing fetched, everything inline.

Written beside the JSON report (`AITUNE_JIT_REPORT=run.json` also writes `run.html`). It shows:
- the run: device, mode, library versions, and totals (modules tuned, tuning time);
- where the time goes: a bar per top module (and its children), its eager time per call against its tuned time
  (in inspect mode, the eager time of its recorded calls);
- the module hierarchy as a collapsible tree: state, backend, calls, eager and tuned latency, speedup, tuning
  time, and why a module was not tuned; opening a module shows its candidates, its signatures and the backends
  not tried for it;
- a filter box that keeps the modules whose name, class, state, backend or reason contain what is typed (also
  from the address: `run.html#filter=onnx`).
The data is the JSON report itself, embedded in the page; the script only lays it out.
"""

from __future__ import annotations

import html
import json
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#555} .meta span{margin-right:1.4em}
input#filter{font:inherit;padding:.3em .5em;width:28em;max-width:100%}
details{margin:.15em 0 .15em 1.2em} details.root{margin-left:0}
summary{cursor:pointer;white-space:nowrap} summary .name{font-weight:600}
.state{display:inline-block;padding:0 .45em;border-radius:.6em;font-size:.85em;margin:0 .4em}
.tuned{background:#d7f5dd;color:#135c24} .eager,.failed{background:#fde2e1;color:#8a1c17}
.recording,.pending{background:#fff1c7;color:#6b4e00} .skipped,.detached{background:#e9e9ee;color:#444}
.num{color:#333;margin-left:.6em} .why{color:#8a1c17;margin:.2em 0 .2em 1.4em}
table{border-collapse:collapse;margin:.3em 0 .6em 1.4em;font-size:.92em}
td,th{border:1px solid #ddd;padding:.15em .5em;text-align:left} th{background:#f5f5f7}
.bars{max-width:60em} .bar{display:flex;align-items:center;margin:.15em 0}
.bar .label{width:22em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{flex:1;position:relative;height:1.1em;background:#f3f3f6}
.bar .eager-bar{position:absolute;top:0;left:0;height:55%;background:#b8c2d9}
.bar .tuned-bar{position:absolute;bottom:0;left:0;height:45%;background:#3a9a52}
.bar .value{width:14em;padding-left:.6em;color:#333;font-size:.9em}
.hidden{display:none}
"""

_JS = r"""(() => {
const report = JSON.parse(document.getElementById('aitune-data').textContent);
const mods = report.modules || [];
const byParent = {};
for (const m of mods) { (byParent[m.parent || ''] = byParent[m.parent || ''] || []).push(m); }
const fmt = (x, d=3) => x === null || x === undefined ? '-' : Number(x).toFixed(d);
const el = (tag, attrs={}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === 'class') e.className = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k);
  return e;
};
function table(headers, rows) {
  const t = el('table', {}, el('tr', {}, ...headers.map(h => el('th', {}, h))));
  for (const r of rows) t.append(el('tr', {}, ...r.map(c => el('td', {}, c === null || c === undefined ? '-' : String(c)))));
  return t;
}
function node(m, root) {
  const d = el('details', {class: root ? 'root module' : 'module', 'data-search':
    [m.name, m.class, m.state, m.backend_description || m.backend || '', m.reason || ''].join(' ').toLowerCase()});
  const s = el('summary', {}, el('span', {class: 'name'}, m.name),
    el('span', {class: 'state ' + m.state}, m.state),
    el('span', {class: 'num'}, (m.backend_description || m.backend || '') ),
    el('span', {class: 'num'}, m.calls + ' calls'),
    el('span', {class: 'num'}, 'eager ' + fmt(m.eager_latency_ms ?? m.recorded_eager_ms) + ' ms'),
    el('span', {class: 'num'}, 'tuned ' + fmt(m.tuned_latency_ms) + ' ms'),
    el('span', {class: 'num'}, m.speedup ? fmt(m.speedup, 2) + 'x' : ''),
    el('span', {class: 'num'}, 'tuning ' + fmt(m.tuning_seconds, 1) + ' s'));
  d.append(s);
  d.append(el('div', {class: 'meta'}, m.class));
  if (m.reason && m.state !== 'tuned') d.append(el('div', {class: 'why'}, m.reason));
  if ((m.candidates || []).length) {
    d.append(el('div', {}, 'candidates'));
    d.append(table(['backend', 'ok', 'latency ms', 'max abs error', 'built in s', 'error'],
      m.candidates.map(c => [c.backend, c.ok ? 'yes' : 'no', fmt(c.latency_ms), c.max_abs_error, fmt(c.build_s, 1), c.error])));
  }
  const sigs = m.signatures || [];
  if (sigs.length) {
    d.append(el('div', {}, 'signatures'));
    d.append(table(['status', 'backend', 'calls', 'engine calls', 'inputs', 'reason'],
      sigs.map(g => [g.status, g.backend_description || g.backend, g.calls, g.engine_calls,
        (g.inputs || []).map(i => i.name + JSON.stringify(i.min_shape) + (JSON.stringify(i.min_shape) === JSON.stringify(i.max_shape) ? '' : '..' + JSON.stringify(i.max_shape))).join(', '),
        g.reason])));
    const skipped = sigs.flatMap(g => Object.entries(g.not_tried || {}));
    if (skipped.length) { d.append(el('div', {}, 'not tried')); d.append(table(['backend', 'why'], skipped)); }
  }
  for (const c of byParent[m.name] || []) d.append(node(c, false));
  if (root) d.open = true;
  return d;
}
const tree = document.getElementById('tree');
for (const m of byParent[''] || []) tree.append(node(m, true));
const bars = document.getElementById('bars');
const timed = mods.filter(m => m.depth <= 1 && (m.eager_latency_ms ?? m.recorded_eager_ms));
const widest = Math.max(1e-9, ...timed.map(m => m.eager_latency_ms ?? m.recorded_eager_ms));
for (const m of timed) {
  const eager = m.eager_latency_ms ?? m.recorded_eager_ms, tuned = m.tuned_latency_ms;
  const track = el('div', {class: 'track'}, el('div', {class: 'eager-bar', style: 'width:' + (100 * eager / widest) + '%'}));
  if (tuned) track.append(el('div', {class: 'tuned-bar', style: 'width:' + (100 * tuned / widest) + '%'}));
  bars.append(el('div', {class: 'bar'}, el('div', {class: 'label'}, (m.depth ? '\u00a0\u00a0' : '') + m.name), track,
    el('div', {class: 'value'}, fmt(eager) + ' ms' + (tuned ? ' \u2192 ' + fmt(tuned) + ' ms' : ''))));
}
if (!timed.length) bars.append(el('div', {class: 'meta'}, 'no module was timed yet'));
const box = document.getElementById('filter');
function applyFilter() {
  const q = box.value.trim().toLowerCase();
  for (const d of document.querySelectorAll('details.module')) {
    const hit = !q || d.dataset.search.includes(q) || [...d.querySelectorAll('details.module')].some(c => c.dataset.search.includes(q));
    d.classList.toggle('hidden', !hit);
    if (q && hit) d.open = true;
  }
}
box.addEventListener('input', applyFilter);
const asked = new URLSearchParams(location.hash.slice(1)).get('filter');  // page.html#filter=onnx
if (asked) { box.value = asked; applyFilter(); }
document.getElementById('status').textContent = mods.length + ' modules';
})();
"""


def render(report: dict[str, Any]) -> str:
    """The page for a JIT report (`_report.build_report()`)."""
    env = report.get("environment", {}) or {}
    modules = report.get("modules", []) or []
    tuned = sum(1 for m in modules if m.get("state") == "tuned")
    seconds = sum(float(m.get("tuning_seconds") or 0.0) for m in modules)
    meta = [f"device: {env.get('device_name', 'cpu')}", f"mode: {env.get('mode', '?')}",
            f"{tuned} of {len(modules)} modules tuned", f"tuning {seconds:.1f} s",
            f"aitune {env.get('aitune', '?')}", f"torch {env.get('torch', '?')}", f"python {env.get('python', '?')}"]
    data = json.dumps(report, default=str).replace("</", "<\\/")
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>aitune report</title><style>" + _CSS + "</style></head><body>"
        "<h1>aitune report</h1><div class=\"meta\">"
        + "".join(f"<span>{html.escape(str(x))}</span>" for x in meta)
        + "</div><h2>Where the time goes</h2><div class=\"meta\">eager time per call (grey) and tuned (green), "
          "per top module and its children</div><div id=\"bars\" class=\"bars\"></div>"
          "<h2>Modules</h2><input id=\"filter\" type=\"search\" placeholder=\"filter: name, class, state, backend, "
          "reason\"> <span id=\"status\" class=\"meta\"></span><div id=\"tree\"></div>"
          "<script id=\"aitune-data\" type=\"application/json\">" + data + "</script>"
          "<script>" + _JS + "</script></body></html>"
    )
