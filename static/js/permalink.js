// A permalink's page (/m/{id} leads to ?around={id}): the message it points at (aria-current,
// drawn .current) is scrolled to the middle of the screen. When that page stops short of the
// newest messages, the server puts a marker (#later) under the list, and the next newer page
// loads into #log when the marker comes near the bottom of the screen, one page at a time, each
// with the next marker while there are more (scroll-back, downwards).
//
// No gap and nothing twice. While a marker is there, a live message belongs below pages not
// loaded yet: htmx puts the socket's messages into a hidden box instead of #log (#held, as the
// socket element's hx-target) and they are dropped there, to come with their pages (they count as
// seen, so a reconnect resumes after them; the page's socket itself starts at the newest change).
// After the last page, live messages go to #log again, and the page after the newest message
// loaded is asked for once more, for what arrived meanwhile. Every page is put into #log by id,
// before any live message above it, skipping a message already there. Sending from such a page
// takes it to the newest messages (the marker's link), where the message is.
import { $, emit, live, log, me, messages, saw, view } from "./page.js";
import { arrange, detach } from "./arrange.js";
import { putQuietly } from "./frames.js";

const held = $("held");
let observer = null;
let loading = false;
let caughtUp = false;
let upTo = 0;  // the newest message the page and its loaded pages hold
let newest = "";  // where the newest messages are (the marker's link)
let historyPath = "";  // where pages of the conversation come from
let userMoved = false;

const idOf = (el) => Number(el.dataset.id);

function center() {
  const current = messages.querySelector(".msg[aria-current=true]");
  if (!current || userMoved) return;
  current.scrollIntoView({ block: "center" });
  view.stick = view.atEnd();
}

function hold(on) {
  live.setAttribute("hx-target", on ? "#held" : "#log");
  if (!on) return;
  // Live messages put into #log since the last page belong below the next ones.
  for (const m of [...log.querySelectorAll(".msg[data-id]")]) {
    if (idOf(m) > upTo) { saw(idOf(m)); detach(m); }
  }
}

/** Where a message with this id goes in #log: before the first one above it (and its day). */
function placeFor(id) {
  let before = null;
  for (let el = log.lastElementChild; el; el = el.previousElementSibling) {
    if (!el.classList.contains("msg")) continue;
    if (el.dataset.id && idOf(el) < id) break;
    before = el;  // a newer message, or a copy still being sent
  }
  while (before?.previousElementSibling?.matches(".day, .unread-line")) before = before.previousElementSibling;
  return before;
}

function merge(nodes) {
  const put = [];
  for (const n of nodes) {
    if ($(n.id)) continue;  // here already (it came live)
    log.insertBefore(n, placeFor(idOf(n)));
    put.push(n);
  }
  return put;
}

async function load(href, marker = null) {
  if (loading) return;
  loading = true;
  if (marker) observer.unobserve(marker);
  let html;
  try {
    const response = await fetch(href, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    html = await response.text();
  } catch {  // tried again in a while (still loading meanwhile)
    setTimeout(() => { loading = false; marker ? observer.observe(marker) : load(href); }, 3000);
    return;
  }
  const page = document.createElement("template");
  page.innerHTML = html;  // the server's own escaped HTML, from this origin
  const next = page.content.querySelector("#later");
  next?.remove();
  const nodes = [...page.content.querySelectorAll(".msg")];
  let put = [];
  view.keep(() => {
    putQuietly(() => { put = merge(nodes); });
    arrange(put);
    if (next) (marker || log).after(next);
    marker?.remove();
  }, { follow: false });
  upTo = Math.max(upTo, ...nodes.map(idOf));
  if (put.length) emit("messages", { nodes: put, live: false });
  loading = false;
  if (next) {
    caughtUp = false;
    hold(true);
    observer.observe(next);
  } else if (!caughtUp) {
    caughtUp = true;
    hold(false);
    load(newerThan());  // what arrived while the last page was on its way
  }
}

const newerThan = () => `${historyPath}?after=${upTo}`;

/** What htmx put into the held box: seen, and dropped; one's own message takes the page to the newest. */
function dropHeld() {
  for (const m of held.querySelectorAll(".msg[data-id]")) {
    saw(idOf(m));
    if (m.dataset.clientId && m.dataset.author === me) location.assign(newest);
  }
  held.replaceChildren();
}

export function init() {
  center();
  addEventListener("load", center);  // after the browser's own scroll to #message-{id}
  for (const kind of ["wheel", "touchstart", "keydown", "pointerdown"]) {
    addEventListener(kind, () => { userMoved = true; }, { once: true, passive: true });
  }
  const marker = $("later");
  if (!marker || !("IntersectionObserver" in window)) return;
  newest = marker.querySelector("a").getAttribute("href");
  historyPath = new URL(marker.dataset.href, location.href).pathname;
  upTo = Math.max(0, ...[...log.querySelectorAll(".msg[data-id]")].map(idOf));
  new MutationObserver(dropHeld).observe(held, { childList: true });
  hold(true);
  observer = new IntersectionObserver((entries) => {
    for (const e of entries) if (e.isIntersecting) load(e.target.dataset.href, e.target);
  }, { root: $("scroller"), rootMargin: "0px 0px 300px 0px" });
  observer.observe(marker);
}
