// Scroll-back: the page before the oldest one shown loads when its marker (#older) comes
// near the top of the screen, one page at a time, and the message being read stays exactly
// where it was on screen after the page is put above it. At the start of the room the
// server sends "This is the start of ..." instead of a marker, and loading stops.
import { $, emit, scroller, view } from "./page.js";
import { arrange } from "./arrange.js";

let observer = null;
let loading = false;

async function load(marker) {
  if (loading) return;
  loading = true;
  observer.unobserve(marker);
  let html;
  try {
    const response = await fetch(marker.dataset.href, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    html = await response.text();
  } catch {
    marker.firstElementChild.textContent = "Older messages could not be loaded; trying again…";
    setTimeout(() => { loading = false; observer.observe(marker); }, 3000);
    return;
  }
  const page = document.createElement("template");
  page.innerHTML = html;  // the server's own escaped HTML, from this origin
  const nodes = [...page.content.querySelectorAll(".msg")];
  const before = view.anchor();
  marker.replaceWith(page.content);
  arrange(nodes);
  if (before) scroller.scrollTop += before.el.getBoundingClientRect().top - before.top;
  emit("messages", { nodes, live: false });
  loading = false;
  const next = $("older");
  if (next) observer.observe(next);
}

export function init() {
  const marker = $("older");
  if (!marker || !("IntersectionObserver" in window)) return;
  observer = new IntersectionObserver((entries) => {
    for (const e of entries) if (e.isIntersecting) load(e.target);
  }, { root: scroller, rootMargin: "300px 0px 0px 0px" });
  observer.observe(marker);
}
