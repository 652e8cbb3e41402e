"use strict";
// The verdict of a test run, shared by the judge (judge.cjs) and the in-realm runner (runner.cjs):
// the run's nonce, read from stdin, is printed only when the test module loaded completely and
// every top-level promise it started (tsemit.cjs wraps its top-level expressions in __qiTrack)
// settled without a rejection. Only native promises of this realm are waited for.
const fs = require("fs");
const { types } = require("util");

const writeSync = fs.writeSync;
const then = Promise.prototype.then;
const apply = Reflect.apply;

// The nonce arrives on stdin; once read it is in no file, argument or environment variable.
function readNonce() {
  const nonce = fs.readFileSync(0, "utf8").trim();
  if (!/^qi-eval-done-[0-9a-f]{24}$/.test(nonce)) { writeSync(2, "qi-eval: no nonce on stdin\n"); process.exit(5); }
  return nonce;
}

// Track the test, print the nonce at exit if it finished; `beforeExit()` writes first (the judge's
// @qi call counts). Returns load(fn): runs fn (a test's loading; a promise for an ES module).
function watch(nonce, beforeExit = () => {}) {
  let pending = 0;
  let loaded = false;
  let rejected = false;
  const failed = (error) => {
    rejected = true;
    process.exitCode = 1;
    writeSync(2, "test failed: " + (error && error.stack ? error.stack : String(error)) + "\n");
  };
  const track = (value) => {
    if (types.isPromise(value)) {
      pending += 1;
      apply(then, value, [() => { pending -= 1; }, (error) => { pending -= 1; failed(error); }]);
    }
    return value;
  };
  Object.defineProperty(globalThis, "__qiTrack", { value: track, writable: false, configurable: false });
  process.on("exit", (code) => {
    beforeExit();
    if (code !== 0 || rejected) return;
    if (!loaded) {
      writeSync(2, "qi-eval: the process exited before the test finished loading\n");
      process.exitCode = 4;
    } else if (pending) {
      writeSync(2, "qi-eval: the test's async body never settled (a promise was left pending)\n");
      process.exitCode = 3;
    } else {
      writeSync(1, "\n" + nonce + "\n");
    }
  });
  // A rejected ES-module import is a failed test; a CommonJS test that throws ends the process.
  return (load) => {
    const result = load();
    if (types.isPromise(result)) {
      apply(then, result, [() => { loaded = true; }, (error) => { loaded = true; failed(error); }]);
    } else {
      loaded = true;
    }
  };
}

module.exports = { readNonce, watch };
