// The case managers' pages: roster, candidates, one client, outcomes. Each returns a <section>.
import {h, sr, table, dateTime, date, number, age} from './dom.js';
import * as charts from './charts.js';

const enc = encodeURIComponent;

function heading(text, extra) {
  return h('header', {class: 'page-head'}, h('h1', {tabindex: '-1'}, text), extra || null);
}

function clientLink(row) {
  return h('a', {href: `#/clients/${enc(row.id)}`}, row.name || row.id);
}

function siteName(ctx, site, label) {
  return label || site || ctx.t('common.unknown');
}

function who(ctx, row) {
  const years = age(row.birthDate);
  return h('span', {class: 'who'}, clientLink(row),
    h('span', {class: 'muted small'}, [row.nam, years !== '' ? ctx.t('common.age', {years}) : ''].filter(Boolean)
      .join(' · ')));
}

function codes(list) {
  return list.map((c) => c.display || c.code).join(', ');
}

function refresh(ctx) {
  return h('button', {type: 'button', class: 'quiet', onclick: () => ctx.rerender()}, ctx.t('common.refresh'));
}

// -- roster ------------------------------------------------------------------------------------
export async function roster(ctx) {
  const {t, lang} = ctx;
  const data = await ctx.api('api/roster');
  const active = data.clients.filter((c) => c.status === 'active');
  const ended = data.clients.filter((c) => c.status !== 'active');
  const inEr = active.filter((c) => c.lastVisit && c.lastVisit.inEr).length;
  const open = active.reduce((n, c) => n + c.openAlerts, 0);
  const columns = [
    {label: t('roster.client'), cell: (c) => who(ctx, c)},
    {label: t('roster.flag'), cell: (c) => h('span', {class: `badge ${c.status}`},
      c.status === 'active' ? t('roster.flagActive', {date: date(c.enrolled)}) : t('roster.flagEnded', {date: date(c.ended)}))},
    {label: t('roster.lastVisit'), cell: (c) => (c.lastVisit ? [
      h('time', {datetime: c.lastVisit.arrival}, dateTime(c.lastVisit.arrival)), h('br'),
      h('span', {class: 'small'}, siteName(ctx, c.lastVisit.site, c.lastVisit.siteLabel)),
      c.lastVisit.inEr ? h('span', {class: 'badge urgent'}, t('roster.inEr')) : null] : t('roster.noVisit'))},
    {label: t('roster.visits12'), cls: 'num', cell: (c) => number(c.visitsLast12Months, lang)},
    {label: t('roster.openAlerts'), cls: 'num', cell: (c) => (c.openAlerts
      ? h('span', {class: 'badge urgent'}, number(c.openAlerts, lang), sr(` ${t('roster.openAlertsSr')}`))
      : h('span', {class: 'muted'}, '0'))},
    {label: t('roster.caseManager'), cell: (c) => c.caseManager || '—'},
  ];
  return h('section', {'aria-labelledby': 'roster-h'},
    heading(t('roster.title'), refresh(ctx)),
    h('ul', {class: 'stats'},
      h('li', null, h('strong', null, number(active.length, lang)), ' ', t('roster.statActive', {n: active.length})),
      h('li', null, h('strong', null, number(inEr, lang)), ' ', t('roster.statInEr', {n: inEr})),
      h('li', {id: 'stat-open'}, h('strong', null, number(open, lang)), ' ', t('roster.statOpen', {n: open}))),
    active.length ? table(t('roster.caption'), columns, active, {class: 'data', id: 'roster-table'})
      : h('p', null, t('roster.empty')),
    ended.length ? h('details', null, h('summary', null, t('roster.ended', {n: ended.length})),
      table(t('roster.endedCaption'), columns, ended, {class: 'data'})) : null);
}

// -- candidates --------------------------------------------------------------------------------
export async function candidates(ctx) {
  const {t, lang} = ctx;
  let saved = '';
  try { saved = sessionStorage.getItem('pivot.candidates') || ''; } catch { /* private mode */ }
  const params = new URLSearchParams(saved);
  const data = await ctx.api(`api/candidates?${params}`);
  const max = Math.max(1, ...data.candidates.map((c) => c.visits));
  const field = (name, label, value, min, maxValue) => h('div', {class: 'field'},
    h('label', {for: `q-${name}`}, label),
    h('input', {id: `q-${name}`, name, type: 'number', min, max: maxValue, value, inputmode: 'numeric'}));
  const form = h('form', {class: 'inline', 'aria-label': t('candidates.criteria')},
    field('window', t('candidates.window'), data.windowMonths, 1, 120),
    field('threshold', t('candidates.threshold'), data.threshold, 1, 1000),
    field('top', t('candidates.top'), data.top, 1, 10000),
    h('button', {type: 'submit'}, t('candidates.apply')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams(new FormData(form));
    try { sessionStorage.setItem('pivot.candidates', chosen.toString()); } catch { /* private mode */ }
    ctx.rerender();
  });
  const columns = [
    {label: t('candidates.rank'), cls: 'num', cell: (c) => number(c.rank, lang)},
    {label: t('candidates.client'), cell: (c) => who(ctx, c)},
    {label: t('candidates.visits'), cell: (c) => h('span', {class: 'visits'},
      charts.inlineBar(c.visits, max, {label: t('candidates.visitsBar', {n: c.visits})}), ' ', number(c.visits, lang),
      c.excludedVisits ? h('span', {class: 'muted small'}, ` ${t('candidates.excluded', {n: c.excludedVisits})}`) : null)},
    {label: t('candidates.sites'), cell: (c) => h('ul', {class: 'plain'},
      c.sites.map((s) => h('li', null, `${siteName(ctx, s.site, s.label)} (${s.visits})`)))},
    {label: t('candidates.diagnoses'), cell: (c) => h('ul', {class: 'plain'},
      c.mainDiagnoses.map((d) => h('li', null, d.display ? `${d.display} (${d.code})` : d.code)))},
    {label: t('candidates.lastVisit'), cell: (c) => h('time', {datetime: c.lastVisit}, dateTime(c.lastVisit))},
    {label: t('candidates.rules'), cell: (c) => h('span', {class: 'small'},
      t('candidates.ruleIncluded', {n: c.visits, threshold: data.threshold, months: data.windowMonths}),
      c.exclusions.map((x) => h('span', {class: 'muted'}, h('br'), t('candidates.ruleExcluded',
        {rule: t(`rules.${x.rule}`) === `rules.${x.rule}` ? x.rule : t(`rules.${x.rule}`), n: x.visits}))))},
    {label: t('candidates.action'), cell: (c) => h('button', {type: 'button', class: 'primary enroll',
      onclick: (event) => ctx.enroll(c, event.currentTarget)}, t('candidates.enroll'), sr(` ${c.name}`))},
  ];
  return h('section', null,
    heading(t('candidates.title')),
    h('p', {class: 'lede'}, t('candidates.lede', {start: data.windowStart, end: data.reference,
      threshold: data.threshold, total: data.total})),
    form,
    data.rules.length ? h('p', {class: 'small'}, t('candidates.rulesApplied'), ' ',
      data.rules.map((r) => t(`rules.${r.id}`) === `rules.${r.id}` ? r.description : t(`rules.${r.id}`)).join(' ; '))
      : null,
    data.candidates.length ? table(t('candidates.caption', {n: data.candidates.length}), columns, data.candidates,
      {class: 'data', id: 'candidates-table'}) : h('p', null, t('candidates.empty')));
}

// -- one client --------------------------------------------------------------------------------
function section(id, title, ...body) {
  return h('section', {class: 'card', 'aria-labelledby': id}, h('h2', {id}, title), ...body);
}

function visitsSection(ctx, data) {
  const {t, lang} = ctx;
  const name = (site) => siteName(ctx, site, data.siteLabels[site]);
  const enrolled = data.enrollment ? data.enrollment.start : '';
  const count = data.visits.length;
  const label = t('client.timelineLabel', {n: count, sites: data.sites.length});
  const rows = [...data.visits].reverse();
  return section('visits-h', t('client.visits'),
    h('figure', null, charts.timeline(data.visits, {sites: data.sites, siteName: name, enrolled, label, lang}),
      h('figcaption', null, label, enrolled ? ` ${t('client.timelineEnrolled')}` : '')),
    count ? table(t('client.visitsCaption'), [
      {label: t('client.arrival'), cell: (v) => h('time', {datetime: v.arrival}, dateTime(v.arrival))},
      {label: t('client.site'), cell: (v) => name(v.site)},
      {label: t('client.reason'), cell: (v) => codes(v.reasons.length ? v.reasons : v.diagnoses) || '—'},
      {label: t('client.departure'), cell: (v) => (v.inEr ? h('span', {class: 'badge urgent'}, t('roster.inEr'))
        : dateTime(v.departure) || '—')},
    ], rows, {class: 'data compact'}) : h('p', null, t('client.noVisits')));
}

function outcomeSection(ctx, data) {
  const {t, lang} = ctx;
  const o = data.outcome;
  const monthly = charts.months(data.months, {label: t('client.monthsLabel'), lang});
  if (!o) {
    return section('outcome-h', t('client.monthsTitle'), h('figure', null, monthly,
      h('figcaption', null, t('client.monthsLabel'))));
  }
  const after = o.erVisitsSinceAnnualised;
  const label = t('client.beforeAfterLabel', {before: o.erVisitsBefore,
    after: after === null ? '—' : number(after, lang, 1), days: number(o.followUpDays, lang)});
  return section('outcome-h', t('client.beforeAfter'),
    o.followUpSufficient === false ? h('p', {class: 'muted', id: 'follow-up-note'},
      t('client.insufficientFollowUp', {days: number(o.minFollowUpDays, lang)})) : null,
    h('div', {class: 'charts'},
      h('figure', null, charts.bars([
        {label: t('outcomes.before'), value: o.erVisitsBefore, cls: 'bar-before'},
        {label: t('outcomes.after'), value: after, cls: 'bar-after'}], {label, lang, digits: 1}),
      h('figcaption', null, label)),
      h('figure', {class: 'wide'}, monthly, h('figcaption', null, t('client.monthsLabel')))),
    table(t('client.outcomeCaption'), [
      {label: t('outcomes.measure'), cell: (r) => r[0]},
      {label: t('outcomes.value'), cls: 'num', cell: (r) => r[1]}], [
      [t('outcomes.erBefore'), number(o.erVisitsBefore, lang)],
      [t('outcomes.erSince'), number(o.erVisitsSince, lang)],
      [t('outcomes.erSinceAnnual'), number(after, lang, 1)],
      [t('outcomes.followUp'), number(o.followUpDays, lang)],
      [t('outcomes.hospitalBefore'), number(o.hospitalDaysBefore, lang, 1)],
      [t('outcomes.hospitalSince'), number(o.hospitalDaysSince, lang, 1)]], {class: 'data compact'}));
}

function medsSection(ctx, data) {
  const {t, lang} = ctx;
  const active = data.available ? (data.active.length ? table(t('client.medsCaption'), [
    {label: t('client.medication'), cell: (m) => [m.medication || '—', m.din ? h('span', {class: 'muted small'},
      ` DIN ${m.din}`) : null]},
    {label: t('client.dosage'), cell: (m) => m.dosage || '—'},
    {label: t('client.since'), cell: (m) => date(m.since) || '—'},
    {label: t('client.source'), cell: (m) => m.source || '—'},
  ], data.active, {class: 'data compact'}) : h('p', null, t('client.noMeds'))) : h('p', null, t('client.medsUnavailable'));
  const fills = data.dispensesAvailable ? (data.dispenses.length ? table(t('client.dispensesCaption'), [
    {label: t('client.when'), cell: (d) => dateTime(d.when) || '—'},
    {label: t('client.medication'), cell: (d) => [d.medication || '—', d.din ? h('span', {class: 'muted small'},
      ` DIN ${d.din}`) : null]},
    {label: t('client.quantity'), cls: 'num', cell: (d) => number(d.quantity, lang)},
    {label: t('client.daysSupply'), cls: 'num', cell: (d) => number(d.daysSupply, lang)},
    {label: t('client.pharmacy'), cell: (d) => d.pharmacy || '—'},
  ], data.dispenses.slice(0, 30), {class: 'data compact'}) : h('p', null, t('client.noDispenses')))
    : h('p', null, t('client.medsUnavailable'));
  return section('meds-h', t('client.meds'), active, h('h3', null, t('client.dispenses')), fills);
}

function careSection(ctx, data) {
  const {t} = ctx;
  if (!data.enrollment) {
    return section('care-h', t('client.care'), h('p', null, t('client.notEnrolled')));
  }
  const plan = data.carePlan;
  const role = (code) => (t(`roles.${code}`) === `roles.${code}` ? code : t(`roles.${code}`));
  return section('care-h', t('client.care'),
    h('h3', null, t('client.team')),
    data.careTeam.length ? h('ul', {class: 'plain team'}, data.careTeam.map((p) => h('li', null,
      h('strong', null, role(p.role)), ' — ', p.name || p.reference,
      p.until ? h('span', {class: 'muted small'}, ` (${t('client.until', {date: date(p.until)})})`) : null)))
      : h('p', null, '—'),
    h('h3', null, t('client.plan')),
    plan ? [h('p', null, plan.title, ' ', h('span', {class: 'muted small'}, t(`status.${plan.status}`))),
      plan.goals.length ? [h('h4', null, t('client.goals')), h('ul', null, plan.goals.map((g) =>
        h('li', null, g.text, ' ', h('span', {class: 'muted small'}, t(`status.${g.status}`)))))] : null,
      plan.activities.length ? [h('h4', null, t('client.activities')), h('ul', null, plan.activities.map((a) =>
        h('li', null, a.text)))] : null] : h('p', null, '—'),
    h('h3', null, t('client.consent')),
    h('p', null, data.consent && data.consent.familyInvolvement
      ? t('client.familyYes', {names: data.consent.relatives.join(', ')}) : t('client.familyNo')));
}

export async function client(ctx, id) {
  const {t} = ctx;
  const data = await ctx.api(`api/clients/${enc(id)}`);
  const p = data.patient;
  const years = age(p.birthDate);
  const status = data.enrollment
    ? (data.enrollment.status === 'active' ? t('client.enrolledSince', {date: date(data.enrollment.start)})
      : t('client.enrolledEnded', {date: date(data.enrollment.end)}))
    : t('client.candidate');
  const enrollButton = !data.enrollment || data.enrollment.status !== 'active'
    ? h('button', {type: 'button', class: 'primary enroll', onclick: (event) => ctx.enroll(p, event.currentTarget)},
      t('candidates.enroll'), sr(` ${p.name}`)) : null;
  const alerts = data.alerts.length ? h('ol', {class: 'alert-list'}, data.alerts.map((a) => ctx.alertItem(a)))
    : h('p', null, t('client.noAlerts'));
  return h('article', {class: 'client'},
    heading(p.name || p.id, enrollButton),
    h('p', {class: 'lede'},
      h('span', {class: `badge ${data.enrollment ? data.enrollment.status : 'candidate'}`}, status), ' ',
      [p.nam && `NAM ${p.nam}`, p.birthDate && t('client.born', {date: p.birthDate, years}),
        p.familyDoctors.length ? t('client.familyDoctor', {names: p.familyDoctors.join(', ')}) : '']
        .filter(Boolean).join(' · ')),
    h('div', {class: 'grid'},
      visitsSection(ctx, data),
      outcomeSection(ctx, data),
      section('alerts-h', t('client.alerts'), alerts),
      medsSection(ctx, data),
      careSection(ctx, data)));
}

// -- outcomes ----------------------------------------------------------------------------------
// The method is the operation's ($defi-sante-outcomes): the same clients on both sides (followed at
// least minFollowUpDays), visits per client-year before and since, the change from those two rates.
function firstClientsTable(ctx, rows) {
  const {t, lang} = ctx;
  if (!rows.length) return h('p', {id: 'first-clients'}, t('outcomes.firstNone'));
  return table(t('outcomes.firstCaption'), [
    {label: t('outcomes.firstClients'), cell: (r) => t('outcomes.firstN', {n: r.clients})},
    {label: t('outcomes.yearBefore'), cls: 'num', cell: (r) => number(r.erVisitsYearBefore, lang)},
    {label: t('outcomes.yearAfter'), cls: 'num', cell: (r) => number(r.erVisitsYearAfter, lang)},
  ], rows, {class: 'data compact', id: 'first-clients'});
}

function followUpCell(ctx, r) {
  return r.followUpSufficient ? number(r.followUpDays, ctx.lang)
    : [number(r.followUpDays, ctx.lang), ' ', h('span', {class: 'badge muted'}, ctx.t('outcomes.insufficient'))];
}

export async function outcomes(ctx) {
  const {t, lang} = ctx;
  const data = await ctx.api('api/outcomes');
  const c = data.cohort;
  if (!c.clients) {
    return h('section', null, heading(t('outcomes.title')), h('p', null, t('outcomes.empty')));
  }
  const days = number(c.minFollowUpDays, lang);
  const before = c.erVisitsPerClientYearBefore;
  const after = c.erVisitsPerClientYearSince;
  const change = c.erVisitsChangePercent;
  const shownChange = change === null ? '—' : `${change > 0 ? '+' : change < 0 ? '−' : ''}${number(Math.abs(change), lang)} %`;
  const method = h('p', {class: 'method', id: 'outcomes-method'}, t('outcomes.method', {days}));
  const left = c.clientsInsufficientFollowUp
    ? h('p', {class: 'muted'}, t('outcomes.insufficientCount', {n: c.clientsInsufficientFollowUp, days})) : null;
  const rows = data.clients.filter((r) => r.followUpSufficient)
    .map((r) => ({...r, before: r.erVisitsBefore, after: r.erVisitsSinceAnnualised}));
  const axis = (p) => (p.part ? t(`outcomes.offset0${p.part === 'before' ? 'Before' : 'After'}`)
    : t('outcomes.offset', {n: p.offset > 0 ? `+${p.offset}` : p.offset}));
  const summary = c.clientsCompared
    ? t('outcomes.headline', {n: c.clientsCompared, days, before: number(before, lang, 1),
      after: number(after, lang, 1), change: shownChange})
    : t('outcomes.none', {days});
  const compared = c.clientsCompared ? [
    h('p', {class: 'headline', id: 'cohort-headline'}, h('span', {class: 'big'}, number(before, lang, 1)),
      h('span', {class: 'arrow', 'aria-hidden': 'true'}, ' → '), sr(` ${t('outcomes.to')} `),
      h('span', {class: 'big after'}, number(after, lang, 1)),
      h('span', {class: 'change'}, ` ${t('outcomes.perClientYear')} (${shownChange})`)),
    h('div', {class: 'charts'},
      h('figure', null, charts.bars([
        {label: t('outcomes.before'), value: before, cls: 'bar-before'},
        {label: t('outcomes.after'), value: after, cls: 'bar-after'}], {label: summary, lang, digits: 1}),
      h('figcaption', null, t('outcomes.barsCaption', {n: c.clientsCompared}))),
      h('figure', {class: 'wide'}, charts.relative(data.relative, {label: t('outcomes.relativeLabel'), lang, axis}),
        h('figcaption', null, t('outcomes.relativeLabel'))))] : [];
  return h('section', null,
    heading(t('outcomes.title')),
    h('p', {class: 'lede', id: 'cohort-summary'}, summary),
    left, ...compared, method,
    h('h2', null, t('outcomes.firstTitle')),
    firstClientsTable(ctx, data.firstClients || []),
    h('h2', null, t('outcomes.perClient')),
    rows.length ? h('figure', null, charts.dumbbells(rows, {label: t('outcomes.dumbbellLabel'), lang,
      name: (r) => r.name || r.id}), h('figcaption', null, t('outcomes.dumbbellLabel'))) : null,
    table(t('outcomes.tableCaption'), [
      {label: t('roster.client'), cell: (r) => clientLink(r)},
      {label: t('outcomes.enrolled'), cell: (r) => date(r.enrolled)},
      {label: t('outcomes.followUp'), cls: 'num', cell: (r) => followUpCell(ctx, r)},
      {label: t('outcomes.erBefore'), cls: 'num', cell: (r) => number(r.erVisitsBefore, lang)},
      {label: t('outcomes.erSince'), cls: 'num', cell: (r) => number(r.erVisitsSince, lang)},
      {label: t('outcomes.erSinceAnnual'), cls: 'num', cell: (r) => number(r.erVisitsSinceAnnualised, lang, 1)},
    ], data.clients, {class: 'data', id: 'outcomes-table'}));
}
