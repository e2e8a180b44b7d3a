// enface review: the page. Plain JavaScript, no build step, no third-party code.
//
// Grids: the en-face mask is H x W (row = B-scan, column = A-scan), in the dataset's
// orientation (row 0 at the top); a B-scan is W x D (A-scans across, depth down). At zoom 1
// a view shows its whole grid stretched over its canvas, so grid x = (clientX - left) / width * W.
//
// The token: the served page carries it (the meta tag below); every request sends it in the
// X-Enface-Token header, images and downloads included (fetch, then blob URLs), never in a
// cookie (cookies are not scoped by port: every other server on 127.0.0.1 would get it).
"use strict";

const TOKEN = document.querySelector('meta[name="enface-token"]').content;
const COLOURS = { reference: [255, 212, 0], prediction: [255, 61, 242], grader: [0, 229, 255] };
const BSCAN_CACHE = 64;
const UNDO_DEPTH = 200;

const $ = (id) => document.getElementById(id);
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

const S = {
  session: null, cases: [], info: null, caseId: null,
  H: 0, W: 0, D: 0, sh: 1, sw: 1, sd: 1,
  row: 0, col: 0, layer: null, base: null,
  masks: { reference: null, prediction: null, grader: null },
  overlays: {}, savedMask: null, version: "none", startedFrom: "empty", openedAt: 0,
  undo: [], redo: [], tool: "brush", bscans: new Map(), inFlight: new Set(), bscanShown: -1,
  stroke: null, extentDrag: null, panDrag: null, space: false,
};
const timings = { firstView: null, caseOpen: [], bscan: [] };
const debug = { lastStroke: [], lastExtent: null };
window.enfaceReview = { S, timings, debug };  // for tests and the console (window.enface is the canvas)

// ------------------------------------------------------------------ server

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Enface-Token": TOKEN }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "omit" }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    let body = null;
    try { body = await response.json(); message = body.error || message; } catch (e) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return response;
}
const caseUrl = (id, rest = "") => "/api/cases/" + encodeURIComponent(id) + rest;

async function fetchMask(which) {
  try {
    const response = await api(caseUrl(S.caseId, "/mask/" + which));
    return new Uint8Array(await response.arrayBuffer());
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

async function exportReviews() {  // a download through fetch (the header), not a link (no token to send)
  try {
    const response = await api("/api/reviews.csv");
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = "reviews_" + S.session.task + ".csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) { status("not exported: " + e.message, "error"); }
}

async function fetchBitmap(path) {
  const response = await api(path);
  return createImageBitmap(await response.blob());
}

async function fetchBscan(row) {  // D x W bytes of grey -> an image
  const [w, depth] = [S.W, S.D];
  const response = await api(caseUrl(S.caseId, "/bscan/" + row));
  const grey = new Uint8Array(await response.arrayBuffer());
  if (grey.length !== w * depth) throw new Error(`B-scan ${row}: ${grey.length} bytes, expected ${w} x ${depth}`);
  const image = new ImageData(w, depth);
  const d = image.data;
  for (let i = 0, k = 0; i < grey.length; i++, k += 4) { d[k] = d[k + 1] = d[k + 2] = grey[i]; d[k + 3] = 255; }
  return createImageBitmap(image);
}

function status(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

// ------------------------------------------------------------------ views (zoom and pan)

class View {
  constructor(canvas, cols, rows) { this.canvas = canvas; this.cols = cols; this.rows = rows; this.reset(); }
  reset() { this.zoom = 1; this.panX = 0; this.panY = 0; }
  rect() { return this.canvas.getBoundingClientRect(); }
  toGrid(clientX, clientY) {
    const r = this.rect();
    return {
      x: ((clientX - r.left - this.panX) / this.zoom) / r.width * this.cols,
      y: ((clientY - r.top - this.panY) / this.zoom) / r.height * this.rows,
    };
  }
  begin(ctx) {  // transform: grid units -> backing-store pixels
    const r = this.rect(), dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.setTransform(dpr * this.zoom * r.width / this.cols, 0, 0, dpr * this.zoom * r.height / this.rows,
      dpr * this.panX, dpr * this.panY);
    return r;
  }
  pixelsPerUnit() { const r = this.rect(); return [this.zoom * r.width / this.cols, this.zoom * r.height / this.rows]; }
  zoomAt(clientX, clientY, factor) {
    const r = this.rect();
    const z = clamp(this.zoom * factor, 1, 40);
    const px = clientX - r.left, py = clientY - r.top;
    this.panX = px - (px - this.panX) * z / this.zoom;
    this.panY = py - (py - this.panY) * z / this.zoom;
    this.zoom = z;
    this.clampPan();
  }
  clampPan() {
    const r = this.rect();
    this.panX = clamp(this.panX, r.width * (1 - this.zoom), 0);
    this.panY = clamp(this.panY, r.height * (1 - this.zoom), 0);
  }
}
let enfaceView = null, bscanView = null;

function sizeCanvas(canvas, width, height) {
  const dpr = window.devicePixelRatio || 1;
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
}

function layout() {
  if (!S.info) return;
  const stage = $("enface-stage");
  const aspect = (S.H * S.sh) / (S.W * S.sw);  // height / width of the en-face field in mm
  let w = Math.floor(stage.clientWidth), h = Math.floor(w * aspect);
  if (h > stage.clientHeight) { h = Math.floor(stage.clientHeight); w = Math.floor(h / aspect); }
  sizeCanvas($("enface"), Math.max(w, 50), Math.max(h, 50));
  const bstage = $("bscan-stage");
  const baspect = (S.D * S.sd) / (S.W * S.sw);  // physical depth / width of a B-scan
  let bw = Math.floor(bstage.clientWidth), bh = Math.floor(bw * baspect);
  const room = bstage.clientHeight - 90;  // the extent bands and the areas below
  if (bh > room) { bh = Math.floor(room); bw = Math.floor(bh / baspect); }
  sizeCanvas($("bscan"), Math.max(bw, 50), Math.max(bh, 20));
  sizeCanvas($("extent"), Math.max(bw, 50), 18);
  enfaceView.clampPan();
  bscanView.clampPan();
  drawAll();
}

// ------------------------------------------------------------------ drawing

function maskImage(mask, colour) {  // an H x W canvas: colour where mask is 1, transparent elsewhere
  const c = document.createElement("canvas");
  c.width = S.W; c.height = S.H;
  paintMask(c, mask, colour);
  return c;
}

function paintMask(canvas, mask, colour) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(S.W, S.H);
  const d = img.data;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) { const k = 4 * i; d[k] = colour[0]; d[k + 1] = colour[1]; d[k + 2] = colour[2]; d[k + 3] = 255; }
  }
  ctx.putImageData(img, 0, 0);
}

function overlayOn(name) { return $("show-" + name).checked && S.masks[name]; }

function drawEnface() {
  const canvas = $("enface"), ctx = canvas.getContext("2d");
  enfaceView.begin(ctx);
  if (S.base) {
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(S.base, 0, 0, S.W, S.H);
  }
  ctx.imageSmoothingEnabled = false;
  for (const name of ["reference", "prediction", "grader"]) {
    if (!overlayOn(name)) continue;
    ctx.globalAlpha = $("op-" + name).value / 100;
    ctx.drawImage(S.overlays[name], 0, 0, S.W, S.H);
  }
  ctx.globalAlpha = 1;
  const [ux, uy] = enfaceView.pixelsPerUnit();
  ctx.lineWidth = 1 / Math.max(ux, uy);
  ctx.strokeStyle = "rgba(255,255,255,0.85)";
  ctx.beginPath();
  ctx.moveTo(0, S.row + 0.5); ctx.lineTo(S.W, S.row + 0.5);
  ctx.stroke();
  ctx.lineWidth = 1 / ux;
  ctx.strokeStyle = "rgba(255,255,255,0.5)";
  ctx.beginPath();
  ctx.moveTo(S.col + 0.5, 0); ctx.lineTo(S.col + 0.5, S.H);
  ctx.stroke();
  const um = (v) => Math.round(v * 1000);
  $("enface-info").textContent = `B-scan ${S.row} / ${S.H - 1}, A-scan ${S.col} / ${S.W - 1}` +
    ` · pixel ${um(S.sh)} x ${um(S.sw)} µm · zoom ${enfaceView.zoom.toFixed(1)}`;
}

function drawBscan() {
  const canvas = $("bscan"), ctx = canvas.getContext("2d");
  const bitmap = S.bscans.get(S.row);
  bscanView.begin(ctx);
  if (bitmap) {
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(bitmap, 0, 0, S.W, S.D);
    S.bscanShown = S.row;
    canvas.dataset.row = String(S.row);
  }
  const [ux, uy] = bscanView.pixelsPerUnit();
  if (S.layer === "sub_bm" && S.info.sub_bm_slab) {
    ctx.strokeStyle = "rgba(120,255,120,0.6)";
    ctx.lineWidth = 1 / uy;
    for (const z of S.info.sub_bm_slab) { ctx.beginPath(); ctx.moveTo(0, z); ctx.lineTo(S.W, z); ctx.stroke(); }
  }
  ctx.strokeStyle = "rgba(255,255,255,0.7)";
  ctx.lineWidth = 1 / ux;
  ctx.beginPath(); ctx.moveTo(S.col + 0.5, 0); ctx.lineTo(S.col + 0.5, S.D); ctx.stroke();
  drawExtent();
  $("bscan-title").textContent = `B-scan ${S.row} / ${S.H - 1} (${(S.W * S.sw).toFixed(2)} x ${(S.D * S.sd).toFixed(2)} mm)`;
}

function drawExtent() {  // this row's extent of each mask, in three thin bands under the B-scan
  const canvas = $("extent"), ctx = canvas.getContext("2d");
  const dpr = window.devicePixelRatio || 1, r = canvas.getBoundingClientRect();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(dpr * bscanView.zoom * r.width / S.W, 0, 0, dpr, dpr * bscanView.panX, 0);
  const bands = ["reference", "prediction", "grader"];
  bands.forEach((name, k) => {
    const mask = S.masks[name];
    if (!mask) return;
    const c = COLOURS[name];
    ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
    const offset = S.row * S.W;
    for (let j = 0; j < S.W; j++) {
      if (!mask[offset + j]) continue;
      let e = j;
      while (e + 1 < S.W && mask[offset + e + 1]) e++;
      ctx.fillRect(j, k * 6, e - j + 1, 5);
      j = e;
    }
  });
  if (S.extentDrag) {
    const [a, b] = [Math.min(S.extentDrag.c0, S.extentDrag.c1), Math.max(S.extentDrag.c0, S.extentDrag.c1)];
    ctx.fillStyle = S.extentDrag.value ? "rgba(0,229,255,0.45)" : "rgba(255,80,80,0.6)";
    ctx.fillRect(a, 0, b - a + 1, 18);
  }
}

function drawAreas() {
  const px = S.sh * S.sw;
  const area = (m) => (m ? (countOnes(m) * px).toFixed(3) + " mm²" : "—");
  $("areas").innerHTML = "";
  for (const [name, label] of [["grader", S.session.grader || "grader"], ["reference", "reference"], ["prediction", "predicted"]]) {
    const span = document.createElement("span");
    span.className = { grader: "mine", reference: "ref", prediction: "pred" }[name];
    span.textContent = `${label}: ${area(S.masks[name])}`;
    $("areas").appendChild(span);
  }
}

function countOnes(mask) { let n = 0; for (let i = 0; i < mask.length; i++) n += mask[i]; return n; }

function drawAll() {
  if (!S.info) return;
  drawEnface();
  drawBscan();
  drawAreas();
}

function refreshGrader() {
  paintMask(S.overlays.grader, S.masks.grader, COLOURS.grader);
  const dirty = !sameMask(S.masks.grader, S.savedMask);
  status(dirty ? "unsaved changes" : (S.version === "none" ? "no saved mask" : "saved"), dirty ? "dirty" : "");
  $("undo").disabled = S.undo.length === 0;
  $("redo").disabled = S.redo.length === 0;
  drawAll();
}

function sameMask(a, b) {
  if (!b) return countOnes(a) === 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ------------------------------------------------------------------ B-scans (cached, latest wins)

function showRow(row, col = S.col) {
  row = clamp(row, 0, S.H - 1);
  col = clamp(col, 0, S.W - 1);
  const moved = row !== S.row;
  S.row = row; S.col = col;
  if (moved || !S.bscans.has(row)) requestBscan(row, performance.now());
  drawEnface();
  drawBscan();
}

function requestBscan(row, since) {
  if (S.inFlight.has(row)) return;
  if (S.bscans.has(row)) {
    touchBscan(row);
    requestAnimationFrame(() => timings.bscan.push({ row, ms: performance.now() - since, cached: true }));
    return;
  }
  const id = S.caseId;
  S.inFlight.add(row);
  fetchBscan(row).then((bitmap) => {
    if (id !== S.caseId) return;
    S.inFlight.delete(row);
    S.bscans.set(row, bitmap);
    trimBscans();
    if (S.row === row) {
      drawBscan();
      requestAnimationFrame(() => timings.bscan.push({ row, ms: performance.now() - since, cached: false }));
      prefetch(row);
    }
  }).catch((e) => { S.inFlight.delete(row); status("B-scan " + row + ": " + e.message, "error"); });
}

function touchBscan(row) { const b = S.bscans.get(row); S.bscans.delete(row); S.bscans.set(row, b); }
function trimBscans() {
  while (S.bscans.size > BSCAN_CACHE) {
    const oldest = S.bscans.keys().next().value;
    S.bscans.get(oldest).close();
    S.bscans.delete(oldest);
  }
}

function prefetch(row) {  // the neighbours, one at a time, while nothing else is asked for
  const id = S.caseId;
  for (const r of [row + 1, row - 1, row + 2, row - 2]) {
    if (r < 0 || r >= S.H || S.bscans.has(r) || S.inFlight.has(r)) continue;
    S.inFlight.add(r);
    fetchBscan(r).then((bitmap) => {
      if (id !== S.caseId) { bitmap.close(); return; }
      S.inFlight.delete(r);
      if (S.bscans.has(r)) bitmap.close(); else { S.bscans.set(r, bitmap); trimBscans(); }
      if (S.row === r) drawBscan();
    }).catch(() => S.inFlight.delete(r));
    return;
  }
}

// ------------------------------------------------------------------ editing

function pushUndo() {
  S.undo.push(S.masks.grader.slice());
  if (S.undo.length > UNDO_DEPTH) S.undo.shift();
  S.redo = [];
}

function undo() {
  if (!S.undo.length) return;
  S.redo.push(S.masks.grader);
  S.masks.grader = S.undo.pop();
  refreshGrader();
}

function redo() {
  if (!S.redo.length) return;
  S.undo.push(S.masks.grader);
  S.masks.grader = S.redo.pop();
  refreshGrader();
}

// Pixels whose centre lies within the brush radius (mm) of the segment p0-p1 (grid units).
function stampSegment(mask, p0, p1, radiusMm, value) {
  const ax = p0.x * S.sw, ay = p0.y * S.sh, bx = p1.x * S.sw, by = p1.y * S.sh;
  const dx = bx - ax, dy = by - ay, l2 = dx * dx + dy * dy, r2 = radiusMm * radiusMm;
  const i0 = clamp(Math.floor(Math.min(p0.y, p1.y) - radiusMm / S.sh) - 1, 0, S.H - 1);
  const i1 = clamp(Math.ceil(Math.max(p0.y, p1.y) + radiusMm / S.sh) + 1, 0, S.H - 1);
  const j0 = clamp(Math.floor(Math.min(p0.x, p1.x) - radiusMm / S.sw) - 1, 0, S.W - 1);
  const j1 = clamp(Math.ceil(Math.max(p0.x, p1.x) + radiusMm / S.sw) + 1, 0, S.W - 1);
  for (let i = i0; i <= i1; i++) {
    const py = (i + 0.5) * S.sh;
    for (let j = j0; j <= j1; j++) {
      const px = (j + 0.5) * S.sw;
      const t = l2 > 0 ? clamp(((px - ax) * dx + (py - ay) * dy) / l2, 0, 1) : 0;
      const qx = ax + t * dx - px, qy = ay + t * dy - py;
      if (qx * qx + qy * qy <= r2) mask[i * S.W + j] = value;
    }
  }
  for (const p of [p0, p1]) {  // the pixel under the cursor, however small the brush
    const i = Math.floor(p.y), j = Math.floor(p.x);
    if (i >= 0 && i < S.H && j >= 0 && j < S.W) mask[i * S.W + j] = value;
  }
}

function brushRadiusMm() { return clamp(Number($("brush").value) || 200, 10, 5000) / 2000; }

function fill(i, j, value) {  // 4-connected region of the clicked pixel's value gets `value`
  const m = S.masks.grader, target = m[i * S.W + j];
  if (target === value) return false;
  const stack = [i * S.W + j];
  m[i * S.W + j] = value;
  while (stack.length) {
    const k = stack.pop(), r = Math.floor(k / S.W), c = k % S.W;
    const next = [r > 0 ? k - S.W : -1, r < S.H - 1 ? k + S.W : -1, c > 0 ? k - 1 : -1, c < S.W - 1 ? k + 1 : -1];
    for (const n of next) if (n >= 0 && m[n] === target) { m[n] = value; stack.push(n); }
  }
  return true;
}

function setExtent(row, c0, c1, value) {
  const [a, b] = [Math.min(c0, c1), Math.max(c0, c1)];
  S.masks.grader.fill(value, row * S.W + a, row * S.W + b + 1);
  debug.lastExtent = { row, from: a, to: b, value };
}

function canEdit() {
  if (!S.session.grader) { status("read-only: start enface review with --grader NAME to edit", "error"); return false; }
  return true;
}

// ------------------------------------------------------------------ pointer input

function onEnfaceDown(ev) {
  if (!S.info) return;
  const panning = S.tool === "pan" || ev.button === 1 || S.space;
  $("enface").setPointerCapture(ev.pointerId);
  if (panning) { S.panDrag = { x: ev.clientX, y: ev.clientY, view: enfaceView }; return; }
  if (ev.button !== 0 && ev.button !== 2) return;
  if (!canEdit()) return;
  const g = enfaceView.toGrid(ev.clientX, ev.clientY);
  const erase = S.tool === "eraser" || ev.button === 2;
  if (S.tool === "fill") {
    const i = Math.floor(g.y), j = Math.floor(g.x);
    if (i < 0 || i >= S.H || j < 0 || j >= S.W) return;
    const before = S.masks.grader.slice();
    if (fill(i, j, ev.shiftKey || ev.button === 2 ? 0 : 1)) { S.undo.push(before); S.redo = []; refreshGrader(); }
    return;
  }
  pushUndo();
  S.stroke = { last: g, value: erase ? 0 : 1, radius: brushRadiusMm() };
  debug.lastStroke = [[ev.clientX, ev.clientY]];
  stampSegment(S.masks.grader, g, g, S.stroke.radius, S.stroke.value);
  refreshGrader();
}

function onEnfaceMove(ev) {
  if (!S.info) return;
  if (S.panDrag) { panBy(ev); return; }
  const g = enfaceView.toGrid(ev.clientX, ev.clientY);
  if (S.stroke) {
    debug.lastStroke.push([ev.clientX, ev.clientY]);
    stampSegment(S.masks.grader, S.stroke.last, g, S.stroke.radius, S.stroke.value);
    S.stroke.last = g;
    paintMask(S.overlays.grader, S.masks.grader, COLOURS.grader);
  }
  if (g.x >= 0 && g.x < S.W && g.y >= 0 && g.y < S.H) showRow(Math.floor(g.y), Math.floor(g.x));
  else if (S.stroke) drawAll();
}

function onEnfaceUp(ev) {
  if (S.panDrag) { S.panDrag = null; return; }
  if (S.stroke) { S.stroke = null; refreshGrader(); }
}

function onBscanDown(ev) {
  if (!S.info) return;
  $("bscan").setPointerCapture(ev.pointerId);
  if (S.tool === "pan" || ev.button === 1 || S.space) { S.panDrag = { x: ev.clientX, y: ev.clientY, view: bscanView }; return; }
  if (ev.button !== 0 && ev.button !== 2) return;
  if (!canEdit()) return;
  const c = bscanColumn(ev.clientX);
  S.extentDrag = { c0: c, c1: c, value: S.tool === "eraser" || ev.button === 2 ? 0 : 1 };
  drawExtent();
}

function bscanColumn(clientX) { return clamp(Math.floor(bscanView.toGrid(clientX, 0).x), 0, S.W - 1); }

function onBscanMove(ev) {
  if (!S.info) return;
  if (S.panDrag) { panBy(ev); return; }
  const c = bscanColumn(ev.clientX);
  if (S.extentDrag) S.extentDrag.c1 = c;
  S.col = c;
  drawEnface();
  drawBscan();
}

function onBscanUp(ev) {
  if (S.panDrag) { S.panDrag = null; return; }
  if (!S.extentDrag) return;
  const drag = S.extentDrag;
  S.extentDrag = null;
  pushUndo();
  setExtent(S.row, drag.c0, drag.c1, drag.value);
  refreshGrader();
}

function panBy(ev) {
  const d = S.panDrag, view = d.view;
  view.panX += ev.clientX - d.x;
  view.panY += ev.clientY - d.y;
  d.x = ev.clientX; d.y = ev.clientY;
  view.clampPan();
  drawAll();
}

function onWheel(view) {
  return (ev) => {
    ev.preventDefault();
    view.zoomAt(ev.clientX, ev.clientY, ev.deltaY < 0 ? 1.25 : 0.8);
    drawAll();
  };
}

function onKey(ev) {
  if (ev.target.tagName === "INPUT" && ev.target.type !== "range" && ev.target.type !== "checkbox") return;
  const k = ev.key, ctrl = ev.ctrlKey || ev.metaKey;
  if (ctrl && (k === "z" || k === "Z")) { ev.preventDefault(); if (ev.shiftKey) redo(); else undo(); return; }
  if (ctrl && (k === "y" || k === "Y")) { ev.preventDefault(); redo(); return; }
  if (ctrl && (k === "s" || k === "S")) { ev.preventDefault(); save(false); return; }
  if (ctrl || !S.info) return;
  const step = ev.shiftKey ? 10 : 1;
  const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -step], ArrowRight: [0, step] };
  if (moves[k]) { ev.preventDefault(); showRow(S.row + moves[k][0], S.col + moves[k][1]); return; }
  const tools = { b: "brush", e: "eraser", f: "fill", h: "pan" };
  if (tools[k]) setTool(tools[k]);
  if (k === "[" || k === "]") { $("brush").value = clamp(Number($("brush").value) + (k === "]" ? 50 : -50), 10, 5000); }
  if (k === "0") { enfaceView.reset(); bscanView.reset(); drawAll(); }
  if (k === " ") { S.space = true; ev.preventDefault(); }
}

function setTool(tool) {
  S.tool = tool;
  for (const b of document.querySelectorAll("#tools [data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
}

// ------------------------------------------------------------------ saving, reviewing, promoting

async function save(overwrite) {
  if (!S.info || !canEdit()) return;
  const base = overwrite ? S.conflictVersion : S.version;
  status("saving…");
  try {
    const response = await api(caseUrl(S.caseId, "/mask"), {
      method: "PUT",
      headers: {
        "Content-Type": "application/octet-stream", "X-Base-Version": base,
        "X-Started-From": S.startedFrom, "X-Seconds": ((performance.now() - S.openedAt) / 1000).toFixed(1),
      },
      body: S.masks.grader,
    });
    const result = await response.json();
    S.version = result.version;
    S.savedMask = S.masks.grader.slice();
    S.startedFrom = "saved";
    S.openedAt = performance.now();
    $("conflict").hidden = true;
    refreshGrader();
    status(`saved (${result.pixels_changed} pixels changed, ${result.area_mm2.toFixed(3)} mm²)`);
    await loadCaseList();
  } catch (e) {
    if (e.status === 409) {
      S.conflictVersion = e.body && e.body.current;
      $("conflict-text").textContent = "Not saved: " + e.message + ".";
      $("conflict").hidden = false;
      status("conflict", "error");
    } else status("not saved: " + e.message, "error");
  }
}

async function decide(decision) {
  if (!canEdit()) return;
  try {
    await api(caseUrl(S.caseId, "/review"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ decision }),
    });
    S.info.decision = decision;
    showReview();
    if (decision === "correct" && S.version === "none" && S.masks.prediction && !countOnes(S.masks.grader)) fromPrediction();
    await loadCaseList();
  } catch (e) { status("decision not recorded: " + e.message, "error"); }
}

async function promote() {
  if (!canEdit()) return;
  if (S.version === "none" || !sameMask(S.masks.grader, S.savedMask)) { status("save the mask first", "error"); return; }
  const task = S.session.task;
  if (!window.confirm(`Copy ${S.session.grader}'s saved mask to the reference mask_${task}.png of ${S.caseId}?`)) return;
  try {
    await api(caseUrl(S.caseId, "/promote"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ version: S.version }),
    });
    await openCase(S.caseId);
    await loadCaseList();
    status(`mask_${task}.png written`);
  } catch (e) { status("not promoted: " + e.message, "error"); }
}

function fromPrediction() {
  if (!S.masks.prediction || !canEdit()) return;
  pushUndo();
  S.masks.grader = S.masks.prediction.slice();
  if (S.version === "none") S.startedFrom = "prediction";
  refreshGrader();
}

function showReview() {
  const p = S.info.prediction;
  $("review").hidden = !p;
  if (!p) return;
  const sd = p.area_sd_mm2 === null ? "" : ` ± ${p.area_sd_mm2.toFixed(3)}`;
  $("pred-area").textContent = `area ${p.area_mm2 === null ? "?" : p.area_mm2.toFixed(3)}${sd} mm² (ensemble spread)`;
  $("decision").textContent = S.info.decision ? `your decision: ${S.info.decision}` : "no decision yet";
  for (const b of $("decisions").children) b.classList.toggle("active", b.dataset.decision === S.info.decision);
}

// ------------------------------------------------------------------ cases

async function loadCaseList() {
  S.cases = await (await api("/api/cases")).json();
  renderCaseList();
}

function renderCaseList() {
  const list = $("cases"), filter = $("filter").value.trim().toLowerCase();
  list.innerHTML = "";
  for (const c of S.cases) {
    if (filter && !c.case_id.toLowerCase().includes(filter)) continue;
    const li = document.createElement("li");
    li.dataset.case = c.case_id;
    if (c.case_id === S.caseId) li.className = "current";
    const add = (cls, text) => { const s = document.createElement("span"); s.className = cls; s.textContent = text; li.appendChild(s); };
    add("id", (c.rank !== undefined ? "#" + c.rank + "  " : "") + c.case_id);
    add(c.labeled ? "badge ref" : "badge", c.labeled ? "labeled" : "unlabeled");
    if (c.graded || c.reviewed) add("badge mine", c.decision || "✓");
    if (c.score !== undefined && c.score !== null) add("badge", c.score.toFixed(3));
    li.title = c.case_id + (c.predicted_area_mm2 != null ? ` · predicted ${c.predicted_area_mm2.toFixed(3)} mm²` : "");
    li.addEventListener("click", () => openCase(c.case_id));
    list.appendChild(li);
  }
}

function confirmLeave() {
  return !S.info || sameMask(S.masks.grader, S.savedMask) || window.confirm("Discard the unsaved changes of " + S.caseId + "?");
}

async function openCase(id) {
  if (id !== S.caseId && !confirmLeave()) return;
  const t0 = performance.now();
  status("loading " + id + "…");
  const info = await (await api(caseUrl(id))).json();
  for (const b of S.bscans.values()) b.close();
  S.bscans.clear();
  S.inFlight = new Set();
  Object.assign(S, { caseId: id, info, H: info.shape[0], W: info.shape[1], D: info.shape[2] });
  [S.sh, S.sw, S.sd] = info.spacing;
  enfaceView = new View($("enface"), S.W, S.H);
  bscanView = new View($("bscan"), S.W, S.D);
  const layerSelect = $("layer");
  const wanted = info.layers.includes(S.layer) ? S.layer : info.layers[0];
  layerSelect.innerHTML = "";
  for (const name of info.layers) layerSelect.add(new Option(LAYER_NAMES[name] || name, name, false, name === wanted));
  S.layer = wanted;
  const [base, reference, prediction, grader] = await Promise.all([
    fetchBitmap(caseUrl(id, "/enface/" + wanted)),
    info.masks.reference !== "none" ? fetchMask("reference") : null,
    info.masks.prediction !== "none" ? fetchMask("prediction") : null,
    info.masks.grader !== "none" ? fetchMask("grader") : null,
  ]);
  S.base = base;
  S.masks = { reference, prediction, grader: grader || new Uint8Array(S.H * S.W) };
  S.savedMask = grader ? grader.slice() : null;
  S.version = info.masks.grader;
  S.startedFrom = grader ? "saved" : "empty";
  S.overlays = {};
  for (const name of ["reference", "prediction", "grader"]) S.overlays[name] = maskImage(S.masks[name] || new Uint8Array(S.H * S.W), COLOURS[name]);
  S.undo = []; S.redo = [];
  S.row = S.masks.reference ? busiestRow(S.masks.reference) : Math.floor(S.H / 2);
  S.col = Math.floor(S.W / 2);
  S.openedAt = performance.now();
  $("from-prediction").disabled = !S.masks.prediction;
  $("promote").disabled = !S.session.grader || info.masks.reference !== "none";
  $("promote").title = info.masks.reference !== "none" ? "this case has a reference mask already (it is never replaced here)"
    : "copy this grader's saved mask to the reference mask_" + S.session.task + ".png";
  $("conflict").hidden = true;
  showReview();
  renderCaseList();
  const visit = info.visit === null ? "" : `, day ${info.visit}`;
  $("case-info").textContent = `${id}: patient ${info.patient_id}, ${info.eye}${visit} · ${S.H} x ${S.W} x ${S.D}` +
    ` · ${(S.H * S.sh).toFixed(2)} x ${(S.W * S.sw).toFixed(2)} mm`;
  layout();
  const first = S.row;
  S.inFlight.add(first);
  const bscan = await fetchBscan(first);
  S.inFlight.delete(first);
  S.bscans.set(first, bscan);
  refreshGrader();
  if (info.refused.length) status(info.refused.join("; "), "error");
  const ms = performance.now() - t0;
  timings.caseOpen.push({ case: id, ms });
  if (timings.firstView === null) timings.firstView = performance.now();
  prefetch(S.row);
}

const LAYER_NAMES = { slo: "SLO", faf: "FAF", mean: "OCT mean", sub_bm: "OCT sub-BM slab", probability: "probability", uncertainty: "uncertainty" };

function busiestRow(mask) {
  let best = Math.floor(S.H / 2), most = 0;
  for (let i = 0; i < S.H; i++) {
    let n = 0;
    for (let j = 0; j < S.W; j++) n += mask[i * S.W + j];
    if (n > most) { most = n; best = i; }
  }
  return best;
}

async function changeLayer() {
  S.layer = $("layer").value;
  S.base = await fetchBitmap(caseUrl(S.caseId, "/enface/" + S.layer));
  drawAll();
}

// ------------------------------------------------------------------ start

function wire() {
  const enface = $("enface"), bscan = $("bscan");
  enface.addEventListener("pointerdown", onEnfaceDown);
  enface.addEventListener("pointermove", onEnfaceMove);
  enface.addEventListener("pointerup", onEnfaceUp);
  enface.addEventListener("pointercancel", onEnfaceUp);
  enface.addEventListener("contextmenu", (ev) => ev.preventDefault());
  bscan.addEventListener("pointerdown", onBscanDown);
  bscan.addEventListener("pointermove", onBscanMove);
  bscan.addEventListener("pointerup", onBscanUp);
  bscan.addEventListener("pointercancel", onBscanUp);
  bscan.addEventListener("contextmenu", (ev) => ev.preventDefault());
  enface.addEventListener("wheel", (ev) => onWheel(enfaceView)(ev), { passive: false });
  bscan.addEventListener("wheel", (ev) => onWheel(bscanView)(ev), { passive: false });
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", (ev) => { if (ev.key === " ") S.space = false; });
  window.addEventListener("resize", layout);
  window.addEventListener("beforeunload", (ev) => { if (S.info && !sameMask(S.masks.grader, S.savedMask)) { ev.preventDefault(); ev.returnValue = ""; } });
  for (const b of document.querySelectorAll("#tools [data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("save").addEventListener("click", () => save(false));
  $("clear").addEventListener("click", () => { if (canEdit()) { pushUndo(); S.masks.grader.fill(0); refreshGrader(); } });
  $("from-prediction").addEventListener("click", fromPrediction);
  $("conflict-overwrite").addEventListener("click", () => save(true));
  $("conflict-reload").addEventListener("click", () => openCase(S.caseId));
  $("promote").addEventListener("click", promote);
  $("export").addEventListener("click", exportReviews);
  $("layer").addEventListener("change", changeLayer);
  $("filter").addEventListener("input", renderCaseList);
  for (const id of ["show-reference", "show-prediction", "show-grader", "op-reference", "op-prediction", "op-grader"]) $(id).addEventListener("input", drawEnface);
  for (const d of S.session.decisions) {
    const b = document.createElement("button");
    b.textContent = d[0].toUpperCase() + d.slice(1);
    b.dataset.decision = d;
    b.addEventListener("click", () => decide(d));
    $("decisions").appendChild(b);
  }
}

async function start() {
  S.session = await (await api("/api/session")).json();
  const g = S.session.grader;
  $("session").textContent = `${S.session.dataset} · task ${S.session.task} · ${g ? "grader " + g : "read-only"}`;
  $("grader-name").textContent = g || "grader";
  for (const id of ["save", "clear", "promote"]) $(id).disabled = !g;
  if (!S.session.predictions) for (const id of ["from-prediction", "op-prediction"]) $(id).closest(id === "from-prediction" ? "button" : ".overlay").hidden = true;
  wire();
  setTool("brush");
  await loadCaseList();
  if (S.cases.length) await openCase(S.cases[0].case_id);
}

start().catch((e) => status("cannot start: " + e.message, "error"));
