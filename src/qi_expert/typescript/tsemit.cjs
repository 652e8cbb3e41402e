// Emit JavaScript for the eval sandbox (CommonJS, or ES modules), many files in ONE node process.
//
// stdin:  {"files": [{"source": "<ts>", "out": "<abs .js path>", "track": false}, ...],
//          "packages": {"project": "<dir>", "tsconfig": "tsconfig.json", "out": "<node_modules dir>"} | null,
//          "format": "commonjs" | "esm"}
// stdout: {"files": <n emitted>, "packages": {"@qi/base": "<source dir>", ...}}
//
// Files are emitted one by one with ts.transpileModule (module commonjs or esnext, target ES2022): the type
// check is done beforehand by tscheck.cjs on the whole program, so emit needs no program.
// `track: true` (used for the task's test) wraps every top-level expression statement in
// globalThis.__qiTrack(...), so the sandbox runner can tell an async test body that settled from
// one that was left pending forever (node would otherwise exit 0 with its assertions never run).
//
// `packages` compiles the project's own @qi libraries into <out>/<name>/: every tsconfig `paths`
// entry without a wildcard that maps to a file (e.g. "@qi/base": ["./lib/base/src/index.ts"]) gives
// a package whose sources are that file's folder and whose main is that file.
"use strict";
const fs = require("fs");
const path = require("path");
const ts = require("typescript");

const OPTIONS = {
  module: ts.ModuleKind.CommonJS,
  target: ts.ScriptTarget.ES2022,
  esModuleInterop: true,
  verbatimModuleSyntax: false,
  isolatedModules: true,
  sourceMap: false,
  declaration: false,
};

function track(source, fileName) {
  const sf = ts.createSourceFile(fileName, source, ts.ScriptTarget.ES2022, true);
  const edits = [];
  for (const st of sf.statements) {
    if (ts.isExpressionStatement(st)) {
      edits.push([st.expression.getStart(sf), st.expression.getEnd()]);
    }
  }
  let out = source;
  for (const [start, end] of edits.reverse()) {
    out = out.slice(0, start) + "globalThis.__qiTrack(" + out.slice(start, end) + ")" + out.slice(end);
  }
  return out;
}

let FORMAT = "commonjs";

function emit(source, fileName, outFile) {
  const compilerOptions = FORMAT === "esm" ? Object.assign({}, OPTIONS, { module: ts.ModuleKind.ESNext }) : OPTIONS;
  const r = ts.transpileModule(source, { compilerOptions, fileName, reportDiagnostics: false });
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, r.outputText);
}

function walk(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== "node_modules" && entry.name !== "dist" && entry.name !== "__tests__") out.push(...walk(full));
    } else if (/\.(ts|tsx|mts|cts)$/.test(entry.name) && !/\.d\.[mc]?ts$/.test(entry.name)
               && !/\.(test|spec)\.[mc]?tsx?$/.test(entry.name)) {
      out.push(full);
    }
  }
  return out;
}

function packages(spec) {
  const project = path.resolve(spec.project);
  const configPath = path.join(project, spec.tsconfig || "tsconfig.json");
  const read = ts.readConfigFile(configPath, ts.sys.readFile);
  if (read.error) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, "\n"));
  const options = ts.parseJsonConfigFileContent(read.config, ts.sys, project).options;
  const base = options.baseUrl || project;
  const found = {};
  for (const [name, targets] of Object.entries(options.paths || {})) {
    if (name.includes("*") || !targets.length) continue;
    const main = path.resolve(base, targets[0]);
    if (!fs.existsSync(main)) continue;
    const srcDir = path.dirname(main);
    const outDir = path.join(spec.out, name);
    for (const file of walk(srcDir)) {
      const rel = path.relative(srcDir, file).replace(/\.[mc]?tsx?$/, ".js");
      emit(fs.readFileSync(file, "utf8"), file, path.join(outDir, rel));
    }
    const mainJs = path.relative(srcDir, main).replace(/\.[mc]?tsx?$/, ".js");
    const pkg = { name, version: "0.0.0-eval", main: mainJs };
    if (FORMAT === "esm") pkg.type = "module";  // its .js files are ES modules
    fs.writeFileSync(path.join(outDir, "package.json"), JSON.stringify(pkg) + "\n");
    found[name] = srcDir;
  }
  return found;
}

function main(input) {
  FORMAT = input.format === "esm" ? "esm" : "commonjs";
  let n = 0;
  for (const f of input.files || []) {
    const name = f.fileName || f.out.replace(/\.js$/, ".ts");
    emit(f.track ? track(f.source, name) : f.source, name, f.out);
    n += 1;
  }
  return { files: n, packages: input.packages ? packages(input.packages) : {} };
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
