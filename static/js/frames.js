// What the socket brings: HTML messages (htmx appends them to #log) and JSON data frames.
// Both are handed to the other pieces as bus events, so no piece listens to htmx itself. A
// message already on the page (a replay of one a page brought) is dropped, not shown twice.
import { emit, log } from "./page.js";

let watcher = null;

function report(mutations) {
  const nodes = [];
  for (const m of mutations) {
    for (const n of m.addedNodes) {
      if (n.nodeType !== 1 || !n.classList.contains("msg") || !n.dataset.id) continue;
      if (document.getElementById(n.id) !== n) { n.remove(); continue; }  // the first copy stays
      nodes.push(n);
    }
  }
  if (nodes.length) emit("messages", { nodes, live: true });
}

/** Put messages into #log that did not arrive live (a newer page, below a permalink's): what
 * htmx added before is reported as usual, and these are not (their loader reports them). */
export function putQuietly(put) {
  report(watcher.takeRecords());
  put();
  watcher.takeRecords();
}

export function init() {
  document.addEventListener("htmx:ws:after:message:incoming", (e) => {
    const data = e.detail.message.data;
    if (typeof data !== "string" || data[0] !== "{") return;
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    emit("frame", frame);
  });
  watcher = new MutationObserver(report);
  watcher.observe(log, { childList: true });
}
