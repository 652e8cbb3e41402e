"use strict";
// The in-realm runner (Sandbox.run_tests): the test and the code it tests in ONE process. Used for
// the corpus's own test cases against the validate stage's augmented variants (modules.swap_unit
// puts the unit inside the test module itself, so there is no second realm to keep it in). The
// eval judges model-written code with judge.cjs + host.cjs instead, where the test lives apart.
//
//   node runner.cjs commonjs|esm   (the nonce on stdin; cwd: the run folder, holding test.js/.mjs)
//
// Harden, load the test, wait for its top-level promises, print the nonce.
const fs = require("fs");
const path = require("path");

const writeSync = fs.writeSync;
const then = Promise.prototype.then;
const apply = Reflect.apply;
const esm = process.argv[2] === "esm";
// The nonce arrives on stdin; once read it is in no file, argument or environment variable.
const NONCE = fs.readFileSync(0, "utf8").trim();
// The corpus's test cases run under node:test (node's own test runner): allowed here, not in the
// completion's process (host.cjs), where nothing needs it.
const ALLOW = ["test"];
if (esm) {
  require("module").register(require("url").pathToFileURL(path.join(__dirname, "esm-hooks.mjs")).href,
    { data: { allow: ALLOW } });
}
if (!/^qi-eval-done-[0-9a-f]{24}$/.test(NONCE)) { writeSync(2, "qi-eval: no nonce on stdin\n"); process.exit(5); }
// What the test asserts with cannot be patched by name (the realm is shared: see judge.cjs for the
// verdict that does not depend on this).
const assert = require("assert");
Object.freeze(assert); Object.freeze(assert.strict); Object.freeze(assert.AssertionError.prototype);
require("./guard.cjs").install(ALLOW);
let pending = 0;
let loaded = false;
let rejected = false;
const failed = (error) => {
  rejected = true;
  process.exitCode = 1;
  writeSync(2, "test failed: " + (error && error.stack ? error.stack : String(error)) + "\n");
};
const track = (value) => {
  if (value && typeof value.then === "function") {
    pending += 1;
    apply(then, value, [() => { pending -= 1; }, (error) => { pending -= 1; failed(error); }]);
  }
  return value;
};
Object.defineProperty(globalThis, "__qiTrack", { value: track, writable: false, configurable: false });
process.on("exit", (code) => {
  if (code !== 0 || rejected) return;
  if (!loaded) {
    writeSync(2, "qi-eval: the process exited before the test finished loading\n");
    process.exitCode = 4;
  } else if (pending) {
    writeSync(2, "qi-eval: the test's async body never settled (a promise was left pending)\n");
    process.exitCode = 3;
  } else {
    writeSync(1, "\n" + NONCE + "\n");
  }
});
// CommonJS, or (an ES-module corpus) as an ES module, whose top-level `await` is awaited by the
// import itself; a rejected import is a failed test.
if (esm) {
  apply(then, import(require("url").pathToFileURL(path.resolve("test.mjs")).href), [
    () => { loaded = true; }, (error) => { loaded = true; failed(error); }]);
} else {
  require(path.resolve("test.js"));
  loaded = true;
}
