// The approver's key, in this browser only: imported once from the key file into WebCrypto as a
// non-extractable Ed25519 key and kept in IndexedDB (a CryptoKey is stored as itself, still
// non-extractable). Everything the server receives is a signature.

const DB = "writ-console";
const STORE = "keys";
const SLOT = "approver";
// PKCS#8 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const PKCS8_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function withStore(mode, fn) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = fn(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export function b64encode(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s);
}

function b64decode(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** Import the key file's text (base64 of the 32-byte Ed25519 seed, as `writ approver register` writes it). */
export async function importKey(approverId, fileText) {
  if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(approverId)) throw new Error("the approver id must look like [a-z0-9][a-z0-9_-]*");
  let seed;
  try {
    seed = b64decode(fileText.trim());
  } catch {
    throw new Error("the file is not a Writ key file (base64 of a 32-byte Ed25519 seed)");
  }
  if (seed.length !== 32) throw new Error("the file is not a Writ key file (base64 of a 32-byte Ed25519 seed)");
  const pkcs8 = new Uint8Array(PKCS8_PREFIX.length + 32);
  pkcs8.set(PKCS8_PREFIX);
  pkcs8.set(seed, PKCS8_PREFIX.length);
  let key;
  try {
    key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  } finally {
    seed.fill(0);
    pkcs8.fill(0);
  }
  await withStore("readwrite", (s) => s.put({ approverId, key }, SLOT));
  return { approverId, key };
}

export async function loadKey() {
  try {
    return (await withStore("readonly", (s) => s.get(SLOT))) || null;
  } catch {
    return null;
  }
}

export async function forgetKey() {
  await withStore("readwrite", (s) => s.delete(SLOT));
}

export async function sign(key, bytes) {
  return b64encode(await crypto.subtle.sign({ name: "Ed25519" }, key, bytes));
}

/** RFC 8785 canonical JSON for the values a statement holds (strings, integers, booleans, null, arrays, objects). */
export function canonical(value) {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error("not representable in canonical JSON");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  // Keys sorted by UTF-16 code units, which is what Array.prototype.sort compares by default.
  const keys = Object.keys(value).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
}

/** The bytes the CLI signs for a decision: writ_common.approvals.decision_statement. */
export function decisionStatement({ intent_id, approval_digest, decision, approver_id, signed_at, comment }) {
  return new TextEncoder().encode(canonical({ intent_id, approval_digest, decision, approver_id, signed_at, comment }));
}

/** Authorization for one approvals API request: Writ-Ed25519 <id>:<ts>:<sig over "METHOD\npath\nts">. */
export async function authHeader(held, method, path) {
  const ts = Math.floor(Date.now() / 1000);
  const statement = new TextEncoder().encode(`${method.toUpperCase()}\n${path}\n${ts}`);
  return `Writ-Ed25519 ${held.approverId}:${ts}:${await sign(held.key, statement)}`;
}

/** The body of POST /approvals/{id}/decision, signed here. */
export async function signedDecision(held, request, decision, comment) {
  const signed_at = new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
  const statement = decisionStatement({
    intent_id: request.intent_id,
    approval_digest: request.approval_digest,
    decision,
    approver_id: held.approverId,
    signed_at,
    comment,
  });
  return { decision, approval_digest: request.approval_digest, signed_at, comment, signature: await sign(held.key, statement) };
}
