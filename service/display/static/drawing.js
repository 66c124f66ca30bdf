// The drawn probe and the arrow for the motion an instruction asks for (SVG, viewBox -100..100).
// Screen up = toward the patient's head, down = toward the feet; left and right as the words say.
// Shapes carry the meaning; colour only adds to it (the arrow is the same orange everywhere).
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const DIRS = { head: [0, -1], feet: [0, 1], left: [-1, 0], right: [1, 0] };

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function defs(svg) {
    const d = el("defs", {}, svg);
    const marker = el("marker", {
      id: "arrowhead", viewBox: "0 0 10 10", refX: 5, refY: 5,
      markerWidth: 3.2, markerHeight: 3.2, orient: "auto-start-reverse",
    }, d);
    el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-head" }, marker);
  }

  // The probe seen from above: its footprint, with the orientation marker as a dot at one end.
  function probeTop(svg) {
    el("rect", { x: -36, y: -12, width: 72, height: 24, rx: 10, class: "probe" }, svg);
    el("circle", { cx: -26, cy: 0, r: 4, class: "probe-marker" }, svg);
  }

  // The probe seen from the side, standing on the skin (for tilt, rock and press).
  function probeSide(svg, angle) {
    el("line", { x1: -90, y1: 60, x2: 90, y2: 60, class: "skin" }, svg);
    const g = el("g", { transform: `rotate(${angle} 0 60)` }, svg);
    el("rect", { x: -14, y: -20, width: 28, height: 80, rx: 8, class: "probe" }, g);
    el("rect", { x: -18, y: 48, width: 36, height: 12, rx: 4, class: "probe" }, g);
  }

  function arrowLength(magnitude, unit) {
    // Longer arrow for a bigger motion, within what fits: 10 mm or 10° ~ 35 units, capped.
    const m = Math.max(0, Number(magnitude) || 0);
    const perUnit = unit === "deg" ? 2.2 : 2.5;
    return Math.min(70, 28 + m * perUnit);
  }

  function straightArrow(svg, dir, length) {
    const [dx, dy] = DIRS[dir];
    const start = dx !== 0 ? 42 : 18;
    el("line", {
      x1: dx * start, y1: dy * start, x2: dx * (start + length), y2: dy * (start + length),
      class: "arrow", "marker-end": "url(#arrowhead)",
    }, svg);
  }

  function arc(svg, r, fromDeg, toDeg, cx, cy) {
    const rad = (a) => (a * Math.PI) / 180;
    const x1 = cx + r * Math.cos(rad(fromDeg)), y1 = cy + r * Math.sin(rad(fromDeg));
    const x2 = cx + r * Math.cos(rad(toDeg)), y2 = cy + r * Math.sin(rad(toDeg));
    const sweep = toDeg > fromDeg ? 1 : 0;
    const large = Math.abs(toDeg - fromDeg) > 180 ? 1 : 0;
    el("path", {
      d: `M${x1.toFixed(1)},${y1.toFixed(1)} A${r},${r} 0 ${large} ${sweep} ${x2.toFixed(1)},${y2.toFixed(1)}`,
      class: "arrow", "marker-end": "url(#arrowhead)",
    }, svg);
  }

  function label(svg, text, x, y) {
    const t = el("text", { x, y, class: "drawing-label", "text-anchor": "middle" }, svg);
    t.textContent = text;
  }

  function draw(svg, instruction, magnitude, unit) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    defs(svg);
    svg.dataset.instruction = instruction || "";
    if (!instruction) return;
    const [verb, dir] = instruction.split("_");
    const sweepDeg = Math.min(150, 50 + (Number(magnitude) || 0) * 3);
    if (verb === "slide" && DIRS[dir]) {
      const [dx, dy] = DIRS[dir];
      const g = el("g", { transform: `translate(${-dx * 28} ${-dy * 28})` }, svg); // centre probe + arrow
      probeTop(g);
      straightArrow(g, dir, arrowLength(magnitude, unit));
    } else if (verb === "rotate") {
      probeTop(svg);
      if (dir === "cw") arc(svg, 58, -150, -150 + sweepDeg, 0, 0);
      else arc(svg, 58, -30, -30 - sweepDeg, 0, 0);
      label(svg, dir === "cw" ? "clockwise" : "anticlockwise", 0, 92);
    } else if ((verb === "tilt" || verb === "rock") && DIRS[dir]) {
      // Tilt fans the beam across the probe's short side, rock along its long side; both lean the
      // handle toward `dir` with the footprint kept on the skin.
      const toward = dir === "head" || dir === "right" ? 1 : -1;
      probeSide(svg, 18 * toward);
      arc(svg, 70, -90, -90 + toward * Math.min(70, sweepDeg / 2), 0, 60);
      label(svg, `${verb} toward ${dir}`, 0, 92);
    } else if (verb === "press") {
      probeSide(svg, 0);
      el("line", { x1: 0, y1: -92, x2: 0, y2: -40, class: "arrow", "marker-end": "url(#arrowhead)" }, svg);
      label(svg, "press", 45, -60);
    } else if (instruction === "more_gel") {
      el("path", { d: "M0,-70 C25,-30 40,0 40,20 A40,40 0 0 1 -40,20 C-40,0 -25,-30 0,-70 z", class: "gel" }, svg);
      label(svg, "gel", 0, 30);
    } else if (verb === "scan") {
      probeTop(svg);
      el("polyline", {
        points: "-80,60 -50,35 -20,60 10,35 40,60 70,35", class: "arrow", "marker-end": "url(#arrowhead)",
      }, svg);
      label(svg, "sweep slowly", 0, -40);
    } else if (instruction === "hold_still") {
      probeTop(svg);
      el("rect", { x: -22, y: 30, width: 14, height: 44, class: "hold-mark" }, svg);
      el("rect", { x: 8, y: 30, width: 14, height: 44, class: "hold-mark" }, svg);
    } else if (instruction === "good_view") {
      el("polyline", { points: "-55,0 -15,40 60,-45", class: "check" }, svg);
    } else {
      probeTop(svg);
    }
  }

  window.SonoguideDrawing = { draw };
})();
