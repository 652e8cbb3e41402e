/**
 * Pure analytics over validated market data. Operations that are undefined
 * for some inputs (empty series, zero volume, mixed symbols) return Result.
 */

import {
  businessError,
  failure,
  flatMap,
  map,
  match,
  success,
  validationError,
  withContext,
  type QiError,
  type Result,
} from "@qi/base";
import { parsePrice } from "./factories";
import type { Level1, MarketDepth, OHLCV, Price, SymbolSummary } from "./types";
import { validateOHLCV } from "./validation";

/** Ask minus bid. */
export const spread = (quote: Level1): number => quote.ask - quote.bid;

/** Midpoint of bid and ask. */
export const midPrice = (quote: Level1): number => (quote.bid + quote.ask) / 2;

/** Spread in basis points of the mid price. */
export const spreadBps = (quote: Level1): Result<number> => {
  const mid = midPrice(quote);
  return mid > 0
    ? success((spread(quote) / mid) * 10_000)
    : failure(validationError("Mid price must be positive", { symbol: quote.symbol }));
};

/** Percentage change from one price to a later one of the same symbol. */
export function priceChange(from: Price, to: Price): Result<number> {
  if (from.symbol !== to.symbol) {
    return failure(
      businessError("Cannot compare prices of different symbols", { from: from.symbol, to: to.symbol }),
    );
  }
  if (to.timestamp < from.timestamp) {
    return failure(validationError("Prices are out of order", { symbol: from.symbol }));
  }
  return success(((to.price - from.price) / from.price) * 100);
}

/** Volume-weighted average of the typical price (h+l+c)/3 over bars. */
export const vwap = (bars: readonly OHLCV[]): Result<number> => {
  const volume = bars.reduce((sum, bar) => sum + bar.volume, 0);
  if (volume === 0)
    return failure(validationError("VWAP needs at least one bar with volume", { bars: bars.length }));
  const weighted = bars.reduce((sum, bar) => sum + ((bar.high + bar.low + bar.close) / 3) * bar.volume, 0);
  return success(weighted / volume);
};

/**
 * Fold a series of ticks of one symbol into a single bar. Each tick counts
 * as one unit of volume. Fails for an empty or mixed-symbol series.
 */
export function aggregateOHLCV(prices: readonly Price[]): Result<OHLCV> {
  const [first, ...rest] = prices;
  if (first === undefined) return failure(validationError("Cannot aggregate an empty series"));
  const mixed = rest.find((p) => p.symbol !== first.symbol);
  if (mixed !== undefined) {
    return failure(businessError("Series mixes symbols", { expected: first.symbol, found: mixed.symbol }));
  }
  const last = rest[rest.length - 1] ?? first;
  const values = prices.map((p) => p.price);
  return validateOHLCV({
    open: first.price,
    high: Math.max(...values),
    low: Math.min(...values),
    close: last.price,
    volume: prices.length,
    timestamp: first.timestamp,
  });
}

/** (bid volume - ask volume) / total over the top `levels` levels, in [-1, 1]. */
export const depthImbalance = (depth: MarketDepth, levels = 5): Result<number> => {
  const sum = (side: MarketDepth["bids"]) => side.slice(0, levels).reduce((acc, l) => acc + l.size, 0);
  const bidVolume = sum(depth.bids);
  const askVolume = sum(depth.asks);
  const total = bidVolume + askVolume;
  return total === 0
    ? failure(businessError("Empty book has no imbalance", { symbol: depth.symbol }))
    : success((bidVolume - askVolume) / total);
};

/**
 * The full pipeline for one symbol: parse raw ticks (the first bad tick
 * fails the run, tagged with its index), aggregate them into a bar, then
 * compute VWAP and the change from first to last tick.
 */
export function summarizeTicks(symbol: string, rawTicks: readonly unknown[]): Result<SymbolSummary> {
  const parsed = rawTicks.reduce<Result<Price[]>>(
    (acc, raw, index) =>
      flatMap(
        (list: Price[]) =>
          match(
            (price: Price): Result<Price[]> => success([...list, price]),
            (error: QiError): Result<Price[]> => failure(withContext({ tickIndex: index, symbol }, error)),
            parsePrice(raw),
          ),
        acc,
      ),
    success([]),
  );

  return flatMap((prices: Price[]) => {
    const first = prices[0];
    const last = prices[prices.length - 1];
    if (first === undefined || last === undefined) {
      return failure(validationError("No ticks received", { symbol }));
    }
    return flatMap(
      (bar: OHLCV) =>
        flatMap(
          (average: number) =>
            map(
              (changePercent: number): SymbolSummary => ({
                symbol,
                bar,
                vwap: Number(average.toFixed(4)),
                changePercent: Number(changePercent.toFixed(3)),
                ticks: prices.length,
              }),
              priceChange(first, last),
            ),
          vwap([bar]),
        ),
      aggregateOHLCV(prices),
    );
  }, parsed);
}
