// coinstream's live page: reads /api/events (server-sent events, see src/ui/page.rs) and draws
// the P&L chart and table, the batch charts and table, and the dead letters. Every value shown
// comes from an event; nothing is fetched elsewhere. Cells are filled with textContent only: a
// dead letter's message is whatever a feed sent.
"use strict";

const MAX_POINTS = 300;      // per chart: the last this many batches
const MAX_BATCH_ROWS = 20;   // rows of the batches table
const MAX_LETTERS = 50;      // rows of the dead-letters table
const MAX_PLAIN_ROWS = 20;   // rows of the latest-rows table when the output has no key column
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const STAGES = ["getBatch", "walCommit", "decode", "query", "sink", "commit"];

let state;

function reset() {
  state = {
    times: [],               // each batch's time, in seconds since the epoch
    batches: [],             // the progress records, oldest first
    columns: [],
    chart: null,             // {key, value, key_name, value_name} or null
    values: new Map(),       // key -> its P&L series, aligned with times
    current: new Map(),      // key -> its latest value
    latest: new Map(),       // key -> its latest row
    plain: [],               // without a key column: the latest rows, oldest first
    letters: [],             // [batchId, letter], newest first
    charts: {},
  };
  for (const id of ["pnl-chart", "input-rate-chart", "processing-rate-chart", "duration-chart"]) {
    document.getElementById(id).replaceChildren();
  }
}

function onBatch(event) {
  const p = event.progress;
  state.batches.push(p);
  state.times.push(Date.parse(p.timestamp) / 1000);
  if (event.columns.length) state.columns = event.columns;
  state.chart = event.chart;
  for (const row of event.rows) {
    if (state.chart) {
      const v = row.exact[state.chart.value];
      if (row.key !== null && v !== null) {
        if (!state.values.has(row.key)) {
          state.values.set(row.key, new Array(state.times.length - 1).fill(null));
        }
        state.current.set(row.key, Number(v));
      }
    }
    if (row.key === null) {
      state.plain.push(row);
      if (state.plain.length > MAX_PLAIN_ROWS) state.plain.shift();
    } else {
      state.latest.set(row.key, row);
    }
  }
  // Unrealised P&L is a level: a coin without a trade this batch keeps its last value.
  for (const [key, series] of state.values) series.push(state.current.get(key) ?? null);
  for (const letter of event.deadLetters) state.letters.unshift([p.batchId, letter]);
  state.letters.length = Math.min(state.letters.length, MAX_LETTERS);
  if (state.times.length > MAX_POINTS) {
    state.times.shift();
    state.batches.shift();
    for (const series of state.values.values()) series.shift();
  }
  schedule();
}

function onLatest(event) {
  // The server's newest row of every key, including keys older than the batches it replayed.
  if (event.columns.length) state.columns = event.columns;
  state.chart = event.chart;
  for (const row of event.rows) state.latest.set(row.key, row);
  schedule();
}

let scheduled = false;
function schedule() {
  if (!scheduled) {
    scheduled = true;
    setTimeout(() => { scheduled = false; render(); }, 50);
  }
}

function render() {
  document.body.dataset.batches = state.batches.length;
  const last = state.batches[state.batches.length - 1];
  document.getElementById("summary").textContent = last
    ? `batch ${last.batchId} at ${last.timestamp}` : "no batch yet";
  renderPnl();
  renderStreaming();
  renderLetters();
}

function width(el) {
  return Math.max(300, el.clientWidth || el.parentElement.clientWidth || 600);
}

// A uPlot chart in `id` with `labels` series over `data` ([xs, ...ys]); rebuilt when the series
// change, else given the new data.
function plot(id, labels, data, height) {
  const el = document.getElementById(id);
  let chart = state.charts[id];
  if (!chart || chart.labels.join("\u0000") !== labels.join("\u0000")) {
    if (chart) chart.plot.destroy();
    el.replaceChildren();
    const opts = {
      width: width(el), height,
      scales: { x: { time: true } },
      legend: { live: false },
      series: [{}].concat(labels.map((label, i) => ({
        label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
        points: { show: data[0].length < 60 },
      }))),
      axes: [{}, { size: 80 }],
    };
    chart = state.charts[id] = { labels, plot: new uPlot(opts, data, el) };
  } else {
    chart.plot.setData(data);
  }
  let points = 0;
  for (const ys of data.slice(1)) for (const y of ys) if (y !== null && y !== undefined) points++;
  el.dataset.points = points;
  el.dataset.series = labels.length;
}

function renderPnl() {
  const note = document.getElementById("pnl-note");
  if (state.chart) {
    note.textContent = `Per ${state.chart.key_name}: the latest ${state.chart.value_name} as of each batch.`;
    const keys = [...state.values.keys()].sort();
    if (keys.length) {
      plot("pnl-chart", keys, [state.times].concat(keys.map(k => state.values.get(k))), 240);
    }
  } else if (state.columns.length) {
    note.textContent = "This pipeline's output has no symbol and numeric profit columns to chart.";
  } else {
    note.textContent = "No rows yet.";
  }
  const head = document.querySelector("#pnl-table thead");
  const headRow = document.createElement("tr");
  for (const c of state.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    headRow.append(th);
  }
  head.replaceChildren(headRow);
  const rows = [...state.latest.entries()].sort((a, b) => a[0].localeCompare(b[0]))
    .map(([, row]) => row).concat(state.plain.slice().reverse());
  const body = document.querySelector("#pnl-table tbody");
  body.replaceChildren(...rows.map(row => {
    const tr = document.createElement("tr");
    if (row.key !== null) tr.dataset.key = row.key;
    row.shown.forEach((shown, i) => {
      const td = document.createElement("td");
      const exact = row.exact[i];
      td.textContent = shown ?? "null";
      if (exact !== null) {
        td.dataset.exact = exact;
        td.title = exact;
      }
      if (state.columns[i] && state.columns[i].decimal) {
        td.className = "num" + (exact !== null && exact.startsWith("-") ? " negative" : "");
      }
      tr.append(td);
    });
    return tr;
  }));
}

function renderStreaming() {
  if (state.times.length) {
    const b = state.batches;
    plot("input-rate-chart", ["input rows/s"], [state.times, b.map(p => p.inputRowsPerSecond)], 180);
    plot("processing-rate-chart", ["processed rows/s"],
      [state.times, b.map(p => p.processedRowsPerSecond)], 180);
    plot("duration-chart", ["total"].concat(STAGES),
      [state.times, b.map(p => p.durationMs.total)].concat(STAGES.map(s => b.map(p => p.durationMs[s]))), 180);
  }
  const body = document.querySelector("#batches tbody");
  const recent = state.batches.slice(-MAX_BATCH_ROWS).reverse();
  body.replaceChildren(...recent.map(p => {
    const tr = document.createElement("tr");
    tr.dataset.batchId = p.batchId;
    const cells = [p.batchId, p.timestamp, p.numInputRows, p.inputRowsPerSecond.toFixed(1),
      p.processedRowsPerSecond.toFixed(1), p.sink.numOutputRows, p.numDeadLetters, p.durationMs.total];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i !== 1) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
}

function renderLetters() {
  document.getElementById("dead-note").textContent = state.letters.length
    ? `The newest ${state.letters.length} (the progress counts them all).` : "None so far.";
  const body = document.querySelector("#dead-letters tbody");
  body.replaceChildren(...state.letters.map(([batchId, l]) => {
    const tr = document.createElement("tr");
    const cells = [batchId, l.reason, JSON.stringify(l.position), l.raw];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i === 3) td.className = "raw";
      tr.append(td);
    });
    return tr;
  }));
}

// `/?once`: the page as of now, then no more updates. The stream is closed after the history
// the server sends first, so a headless browser's virtual time (which waits while a request is
// open) can run out and the DOM be dumped (tests/browser.rs).
const ONCE = new URLSearchParams(location.search).has("once");

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/api/events");
  source.addEventListener("reset", () => { reset(); });
  source.addEventListener("batch", e => onBatch(JSON.parse(e.data)));
  source.addEventListener("latest", e => {
    onLatest(JSON.parse(e.data));
    if (ONCE) {
      source.close();
      status.textContent = "snapshot";
      status.className = "status";
    }
  });
  source.onopen = () => { status.textContent = ONCE ? "snapshot" : "live"; status.className = "status live"; };
  // EventSource reconnects by itself; the server starts it over with a reset.
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status"; };
}

reset();
connect();
