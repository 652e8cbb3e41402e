"""TypeScript as the pipeline sees it: tree-sitter parsing (tsast), the @qi pattern rules (patterns),
the compiler (typecheck + tscheck.cjs: diagnostics, exports, the checker's symbol facts), the
sandbox that runs model-written code (sandbox + sandbox_js/), and the corpus's npm packages
(npmdeps). May import: core."""
