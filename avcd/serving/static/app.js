// The page of `avcd serve`: sends the chosen video to POST /v1/predict, then shows the answer
// (avcd predict's JSON document) over the video, played from the local file.
"use strict";

const $ = (id) => document.getElementById(id);
const TIMELINE_WIDTH = 1000; // the timeline SVG's viewBox: x in [0, 1000], P(fake) 1 at y 0
let shown = null; // { record, url } of the result on the page

function show(id, visible) { $(id).hidden = !visible; }

function fail(message) {
  show("progress-row", false);
  $("error").textContent = message;
  show("error", true);
}

function submit(file) {
  if (!file) return;
  show("error", false);
  show("result", false);
  const form = new FormData();
  form.append("video", file, file.name);
  for (const name of ["detector", "threshold", "window", "stride", "probability"]) {
    form.append(name, $(name).value);
  }
  const request = new XMLHttpRequest();
  request.open("POST", "/v1/predict");
  const token = sessionStorage.getItem("avcd-token");
  if (token) request.setRequestHeader("Authorization", `Bearer ${token}`);
  request.responseType = "json";
  const progress = $("progress");
  progress.value = 0;
  $("status").textContent = "Uploading…";
  show("progress-row", true);
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) progress.value = event.loaded / event.total;
  };
  let timer = null;
  request.upload.onload = () => {
    // The server says nothing until the answer: the bar turns indeterminate, the time counts.
    progress.removeAttribute("value");
    const started = Date.now();
    const tick = () => {
      $("status").textContent =
        `Decoding and scoring… ${Math.round((Date.now() - started) / 1000)} s`;
    };
    tick();
    timer = setInterval(tick, 1000);
  };
  request.onloadend = () => {
    clearInterval(timer);
    if (request.status === 200) {
      show("progress-row", false);
      render(request.response, file);
    } else if (request.status === 401) {
      show("token-row", true);
      fail("This server asks for a token: enter it and send again.");
    } else if (request.status === 0) {
      fail("The server cannot be reached.");
    } else {
      const detail = request.response && request.response.detail;
      const retry = request.getResponseHeader("Retry-After");
      fail(`Not scored: ${detail || request.statusText || request.status}` +
        (retry ? ` (try again in ${retry} s)` : ""));
    }
  };
  request.send(form);
}

function render(documentJson, file) {
  const record = documentJson.videos[0];
  if (shown) URL.revokeObjectURL(shown.url);
  shown = { record, url: URL.createObjectURL(file) };

  const label = record.label;
  const calibration = documentJson.model.calibration;
  const verdict = $("verdict");
  verdict.dataset.probability = record.probability;
  verdict.dataset.label = label;
  verdict.innerHTML = "";
  const strong = document.createElement("span");
  strong.className = `label ${label}`;
  strong.textContent = label;
  verdict.append(strong, ` — P(fake) ${record.probability.toFixed(3)} ` +
    `(${calibration ? "calibrated" : "raw"}), threshold ` +
    `${documentJson.options.threshold.toFixed(2)}, over ${record.seconds.toFixed(2)} s`);

  const player = $("player");
  show("player-note", false);
  player.onerror = () => show("player-note", true);
  player.onloadedmetadata = placeFaceBox;
  player.src = shown.url;

  drawTimeline(record, documentJson.options.threshold);
  listSegments(record.segments);

  const detection = record.face_detection;
  $("face-note").textContent = detection
    ? `Face ${detection.chosen + 1} of ${detection.faces} scored (${detection.reason}), ` +
      `found on ${Math.round(detection.found_fraction * 100)}% of the sampled frames.`
    : "No face detection: the whole frame was scored as the face.";

  const download = $("download");
  if (download.href) URL.revokeObjectURL(download.href);
  download.href = URL.createObjectURL(
    new Blob([JSON.stringify(documentJson, null, 2)], { type: "application/json" }));
  download.download = `${record.path.replace(/\.[^.]*$/, "")}.avcd.json`;
  show("result", true);
  placeFaceBox();
}

function placeFaceBox() {
  const player = $("player");
  const detection = shown && shown.record.face_detection;
  const box = $("face-box");
  if (!detection || !player.videoWidth) {
    box.hidden = true;
    return;
  }
  // The video fills the stage's width at its own aspect ratio: one scale for both axes.
  const scale = player.clientWidth / player.videoWidth;
  const [x, y, width, height] = detection.box;
  Object.assign(box.style, {
    left: `${x * scale}px`, top: `${y * scale}px`,
    width: `${width * scale}px`, height: `${height * scale}px`,
  });
  box.hidden = false;
}

function drawTimeline(record, threshold) {
  const seconds = record.seconds;
  const x = (time) => (time / seconds) * TIMELINE_WIDTH;
  const y = (probability) => (1 - probability) * 100;
  $("frame-line").setAttribute("points", record.frame_probabilities
    .map((p, i) => `${x((i + 0.5) / record.fps).toFixed(2)},${y(p).toFixed(2)}`).join(" "));
  const line = $("threshold-line");
  line.setAttribute("y1", y(threshold));
  line.setAttribute("y2", y(threshold));
  const shading = $("segment-shading");
  shading.replaceChildren(...(record.segments || []).map((segment) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", x(segment.start_s));
    rect.setAttribute("width", x(segment.end_s) - x(segment.start_s));
    rect.setAttribute("y", 0);
    rect.setAttribute("height", 100);
    return rect;
  }));
  movePlayhead();
}

function listSegments(segments) {
  const list = $("segments");
  if (segments === null) {
    list.replaceChildren(Object.assign(document.createElement("li"),
      { textContent: "Unknown: some frame's P(fake) is not a number." }));
    return;
  }
  if (segments.length === 0) {
    list.replaceChildren(Object.assign(document.createElement("li"),
      { className: "none", textContent: "None: no frames at or above the threshold." }));
    return;
  }
  list.replaceChildren(...segments.map((segment) => {
    const item = document.createElement("li");
    item.className = "segment";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${segment.start_s.toFixed(2)}–${segment.end_s.toFixed(2)} s`;
    button.onclick = () => seek(segment.start_s);
    item.append(button, `, mean P(fake) ${segment.score.toFixed(2)}`);
    return item;
  }));
}

function seek(time) {
  const player = $("player");
  player.currentTime = time;
  movePlayhead();
}

function movePlayhead() {
  if (!shown) return;
  const record = shown.record;
  const time = Math.min($("player").currentTime || 0, record.seconds);
  const position = (time / record.seconds) * TIMELINE_WIDTH;
  $("playhead").setAttribute("x1", position);
  $("playhead").setAttribute("x2", position);
  const frame = Math.min(Math.floor(time * record.fps), record.num_frames - 1);
  $("readout").textContent =
    `${time.toFixed(2)} s: P(fake) ${record.frame_probabilities[frame].toFixed(3)}`;
}

function followPlayback() {
  movePlayhead();
  if (!$("player").paused) requestAnimationFrame(followPlayback);
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => submit(event.target.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    submit(event.dataTransfer.files[0]);
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("avcd-token", $("token").value);
    submit($("file").files[0]);
  });
  $("timeline").addEventListener("click", (event) => {
    if (!shown) return;
    const bounds = event.currentTarget.getBoundingClientRect();
    seek(((event.clientX - bounds.left) / bounds.width) * shown.record.seconds);
  });
  const player = $("player");
  player.addEventListener("play", followPlayback);
  player.addEventListener("seeked", movePlayhead);
  player.addEventListener("timeupdate", movePlayhead);
  window.addEventListener("resize", placeFaceBox);
});
