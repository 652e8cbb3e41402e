/**
 * Factories for market data values. Each builds the object and runs it
 * through the matching validator, so a successful Result is always valid.
 */

import { failure, flatMap, map, success, validationError, type Result } from "@qi/base";
import type { Level, Level1, MarketDepth, OHLCV, Price } from "./types";
import { validateLevel1, validateMarketDepth, validateOHLCV, validatePrice } from "./validation";

/** Create a validated Price. The symbol is upper-cased first. */
export const createPrice = (symbol: string, price: number, timestamp: Date = new Date()): Result<Price> =>
  validatePrice({ symbol: symbol.toUpperCase(), price, timestamp });

/** Create a validated Level1 quote. */
export function createLevel1(
  symbol: string,
  bid: number,
  ask: number,
  bidSize: number,
  askSize: number,
  timestamp: Date = new Date(),
): Result<Level1> {
  return validateLevel1({ symbol: symbol.toUpperCase(), bid, ask, bidSize, askSize, timestamp });
}

/** Create a validated OHLCV bar. */
export const createOHLCV = (
  open: number,
  high: number,
  low: number,
  close: number,
  volume: number,
  timestamp: Date = new Date(),
): Result<OHLCV> => validateOHLCV({ open, high, low, close, volume, timestamp });

/** Create validated depth from [price, size] pairs. */
export const createMarketDepth = (
  symbol: string,
  bids: ReadonlyArray<readonly [number, number]>,
  asks: ReadonlyArray<readonly [number, number]>,
): Result<MarketDepth> => {
  const toLevels = (pairs: ReadonlyArray<readonly [number, number]>): Level[] =>
    pairs.map(([price, size]) => ({ price, size }));
  return validateMarketDepth({ symbol: symbol.toUpperCase(), bids: toLevels(bids), asks: toLevels(asks) });
};

type RawRecord = Record<string, unknown>;

const asRecord = (raw: unknown, what: string): Result<RawRecord> =>
  typeof raw === "object" && raw !== null && !Array.isArray(raw)
    ? success(raw as RawRecord)
    : failure(validationError(`${what} payload must be an object`, { received: typeof raw }));

const numberField = (record: RawRecord, field: string): Result<number> => {
  const value = record[field];
  if (typeof value === "number") return success(value);
  if (typeof value === "string" && value.trim() !== "" && Number.isFinite(Number(value)))
    return success(Number(value));
  return failure(validationError(`Field "${field}" must be numeric`, { field, value }));
};

const stringField = (record: RawRecord, field: string): Result<string> => {
  const value = record[field];
  return typeof value === "string"
    ? success(value)
    : failure(validationError(`Field "${field}" must be a string`, { field }));
};

const dateField = (record: RawRecord, field: string): Result<Date> => {
  const value = record[field];
  const date = typeof value === "string" || typeof value === "number" ? new Date(value) : undefined;
  return date !== undefined && !Number.isNaN(date.getTime())
    ? success(date)
    : failure(validationError(`Field "${field}" must be a date`, { field, value }));
};

/** Parse an untrusted JSON payload `{ symbol, price, timestamp }` into a Price. */
export const parsePrice = (raw: unknown): Result<Price> =>
  flatMap(
    (record: RawRecord) =>
      flatMap(
        (symbol: string) =>
          flatMap(
            (price: number) =>
              flatMap(
                (timestamp: Date) => createPrice(symbol, price, timestamp),
                dateField(record, "timestamp"),
              ),
            numberField(record, "price"),
          ),
        stringField(record, "symbol"),
      ),
    asRecord(raw, "price"),
  );

/** Parse an untrusted JSON payload into a Level1 quote. */
export function parseLevel1(raw: unknown): Result<Level1> {
  return flatMap(
    (record: RawRecord) => {
      const fields = ["bid", "ask", "bidSize", "askSize"].map((f) => numberField(record, f));
      const bad = fields.find((r) => r.tag === "failure");
      if (bad !== undefined && bad.tag === "failure") return bad;
      const [bid = 0, ask = 0, bidSize = 0, askSize = 0] = fields.map((r) =>
        r.tag === "success" ? r.value : 0,
      );
      return flatMap(
        (symbol: string) =>
          flatMap(
            (timestamp: Date) => createLevel1(symbol, bid, ask, bidSize, askSize, timestamp),
            dateField(record, "timestamp"),
          ),
        stringField(record, "symbol"),
      );
    },
    asRecord(raw, "level1"),
  );
}

/**
 * Step-by-step builder for Level1 quotes, handy when the bid and ask arrive
 * in separate messages. build() validates the combined quote.
 */
export class Level1Builder {
  private bid?: { price: number; size: number };
  private ask?: { price: number; size: number };

  constructor(private readonly symbol: string) {}

  /** Record the best bid. */
  withBid(price: number, size: number): this {
    this.bid = { price, size };
    return this;
  }

  /** Record the best ask. */
  withAsk(price: number, size: number): this {
    this.ask = { price, size };
    return this;
  }

  /** Validate and produce the quote; fails if either side is missing. */
  build(timestamp: Date = new Date()): Result<Level1> {
    const { bid, ask } = this;
    if (bid === undefined || ask === undefined) {
      return failure(
        validationError("Both sides are required", {
          symbol: this.symbol,
          hasBid: bid !== undefined,
          hasAsk: ask !== undefined,
        }),
      );
    }
    return createLevel1(this.symbol, bid.price, ask.price, bid.size, ask.size, timestamp);
  }
}

/** Price at the midpoint of a quote, as a Price value. */
export const midAsPrice = (quote: Level1, digits = 4): Result<Price> =>
  map(
    (mid: Price): Price => ({ ...mid, price: Number(mid.price.toFixed(digits)) }),
    createPrice(quote.symbol, (quote.bid + quote.ask) / 2, quote.timestamp),
  );
