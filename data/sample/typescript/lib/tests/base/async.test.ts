/**
 * Tests for the Promise/Result helpers.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  collectAsync,
  failure,
  flatMapAsync,
  flatMapPromise,
  fromAsyncTryCatch,
  getError,
  isPromiseResult,
  mapAsync,
  mapPromise,
  matchAsync,
  matchPromise,
  networkError,
  sequenceAsync,
  success,
  type Result,
} from "@qi/base";

const load = async (id: number): Promise<Result<string>> =>
  id > 0 ? success(`item-${id}`) : failure(networkError("not reachable", { id }));

test("fromAsyncTryCatch captures a rejected promise", async () => {
  const result = await fromAsyncTryCatch(async () => JSON.parse("nope") as unknown);
  assert.equal(getError(result)?.code, "ASYNC_EXCEPTION");
});

test("flatMapAsync and mapAsync", async () => {
  assert.deepEqual(await flatMapAsync(load, success(2)), success("item-2"));
  assert.deepEqual(await mapAsync(async (n: number) => n * 2, success(4)), success(8));
  const rejected = await mapAsync(async () => JSON.parse("{") as unknown, success(1));
  assert.equal(getError(rejected)?.code, "ASYNC_MAP_ERROR");
});

test("promise pipelines", async () => {
  const upper = await mapPromise((s: string) => s.toUpperCase(), load(3));
  assert.deepEqual(upper, success("ITEM-3"));
  const chained = await flatMapPromise((s: string) => load(s.length), load(1));
  assert.deepEqual(chained, success("item-6"));
  const text = await matchPromise(
    async (s: string) => s,
    async (e) => e.message,
    load(0),
  );
  assert.equal(text, "not reachable");
  assert.equal(
    await matchAsync(
      async () => 1,
      async () => 0,
      success("x"),
    ),
    1,
  );
  assert.equal(isPromiseResult(load(1)), true);
});

test("sequenceAsync stops at the first failure, collectAsync keeps both", async () => {
  assert.deepEqual(await sequenceAsync([load(1), load(2)]), success(["item-1", "item-2"]));
  assert.equal(getError(await sequenceAsync([load(1), load(0), load(2)]))?.context.id, 0);
  const { successes, failures } = await collectAsync([load(1), load(0), load(2)]);
  assert.deepEqual(successes, ["item-1", "item-2"]);
  assert.equal(failures.length, 1);
});
