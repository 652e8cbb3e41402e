// ES modules do not go through Module._load: this resolve hook (registered before guard.cjs denies
// `module`) refuses the same built-ins, and resolves relative specifiers as TypeScript does:
// extensionless ones (`./solution`, a package's `./result`) as bundler resolution does, and ones
// written with `.js` (the NodeNext convention) to the `.mjs` file the compiler emitted.
import { isBuiltin, createRequire } from "node:module";

const { DENIED } = createRequire(import.meta.url)("./guard.cjs");

export async function resolve(specifier, context, nextResolve) {
  const name = specifier.replace(/^node:/, "").split("/")[0];
  if (isBuiltin(specifier) && DENIED.has(name)) {
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
