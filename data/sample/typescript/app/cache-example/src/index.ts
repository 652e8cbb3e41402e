/**
 * cache-example demo
 *
 * Memory cache basics (set/get/has/delete), TTL expiry driven by a fake
 * clock, LRU eviction at maxSize, cache-aside loading, and a cached
 * repository wired to a logger.
 */

import { flatMap, map, match, matchAsync, unwrapOr, type QiError, type Result } from "@qi/base";
import {
  cacheAside,
  createCache,
  createLogger,
  createMemoryCache,
  type CacheError,
  type CacheStats,
  type ICache,
  type Logger,
} from "@qi/core";
import { CachedProfileRepository, FakeProfileStore } from "./repository";

/** A clock the demo can move forward by hand. */
export class ManualClock {
  private current = 0;

  /** Milliseconds since the clock was created. */
  readonly now = (): number => this.current;

  /** Move time forward. */
  advance(seconds: number): void {
    this.current += seconds * 1000;
  }
}

/** The two services every scenario uses. */
export interface DemoServices {
  readonly logger: Logger;
  readonly cache: ICache;
}

/** Create the demo logger and cache together; either can fail validation. */
export const setup = (maxSize: number, defaultTtl: number): Result<DemoServices, QiError> =>
  flatMap<Logger, DemoServices, QiError>(
    (logger) =>
      map(
        (cache: ICache) => ({ logger, cache }),
        createCache({ backend: "memory", maxSize, defaultTtl, name: "demo" }),
      ),
    createLogger({ level: "debug", name: "cache-example", pretty: true }),
  );

/** Format cache statistics as a single line with the hit ratio. */
export const formatStats = (stats: CacheStats): string => {
  const lookups = stats.hits + stats.misses;
  const ratio = lookups === 0 ? 0 : stats.hits / lookups;
  const counts = `hits=${stats.hits} misses=${stats.misses} evictions=${stats.evictions}`;
  return `size=${stats.size} ${counts} hitRatio=${ratio.toFixed(2)}`;
};

/** Basic operations on a cache. */
export async function basics(cache: ICache, logger: Logger): Promise<void> {
  await cache.set("greeting", "hello");
  const greeting = await cache.get<string>("greeting");
  logger.info("greeting", { value: unwrapOr("<missing>", greeting) });

  const missing = await cache.get<string>("nope");
  await matchAsync(
    async (value: string) => logger.info("unexpected hit", { value }),
    async (error: CacheError) => logger.debug("expected miss", { key: error.context.key }),
    missing,
  );

  const removed = await cache.delete("greeting");
  logger.info("deleted", { removed: unwrapOr(false, removed) });
}

/** Entries vanish once their TTL has passed. */
export async function ttlDemo(logger: Logger): Promise<void> {
  const clock = new ManualClock();
  const cache = createMemoryCache({ defaultTtl: 5, now: clock.now });
  await cache.set("session", { user: "ada" });
  await cache.set("pinned", "forever", 3600);
  clock.advance(6);
  const session = await cache.has("session");
  const pinned = await cache.has("pinned");
  logger.info("after 6s", { session: unwrapOr(false, session), pinned: unwrapOr(false, pinned) });
}

/** The least recently used key is evicted first. */
export async function lruDemo(logger: Logger): Promise<void> {
  const cache = createMemoryCache({ maxSize: 2 });
  await cache.set("a", 1);
  await cache.set("b", 2);
  await cache.get("a");
  await cache.set("c", 3);
  const keys = await Promise.all(
    ["a", "b", "c"].map(async (k) => [k, unwrapOr(false, await cache.has(k))] as const),
  );
  logger.info("after inserting c with maxSize 2", { present: Object.fromEntries(keys) });
}

/** cacheAside runs the loader once and serves later calls from the cache. */
export async function cacheAsideDemo(cache: ICache, logger: Logger): Promise<void> {
  let calls = 0;
  const loadRates = async (): Promise<Record<string, number>> => {
    calls++;
    return { EUR: 0.92, GBP: 0.79 };
  };
  for (let i = 0; i < 3; i++) {
    const rates = await cacheAside("fx:usd", cache, loadRates, 60);
    logger.info("rates", {
      attempt: i + 1,
      gbp: unwrapOr({} as Record<string, number>, rates).GBP,
      loaderCalls: calls,
    });
  }
}

/** The repository hits the store once per id while cached. */
export async function repositoryDemo(cache: ICache, logger: Logger): Promise<void> {
  const store = new FakeProfileStore([{ id: "u1", name: "Ada", plan: "free" }]);
  const repo = new CachedProfileRepository(cache, store, logger.child({ component: "profiles" }));
  await repo.findById("u1");
  await repo.findById("u1");
  await repo.upgrade("u1");
  const missing = await repo.findById("u404");
  logger.info("repository done", {
    storeLoads: store.loads,
    missingCode: missing.tag === "failure" ? missing.error.code : null,
  });
}

/** Entry point. */
export async function main(): Promise<void> {
  await match(
    async ({ logger, cache }: DemoServices) => {
      await basics(cache, logger);
      await ttlDemo(logger);
      await lruDemo(logger);
      await cacheAsideDemo(cache, logger);
      await repositoryDemo(cache, logger);
      logger.info(formatStats(cache.getStats()));
    },
    async (error: QiError) => console.error("setup failed:", error.message),
    setup(100, 60),
  );
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) {
  void main();
}
