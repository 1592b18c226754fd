// The JSON API from the page: same origin with the session cookie, and the session's CSRF
// token (the page's forms carry it) on every call. A refusal or a failure to reach the server
// is thrown as an Error whose message is one sentence to show the person.
const csrf = document.querySelector("input[name=csrf]")?.value || "";

const sentence = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/** `method` on `path` with an optional JSON `body`; the answer's JSON (null for 204). */
export async function call(method, path, body) {
  const headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new Error("The server could not be reached. Try again in a moment.");
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { /* not JSON: a proxy's page */ }
  if (!response.ok) throw new Error(sentence(data?.error?.message || `The server answered ${response.status}.`));
  return data;
}
