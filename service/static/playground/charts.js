// Plain SVG charts for the playground: a line chart over tokens and a heatmap. No library: each
// is a few dozen lines, and the page must work offline with a strict Content-Security-Policy.

const SVG = "http://www.w3.org/2000/svg";

function svgElement(name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== null) element.textContent = text;
  return element;
}

function titled(element, title) {
  element.appendChild(svgElement("title", {}, title));
  return element;
}

// A line chart of values in [0, 1], one point per label; a dashed line at 0.5.
export function lineChart(labels, values, { description, pointTitle }) {
  const step = 34, left = 40, right = 12, top = 10, plot = 150, bottom = 70;
  const width = left + right + Math.max(1, labels.length) * step;
  const height = top + plot + bottom;
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                                  "aria-label": description });
  if (width > 640) svg.classList.add("wide");
  const y = (value) => top + (1 - value) * plot;
  const x = (index) => left + step * (index + 0.5);
  for (const tick of [0, 0.5, 1]) {
    svg.appendChild(svgElement("line", { class: tick === 0.5 ? "grid" : "axis", x1: left,
                                         x2: width - right, y1: y(tick), y2: y(tick) }));
    svg.appendChild(svgElement("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end" },
                               tick.toFixed(1)));
  }
  svg.appendChild(svgElement("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plot }));
  if (values.length) {
    const points = values.map((value, index) => `${x(index).toFixed(1)},${y(value).toFixed(1)}`);
    svg.appendChild(svgElement("polyline", { class: "trajectory", points: points.join(" ") }));
  }
  values.forEach((value, index) => {
    svg.appendChild(titled(svgElement("circle", { class: "point", cx: x(index), cy: y(value), r: 4 }),
                           pointTitle(index)));
    const labelX = x(index), labelY = top + plot + 12;
    svg.appendChild(svgElement("text", {
      class: "tick-label", x: labelX, y: labelY, "text-anchor": "end",
      transform: `rotate(-50 ${labelX} ${labelY})` }, shorten(labels[index], 14)));
  });
  return svg;
}

// A heatmap of rows x columns weights in [0, 1], labels on both axes.
export function heatmap(rowLabels, columnLabels, weights, { description, cellTitle }) {
  const cell = 26, left = 90, top = 80, pad = 10;
  const width = left + columnLabels.length * cell + pad;
  const height = top + rowLabels.length * cell + pad;
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                                  "aria-label": description });
  if (width > 640) svg.classList.add("wide");
  columnLabels.forEach((label, column) => {
    const labelX = left + column * cell + cell / 2, labelY = top - 6;
    svg.appendChild(svgElement("text", { class: "column-label", x: labelX, y: labelY,
                                         transform: `rotate(-55 ${labelX} ${labelY})` },
                               shorten(label, 12)));
  });
  rowLabels.forEach((label, row) => {
    svg.appendChild(svgElement("text", { class: "row-label", x: left - 6, y: top + row * cell + cell / 2 + 4,
                                         "text-anchor": "end" }, shorten(label, 12)));
    columnLabels.forEach((_, column) => {
      const weight = Math.max(0, Math.min(1, weights[row][column]));
      // white to the accent blue, by weight
      const shade = (from, to) => Math.round(from + (to - from) * weight);
      const fill = `rgb(${shade(255, 31)}, ${shade(255, 95)}, ${shade(255, 168)})`;
      svg.appendChild(titled(svgElement("rect", { class: "cell", x: left + column * cell,
                                                  y: top + row * cell, width: cell, height: cell, fill }),
                             cellTitle(row, column)));
    });
  });
  return svg;
}

function shorten(text, most) {
  const shown = text.replace(/\n/g, "\u21b5");
  return shown.length > most ? shown.slice(0, most - 1) + "\u2026" : shown;
}
