// msghub status page: one EventSource for the hub's snapshots (/status/events),
// one for the chosen route's tail (/tail?route=), and, when [status] sets up the
// demo, a POST per view and an EventSource on the visitors' subscription.
"use strict";

const HISTORY = 60;  // samples per chart: a minute at one snapshot a second
const FEED_MAX = 50;  // lines kept in the tail and the visitors list
const series = new Map();  // chart key -> recent values

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

function record(key, value) {
  let values = series.get(key);
  if (!values) series.set(key, values = []);
  values.push(value);
  if (values.length > HISTORY) values.shift();
  return values;
}

// A sparkline on a canvas: each series scaled to the largest value any of them holds.
function draw(canvas, lines) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(1, ...lines.flatMap(([values]) => values));
  for (const [values, color] of lines) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = w - (values.length - 1 - i) * (w / (HISTORY - 1));
      const y = h - 1 - (v / top) * (h - 3);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

// One row per key, made once and updated in place, so charts keep their canvas.
function row(table, key, cells) {
  const body = document.querySelector(`#${table} tbody`);
  let tr = body.querySelector(`tr[data-name="${CSS.escape(key)}"]`);
  if (!tr) {
    tr = el("tr", {"data-name": key});
    for (const [cls] of cells) {
      const td = el("td", {class: cls});
      if (cls === "chart") td.append(el("canvas", {width: 160, height: 28}));
      tr.append(td);
    }
    body.append(tr);
  }
  cells.forEach(([cls, value], i) => {
    if (cls !== "chart") tr.children[i].textContent = value;
  });
  return tr;
}

function badge(td, state) {
  td.textContent = "";
  td.append(el("span", {class: `badge ${state}`}, state));
}

const fmt = (n) => n.toLocaleString("en-US");

function show(snap) {
  const health = document.getElementById("health");
  health.className = `badge ${snap.healthy ? "ok" : "unhealthy"}`;
  health.textContent = snap.healthy ? "healthy" : "unhealthy";
  document.getElementById("clock").textContent = new Date(snap.time * 1000).toLocaleTimeString();
  for (const r of snap.routes) {
    const tr = row("routes", r.name, [
      ["name", r.name], ["match", r.match], ["destination", r.destination],
      ["num accepted", fmt(r.accepted)], ["num accepted-rate", fmt(r.accepted_rate)],
      ["num rejected", fmt(r.rejected)], ["num rejected-rate", fmt(r.rejected_rate)], ["chart"],
    ]);
    draw(tr.querySelector("canvas"), [
      [record(`a:${r.name}`, r.accepted_rate), "#2f6fb5"], [record(`r:${r.name}`, r.rejected_rate), "#c23b30"],
    ]);
  }
  const refused = Object.entries(snap.refused).map(
    ([ingress, byStatus]) => `${ingress}: ` + Object.entries(byStatus).map(([s, n]) => `${s} x ${fmt(n)}`).join(", "));
  document.getElementById("refused").textContent = refused.length ? "All refusals by status: " + refused.join("; ") : "";
  for (const d of snap.destinations) {
    const key = `${d.kind}:${d.name}`;
    const tr = row("destinations", key, [["kind", d.kind], ["name", d.name], ["state"], ["num depth", fmt(d.depth)], ["chart"]]);
    badge(tr.children[2], d.state);
    draw(tr.querySelector("canvas"), [[record(`d:${key}`, d.depth), "#7a4fb5"]]);
  }
  for (const p of snap.ports) {
    const tr = row("ports", p.ingress, [["ingress", p.ingress], ["listen", p.listen.join(" ")],
      ["num connections", fmt(p.connections)], ["chart"]]);
    draw(tr.querySelector("canvas"), [[record(`c:${p.ingress}`, p.connections), "#2f8a4c"]]);
  }
  for (const s of snap.subscriptions) row("subscriptions", s.name, [["name", s.name], ["match", s.match], ["num", fmt(s.subscribers)]]);
  document.getElementById("subscriptions").hidden = snap.subscriptions.length === 0;
  routeChoices(snap.routes.map((r) => r.name), snap.demo);
  if (snap.demo) startDemo(snap.demo);
}

function prepend(list, item) {
  list.prepend(item);
  while (list.children.length > FEED_MAX) list.lastChild.remove();
}

// The tail: one EventSource at a time, on the route the select names.
let tail = null;
function routeChoices(names, demo) {
  const select = document.getElementById("tail-route");
  if (select.options.length === names.length) return;
  select.textContent = "";
  for (const name of names) select.append(el("option", {value: name}, name));
  const preferred = demo && names.find((n) => n === demo.route);
  if (preferred) select.value = preferred;
  select.onchange = () => follow(select.value);
  follow(select.value);
}

function follow(route) {
  if (tail) tail.close();
  const list = document.getElementById("tail");
  const state = document.getElementById("tail-state");
  list.textContent = "";
  if (!route) return;
  tail = new EventSource(`/tail?route=${encodeURIComponent(route)}`);
  tail.onopen = () => { state.textContent = `following ${route}`; };
  tail.onerror = () => { state.textContent = "reconnecting"; };
  tail.addEventListener("tail", (e) => {
    const m = JSON.parse(e.data);
    const li = el("li", {"data-id": m.id});
    const when = new Date(m.time * 1000).toLocaleTimeString();
    const skipped = m.skipped ? ` (+${m.skipped} not shown)` : "";
    li.append(el("span", {class: "meta"}, `${when} ${m.id} ${m.bytes} B${skipped}`), m.head + (m.more ? "..." : ""));
    prepend(list, li);
  });
}

// The articles' demo: this view is a message; every page shows the visitors arrive.
let demoStarted = false;
function startDemo(demo) {
  if (demoStarted) return;
  demoStarted = true;
  document.getElementById("visitors-section").hidden = false;
  document.getElementById("demo-post").textContent = demo.post;
  document.getElementById("demo-events").textContent = demo.events;
  const list = document.getElementById("visitors");
  const visitors = new EventSource(demo.events);
  visitors.addEventListener(demo.event, (e) => {
    let v;
    try { v = JSON.parse(e.data); } catch { v = {user_agent: e.data}; }
    const li = el("li", {"data-id": e.lastEventId});
    li.append(el("span", {class: "meta"}, `${new Date().toLocaleTimeString()} ${e.lastEventId}`),
      `${v.user_agent || "?"}  from ${v.referrer || "(no referrer)"}`);
    prepend(list, li);
  });
  visitors.onopen = () => {
    if (visitors.posted) return;
    visitors.posted = true;  // post once the stream is attached, so this page sees its own visit
    const visit = {user_agent: navigator.userAgent, referrer: document.referrer, page: location.href};
    // The HTTP port is another origin; a no-cors text/plain POST needs no preflight.
    fetch(demo.post, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: JSON.stringify(visit)});
  };
}

const feed = new EventSource("/status/events");
feed.addEventListener("status", (e) => show(JSON.parse(e.data)));
feed.onerror = () => {
  const health = document.getElementById("health");
  health.className = "badge connecting";
  health.textContent = "reconnecting";
};
