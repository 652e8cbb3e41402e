/**
 * @qi/core sample - in-memory cache
 *
 * A Map-backed cache with per-entry TTL (seconds) and a size limit enforced by
 * least-recently-used eviction. Operations are async and return Result so the
 * same calling code would work against a remote backend.
 */

import { failure, fromAsyncTryCatch, isSuccess, success } from "@qi/base";
import type { QiError, Result } from "@qi/base";

/** Backend kinds. Only "memory" exists in this sample. */
export type CacheBackend = "memory" | "redis";

/** Settings accepted by {@link createCache}. */
export interface CacheConfig {
  readonly backend: CacheBackend;
  readonly maxSize?: number;
  /** Default time-to-live in seconds; omitted means entries never expire. */
  readonly defaultTtl?: number;
  readonly name?: string;
  /** Clock in milliseconds; injectable for tests. */
  readonly now?: () => number;
}

/** A stored value plus bookkeeping. */
export interface CacheEntry<T = unknown> {
  readonly value: T;
  readonly createdAt: number;
  readonly expiresAt?: number;
}

/** Counters exposed by {@link ICache.getStats}. */
export interface CacheStats {
  readonly hits: number;
  readonly misses: number;
  readonly sets: number;
  readonly deletes: number;
  readonly evictions: number;
  readonly size: number;
  readonly maxSize?: number;
}

/** A QiError narrowed to the RESOURCE category. */
export type CacheError = QiError & {
  readonly category: "RESOURCE";
  readonly context: {
    readonly operation?: string;
    readonly key?: string;
    readonly backend?: CacheBackend;
    readonly cache?: string;
  };
};

/** Create a RESOURCE error coded CACHE_ERROR. */
export const cacheError = (message: string, context: CacheError["context"] = {}): CacheError => ({
  code: "CACHE_ERROR",
  message,
  category: "RESOURCE",
  context,
});

/** Operations every cache backend offers. */
export interface ICache {
  get<T>(key: string): Promise<Result<T, CacheError>>;
  set<T>(key: string, value: T, ttl?: number): Promise<Result<void, CacheError>>;
  has(key: string): Promise<Result<boolean, CacheError>>;
  delete(key: string): Promise<Result<boolean, CacheError>>;
  clear(): Promise<Result<void, CacheError>>;
  size(): Promise<Result<number, CacheError>>;
  getOrSet<T, E = CacheError>(
    key: string,
    factory: () => Promise<Result<T, E>>,
    ttl?: number,
  ): Promise<Result<T, E | CacheError>>;
  getStats(): CacheStats;
  close(): Promise<void>;
}

/** In-process cache with TTL expiry and LRU eviction. */
export class MemoryCache implements ICache {
  private readonly entries = new Map<string, CacheEntry>();
  private readonly now: () => number;
  private counters = { hits: 0, misses: 0, sets: 0, deletes: 0, evictions: 0 };

  constructor(private readonly config: CacheConfig) {
    this.now = config.now ?? Date.now;
  }

  async get<T>(key: string): Promise<Result<T, CacheError>> {
    const entry = this.live(key);
    if (entry === undefined) {
      this.counters.misses++;
      return failure(cacheError(`Cache miss: ${key}`, { operation: "get", key, backend: "memory" }));
    }
    this.entries.delete(key);
    this.entries.set(key, entry);
    this.counters.hits++;
    return success(entry.value as T);
  }

  async set<T>(key: string, value: T, ttl?: number): Promise<Result<void, CacheError>> {
    if (key.length === 0) {
      return failure(cacheError("Cache key must not be empty", { operation: "set", backend: "memory" }));
    }
    const seconds = ttl ?? this.config.defaultTtl;
    const createdAt = this.now();
    this.entries.delete(key);
    const expiry = seconds === undefined ? {} : { expiresAt: createdAt + seconds * 1000 };
    this.entries.set(key, { value, createdAt, ...expiry });
    this.counters.sets++;
    this.evictOverflow();
    return success(undefined);
  }

  async has(key: string): Promise<Result<boolean, CacheError>> {
    return success(this.live(key) !== undefined);
  }

  async delete(key: string): Promise<Result<boolean, CacheError>> {
    const removed = this.entries.delete(key);
    if (removed) this.counters.deletes++;
    return success(removed);
  }

  async clear(): Promise<Result<void, CacheError>> {
    this.entries.clear();
    return success(undefined);
  }

  async size(): Promise<Result<number, CacheError>> {
    for (const key of [...this.entries.keys()]) this.live(key);
    return success(this.entries.size);
  }

  async getOrSet<T, E = CacheError>(
    key: string,
    factory: () => Promise<Result<T, E>>,
    ttl?: number,
  ): Promise<Result<T, E | CacheError>> {
    const cached = await this.get<T>(key);
    if (isSuccess(cached)) return cached;
    const produced = await factory();
    if (produced.tag === "failure") return produced;
    const stored = await this.set(key, produced.value, ttl);
    return stored.tag === "failure" ? stored : produced;
  }

  getStats(): CacheStats {
    const limit = this.config.maxSize;
    return { ...this.counters, size: this.entries.size, ...(limit !== undefined && { maxSize: limit }) };
  }

  async close(): Promise<void> {
    this.entries.clear();
  }

  private live(key: string): CacheEntry | undefined {
    const entry = this.entries.get(key);
    if (entry?.expiresAt !== undefined && entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      this.counters.evictions++;
      return undefined;
    }
    return entry;
  }

  private evictOverflow(): void {
    const limit = this.config.maxSize;
    if (limit === undefined) return;
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= limit) break;
      this.entries.delete(oldest);
      this.counters.evictions++;
    }
  }
}

/** Validate `config` and create a cache. Only the memory backend is available here. */
export const createCache = (config: CacheConfig): Result<ICache, CacheError> => {
  const ctx = { operation: "create", backend: config.backend, cache: config.name ?? "default" };
  if (config.backend !== "memory") {
    return failure(cacheError(`Unsupported cache backend: ${config.backend}`, ctx));
  }
  if (config.maxSize !== undefined && (!Number.isInteger(config.maxSize) || config.maxSize < 1)) {
    return failure(cacheError(`maxSize must be a positive integer, got ${config.maxSize}`, ctx));
  }
  if (config.defaultTtl !== undefined && !(config.defaultTtl > 0)) {
    return failure(cacheError(`defaultTtl must be positive, got ${config.defaultTtl}`, ctx));
  }
  return success(new MemoryCache(config));
};

/** Create a MemoryCache directly (no validation). */
export const createMemoryCache = (config: Omit<CacheConfig, "backend">): MemoryCache =>
  new MemoryCache({ ...config, backend: "memory" });

/**
 * Cache-aside: return the cached value for `key`, or run `loader`, store its
 * value under `key` and return it. A rejected loader becomes a CacheError.
 */
export const cacheAside = async <T>(
  key: string,
  cache: ICache,
  loader: () => Promise<T>,
  ttl?: number,
): Promise<Result<T, CacheError>> => {
  const cached = await cache.get<T>(key);
  if (isSuccess(cached)) return cached;
  const loaded = await fromAsyncTryCatch(loader);
  if (loaded.tag === "failure") {
    const message = `Loader failed for ${key}: ${loaded.error.message}`;
    return failure(cacheError(message, { operation: "cacheAside", key }));
  }
  const stored = await cache.set(key, loaded.value, ttl);
  return stored.tag === "failure" ? stored : success(loaded.value);
};
