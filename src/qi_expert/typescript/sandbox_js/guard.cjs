"use strict";
// Modules the code of a test run has no business with, refused on require (CommonJS) before any of
// it loads; ES modules are refused by esm-hooks.mjs. Node's permission model and bubblewrap hold
// either way: this only turns an escape attempt into a clear error (ERR_SANDBOX_DENIED).
const Module = require("module");

const DENIED = new Set(["child_process", "cluster", "worker_threads", "net", "dgram", "dns", "http", "https",
  "http2", "tls", "inspector", "v8", "vm", "module", "repl", "trace_events", "wasi", "_http_agent",
  "_http_client", "_http_common", "_http_incoming", "_http_outgoing", "_http_server", "_tls_common",
  "_tls_wrap", "test"]);

function deniedError(request) {
  const e = new Error("module '" + request + "' is not available in the qi-eval sandbox");
  e.code = "ERR_SANDBOX_DENIED";
  return e;
}

// `allow`: names this runner's code legitimately needs (the corpus's own test cases use node:test).
function install(allow = []) {
  const load = Module._load;
  const apply = Reflect.apply;
  const allowed = new Set(allow);
  const guardedLoad = function (request, parent, isMain) {
    const name = String(request).replace(/^node:/, "").split("/")[0];
    if (DENIED.has(name) && !allowed.has(name)) throw deniedError(request);
    return apply(load, this, [request, parent, isMain]);
  };
  Object.defineProperty(Module, "_load", { value: guardedLoad, writable: false, configurable: false });
  for (const key of ["binding", "_linkedBinding", "dlopen"]) {
    Object.defineProperty(process, key, { value: undefined, writable: false, configurable: false });
  }
}

module.exports = { DENIED, install };
