/**
 * Tests for Logger, createLogger and logResult.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { getError, isSuccess, networkError, success, unwrap } from "@qi/base";
import {
  Logger,
  createFromEnv,
  createLogger,
  createMemorySink,
  formatEntry,
  isLogLevel,
  logResult,
  type LogLevel,
} from "@qi/core";

test("createLogger validates the level and name", () => {
  assert.ok(isSuccess(createLogger({ level: "info" })));
  assert.equal(getError(createLogger({ level: "loud" as LogLevel }))?.category, "LOGGER");
  assert.equal(getError(createLogger({ level: "info", name: "  " }))?.code, "LOGGER_ERROR");
  assert.equal(getError(createFromEnv({ LOG_LEVEL: "verbose" }))?.context.operation, "createFromEnv");
  assert.equal(isLogLevel("warn"), true);
});

test("entries below the level are dropped; child context is merged", () => {
  const memory = createMemorySink();
  const logger = unwrap(createLogger({ level: "info", name: "svc", sink: memory.sink }));
  logger.debug("hidden");
  logger.child({ requestId: "r1" }).info("visible", { step: 2 });
  assert.equal(memory.entries.length, 1);
  assert.deepEqual(memory.entries[0]?.context, { requestId: "r1", step: 2 });
  assert.equal(memory.entries[0]?.logger, "svc");
});

test("error entries serialize QiError and Error alike", () => {
  const memory = createMemorySink();
  const logger = new Logger({ level: "debug", sink: memory.sink });
  logger.error("upstream", networkError("reset", { host: "feed" }));
  logger.error("bug", new TypeError("undefined is not a function"));
  assert.equal(memory.entries[0]?.error?.category, "NETWORK");
  assert.equal(memory.entries[1]?.error?.name, "TypeError");
  const line = memory.entries[0] === undefined ? "" : formatEntry(memory.entries[0]);
  assert.match(line, /ERROR: upstream/);
});

test("logResult logs and passes the Result through", () => {
  const memory = createMemorySink();
  const logger = new Logger({ level: "info", sink: memory.sink });
  const ok = logResult(logger, "load", success(1));
  assert.deepEqual(ok, success(1));
  assert.equal(memory.entries[0]?.level, "info");
  assert.equal(logger.isLevelEnabled("debug"), false);
});
