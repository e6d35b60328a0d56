// Feed health, for hospital IT: per sender, counts, ACKs, latency, silence; unknown triggers.
import {h, sr, table, dateTime, number} from './dom.js';
import * as charts from './charts.js';

function ago(ctx, seconds) {
  const {t, lang} = ctx;
  if (seconds === null || seconds === undefined) return t('feeds.never');
  if (seconds < 90) return t('feeds.agoS', {n: number(Math.round(seconds), lang)});
  if (seconds < 5400) return t('feeds.agoM', {n: number(Math.round(seconds / 60), lang)});
  if (seconds < 129600) return t('feeds.agoH', {n: number(Math.round(seconds / 3600), lang)});
  return t('feeds.agoD', {n: number(Math.round(seconds / 86400), lang)});
}

function counts(ctx, c) {
  const {lang, t} = ctx;
  return h('span', {class: 'counts'},
    h('strong', null, number(c.messages, lang)),
    h('span', {class: 'ack aa'}, `AA ${number(c.AA, lang)}`), ' ',
    h('span', {class: `ack ae ${c.AE ? 'warn' : ''}`}, `AE ${number(c.AE, lang)}`), ' ',
    h('span', {class: `ack ar ${c.AR ? 'warn' : ''}`}, `AR ${number(c.AR, lang)}`),
    c.deadletters ? h('span', {class: 'small'}, h('br'), t('feeds.deadShort', {n: number(c.deadletters, lang)})) : null);
}

function senderName(row) {
  return row.label || (row.siteLabel ? `${row.siteLabel} (${row.application})` : row.sender);
}

export async function feeds(ctx) {
  const {t, lang} = ctx;
  const data = await ctx.api('api/feeds');
  const silent = data.senders.filter((s) => s.silent);
  const columns = [
    {label: t('feeds.sender'), cell: (s) => [h('strong', null, senderName(s)), h('br'),
      h('code', {class: 'small'}, s.sender)]},
    {label: t('feeds.last'), cell: (s) => [
      s.silent ? h('span', {class: 'badge silent'}, h('span', {'aria-hidden': 'true'}, '⚠ '), t('feeds.silent')) : null,
      s.silent ? ' ' : null,
      h('span', null, ago(ctx, s.lastMessageAgeSeconds)), h('br'),
      h('span', {class: 'muted small'}, t('feeds.threshold', {n: number(s.silentAfterMinutes, lang, 2)}))]},
    {label: t('feeds.hour'), cell: (s) => counts(ctx, s.hour)},
    {label: t('feeds.day'), cell: (s) => counts(ctx, s.day)},
    {label: t('feeds.latency'), cell: (s) => (s.latencyMs.count
      ? [`p50 ${number(s.latencyMs.p50, lang)} ms`, h('br'), h('span', {class: 'small'},
        `p95 ${number(s.latencyMs.p95, lang)} ms · max ${number(s.latencyMs.max, lang)} ms`)] : '—')},
    {label: t('feeds.perHour'), cell: (s) => charts.sparkline(s.hourly,
      {label: t('feeds.sparkLabel', {name: senderName(s), n: number(s.day.messages, lang)})})},
    {label: t('feeds.unknown'), cls: 'num', cell: (s) => (s.unknownTriggers
      ? h('a', {href: '#quarantine-h', class: 'badge warn'}, number(s.unknownTriggers, lang)) : '0')},
  ];
  const q = data.quarantine;
  // refreshed every 30 s, unless the user is working in the page (a redraw would lose the focus)
  ctx.every(30000, () => { if (!document.getElementById('main').contains(document.activeElement)) ctx.rerender(); });
  return h('section', null,
    h('header', {class: 'page-head'}, h('h1', {tabindex: '-1'}, t('feeds.title')),
      h('button', {type: 'button', class: 'quiet', onclick: () => ctx.rerender()}, t('common.refresh'))),
    h('p', {class: 'lede'}, t('feeds.lede', {when: dateTime(data.now)})),
    h('ul', {class: 'stats'},
      h('li', null, h('strong', null, number(data.senders.length, lang)), ' ', t('feeds.statSenders')),
      h('li', {class: silent.length ? 'warn' : ''}, h('strong', null, number(silent.length, lang)), ' ',
        t('feeds.statSilent')),
      h('li', null, h('strong', null, number(data.deadletters.day, lang)), ' ', t('feeds.statDead')),
      h('li', null, h('strong', null, number(q.items.length, lang)), ' ', t('feeds.statQuarantine'))),
    silent.length ? h('p', {class: 'warning', id: 'silent-warning'}, h('span', {'aria-hidden': 'true'}, '⚠ '),
      t('feeds.silentWarning', {names: silent.map(senderName).join(', ')})) : null,
    data.truncated ? h('p', {class: 'small muted'}, t('feeds.truncated')) : null,
    data.senders.length ? table(t('feeds.caption'), columns, data.senders, {class: 'data', id: 'feeds-table'})
      : h('p', null, t('feeds.empty')),
    h('section', {'aria-labelledby': 'quarantine-h', class: 'card'},
      h('h2', {id: 'quarantine-h'}, t('feeds.quarantine')),
      h('p', {class: 'small'}, t('feeds.quarantineHelp')),
      q.groups.length ? [
        table(t('feeds.groupsCaption'), [
          {label: t('feeds.messageType'), cell: (g) => h('code', null, g.messageType || '?')},
          {label: t('feeds.sender'), cell: (g) => g.label || g.sender},
          {label: t('feeds.version'), cell: (g) => g.version || '—'},
          {label: t('feeds.count'), cls: 'num', cell: (g) => number(g.count, lang)},
          {label: t('feeds.lastAt'), cell: (g) => dateTime(g.lastAt)},
        ], q.groups, {class: 'data compact', id: 'quarantine-groups'}),
        h('details', null, h('summary', null, t('feeds.items', {n: q.items.length})),
          table(t('feeds.itemsCaption'), [
            {label: t('feeds.id'), cell: (i) => h('code', null, i.id)},
            {label: t('feeds.at'), cell: (i) => dateTime(i.at)},
            {label: t('feeds.sender'), cell: (i) => i.sender},
            {label: 'MSH-10', cell: (i) => h('code', null, i.controlId)},
            {label: t('feeds.messageType'), cell: (i) => h('code', null, i.messageType || '?')},
            {label: t('feeds.reason'), cell: (i) => [i.reason, sr(' '), h('span', {class: 'muted small'},
              ` (${i.hl7Code})`)]},
          ], q.items, {class: 'data compact'}))]
        : h('p', null, t('feeds.noQuarantine'))));
}
