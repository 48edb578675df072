// got serve's page: upload, draw a box, stream the answer from POST /v1/ocr, render it with POST /v1/render.
// Everything comes from this server (no CDN): it works offline.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { file: null, drag: null, box: null, busy: false };

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function isPdf(file) {
  return file.type === "application/pdf" || /\.pdf$/i.test(file.name);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function showFile(file) {
  state.file = file;
  clearBox();
  $("answer").textContent = "";
  $("rendered").innerHTML = "";
  if (isPdf(file)) {  // the server draws the page as the model sees it, so a box is in the model's pixels
    const form = new FormData();
    form.append("file", file);
    form.append("page", (($("pages").value.match(/\d+/) || ["1"])[0]));
    const response = await fetch("/v1/preview", { method: "POST", body: form });
    if (!response.ok) { setStatus(await errorText(response), true); return; }
    $("image").src = URL.createObjectURL(await response.blob());
  } else {
    $("image").src = URL.createObjectURL(file);
  }
  $("run").disabled = false;
  setStatus("Ready: " + file.name);
}

function fitOverlay() {
  const img = $("image"), canvas = $("overlay");
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  drawBox();
}

function scale() {
  const img = $("image");
  return img.clientWidth ? img.naturalWidth / img.clientWidth : 1;
}

function drawBox() {
  const canvas = $("overlay"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const b = state.drag || state.box;
  if (!b) return;
  const s = state.drag ? 1 : 1 / scale();
  ctx.strokeStyle = "#e22";
  ctx.lineWidth = 2;
  ctx.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s);
}

function clearBox() {
  state.box = null;
  state.drag = null;
  $("box").value = "";
  drawBox();
}

function point(event) {
  const r = $("overlay").getBoundingClientRect();
  return [Math.max(0, Math.min(r.width, event.clientX - r.left)), Math.max(0, Math.min(r.height, event.clientY - r.top))];
}

$("overlay").addEventListener("mousedown", (e) => {
  const [x, y] = point(e);
  state.drag = [x, y, x, y];
  state.start = [x, y];
});
window.addEventListener("mousemove", (e) => {
  if (!state.drag) return;
  const [x, y] = point(e), [x0, y0] = state.start;
  state.drag = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
  drawBox();
});
window.addEventListener("mouseup", () => {
  if (!state.drag) return;
  const d = state.drag, s = scale();
  state.drag = null;
  if (d[2] - d[0] < 3 || d[3] - d[1] < 3) { clearBox(); return; }  // a click, not a box
  state.box = d.map((v) => Math.round(v * s));
  $("box").value = state.box.join(",");
  drawBox();
});
$("box").addEventListener("change", () => {
  const v = $("box").value.split(",").map(Number);
  state.box = v.length === 4 && v.every(Number.isFinite) ? v : null;
  drawBox();
});
$("clear-box").addEventListener("click", clearBox);
$("image").addEventListener("load", fitOverlay);
window.addEventListener("resize", fitOverlay);
$("file").addEventListener("change", () => { if ($("file").files[0]) showFile($("file").files[0]); });

async function render(text) {
  const response = await fetch("/v1/render", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: text }),
  });
  if (response.ok) $("rendered").innerHTML = (await response.json()).html;
}

async function run() {
  if (!state.file || state.busy) return;
  state.busy = true;
  $("run").disabled = true;
  $("answer").textContent = "";
  $("rendered").innerHTML = "";
  const form = new FormData();
  form.append("file", state.file);
  form.append("mode", $("mode").value);
  form.append("stream", "true");
  for (const id of ["box", "color", "pages", "max_tiles", "max_new_tokens"]) {
    if ($(id).value) form.append(id, $(id).value);
  }
  for (const id of ["crop", "multi_page"]) if ($(id).checked) form.append(id, "true");
  setStatus("Reading…");
  const t0 = performance.now();
  let text = "", pages = {}, lastRender = 0, answers = [];
  try {
    const response = await fetch("/v1/ocr", { method: "POST", body: form });
    if (!response.ok) { setStatus(await errorText(response), true); return; }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const body = JSON.parse(data);
        if (event === "start") {
          $("status").dataset.mode = body.mode;
          setStatus("Reading (" + body.mode + ")…");
        } else if (event === "text" || event === "answer") {
          const key = String(body.page);
          if (!(key in pages)) {  // a new page: a blank line apart
            if (Object.keys(pages).length) text += "\n\n";
            pages[key] = "";
          }
          if (event === "text") { pages[key] += body.text; text += body.text; }
          else {
            answers.push(body);
            if (!pages[key] && body.text) { pages[key] = body.text; text += body.text; }
          }
          $("answer").textContent = text;
          if ($("mode").value === "format" && performance.now() - lastRender > 1000) {
            lastRender = performance.now();
            render(text);
          }
        } else if (event === "error") {
          setStatus(body.error.message, true);
          return;
        }
      }
    }
    await render(text);
    const tokens = answers.reduce((n, a) => n + a.tokens, 0);
    const finish = answers.map((a) => a.finish).join(", ");
    setStatus("Done (" + $("status").dataset.mode + "): " + tokens + " tokens, " + finish + ", "
              + ((performance.now() - t0) / 1000).toFixed(1) + " s");
    document.body.dataset.done = "1";
  } catch (e) {
    setStatus("Failed: " + e, true);
  } finally {
    state.busy = false;
    $("run").disabled = false;
  }
}
$("run").addEventListener("click", () => { document.body.dataset.done = ""; run(); });
if (document.body.dataset.lineModel === "true") {
  $("mode").disabled = true;
  $("color").disabled = true;
  $("crop").disabled = true;
  $("hint").textContent += " This model reads text lines: plain OCR of the page or of a box.";
}
