// agegender web page: send a photo to POST /v1/predict, draw the faces on a canvas and list them in a table.
"use strict";

const COLORS = { female: "#e63c78", male: "#2896eb" };
const MAX_CANVAS_SIDE = 1600; // canvas resolution cap; the photo is scaled to fit
let maxUploadBytes = Infinity;
let current = null; // { bitmap, result } of the photo shown
let latest = 0; // the number of the last photo chosen: an answer for an earlier one arrives too late to be shown
let activeFace = -1; // face highlighted from the table

const $ = (selector) => document.querySelector(selector);

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function showError(text) {
  // The faces of an earlier photo must not stay on screen under the error of a later one.
  current = null;
  $("#result").hidden = true;
  setStatus(text, true);
}

function mib(bytes, digits) {
  return (bytes / 1048576).toFixed(digits).replace(/\.0+$/, "");
}

function faceLabel(face, index) {
  return `${index + 1} · ${face.gender.charAt(0).toUpperCase()} ${Math.round(face.age)}`;  // F, M or U (unknown)
}

function percent(value) {
  return `${Math.round(value * 100)}%`;
}

async function loadModelInfo() {
  try {
    const response = await fetch("/v1/models");
    const info = await response.json();
    const model = info.models[0];
    maxUploadBytes = info.limits.max_upload_bytes;
    $("#model").textContent = `model ${model.name} ${model.version ?? ""} · uploads up to ${mib(maxUploadBytes, 1)} MiB`;
  } catch (error) {
    $("#model").textContent = "model information unavailable";
  }
}

async function analyse(file) {
  if (!file) return;
  const request = ++latest;
  if (file.size > maxUploadBytes) {
    // as many decimals as it takes for the two sizes to differ (a file just over 10 MiB is not "10.0")
    let digits = 1;
    while (digits < 6 && mib(file.size, digits) === mib(maxUploadBytes, digits)) digits += 1;
    showError(`${file.name} is ${mib(file.size, digits)} MiB; this server accepts up to ` +
              `${mib(maxUploadBytes, digits)} MiB.`);
    return;
  }
  setStatus(`Looking for faces in ${file.name}…`);
  // The browser decodes the photo for display (EXIF orientation applied, as the server does).
  let bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
  const form = new FormData();
  form.append("image", file);
  let response, body;
  try {
    response = await fetch(`/v1/predict?flip=${$("#flip").checked}`, { method: "POST", body: form });
    body = await response.json().catch(() => ({ detail: `the server answered ${response.status}` }));
  } catch (error) {
    if (request === latest) showError(`Could not reach the server (${error.message}).`);
    return;
  }
  if (request !== latest) return; // another photo was chosen meanwhile: its answer is the one to show
  if (!response.ok) {
    showError(`${file.name}: ${body.detail}`);
    return;
  }
  let preview = bitmap ? "" : " (this browser cannot display this image format; boxes shown on a blank canvas)";
  const { width, height } = body.image;
  if (bitmap && Math.abs(bitmap.width * height - bitmap.height * width) > 0.02 * width * height) {
    // the browser did not turn the image as its EXIF orientation says (Chromium and WebP): boxes would miss
    bitmap = null;
    preview = " (this browser displays this image turned otherwise than its EXIF orientation; boxes shown on a " +
              "blank canvas)";
  }
  current = { bitmap, result: body };
  activeFace = -1;
  render();
  const n = body.faces.length;
  const found = n === 0 ? "No face found" : `${n} face${n === 1 ? "" : "s"}`;
  setStatus(`${found} in ${file.name}, ${body.image.width}×${body.image.height}, ` +
            `${Math.round(body.timing_ms.total)} ms on the server.${preview}`);
}

function render() {
  $("#result").hidden = false;
  drawCanvas();
  fillTable();
}

function drawCanvas() {
  const { bitmap, result } = current;
  const canvas = $("#canvas");
  const { width, height } = result.image;
  const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(width, height));
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  if (bitmap) {
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  } else {
    ctx.fillStyle = "#888";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  // Sizes in screen pixels, whatever the photo's resolution.
  const perScreenPixel = canvas.width / (canvas.getBoundingClientRect().width || canvas.width);
  const fontSize = Math.round(13 * perScreenPixel);
  const pad = Math.round(3 * perScreenPixel);
  ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const boxes = result.faces.map((face) => face.box.map((v) => v * scale));
  boxes.forEach(([x, y, w, h], i) => {
    ctx.lineWidth = (i === activeFace ? 4 : 2) * perScreenPixel;
    ctx.strokeStyle = COLORS[result.faces[i].gender] ?? "#999";
    ctx.strokeRect(x, y, w, h);
  });
  const labels = result.faces.map(faceLabel);
  // Tags after boxes, the most confident face last so that its tag is on top.
  for (let i = boxes.length - 1; i >= 0; i--) {
    const [x, y, w, h] = boxes[i];
    const tagWidth = ctx.measureText(labels[i]).width + 2 * pad;
    const tagHeight = fontSize + 2 * pad;
    const tagX = Math.min(Math.max(x, 0), canvas.width - tagWidth);
    const tagY = y - tagHeight >= 0 ? y - tagHeight : Math.min(y + h, canvas.height - tagHeight);
    ctx.fillStyle = COLORS[result.faces[i].gender] ?? "#999";
    ctx.fillRect(tagX, tagY, tagWidth, tagHeight);
    ctx.fillStyle = "#fff";
    ctx.fillText(labels[i], tagX + pad, tagY + pad);
  }
  // What was drawn, for assistive technology and tests.
  canvas.dataset.labels = JSON.stringify(labels);
  canvas.setAttribute("aria-label", labels.length ? `The photo with ${labels.length} faces marked: ${labels.join("; ")}`
                                                  : "The photo; no face was found");
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function withConfidence(text, confidence) {
  const td = cell(`${text} `);
  if (confidence === null) return td;  // a point-age model gives no group probability
  const span = document.createElement("span");
  span.className = "conf";
  span.textContent = percent(confidence);
  td.append(span);
  return td;
}

function fillTable() {
  const tbody = $("#faces tbody");
  tbody.replaceChildren();
  const faces = current.result.faces;
  if (!faces.length) {
    const td = cell("No face found. Faces smaller than about 20 pixels, strongly turned or covered are missed.",
                    "none");
    td.colSpan = 6;
    const tr = document.createElement("tr");
    tr.append(td);
    tbody.append(tr);
    return;
  }
  faces.forEach((face, i) => {
    const tr = document.createElement("tr");
    // null for a model that regresses a point age: it has no interval
    const interval = face.age_range ? face.age_range.map(Math.round).join("–") : "—";
    tr.append(
      cell(String(i + 1)),
      withConfidence(face.gender, face.gender_confidence),
      cell(face.age.toFixed(1)),
      cell(interval),
      withConfidence(face.age_group, face.age_group_confidence),
      cell(percent(face.score)),
    );
    tr.children[1].classList.add(face.gender);
    tr.addEventListener("mouseenter", () => { activeFace = i; tr.classList.add("active"); drawCanvas(); });
    tr.addEventListener("mouseleave", () => { activeFace = -1; tr.classList.remove("active"); drawCanvas(); });
    tbody.append(tr);
  });
}

function setUpInput() {
  const drop = $("#drop");
  const input = $("#file");
  input.addEventListener("change", () => { analyse(input.files[0]); input.value = ""; });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over"); // left the window, not just a child element
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    analyse(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) analyse(file);
  });
}

setUpInput();
loadModelInfo();
