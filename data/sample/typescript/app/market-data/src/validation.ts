/**
 * Validation rules for market data. Each rule returns the (unchanged) input
 * on success or a VALIDATION error naming the offending field.
 */

import { failure, flatMap, map, success, validationError, type Result } from "@qi/base";
import type { Level, Level1, MarketDepth, OHLCV, Price, Side } from "./types";

const SYMBOL_PATTERN = /^[A-Z][A-Z0-9.\-]{0,11}$/;
const CLOCK_SKEW_MS = 5_000;

/** A ticker: 1-12 upper-case letters, digits, dots or dashes, starting with a letter. */
export const validateSymbol = (symbol: string): Result<string> =>
  SYMBOL_PATTERN.test(symbol)
    ? success(symbol)
    : failure(validationError(`Invalid symbol: "${symbol}"`, { field: "symbol", symbol }));

/** A finite number strictly above zero. */
export function validatePositive(field: string, value: number): Result<number> {
  if (!Number.isFinite(value) || value <= 0) {
    return failure(validationError(`${field} must be a positive number`, { field, value }));
  }
  return success(value);
}

/** A finite number at or above zero. */
export const validateNonNegative = (field: string, value: number): Result<number> =>
  Number.isFinite(value) && value >= 0
    ? success(value)
    : failure(validationError(`${field} must not be negative`, { field, value }));

/** A real date no later than `now` plus a small allowance for clock skew. */
export const validateTimestamp = (timestamp: Date, now: number = Date.now()): Result<Date> => {
  const ms = timestamp.getTime();
  if (Number.isNaN(ms))
    return failure(validationError("timestamp is not a valid date", { field: "timestamp" }));
  if (ms > now + CLOCK_SKEW_MS) {
    return failure(
      validationError("timestamp is in the future", {
        field: "timestamp",
        timestamp: timestamp.toISOString(),
      }),
    );
  }
  return success(timestamp);
};

/** Symbol, positive price and a sane timestamp. */
export const validatePrice = (price: Price): Result<Price> =>
  flatMap(
    () =>
      flatMap(
        () => map(() => price, validateTimestamp(price.timestamp)),
        validatePositive("price", price.price),
      ),
    validateSymbol(price.symbol),
  );

/** Level 1 quote: positive prices, non-negative sizes, and a book that is not crossed (bid <= ask). */
export function validateLevel1(quote: Level1): Result<Level1> {
  const checks: Array<() => Result<unknown>> = [
    () => validateSymbol(quote.symbol),
    () => validatePositive("bid", quote.bid),
    () => validatePositive("ask", quote.ask),
    () => validateNonNegative("bidSize", quote.bidSize),
    () => validateNonNegative("askSize", quote.askSize),
    () => validateTimestamp(quote.timestamp),
  ];
  const firstFailure = checks.map((check) => check()).find((r) => r.tag === "failure");
  if (firstFailure !== undefined && firstFailure.tag === "failure") return firstFailure;
  if (quote.bid > quote.ask) {
    return failure(
      validationError("Crossed quote: bid is above ask", {
        symbol: quote.symbol,
        bid: quote.bid,
        ask: quote.ask,
      }),
    );
  }
  return success(quote);
}

/**
 * OHLCV bar: all prices positive, high at or above both open and close, low
 * at or below both, and volume not negative.
 */
export const validateOHLCV = (bar: OHLCV): Result<OHLCV> => {
  const prices = (["open", "high", "low", "close"] as const).reduce<Result<OHLCV>>(
    (acc, field) => flatMap(() => map(() => bar, validatePositive(field, bar[field])), acc),
    success(bar),
  );
  return flatMap(() => {
    if (bar.high < Math.max(bar.open, bar.close)) {
      return failure(
        validationError("high is below open or close", { high: bar.high, open: bar.open, close: bar.close }),
      );
    }
    if (bar.low > Math.min(bar.open, bar.close)) {
      return failure(
        validationError("low is above open or close", { low: bar.low, open: bar.open, close: bar.close }),
      );
    }
    return map(
      () => bar,
      flatMap(() => validateTimestamp(bar.timestamp), validateNonNegative("volume", bar.volume)),
    );
  }, prices);
};

/** One book level: positive price and positive size. */
export const validateLevel = (side: Side, index: number, level: Level): Result<Level> =>
  flatMap(
    () => map(() => level, validatePositive(`${side}s[${index}].size`, level.size)),
    validatePositive(`${side}s[${index}].price`, level.price),
  );

const isSorted = (levels: readonly Level[], side: Side): boolean =>
  levels.every((level, i) => {
    const previous = levels[i - 1];
    if (previous === undefined) return true;
    return side === "bid" ? previous.price > level.price : previous.price < level.price;
  });

/**
 * Market depth: every level valid, bids strictly descending, asks strictly
 * ascending, and best bid below best ask.
 */
export function validateMarketDepth(depth: MarketDepth): Result<MarketDepth> {
  const levels = [
    ...depth.bids.map((level, i) => validateLevel("bid", i, level)),
    ...depth.asks.map((level, i) => validateLevel("ask", i, level)),
  ];
  const bad = levels.find((r) => r.tag === "failure");
  if (bad !== undefined && bad.tag === "failure") return bad;
  if (!isSorted(depth.bids, "bid")) {
    return failure(
      validationError("Bids must be sorted from highest to lowest price", { symbol: depth.symbol }),
    );
  }
  if (!isSorted(depth.asks, "ask")) {
    return failure(
      validationError("Asks must be sorted from lowest to highest price", { symbol: depth.symbol }),
    );
  }
  const bestBid = depth.bids[0];
  const bestAsk = depth.asks[0];
  if (bestBid !== undefined && bestAsk !== undefined && bestBid.price >= bestAsk.price) {
    return failure(validationError("Book is crossed", { bestBid: bestBid.price, bestAsk: bestAsk.price }));
  }
  return map(() => depth, validateSymbol(depth.symbol));
}
