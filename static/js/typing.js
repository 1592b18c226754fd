// Who is typing in this room: shown under the conversation for 4 s after each typing
// frame, and gone as soon as that person's message arrives. Not announced to screen
// readers (it would interrupt on every keystroke of everyone else).
import { $, me, on, roomSlug } from "./page.js";

const box = $("typing");
const typers = new Map();

function show() {
  const names = [...typers.keys()];
  box.textContent = names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : "Several people are typing…";
}
function start(name) {
  clearTimeout(typers.get(name));
  typers.set(name, setTimeout(() => stop(name), 4000));
  show();
}
function stop(name) {
  if (!typers.has(name)) return;
  clearTimeout(typers.get(name));
  typers.delete(name);
  show();
}

export function init() {
  on("frame", (f) => { if (f.typing && f.room === roomSlug && f.typing !== me) start(f.typing); });
  on("messages", ({ nodes, live }) => { if (live) for (const n of nodes) stop(n.dataset.author); });
}
