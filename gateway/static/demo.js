// Demo page: classify one image through this gateway. Works under a path prefix (e.g. an API Gateway stage).
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

  function render(body) {
    const list = $("results");
    list.replaceChildren();
    $("untrained").hidden = !(body.model && body.model.untrained);
    for (const p of body.predictions) {
      const item = document.createElement("li");
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
  }

  async function classify(file) {
    $("results").replaceChildren();
    const preview = $("preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    show("Classifying…", false);
    const form = new FormData();
    form.append("file", file);
    try {
      const response = await fetch(base + "v1/predict?top_k=5", {
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
