// ES modules do not go through Module._load: this resolve hook (registered before guard.cjs denies
// `module`) refuses the same built-ins, and resolves relative specifiers as TypeScript does:
// extensionless ones (`./solution`, a package's `./result`) as bundler resolution does, and ones
// written with `.js` (the NodeNext convention) to the `.mjs` file the compiler emitted.
import { isBuiltin, createRequire } from "node:module";
import { unlinkSync } from "node:fs";
import { fileURLToPath } from "node:url";

const { DENIED } = createRequire(import.meta.url)("./guard.cjs");

// The @qi packages the judge serves to the completion (host.cjs): name -> export names.
let served = {};
let allowed = new Set();  // denied names this runner's code legitimately needs (runner.cjs: node:test)
let consume = new Set();  // files removed once read (judge.cjs: the test, before it runs)
export function initialize(data) {
  served = (data && data.served) || {};
  allowed = new Set((data && data.allow) || []);
  consume = new Set((data && data.consume) || []);
}

export async function resolve(specifier, context, nextResolve) {
  if (Object.prototype.hasOwnProperty.call(served, specifier)) {
    return { url: "qi-eval-module:" + encodeURIComponent(specifier), shortCircuit: true };
  }
  const name = specifier.replace(/^node:/, "").split("/")[0];
  if (isBuiltin(specifier) && DENIED.has(name) && !allowed.has(name)) {
    const e = new Error("module '" + specifier + "' is not available in the qi-eval sandbox");
    e.code = "ERR_SANDBOX_DENIED";
    throw e;
  }
  if (/^\.\.?\//.test(specifier)) {
    if (!/\.(m?js|cjs|json)$/.test(specifier)) {
      for (const ending of [".mjs", ".js", "/index.mjs", "/index.js"]) {
        try { return await nextResolve(specifier + ending, context); } catch {}
      }
    } else if (/\.js$/.test(specifier)) {
      try { return await nextResolve(specifier, context); } catch {}
      return nextResolve(specifier.replace(/\.js$/, ".mjs"), context);
    }
  }
  return nextResolve(specifier, context);
}

// A served package as an ES module: its exports are the judge's, reached through the membrane.
export async function load(url, context, nextLoad) {
  if (url.startsWith("qi-eval-module:")) {
    const name = decodeURIComponent(url.slice("qi-eval-module:".length));
    const names = served[name].filter((n) => /^[A-Za-z_$][\w$]*$/.test(n) && n !== "default");
    const source = `const m = globalThis[Symbol.for("qi-eval.module")](${JSON.stringify(name)});\n`
      + names.map((n) => `export const ${n} = m[${JSON.stringify(n)}];\n`).join("")
      + (served[name].includes("default") ? 'export default m["default"];\n' : "");
    return { format: "module", source, shortCircuit: true };
  }
  const loaded = await nextLoad(url, context);
  if (consume.has(url)) {
    consume.delete(url);
    unlinkSync(fileURLToPath(url));
  }
  return loaded;
}
