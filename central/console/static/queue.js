// The queue page: one line per open incident, in the store's order (fire, smoke, fault, test;
// then the longest waiting), aged every second by colour.
import { onState, el, age, hms, serverNow, canWork, csrf, me, escalateS } from './console.js';

const tbody = document.getElementById('queue-body');
const empty = document.getElementById('queue-empty');
const count = document.getElementById('queue-count');
const LABEL = { fire: 'FIRE', smoke: 'SMOKE', fault: 'FAULT', test: 'TEST' };

// Amber from 30 s, or from half the escalation time when that is shorter (so that a short
// escalation time still shows amber before red); the legend above the queue says the same.
const warnS = Math.min(30, escalateS / 2);

function ageClass(item) {
  if (item.status !== 'new' || item.category === 'test') return '';  // tests never escalate
  const s = (serverNow() - item.received_ms) / 1000;
  if (item.escalated_ms || s >= escalateS) return 'age-late';
  if (s >= warnS) return 'age-warn';
  return 'age-fresh';
}

function statusCell(item) {
  const who = item.owner === me ? 'You' : (item.owner_name || item.owner);
  switch (item.status) {
    case 'new': return el('span', { class: 'st-new' }, item.escalated_ms ? 'ESCALATED — nobody has it' : 'NEW — nobody has it');
    case 'taken': return el('span', { class: 'st-taken owner' }, `${who} ${item.owner === me ? 'have' : 'has'} it`);
    case 'held': return el('span', { class: 'st-held owner' }, `held by ${who} until ${hms(item.held_until_ms)}`);
    case 'dispatched': return el('span', { class: 'st-dispatched owner' }, `DISPATCHED · ${who}`);
    default: return el('span', {}, item.status);
  }
}

function actionCell(item) {
  if (!canWork || item.owner === me) return el('a', { class: 'btn ghost', href: `/incident/${item.id}` }, 'Open');
  return el('form', { method: 'post', action: `/incident/${item.id}/take`, class: 'inline' },
    el('input', { type: 'hidden', name: 'csrf', value: csrf }),
    el('button', { class: item.owner ? 'btn take-over' : 'btn take primary' }, item.owner ? 'Take over…' : 'Take'));
}

function row(item) {
  const where = item.name || item.site;
  const tr = el('tr', {
    class: `row cat-${item.category} status-${item.status} ${ageClass(item)}${item.escalated_ms ? ' escalated' : ''}${item.owner === me ? ' mine' : ''}`,
    dataset: { id: item.id, received: item.received_ms, status: item.status, category: item.category, owner: item.owner || '' },
  },
  el('td', { class: 'type' }, el('span', { class: `badge big cat-${item.category}` }, LABEL[item.category] || item.category)),
  el('td', { class: 'where' },
    el('a', { href: `/incident/${item.id}`, class: 'site' }, where),
    el('div', { class: 'sub' }, [item.address, `${item.district} / ${item.ward}`].filter(Boolean).join(' · '),
      item.gateway_silent ? el('span', { class: 'badge bad' }, 'gateway silent') : null)),
  el('td', { class: 'what' },
    el('div', { class: 'label' }, item.label || item.source),
    item.more && item.more.length ? el('div', { class: 'more' }, `+ ${item.more.join(', ')}`) : null,
    el('div', { class: 'sub' }, item.summary, item.cleared_ms ? ' · cleared' : '')),
  el('td', { class: 'count' }, item.event_count > 1 ? `×${item.event_count}` : ''),
  el('td', { class: 'age' }, age(item.received_ms)),
  el('td', { class: 'status' }, statusCell(item)),
  el('td', { class: 'act' }, actionCell(item)));
  tr.addEventListener('click', (ev) => {
    if (ev.target.closest('a, button, form')) return;
    location.href = `/incident/${item.id}`;
  });
  return tr;
}

let items = [];
onState((state) => {
  items = state.queue;
  tbody.replaceChildren(...items.map(row));
  empty.hidden = items.length > 0;
  count.textContent = items.length ? String(items.length) : '';
});

// Age every second without waiting for the server.
setInterval(() => {
  for (const tr of tbody.children) {
    const item = items.find((i) => String(i.id) === tr.dataset.id);
    if (!item) continue;
    tr.querySelector('.age').textContent = age(item.received_ms);
    tr.classList.remove('age-fresh', 'age-warn', 'age-late');
    const cls = ageClass(item);
    if (cls) tr.classList.add(cls);
  }
}, 1000);
