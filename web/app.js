// The sketch search page: a drawing canvas, feedback rounds as chips and a results grid
// refreshed (debounced) after every change. It uses only the server's JSON API.
//
// What is searched follows the model (/api/health "composes"): a stage-2 model gets the
// sketch and the words together, or whichever of them there is. A stage-1 model or plain
// CLIP searches by one or the other, never both: the page sends the one changed last
// (state.prefer) and the "Search by" buttons switch; the other is kept, shown faded.
"use strict";

(() => {
  const DEBOUNCE_MS = 350;
  const MAX_UNDO = 30;
  const MAX_ROUNDS = 20;
  const INK_LEVEL = 200; // a pixel darker than this (any channel) counts as ink
  const HINT = "Draw the person (or upload a sketch), or describe them in words, to search " +
    "the gallery.";

  const $ = (id) => document.getElementById(id);
  const canvas = $("sketch");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const penButton = $("tool-pen");
  const eraserButton = $("tool-eraser");
  const widthInput = $("line-width");
  const undoButton = $("undo");
  const clearButton = $("clear");
  const uploadInput = $("upload");
  const feedbackForm = $("feedback-form");
  const feedbackInput = $("feedback-input");
  const chipList = $("chips");
  const topkSelect = $("topk");
  const queryText = $("query");
  const statusText = $("status");
  const resultList = $("results");
  const galleryInfo = $("gallery-info");
  const modelNote = $("model-note");
  const searchBy = $("search-by");
  const bySketchButton = $("by-sketch");
  const byTextButton = $("by-text");
  const modeNote = $("mode-note");
  const canvasWrap = canvas.parentElement;
  const lightbox = $("lightbox");
  const lightboxImg = $("lightbox-img");
  const lightboxCaption = $("lightbox-caption");
  const lightboxClose = $("lightbox-close");

  const state = {
    tool: "pen",
    stroke: null, // {pointerId, x, y} while a stroke is being drawn
    undo: [],
    feedback: [],
    timer: null,
    controller: null,
    sequence: 0,
    opener: null,
    composes: true, // until /api/health says otherwise (the server refuses what it cannot do)
    prefer: "sketch", // without composing: the query changed last, "sketch" or "text"
    ready: null, // settles once /api/health has answered (or failed)
  };

  // ------------------------------------------------------------------------- canvas
  function fillPaper() {
    ctx.save();
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.restore();
  }

  function remember() {
    state.undo.push(ctx.getImageData(0, 0, canvas.width, canvas.height));
    if (state.undo.length > MAX_UNDO) state.undo.shift();
    undoButton.disabled = false;
  }

  function undo() {
    const previous = state.undo.pop();
    if (!previous) return;
    ctx.putImageData(previous, 0, 0);
    undoButton.disabled = state.undo.length === 0;
    state.prefer = "sketch";
    scheduleSearch();
  }

  function clearCanvas() {
    if (!hasInk()) return;
    remember();
    fillPaper();
    state.prefer = "sketch";
    scheduleSearch();
  }

  function hasInk() {
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] < INK_LEVEL || pixels[i + 1] < INK_LEVEL || pixels[i + 2] < INK_LEVEL) {
        return true;
      }
    }
    return false;
  }

  function canvasPoint(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * canvas.width) / box.width,
      y: ((event.clientY - box.top) * canvas.height) / box.height,
    };
  }

  function setPen() {
    const width = Number(widthInput.value);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = state.tool === "eraser" ? "#ffffff" : "#000000";
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = state.tool === "eraser" ? width * 3 : width;
  }

  function segment(from, to) {
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  function onPointerDown(event) {
    if (state.stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    remember();
    setPen();
    const at = canvasPoint(event);
    ctx.beginPath(); // a dot, so that a tap leaves a mark
    ctx.arc(at.x, at.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
    state.stroke = { pointerId: event.pointerId, ...at };
    clearTimeout(state.timer);
  }

  function onPointerMove(event) {
    const stroke = state.stroke;
    if (!stroke || event.pointerId !== stroke.pointerId) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const step of events.length ? events : [event]) {
      const at = canvasPoint(step);
      segment(stroke, at);
      stroke.x = at.x;
      stroke.y = at.y;
    }
  }

  function onPointerUp(event) {
    if (!state.stroke || event.pointerId !== state.stroke.pointerId) return;
    state.stroke = null;
    state.prefer = "sketch";
    scheduleSearch();
  }

  function selectTool(tool) {
    state.tool = tool;
    penButton.setAttribute("aria-pressed", String(tool === "pen"));
    eraserButton.setAttribute("aria-pressed", String(tool === "eraser"));
    canvas.classList.toggle("erasing", tool === "eraser");
  }

  async function readPicture(file) {
    if (window.createImageBitmap) return createImageBitmap(file);
    const url = URL.createObjectURL(file);
    try {
      const picture = new Image();
      picture.src = url;
      await picture.decode();
      return picture;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  async function uploadSketch() {
    const file = uploadInput.files && uploadInput.files[0];
    uploadInput.value = ""; // the same file can be chosen again
    if (!file) return;
    let picture;
    try {
      picture = await readPicture(file);
    } catch (error) {
      showStatus(`Could not read ${file.name} as an image.`, true);
      return;
    }
    remember();
    fillPaper();
    const scale = Math.min(canvas.width / picture.width, canvas.height / picture.height);
    const width = picture.width * scale;
    const height = picture.height * scale;
    ctx.drawImage(picture, (canvas.width - width) / 2, (canvas.height - height) / 2, width,
                  height);
    state.prefer = "sketch";
    scheduleSearch(0);
  }

  // ----------------------------------------------------------------------- feedback
  function renderChips() {
    chipList.replaceChildren();
    state.feedback.forEach((sentence, index) => {
      const chip = document.createElement("li");
      chip.className = "chip";
      const number = document.createElement("span");
      number.className = "chip-round";
      number.textContent = String(index + 1);
      number.title = `round ${index + 1}`;
      const text = document.createElement("span");
      text.className = "chip-text";
      text.textContent = sentence;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove feedback round ${index + 1}: ${sentence}`);
      remove.addEventListener("click", () => removeRound(index));
      chip.append(number, text, remove);
      chipList.append(chip);
    });
    const full = state.feedback.length >= MAX_ROUNDS;
    feedbackInput.disabled = full;
    $("feedback-add").disabled = full;
    feedbackInput.placeholder = full
      ? `at most ${MAX_ROUNDS} rounds: remove one to add another`
      : state.feedback.length
        ? "add another detail, e.g. carrying a black backpack"
        : "e.g. she wore a red coat, then press Enter";
  }

  function addRound(event) {
    event.preventDefault();
    const sentence = feedbackInput.value.replace(/\s+/g, " ").trim();
    if (!sentence || state.feedback.length >= MAX_ROUNDS) return;
    state.feedback.push(sentence);
    feedbackInput.value = "";
    state.prefer = "text";
    renderChips();
    scheduleSearch(0);
  }

  function removeRound(index) {
    state.feedback.splice(index, 1);
    state.prefer = "text";
    renderChips();
    feedbackInput.focus();
    scheduleSearch(0);
  }

  // ------------------------------------------------------------------------- search
  function showStatus(message, isError = false) {
    statusText.textContent = message;
    statusText.classList.toggle("error", isError);
  }

  function scheduleSearch(delay = DEBOUNCE_MS) {
    clearTimeout(state.timer);
    state.timer = setTimeout(runSearch, delay);
  }

  // "composed", "sketch", "text" or null (nothing to search by) for what is on the page.
  function chooseMode(ink) {
    const words = state.feedback.length > 0;
    if (ink && words) return state.composes ? "composed" : state.prefer;
    return ink ? "sketch" : words ? "text" : null;
  }

  // Without composing: which query is in use, and the other one shown faded.
  function showAlternatives(ink, mode) {
    const words = state.feedback.length > 0;
    const alternatives = !state.composes;
    searchBy.hidden = !alternatives;
    bySketchButton.disabled = !ink;
    byTextButton.disabled = !words;
    bySketchButton.setAttribute("aria-pressed", String(alternatives && mode === "sketch"));
    byTextButton.setAttribute("aria-pressed", String(alternatives && mode === "text"));
    const sketchAside = alternatives && ink && mode === "text";
    const wordsAside = alternatives && words && mode === "sketch";
    canvasWrap.classList.toggle("set-aside", sketchAside);
    chipList.classList.toggle("set-aside", wordsAside);
    modeNote.textContent = sketchAside
      ? "the sketch is kept but not used"
      : wordsAside ? "your words are kept but not used" : "";
  }

  function modeSummary(mode, rounds) {
    const sentences = `${rounds} feedback round${rounds === 1 ? "" : "s"}`;
    if (mode === "composed") return `sketch + ${sentences}`;
    if (mode === "sketch") return "the sketch alone";
    return `words alone: ${sentences}`;
  }

  function choose(mode) {
    state.prefer = mode;
    scheduleSearch(0);
  }

  async function runSearch() {
    if (state.controller) state.controller.abort();
    state.controller = null;
    const sequence = ++state.sequence;
    await state.ready; // what the model can do decides what is sent
    if (sequence !== state.sequence) return; // a newer search is under way
    const ink = hasInk();
    const mode = chooseMode(ink);
    showAlternatives(ink, mode);
    if (!mode) {
      resultList.removeAttribute("aria-busy");
      delete resultList.dataset.mode;
      resultList.replaceChildren();
      queryText.textContent = "";
      showStatus(HINT);
      return;
    }
    const controller = new AbortController();
    state.controller = controller;
    const request = { topk: Number(topkSelect.value) };
    if (mode !== "text") request.sketch = canvas.toDataURL("image/png");
    if (mode !== "sketch") request.feedback = state.feedback.slice();
    const started = performance.now();
    resultList.setAttribute("aria-busy", "true");
    showStatus("Searching…");
    try {
      const response = await fetch("/api/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
        signal: controller.signal,
      });
      const answer = await response.json().catch(() => ({}));
      if (sequence !== state.sequence) return; // a newer search is under way
      if (!response.ok) {
        showStatus(`Search failed: ${answer.error || response.statusText}`, true);
        return;
      }
      renderResults(answer);
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const rounds = (request.feedback || []).length;
      showStatus(`${answer.results.length} photos ranked in ${seconds} s · ` +
                 modeSummary(answer.mode, rounds));
    } catch (error) {
      if (error.name !== "AbortError" && sequence === state.sequence) {
        showStatus("The server did not answer; is app.py still running?", true);
      }
    } finally {
      if (sequence === state.sequence) {
        resultList.removeAttribute("aria-busy");
        state.controller = null;
      }
    }
  }

  function photoUrl(id) {
    return `/api/photo?id=${encodeURIComponent(id)}`;
  }

  function renderResults(answer) {
    queryText.textContent = answer.query;
    queryText.title = answer.mode === "text" ? "the text the model encodes"
      : state.composes ? "the text the model encodes (* is the sketch)"
        : "the sketch alone, through the model's image tower";
    resultList.dataset.mode = answer.mode;
    const items = answer.results.map((result) => {
      const item = document.createElement("li");
      item.className = "result";
      item.dataset.id = result.id;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "result-button";
      button.title = result.id;
      button.setAttribute("aria-label",
        `Rank ${result.rank}, score ${result.score.toFixed(3)}: ${result.id}. Show it larger`);
      const picture = document.createElement("img");
      picture.src = photoUrl(result.id);
      picture.alt = `Rank ${result.rank}: ${result.id}`;
      picture.decoding = "async";
      const caption = document.createElement("span");
      caption.className = "result-caption";
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `#${result.rank}`;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = result.score.toFixed(3);
      caption.append(rank, score);
      button.append(picture, caption);
      button.addEventListener("click", () => openLightbox(result, button));
      item.append(button);
      return item;
    });
    resultList.replaceChildren(...items);
  }

  // ----------------------------------------------------------------------- lightbox
  function openLightbox(result, opener) {
    state.opener = opener;
    lightboxImg.src = photoUrl(result.id);
    lightboxImg.alt = result.id;
    lightboxCaption.textContent =
      `#${result.rank} · score ${result.score.toFixed(3)} · ${result.id}`;
    lightbox.hidden = false;
    document.body.classList.add("no-scroll");
    lightboxClose.focus();
  }

  function closeLightbox() {
    if (lightbox.hidden) return;
    lightbox.hidden = true;
    document.body.classList.remove("no-scroll");
    if (state.opener && document.contains(state.opener)) state.opener.focus();
    state.opener = null;
  }

  // -------------------------------------------------------------------------- setup
  function onKeyDown(event) {
    if (!lightbox.hidden) {
      if (event.key === "Escape") {
        event.preventDefault();
        closeLightbox();
      } else if (event.key === "Tab") {
        event.preventDefault(); // the close button is the only control in the dialog
        lightboxClose.focus();
      }
      return;
    }
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName) &&
      document.activeElement.type !== "range";
    if (!typing && (event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    }
  }

  async function loadGalleryInfo() {
    try {
      const response = await fetch("/api/health");
      const health = await response.json();
      galleryInfo.textContent = `Gallery: ${health.gallery} photos`;
      state.composes = health.composes !== false;
      modelNote.textContent = state.composes
        ? `Model: ${health.model}. It reads the sketch and your words together; ` +
          "words alone search too."
        : `Model: ${health.model}. It searches by the sketch or by your words, not both: ` +
          "the one you changed last is used (see How the search works).";
    } catch (error) {
      galleryInfo.textContent = "Server not reachable";
      galleryInfo.classList.add("error");
    }
  }

  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointercancel", onPointerUp);
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  penButton.addEventListener("click", () => selectTool("pen"));
  eraserButton.addEventListener("click", () => selectTool("eraser"));
  undoButton.addEventListener("click", undo);
  clearButton.addEventListener("click", clearCanvas);
  uploadInput.addEventListener("change", uploadSketch);
  feedbackForm.addEventListener("submit", addRound);
  topkSelect.addEventListener("change", () => scheduleSearch(0));
  bySketchButton.addEventListener("click", () => choose("sketch"));
  byTextButton.addEventListener("click", () => choose("text"));
  lightboxClose.addEventListener("click", closeLightbox);
  lightbox.addEventListener("click", (event) => {
    if (event.target === lightbox) closeLightbox();
  });
  document.addEventListener("keydown", onKeyDown);

  fillPaper();
  selectTool("pen");
  renderChips();
  showStatus(HINT);
  state.ready = loadGalleryInfo().then(() => {
    const ink = hasInk();
    showAlternatives(ink, chooseMode(ink));
  });
})();
