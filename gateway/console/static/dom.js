// Small DOM helpers and formatters shared by the views (no framework, no dependency).

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.setAttribute('class', value);
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/x'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element (same call shape as h). */
export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Text only readers of the screen hear (the visible text stays short). */
export function sr(text) {
  return h('span', {class: 'sr-only'}, text);
}

const ZONE = 'America/Toronto'; // the sites' zone (America/Montreal is its alias)

function zoned(ms) {
  const parts = {};
  const format = new Intl.DateTimeFormat('en-CA', {timeZone: ZONE, year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', hourCycle: 'h23'});
  for (const part of format.formatToParts(new Date(ms))) parts[part.type] = part.value;
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}`;
}

/** "2025-11-12T09:39:00-05:00" → "2025-11-12 09:39": the time as the site wrote it; an instant in
 * UTC ("…Z", written by the gateway) is shown in the sites' zone. */
export function dateTime(text) {
  if (!text) return '';
  const value = String(text);
  if (value.endsWith('Z') && Number.isFinite(Date.parse(value))) return zoned(Date.parse(value));
  const shown = value.replace('T', ' ');
  return shown.length >= 16 ? shown.slice(0, 16) : shown.slice(0, 10);
}

export function date(text) {
  return text ? dateTime(text).slice(0, 10) : '';
}

export function locale(lang) {
  return lang === 'en' ? 'en-CA' : 'fr-CA';
}

export function number(value, lang, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  return new Intl.NumberFormat(locale(lang), {maximumFractionDigits: digits, minimumFractionDigits: 0})
    .format(value);
}

/** Age in whole years at today's date, '' when the birth date is unknown. */
export function age(birthDate) {
  if (!birthDate || birthDate.length < 10) return '';
  const born = new Date(birthDate.slice(0, 10) + 'T00:00:00');
  const now = new Date();
  let years = now.getFullYear() - born.getFullYear();
  const before = now.getMonth() < born.getMonth() ||
    (now.getMonth() === born.getMonth() && now.getDate() < born.getDate());
  if (before) years -= 1;
  return Number.isFinite(years) ? years : '';
}

/** Milliseconds since the epoch of a FHIR dateTime / date, NaN when unreadable. */
export function ms(text) {
  if (!text) return NaN;
  const t = String(text);
  return Date.parse(t.length === 10 ? t + 'T00:00:00' : t.length === 7 ? t + '-01T00:00:00' : t);
}

/** Month name of "YYYY-MM" in the page's language ("janv. 2025"). */
export function monthLabel(month, lang, withYear = true) {
  const [y, m] = month.split('-').map(Number);
  const options = withYear ? {month: 'short', year: 'numeric', timeZone: 'UTC'} : {month: 'short', timeZone: 'UTC'};
  return new Intl.DateTimeFormat(locale(lang), options).format(new Date(Date.UTC(y, m - 1, 1)));
}

/** A table: columns [{label, cell(row) → node|text, cls}], with a caption. */
export function table(caption, columns, rows, attrs = {}) {
  return h('table', attrs,
    h('caption', null, caption),
    h('thead', null, h('tr', null, columns.map((c) => h('th', {scope: 'col', class: c.cls}, c.label)))),
    h('tbody', null, rows.map((row) => h('tr', null,
      columns.map((c, i) => h(i === 0 ? 'th' : 'td', i === 0 ? {scope: 'row', class: c.cls} : {class: c.cls},
        c.cell(row)))))));
}
