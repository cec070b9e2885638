// The market explorer page: reads /explorer/api/* and draws it with Chart.js (served by the matcher).
"use strict";

const COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2"];
const REFRESH_MS = 5000;
const charts = { price: null, book: null };
let bookMarket = null;

async function getJson(path) {
  const response = await fetch(path);
  const body = await response.json();
  if (!response.ok) {
    const why = (body.detail || []).map((d) => `${d.field}: ${d.reason}`).join("; ");
    throw new Error(`${path}: ${response.status} ${why}`);
  }
  return body;
}

function short(hex) { return hex ? `${hex.slice(0, 8)}…${hex.slice(-4)}` : ""; }

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, empty) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = document.querySelectorAll(`#${tableId} th`).length;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    body.append(tr);
  }
}

function when(unix) { return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC"; }

function drawPrices(histories) {
  const datasets = histories.map((h, i) => ({
    label: h.label,
    data: h.points.map((p) => ({ x: p.round, y: Number(p.price), reason: p.reason })),
    borderColor: COLORS[i % COLORS.length],
    backgroundColor: COLORS[i % COLORS.length],
    showLine: true,
    pointRadius: 4,
  }));
  const rounds = histories.flatMap((h) => h.points.map((p) => p.round));
  if (!charts.price) {
    charts.price = new Chart(document.getElementById("price-chart"), {
      type: "scatter",
      data: { datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        plugins: {
          legend: { labels: { usePointStyle: true } },
          // Each point says why the round cleared at that price.
          tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}, round ${ctx.raw.x}: ${ctx.raw.reason || ctx.raw.y}` } },
        },
        scales: {
          x: { title: { display: true, text: "round" }, ticks: { stepSize: 0.5, callback: (v) => (Number.isInteger(v) ? v : "") } },
          y: { title: { display: true, text: "UBC per unit-hour" }, beginAtZero: true },
        },
      },
    });
  } else {
    charts.price.data.datasets = datasets;
  }
  // Half a round of margin on either side, so the first and last rounds' points are not on the edge.
  charts.price.options.scales.x.min = rounds.length ? Math.min(...rounds) - 0.5 : 0;
  charts.price.options.scales.x.max = rounds.length ? Math.max(...rounds) + 0.5 : 1;
  charts.price.update();
}

function corners(steps) {
  // A step curve as line corners: each level runs from the previous cumulative units to its own.
  const points = [];
  let from = 0;
  for (const s of steps) {
    points.push({ x: from, y: Number(s.price) }, { x: s.cumulative, y: Number(s.price) });
    from = s.cumulative;
  }
  return points;
}

function drawBook(book) {
  const supply = corners(book.supply);
  const demand = corners(book.demand);
  const width = Math.max(supply.length ? supply[supply.length - 1].x : 0, demand.length ? demand[demand.length - 1].x : 0, 1);
  const price = Number(book.price);
  const datasets = [
    { label: "supply (bids, cheapest first)", data: supply, borderColor: "#059669", backgroundColor: "#059669", showLine: true, pointRadius: 0, borderWidth: 2, pointStyle: "line" },
    { label: "demand (orders, highest max first)", data: demand, borderColor: "#2563eb", backgroundColor: "#2563eb", showLine: true, pointRadius: 0, borderWidth: 2, pointStyle: "line" },
    { label: `clearing price ${book.price}`, data: [{ x: 0, y: price }, { x: width, y: price }], borderColor: "#dc2626", backgroundColor: "#dc2626", borderDash: [6, 4], showLine: true, pointRadius: 0, borderWidth: 2, pointStyle: "line" },
  ];
  if (!charts.book) {
    charts.book = new Chart(document.getElementById("book-chart"), {
      type: "scatter",
      data: { datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        plugins: { legend: { labels: { usePointStyle: true } } },
        scales: {
          x: { title: { display: true, text: "units (cumulative)" }, beginAtZero: true, ticks: { precision: 0 } },
          y: { title: { display: true, text: "UBC per unit-hour" }, beginAtZero: true },
        },
      },
    });
  } else {
    charts.book.data.datasets = datasets;
    charts.book.update();
  }
  document.getElementById("book-note").textContent =
    `${book.label}, round ${book.round}: ${book.supply.length} bid price levels, ${book.demand.length} order price levels; uniform price ${book.price} UBC per unit-hour.`;
}

async function loadBook() {
  if (!bookMarket) return;
  drawBook(await getJson(`/explorer/api/book?market=${bookMarket}`));
}

async function load() {
  const markets = await getJson("/explorer/api/markets");
  fill("markets", markets.map((m) => [
    cell(m.label), cell(m.open_orders, "num"), cell(m.open_bids, "num"), cell(m.rounds_traded, "num"),
    cell(m.last_round ?? "–", "num"), cell(m.last_price ?? "–", "num"),
    cell(m.last_price_reason ? m.last_price_reason.replace(/^[^=]*= /, "") : "–", "why"),
  ]), "no markets yet");

  const traded = markets.filter((m) => m.rounds_traded > 0);
  const histories = await Promise.all(traded.map((m) => getJson(`/explorer/api/prices?market=${m.market}`)));
  drawPrices(histories);

  const select = document.getElementById("book-market");
  if (traded.length && !traded.some((m) => m.market === bookMarket)) {
    bookMarket = traded.reduce((a, b) => (b.last_round > a.last_round ? b : a)).market;
  }
  select.replaceChildren(...traded.map((m) => new Option(m.label, m.market, false, m.market === bookMarket)));
  await loadBook();

  const [leases, providers, standing] = await Promise.all([
    getJson("/explorer/api/leases"), getJson("/explorer/api/providers"), getJson("/explorer/api/matcher"),
  ]);
  fill("leases", leases.map((l) => [
    cell(short(l.id), "mono"), cell(l.round, "num"), cell(l.label), cell(short(l.provider), "mono"),
    cell(short(l.buyer), "mono"), cell(l.units, "num"), cell(l.price, "num"), cell(when(l.end)),
    cell(l.status, `status-${l.status}`),
  ]), "no leases yet");
  fill("providers", providers.map((p) => [
    cell(short(p.provider), "mono"), cell(p.leases, "num"), cell(p.heartbeats, "num"), cell(p.faults, "num"), cell(p.missed, "num"),
    cell(`${(p.uptime * 100).toFixed(1)} %`, "num"),
  ]), "no provider has a lease yet");
  fill("challenges", standing.challenges.map((c) => [
    cell(c.round, "num"), cell(short(c.bid), "mono"), cell(short(c.challenger), "mono"), cell(c.slashed, "num"),
  ]), "none");
  const state = standing.bonded ? "<b>bonded</b>" : '<span class="bad">not bonded</span>';
  document.getElementById("standing").innerHTML =
    `matcher <span class="mono">${short(standing.matcher)}</span> · bond ${standing.bond} UBT (min ${standing.min_bond}) · ${state}` +
    (standing.exiting ? ' · <span class="bad">exiting</span>' : "") + ` · ${standing.challenges.length} challenge(s)`;
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    await load();
    error.hidden = true;
    document.body.dataset.loaded = "true";
  } catch (exc) {
    error.textContent = String(exc.message || exc);
    error.hidden = false;
  }
}

document.getElementById("book-market").addEventListener("change", (event) => {
  bookMarket = event.target.value;
  loadBook().catch((exc) => { document.getElementById("error").textContent = String(exc); });
});
if (typeof Chart === "undefined") {
  const error = document.getElementById("error");
  error.textContent = "Chart.js is missing from the matcher's package: run scripts/setup.sh";
  error.hidden = false;
} else {
  refresh();
  setInterval(refresh, REFRESH_MS);
}
