/**
 * Tests for QiError factories, queries and retry strategies.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ErrorCategories,
  authenticationError,
  authorizationError,
  businessError,
  concurrencyError,
  configurationError,
  create,
  createError,
  errorToString,
  fromException,
  fromString,
  getCategory,
  getRetryStrategy,
  isErrorCategory,
  loggerError,
  networkError,
  resourceError,
  systemError,
  timeoutError,
  toStructuredData,
  validationError,
  withContext,
  type ErrorCategory,
  type QiError,
} from "@qi/base";

test("create fills every field and defaults the context", () => {
  const error = create("ORDER_REJECTED", "Order rejected", "BUSINESS");
  assert.deepEqual(error, {
    code: "ORDER_REJECTED",
    message: "Order rejected",
    category: "BUSINESS",
    context: {},
  });
  assert.deepEqual(createError({ code: "X", message: "m", category: "SYSTEM" }).context, {});
});

test("category helpers set code and category", () => {
  const cases: Array<[QiError, string, ErrorCategory]> = [
    [validationError("v"), "VALIDATION_ERROR", "VALIDATION"],
    [networkError("n"), "NETWORK_ERROR", "NETWORK"],
    [systemError("s"), "SYSTEM_ERROR", "SYSTEM"],
    [businessError("b"), "BUSINESS_ERROR", "BUSINESS"],
    [authenticationError("a"), "AUTH_ERROR", "AUTHENTICATION"],
    [authorizationError("z"), "AUTHZ_ERROR", "AUTHORIZATION"],
    [configurationError("c"), "CONFIG_ERROR", "CONFIGURATION"],
    [timeoutError("t"), "TIMEOUT_ERROR", "TIMEOUT"],
    [resourceError("r"), "RESOURCE_ERROR", "RESOURCE"],
    [concurrencyError("k"), "CONCURRENCY_ERROR", "CONCURRENCY"],
    [loggerError("l"), "LOGGER_ERROR", "LOGGER"],
  ];
  for (const [error, code, category] of cases) {
    assert.equal(error.code, code);
    assert.equal(getCategory(error), category);
  }
  assert.equal(ErrorCategories.length, cases.length);
});

test("fromException and fromString", () => {
  assert.equal(fromException(new RangeError("out of range")).context.name, "RangeError");
  assert.equal(fromException("plain", "NETWORK").code, "UNKNOWN_EXCEPTION");
  assert.equal(fromString("boom").code, "ERROR");
});

test("withContext merges without mutating", () => {
  const base = validationError("bad", { field: "email" });
  const tagged = withContext({ requestId: "r1" }, base);
  assert.deepEqual(tagged.context, { field: "email", requestId: "r1" });
  assert.deepEqual(base.context, { field: "email" });
  assert.equal(toStructuredData(tagged).code, "VALIDATION_ERROR");
  assert.equal(errorToString(tagged), "[VALIDATION_ERROR] bad");
});

test("retry strategies follow the category", () => {
  assert.equal(getRetryStrategy("NETWORK").strategy, "exponential_backoff");
  assert.equal(getRetryStrategy("RESOURCE").strategy, "linear_backoff");
  assert.equal(getRetryStrategy("VALIDATION").strategy, "never");
  assert.equal(isErrorCategory("TIMEOUT"), true);
  assert.equal(isErrorCategory("UNKNOWN"), false);
});
