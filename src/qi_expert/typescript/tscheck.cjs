// Type-check many snippets in ONE TypeScript program and report diagnostics per snippet.
//
// stdin:  {"project": "<dir holding tsconfig>", "tsconfig": "tsconfig.json",
//          "options": {<compilerOptions overrides>}, "files": {"<name>": "<source>", ...}}
//          "exports": ["@qi/base", ...] (optional)
//          "node_modules": "<dir>" (optional: the corpus's npm packages, installed outside it)
// stdout: {"<name>": [{"code": 2304, "line": 3, "message": "..."}], ...,
//          "__exports__": {"@qi/base": [{"name": "success", "file": "lib/base/src/result.ts"}, ...]}}
//          (when "exports" was asked; null for a module the compiler cannot resolve)
//
// Snippets become virtual files inside the project folder, so `paths`/`baseUrl` resolve
// `@qi/base` exactly as they do for the project's own code; one program shares the parsed
// @qi sources and lib.d.ts among all snippets, which is what makes batching fast.
"use strict";
const path = require("path");
const ts = require("typescript");

// Every tsconfig.json of the checkout but node_modules, build output and hidden folders.
function checkoutTsconfigs(project) {
  const found = [];
  const walk = (dir) => {
    let entries;
    try { entries = require("fs").readdirSync(dir, { withFileTypes: true }); } catch { return; }
    for (const e of entries) {
      if (e.isDirectory()) {
        if (!["node_modules", "dist", "build", "coverage"].includes(e.name) && !e.name.startsWith(".")) walk(path.join(dir, e.name));
      } else if (e.name === "tsconfig.json") {
        found.push(path.join(dir, e.name));
      }
    }
  };
  walk(project);
  return found.sort();
}

// The `paths` aliases of the corpus's tsconfig and of every other tsconfig in the checkout (a
// library in a nested project aliasing its own folders, apps importing it under their aliases),
// each target made absolute from the tsconfig that declares it, so the one program resolves
// every specifier some folder of the checkout uses. The corpus's tsconfig comes first; an alias
// two tsconfigs declare tries the targets in that order (the compiler takes the first that exists).
function withCheckoutAliases(options, project, configPath) {
  const merged = {};
  const add = (paths, base) => {
    for (const [alias, targets] of Object.entries(paths || {})) {
      const list = merged[alias] || (merged[alias] = []);
      for (const t of targets) {
        const abs = path.resolve(base, t);
        if (!list.includes(abs)) list.push(abs);
      }
    }
  };
  add(options.paths, options.pathsBasePath || options.baseUrl || project);
  for (const other of checkoutTsconfigs(project)) {
    if (path.resolve(other) === path.resolve(configPath)) continue;
    const read = ts.readConfigFile(other, ts.sys.readFile);
    if (read.error || !read.config) continue;  // a tsconfig the compiler cannot read adds no alias
    const dir = path.dirname(other);
    const parsed = ts.parseJsonConfigFileContent({ compilerOptions: read.config.compilerOptions || {}, extends: read.config.extends,
                                                   files: [] }, ts.sys, dir);
    add(parsed.options.paths, parsed.options.pathsBasePath || parsed.options.baseUrl || dir);
  }
  if (!Object.keys(merged).length) return options;
  return Object.assign({}, options, { paths: merged, pathsBasePath: project });
}

function main(input) {
  const project = path.resolve(input.project);
  const configPath = path.join(project, input.tsconfig || "tsconfig.json");
  let options = { strict: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext,
                  moduleResolution: ts.ModuleResolutionKind.Bundler, skipLibCheck: true };
  if (ts.sys.fileExists(configPath)) {
    const read = ts.readConfigFile(configPath, ts.sys.readFile);
    if (read.error) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, "\n"));
    options = ts.parseJsonConfigFileContent(read.config, ts.sys, project).options;
  }
  options = withCheckoutAliases(options, project, configPath);
  const overrides = ts.convertCompilerOptionsFromJson(input.options || {}, project).options;
  options = Object.assign({}, options, overrides, {
    noEmit: true, composite: false, declaration: false, declarationMap: false, incremental: false,
    sourceMap: false, tsBuildInfoFile: undefined,
    // Units are cut out of files: unused imports or locals are not errors of the unit.
    noUnusedLocals: false, noUnusedParameters: false,
  });

  // The corpus's npm dependencies live outside the checkout (nothing is written into it): every
  // bare import the checkout's own `paths` do not map resolves there, and its @types are global types.
  if (input.node_modules) {
    const deps = path.resolve(input.node_modules);
    options.paths = Object.assign({}, options.paths || {});
    if (!options.paths["*"]) options.paths["*"] = [path.join(deps, "*"), path.join(deps, "@types", "*")];
    if (!options.pathsBasePath) options.pathsBasePath = project;
    options.typeRoots = [...(options.typeRoots || []), path.join(deps, "@types")];
  }

  // A name may carry a folder ("app/demo/src/<id>"): the snippet then sits beside that
  // folder's files, so its relative imports resolve as they did in its own file.
  const virtual = new Map();
  const names = new Map();
  for (const [name, source] of Object.entries(input.files)) {
    const file = path.join(project, path.dirname(name), "__qi_check_" + path.basename(name) + ".ts");
    virtual.set(file, source);
    names.set(file, name);
  }
  const host = ts.createCompilerHost(options, true);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (fileName, languageVersion, onError, shouldCreate) => {
    const source = virtual.get(path.resolve(fileName));
    if (source !== undefined) return ts.createSourceFile(fileName, source, languageVersion, true);
    return getSourceFile(fileName, languageVersion, onError, shouldCreate);
  };
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (f) => virtual.has(path.resolve(f)) || fileExists(f);
  const readFile = host.readFile.bind(host);
  host.readFile = (f) => virtual.get(path.resolve(f)) ?? readFile(f);

  // The export list of each asked module, as the compiler resolves it (re-exports followed):
  // one more virtual file imports each module as a namespace.
  const modules = input.exports || [];
  const exportsFile = path.join(project, "__qi_exports__.ts");
  if (modules.length) {
    virtual.set(exportsFile, modules.map((m, i) => `import * as m${i} from ${JSON.stringify(m)};`).join("\n")
      + "\nexport {};\n");
  }

  const program = ts.createProgram({ rootNames: [...virtual.keys()], options, host });
  const out = {};
  if (modules.length) {
    const checker = program.getTypeChecker();
    const sf = program.getSourceFile(exportsFile);
    out.__exports__ = {};
    sf.statements.filter(ts.isImportDeclaration).forEach((st, i) => {
      const symbol = checker.getSymbolAtLocation(st.moduleSpecifier);
      if (!symbol) { out.__exports__[modules[i]] = null; return; }
      out.__exports__[modules[i]] = checker.getExportsOfModule(symbol).map((s) => {
        // Follow `export { x } from "./y"` to the declaration (its file is where tree-sitter reads it).
        const target = s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s;
        const decl = (target.declarations || [])[0];
        return { name: s.name, file: decl ? path.relative(project, decl.getSourceFile().fileName) : null };
      }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    });
    virtual.delete(exportsFile);
  }
  if (input.facts) {
    const checker = program.getTypeChecker();
    out.__facts__ = {};
    for (const [file] of virtual) out.__facts__[names.get(file)] = facts(program, checker, program.getSourceFile(file),
      new Set(input.facts.try_catch_allowed || []));
  }
  for (const [file] of virtual) {
    const sf = program.getSourceFile(file);
    const name = names.get(file);
    const diags = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
    out[name] = diags.map((d) => ({
      code: d.code,
      line: d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line + 1 : 0,
      message: ts.flattenDiagnosticMessageText(d.messageText, "\n"),
    }));
  }
  return out;
}

// What a snippet does by the compiler's symbols, not by its names (compliance.py): the @qi calls
// whose callee the checker resolves to a declaration in the corpus's @qi sources (aliases followed;
// a local function or a redeclared name that shadows an import is not @qi's), and the forbidden
// constructs in any spelling the checker can see: `throw` statements, a generator's or iterator's
// `throw` method, `Promise.reject` reached through an alias, null/undefined returned (under any
// cast) from a function typed to return a Result, and try/catch outside a function handed to one
// of the allowed @qi wrappers (by symbol).
function facts(program, checker, sf, tryCatchAllowed) {
  const qiCalls = [];
  const forbidden = [];
  const line = (node) => sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
  const resolved = (expr) => {
    const at = ts.isPropertyAccessExpression(expr) ? expr.name : ts.isElementAccessExpression(expr) ? expr.argumentExpression : expr;
    let symbol = checker.getSymbolAtLocation(at);
    if (symbol && symbol.flags & ts.SymbolFlags.Alias) symbol = checker.getAliasedSymbol(symbol);
    return symbol;
  };
  const origin = (symbol) => {
    const decl = symbol && (symbol.declarations || [])[0];
    if (!decl) return null;
    const file = decl.getSourceFile();
    if (file === sf) return "local";
    if (file.hasNoDefaultLib || /[\\/]typescript[\\/]lib[\\/]lib\.[^\\/]*\.d\.ts$/.test(file.fileName)) return "lib";
    if (/[\\/]node_modules[\\/]/.test(file.fileName)) return "package";
    return "qi";
  };
  const owner = (symbol) => {
    const decl = symbol && (symbol.declarations || [])[0];
    const parent = decl && decl.parent;
    return parent && (ts.isInterfaceDeclaration(parent) || ts.isClassDeclaration(parent)) && parent.name ? parent.name.text : "";
  };
  const strip = (e) => {
    while (e && (ts.isParenthesizedExpression(e) || ts.isAsExpression(e) || ts.isTypeAssertionExpression(e)
                 || ts.isNonNullExpression(e) || (ts.isSatisfiesExpression && ts.isSatisfiesExpression(e)))) e = e.expression;
    return e;
  };
  const enclosingFunction = (node) => {
    for (let p = node.parent; p; p = p.parent) if (ts.isFunctionLike(p)) return p;
    return null;
  };
  const returnsResult = (fn) => {
    const signature = fn && checker.getSignatureFromDeclaration(fn);
    return Boolean(signature) && /\bResult\b/.test(checker.typeToString(checker.getReturnTypeOfSignature(signature)));
  };
  const inAllowedWrapper = (node) => {
    for (let p = node.parent; p; p = p.parent) {
      if (ts.isFunctionLike(p) && p.parent && ts.isCallExpression(p.parent) && p.parent.arguments.includes(p)) {
        const symbol = resolved(p.parent.expression);
        if (origin(symbol) === "qi" && tryCatchAllowed.has(symbol.name)) return true;
      }
    }
    return false;
  };
  const visit = (node) => {
    if (ts.isCallExpression(node) || ts.isNewExpression(node)) {
      const symbol = resolved(node.expression);
      if (origin(symbol) === "qi") qiCalls.push({ name: symbol.name, line: line(node) });
    }
    // Any reference, called or not (`Promise.reject.bind(Promise)`, `const t = it.throw`).
    if (ts.isPropertyAccessExpression(node) || (ts.isElementAccessExpression(node) && ts.isStringLiteralLike(node.argumentExpression))) {
      const symbol = resolved(node);
      if (origin(symbol) === "lib" && symbol.name === "throw" && /Generator|Iterator/.test(owner(symbol))) forbidden.push({ rule: "throw", line: line(node) });
      else if (origin(symbol) === "lib" && symbol.name === "reject" && owner(symbol) === "PromiseConstructor") forbidden.push({ rule: "promise_reject", line: line(node) });
    }
    if (ts.isThrowStatement(node)) forbidden.push({ rule: "throw", line: line(node) });
    if (ts.isTryStatement(node) && !inAllowedWrapper(node)) forbidden.push({ rule: "try_catch", line: line(node) });
    if (ts.isReturnStatement(node) && node.expression) {
      const value = strip(node.expression);
      const empty = value.kind === ts.SyntaxKind.NullKeyword || ts.isVoidExpression(value)
        || (ts.isIdentifier(value) && value.text === "undefined" && origin(checker.getSymbolAtLocation(value)) !== "local");
      if (empty && returnsResult(enclosingFunction(node))) forbidden.push({ rule: "return_null", line: line(node) });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return { qi_calls: qiCalls, forbidden };
}

let data = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (c) => (data += c));
process.stdin.on("end", () => {
  try {
    process.stdout.write(JSON.stringify(main(JSON.parse(data))));
  } catch (e) {
    process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
    process.exit(2);
  }
});
