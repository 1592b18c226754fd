// Editing one's own message in place: its text gives way to a box holding the raw text (asked
// of the server: the page has only the rendered HTML). Enter saves, Shift+Enter is a new line,
// Escape cancels, and the focus goes back to the message either way; saving an unchanged text
// just closes the box. ↑ in an empty composer edits one's newest message on the page. The
// server's frame redraws the message in every tab (changes.js) and leaves an open box as it is;
// the answer's rendered text is put in at once, so that the old text does not flash back.
import { $, me, messages, on, showNotice, textarea, view } from "./page.js";
import { call } from "./api.js";

const template = $("editor-template");
let open = null;  // {msg, form, box, original}

function autosize(box) {
  box.style.height = "auto";
  box.style.height = Math.min(box.scrollHeight + 2, window.innerHeight * 0.5) + "px";
}

export async function edit(msg) {
  if (!msg.dataset.id || msg.dataset.author !== me) return;
  if (open?.msg === msg) { open.box.focus(); return; }
  close(false);
  let data;
  try {
    data = await call("GET", `/api/v1/messages/${msg.dataset.id}`);
  } catch (e) {
    showNotice(e.message);
    return;
  }
  if (!msg.isConnected || open) return;
  const form = template.content.firstElementChild.cloneNode(true);
  const box = form.querySelector("textarea");
  box.value = data.message.body;
  open = { msg, form, box, original: data.message.body };
  view.keep(() => {
    msg.append(form);
    msg.classList.add("editing");
    autosize(box);
  });
  box.focus({ preventScroll: true });
  box.setSelectionRange(box.value.length, box.value.length);
  form.scrollIntoView({ block: "nearest" });
  box.addEventListener("input", () => autosize(box));
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); save(); }
    else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); close(true); }
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); save(); });
  form.querySelector("[data-act=cancel]").addEventListener("click", () => close(true));
}

/** Close the box; `back`: the focus goes to the message (it does anyway if it was in the box). */
function close(back) {
  if (!open) return;
  const { msg, form } = open;
  open = null;
  const inside = form.contains(document.activeElement);
  view.keep(() => {
    form.remove();
    msg.classList.remove("editing");
  });
  if ((back || inside) && msg.isConnected) msg.focus({ preventScroll: true });
}

async function save() {
  const { msg, box, original } = open;
  if (box.value === original) { close(true); return; }
  box.readOnly = true;
  try {
    const data = await call("PATCH", `/api/v1/messages/${msg.dataset.id}`, { body: box.value });
    if (open?.msg !== msg) return;
    msg.querySelector(":scope > .body").innerHTML = data.message.html;  // the server's rendered, escaped text
    close(true);
  } catch (e) {
    box.readOnly = false;
    showNotice(e.message);
  }
}

function editNewest(e) {
  if (e.key !== "ArrowUp" || e.shiftKey || e.altKey || e.ctrlKey || e.metaKey || e.isComposing) return;
  if (textarea.value !== "") return;
  const mine = messages.querySelectorAll(`.msg[data-id][data-author="${CSS.escape(me)}"]`);
  if (!mine.length) return;
  e.preventDefault();
  edit(mine[mine.length - 1]);
}

export function init() {
  textarea.addEventListener("keydown", editNewest);
  on("removed", () => {
    if (open && !open.msg.isConnected) {
      open = null;
      showNotice("The message you were editing was deleted.");
    }
  });
}
