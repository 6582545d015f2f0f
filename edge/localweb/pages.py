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
#shapes li.sel{background:#fff6c0}

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
    "cameras": r"""
let cams = [], cur = null, shapes = [], sel = -1, tool = null, drawing = null, drag = null;
let down = false, start = null, hover = null, dirty = false, frames = 0, firstFrame = null;
const img = document.getElementById('preview'), cv = document.getElementById('overlay');
const ctx = cv.getContext('2d');
async function load(){
  const j = await (await fetch('/api/cameras')).json(); cams = j.cameras;
  document.getElementById('file').textContent = j.file;
  if (!cams.length){ document.getElementById('camstate').textContent =
    'No camera in this gateway\'s config ([[vision.cameras]]).'; return; }
  document.getElementById('tabs').innerHTML = cams.map(c =>
    `<button class="tab" data-cam="${esc(c.name)}" onclick="pick('${esc(c.name)}')">${esc(c.name)}${c.label?' ('+esc(c.label)+')':''}</button>`).join(' ');
  pick(cur && cams.some(c => c.name === cur) ? cur : cams[0].name);
}
function pick(name){
  const first = cur === null; cur = name; const c = cams.find(c => c.name === name);
  shapes = c.zones.map(z => ({kind:'zone', name:z.name, pts:z.polygon.map(p => [...p])}))
    .concat(c.masks.map(m => ({kind:'mask', name:'', pts:m.map(p => [...p])})));
  sel = -1; tool = null; drawing = null; dirty = false; showState(c);
  document.querySelectorAll('.tab').forEach(b => b.disabled = b.dataset.cam === name);
  if (first) next(); draw();
}
function showState(c){
  document.getElementById('camstate').innerHTML = `camera <b>${esc(c.name)}</b>: ` +
    `<span class="${c.state==='ok'?'ok':'red'}">${esc(c.state)}</span> ${esc(c.detail||'')}` +
    (c.size ? ` &middot; ${c.size[0]}&times;${c.size[1]}` : ''); }
async function refreshState(){  // the camera's state only: shapes being edited stay as they are
  const j = await (await fetch('/api/cameras')).json();
  const c = j.cameras.find(c => c.name === cur); if (c) showState(c); }
setInterval(refreshState, 2000);
function next(){ if (cur) img.src = '/camera/' + encodeURIComponent(cur) + '.jpg?t=' + Date.now(); }
img.onload = () => { frames++; if (firstFrame === null) firstFrame = performance.now();
  window.previewFrames = frames; fit(); setTimeout(next, 500);
  if (frames > 1) document.getElementById('fps').textContent =
    (1000 * (frames - 1) / (performance.now() - firstFrame)).toFixed(2) + ' frames/s'; };
img.onerror = () => { document.getElementById('fps').textContent = 'no frame yet';
  setTimeout(next, 1000); };
function fit(){ if (cv.width !== img.clientWidth || cv.height !== img.clientHeight){
  cv.width = img.clientWidth; cv.height = img.clientHeight; draw(); } }
function frac(e){ const r = cv.getBoundingClientRect();
  return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
          Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))]; }
function px(p){ return [p[0] * cv.width, p[1] * cv.height]; }
function near(a, b){ const [ax, ay] = px(a), [bx, by] = px(b); return Math.hypot(ax-bx, ay-by) < 9; }
function inside(pts, p){ let c = false;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++){
    const [xi, yi] = pts[i], [xj, yj] = pts[j];
    if ((yi > p[1]) !== (yj > p[1]) && p[0] < (xj - xi) * (p[1] - yi) / (yj - yi) + xi) c = !c; }
  return c; }
function path(pts, close){ ctx.beginPath(); pts.forEach((p, i) => { const [x, y] = px(p);
  i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); }); if (close) ctx.closePath(); }
function draw(){
  ctx.clearRect(0, 0, cv.width, cv.height);
  shapes.forEach((s, i) => {
    path(s.pts, true);
    ctx.fillStyle = s.kind === 'zone' ? 'rgba(0,200,60,0.18)' : 'rgba(0,0,0,0.45)'; ctx.fill();
    ctx.lineWidth = i === sel ? 3 : 2;
    ctx.strokeStyle = i === sel ? '#ffd400' : (s.kind === 'zone' ? '#00e050' : '#bbb'); ctx.stroke();
    const [x, y] = px(s.pts[0]); ctx.font = 'bold 13px system-ui'; ctx.fillStyle = '#fff';
    ctx.fillText(s.kind === 'zone' ? 'zone ' + s.name : 'mask', x + 4, y + 15);
    if (i === sel) s.pts.forEach(p => { const [x, y] = px(p); ctx.fillStyle = '#ffd400';
      ctx.fillRect(x - 4, y - 4, 8, 8); });
  });
  if (drawing){ path(hover && !down ? drawing.pts.concat([hover]) : drawing.pts, tool.shape === 'rect');
    ctx.strokeStyle = '#ffd400'; ctx.lineWidth = 2; ctx.setLineDash([6, 4]); ctx.stroke();
    ctx.setLineDash([]); }
  document.getElementById('shapes').innerHTML = shapes.map((s, i) =>
    `<li data-kind="${s.kind}" data-name="${esc(s.name)}" class="${i===sel?'sel':''}">` +
    `${s.kind === 'zone' ? 'zone <b>' + esc(s.name) + '</b>' : 'mask ' + (i + 1)}: ` +
    s.pts.map(p => '(' + p[0].toFixed(2) + ', ' + p[1].toFixed(2) + ')').join(' ') + '</li>').join('');
  document.getElementById('dirty').textContent = dirty ? 'unsaved changes' : '';
}
function setTool(kind, shape){ tool = {kind, shape}; drawing = null; sel = -1;
  document.getElementById('msg').textContent = shape === 'rect' ?
    'Press, drag and release on the picture.' :
    'Click each corner; double-click or click the first corner to close.'; draw(); }
function finish(){
  if (drawing && drawing.pts.length >= 3){
    if (drawing.kind === 'zone'){ const n = document.getElementById('zname');
      drawing.name = n.value.trim();
      const m = n.value.match(/^(.*?)(\d+)$/); n.value = m ? m[1] + (+m[2] + 1) : n.value + '2'; }
    shapes.push(drawing); sel = shapes.length - 1; dirty = true; }
  drawing = null; tool = null; document.getElementById('msg').textContent = ''; draw(); }
cv.addEventListener('mousedown', e => { const p = frac(e); down = true;
  if (tool && tool.shape === 'rect'){ start = p; drawing = {kind: tool.kind, pts: [p, p, p, p]}; }
  else if (tool){ if (!drawing) drawing = {kind: tool.kind, pts: [p]};
    else if (drawing.pts.length >= 3 && near(drawing.pts[0], p)) finish();
    else drawing.pts.push(p); }
  else { const j = sel >= 0 ? shapes[sel].pts.findIndex(q => near(q, p)) : -1;
    if (j >= 0) drag = {i: sel, j};
    else { sel = -1; for (let i = shapes.length - 1; i >= 0; i--)
      if (inside(shapes[i].pts, p)){ sel = i; break; } } }
  draw(); });
// on the window: a drag that leaves the picture still ends (points are clamped to its edge)
window.addEventListener('mousemove', e => { if (!down && !drawing) return;
  const p = frac(e); hover = p;
  if (drawing && tool && tool.shape === 'rect' && down)
    drawing.pts = [start, [p[0], start[1]], p, [start[0], p[1]]];
  else if (drag){ shapes[drag.i].pts[drag.j] = p; dirty = true; }
  draw(); });
window.addEventListener('mouseup', e => { if (!down) return; down = false; drag = null;
  if (drawing && tool && tool.shape === 'rect'){
    const [a, b] = [drawing.pts[0], drawing.pts[2]];
    if (Math.abs(a[0] - b[0]) * cv.width > 5 && Math.abs(a[1] - b[1]) * cv.height > 5) finish();
    else drawing = null; }
  draw(); });
cv.addEventListener('dblclick', () => { if (drawing) { drawing.pts.pop(); finish(); } });
function delSel(){ if (sel >= 0){ shapes.splice(sel, 1); sel = -1; dirty = true; draw(); } }
async function save(){
  const msg = document.getElementById('msg'); msg.className = ''; msg.textContent = 'saving...';
  const body = {zones: shapes.filter(s => s.kind === 'zone').map(s => ({name: s.name, polygon: s.pts})),
                masks: shapes.filter(s => s.kind === 'mask').map(s => s.pts)};
  const r = await fetch('/api/zones/' + encodeURIComponent(cur), {method: 'POST',
    body: JSON.stringify(body), headers: {'X-CSRF-Token': CSRF, 'Content-Type': 'application/json'}});
  const j = await r.json();
  if (!r.ok){ msg.className = 'red'; msg.innerHTML = 'Not saved:<ul>' +
    j.problems.map(p => '<li>' + esc(p) + '</li>').join('') + '</ul>'; return; }
  dirty = false; msg.className = 'ok';
  msg.textContent = 'Saved to ' + j.file + ' and applied (reload: ' +
    (j.reload.applied || []).join(', ') + (j.reload.restarted ? ', cameras restarted' : '') + ').';
  await load();
}
load();
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
    "cameras": """<h2>Cameras</h2>
<div id="tabs"></div><p id="camstate"></p>
<div id="view" style="position:relative;display:inline-block;line-height:0">
<img id="preview" alt="camera preview" style="display:block;width:640px;max-width:100%;min-height:120px;background:#333">
<canvas id="overlay" style="position:absolute;left:0;top:0;cursor:crosshair"></canvas></div>
<p>Zone name <input id="zname" value="zone1" size="10">
<button onclick="setTool('zone','rect')">Zone: rectangle</button>
<button onclick="setTool('zone','poly')">Zone: polygon</button>
<button onclick="setTool('mask','rect')">Mask: rectangle</button>
<button onclick="setTool('mask','poly')">Mask: polygon</button>
<button onclick="delSel()">Delete selected</button>
<button id="save" onclick="save()"><b>Save and apply</b></button>
<button onclick="load()">Discard changes</button> <span id="dirty" class="red"></span></p>
<div id="msg"></div>
<p class="fix">Zones (green) name where a person is: events carry the zone their feet are in.
Masks (dark) are ignored by motion, person and smoke detection. Click a shape to select it; drag
a yellow corner to move it. Saved to <code id="file"></code> (conf.d: kept across re-flash).
Red boxes: the last person detections. Preview: <span id="fps"></span>,
from the gateway's own capture.</p>
<ul id="shapes"></ul>""",
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
<a href="/cameras">Cameras</a><a href="/alarm">Test alarm</a>
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
