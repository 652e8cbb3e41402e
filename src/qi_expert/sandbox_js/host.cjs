"use strict";
// The completion's realm: loads the model's module and answers the judge's requests through the
// membrane (membrane.cjs), nothing else. It never sees the test: the test, its expected values and
// its verdict live in the judge's process, in another sandbox. Whatever this process does to its
// own built-ins (or to this file's objects) changes only what it answers.
//
//   node host.cjs READ_FD WRITE_FD commonjs|esm
const { createMembrane } = require("./membrane.cjs");
const [readFd, writeFd] = process.argv.slice(2, 4).map(Number);
const esm = process.argv[4] === "esm";
if (esm) require("module").register(require("url").pathToFileURL(require("path").join(__dirname, "esm-hooks.mjs")).href);
require("./guard.cjs").install();

const membrane = createMembrane("c", readFd, writeFd, { onClosed: () => process.exit(0) });
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
// The judge's requests arrive on the pipe; answer them until the judge is gone.
setInterval(() => membrane.pump(), 1);
