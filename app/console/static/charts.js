// Small SVG charts for the analytics page, drawn here (no library, nothing loaded from elsewhere: the console
// works offline). Every mark carries data-* attributes and a <title>, so values are readable without a mouse.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640;
  const H = 220;
  const PAD = { left: 52, right: 12, top: 12, bottom: 34 };

  function el(name, attrs = {}, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(height = H, label = "") {
    return el("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": label });
  }

  function titled(node, text) {
    node.appendChild(el("title", {}, text));
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function yAxis(root, max, format) {
    const inner = H - PAD.top - PAD.bottom;
    for (const f of [0, 0.5, 1]) {
      const y = PAD.top + inner * (1 - f);
      root.appendChild(el("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "axis" }));
      root.appendChild(el("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, format(max * f)));
    }
  }

  function xLabels(root, labels, x, band) {
    const every = Math.max(1, Math.ceil(labels.length / 10));
    labels.forEach((label, i) => {
      if (i % every !== 0 && i !== labels.length - 1) return;
      root.appendChild(el("text", { x: x(i) + band / 2, y: H - PAD.bottom + 16, "text-anchor": "middle" },
        label.slice(5)));
    });
  }

  function legend(series) {
    const list = document.createElement("ul");
    list.className = "legend";
    for (const s of series) {
      const item = document.createElement("li");
      const swatch = el("svg", { width: 12, height: 12, class: "swatch", "aria-hidden": "true" });
      swatch.appendChild(el("rect", { width: 12, height: 12, rx: 2, fill: s.color }));
      item.append(swatch, document.createTextNode(s.name));
      list.appendChild(item);
    }
    return list;
  }

  function empty(container, text) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text;
    container.replaceChildren(p);
  }

  // Bars per day, the series stacked: {labels: ["2026-01-01", ...], series: [{name, color, values}], format}.
  function stackedBars(container, { labels, series, format = String, label = "" }) {
    const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
    if (!totals.some((t) => t > 0)) return empty(container, "Nothing in this range.");
    const max = niceMax(Math.max(...totals));
    const root = svg(H, label);
    yAxis(root, max, format);
    const inner = H - PAD.top - PAD.bottom;
    const band = (W - PAD.left - PAD.right) / labels.length;
    const x = (i) => PAD.left + i * band;
    labels.forEach((day, i) => {
      let base = 0;
      for (const s of series) {
        const value = s.values[i] || 0;
        if (value <= 0) continue;
        const h = (value / max) * inner;
        const y = PAD.top + inner - ((base + value) / max) * inner;
        root.appendChild(titled(el("rect", {
          x: x(i) + band * 0.15, y, width: Math.max(1, band * 0.7), height: h, fill: s.color,
          class: "bar", "data-day": day, "data-series": s.name, "data-value": value,
        }), `${day} · ${s.name}: ${format(value)}`));
        base += value;
      }
    });
    xLabels(root, labels, x, band);
    container.replaceChildren(root, legend(series));
  }

  // A line per day, with gaps where a value is null: {labels, values, max, format}.
  function line(container, { labels, values, max = null, format = String, color = "#1f5fbf", label = "" }) {
    if (!values.some((v) => v !== null && v !== undefined)) return empty(container, "Nothing in this range.");
    const top = max ?? niceMax(Math.max(...values.filter((v) => v !== null)));
    const root = svg(H, label);
    yAxis(root, top, format);
    const inner = H - PAD.top - PAD.bottom;
    const band = (W - PAD.left - PAD.right) / labels.length;
    const x = (i) => PAD.left + i * band;
    let path = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const px = x(i) + band / 2;
      const py = PAD.top + inner * (1 - v / top);
      path += `${pen ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)} `;
      pen = true;
    });
    root.appendChild(el("path", { d: path.trim(), fill: "none", stroke: color, "stroke-width": 2 }));
    values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      root.appendChild(titled(el("circle", {
        cx: x(i) + band / 2, cy: PAD.top + inner * (1 - v / top), r: 3.5, fill: color,
        class: "point", "data-day": labels[i], "data-value": v,
      }), `${labels[i]}: ${format(v)}`));
    });
    xLabels(root, labels, x, band);
    container.replaceChildren(root);
  }

  // Horizontal bars, largest first: {items: [{label, value}], format, color}.
  function hbars(container, { items, format = String, color = "#b3261e", label = "" }) {
    if (!items.length) return empty(container, "None in this range.");
    const sorted = [...items].sort((a, b) => b.value - a.value);
    const row = 26;
    const height = sorted.length * row + 8;
    const root = svg(height, label);
    const left = 170;
    const max = Math.max(...sorted.map((i) => i.value));
    sorted.forEach((item, n) => {
      const y = 4 + n * row;
      const w = ((W - left - 60) * item.value) / max;
      root.appendChild(el("text", { x: left - 8, y: y + 16, "text-anchor": "end" }, item.label));
      root.appendChild(titled(el("rect", {
        x: left, y: y + 4, width: Math.max(1, w), height: row - 8, fill: color, rx: 2,
        class: "bar", "data-series": item.label, "data-value": item.value,
      }), `${item.label}: ${format(item.value)}`));
      root.appendChild(el("text", { x: left + w + 6, y: y + 16 }, format(item.value)));
    });
    container.replaceChildren(root);
  }

  return { stackedBars, line, hbars };
})();
