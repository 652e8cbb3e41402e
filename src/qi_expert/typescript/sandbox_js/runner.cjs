"use strict";
// The in-realm runner (Sandbox.run_tests): the test and the code it tests in ONE process. Used for
// the corpus's own test cases against the validate stage's augmented variants (modules.swap_unit
// puts the unit inside the test module itself, so there is no second realm to keep it in). The
// eval judges model-written code with judge.cjs + host.cjs instead, where the test lives apart.
//
//   node runner.cjs commonjs|esm   (the nonce on stdin; cwd: the run folder, holding test.js/.mjs)
//
// Harden, load the test, wait for its top-level promises, print the nonce.
const path = require("path");
const { readNonce, watch } = require("./verdict.cjs");

const esm = process.argv[2] === "esm";
const NONCE = readNonce();
// The corpus's test cases run under node:test (node's own test runner): allowed here, not in the
// completion's process (host.cjs), where nothing needs it.
const ALLOW = ["test"];
if (esm) {
  require("module").register(require("url").pathToFileURL(path.join(__dirname, "esm-hooks.mjs")).href,
    { data: { allow: ALLOW } });
}
// What the test asserts with cannot be patched by name (the realm is shared: see judge.cjs for the
// verdict that does not depend on this).
const assert = require("assert");
Object.freeze(assert); Object.freeze(assert.strict); Object.freeze(assert.AssertionError.prototype);
// A test written for vitest: its stand-in loaded before the guard (as judge.cjs does).
const TEST = path.resolve(esm ? "test.mjs" : "test.js");
if (/\bvitest\b/.test(require("fs").readFileSync(TEST, "utf8"))) {
  try { require("vitest"); } catch {}
}
require("./guard.cjs").install(ALLOW);
// CommonJS, or (an ES-module corpus) as an ES module, whose top-level `await` is awaited by the import.
watch(NONCE)(() => (esm ? import(require("url").pathToFileURL(TEST).href) : require(TEST)));
