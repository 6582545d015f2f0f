// Shared by every page: the server-push link (/events), its banners, the header, the alarm sound.
// Pages subscribe with onState(fn) and get each new snapshot of the queue.

const body = document.body;
export const csrf = document.querySelector('meta[name="csrf-token"]').content;
export const canWork = body.dataset.canWork === '1';
export const me = body.dataset.user;
export const escalateS = parseFloat(body.dataset.escalateS || '60');
const keepaliveS = parseFloat(body.dataset.keepaliveS || '15');

let offset = 0; // server clock minus this browser's clock
let last = null;
const listeners = new Set();

export function serverNow() { return Date.now() + offset; }
export function hms(ms) {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}
export function age(ms) {
  const s = Math.max(0, Math.floor((serverNow() - ms) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}:${String(s % 60).padStart(2, '0')}`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')}`;
}
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
export function onState(fn) {
  listeners.add(fn);
  if (last) fn(last);
}

// --- banners -------------------------------------------------------------------------------
const bannerOffline = document.getElementById('banner-offline');
const bannerBroker = document.getElementById('banner-broker');
let offlineSince = null;
let backTimer = null;

function offline() {
  if (offlineSince === null) {
    offlineSince = Date.now();
    body.classList.add('offline');
    clearTimeout(backTimer);
    bannerOffline.className = 'banner banner-offline';
    bannerOffline.textContent = `Connection to console lost since ${hms(offlineSince + offset)} — what you see may be out of date. Reconnecting…`;
    bannerOffline.hidden = false;
    body.dataset.offline = '1';
  }
}

function online() {
  if (offlineSince !== null) {
    const from = hms(offlineSince + offset);
    offlineSince = null;
    body.classList.remove('offline');
    body.dataset.offline = '0';
    bannerOffline.className = 'banner banner-info';
    bannerOffline.textContent = `Reconnected at ${hms(serverNow())} (offline since ${from}); the queue is current again.`;
    clearTimeout(backTimer);
    backTimer = setTimeout(() => { bannerOffline.hidden = true; }, 10000);
  }
}

function brokerBanner(broker) {
  const pill = document.getElementById('broker-pill');
  if (broker.connected) {
    bannerBroker.hidden = true;
    pill.textContent = 'broker connected';
    pill.className = 'pill ok';
  } else {
    const since = broker.since_ms ? hms(broker.since_ms) : '?';
    bannerBroker.textContent = `Broker disconnected since ${since}: no alarms are arriving (${broker.detail || 'no detail'}).`;
    bannerBroker.hidden = false;
    pill.textContent = 'BROKER DOWN';
    pill.className = 'pill bad';
  }
  body.dataset.broker = broker.connected ? 'up' : 'down';
}

// The hand-over to the alarm receiving centre (SIA DC-09), when one is configured: "ARC ok", or
// how many alarms and faults still wait for the desk's acknowledgement.
function arcPill(dc09) {
  const pill = document.getElementById('dc09-pill');
  if (!pill) return;
  pill.hidden = !dc09;
  if (!dc09) return;
  const waiting = dc09.queued + dc09.rejected;
  const healthy = ['idle', 'waiting_ack', 'connecting'].includes(dc09.state) && dc09.rejected === 0;
  pill.textContent = healthy && waiting <= 1 ? 'ARC ok' : `ARC: ${waiting} waiting (${dc09.state})`;
  pill.className = healthy && waiting <= 1 ? 'pill ok' : 'pill bad';
  pill.title = `SIA DC-09 to ${dc09.peer}: ${dc09.last_error || 'no error'}`;
}

// --- sound ---------------------------------------------------------------------------------
const KNOWN_KEY = 'wg-known-incidents';
const stored = sessionStorage.getItem(KNOWN_KEY);
const known = new Set(stored ? JSON.parse(stored) : []);
let primed = stored !== null;
let lastReminder = Date.now();
const bannerSound = document.getElementById('banner-sound');

function play(kind) {
  const audio = document.getElementById(kind === 'fire' ? 'snd-fire' : 'snd-test');
  audio.currentTime = 0;
  audio.play().then(() => {
    const key = kind === 'fire' ? 'soundCount' : 'soundTestCount';
    body.dataset[key] = String(parseInt(body.dataset[key] || '0', 10) + 1);
    body.dataset.soundLast = kind;
    bannerSound.hidden = true;
  }).catch(() => { bannerSound.hidden = false; });
}
document.getElementById('enable-sound')?.addEventListener('click', () => play('test'));

const isFire = (i) => i.category === 'fire' || i.category === 'smoke';

function sound(state) {
  let fire = false;
  let test = false;
  for (const i of state.queue) {
    if (known.has(i.id)) continue;
    known.add(i.id);
    if (!primed) continue;
    if (isFire(i)) fire = true;
    else if (i.category === 'test') test = true;
  }
  const open = new Set(state.queue.map((i) => i.id));
  for (const id of known) if (!open.has(id)) known.delete(id);
  sessionStorage.setItem(KNOWN_KEY, JSON.stringify([...known]));
  primed = true;
  if (fire) { play('fire'); lastReminder = Date.now(); } else if (test) play('test');
}

// While a fire waits for somebody to take it, remind every 20 s.
setInterval(() => {
  if (!last || Date.now() - lastReminder < 20000) return;
  if (last.queue.some((i) => isFire(i) && i.status === 'new')) { play('fire'); lastReminder = Date.now(); }
}, 1000);

// --- header --------------------------------------------------------------------------------
function header(state) {
  const waiting = state.queue.filter((i) => i.status === 'new');
  const fires = waiting.filter(isFire);
  const nav = document.getElementById('nav-waiting');
  nav.hidden = waiting.length === 0;
  nav.textContent = String(waiting.length);
  nav.className = fires.length ? 'pill fire flash' : 'pill warn';
  const unwell = document.getElementById('nav-unwell');
  unwell.hidden = state.faults + state.silent === 0;
  unwell.textContent = String(state.faults + state.silent);
  const q = document.getElementById('nav-quarantine');
  const quarantined = (state.live.counts || {}).quarantined || 0;
  q.hidden = quarantined === 0;
  q.textContent = String(quarantined);
  const base = document.title.replace(/^\(\d+\)( FIRE)? · /, '');
  document.title = waiting.length ? `(${waiting.length})${fires.length ? ' FIRE' : ''} · ${base}` : base;
}
setInterval(() => { document.getElementById('clock').textContent = hms(serverNow()); }, 1000);

function apply(state) {
  offset = state.now_ms - Date.now();
  last = state;
  body.dataset.revision = String(state.revision);
  brokerBanner(state.live.broker);
  arcPill(state.live.dc09);
  header(state);
  document.getElementById('clock').textContent = hms(serverNow());
  sound(state);
  for (const fn of listeners) fn(state);
}

// --- the stream ----------------------------------------------------------------------------
let source = null;
let lastMessage = Date.now();
let retryTimer = null;

function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  source = new EventSource('/events');
  lastMessage = Date.now();
  source.addEventListener('state', (ev) => {
    lastMessage = Date.now();
    online();
    apply(JSON.parse(ev.data));
  });
  source.addEventListener('ping', () => { lastMessage = Date.now(); online(); });
  source.addEventListener('expired', () => { source.close(); toLogin(); });
  source.onerror = () => {
    offline();
    if (source.readyState === EventSource.CLOSED) retryTimer = setTimeout(check, 2000);
  };
}

function toLogin() {
  location.href = `/login?expired=1&next=${encodeURIComponent(location.pathname)}`;
}

// The stream was refused: logged out (expired shift) or the server answers but not yet well.
async function check() {
  try {
    const r = await fetch('/api/queue', { cache: 'no-store' });
    if (r.status === 401) { toLogin(); return; }
  } catch (e) { /* still down */ }
  connect();
}

// A silent half-open link shows no error: no message (not even a ping) for 2.5 keep-alives.
setInterval(() => {
  if (Date.now() - lastMessage > keepaliveS * 2500) { offline(); connect(); }
}, 2000);

const initial = document.getElementById('initial-state');
if (initial) apply(JSON.parse(initial.textContent));
connect();
