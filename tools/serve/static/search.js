// The search box: a sentence -> the indexed images it describes best; click one to caption it.
"use strict";

(() => {
  const el = (id) => document.getElementById(id);
  const TOP = 12;
  let searches = 0;  // only the newest search may fill the cards

  function say(text, isError = false) {
    el("search-status").textContent = text;
    el("search-status").classList.toggle("error", isError);
  }

  fetch("/api/search/info").then((r) => (r.ok ? r.json() : null)).then((info) => {
    if (!info) return;  // the server was started without --index
    el("search").hidden = false;
    say(`Search ${info.images} images of ${info.index}`);
  }).catch(() => {});

  async function search(text) {
    const id = ++searches;
    say(`Searching for “${text}”…`);
    let reply, body;
    try {
      reply = await fetch(`/api/search?q=${encodeURIComponent(text)}&k=${TOP}`);
      body = await reply.json();
    } catch (err) {
      if (id === searches) say(`no answer from the server (${err.message})`, true);
      return;
    }
    if (id !== searches) return;
    el("search-results").replaceChildren();
    if (!reply.ok) {
      say(`${body.error || reply.statusText} (HTTP ${reply.status})`, true);
      return;
    }
    const unknown = body.unknown_words.length ? `; unknown words: ${body.unknown_words.join(", ")}` : "";
    say(`Top ${body.results.length} for “${body.query}”${unknown}`);
    for (const hit of body.results) el("search-results").append(card(hit));
  }

  function card(hit) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "card";
    b.dataset.imageId = String(hit.image_id);
    const img = document.createElement("img");
    img.src = `/api/image/${hit.image_id}`;
    img.alt = hit.file_name || `image ${hit.image_id}`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = hit.file_name || `image ${hit.image_id}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    b.append(img, name, score);
    b.addEventListener("click", () => caption(hit));
    return b;
  }

  // The same caption call as an upload: fetch the image, send it through upload() (app.js).
  async function caption(hit) {
    const name = hit.file_name || `image-${hit.image_id}.jpg`;
    try {
      const reply = await fetch(`/api/image/${hit.image_id}`);
      if (!reply.ok) throw new Error((await reply.json()).error || reply.statusText);
      const blob = await reply.blob();
      await upload(new File([blob], name, { type: "image/jpeg" }));
      el("result").scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (err) {
      say(`${name}: ${err.message}`, true);
    }
  }

  el("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el("query").value.trim();
    if (text) search(text);
    else say("type a sentence first", true);
  });
})();
