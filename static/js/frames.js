// What the socket brings: HTML messages (htmx appends them to #log) and JSON data frames.
// Both are handed to the other pieces as bus events, so no piece listens to htmx itself.
import { emit, log } from "./page.js";

export function init() {
  document.addEventListener("htmx:ws:after:message:incoming", (e) => {
    const data = e.detail.message.data;
    if (typeof data !== "string" || data[0] !== "{") return;
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    emit("frame", frame);
  });
  new MutationObserver((mutations) => {
    const nodes = [];
    for (const m of mutations) {
      for (const n of m.addedNodes) {
        if (n.nodeType === 1 && n.classList.contains("msg") && n.dataset.id) nodes.push(n);
      }
    }
    if (nodes.length) emit("messages", { nodes, live: true });
  }).observe(log, { childList: true });
}
