// medsd reader study: image viewer (zoom, pan, window/level), answers saved as they are given, shortcuts.
"use strict";
(function () {
  const PRESETS = { full: [256, 128], soft: [160, 120], lung: [200, 70], bone: [120, 190] }; // [width, level], 8-bit
  const PRESET_ORDER = ["full", "soft", "lung", "bone"];

  function setupViewer(root, readout) {
    const canvases = [...root.querySelectorAll("canvas.image")];
    const view = { w: 256, l: 128, zoom: 1, x: 0, y: 0, preset: 0 };
    const images = [];
    let drag = null;

    function lut() {
      const t = new Uint8ClampedArray(256), lo = view.l - view.w / 2;
      for (let v = 0; v < 256; v++) t[v] = Math.round(((v - lo) / view.w) * 255);
      return t;
    }
    function paint() {
      const t = lut();
      for (const im of images) {
        const out = im.data.data;
        for (let i = 0, p = 0; p < im.grey.length; p++, i += 4) {
          const g = t[im.grey[p]];
          out[i] = out[i + 1] = out[i + 2] = g;
          out[i + 3] = 255;
        }
        im.ctx.putImageData(im.data, 0, 0);
      }
      place();
      readout.textContent = `W ${Math.round(view.w)} L ${Math.round(view.l)} · zoom ${view.zoom.toFixed(2)}`;
    }
    function place() {
      for (const im of images) im.canvas.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
    }
    function stageSize() {
      const s = canvases[0].parentElement;
      return [s.clientWidth, s.clientHeight];
    }
    function reset(fit) {
      if (!images.length) return;
      const [sw, sh] = stageSize(), iw = images[0].canvas.width, ih = images[0].canvas.height;
      const fitZoom = Math.min(sw / iw, sh / ih);
      view.zoom = fit || fitZoom < 1 ? fitZoom : 1; // native resolution when it fits
      view.x = (sw - iw * view.zoom) / 2;
      view.y = (sh - ih * view.zoom) / 2;
      place();
      readout.textContent = `W ${Math.round(view.w)} L ${Math.round(view.l)} · zoom ${view.zoom.toFixed(2)}`;
    }
    function zoomAt(factor, cx, cy) {
      const z = Math.min(32, Math.max(0.05, view.zoom * factor));
      view.x = cx - ((cx - view.x) / view.zoom) * z;
      view.y = cy - ((cy - view.y) / view.zoom) * z;
      view.zoom = z;
      paint();
    }
    function zoomCentre(factor) {
      const [sw, sh] = stageSize();
      zoomAt(factor, sw / 2, sh / 2);
    }
    function preset(name) {
      [view.w, view.l] = PRESETS[name];
      view.preset = PRESET_ORDER.indexOf(name);
      paint();
    }
    for (const canvas of canvases) {
      const img = new Image();
      img.onload = () => {
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d", { willReadFrequently: true });
        ctx.drawImage(img, 0, 0);
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
        const grey = new Uint8Array(canvas.width * canvas.height);
        for (let p = 0; p < grey.length; p++) grey[p] = data.data[4 * p];
        images.push({ canvas, ctx, data, grey });
        if (images.length === canvases.length) {
          reset(false);
          paint();
          root.dataset.ready = "1";
        }
      };
      img.src = canvas.dataset.src;
      const stage = canvas.parentElement;
      stage.addEventListener("contextmenu", (e) => e.preventDefault());
      stage.addEventListener("mousedown", (e) => {
        drag = { mode: e.button !== 0 || e.shiftKey ? "pan" : "wl", x: e.clientX, y: e.clientY };
        e.preventDefault();
      });
      stage.addEventListener("wheel", (e) => {
        const r = stage.getBoundingClientRect();
        zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
        e.preventDefault();
      }, { passive: false });
    }
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.mode === "pan") {
        view.x += dx;
        view.y += dy;
        place();
      } else {
        view.w = Math.min(512, Math.max(2, view.w + dx));
        view.l = Math.min(384, Math.max(-128, view.l + dy));
        paint();
      }
    });
    window.addEventListener("mouseup", () => { drag = null; });
    window.addEventListener("resize", () => reset(false));
    return {
      preset,
      nextPreset: () => preset(PRESET_ORDER[(view.preset + 1) % PRESET_ORDER.length]),
      reset: (fit) => { reset(fit); paint(); },
      zoom: zoomCentre,
      view,
    };
  }

  function setStatus(el, text, error) {
    el.textContent = text;
    el.classList.toggle("error", !!error);
  }

  async function postJSON(url, csrf, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(data.error || `server error ${r.status}`);
    return data;
  }

  function setupCase(main) {
    const viewer = setupViewer(main.querySelector(".viewer"), document.getElementById("wl"));
    const status = document.getElementById("status");
    const findings = document.getElementById("findings");
    const d = main.dataset;
    let answer = d.answer || null;
    let confidence = d.confidence ? Number(d.confidence) : null;
    let saved = { answer, confidence, findings: findings.value };
    let activeMs = 0, since = performance.now(), timer = null, chain = Promise.resolve(true);

    function takeSeconds() {
      const now = performance.now();
      const ms = activeMs + (document.hidden ? 0 : now - since);
      activeMs = 0;
      since = now;
      return Math.min(ms / 1000, 86400);
    }
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) activeMs += performance.now() - since;
      else since = performance.now();
    });
    function mark() {
      for (const b of main.querySelectorAll(".choice")) b.classList.toggle("selected", b.dataset.value === answer);
      for (const b of main.querySelectorAll(".conf")) b.classList.toggle("selected", Number(b.dataset.value) === confidence);
    }
    function dirty() {
      return answer && (answer !== saved.answer || confidence !== saved.confidence || findings.value.trim() !== saved.findings.trim());
    }
    function save() {
      chain = chain.then(async () => {
        if (!dirty()) return true;
        const body = { case: d.case, answer, confidence, findings: findings.value, seconds: takeSeconds() };
        setStatus(status, "Saving…");
        try {
          const r = await postJSON(d.answerUrl, d.csrf, body);
          saved = { answer: body.answer, confidence: body.confidence, findings: body.findings };
          document.getElementById("n-answered").textContent = r.answered;
          document.getElementById("progress-bar").value = r.answered;
          setStatus(status, "Saved.");
          return true;
        } catch (e) {
          setStatus(status, `Not saved: ${e.message}. Try again.`, true);
          return false;
        }
      });
      return chain;
    }
    async function go(url) {
      if (!url) return;
      clearTimeout(timer);
      if (await save()) window.location.href = url;
    }
    function choose(value) { answer = value; mark(); save(); }
    function rate(n) { confidence = confidence === n ? null : n; mark(); if (answer) save(); }

    for (const b of main.querySelectorAll(".choice")) b.addEventListener("click", () => choose(b.dataset.value));
    for (const b of main.querySelectorAll(".conf")) b.addEventListener("click", () => rate(Number(b.dataset.value)));
    for (const b of main.querySelectorAll("[data-preset]")) b.addEventListener("click", () => viewer.preset(b.dataset.preset));
    for (const b of main.querySelectorAll("[data-zoom]")) {
      b.addEventListener("click", () => {
        const z = b.dataset.zoom;
        if (z === "fit") viewer.reset(true);
        else if (z === "in") viewer.zoom(1.25);
        else if (z === "out") viewer.zoom(0.8);
        else { viewer.view.zoom = 1; viewer.zoom(1); }
      });
    }
    findings.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(save, 800); });
    findings.addEventListener("blur", () => { clearTimeout(timer); save(); });
    for (const id of ["prev", "next"]) {
      const a = document.getElementById(id);
      if (a) a.addEventListener("click", (e) => { e.preventDefault(); go(a.getAttribute("href")); });
    }
    const keys = {};
    for (const b of main.querySelectorAll(".choice")) keys[b.dataset.key] = b.dataset.value;
    document.addEventListener("keydown", (e) => {
      if (e.target === findings) {
        if (e.key === "Escape") findings.blur();
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const k = e.key.toLowerCase();
      if (keys[k]) choose(keys[k]);
      else if (k >= "1" && k <= "5") rate(Number(k));
      else if (k === "arrowright" || k === "enter") go(d.nextUrl);
      else if (k === "arrowleft") go(d.prevUrl);
      else if (k === "w") viewer.nextPreset();
      else if (k === "0") viewer.reset(false);
      else if (k === "+" || k === "=") viewer.zoom(1.25);
      else if (k === "-") viewer.zoom(0.8);
      else return;
      e.preventDefault();
    });
    window.addEventListener("beforeunload", (e) => { if (dirty()) e.preventDefault(); });
    mark();
  }

  function setupReview(main) {
    const button = document.getElementById("submit");
    const status = document.getElementById("status");
    let armed = false;
    button.addEventListener("click", async () => {
      if (!armed) {
        armed = true;
        button.textContent = "Confirm: submit (answers become final)";
        return;
      }
      button.disabled = true;
      try {
        await postJSON(main.dataset.submitUrl, main.dataset.csrf, {});
        window.location.href = main.dataset.doneUrl;
      } catch (e) {
        setStatus(status, `Not submitted: ${e.message}`, true);
        button.disabled = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const main = document.getElementById("case");
    if (main) setupCase(main);
    const review = document.getElementById("review");
    if (review) setupReview(review);
  });
})();
