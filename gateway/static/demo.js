// Demo page: classify one image through this gateway and show where the model saw the chosen class (the
// class activation map of /v1/explain, drawn over the preview). Works under a path prefix (e.g. an API
// Gateway stage).
"use strict";
(function () {
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const $ = (id) => document.getElementById(id);
  const key = $("key");
  key.value = sessionStorage.getItem("apiKey") || "";
  key.addEventListener("input", () => sessionStorage.setItem("apiKey", key.value));

  function show(message, isError) {
    $("error").hidden = !isError;
    $("error").textContent = isError ? message : "";
    $("status").textContent = isError ? "" : message;
  }

  const MAX_SIDE = 1024; // the overlay's resolution, as the PNG form of /v1/explain

  // blue (none) through green and yellow to red (the map's peak), as gateway/overlay.py
  function colour(v) {
    const c = (shift) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - shift))));
    return [c(3), c(2), c(1)];
  }

  // The 7x7 map of `classId` stretched (bilinear) over the model's input crop, in the image's own pixels.
  function draw(body, classId) {
    const explanation = body.explanations.find((e) => e.class_id === classId);
    const canvas = $("overlay");
    const scale = Math.min(1, MAX_SIDE / Math.max(body.image.width, body.image.height));
    canvas.width = Math.max(1, Math.round(body.image.width * scale));
    canvas.height = Math.max(1, Math.round(body.image.height * scale));
    const rows = explanation.cam.length;
    const cols = explanation.cam[0].length;
    const peak = Math.max(...explanation.cam.flat()) || 1;
    const grid = document.createElement("canvas");
    grid.width = cols;
    grid.height = rows;
    const cells = grid.getContext("2d").createImageData(cols, rows);
    explanation.cam.flat().forEach((value, i) => {
      const v = value / peak;
      cells.data.set([...colour(v), Math.round(255 * (0.25 + 0.4 * v))], 4 * i);
    });
    grid.getContext("2d").putImageData(cells, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    const crop = body.crop;
    ctx.drawImage(grid, crop.left * scale, crop.top * scale, (crop.right - crop.left) * scale,
      (crop.bottom - crop.top) * scale);
    canvas.dataset.classId = String(classId);
    canvas.hidden = false;
    $("explaining").textContent = "Highlighted: where the model saw \u201c" + explanation.label + "\u201d";
    $("explaining").hidden = false;
    for (const item of $("results").children) {
      item.classList.toggle("chosen", item.dataset.classId === String(classId));
    }
  }

  function render(body) {
    const list = $("results");
    list.replaceChildren();
    $("untrained").hidden = !(body.model && body.model.untrained);
    for (const p of body.predictions) {
      const item = document.createElement("li");
      item.dataset.classId = String(p.class_id);
      item.addEventListener("click", () => draw(body, p.class_id));
      const name = document.createElement("div");
      name.className = "name";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = (p.score * 100).toFixed(1) + "%";
      name.append(label, score);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = Math.max(0.5, p.score * 100).toFixed(1) + "%";
      bar.append(fill);
      item.append(name, bar);
      list.append(item);
    }
    show("Top " + body.predictions.length + " in " + Math.round(body.timing_ms.total) + " ms", false);
    draw(body, body.predictions[0].class_id);
  }

  async function classify(file) {
    $("results").replaceChildren();
    $("overlay").hidden = true;
    $("explaining").hidden = true;
    const preview = $("preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    show("Classifying…", false);
    const form = new FormData();
    form.append("file", file);
    try {
      const response = await fetch(base + "v1/explain", {  // top_k: the default, 5 or the model's classes if fewer
        method: "POST",
        headers: { "Authorization": "Bearer " + key.value.trim() },
        body: form,
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        show((body && body.detail) || ("HTTP " + response.status), true);
        return;
      }
      render(body);
    } catch (err) {
      show("The service could not be reached: " + err.message, true);
    }
  }

  const drop = $("drop");
  $("file").addEventListener("change", (e) => e.target.files[0] && classify(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
  });
})();
