// The console's shell: strings (fr.json / en.json), API calls, the #/… router, the live alerts.
import {h, clear, dateTime} from './dom.js';
import {startLive} from './live.js';
import {roster, candidates, client, outcomes} from './views.js';
import {feeds} from './feeds.js';
import {openEnroll} from './enroll.js';

const LANGS = ['fr', 'en'];
const state = {lang: 'fr', dict: {}, first: true, timers: [], live: [], seen: new Set(), route: ''};
const main = document.getElementById('main');
const fhirBase = document.querySelector('meta[name="pivot-fhir-base"]').getAttribute('content');

// -- strings ----------------------------------------------------------------------------------
export function t(key, vars) {
  const found = key.split('.').reduce((node, part) => (node && typeof node === 'object' ? node[part] : undefined),
    state.dict);
  // plural forms: {"one": …, "other": …}, chosen by vars.n with the language's rules (French: 0 and 1
  // are singular, "1 client"; English: 1 only)
  const form = found && typeof found === 'object' && vars && typeof vars.n === 'number'
    ? found[new Intl.PluralRules(state.lang).select(vars.n)] ?? found.other : found;
  const text = typeof form === 'string' ? form : key;
  return text.replace(/\{(\w+)\}/g, (_m, name) => (vars && vars[name] !== undefined ? String(vars[name]) : ''));
}

async function loadLang(lang) {
  const resp = await fetch(`static/${lang}.json`, {cache: 'no-cache'});
  state.dict = await resp.json();
  state.lang = lang;
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  const other = lang === 'fr' ? 'en' : 'fr';
  const toggle = document.getElementById('lang');
  toggle.textContent = t('lang.other');
  toggle.setAttribute('lang', other);
  toggle.setAttribute('aria-label', t('lang.switch'));
  try { localStorage.setItem('pivot.lang', lang); } catch { /* private mode */ }
}

// -- API --------------------------------------------------------------------------------------
export class ApiError extends Error {
  constructor(status, text) { super(text || `HTTP ${status}`); this.status = status; }
}

function token() {
  try { return sessionStorage.getItem('pivot.token') || ''; } catch { return ''; }
}

export function authHeaders() {
  const value = token();
  return value ? {Authorization: `Bearer ${value}`} : {};
}

function diagnostics(body) {
  const issues = (body && body.issue) || [];
  return issues.map((i) => i.diagnostics || i.code).filter(Boolean).join(' ; ');
}

export async function api(path, options = {}, retried = false) {
  const resp = await fetch(path, {...options, cache: 'no-store',
    headers: {Accept: 'application/json', ...authHeaders(), ...(options.headers || {})}});
  if (resp.status === 401 && !retried) {
    await signIn();
    return api(path, options, true);
  }
  const type = resp.headers.get('content-type') || '';
  const body = type.includes('json') ? await resp.json() : null;
  if (!resp.ok) throw new ApiError(resp.status, diagnostics(body));
  return body;
}

function signIn() {
  const dialog = document.getElementById('signin-dialog');
  return new Promise((resolve) => {
    const input = h('input', {id: 'signin-token', type: 'password', autocomplete: 'off', required: true});
    const form = h('form', {method: 'dialog'},
      h('h2', {id: 'signin-title'}, t('signin.title')),
      h('p', null, t('signin.help')),
      h('label', {for: 'signin-token'}, t('signin.token')), input,
      h('div', {class: 'actions'}, h('button', {type: 'submit', class: 'primary'}, t('signin.submit'))));
    form.addEventListener('submit', () => {
      try { sessionStorage.setItem('pivot.token', input.value.trim()); } catch { /* private mode */ }
      dialog.close();
      resolve();
    });
    clear(dialog).append(form);
    dialog.setAttribute('aria-labelledby', 'signin-title');
    dialog.showModal();
    input.focus();
  });
}

/** Say something to screen-reader users (and show it briefly). */
export function announce(text) {
  const region = document.getElementById('announce');
  region.textContent = '';
  setTimeout(() => { region.textContent = text; }, 50);
}

// -- router -----------------------------------------------------------------------------------
const ROUTES = [
  [/^#\/candidates$/, 'candidates', () => candidates(ctx)],
  [/^#\/clients\/([^/]+)$/, 'roster', (m) => client(ctx, decodeURIComponent(m[1]))],
  [/^#\/outcomes$/, 'outcomes', () => outcomes(ctx)],
  [/^#\/feeds$/, 'feeds', () => feeds(ctx)],
  [/^(#\/?(clients)?)?$/, 'roster', () => roster(ctx)],
];

export const ctx = {
  t, api, announce, fhirBase,
  get lang() { return state.lang; },
  go(hash) { if (location.hash === hash) render(true); else location.hash = hash; },
  every(ms, fn) { state.timers.push(setInterval(fn, ms)); },
  enroll(patient, trigger) { return openEnroll(ctx, patient, trigger); },
  rerender: () => render(false),
  alertItem: (alert) => alertItem(alert),
};

async function render(focus = true) {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  const hash = location.hash;
  const route = ROUTES.find(([re]) => re.test(hash)) || ROUTES[ROUTES.length - 1];
  const match = hash.match(route[0]) || [];
  state.route = route[1];
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.route === route[1]) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  main.setAttribute('aria-busy', 'true');
  let node;
  try {
    node = await route[2](match);
  } catch (err) {
    node = h('section', null, h('h1', {tabindex: '-1'}, t('error.title')),
      h('p', {role: 'alert'}, err.status === 404 ? t('error.notFound') : t('error.load', {text: err.message})));
  }
  clear(main).append(node);
  main.removeAttribute('aria-busy');
  const title = main.querySelector('h1');
  document.title = `${title ? title.textContent : ''} — Pivot`;
  if (focus && !state.first && title) title.focus();
  state.first = false;
}

// -- live alerts ------------------------------------------------------------------------------
// follow-up notices are never "open" (gateway/console/alerts.py); an arrival is open while the visit lasts
const NOTICE_KINDS = new Set(['er-arrival-family', 'er-cancelled', 'er-discharge']);

export function alertItem(alert) {
  const site = alert.siteLabel || alert.site;
  const kind = t(`kind.${alert.kind}`) === `kind.${alert.kind}` ? alert.kind : t(`kind.${alert.kind}`);
  return h('li', {class: `alert ${alert.priority === 'urgent' ? 'urgent' : ''}`},
    h('a', {href: `#/clients/${encodeURIComponent(alert.patient.id)}`}, alert.patient.name || alert.patient.id),
    ' ', h('span', {class: 'kind'}, kind),
    site ? h('span', {class: 'site'}, ` — ${t('alerts.site', {site})}`) : null,
    ' ', h('time', {datetime: alert.at || alert.sent}, dateTime(alert.at || alert.sent)),
    alert.priority === 'urgent' ? h('span', {class: 'badge urgent'}, t('alerts.urgent')) : null,
    ' ', alert.open ? h('span', {class: 'badge open'}, t('alerts.open'))
      : h('span', {class: 'muted small'}, t(NOTICE_KINDS.has(alert.kind) ? 'alerts.notice'
        : alert.kind === 'er-arrival' ? 'alerts.closed' : 'alerts.closedOther')));
}

function paintLive() {
  const region = document.getElementById('live-alerts');
  clear(region).append(...state.live.map(alertItem));
  document.getElementById('live-empty').hidden = state.live.length > 0;
}

async function paintRecent() {
  const list = document.getElementById('recent-alerts');
  try {
    const body = await api('api/alerts?limit=5');
    const items = body.alerts.filter((a) => !state.seen.has(a.id));
    clear(list).append(...items.map(alertItem));
    document.getElementById('recent-title').hidden = items.length === 0;
  } catch { /* the live list still works */ }
}

function setLiveStatus(status) {
  const el = document.getElementById('live-status');
  el.dataset.status = status;
  el.textContent = t(`live.${status}`);
}

function initLive() {
  startLive({
    url: 'api/alerts/stream',
    headers: authHeaders,
    onStatus: setLiveStatus,
    async onEvent(event, data) {
      if (event !== 'alert') return;
      const info = JSON.parse(data);
      let alert;
      try { alert = await api(`api/alerts/${encodeURIComponent(info.id)}`); } catch { return; }
      const region = document.getElementById('live-alerts');
      const known = state.live.findIndex((a) => a.id === alert.id);
      if (known >= 0) {
        state.live[known] = alert;
        paintLive();
        return;
      }
      state.seen.add(alert.id);
      state.live.unshift(alert);
      state.live = state.live.slice(0, 20);
      region.prepend(alertItem(alert));
      while (region.children.length > 20) region.lastElementChild.remove();
      document.getElementById('live-empty').hidden = true;
      if (state.route === 'roster' && !main.contains(document.activeElement)) render(false);
    },
  });
}

// -- start ------------------------------------------------------------------------------------
async function start() {
  let lang = 'fr';
  try { lang = localStorage.getItem('pivot.lang') || 'fr'; } catch { /* private mode */ }
  await loadLang(LANGS.includes(lang) ? lang : 'fr');
  document.getElementById('lang').addEventListener('click', async () => {
    await loadLang(state.lang === 'fr' ? 'en' : 'fr');
    setLiveStatus(document.getElementById('live-status').dataset.status || 'offline');
    paintLive();
    paintRecent();
    render(false);
  });
  window.addEventListener('hashchange', () => render(true));
  setLiveStatus('offline');
  await render();
  paintRecent();
  initLive();
}

start();
