/**
 * Market data domain types. All are immutable plain objects; anything built
 * from outside input goes through the factories in ./factories.
 */

/** Last traded price of an instrument. */
export interface Price {
  readonly symbol: string;
  readonly price: number;
  readonly timestamp: Date;
}

/** Top of book: best bid and best ask with their sizes. */
export interface Level1 {
  readonly symbol: string;
  readonly bid: number;
  readonly ask: number;
  readonly bidSize: number;
  readonly askSize: number;
  readonly timestamp: Date;
}

/** One bar of open/high/low/close/volume. */
export interface OHLCV {
  readonly open: number;
  readonly high: number;
  readonly low: number;
  readonly close: number;
  readonly volume: number;
  readonly timestamp: Date;
}

/** A single price level in an order book. */
export interface Level {
  readonly price: number;
  readonly size: number;
}

/** Order book depth. Bids are sorted high to low, asks low to high. */
export interface MarketDepth {
  readonly symbol: string;
  readonly bids: readonly Level[];
  readonly asks: readonly Level[];
}

/** Which side of the book a level belongs to. */
export type Side = "bid" | "ask";

/** Summary produced by the analytics pipeline. */
export interface SymbolSummary {
  readonly symbol: string;
  readonly bar: OHLCV;
  readonly vwap: number;
  readonly changePercent: number;
  readonly ticks: number;
}
