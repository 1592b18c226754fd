// Reactions. The server's fragment is the same for everyone and says who reacted, so the
// viewer's own are marked pressed here (on load, on new and on redrawn messages). A click on a
// reaction toggles one's own; the picker (the toolbar's React, or R on a focused message) is a
// small popover in the message with common emoji and a box for any text up to 16 characters
// (Enter adds it). Escape closes it and the focus goes back where it came from. What the server
// answers is not drawn here: its frame redraws the message in every tab (changes.js).
import { $, me, messages, on, scroller, showNotice } from "./page.js";
import { call } from "./api.js";

const picker = $("picker");
const custom = picker.querySelector("input");
const picks = [...picker.querySelectorAll(".picks button")];
let opener = null;  // where the focus goes back when the picker closes
const busy = new Set();  // "id emoji" being sent: a double click is one toggle

// The API takes a reaction back at /reactions/{emoji}, and a URL resolves a segment "." or ".."
// (even encoded, %2E%2E) away: /reactions/.. would be the message itself. Such a reaction is not
// added from here, nor sent to be taken back.
const unsendable = (emoji) => emoji === "." || emoji === "..";
const NOT_HERE = "A reaction of only dots cannot be taken back from a browser, so it cannot be added here.";
const usersOf = (button) => (button.dataset.users || "").split(" ");
const mineIn = (msg, emoji) => [...msg.querySelectorAll(".reactions .reaction")]
  .some((b) => b.dataset.emoji === emoji && usersOf(b).includes(me));

function mark(nodes) {
  for (const n of nodes) {
    for (const b of n.querySelectorAll(".reactions .reaction")) {
      const own = usersOf(b).includes(me);
      b.setAttribute("aria-pressed", String(own));
      b.classList.toggle("own", own);
    }
  }
}

/** Add this reaction of the viewer's, or take it back if it is there (`add`: only add). */
export async function react(msg, emoji, add = false) {
  const id = msg.dataset.id;
  const key = `${id} ${emoji}`;
  if (!id || busy.has(key)) return;
  if (unsendable(emoji)) { showNotice(NOT_HERE); return; }
  const remove = !add && mineIn(msg, emoji);
  busy.add(key);
  const path = `/api/v1/messages/${id}/reactions`;
  try {
    if (remove) await call("DELETE", `${path}/${encodeURIComponent(emoji)}`);
    else await call("POST", path, { emoji });
  } catch (e) {
    showNotice(e.message);
  } finally {
    busy.delete(key);
  }
}

export function openPicker(msg, from = msg) {
  if (!msg.dataset.id) return;
  opener = from;
  msg.append(picker);
  picker.classList.remove("up");
  picker.hidden = false;
  for (const b of picks) b.setAttribute("aria-pressed", String(mineIn(msg, b.dataset.emoji)));
  // Above the message when there is no room for it below, on screen.
  const box = scroller.getBoundingClientRect();
  const r = picker.getBoundingClientRect();
  if (r.bottom > box.bottom && r.top - box.top > r.height) picker.classList.add("up");
  picks[0].focus({ preventScroll: true });
  picker.scrollIntoView({ block: "nearest" });
}

export function closePicker(back = true) {
  if (picker.hidden) return;
  const inside = picker.contains(document.activeElement);
  picker.hidden = true;
  custom.value = "";
  if ((back || inside) && opener?.isConnected) opener.focus({ preventScroll: true });
  opener = null;
}

function onPickerKey(e) {
  if (e.key === "Escape") {
    e.preventDefault();
    e.stopPropagation();  // not the list's Escape (to the composer)
    closePicker();
    return;
  }
  const at = picks.indexOf(document.activeElement);
  if (at < 0) return;
  const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
  if (step) {
    e.preventDefault();
    e.stopPropagation();  // not the list's arrows (to the next message)
    picks[(at + step + picks.length) % picks.length].focus();
  }
}

export function init() {
  mark([messages]);
  on("messages", ({ nodes }) => mark(nodes));
  on("changed", ({ node }) => mark([node]));
  on("removed", () => { if (!picker.isConnected || !picker.closest(".msg")) { picker.hidden = true; opener = null; } });
  messages.addEventListener("click", (e) => {
    const button = e.target.closest(".reactions .reaction");
    const msg = button?.closest(".msg");
    if (msg) react(msg, button.dataset.emoji);
  });
  picker.addEventListener("click", (e) => {
    const b = e.target.closest(".picks button");
    const msg = picker.closest(".msg");
    if (!b || !msg) return;
    react(msg, b.dataset.emoji);
    closePicker();
  });
  picker.querySelector("form").addEventListener("submit", (e) => {
    e.preventDefault();
    const msg = picker.closest(".msg");
    const text = custom.value.trim();
    if (!msg || !text) return;
    react(msg, text, true);
    closePicker();
  });
  picker.addEventListener("keydown", onPickerKey);
  picker.addEventListener("focusout", (e) => {  // Tab out of it closes it
    if (e.relatedTarget && !picker.contains(e.relatedTarget)) closePicker(false);
  });
  document.addEventListener("click", (e) => {  // so does a click elsewhere
    if (picker.hidden || picker.contains(e.target) || e.target.closest("[data-act=react]")) return;
    closePicker(false);
  });
}
