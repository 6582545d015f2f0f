# ruff: noqa: E501  (HTML and JavaScript templates)
"""The page's HTML: one small template per page, the live parts filled by fetch() from /api/."""

from __future__ import annotations

from html import escape

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#111}
header{background:#1d2b3a;color:#fff;padding:.6em 1em;display:flex;gap:1.2em;align-items:center}
header a,header button{color:#fff;text-decoration:none;font-size:1em}
header button{background:none;border:1px solid #fff;border-radius:4px;cursor:pointer}
main{padding:1em;max-width:60em}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{padding:.4em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.ok{color:#0a7d2c;font-weight:bold}.red{color:#c0121b;font-weight:bold}
.fix{color:#555;font-size:.9em}
button.big{font-size:1.3em;padding:.6em 1.2em;background:#c0121b;color:#fff;border:0;
border-radius:6px;cursor:pointer}
.step{padding:.3em 0;font-size:1.1em}
"""

SCRIPTS = {
    "selftest": """
async function refresh(){
  const r = await fetch('/api/selftest'); const j = await r.json();
  document.getElementById('overall').innerHTML = j.ok ?
    '<span class="ok">All green</span>' : '<span class="red">NOT all green</span>';
  document.getElementById('rows').innerHTML = j.checks.map(c =>
    `<tr><td class="${c.ok?'ok':'red'}">${c.ok?'OK':'RED'}</td><td>${esc(c.name)}</td>
     <td>${esc(c.detail)}${c.fix?'<div class="fix">&rarr; '+esc(c.fix)+'</div>':''}</td></tr>`
  ).join('');
}
refresh(); setInterval(refresh, 2000);
""",
    "sensors": """
async function refresh(){
  const r = await fetch('/api/sensors'); const j = await r.json();
  document.getElementById('rows').innerHTML = j.sensors.map(s =>
    `<tr data-source="${esc(s.source)}"><td>${esc(s.source)}</td><td>${esc(s.name)}</td>
     <td class="value">${s.value===null||s.value===undefined?'&ndash;':esc(s.value)+' '+esc(s.unit)}</td>
     <td class="${s.line==='ok'?'ok':'red'}">${esc(s.line)}</td>
     <td class="${s.alarm?'red':''}">${s.alarm?esc(s.alarm):'&ndash;'}</td>
     <td>${esc(s.seen_s_ago)} s ago</td></tr>`).join('');
  document.getElementById('nodes').innerHTML = Object.entries(j.nodes).map(([k,n]) =>
    `<tr><td>${esc(k)}</td><td>${esc(n.firmware||'?')}</td>
     <td class="${n.silent?'red':'ok'}">${n.silent?'silent':'talking'}</td>
     <td>${n.seen_s_ago===null?'never':esc(n.seen_s_ago)+' s ago'}</td>
     <td>${esc((n.alarms_latched||[]).join(', ')||'-')}</td>
     <td>${esc((n.faults||[]).join(', ')||'-')}</td></tr>`).join('');
}
async function act(name){
  const r = await post('/api/' + name, '');
  document.getElementById('result').textContent = name + ': ' + JSON.stringify(r.result||r.error);
}
refresh(); setInterval(refresh, 1000);
""",
    "alarm": """
async function testAlarm(){
  const btn = document.getElementById('raise'); btn.disabled = true;
  const t0 = performance.now();
  const a = await post('/api/test-alarm', '');
  if (a.error){ document.getElementById('committed').textContent = 'refused: ' + a.error;
                btn.disabled = false; return; }
  document.getElementById('committed').textContent =
    'committed to the outbox (event ' + a.event_id + ')';
  const poll = async () => {
    const s = await (await fetch('/api/test-alarm/' + a.event_id)).json();
    if (s.sent_ms !== null) document.getElementById('sent').textContent =
      'sent: the broker confirmed it (PUBACK) after ' + s.sent_ms + ' ms';
    if (s.acked_ms !== null){
      document.getElementById('acked').textContent = 'acknowledged by the receiver ' +
        (s.receiver||'') + ': round trip ' + s.acked_ms + ' ms';
      document.getElementById('acked').className = 'step ok'; btn.disabled = false; return;
    }
    if (performance.now() - t0 > 60000){
      document.getElementById('acked').textContent = 'NOT acknowledged within 60 s: ' +
        'call the receiving centre'; document.getElementById('acked').className = 'step red';
      btn.disabled = false; return;
    }
    setTimeout(poll, 50);
  };
  poll();
}
""",
}

BODIES = {
    "selftest": """<h2>Self-test <span id="overall"></span></h2>
<table><thead><tr><th></th><th>check</th><th>state</th></tr></thead><tbody id="rows"></tbody></table>""",
    "sensors": """<h2>Sensors</h2>
<table><thead><tr><th>source</th><th>name</th><th>value</th><th>line</th><th>alarm</th>
<th>last</th></tr></thead><tbody id="rows"></tbody></table>
<h3>Nodes</h3>
<table><thead><tr><th>node</th><th>firmware</th><th>link</th><th>last seen</th>
<th>latched alarms</th><th>faults</th></tr></thead><tbody id="nodes"></tbody></table>
<p><button onclick="act('sensor_silence')">Sounder test / silence</button>
<button onclick="act('sensor_reset')">Reset latched alarms</button> <span id="result"></span></p>""",
    "alarm": """<h2>Test alarm</h2>
<p>Raises a test alarm (cause "test") and follows it to the receiving centre.
Tell the fire brigade's desk first.</p>
<p><button class="big" id="raise" onclick="testAlarm()">Raise a test alarm</button></p>
<div class="step" id="committed"></div><div class="step" id="sent"></div>
<div class="step" id="acked"></div>""",
}

COMMON_JS = """
function esc(s){return String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;',
'"':'&quot;',"'":'&#39;'}[c]));}
const CSRF = document.querySelector('meta[name=csrf]').content;
async function post(url, body){
  const r = await fetch(url, {method:'POST', body: body,
    headers:{'X-CSRF-Token': CSRF, 'Content-Type':'application/x-www-form-urlencoded'}});
  return r.json();
}
"""


def page(name: str, gateway: str, csrf: str) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="csrf" content="{escape(csrf)}"><title>{escape(gateway)}: {name}</title>
<style>{STYLE}</style></head><body>
<header><b>wardgate {escape(gateway)}</b><a href="/">Self-test</a><a href="/sensors">Sensors</a>
<a href="/alarm">Test alarm</a>
<form method="post" action="/logout" style="margin-left:auto">
<input type="hidden" name="csrf" value="{escape(csrf)}"><button>Log out</button></form></header>
<main>{BODIES[name]}</main><script>{COMMON_JS}{SCRIPTS[name]}</script></body></html>"""


def login(pre: str, failed: bool) -> str:
    msg = '<p class="red" id="error">Wrong password.</p>' if failed else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>wardgate: log in</title>
<style>{STYLE}</style></head><body><header><b>wardgate technician page</b></header><main>
<h2>Log in</h2>{msg}<form method="post" action="/login">
<input type="hidden" name="csrf" value="{escape(pre)}">
<label>Technician password <input type="password" name="password" autofocus></label>
<button>Log in</button></form></main></body></html>"""
