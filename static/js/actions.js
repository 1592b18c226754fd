// What can be done with a message: a small toolbar shows on the message under the pointer or
// with the focus: React, Copy link, and Edit (one's own) and Delete (one's own; any, for an
// administrator). From the keyboard, on a focused message: E edits, Delete or Backspace
// deletes (after a confirmation), R opens the reaction picker, and Tab goes on from the
// message through its links and reactions to the toolbar. One toolbar serves the whole list:
// it moves into the message it serves (its CSS shows it on :hover and :focus-within).
import { $, body, me, messages, showNotice } from "./page.js";
import { call } from "./api.js";
import { edit } from "./editor.js";
import { openPicker } from "./reactions.js";

const tools = $("msg-tools");
const admin = body.dataset.admin !== undefined;
const mayEdit = (msg) => Boolean(msg.dataset.id) && msg.dataset.author === me;
const mayDelete = (msg) => Boolean(msg.dataset.id) && (msg.dataset.author === me || admin);
const typing = (el) => el.closest("input, textarea, select, [contenteditable=true], .picker");

function place(msg) {
  if (!msg.dataset.id) return;  // a copy still being sent
  if (tools.parentElement !== msg) msg.append(tools);
  tools.hidden = false;
  tools.querySelector("[data-act=edit]").hidden = !mayEdit(msg);
  tools.querySelector("[data-act=delete]").hidden = !mayDelete(msg);
  const focused = msg.contains(document.activeElement);  // its buttons are Tab stops while it has the focus
  for (const b of tools.querySelectorAll("button")) b.tabIndex = focused ? 0 : -1;
}

export async function remove(msg) {
  if (!mayDelete(msg)) return;
  const whose = msg.dataset.author === me ? "this message" : `this message by ${msg.dataset.author}`;
  if (!window.confirm(`Delete ${whose}? This cannot be undone.`)) return;
  try {
    await call("DELETE", `/api/v1/messages/${msg.dataset.id}`);
  } catch (e) {
    showNotice(e.message);
  }
}

async function copyLink(msg) {
  const url = `${location.origin}/m/${msg.dataset.id}`;
  try {
    if (!navigator.clipboard) throw new Error("no clipboard");
    await navigator.clipboard.writeText(url);
    showNotice("Link copied");
  } catch {
    showNotice(`Copy this link: ${url}`);
  }
}

function act(name, msg, from) {
  if (name === "react") openPicker(msg, from);
  else if (name === "link") copyLink(msg);
  else if (name === "edit") edit(msg);
  else if (name === "delete") remove(msg);
}

function onKey(e) {
  if (e.altKey || e.ctrlKey || e.metaKey || e.defaultPrevented || typing(e.target)) return;
  const msg = e.target.closest(".msg");
  if (!msg || !msg.dataset.id) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (key === "Tab") { if (!e.shiftKey) place(msg); return; }  // before the browser moves the focus
  const name = { e: "edit", r: "react", Delete: "delete", Backspace: "delete" }[key];
  if (!name || (name === "edit" && !mayEdit(msg)) || (name === "delete" && !mayDelete(msg))) return;
  e.preventDefault();
  act(name, msg, msg);
}

export function init() {
  messages.addEventListener("pointerover", (e) => {
    const msg = e.target.closest(".msg");
    // Not away from a button with the focus: moving it would drop the focus.
    if (msg && msg !== tools.parentElement && !tools.contains(document.activeElement)) place(msg);
  });
  messages.addEventListener("focusin", (e) => {
    const msg = e.target.closest(".msg");
    if (msg) place(msg);
  });
  messages.addEventListener("keydown", onKey);
  tools.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-act]");
    const msg = tools.closest(".msg");
    if (b && msg) act(b.dataset.act, msg, b);
  });
}
