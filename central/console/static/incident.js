// The incident page: when anybody changes this incident, refresh its state panel in place
// (unless the dispatcher is typing into it: then say so instead of wiping the note).
import { onState } from './console.js';

const panel = () => document.getElementById('panel');
let busy = false;

function typing(node) {
  const active = document.activeElement;
  if (active && node.contains(active) && active.matches('input, textarea')) return true;
  return [...node.querySelectorAll('input[type=text], input:not([type]), textarea')].some((i) => i.value);
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const current = panel();
    const r = await fetch(`/incident/${current.dataset.incident}/panel`, { cache: 'no-store' });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    const fresh = doc.getElementById('panel');
    if (!fresh) return;
    if (typing(current)) {
      for (const sel of ['.panel-state', '.times']) {
        const a = current.querySelector(sel);
        const b = fresh.querySelector(sel);
        if (a && b) a.replaceWith(b);
      }
      current.dataset.revision = fresh.dataset.revision;
      current.classList.add('changed');
    } else {
      current.replaceWith(fresh);
    }
  } finally {
    busy = false;
  }
}

onState((state) => {
  const p = panel();
  if (!p) return;
  const item = state.queue.find((i) => String(i.id) === p.dataset.incident);
  if (item ? String(item.revision) !== p.dataset.revision : p.dataset.status !== 'resolved') refresh();
});
