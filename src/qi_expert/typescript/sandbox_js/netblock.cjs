"use strict";
// qi-eval fallback network block (used only where `unshare -rn` is not available: isolation
// "unsafe (preload)"); bubblewrap's empty network namespace is the real block.
const deny = (what) => function () {
  const e = new Error("network access is disabled in the qi-eval sandbox (" + what + ")");
  e.code = "ERR_SANDBOX_NETWORK";
  throw e;
};
const patch = (mod, names) => {
  const m = require(mod);
  for (const n of names) if (typeof m[n] === "function") m[n] = deny(mod + "." + n);
  return m;
};
const net = patch("net", ["connect", "createConnection", "createServer"]);
net.Socket.prototype.connect = deny("net.Socket.connect");
patch("tls", ["connect", "createServer"]);
patch("http", ["request", "get", "createServer"]);
patch("https", ["request", "get", "createServer"]);
patch("http2", ["connect", "createServer", "createSecureServer"]);
patch("dgram", ["createSocket"]);
patch("dns", ["lookup", "resolve", "resolve4", "resolve6", "resolveAny", "lookupService"]);
const dnsp = require("dns").promises;
for (const n of ["lookup", "resolve", "resolve4", "resolve6", "resolveAny"]) dnsp[n] = deny("dns.promises." + n);
if (typeof globalThis.fetch === "function") globalThis.fetch = deny("fetch");
if (typeof globalThis.WebSocket === "function") globalThis.WebSocket = deny("WebSocket");
