// The pneumo page: pick or drop an X-ray, send it to /api/v1/predict, show the probability, label and heat map.
// Plain browser JavaScript, no build step, no third-party code; only this server is contacted.
"use strict";

(() => {
  const KEY_STORE = "pneumo.apiKey";
  const $ = (id) => document.getElementById(id);
  const el = {
    dropzone: $("dropzone"), file: $("file"), status: $("status"), keyForm: $("key-form"), apiKey: $("api-key"),
    result: $("result"), image: $("image"), heatmap: $("heatmap"), caption: $("heatmap-caption"),
    opacityRow: $("opacity-row"), legend: $("heatmap-legend"), opacity: $("opacity"), opacityValue: $("opacity-value"),
    label: $("label"), labelExplain: $("label-explain"), bar: $("bar"), barFill: $("bar-fill"),
    barThreshold: $("bar-threshold"), probability: $("probability"), threshold: $("threshold"), facts: $("facts"),
    oodWarning: $("ood-warning"), oodDetail: $("ood-detail"), calibrated: $("calibrated"),
    calibratedThreshold: $("calibrated-threshold"), meter: $("meter"), scoreName: $("score-name"),
    modelFacts: $("model-facts"), modelCardDetails: $("model-card-details"), modelCard: $("model-card"),
  };
  let pending = null; // the file waiting for an API key
  let localUrl = null;
  let classes = ["NORMAL", "PNEUMONIA"];
  let oodLimit = null; // the model's out-of-distribution threshold, from its card
  let latest = 0; // the number of the newest upload: an answer to an older one is dropped, never shown
  let inFlight = null; // the AbortController of the request being answered
  let mapHidden = false; // the heat map was hidden for an image without a verdict (shown again for the next verdict)

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? { "X-API-Key": key } : {};
  }

  function setStatus(text, isError = false) {
    el.status.textContent = text;
    el.status.classList.toggle("error", isError);
  }

  async function errorDetail(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
    } catch (_) { /* not JSON */ }
    return `${response.status} ${response.statusText}`;
  }

  function needKey(file) {
    pending = file;
    el.keyForm.hidden = false;
    el.apiKey.focus();
  }

  function fact(list, name, value) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    list.append(dt, dd);
  }

  const pct = (p) => `${(100 * p).toFixed(1)}%`;
  // a threshold as the reports print it (templates.fmt_threshold): 4 decimals, 3 significant digits below 0.001
  // (an adapted model's threshold of 0.0175 read 0.018, and one of 2e-05 would read 0.000)
  const fmtThreshold = (t) => (t === 0 || t >= 0.001 ? t.toFixed(4) : t.toPrecision(3));

  async function loadModel() {
    let response;
    try {
      response = await fetch("api/v1/model", { headers: authHeaders() });
    } catch (_) {
      el.modelFacts.replaceChildren();
      fact(el.modelFacts, "Status", "server unreachable");
      return;
    }
    el.modelFacts.replaceChildren();
    if (response.status === 401) {
      fact(el.modelFacts, "Status", "API key needed");
      el.keyForm.hidden = false;
      return;
    }
    if (!response.ok) {
      fact(el.modelFacts, "Status", await errorDetail(response));
      if (response.status === 503) setTimeout(loadModel, 2000);
      return;
    }
    const card = await response.json();
    classes = card.classes || classes;
    oodLimit = card.ood && typeof card.ood.threshold === "number" ? card.ood.threshold : null;
    fact(el.modelFacts, "Model", card.model_id);
    fact(el.modelFacts, "Classes", classes.join(", "));
    fact(el.modelFacts, "Input", `${card.input_size} × ${card.input_size} px, ${card.resize_policy || "squash"}`);
    fact(el.modelFacts, "Threshold", `${fmtThreshold(card.threshold)}${card.threshold_policy ? ` (${card.threshold_policy})` : ""}`);
    const test = (card.metrics && card.metrics.test) || (card.model_card && card.model_card.test_metrics);
    if (test && typeof test.roc_auc === "number") fact(el.modelFacts, "Test ROC-AUC", test.roc_auc.toFixed(3));
    if (typeof card.warning === "string") fact(el.modelFacts, "Warning", card.warning);
    if (test && typeof test.sensitivity === "number") fact(el.modelFacts, "Test sensitivity", pct(test.sensitivity));
    if (test && typeof test.specificity === "number") fact(el.modelFacts, "Test specificity", pct(test.specificity));
    if (card.card_markdown) {
      el.modelCard.textContent = card.card_markdown;
      el.modelCardDetails.hidden = false;
    }
  }

  // Forget the previous result: no verdict, probability, heat map or image may outlive the upload that made them.
  function clearResult() {
    if (localUrl) URL.revokeObjectURL(localUrl);
    localUrl = null;
    el.result.hidden = true;
    el.image.removeAttribute("src");
    el.heatmap.removeAttribute("src");
    el.heatmap.hidden = true;
    el.opacityRow.hidden = true;
    el.legend.hidden = true;
    el.caption.textContent = "";
    el.label.textContent = "—";
    el.label.className = "label";
    el.labelExplain.textContent = "";
    el.barFill.style.width = "0%";
    el.bar.setAttribute("aria-valuenow", "0");
    el.bar.removeAttribute("aria-valuetext");
    el.probability.textContent = "—";
    el.threshold.textContent = "—";
    el.calibrated.textContent = "—";
    el.calibratedThreshold.textContent = "";
    el.facts.replaceChildren();
    el.oodWarning.hidden = true;
    el.oodDetail.textContent = "";
  }

  function showError(text) {
    clearResult();
    setStatus(text, true);
  }

  function showLocalPreview(file) {
    clearResult();
    if (/^image\/(jpeg|png)$/.test(file.type)) {
      localUrl = URL.createObjectURL(file);
      el.image.src = localUrl;
      el.result.hidden = false;
    }
  }

  async function post(file, query, signal) {
    const form = new FormData();
    form.append("file", file, "upload"); // the file name stays on this computer
    return fetch(`api/v1/predict?${query}`, { method: "POST", body: form, headers: authHeaders(), signal });
  }

  async function analyse(file) {
    if (!file) return;
    const id = ++latest; // a newer upload supersedes this one: its answer, or its error, is never shown
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const stale = () => id !== latest;
    setStatus("Analysing…");
    showLocalPreview(file);
    let heatNote = "";
    let response;
    try {
      response = await post(file, "heatmap=true&preview=true", controller.signal);
      if (!stale() && (response.status === 501 || response.status === 503)) {
        const detail = await errorDetail(response);
        if (response.status === 503 && !detail.startsWith("heat map unavailable")) { // busy: said as it is
          if (!stale()) showError(`Not analysed: ${detail}`);
          return;
        }
        heatNote = detail; // no heat map here (ONNX only, or the folder changed since start): the verdict without it
        response = await post(file, "preview=true", controller.signal);
      }
    } catch (_) {
      if (!stale()) showError("The server could not be reached.");
      return;
    }
    if (stale()) return;
    if (response.status === 401) {
      const sent = Boolean(sessionStorage.getItem(KEY_STORE));
      showError(sent ? "The API key was not accepted." : "This server needs an API key.");
      needKey(file);
      return;
    }
    if (!response.ok) {
      const detail = await errorDetail(response);
      if (!stale()) showError(`Not analysed: ${detail}`);
      return;
    }
    let data;
    try {
      data = await response.json();
    } catch (_) {
      if (!stale()) showError("Not analysed: the server's answer could not be read.");
      return;
    }
    if (!stale()) render(data, heatNote, file.name);
  }

  function render(data, heatNote, fileName) {
    const assessed = data.assessed !== false; // not assessed: an out-of-distribution image gets no verdict
    const positive = assessed && data.label !== classes[0];
    el.result.hidden = false;
    el.image.src = `data:image/png;base64,${data.preview_png_base64}`;
    if (data.heatmap_png_base64) {
      el.heatmap.src = `data:image/png;base64,${data.heatmap_png_base64}`;
      el.heatmap.hidden = false;
      el.opacityRow.hidden = false;
      el.legend.hidden = false;
      el.caption.textContent = !assessed
        ? "Grad-CAM of the model's score, for audit only: this image got no verdict (raise the opacity to see it)."
        : positive ? `Grad-CAM: warm colours mark the regions that pushed the model toward its answer (${data.label}).`
        : `Grad-CAM: warm colours mark the regions that supported the model's ${data.label} output, not an abnormality.`;
      // an image without a verdict: its map is not shown unless asked for (it read as a finding: an accessibility audit)
      if (!assessed || mapHidden) el.opacity.value = assessed ? 70 : 0;
      mapHidden = !assessed;
      setOpacity();
    } else {
      el.heatmap.hidden = true;
      el.opacityRow.hidden = true;
      el.legend.hidden = true;
      el.caption.textContent = heatNote ? `No heat map: ${heatNote}` : "No heat map.";
    }
    // No verdict (out of distribution, turned, refused by the input gate): the warning first, with why.
    el.oodWarning.hidden = assessed;
    el.oodDetail.textContent = data.ood === true && typeof data.ood_score === "number"
      ? `It is unlike the chest X-rays the model learned from (distance ${data.ood_score.toFixed(1)}${
        oodLimit != null ? `, limit ${oodLimit.toFixed(1)}` : ""}).` : assessed ? "" : `${data.reason || ""}`;
    el.meter.hidden = !assessed; // no bar that reads as a strong finding; the number stays, for audit
    el.scoreName.textContent = assessed ? "Model score P(pneumonia)" : "Model score, for audit only (no verdict)";
    el.label.textContent = assessed ? data.label : "NOT ASSESSED";
    el.label.className = `label ${assessed ? (positive ? "positive" : "negative") : "unassessed"}`;
    const side = data.p_pneumonia >= data.threshold ? "at or above" : "below";
    el.labelExplain.textContent = !assessed
      ? `No verdict: ${data.reason || "the image is outside what the model was trained on"}. The score below is shown `
        + "for audit only."
      : positive ? `Flagged: the model score is ${side} the model's threshold (pneumonia suspected by the model; not `
        + "a diagnosis)."
      : `Not flagged: the model score is ${side} the model's threshold. Not a diagnosis: the model misses some `
        + "pneumonias (its sensitivity is in the card below).";
    el.barFill.style.width = pct(data.p_pneumonia);
    el.barFill.className = `bar-fill ${assessed ? (positive ? "positive" : "negative") : "unassessed"}`;
    el.barThreshold.style.left = pct(data.threshold);
    el.bar.setAttribute("aria-valuenow", (100 * data.p_pneumonia).toFixed(1));
    el.bar.setAttribute("aria-valuetext", `model score ${data.p_pneumonia.toFixed(3)} (uncalibrated), threshold `
      + `${fmtThreshold(data.threshold)}${assessed ? "" : "; not assessed, shown for audit only"}`);
    el.probability.textContent = data.p_pneumonia.toFixed(3);
    el.threshold.textContent = fmtThreshold(data.threshold);
    el.calibrated.textContent = data.p_calibrated.toFixed(3);
    el.calibratedThreshold.textContent = typeof data.threshold_calibrated === "number"
      ? ` (the threshold on this scale: ${fmtThreshold(data.threshold_calibrated)})` : "";
    el.facts.replaceChildren();
    const names = Object.keys(data.probabilities);
    if (names.length > 2) { // 3-class: the calibrated split of the probability over the subtypes
      for (const name of names) fact(el.facts, `Temperature-scaled P(${name})`, data.probabilities[name].toFixed(3));
    }
    fact(el.facts, "File", fileName || "—");
    fact(el.facts, "Operating point", `threshold ${fmtThreshold(data.threshold)} (${data.threshold_policy
      ? `chosen for the policy ${data.threshold_policy}; not this result's confidence`
      : "no policy recorded: a placeholder threshold, not chosen on validation"})`);
    fact(el.facts, "Model", data.model_id);
    const t = data.timings_ms;
    fact(el.facts, "Time", `${t.total.toFixed(0)} ms (decode ${t.decode.toFixed(0)}, model ${t.inference.toFixed(0)}`
      + `${t.heatmap != null ? `, heat map ${t.heatmap.toFixed(0)}` : ""})`);
    setStatus(assessed // what a screen reader hears: the output with its score, and that it is not a diagnosis
      ? `Done: model output ${data.label} (${positive ? "flagged" : "not flagged"}; score ${data.p_pneumonia.toFixed(3)}, `
        + `threshold ${fmtThreshold(data.threshold)}). Not a diagnosis.`
      : "Done: not assessed, no verdict. Read this film without the model.");
  }

  function setOpacity() {
    el.heatmap.style.opacity = String(el.opacity.value / 100);
    el.opacityValue.textContent = `${el.opacity.value}%`;
  }

  el.file.addEventListener("change", () => {
    analyse(el.file.files[0]);
    el.file.value = ""; // choosing the same file again analyses it again
  });
  el.opacity.addEventListener("input", setOpacity);
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, el.apiKey.value);
    el.keyForm.hidden = true;
    el.file.focus(); // (the form's field had focus: hidden, it left focus on the page's body)
    loadModel();
    if (pending) analyse(pending);
    pending = null;
  });
  for (const type of ["dragenter", "dragover"]) {
    el.dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      el.dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    el.dropzone.addEventListener(type, () => el.dropzone.classList.remove("dragging"));
  }
  el.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    analyse(event.dataTransfer.files[0]);
  });
  // A file dropped next to the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  setOpacity();
  loadModel();
})();
