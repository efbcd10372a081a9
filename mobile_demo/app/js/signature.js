// Ed25519 signature of the bundle manifest (manifest.sig, written by `malm-edge sign` / edge/signing.py),
// checked with WebCrypto over the exact bytes of manifest.json. The manifest names every bundle file
// with its sha256, and the page checks each file against it, so a verified signature covers them all.
//
// The trusted key: `malm-edge demo --require-signature KEY` publishes it in bundle/trusted-key.json
// ({"required": true, "key_id", "public_key"}; {"required": false} without the option), after the
// server has checked the bundle with it. The page pins the first key it sees (localStorage)
// and refuses a bundle signed by another key later, so a swapped server or bundle is caught.
// Without a required key the demo runs unsigned bundles, as before (unless a key was pinned).

export const SIGNATURE_URL = "bundle/manifest.sig";
export const TRUSTED_KEY_URL = "bundle/trusted-key.json";
const PIN_STORAGE_KEY = "malm-edge-trusted-signing-key";

export function base64Bytes(text) {
  const binary = atob(String(text));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/**
 * Verify manifest bytes against a signature record with a trusted raw Ed25519 public key (base64).
 * @returns {Promise<"verified" | "unsupported">} "unsupported": this browser has no WebCrypto Ed25519.
 * @throws Error naming the file when the signature is missing, malformed or does not match.
 */
export async function verifyManifest(manifestBytes, signatureRecord, trustedKeyBase64) {
  if (!globalThis.crypto?.subtle) return "unsupported";
  let key;
  try {
    key = await crypto.subtle.importKey("raw", base64Bytes(trustedKeyBase64), { name: "Ed25519" }, false, ["verify"]);
  } catch (err) {
    if (err?.name === "NotSupportedError" || err instanceof TypeError) return "unsupported";
    throw new Error(`${TRUSTED_KEY_URL}: not an Ed25519 public key (${err?.message ?? err})`);
  }
  if (!signatureRecord || signatureRecord.format !== "malm-edge-signature" || signatureRecord.algorithm !== "Ed25519") {
    throw new Error(`${SIGNATURE_URL}: missing or not a malm-edge Ed25519 signature; the bundle is not signed`);
  }
  let signature;
  try {
    signature = base64Bytes(signatureRecord.signature);
  } catch {
    signature = new Uint8Array(0);
  }
  if (signature.length !== 64) throw new Error(`${SIGNATURE_URL}: 'signature' is not 64 base64-encoded bytes`);
  let ok;
  try {
    ok = await crypto.subtle.verify({ name: "Ed25519" }, key, signature, manifestBytes);
  } catch (err) {
    if (err?.name === "NotSupportedError") return "unsupported";
    throw err;
  }
  if (!ok) {
    throw new Error("bundle/manifest.json: the signature does not match (changed after signing, or signed by another key)");
  }
  return "verified";
}

/** The pinned key (first one seen), refusing a different one later. */
export function pinTrustedKey(trusted, storage = globalThis.localStorage) {
  let pinned = null;
  try {
    pinned = storage?.getItem(PIN_STORAGE_KEY) ?? null;
    if (!pinned) storage?.setItem(PIN_STORAGE_KEY, trusted.public_key);
  } catch {
    return trusted.public_key; // storage disabled: trust the server's key for this visit only
  }
  if (pinned && pinned !== trusted.public_key) {
    throw new Error(`${TRUSTED_KEY_URL}: the bundle's signing key changed (now ${trusted.key_id}) since this ` +
      "browser first trusted one; clear this site's data to trust the new key");
  }
  return pinned ?? trusted.public_key;
}

/**
 * The signature state of a manifest, fetched with `getJson(url)` (null when the server has no such file).
 * @returns {Promise<{state: "unsigned-ok" | "verified" | "unsupported", keyId?: string}>}
 */
export async function checkManifestSignature(manifestBytes, getJson) {
  const trusted = await getJson(TRUSTED_KEY_URL);
  if (!trusted || trusted.required === false) {
    let pinned = null;
    try {
      pinned = globalThis.localStorage?.getItem(PIN_STORAGE_KEY) ?? null;
    } catch {
      pinned = null;
    }
    if (pinned) {
      throw new Error(`${TRUSTED_KEY_URL}: missing, but this browser trusts a signing key for this site; ` +
        "an unsigned bundle is refused (clear this site's data to accept unsigned bundles again)");
    }
    return { state: "unsigned-ok" };
  }
  const key = pinTrustedKey(trusted);
  const record = await getJson(SIGNATURE_URL);
  const state = await verifyManifest(manifestBytes, record, key);
  return { state, keyId: trusted.key_id };
}
