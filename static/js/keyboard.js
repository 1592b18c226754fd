// The keyboard: the message list is one Tab stop, walked with ↑/↓ (Home/End for the first
// and last loaded), and the links in a message are Tab stops only while it has the focus;
// Escape goes back to the composer from the list and closes the room menu; the skip link
// lands in the composer; / anywhere but in a text field goes to the search box. Keys typed in a
// field inside the list (a message being edited, the reaction picker) are the field's.
import { $, log, messages, on, textarea } from "./page.js";

const LINKS = "a[href], button";
const quiet = (nodes) => {
  for (const n of nodes) {
    n.tabIndex = -1;  // focusable by the arrow keys, not a Tab stop
    for (const a of n.querySelectorAll(LINKS)) a.tabIndex = -1;
  }
};

const roomMenu = $("room-menu");
const inField = (el) => Boolean(el.closest?.("input, textarea, select, [contenteditable=true]"));

/** "/": the search box in the header, or on a phone (where it is an icon) the search page. */
function toSearch(e) {
  if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented || inField(e.target)) return;
  e.preventDefault();
  const box = $("search-box");
  if (box && box.offsetParent !== null) box.focus();
  else location.assign("/search");
}

function moveIn(e) {
  const all = [...messages.querySelectorAll(".msg")];
  if (!all.length) return;
  const at = all.indexOf(document.activeElement.closest?.(".msg"));
  let next = null;
  if (e.key === "ArrowUp") next = all[at < 0 ? all.length - 1 : Math.max(0, at - 1)];
  else if (e.key === "ArrowDown") next = at < 0 ? null : all[at + 1];
  else if (e.key === "Home") next = all[0];
  else if (e.key === "End") next = all[all.length - 1];
  else return;
  e.preventDefault();
  if (next) next.focus();
  else if (e.key === "ArrowDown") textarea.focus();
}

export function init() {
  messages.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || inField(e.target)) return;
    if (e.key === "Escape") { e.preventDefault(); textarea.focus(); return; }
    moveIn(e);
  });
  document.addEventListener("keydown", toSearch);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && roomMenu.open) {
      roomMenu.open = false;
      roomMenu.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", (e) => {  // a click elsewhere closes the room menu
    if (roomMenu.open && !roomMenu.contains(e.target)) roomMenu.open = false;
  });
  document.querySelector(".skip")?.addEventListener("click", (e) => { e.preventDefault(); textarea.focus(); });
  log.tabIndex = 0;
  quiet(messages.querySelectorAll(".msg"));
  on("messages", ({ nodes }) => quiet(nodes));
  on("changed", ({ node }) => {  // a redrawn message's new links are Tab stops only while it has the focus
    quiet([node]);
    if (node.contains(document.activeElement)) for (const a of node.querySelectorAll(LINKS)) a.tabIndex = 0;
  });
  messages.addEventListener("focusin", (e) => {
    const msg = e.target.closest(".msg");
    if (msg) for (const a of msg.querySelectorAll(LINKS)) a.tabIndex = 0;
  });
  messages.addEventListener("focusout", (e) => {
    const msg = e.target.closest(".msg");
    if (msg && !msg.contains(e.relatedTarget)) for (const a of msg.querySelectorAll(LINKS)) a.tabIndex = -1;
  });
}
