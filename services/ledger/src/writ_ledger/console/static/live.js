// Server-Sent Events read with fetch: EventSource cannot send an Authorization header, and the
// console's requests carry one (a views token, or a signature made in this page), never a cookie
// or a token in the URL. Same origin, so the page's CSP (connect-src 'self') covers it.

const RETRY_MS = 2000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Split the text of a stream into SSE messages; returns [messages, the unfinished rest]. */
export function parseFrames(text) {
  const messages = [];
  const blocks = text.replace(/\r\n?/g, "\n").split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // a heartbeat
      const [field, ...value] = line.split(":");
      const text = value.join(":").replace(/^ /, "");
      if (field === "event") event = text;
      else if (field === "data") data.push(text);
    }
    if (data.length) messages.push({ event, data: JSON.parse(data.join("\n")) });
  }
  return [messages, rest];
}

/**
 * Follow the stream at `url` until stop(): `headers()` gives each connection's headers (a fresh
 * signature each time), `onEvent(name, data)` gets each message, `onState("live" | "down", err)`
 * says whether the stream is up (the caller polls while it is down). A stream the server ends (it
 * does after a while, so the request is authenticated again) reconnects at once; a refused one
 * (401/403) stops for good, after saying why.
 */
export function follow(url, { headers, onEvent, onState }) {
  const control = new AbortController();
  let stopped = false;
  (async () => {
    while (!stopped) {
      try {
        const res = await fetch(url, { headers: await headers(), cache: "no-store", credentials: "omit", signal: control.signal });
        if (!res.ok || !res.body) {
          const body = await res.json().catch(() => ({}));
          throw Object.assign(new Error(`${body.error || res.status}: ${body.message || res.statusText}`), { status: res.status });
        }
        onState("live");
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const [messages, rest] = parseFrames(buffer + value);
          buffer = rest;
          for (const m of messages) onEvent(m.event, m.data);
        }
      } catch (err) {
        if (stopped) return;
        onState("down", err);
        if (err.status === 401 || err.status === 403) return;
        await sleep(RETRY_MS);
      }
    }
  })();
  return { stop() { stopped = true; control.abort(); } };
}
