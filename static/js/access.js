// Access that ends while the page is open: the room leaves the sidebar (sidebar.js), and
// on its own page the composer goes and the page says why.
import { composer, on } from "./page.js";

export function init() {
  on("frame", (f) => {
    if (!f.room_removed || !f.here) return;
    composer.hidden = true;
    const note = document.createElement("p");
    note.className = "archived-note";
    note.setAttribute("role", "alert");
    note.textContent = "You no longer have access to this room.";
    composer.before(note);
  });
}
