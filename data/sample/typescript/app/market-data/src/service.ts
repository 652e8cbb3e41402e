/**
 * MarketDataService ties the feed to @qi/core: settings come from a Config,
 * every request is logged, and prices are cached for a short TTL.
 */

import {
  create,
  failure,
  flatMap,
  inspect,
  inspectErr,
  map,
  mapError,
  success,
  validationError,
  type QiError,
  type Result,
} from "@qi/base";
import {
  createCache,
  createLogger,
  fromObject,
  validateConfig,
  type Config,
  type ConfigData,
  type CacheError,
  type ConfigError,
  type ICache,
  type Logger,
} from "@qi/core";
import { spreadBps } from "./analytics";
import { fetchAvailablePrices, fetchLevel1, fetchPrice, type Transport } from "./feed";
import type { Level1, Price } from "./types";

/** Settings the service reads from configuration. */
export interface FeedSettings {
  readonly priceTtlSeconds: number;
  readonly cacheSize: number;
  readonly maxSpreadBps: number;
  readonly logLevel: "debug" | "info" | "warn" | "error";
  readonly symbols: readonly string[];
}

/** Defaults used when a key is absent. */
export const defaultFeedConfig: ConfigData = {
  feed: { priceTtlSeconds: 2, cacheSize: 256, maxSpreadBps: 50, logLevel: "info", symbols: ["AAPL", "MSFT"] },
};

const feedValidator = (data: ConfigData): Result<FeedSettings, QiError> => {
  const feed = (data.feed ?? {}) as Record<string, unknown>;
  const num = (key: string): Result<number> =>
    typeof feed[key] === "number" && (feed[key] as number) > 0
      ? success(feed[key] as number)
      : failure(validationError(`feed.${key} must be a positive number`, { path: `feed.${key}` }));
  const level = feed.logLevel;
  if (level !== "debug" && level !== "info" && level !== "warn" && level !== "error") {
    return failure(
      validationError("feed.logLevel is not a log level", { path: "feed.logLevel", value: level }),
    );
  }
  const symbols = Array.isArray(feed.symbols)
    ? feed.symbols.filter((s): s is string => typeof s === "string")
    : [];
  return flatMap(
    (priceTtlSeconds: number) =>
      flatMap(
        (cacheSize: number) =>
          map(
            (maxSpreadBps: number) => ({
              priceTtlSeconds,
              cacheSize,
              maxSpreadBps,
              logLevel: level,
              symbols,
            }),
            num("maxSpreadBps"),
          ),
        num("cacheSize"),
      ),
    num("priceTtlSeconds"),
  );
};

/** Read and validate FeedSettings from a Config. */
export const loadFeedSettings = (config: Config): Result<FeedSettings, ConfigError> =>
  validateConfig(fromObject(defaultFeedConfig).merge(config), feedValidator);

/** Price and quote access with logging and caching. */
export class MarketDataService {
  private constructor(
    private readonly transport: Transport,
    private readonly cache: ICache,
    private readonly logger: Logger,
    private readonly settings: FeedSettings,
  ) {}

  /**
   * Build the service from configuration: settings, then logger, then cache.
   * The first step that fails decides the error.
   */
  static create(config: Config, transport: Transport): Result<MarketDataService, QiError> {
    return flatMap<FeedSettings, MarketDataService, QiError>(
      (settings) =>
        flatMap<Logger, MarketDataService, QiError>(
          (logger) =>
            map(
              (cache: ICache) =>
                new MarketDataService(transport, cache, logger.child({ component: "market-data" }), settings),
              createCache({
                backend: "memory",
                maxSize: settings.cacheSize,
                defaultTtl: settings.priceTtlSeconds,
                name: "prices",
              }),
            ),
          createLogger({ level: settings.logLevel, name: "market-data" }),
        ),
      loadFeedSettings(config),
    );
  }

  /** Symbols configured for snapshots. */
  get symbols(): readonly string[] {
    return this.settings.symbols;
  }

  /** Last price, served from cache while fresh. */
  async getPrice(symbol: string): Promise<Result<Price, QiError>> {
    const started = Date.now();
    const result = await this.cache.getOrSet(`price:${symbol}`, () => fetchPrice(this.transport, symbol));
    return inspectErr(
      (error: QiError) => this.logger.error("price fetch failed", error, { symbol }),
      inspect(
        (price: Price) =>
          this.logger.debug("price", { symbol, price: price.price, ms: Date.now() - started }),
        result,
      ),
    );
  }

  /** Level 1 quote, rejected as a BUSINESS error when the spread is too wide to trade. */
  async getTradableQuote(symbol: string): Promise<Result<Level1, QiError>> {
    const quote = await fetchLevel1(this.transport, symbol);
    return flatMap(
      (q: Level1) =>
        flatMap(
          (bps: number) =>
            bps <= this.settings.maxSpreadBps
              ? success(q)
              : failure(
                  create("SPREAD_TOO_WIDE", `Spread ${bps.toFixed(1)}bps exceeds the limit`, "BUSINESS", {
                    symbol,
                    bps,
                    limit: this.settings.maxSpreadBps,
                  }),
                ),
          spreadBps(q),
        ),
      quote,
    );
  }

  /** Prices for all configured symbols; failures are logged and left out. */
  async snapshot(): Promise<Price[]> {
    const { successes, failures } = await fetchAvailablePrices(this.transport, this.settings.symbols);
    for (const error of failures)
      this.logger.warn("symbol skipped", { code: error.code, reason: error.message });
    await Promise.all(successes.map((p) => this.cache.set(`price:${p.symbol}`, p)));
    return successes;
  }

  /** Look up a price that must already be cached, without touching the feed. */
  async cachedPrice(symbol: string): Promise<Result<Price, QiError>> {
    const hit = await this.cache.get<Price>(`price:${symbol}`);
    return mapError(
      (error: CacheError): QiError =>
        create("PRICE_NOT_CACHED", `No cached price for ${symbol}`, "RESOURCE", {
          symbol,
          cause: error.code,
        }),
      hit,
    );
  }
}
