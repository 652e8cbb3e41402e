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
