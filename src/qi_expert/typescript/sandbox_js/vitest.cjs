"use strict";
// `vitest` for the corpus's own test cases (the sandbox's runtime resolves `import ... from "vitest"`
// here): vitest's API over node's own test runner (node:test: describe, it/test and the hooks), with
// Jest's `expect` and `jest-mock` (the matchers and mock functions vitest's follow). A test that
// needs vitest's module mocking (vi.mock) or Chai's own chains fails here, so the corpus benchmark
// leaves it out (its reference does not pass: data/corpus_tasks.py).
const t = require("node:test");
const { expect } = require("expect");
const { ModuleMocker } = require("jest-mock");

const mocker = new ModuleMocker(globalThis);
expect.extend({  // vitest's own matchers that Jest spells otherwise
  toHaveBeenCalledOnce(received) {
    const calls = received && received.mock ? received.mock.calls.length : -1;
    return { pass: calls === 1, message: () => `expected the mock to be called once, it was called ${calls} times` };
  },
});

const unsupported = (name) => () => {
  throw new Error(`vi.${name} is not available where the corpus benchmark runs its test cases`);
};
const vi = {
  fn: (impl) => mocker.fn(impl),
  spyOn: (object, key, access) => mocker.spyOn(object, key, access),
  isMockFunction: (fn) => mocker.isMockFunction(fn),
  clearAllMocks: () => mocker.clearAllMocks(),
  resetAllMocks: () => mocker.resetAllMocks(),
  restoreAllMocks: () => mocker.restoreAllMocks(),
  mock: unsupported("mock"),
  useFakeTimers: unsupported("useFakeTimers"),
};

// vitest's conditional forms (describe.skipIf(cond)(...), it.runIf(cond)(...)) over node:test's own.
const conditional = (fn) => Object.assign((...args) => fn(...args), {
  skip: fn.skip, only: fn.only, todo: fn.todo,
  skipIf: (condition) => (condition ? fn.skip : fn),
  runIf: (condition) => (condition ? fn : fn.skip),
});
const describe = conditional(t.describe);
const it = conditional(t.it);

// One assignment each: how node finds the named exports of a CommonJS module an ES module imports.
exports.describe = describe;
exports.suite = describe;
exports.it = it;
exports.test = it;
exports.beforeAll = t.before;
exports.afterAll = t.after;
exports.beforeEach = t.beforeEach;
exports.afterEach = t.afterEach;
exports.expect = expect;
exports.vi = vi;
