// The capgen page: upload an image, list its captions, paint a word's attention over the image.
"use strict";

const $ = (id) => document.getElementById(id);
const UPSAMPLE = 16;  // attention cells -> pixels of the smoothed map before it is stretched
const SHADE = 200;    // alpha (of 255) over what a word did not look at
let limits = { max_upload_bytes: 10 * 1024 * 1024 };
let result = null;     // the last /api/caption answer
let pinned = null;     // word index kept on screen after a click
let shown = null;      // word index painted now
let uploads = 0;       // only the newest upload may fill the page

fetch("/healthz").then((r) => r.json()).then((info) => {
  limits = info;
  $("limits").textContent = `up to ${mb(info.max_upload_bytes)}, ${(info.max_pixels / 1e6).toFixed(0)} megapixels`;
}).catch(() => {});

function mb(bytes) { return `${(bytes / 1048576).toFixed(1)} MB`; }

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function upload(file) {
  if (!file) return;
  const id = ++uploads;
  if (file.size > limits.max_upload_bytes) {
    setStatus(`${file.name}: ${mb(file.size)} is over the upload limit of ${mb(limits.max_upload_bytes)}`, true);
    return;
  }
  result = null; pinned = null; shown = null;
  $("captions").replaceChildren(); $("words").replaceChildren(); clearOverlay();
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  $("result").hidden = false;
  setStatus(`Captioning ${file.name}…`);
  const form = new FormData();
  form.append("image", file, file.name);
  let reply, body;
  try {
    reply = await fetch("/api/caption", { method: "POST", body: form });
    body = await reply.json();
  } catch (err) {
    if (id === uploads) setStatus(`${file.name}: no answer from the server (${err.message})`, true);
    return;
  }
  if (id !== uploads) return;
  if (!reply.ok) {
    setStatus(`${file.name}: ${body.error || reply.statusText} (HTTP ${reply.status})`, true);
    return;
  }
  result = body;
  render(file.name);
}

function render(name) {
  const list = $("captions");
  for (const c of result.captions) {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.className = "caption";
    text.textContent = c.text;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = c.score.toFixed(3);
    li.append(text, score);
    list.append(li);
  }
  const words = $("words");
  result.words.forEach((word, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "word";
    b.textContent = word;
    b.addEventListener("mouseenter", () => show(i));
    b.addEventListener("focus", () => show(i));
    b.addEventListener("mouseleave", () => show(pinned));
    b.addEventListener("blur", () => show(pinned));
    b.addEventListener("click", () => { pinned = pinned === i ? null : i; show(i); });
    words.append(b);
  });
  const [h, w] = result.grid;
  setStatus(`${name}: ${result.image.width}x${result.image.height}, ` +
            `attention grid ${h}x${w}, model ${result.model_ms.toFixed(0)} ms`);
}

function show(i) {
  shown = i;
  document.querySelectorAll("#words button").forEach((b, j) => {
    b.classList.toggle("active", j === i);
    b.classList.toggle("pinned", j === pinned);
  });
  if (i === null || !result) clearOverlay();
  else paint(result.attention[i], result.grid);
}

function clearOverlay() {
  const c = $("overlay");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  delete c.dataset.word;
}

// Catmull-Rom bicubic upsampling of an h x w grid (cell centres as samples, edges clamped).
function bicubic(values, h, w, s) {
  const H = h * s, W = w * s, out = new Float32Array(H * W);
  const at = (y, x) => values[Math.min(h - 1, Math.max(0, y)) * w + Math.min(w - 1, Math.max(0, x))];
  const weights = (t) => [
    ((-t + 2) * t - 1) * t / 2, ((3 * t - 5) * t * t + 2) / 2,
    ((-3 * t + 4) * t + 1) * t / 2, (t - 1) * t * t / 2,
  ];
  for (let Y = 0; Y < H; Y++) {
    const v = (Y + 0.5) / s - 0.5, y0 = Math.floor(v), wy = weights(v - y0);
    for (let X = 0; X < W; X++) {
      const u = (X + 0.5) / s - 0.5, x0 = Math.floor(u), wx = weights(u - x0);
      let sum = 0;
      for (let j = 0; j < 4; j++) {
        let row = 0;
        for (let i = 0; i < 4; i++) row += wx[i] * at(y0 - 1 + j, x0 - 1 + i);
        sum += wy[j] * row;
      }
      out[Y * W + X] = sum;
    }
  }
  return out;
}

// Darken what the word did not attend to, as in the Show, Attend and Tell figures.
function paint(attention, grid) {
  const [h, w] = grid;
  const peak = Math.max(...attention) || 1;
  const smooth = bicubic(attention.map((a) => a / peak), h, w, UPSAMPLE);
  const small = document.createElement("canvas");
  small.width = w * UPSAMPLE; small.height = h * UPSAMPLE;
  const sctx = small.getContext("2d");
  const pixels = sctx.createImageData(small.width, small.height);
  for (let k = 0; k < smooth.length; k++) {
    const a = Math.min(1, Math.max(0, smooth[k]));
    pixels.data[4 * k + 3] = Math.round(SHADE * (1 - a));
  }
  sctx.putImageData(pixels, 0, 0);
  const img = $("preview"), c = $("overlay");
  const dpr = window.devicePixelRatio || 1;
  c.width = Math.max(1, Math.round(img.clientWidth * dpr));
  c.height = Math.max(1, Math.round(img.clientHeight * dpr));
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  // The grid covers result.region of the image (all of it, or the centre square the model cropped).
  const [x0, y0, x1, y1] = result.region;
  const sx = c.width / result.image.width, sy = c.height / result.image.height;
  const box = [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy];
  ctx.fillStyle = `rgba(0, 0, 0, ${SHADE / 255})`;  // outside the region: unseen, fully shaded
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.clearRect(...box);
  ctx.drawImage(small, ...box);
  c.dataset.word = String(shown);
}

$("file").addEventListener("change", (e) => upload(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  upload(e.dataTransfer.files[0]);
});
$("preview").addEventListener("load", () => show(shown));
window.addEventListener("resize", () => show(shown));
