/**
 * Tests for the basic-result and error-handling demos.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { getError, getValue, isFailure, networkError, validationError } from "@qi/base";
import {
  average,
  divide,
  evaluateFraction,
  parseAll,
  parseIntInRange,
  parseJson,
  rootOfRatio,
  safeSqrt,
  wordToNumber,
} from "../../../app/basic-result/src/index";
import { adviceFor, httpStatusFor, insufficientFunds } from "../../../app/error-handling/src/errors";
import { register, respond, validatePassword, withdraw } from "../../../app/error-handling/src/index";
import { retryDelay, retryWithPolicy, scriptedCall } from "../../../app/error-handling/src/retry";

test("basic-result arithmetic", () => {
  assert.equal(getValue(divide(9, 3)), 3);
  assert.equal(getError(divide(1, 0))?.category, "VALIDATION");
  assert.ok(isFailure(safeSqrt(-1)));
  assert.equal(getValue(evaluateFraction("21/7")), 3);
  assert.equal(getValue(rootOfRatio(50, 2)), 5);
  assert.equal(getValue(wordToNumber("Two")), 2);
  assert.equal(getValue(wordToNumber("12")), 12);
  assert.equal(getValue(average([1, 2, 3])), 2);
  assert.ok(isFailure(parseAll(["1", "x"])));
  assert.ok(isFailure(parseIntInRange("70000", 1, 65535)));
  assert.ok(isFailure(parseJson("{")));
});

test("error-handling registration and withdrawals", () => {
  assert.equal(
    getValue(register({ email: "Ada@Example.com", password: "Analytical1843" }))?.email,
    "ada@example.com",
  );
  assert.equal(
    getError(register({ email: "taken@example.com", password: "Analytical1843" }))?.code,
    "DUPLICATE_ACCOUNT",
  );
  assert.deepEqual(getError(validatePassword("short"))?.context.rules, [
    "at least 10 characters",
    "a digit",
    "an upper-case letter",
  ]);
  const account = { id: "a1", email: "a@b.co", balance: 5 };
  assert.equal(respond(withdraw(account, 10, new Set(["withdraw"]))).status, 422);
  assert.equal(respond(withdraw(account, 1, new Set())).status, 403);
  assert.equal(httpStatusFor(insufficientFunds(1, 2)), 422);
  assert.equal(adviceFor(networkError("x")), "retry-later");
});

test("retry follows the category", async () => {
  const policy = { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 4 };
  assert.equal(retryDelay(validationError("x"), 1, policy), undefined);
  assert.equal(retryDelay(networkError("x"), 2, policy), 2);
  const ok = await retryWithPolicy(scriptedCall([networkError("a"), networkError("b")], "done"), policy);
  assert.equal(getValue(ok), "done");
  const gaveUp = await retryWithPolicy(
    scriptedCall([networkError("a"), networkError("b"), networkError("c")], "x"),
    policy,
  );
  assert.equal(getError(gaveUp)?.context.attempts, 3);
});
