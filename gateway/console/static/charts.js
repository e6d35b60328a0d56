// Charts as inline SVG (no library): each chart is role="img" with a text alternative, and the
// figures it draws are also in a table on the same page.
import {s, ms, monthLabel, number} from './dom.js';

function frame(width, height, label, cls) {
  const id = 'c' + Math.random().toString(36).slice(2, 9);
  return s('svg', {viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': id, class: 'chart ' + (cls || ''),
    preserveAspectRatio: 'xMinYMin meet', focusable: 'false'},
  s('title', {id}, label));
}

/** Two (or more) labelled bars, e.g. ER visits in the year before vs the year since enrollment. A
 * value of null (not measurable yet) draws no bar and "—", like the text beside it. */
export function bars(items, {label, lang, digits = 0, width = 360, height = 220}) {
  const svg = frame(width, height, label, 'bars');
  const max = Math.max(1e-9, ...items.map((i) => i.value || 0));
  const top = 30;
  const base = height - 36;
  const slot = width / items.length;
  items.forEach((item, n) => {
    const known = item.value !== null && item.value !== undefined;
    const value = known ? item.value : 0;
    const barH = (base - top) * value / max;
    const x = n * slot + slot * 0.2;
    const w = slot * 0.6;
    if (known) {
      svg.append(s('rect', {x, y: base - barH, width: w, height: Math.max(barH, 1), class: item.cls || 'bar'},
        s('title', null, `${item.label}: ${number(value, lang, digits)}`)));
    }
    svg.append(s('text', {x: x + w / 2, y: base - barH - 8, class: 'value', 'text-anchor': 'middle'},
      number(known ? value : null, lang, digits)));
    svg.append(s('text', {x: x + w / 2, y: height - 12, class: 'axis', 'text-anchor': 'middle'}, item.label));
  });
  svg.append(s('line', {x1: 0, x2: width, y1: base, y2: base, class: 'baseline'}));
  return svg;
}

/** Axis ticks at round steps (1, 2, 5 × 10^k; whole numbers when ``integers``): 0 … ≥ max. */
export function ticks(max, {count = 4, integers = false} = {}) {
  const raw = Math.max(max, integers ? 1 : 1e-9) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * power).find((v) => v >= raw - 1e-12) || 10 * power;
  if (integers) step = Math.max(1, Math.round(step));
  const top = Math.ceil(max / step - 1e-9) * step || step;
  const out = [];
  for (let v = 0; v <= top + step / 2; v += step) out.push(Number(v.toPrecision(6)));
  return out;
}

function decimalsOf(step) {
  return step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step) - 1e-9));
}

/** ER visits per month, bars after the enrollment in the "after" colour; the enrollment's month is
 * two entries (part before / after, split at the enrollment day), drawn as two half bars. */
export function months(series, {label, lang, width = 480, height = 200}) {
  const svg = frame(width, height, label, 'months');
  if (!series.length) return svg;
  const grid = ticks(Math.max(1, ...series.map((m) => m.visits)), {integers: true});
  const max = grid[grid.length - 1];
  const left = 34;
  const right = 36; // room for the last month's label
  const base = height - 34;
  const slots = series.filter((m) => m.part !== 'after').length;
  const step = (width - left - right) / slots;
  for (const v of grid) {
    const y = base - (base - 12) * v / max;
    svg.append(s('line', {x1: left, x2: width - right, y1: y, y2: y, class: 'grid'}));
    svg.append(s('text', {x: left - 6, y: y + 5, class: 'axis', 'text-anchor': 'end'}, number(v, lang)));
  }
  let slot = -1;
  let marker = null;
  series.forEach((m) => {
    const half = m.part === 'before' || m.part === 'after';
    if (m.part !== 'after') slot += 1;
    const barH = (base - 12) * m.visits / max;
    const x = left + slot * step + (m.part === 'after' ? step * 0.5 : step * 0.15);
    const w = half ? step * 0.35 : step * 0.7;
    const what = half ? ` (${m.part === 'before' ? '−' : '+'})` : '';
    svg.append(s('rect', {x, y: base - barH, width: w, height: barH, class: m.after ? 'bar-after' : 'bar-before'},
      s('title', null, `${monthLabel(m.month, lang)}${what}: ${m.visits}`)));
    if (m.part === 'after') marker = x;
    if (m.part !== 'after' && slot % 3 === 0) {  // the year on the first label and on January only
      svg.append(s('text', {x: left + slot * step + step / 2, y: height - 10, class: 'axis', 'text-anchor': 'middle'},
        monthLabel(m.month, lang, slot === 0 || m.month.endsWith('-01'))));
    }
  });
  if (marker === null) {
    const first = series.findIndex((m) => m.after);
    if (first > 0) marker = left + first * step;
  }
  if (marker !== null) svg.append(s('line', {x1: marker, x2: marker, y1: 4, y2: base, class: 'marker'}));
  svg.append(s('line', {x1: left, x2: width - right, y1: base, y2: base, class: 'baseline'}));
  return svg;
}

/** ER visits on a time line, one lane per site; the enrollment as a dashed line. */
export function timeline(visits, {sites, siteName, enrolled, label, lang, width = 720}) {
  const lanes = sites.length ? sites : [''];
  const laneH = 30;
  const left = 190;
  const top = 24;
  const height = top + lanes.length * laneH + 28;
  const svg = frame(width, height, label, 'timeline');
  const now = Date.now();
  const times = visits.map((v) => ms(v.arrival)).filter(Number.isFinite);
  const enrolledAt = ms(enrolled);
  let lo = Math.min(...times, Number.isFinite(enrolledAt) ? enrolledAt - 365 * 864e5 : Infinity);
  if (!Number.isFinite(lo)) lo = now - 365 * 864e5;
  const hi = Math.max(now, ...times);
  const x = (t) => left + (width - left - 12) * (t - lo) / Math.max(1, hi - lo);
  lanes.forEach((site, n) => {
    const y = top + n * laneH + laneH / 2;
    svg.append(s('line', {x1: left, x2: width - 12, y1: y, y2: y, class: 'lane'}));
    svg.append(s('text', {x: left - 8, y: y + 4, class: 'axis', 'text-anchor': 'end'}, siteName(site)));
  });
  const start = new Date(lo);
  const spanMonths = (hi - lo) / (30.4 * 864e5);
  const every = spanMonths <= 8 ? 1 : spanMonths <= 18 ? 3 : spanMonths <= 40 ? 6 : 12;
  const firstMonth = Math.ceil((start.getUTCMonth() + 1) / every) * every;
  for (let d = new Date(Date.UTC(start.getUTCFullYear(), firstMonth, 1)); d.getTime() <= hi;
    d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + every, 1))) {
    const tx = x(d.getTime());
    const month = `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
    svg.append(s('line', {x1: tx, x2: tx, y1: top - 6, y2: height - 26, class: 'grid'}));
    svg.append(s('text', {x: tx, y: height - 10, class: 'axis', 'text-anchor': 'middle'}, monthLabel(month, lang)));
  }
  if (Number.isFinite(enrolledAt)) {
    const ex = x(enrolledAt);
    svg.append(s('line', {x1: ex, x2: ex, y1: top - 14, y2: height - 26, class: 'marker'}));
  }
  for (const v of visits) {
    const t = ms(v.arrival);
    if (!Number.isFinite(t)) continue;
    const lane = Math.max(0, lanes.indexOf(v.site));
    svg.append(s('circle', {cx: x(t), cy: top + lane * laneH + laneH / 2, r: v.inEr ? 7 : 5,
      class: v.inEr ? 'dot dot-now' : (Number.isFinite(enrolledAt) && t >= enrolledAt ? 'dot dot-after' : 'dot')},
    s('title', null, `${v.arrival.slice(0, 16).replace('T', ' ')} — ${siteName(v.site)}`)));
  }
  return svg;
}

/** The cohort's visits per client per month, from 12 months before enrollment to 12 after; month 0
 * is split at the enrollment (0− before, 0+ after). */
export function relative(series, {label, lang, axis, width = 560, height = 220}) {
  const svg = frame(width, height, label, 'relative');
  const grid = ticks(Math.max(...series.map((p) => p.rate ?? 0), 0.01));
  const max = grid[grid.length - 1];
  const digits = decimalsOf(grid[1] - grid[0]);
  const left = 48;
  const right = 24;
  const base = height - 34;
  const step = (width - left - right) / Math.max(1, series.length);
  for (const v of grid) {
    const y = base - (base - 12) * v / max;
    svg.append(s('line', {x1: left, x2: width - right, y1: y, y2: y, class: 'grid'}));
    svg.append(s('text', {x: left - 6, y: y + 5, class: 'axis', 'text-anchor': 'end'}, number(v, lang, digits)));
  }
  series.forEach((p, n) => {
    const barH = (base - 12) * (p.rate ?? 0) / max;
    const bx = left + n * step + step * 0.15;
    const after = p.after ?? p.offset >= 0;
    svg.append(s('rect', {x: bx, y: base - barH, width: step * 0.7, height: barH,
      class: after ? 'bar-after' : 'bar-before'},
    s('title', null, `${axis(p)}: ${number(p.rate, lang, 2)} (${p.visits} / ${p.clients})`)));
    // month 0 (two bars: before, after the enrollment) is labelled once, under the split
    if (p.part === 'before') {
      svg.append(s('text', {x: left + (n + 1) * step, y: height - 10, class: 'axis', 'text-anchor': 'middle'}, '0'));
    } else if (!p.part && p.offset % 3 === 0) {
      svg.append(s('text', {x: bx + step * 0.35, y: height - 10, class: 'axis', 'text-anchor': 'middle'},
        p.offset > 0 ? `+${p.offset}` : String(p.offset)));
    }
  });
  const zero = series.findIndex((p) => p.part === 'after' || (p.offset === 0 && !p.part));
  if (zero >= 0) {
    const zx = left + zero * step;
    svg.append(s('line', {x1: zx, x2: zx, y1: 4, y2: base, class: 'marker'}));
  }
  svg.append(s('line', {x1: left, x2: width - right, y1: base, y2: base, class: 'baseline'}));
  return svg;
}

/** One row per client: the year before (hollow) and the annualised rate since (filled). */
export function dumbbells(rows, {label, lang, name, width = 720}) {
  const rowH = 26;
  const left = 200;
  const height = 40 + rows.length * rowH;
  const svg = frame(width, height, label, 'dumbbells');
  const grid = ticks(Math.max(1, ...rows.flatMap((r) => [r.before, r.after ?? 0])), {count: 5, integers: true});
  const max = grid[grid.length - 1];
  const x = (v) => left + (width - left - 28) * v / max;
  for (const v of grid) {
    svg.append(s('line', {x1: x(v), x2: x(v), y1: 10, y2: height - 16, class: 'grid'}));
    svg.append(s('text', {x: x(v), y: height - 4, class: 'axis', 'text-anchor': 'middle'}, number(v, lang)));
  }
  rows.forEach((r, n) => {
    const y = 18 + n * rowH;
    svg.append(s('text', {x: left - 8, y: y + 4, class: 'axis', 'text-anchor': 'end'}, name(r)));
    if (r.after !== null && r.after !== undefined) {
      svg.append(s('line', {x1: x(r.before), x2: x(r.after), y1: y, y2: y, class: 'link'}));
      svg.append(s('circle', {cx: x(r.after), cy: y, r: 6, class: 'dot-after'},
        s('title', null, `${name(r)}: ${number(r.after, lang, 1)}`)));
    }
    svg.append(s('circle', {cx: x(r.before), cy: y, r: 6, class: 'dot-before'},
      s('title', null, `${name(r)}: ${number(r.before, lang)}`)));
  });
  return svg;
}

/** 24 hourly bars (messages per hour, oldest first). */
export function sparkline(values, {label, width = 144, height = 28}) {
  const svg = frame(width, height, label, 'spark');
  const max = Math.max(1, ...values);
  const step = width / values.length;
  values.forEach((v, n) => {
    const barH = (height - 2) * v / max;
    svg.append(s('rect', {x: n * step + 0.5, y: height - barH, width: Math.max(1, step - 1), height: barH, class: 'bar'}));
  });
  return svg;
}

/** A bar proportional to value / max, with the number beside it (inside a table cell). */
export function inlineBar(value, max, {label, width = 90, height = 12}) {
  const svg = frame(width, height, label, 'inline');
  svg.append(s('rect', {x: 0, y: 1, width: Math.max(2, width * value / Math.max(1, max)), height: height - 2,
    class: 'bar'}));
  return svg;
}
