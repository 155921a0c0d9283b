// The dashboard page: static HTML, one script and one stylesheet, all served from the dashboard's own
// origin (the CSP forbids inline code and any other origin). The script draws the map from /api/map,
// fills the panels from the JSON endpoints, pages the node list, and follows /events (server-sent
// events) to update without a reload. Everything from the server is inserted as text, never as HTML.

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>terroir · fleet dashboard</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header>
  <h1>terroir</h1>
  <span id="trust-domain" class="td"></span>
  <span id="totals" class="totals"></span>
  <span id="live" class="live" data-state="connecting">connecting…</span>
</header>
<main>
  <section class="map-panel">
    <h2>Where the fleet is <small>coarse claims only: country and region</small></h2>
    <svg id="map" role="img" aria-label="World map of attested nodes by country"></svg>
    <div id="legend" class="legend"></div>
  </section>
  <section class="side">
    <h2>Location policies</h2>
    <table id="policies"><thead><tr><th>Policy</th><th>Nodes meeting it</th></tr></thead><tbody></tbody></table>
    <h2>Recent refusals</h2>
    <ol id="refusals" class="feed"></ol>
    <h2>Live events</h2>
    <ol id="events" class="feed"></ol>
  </section>
  <section class="nodes-panel">
    <h2>Nodes <span id="node-count"></span></h2>
    <div class="controls">
      <input id="filter" type="search" placeholder="Filter: SPIFFE ID, country, region, policy, status" autocomplete="off">
      <button id="clear-country" type="button" hidden></button>
      <button id="prev" type="button">‹ Prev</button>
      <span id="page-info"></span>
      <button id="next" type="button">Next ›</button>
    </div>
    <table id="nodes">
      <thead><tr><th>SPIFFE ID</th><th>Method</th><th>Status</th><th>Keylime</th><th>Last attestation</th><th>Country</th><th>Region</th><th>Policies met</th><th>Assurance</th><th>SVIDs</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
</body>
</html>
`;

export const PAGE_JS = `'use strict';
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var SVGNS = 'http://www.w3.org/2000/svg';
  var PAGE = 100;
  var LEVELS = ['self-reported', 'operator-witnessed', 'latency-bounded'];
  var COLORS = { 'self-reported': [37, 99, 235], 'operator-witnessed': [13, 148, 136], 'latency-bounded': [22, 163, 74], unknown: [100, 116, 139] };
  var state = { offset: 0, q: '', country: '', total: 0, lastId: 0 };
  var paths = new Map();
  var names = new Map();

  function text(e, s) { e.textContent = s === null || s === undefined || s === '' ? '—' : String(s); return e; }
  function el(tag, cls, s) { var e = document.createElement(tag); if (cls) e.className = cls; if (s !== undefined) text(e, s); return e; }
  function when(iso) { return iso ? iso.replace('T', ' ').replace(/\\.\\d+Z$/, 'Z') : '—'; }
  function getJson(path) {
    return fetch(path, { headers: { accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) throw new Error(path + ' answered ' + r.status);
      return r.json();
    });
  }

  function drawMap(m) {
    var svg = $('map');
    svg.setAttribute('viewBox', '0 0 ' + m.width + ' ' + m.height);
    var frag = document.createDocumentFragment();
    m.countries.forEach(function (c) {
      var p = document.createElementNS(SVGNS, 'path');
      p.setAttribute('d', c.d);
      p.setAttribute('class', 'country');
      p.setAttribute('data-code', c.code);
      var t = document.createElementNS(SVGNS, 'title');
      t.textContent = c.name + ' (' + c.code + '): no attested node';
      p.appendChild(t);
      p.addEventListener('click', function () { setCountry(c.code); });
      frag.appendChild(p);
      paths.set(c.code, p);
      names.set(c.code, c.name);
    });
    svg.appendChild(frag);
    var legend = $('legend');
    LEVELS.forEach(function (l) {
      var k = el('span', 'key');
      var sw = el('span', 'swatch');
      sw.setAttribute('data-level', l);
      k.appendChild(sw);
      k.appendChild(document.createTextNode(' ' + l));
      legend.appendChild(k);
    });
    legend.appendChild(el('span', 'hint', 'darker = more nodes; click a country to list its nodes'));
  }

  function bestLevel(a) { var b = 'unknown'; LEVELS.forEach(function (l) { if (a[l]) b = l; }); return b; }

  function shade(summary) {
    var counts = Object.keys(summary.countries).map(function (k) { return summary.countries[k].nodes; });
    var max = Math.max.apply(null, [1].concat(counts));
    paths.forEach(function (p, code) {
      var s = summary.countries[code];
      var title = p.firstChild;
      if (!s) {
        p.removeAttribute('fill'); p.setAttribute('class', 'country');
        p.removeAttribute('data-nodes'); p.removeAttribute('data-assurance');
        title.textContent = names.get(code) + ' (' + code + '): no attested node';
        return;
      }
      var level = bestLevel(s.assurance);
      var c = COLORS[level];
      var alpha = 0.4 + 0.6 * Math.log(1 + s.nodes) / Math.log(1 + max);
      p.setAttribute('fill', 'rgba(' + c[0] + ',' + c[1] + ',' + c[2] + ',' + alpha.toFixed(2) + ')');
      p.setAttribute('class', 'country attested');
      p.setAttribute('data-nodes', String(s.nodes));
      p.setAttribute('data-assurance', level);
      var parts = Object.keys(s.assurance).map(function (k) { return s.assurance[k] + ' ' + k; });
      title.textContent = names.get(code) + ' (' + code + '): ' + s.nodes + ' node(s), ' + parts.join(', ');
    });
  }

  function renderSummary(s) {
    text($('trust-domain'), s.trustDomain);
    text($('totals'), s.nodes.total + ' nodes · ' + s.nodes.withClaims + ' placed · ' + s.nodes.withoutClaims + ' without location · ' + s.nodes.banned + ' banned');
    var body = $('policies').tBodies[0];
    var frag = document.createDocumentFragment();
    s.policies.forEach(function (p) {
      var tr = el('tr');
      tr.setAttribute('data-policy', p.name);
      var name = el('td', null, p.name);
      if (p.isDefault) name.appendChild(el('span', 'badge', 'default'));
      tr.appendChild(name);
      tr.appendChild(el('td', 'num', p.nodes));
      frag.appendChild(tr);
    });
    if (s.policies.length === 0) { var tr = el('tr'); var td = el('td', 'empty', 'no location policies (Unified Identity is off)'); td.colSpan = 2; tr.appendChild(td); frag.appendChild(tr); }
    body.replaceChildren(frag);
    shade(s);
  }

  function renderNodes(page) {
    state.total = page.total;
    var body = $('nodes').tBodies[0];
    var frag = document.createDocumentFragment();
    page.nodes.forEach(function (n) {
      var tr = el('tr');
      tr.setAttribute('data-spiffe-id', n.spiffeId);
      tr.setAttribute('data-status', n.status);
      tr.appendChild(el('td', 'id', n.spiffeId));
      tr.appendChild(el('td', null, n.method));
      tr.appendChild(el('td', 'status ' + n.status, n.status));
      tr.appendChild(el('td', null, n.keylime));
      tr.appendChild(el('td', 'time', when(n.lastAttestation)));
      tr.appendChild(el('td', 'country', n.country));
      tr.appendChild(el('td', null, n.region));
      tr.appendChild(el('td', 'policies', n.policies.join(', ')));
      tr.appendChild(el('td', null, n.assurance));
      tr.appendChild(el('td', 'num', n.svids));
      frag.appendChild(tr);
    });
    if (page.nodes.length === 0) { var tr = el('tr'); var td = el('td', 'empty', 'no attested node matches'); td.colSpan = 10; tr.appendChild(td); frag.appendChild(tr); }
    body.replaceChildren(frag);
    var last = Math.min(page.total, page.offset + page.nodes.length);
    text($('node-count'), '(' + page.total + (state.q || state.country ? ' matching' : '') + ')');
    text($('page-info'), page.total === 0 ? '0 of 0' : (page.offset + 1) + '–' + last + ' of ' + page.total);
    $('prev').disabled = page.offset === 0;
    $('next').disabled = last >= page.total;
    var cc = $('clear-country');
    cc.hidden = !state.country;
    cc.textContent = state.country ? 'Country ' + state.country + ' ×' : '';
  }

  function eventItem(e) {
    var li = el('li', 'ev ' + e.kind);
    li.setAttribute('data-kind', e.kind);
    li.setAttribute('data-event-id', String(e.id));
    li.appendChild(el('span', 'kind', e.kind));
    li.appendChild(el('time', null, when(e.time)));
    li.appendChild(el('span', 'who', e.subject || e.source || 'unknown caller'));
    if (e.method) li.appendChild(el('span', 'method', e.method));
    if (e.reason) li.appendChild(el('div', 'reason', e.reason));
    return li;
  }
  function prepend(list, item, max) {
    list.insertBefore(item, list.firstChild);
    while (list.children.length > max) list.removeChild(list.lastChild);
    var empty = list.querySelector('.empty');
    if (empty) empty.remove();
  }
  function renderList(list, items, emptyText) {
    var frag = document.createDocumentFragment();
    items.forEach(function (e) {
      frag.appendChild(eventItem(e));
      if (e.id > state.lastId) state.lastId = e.id;
    });
    if (items.length === 0) frag.appendChild(el('li', 'empty', emptyText));
    list.replaceChildren(frag);
  }

  function nodesQuery() {
    var p = new URLSearchParams({ offset: String(state.offset), limit: String(PAGE) });
    if (state.q) p.set('q', state.q);
    if (state.country) p.set('country', state.country);
    return '/api/nodes?' + p.toString();
  }
  function loadNodes() { return getJson(nodesQuery()).then(renderNodes); }
  function setCountry(code) { state.country = code; state.offset = 0; loadNodes(); }

  var refreshTimer = null;
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      Promise.all([getJson('/api/summary').then(renderSummary), loadNodes()]).catch(showError);
    }, 200);
  }
  function showError(err) { var live = $('live'); live.setAttribute('data-state', 'error'); text(live, String(err.message || err)); }

  function follow() {
    // Events after the newest one the lists already show are replayed first: none falls in between.
    var es = new EventSource('/events?after=' + state.lastId);
    var live = $('live');
    es.onopen = function () { live.setAttribute('data-state', 'live'); text(live, 'live'); };
    es.onerror = function () { live.setAttribute('data-state', 'reconnecting'); text(live, 'reconnecting…'); };
    ['attested', 'refused', 'revoked', 'withdrawn', 'untrusted', 'relocated'].forEach(function (kind) {
      es.addEventListener(kind, function (m) {
        var e = JSON.parse(m.data);
        if (e.id <= state.lastId) return;
        state.lastId = e.id;
        prepend($('events'), eventItem(e), 50);
        if (kind !== 'attested' && kind !== 'relocated') prepend($('refusals'), eventItem(e), 50);
        if (kind !== 'refused') scheduleRefresh(); // a plain refusal changes no node
      });
    });
  }

  function wire() {
    var t = null;
    $('filter').addEventListener('input', function (ev) {
      clearTimeout(t);
      t = setTimeout(function () { state.q = ev.target.value.trim(); state.offset = 0; loadNodes(); }, 200);
    });
    $('prev').addEventListener('click', function () { state.offset = Math.max(0, state.offset - PAGE); loadNodes(); });
    $('next').addEventListener('click', function () { state.offset += PAGE; loadNodes(); });
    $('clear-country').addEventListener('click', function () { setCountry(''); });
  }

  wire();
  Promise.all([getJson('/api/map'), getJson('/api/summary'), getJson(nodesQuery()), getJson('/api/refusals?limit=50'), getJson('/api/events?limit=50')])
    .then(function (r) {
      drawMap(r[0]);
      renderSummary(r[1]);
      renderNodes(r[2]);
      renderList($('refusals'), r[3].refusals, 'none since the server started');
      renderList($('events'), r[4].events, 'none since the server started');
      // First render done: tests and the benchmark wait for this mark.
      document.body.setAttribute('data-ready', '1');
      if (window.performance && performance.mark) performance.mark('dashboard-ready');
      follow();
    })
    .catch(showError);
})();
`;

export const PAGE_CSS = `:root { --bg: #f6f7f9; --panel: #fff; --ink: #1f2933; --muted: #66788a; --line: #e1e5ea; --land: #dfe4ea; --border: #b8c2cc; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--ink); }
header { display: flex; align-items: baseline; gap: 1rem; padding: .6rem 1.2rem; background: #1f2933; color: #fff; }
header h1 { margin: 0; font-size: 1.2rem; letter-spacing: .04em; }
header .td { font-family: ui-monospace, monospace; color: #cbd2d9; }
header .totals { color: #cbd2d9; flex: 1; }
.live { padding: .1rem .6rem; border-radius: 1rem; background: #52606d; font-size: .8rem; }
.live[data-state=live] { background: #16a34a; }
.live[data-state=reconnecting], .live[data-state=error] { background: #b91c1c; }
main { display: grid; grid-template-columns: minmax(0, 2.2fr) minmax(18rem, 1fr); gap: 1rem; padding: 1rem 1.2rem; align-items: start; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1rem; min-width: 0; }
.nodes-panel { grid-column: 1 / -1; }
h2 { font-size: 1rem; margin: .2rem 0 .6rem; }
h2 small { font-weight: normal; color: var(--muted); margin-left: .5rem; }
.side h2 + * { margin-bottom: 1rem; }
#map { width: 100%; height: auto; display: block; background: #eef3f8; border-radius: 4px; }
#map .country { stroke: var(--border); stroke-width: .4; cursor: pointer; }
#map .country:not([fill]) { fill: var(--land); }
#map .country.attested { stroke: #1f2933; stroke-width: .8; }
#map .country:hover { stroke: #000; stroke-width: 1.2; }
.legend { display: flex; flex-wrap: wrap; gap: 1rem; margin-top: .4rem; color: var(--muted); font-size: .85rem; }
.swatch { display: inline-block; width: .9rem; height: .9rem; border-radius: 2px; vertical-align: -2px; }
.swatch[data-level=self-reported] { background: #2563eb; }
.swatch[data-level=operator-witnessed] { background: #0d9488; }
.swatch[data-level=latency-bounded] { background: #16a34a; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id { font-family: ui-monospace, monospace; font-size: .82rem; word-break: break-all; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.status.banned, td.status.expired { color: #b91c1c; font-weight: 600; }
td.status.active { color: #15803d; }
td.empty, li.empty { color: var(--muted); font-style: italic; }
.badge { margin-left: .4rem; padding: 0 .4rem; border-radius: .6rem; background: #e0e7ff; color: #3730a3; font-size: .75rem; }
.feed { list-style: none; margin: 0; padding: 0; max-height: 16rem; overflow: auto; }
.feed li { padding: .35rem 0; border-bottom: 1px solid var(--line); }
.feed .kind { display: inline-block; min-width: 6.4rem; margin-right: .3rem; font-weight: 600; text-transform: uppercase; font-size: .75rem; }
.feed .ev.attested .kind, .feed .ev.relocated .kind { color: #15803d; }
.feed .ev.refused .kind, .feed .ev.revoked .kind, .feed .ev.withdrawn .kind, .feed .ev.untrusted .kind { color: #b91c1c; }
.feed time { color: var(--muted); font-size: .8rem; margin-right: .5rem; font-variant-numeric: tabular-nums; }
.feed .who { font-family: ui-monospace, monospace; font-size: .8rem; word-break: break-all; }
.feed .method { margin-left: .4rem; color: var(--muted); font-size: .8rem; }
.feed .reason { color: #7f1d1d; font-size: .85rem; margin-top: .15rem; }
.controls { display: flex; gap: .5rem; align-items: center; margin-bottom: .5rem; }
.controls input { flex: 1; padding: .35rem .5rem; border: 1px solid var(--border); border-radius: 4px; font: inherit; }
.controls button { padding: .3rem .7rem; border: 1px solid var(--border); background: #fff; border-radius: 4px; font: inherit; cursor: pointer; }
.controls button:disabled { opacity: .4; cursor: default; }
#page-info { color: var(--muted); font-variant-numeric: tabular-nums; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
`;
