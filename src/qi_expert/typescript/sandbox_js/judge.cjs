"use strict";
// The judge: runs the task's test in its own process and sandbox, with the completion's exports
// reached only through the membrane (membrane.cjs); prints the run's nonce when the test module
// loaded completely and every top-level promise it started settled without a rejection.
//
//   node judge.cjs READ_FD,WAIT_FD WRITE_FD commonjs|esm   (the nonce on stdin; cwd: the judge's folder)
//
// Nothing of the completion runs here: what it returns arrives as data rebuilt from this
// process's own built-ins, or as handles whose every use is a request to the completion's process.
// So the assertions, the promise tracking below and the exit path answer only to the test.
const fs = require("fs");
const path = require("path");
const { createMembrane } = require("./membrane.cjs");
const { readNonce, watch } = require("./verdict.cjs");

const writeSync = fs.writeSync;
// READ_FD,WAIT_FD: the pipe from the other side, opened twice (sandbox.py: polled, and blocking).
const [readFd, waitFd] = process.argv[2].split(",").map(Number);
const writeFd = Number(process.argv[3]);
const esm = process.argv[4] === "esm";
const qiPackages = JSON.parse(process.argv[5] || "[]");
const NONCE = readNonce();
// A corpus task (data/corpus_tasks.py) holds its unit out of the package: {"@qi/base": ["map"]}.
// Those names are not served to the completion, and a call it makes to the package's own one (reached
// some other way) is counted apart, so the run fails (scoring.py): the completion writes the unit.
const WITHHELD = (() => {
  if (!fs.existsSync("withheld.json")) return {};
  const names = JSON.parse(fs.readFileSync("withheld.json", "utf8"));
  fs.unlinkSync("withheld.json");
  return names;
})();
const withheldFns = new Set();
const WITHHELD_CALL = "qi-eval:withheld";
// The test's source is read once and its file removed before any of it runs: a @qi function the
// completion calls here (a config loader reading a path it chose) finds no expected values to read.
const Module = require("module");
const TEST = path.resolve(esm ? "test.mjs" : "test.js");
const TEST_URL = require("url").pathToFileURL(TEST).href;
// The corpus's own test cases run under node:test (in-process: nothing of the completion runs here).
const ALLOW = ["test"];
if (esm) {
  Module.register(require("url").pathToFileURL(path.join(__dirname, "esm-hooks.mjs")).href,
    { data: { consume: [TEST_URL], allow: ALLOW } });
}
// A test written for vitest gets its stand-in (vitest.cjs, from the runtime's node_modules), loaded
// here before the guard closes the modules Jest's `expect` reads (`module`); the test's own import
// then finds it loaded. Other tests do not pay for it.
if (/\bvitest\b/.test(fs.readFileSync(TEST, "utf8"))) {
  try { require("vitest"); } catch {}  // (when it cannot load, the test's import fails: a failed test)
}
// The guard closes those modules once the @qi packages are loaded (below): they are the corpus's own
// code, and a real @qi/core loads its dependencies' modules (pino reads worker_threads) as it starts.
const closeModules = () => require("./guard.cjs").install(ALLOW);

// The @qi packages, loaded here and served to the completion (membrane.cjs, "M"). Every @qi
// function or method the completion calls runs here and is counted by its @qi name: which @qi calls
// the task's inputs actually executed is known outside the completion's realm (compliance.py).
const packages = new Map();
const qiNames = new Map();  // @qi function -> its name
const qiCalls = {};
const index = (fn, name) => {
  if (typeof fn !== "function" || qiNames.has(fn)) return;
  qiNames.set(fn, name);
  for (const owner of [fn.prototype, fn]) {  // a class's methods, its static functions
    if (!owner || typeof owner !== "object" && typeof owner !== "function") continue;
    for (const key of Object.getOwnPropertyNames(owner)) {
      const d = Object.getOwnPropertyDescriptor(owner, key);
      if (key !== "constructor" && key !== "prototype" && d && typeof d.value === "function" && !qiNames.has(d.value)) qiNames.set(d.value, key);
    }
  }
};
const served = (name, module_) => {
  const snapshot = {};
  const withheld = new Set(WITHHELD[name] || []);
  for (const key of Object.keys(module_)) {
    index(module_[key], key);
    if (!withheld.has(key)) { snapshot[key] = module_[key]; continue; }
    const fn = module_[key];  // a withheld class: its constructor, methods and static functions
    withheldFns.add(fn);
    for (const owner of typeof fn === "function" ? [fn.prototype, fn] : []) {
      for (const k of owner ? Object.getOwnPropertyNames(owner) : []) {
        const d = Object.getOwnPropertyDescriptor(owner, k);
        if (k !== "constructor" && k !== "prototype" && d && typeof d.value === "function") withheldFns.add(d.value);
      }
    }
  }
  return snapshot;
};
const preload = esm
  ? Promise.all(qiPackages.map((name) => import(name).then((m) => packages.set(name, served(name, m)), () => {})))
  : Promise.resolve(qiPackages.forEach((name) => { try { packages.set(name, served(name, require(name))); } catch {} }));

// While a promise of the completion is pending here, the pipe (membrane.listen) wakes this process
// for its settlement and for the completion's calls back into the test meanwhile; it holds the
// event loop open only while such a promise is pending.
let listening = null;
const membrane = createMembrane("j", readFd, writeFd, {
  waitFd,
  onPending: (n) => {
    if (listening === null) return;
    if (n > 0) listening.ref(); else listening.unref();
  },
  onModule: (name) => {
    if (!packages.has(name)) throw new Error("qi-eval: " + name + " is not a @qi package this judge serves");
    return packages.get(name);
  },
  onCall: (fn) => {
    if (withheldFns.has(fn)) qiCalls[WITHHELD_CALL] = (qiCalls[WITHHELD_CALL] || 0) + 1;
    const name = qiNames.get(fn);
    if (name !== undefined) qiCalls[name] = (qiCalls[name] || 0) + 1;
  },
});

preload.then(() => {
  closeModules();
  // (Only now: the completion's requests for the @qi packages are answered from `packages`.)
  listening = membrane.listen();
  listening.unref();
  judge();
});

function judge() {

// The completion's module, as the test imports it: a stub in this folder that hands over what the
// completion's process exported (or throws what its loading threw).
const hello = membrane.waitFor("h", 1e9);
const SOLUTION = Symbol.for("qi-eval.solution");
globalThis[SOLUTION] = hello === null
  ? { ok: false, error: new Error("qi-eval: the completion's process ended before its module loaded") }
  : hello.ok ? { ok: true, exports: Object.fromEntries(hello.value) } : { ok: false, error: hello.value };
const names = hello && hello.ok ? hello.value.map(([name]) => name) : [];
if (!globalThis[SOLUTION].ok) {  // said here too: an ES-module test fails on its missing imports first
  const e = globalThis[SOLUTION].error;
  writeSync(2, "qi-eval: the completion's module did not load: " + (e && e.stack ? e.stack : String(e)) + "\n");
}
const stub = 'const s = globalThis[Symbol.for("qi-eval.solution")];\nif (!s.ok) throw s.error;\n';
if (esm) {
  const exportable = names.filter((n) => /^[A-Za-z_$][\w$]*$/.test(n) && n !== "default");
  fs.writeFileSync("solution.mjs", stub + exportable.map((n) => `export const ${n} = s.exports[${JSON.stringify(n)}];\n`).join("")
    + (names.includes("default") ? 'export default s.exports["default"];\n' : ""));
} else {
  fs.writeFileSync("solution.js", stub + "module.exports = s.exports;\n");
}

const load = watch(NONCE, () => writeSync(1, "\nqi-eval-calls " + JSON.stringify(qiCalls) + "\n"));
load(() => {
  if (esm) return import(TEST_URL);
  const source = fs.readFileSync(TEST, "utf8");
  fs.unlinkSync(TEST);
  const test = new Module(TEST, module);
  test.filename = TEST;
  test.paths = Module._nodeModulePaths(path.dirname(TEST));
  require.cache[TEST] = test;
  test._compile(source, TEST);
  test.loaded = true;
  return undefined;
});
}
