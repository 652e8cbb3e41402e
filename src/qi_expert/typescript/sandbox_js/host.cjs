"use strict";
// The completion's realm: loads the model's module and answers the judge's requests through the
// membrane (membrane.cjs), nothing else. It never sees the test: the test, its expected values and
// its verdict live in the judge's process, in another sandbox. Whatever this process does to its
// own built-ins (or to this file's objects) changes only what it answers.
//
// The @qi packages are not loaded here: `require("@qi/base")` (or an import) gets the judge's
// package through the membrane, so every @qi call this process makes is performed, and counted,
// in the judge's process.
//
//   node host.cjs READ_FD,WAIT_FD WRITE_FD commonjs|esm '["@qi/base", ...]'
const Module = require("module");
const { createMembrane } = require("./membrane.cjs");
// READ_FD,WAIT_FD: the pipe from the other side, opened twice (sandbox.py: polled, and blocking).
const [readFd, waitFd] = process.argv[2].split(",").map(Number);
const writeFd = Number(process.argv[3]);
const esm = process.argv[4] === "esm";
const qiPackages = JSON.parse(process.argv[5] || "[]");

const membrane = createMembrane("c", readFd, writeFd, { waitFd, onClosed: () => process.exit(0) });
// A package the judge could not load (an npm dependency the corpus did not install) is not served:
// a completion importing it fails to load, as it would anywhere; the others are unaffected.
const served = new Map();
for (const name of qiPackages) {
  try { served.set(name, membrane.requestModule(name)); } catch {}
}
Object.defineProperty(globalThis, Symbol.for("qi-eval.module"), { value: (name) => served.get(name) });
const load = Module._load;
Module._load = function (request, parent, isMain) {
  return served.has(request) ? served.get(request) : Reflect.apply(load, this, [request, parent, isMain]);
};
if (esm) {
  const data = { served: Object.fromEntries([...served].map(([name, m]) => [name, Object.keys(m)])) };
  Module.register(require("url").pathToFileURL(require("path").join(__dirname, "esm-hooks.mjs")).href, { data });
}
require("./guard.cjs").install();
const exported = (module_) => {
  const names = Object.keys(module_);
  if (!esm && module_.__esModule && !names.includes("__esModule")) names.push("__esModule");
  return names.map((name) => [name, membrane.encode(module_[name])]);
};
const hello = (ok, value) => membrane.send(ok ? { t: "h", ok, v: exported(value) } : { t: "h", ok, v: membrane.encode(value) });
const solution = require("path").resolve(esm ? "solution.mjs" : "solution.js");  // in the run folder (cwd)
if (esm) {
  import(require("url").pathToFileURL(solution).href).then((ns) => hello(true, ns), (e) => hello(false, e));
} else {
  let loaded;
  let ok = true;
  try { loaded = require(solution); } catch (e) { ok = false; hello(false, e); }
  if (ok) hello(true, loaded);
}
// The judge's requests arrive on the pipe; answer them until the judge is gone (onClosed: exit).
membrane.listen();
