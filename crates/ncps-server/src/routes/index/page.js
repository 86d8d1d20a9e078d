'use strict';
// The status page: fetches this server's figures as JSON every few seconds and draws them.
// Everything is built with DOM calls (text, never markup), so nothing a figure holds (an
// upstream's error message) can become markup. Each chart keeps what it plots in data-x and
// data-y attributes, which the browser test reads back.
(() => {
  const POLL_MS = 5000;
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  let windowName = '1h';
  let timer = null;
  let updates = 0;
  let last = null;

  // ---- formatting ----
  const UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  function scaled(v) {
    const a = Math.abs(v);
    return v.toFixed(a >= 100 || a === 0 ? 0 : a >= 10 ? 1 : 2);
  }
  function bytes(n) {
    if (n == null || !isFinite(n)) return '–';
    let i = 0;
    let v = n;
    while (Math.abs(v) >= 1000 && i < UNITS.length - 1) { v /= 1000; i++; }
    return (i === 0 ? String(Math.round(v)) : scaled(v)) + ' ' + UNITS[i];
  }
  function count(n) {
    if (n == null || !isFinite(n)) return '–';
    if (Math.abs(n) >= 1e6) return scaled(n / 1e6) + 'M';
    if (Math.abs(n) >= 1e4) return scaled(n / 1e3) + 'k';
    return Number.isInteger(n) ? n.toLocaleString('en-US') : scaled(n);
  }
  const percent = (x) => (x == null || !isFinite(x) ? '–' : (x * 100).toFixed(1) + ' %');
  function ms(x) {
    if (x == null) return '–';
    if (x >= 1000) return (x / 1000).toFixed(2) + ' s';
    return (x >= 10 || Number.isInteger(x) ? Math.round(x) : x.toFixed(1)) + ' ms';
  }
  function span(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return s + ' s';
    if (s < 5400) return Math.round(s / 60) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1).replace(/\.0$/, '') + ' h';
    return Math.round(s / 86400) + ' d';
  }
  const plural = (n, noun) => `${n} ${noun}${n === 1 ? '' : 's'}`;
  const ago = (unixSeconds, nowMs) => span(nowMs / 1000 - unixSeconds) + ' ago';
  function clock(atMs, seconds) {
    const d = new Date(atMs);
    const two = (n) => String(n).padStart(2, '0');
    const hm = two(d.getHours()) + ':' + two(d.getMinutes());
    return seconds ? hm + ':' + two(d.getSeconds()) : hm;
  }

  // ---- DOM helpers ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  const text = (id, value) => { $(id).textContent = value; };

  // ---- series from the history columns ----
  // Rates per second between consecutive samples, placed at the later sample.
  function rates(h, column) {
    const out = [];
    for (let i = 1; i < h.at.length; i++) {
      const dt = (h.at[i] - h.at[i - 1]) / 1000;
      out.push(dt > 0 ? (column[i] - column[i - 1]) / dt : 0);
    }
    return out;
  }
  const change = (column) => (column.length ? column[column.length - 1] - column[0] : 0);
  function lookups(h, kind) {
    const total = h[kind + '_hits'].map((v, i) =>
      v + h[kind + '_misses'][i] + h[kind + '_not_found'][i] + h[kind + '_errors'][i]);
    return { hits: h[kind + '_hits'], total };
  }
  // Hit rate per interval, in percent; null where there was no lookup.
  function hitRates(h, kind) {
    const { hits, total } = lookups(h, kind);
    const out = [];
    for (let i = 1; i < h.at.length; i++) {
      const n = total[i] - total[i - 1];
      out.push(n > 0 ? (100 * (hits[i] - hits[i - 1])) / n : null);
    }
    return out;
  }

  // ---- charts ----
  // Drawn at the container's own width, so text keeps its real size.
  const H = 180, LEFT = 64, RIGHT = 10, TOP = 8, BOTTOM = 22;
  function niceStep(max) {
    const raw = max / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 2.5 ? 2.5 : m <= 5 ? 5 : 10) * p;
  }
  // spec: { x: [ms], start: the sample before x[0] (rate charts), series: [{ key, label,
  // color, values }], format, limit, fixedMax, empty }
  function drawChart(container, spec) {
    const W = Math.max(300, container.clientWidth || 600);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' });
    root.dataset.x = spec.x.join(',');
    if (spec.start != null) root.dataset.start = spec.start;
    const all = spec.series.flatMap((s) => s.values.filter((v) => v != null && isFinite(v)));
    let max = spec.fixedMax || Math.max(0, ...all, spec.limit || 0);
    if (max <= 0) max = 1;
    const step = spec.fixedMax ? spec.fixedMax / 4 : niceStep(max);
    const top = spec.fixedMax || Math.ceil(max / step) * step;
    const x0 = spec.x.length ? spec.x[0] : Date.now() - 3600e3;
    const x1 = spec.x.length > 1 ? spec.x[spec.x.length - 1] : x0 + 1;
    const px = (x) => LEFT + ((x - x0) / (x1 - x0 || 1)) * (W - LEFT - RIGHT);
    const py = (y) => TOP + (1 - y / top) * (H - TOP - BOTTOM);
    for (let y = 0; y <= top + step / 2; y += step) {
      root.append(svg('line', { class: 'grid', x1: LEFT, x2: W - RIGHT, y1: py(y), y2: py(y) }));
      const label = svg('text', { class: 'axis', x: LEFT - 6, y: py(y) + 3, 'text-anchor': 'end' });
      label.textContent = spec.format(y);
      root.append(label);
    }
    const seconds = x1 - x0 < 600e3;
    for (const [x, anchor] of [[x0, 'start'], [(x0 + x1) / 2, 'middle'], [x1, 'end']]) {
      const label = svg('text', { class: 'axis', x: px(x), y: H - 6, 'text-anchor': anchor });
      label.textContent = spec.x.length ? clock(x, seconds) : '';
      root.append(label);
    }
    if (spec.limit) {
      root.append(svg('line', { class: 'limit', x1: LEFT, x2: W - RIGHT, y1: py(spec.limit), y2: py(spec.limit) }));
    }
    const legend = el('div', { class: 'legend' });
    for (const s of spec.series) {
      let d = '';
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          root.append(svg('circle', { cx: run[0][0], cy: run[0][1], r: 2.2, fill: s.color }));
        }
        run = [];
      };
      s.values.forEach((v, i) => {
        if (v == null || !isFinite(v)) { flush(); return; }
        const point = [px(spec.x[i]).toFixed(1), py(v).toFixed(1)];
        d += (run.length ? 'L' : 'M') + point[0] + ' ' + point[1];
        run.push(point);
      });
      flush();
      const path = svg('path', { class: 'series', d, stroke: s.color });
      path.dataset.series = s.key;
      path.dataset.y = s.values.map((v) => (v == null ? '' : v)).join(',');
      root.append(path);
      const last = [...s.values].reverse().find((v) => v != null);
      const item = el('span', {}, s.label + ' ', el('b', {}, last == null ? '–' : spec.format(last)));
      item.style.setProperty('--swatch', s.color);
      legend.append(item);
    }
    if (!all.length) {
      const empty = svg('text', { class: 'empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' });
      empty.textContent = spec.empty || 'nothing yet';
      root.append(empty);
    }
    container.replaceChildren(root, legend);
  }
  const color = (n) => `var(--c${(n % 6) + 1})`;

  // ---- rendering ----
  function render(j) {
    const s = j.ncps;
    const h = j.history;
    const now = s.now_ms;
    const windowLabel = windowName === '1h' ? 'last hour' : 'last 24 hours';
    const kept = h.at.length > 1 ? span((h.at[h.at.length - 1] - h.at[0]) / 1000) : '0 s';
    document.title = 'ncps · ' + j.hostname;
    text('hostname', j.hostname);
    text('about', `ncps ${s.version} · up ${span(now / 1000 - s.started_at)} · showing the ${windowLabel} (${kept} kept)`);

    const narinfo = lookups(h, 'narinfo');
    const nar = lookups(h, 'nar');
    const narinfoLookups = change(narinfo.total);
    const narinfoHits = change(narinfo.hits);
    text('tile-hit-rate', narinfoLookups ? percent(narinfoHits / narinfoLookups) : '–');
    text('tile-hit-rate-sub', `${count(narinfoHits)} of ${count(narinfoLookups)} lookups, ${windowLabel}`);
    $('tile-hit-rate').dataset.value = narinfoLookups ? narinfoHits / narinfoLookups : '';
    const requests = narinfoLookups + change(nar.total);
    text('tile-requests', count(requests));
    text('tile-requests-sub', `${count(narinfoLookups)} narinfo · ${count(change(nar.total))} NAR, ${windowLabel}`);
    text('tile-served', bytes(change(h.bytes_served)));
    $('tile-served').dataset.value = change(h.bytes_served);
    text('tile-served-sub', `${bytes(s.bytes_served)} since start`);
    text('tile-fetched', bytes(change(h.bytes_fetched)));
    $('tile-fetched').dataset.value = change(h.bytes_fetched);
    text('tile-fetched-sub', `${bytes(s.bytes_fetched)} since start`);
    const st = s.storage;
    text('tile-stored', st ? bytes(st.stored_bytes) : '–');
    $('tile-stored').dataset.value = st ? st.stored_bytes : '';
    const bar = $('tile-stored-bar');
    if (st && st.max_size) {
      const used = st.stored_bytes / st.max_size;
      bar.style.width = Math.min(100, used * 100).toFixed(1) + '%';
      bar.classList.toggle('full', used >= 0.9);
      text('tile-stored-sub', `of ${bytes(st.max_size)} (${percent(used)}) · ${count(st.narinfos)} narinfos`);
    } else {
      bar.style.width = '0';
      text('tile-stored-sub', st ? `no size limit · ${count(st.narinfos)} narinfos, ${count(st.nars)} NARs` : 'not measured yet');
    }
    text('tile-downloads', count(s.downloads_in_flight));
    $('tile-downloads').dataset.value = s.downloads_in_flight;
    text('tile-downloads-sub', `peak ${count(Math.max(0, ...h.downloads_in_flight))}, ${windowLabel}`);

    const between = h.at.slice(1);
    const start = h.at[0];
    const perSecond = (v) => count(v) + '/s';
    drawChart($('chart-requests'), {
      x: between, start, format: perSecond, empty: 'no requests yet',
      series: [
        { key: 'narinfo_hits', label: 'narinfo hits', color: color(0), values: rates(h, h.narinfo_hits) },
        { key: 'narinfo_misses', label: 'narinfo misses', color: color(1), values: rates(h, h.narinfo_misses) },
        { key: 'narinfo_not_found', label: 'not found', color: color(5), values: rates(h, h.narinfo_not_found) },
        { key: 'nar_hits', label: 'NAR hits', color: color(3), values: rates(h, h.nar_hits) },
        { key: 'nar_misses', label: 'NAR misses', color: color(2), values: rates(h, h.nar_misses) },
        { key: 'errors', label: 'errors', color: color(4), values: rates(h, h.narinfo_errors.map((v, i) => v + h.nar_errors[i])) },
      ],
    });
    drawChart($('chart-hit-rate'), {
      x: between, start, format: (v) => Math.round(v) + ' %', fixedMax: 100, empty: 'no lookups yet',
      series: [
        { key: 'narinfo_hit_rate', label: 'narinfo', color: color(0), values: hitRates(h, 'narinfo') },
        { key: 'nar_hit_rate', label: 'NAR', color: color(3), values: hitRates(h, 'nar') },
      ],
    });
    drawChart($('chart-bytes'), {
      x: between, start, format: (v) => bytes(v) + '/s', empty: 'no NAR bytes yet',
      series: [
        { key: 'bytes_served', label: 'served', color: color(0), values: rates(h, h.bytes_served) },
        { key: 'bytes_fetched', label: 'fetched upstream', color: color(1), values: rates(h, h.bytes_fetched) },
      ],
    });
    drawChart($('chart-stored'), {
      x: h.at, format: bytes, limit: st && st.max_size, empty: 'not measured yet',
      series: [{ key: 'stored_bytes', label: st && st.max_size ? `stored (limit ${bytes(st.max_size)}, dashed)` : 'stored', color: color(2), values: h.stored_bytes }],
    });
    drawChart($('chart-downloads'), {
      x: h.at, format: count,
      series: [{ key: 'downloads_in_flight', label: 'downloads', color: color(3), values: h.downloads_in_flight }],
    });
    drawChart($('chart-latency'), {
      x: h.at, format: ms, empty: 'no upstream lookups yet',
      series: Object.entries(h.upstream_latency_ms).map(([url, values], i) =>
        ({ key: 'latency:' + url, label: url, color: color(i), values })),
    });

    renderUpstreams(s.upstreams, now);
    renderJobs(s.jobs, now);
    renderChunks(s.chunks);
    text('nix-conf', `substituters = ${location.origin}\ntrusted-public-keys = ${j.publicKey}`);
  }

  function renderUpstreams(upstreams, now) {
    const list = upstreams.map((u) => {
      const state = u.healthy ? 'healthy' : 'unhealthy';
      const priority = `priority ${u.priority}${u.priority_announced ? '' : ' (default)'}`;
      const latency = u.latency_ms == null ? 'no lookups in the last hour' : `${ms(u.latency_ms)} mean lookup, last hour`;
      const li = el('li', { 'data-upstream': u.url },
        el('div', { class: 'head' },
          el('span', { class: 'name' }, el('span', { class: 'dot' + (u.healthy ? '' : ' bad') }), u.url),
          el('span', { class: 'badge ' + (u.healthy ? 'ok' : 'bad') }, state)),
        el('div', { class: 'detail' }, `${priority} · ${latency} · ${state} since ${ago(u.since, now)}`));
      if (u.last_error) {
        li.append(el('div', { class: 'error' }, `${u.consecutive_failures} failures in a row; last: ${u.last_error}`));
      }
      return li;
    });
    $('upstreams').replaceChildren(...(list.length ? list : [el('li', { class: 'muted' }, 'no upstream configured')]));
  }

  function renderJobs(jobs, now) {
    const list = jobs.map((job) => {
      const last = job.last;
      const badge = !last ? el('span', { class: 'badge' }, 'not run yet')
        : el('span', { class: 'badge ' + (last.ok ? 'ok' : 'bad') }, last.ok ? 'ok' : 'failed');
      const when = last ? `last ${ago(last.finished_at, now)}, took ${ms(last.duration_ms)}` : 'waiting for its first run';
      const li = el('li', { 'data-job': job.name },
        el('div', { class: 'head' }, el('span', { class: 'name' }, job.name), badge),
        el('div', { class: 'detail' }, [job.schedule, when, `${plural(job.runs, 'run')}, ${job.failures} failed`].filter(Boolean).join(' · ')));
      if (last) li.append(el('div', { class: last.ok ? 'detail' : 'error' }, last.summary));
      return li;
    });
    $('jobs').replaceChildren(...(list.length ? list : [el('li', { class: 'muted' }, 'no background job')]));
  }

  function renderChunks(c) {
    const box = $('chunks');
    if (!c) {
      box.replaceChildren(el('p', { class: 'muted' }, 'Chunking is off: NARs are stored as whole files (--cache-cdc-enabled turns it on).'));
      return;
    }
    const figure = (id, label, value) => el('div', { 'data-figure': id }, el('div', { class: 'value' }, value), el('div', { class: 'label' }, label));
    const ratio = (x) => (x == null ? '–' : x.toFixed(2) + '×');
    const saved = c.nar_bytes > 0 ? 1 - c.stored_bytes / c.nar_bytes : null;
    box.replaceChildren(el('div', { class: 'figures' },
      figure('dedup', 'dedup ratio (NAR bytes per chunk byte)', ratio(c.dedup_ratio)),
      figure('compression', 'compression ratio', ratio(c.compression_ratio)),
      figure('saved', 'space saved', percent(saved)),
      figure('chunks', `chunks, ${count(c.references)} references`, count(c.chunks)),
      figure('nar-bytes', 'NAR bytes described', bytes(c.nar_bytes)),
      figure('stored', 'chunk bytes stored', bytes(c.stored_bytes))));
  }

  // ---- refreshing ----
  async function load() {
    clearTimeout(timer);
    try {
      const response = await fetch('?history=' + windowName, {
        headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin',
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      last = await response.json();
      render(last);
      updates += 1;
      document.body.dataset.updates = updates;
      const status = $('updated');
      status.classList.remove('error');
      status.textContent = `updated ${clock(Date.now(), true)} · refreshes every ${POLL_MS / 1000} s`;
    } catch (e) {
      const status = $('updated');
      status.classList.add('error');
      status.textContent = `could not refresh (${e.message}); retrying`;
    }
    timer = setTimeout(load, POLL_MS);
  }

  for (const button of document.querySelectorAll('[data-window]')) {
    button.addEventListener('click', () => {
      windowName = button.dataset.window;
      for (const b of document.querySelectorAll('[data-window]')) {
        b.setAttribute('aria-pressed', String(b === button));
      }
      load();
    });
  }
  $('copy').addEventListener('click', async () => {
    const snippet = $('nix-conf').textContent;
    try {
      await navigator.clipboard.writeText(snippet);
    } catch {
      const range = document.createRange();
      range.selectNodeContents($('nix-conf'));
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand('copy');
    }
    text('copied', 'copied');
    setTimeout(() => text('copied', ''), 2000);
  });
  let resizing = null;
  addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { if (last) render(last); }, 150);
  });
  load();
})();
