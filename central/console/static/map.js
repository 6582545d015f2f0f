// The map: every site with coordinates, coloured by what is open there. With a tile URL (the
// city's GIS server) it draws on that base map; with none, an offline view: a plain graticule,
// labelled markers and a scale, fitted to the sites: usable with no internet at all.
import { onState, el } from './console.js';

const L = window.L;
const box = document.getElementById('map');
const tileUrl = box.dataset.tileUrl;
const map = L.map(box, { zoomSnap: 0.25, attributionControl: Boolean(tileUrl) });
L.control.scale({ imperial: false }).addTo(map);
if (tileUrl) {
  L.tileLayer(tileUrl, { maxZoom: 20, attribution: box.dataset.attribution || '' }).addTo(map);
} else {
  box.classList.add('offline-map');
}

const grid = L.layerGroup().addTo(map);
const STEPS = [10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005];
function graticule() {
  if (tileUrl) return;
  grid.clearLayers();
  const b = map.getBounds();
  const span = Math.min(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
  const step = STEPS.find((s) => span / s >= 4) || STEPS[STEPS.length - 1];
  const style = { color: '#2c3a4a', weight: 1, interactive: false };
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lat = Math.floor(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) {
    grid.addLayer(L.polyline([[lat, b.getWest()], [lat, b.getEast()]], style));
    grid.addLayer(L.marker([lat, b.getWest()], { interactive: false, icon: L.divIcon({ className: 'grid-label', html: '', iconSize: null }) })
      .bindTooltip(`${lat.toFixed(digits)}°`, { permanent: true, direction: 'right', className: 'grid-label', offset: [0, -8] }));
  }
  for (let lon = Math.floor(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
    grid.addLayer(L.polyline([[b.getSouth(), lon], [b.getNorth(), lon]], style));
    grid.addLayer(L.marker([b.getSouth(), lon], { interactive: false, icon: L.divIcon({ className: 'grid-label', html: '', iconSize: null }) })
      .bindTooltip(`${lon.toFixed(digits)}°`, { permanent: true, direction: 'top', className: 'grid-label', offset: [0, -4] }));
  }
}
map.on('moveend', graticule);

const COLORS = { fire: '#ff3b30', smoke: '#ff8c1a', fault: '#f5c400', test: '#5aa9ff', silent: '#8b949e', ok: '#3fb950' };
function stateOf(site) {
  for (const c of ['fire', 'smoke', 'fault', 'test']) if (site.open.includes(c)) return c;
  return site.silent ? 'silent' : 'ok';
}

const markers = L.layerGroup().addTo(map);
const bySite = new Map();
let fitted = false;

function popup(site) {
  return el('div', { class: 'map-popup' },
    el('b', {}, site.name || site.site), el('br'), site.address || '', el('br'),
    el('a', { href: `/gateway/${site.site}` }, site.site),
    site.open.length ? el('div', {}, `open: ${site.open.join(', ')}`) : null);
}

async function load() {
  const r = await fetch('/api/sites', { cache: 'no-store' });
  if (!r.ok) return;
  const sites = await r.json();
  markers.clearLayers();
  bySite.clear();
  const bounds = [];
  for (const s of sites) {
    const state = stateOf(s);
    const m = L.circleMarker([s.lat, s.lon], {
      radius: state === 'ok' ? 8 : 12, color: '#0d1117', weight: 2, fillColor: COLORS[state], fillOpacity: 0.95,
      className: `site-marker state-${state}`,
    });
    m.bindTooltip(s.name || s.site, { permanent: true, direction: 'right', offset: [10, 0], className: `map-label state-${state}` });
    m.bindPopup(popup(s));
    markers.addLayer(m);
    bySite.set(s.site, m);
    bounds.push([s.lat, s.lon]);
  }
  box.dataset.markers = String(sites.length);
  if (!fitted) {
    fitted = true;
    if (bounds.length === 1) map.setView(bounds[0], 15);
    else if (bounds.length) map.fitBounds(L.latLngBounds(bounds).pad(0.25));
    else map.setView([0, 0], 2);
    const focus = decodeURIComponent(location.hash.slice(1));
    if (focus && bySite.has(focus)) { map.setView(bySite.get(focus).getLatLng(), 16); bySite.get(focus).openPopup(); }
  }
  graticule();
}

let seen = null;
let pending = null;
onState((state) => {
  if (state.revision === seen) return;
  seen = state.revision;
  if (pending) return;
  pending = setTimeout(() => { pending = null; load(); }, seen === null ? 0 : 1000);
});
load();
