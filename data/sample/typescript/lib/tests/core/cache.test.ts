/**
 * Tests for MemoryCache, createCache and cacheAside.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { getError, getValue, isFailure, isSuccess, success, unwrap, unwrapOr } from "@qi/base";
import { MemoryCache, cacheAside, createCache, createLogger, createMemoryCache } from "@qi/core";
import { ManualClock, formatStats } from "../../../app/cache-example/src/index";
import { CachedProfileRepository, FakeProfileStore } from "../../../app/cache-example/src/repository";

test("createCache validates its settings", () => {
  assert.ok(isSuccess(createCache({ backend: "memory", maxSize: 10 })));
  assert.equal(getError(createCache({ backend: "redis" }))?.context.backend, "redis");
  assert.equal(isFailure(createCache({ backend: "memory", maxSize: 0 })), true);
  assert.equal(isFailure(createCache({ backend: "memory", defaultTtl: -5 })), true);
});

test("set/get/has/delete/size", async () => {
  const cache = new MemoryCache({ backend: "memory" });
  await cache.set("k", { n: 1 });
  assert.deepEqual(getValue(await cache.get<{ n: number }>("k")), { n: 1 });
  assert.equal(unwrapOr(false, await cache.has("k")), true);
  assert.equal(getValue(await cache.delete("k")), true);
  assert.equal(getError(await cache.get("k"))?.code, "CACHE_ERROR");
  assert.equal(getValue(await cache.size()), 0);
  assert.equal(isFailure(await cache.set("", 1)), true);
});

test("TTL expiry and LRU eviction", async () => {
  const clock = new ManualClock();
  const cache = createMemoryCache({ maxSize: 2, defaultTtl: 10, now: clock.now });
  await cache.set("a", 1);
  await cache.set("b", 2);
  await cache.get("a");
  await cache.set("c", 3);
  assert.equal(getValue(await cache.has("b")), false);
  clock.advance(11);
  assert.equal(getValue(await cache.has("a")), false);
  assert.match(formatStats(cache.getStats()), /evictions=2/);
});

test("cacheAside and getOrSet load once", async () => {
  const cache = createMemoryCache({});
  let loads = 0;
  const loader = async () => ++loads;
  await cacheAside("n", cache, loader);
  assert.equal(getValue(await cacheAside("n", cache, loader)), 1);
  const failed = await cacheAside("bad", cache, async () => JSON.parse("{") as unknown);
  assert.equal(getError(failed)?.category, "RESOURCE");
  assert.deepEqual(await cache.getOrSet("m", async () => success(7)), success(7));
});

test("the cached repository reads through once", async () => {
  const store = new FakeProfileStore([{ id: "u1", name: "Ada", plan: "free" }]);
  const logger = unwrap(createLogger({ level: "error" }));
  const repo = new CachedProfileRepository(createMemoryCache({}), store, logger);
  await repo.findById("u1");
  await repo.findById("u1");
  assert.equal(store.loads, 1);
  assert.equal(getValue(await repo.upgrade("u1"))?.plan, "pro");
  assert.equal(getError(await repo.findById(""))?.category, "VALIDATION");
});
