/**
 * A simulated market data feed. The transport returns raw JSON text the way
 * an HTTP client would; parsing it can throw, so every fetch goes through
 * fromAsyncTryCatch and comes back as a Result.
 */

import {
  collectAsync,
  flatMap,
  flatMapPromise,
  fromAsyncTryCatch,
  failure,
  mapPromise,
  networkError,
  resourceError,
  sequenceAsync,
  success,
  type QiError,
  type Result,
} from "@qi/base";
import { parseLevel1, parsePrice } from "./factories";
import type { Level1, Price } from "./types";

/** Fetches the body at `path` as text. */
export type Transport = (path: string) => Promise<string>;

/** Seed data for the simulated exchange, keyed by symbol. */
export interface SimulatedBook {
  readonly last: number;
  readonly bid: number;
  readonly ask: number;
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Build a transport over in-memory books. Paths look like `/price/AAPL` or
 * `/level1/AAPL`. The symbol "GLITCH" returns a truncated body, which makes
 * JSON.parse throw; unknown symbols return an error document.
 */
export function createSimulatedTransport(
  books: Readonly<Record<string, SimulatedBook>>,
  latencyMs = 5,
): Transport {
  return async (path: string) => {
    await delay(latencyMs);
    const [, kind = "", symbol = ""] = path.split("/");
    if (symbol === "GLITCH") return '{"symbol": "GLITCH", "pri';
    const book = books[symbol];
    if (book === undefined) return JSON.stringify({ error: "unknown symbol", symbol });
    const timestamp = new Date().toISOString();
    return kind === "level1"
      ? JSON.stringify({ symbol, bid: book.bid, ask: book.ask, bidSize: 100, askSize: 120, timestamp })
      : JSON.stringify({ symbol, price: book.last, timestamp });
  };
}

/** Fetch and parse JSON. Transport and parse failures become NETWORK errors. */
export const fetchJson = (transport: Transport, path: string): Promise<Result<unknown>> =>
  fromAsyncTryCatch(
    async () => JSON.parse(await transport(path)) as unknown,
    (thrown) =>
      networkError(`Feed request failed: ${path}`, {
        path,
        reason: thrown instanceof Error ? thrown.message : String(thrown),
      }),
  );

/** Turn an `{ error: ... }` document into a RESOURCE failure; pass anything else through. */
export const rejectErrorDocument = (body: unknown): Result<unknown> => {
  if (typeof body === "object" && body !== null && "error" in body) {
    return failure(resourceError(`Feed reported: ${String((body as { error: unknown }).error)}`, { body }));
  }
  return success(body);
};

/** Last price for a symbol. */
export const fetchPrice = (transport: Transport, symbol: string): Promise<Result<Price>> =>
  flatMapPromise(parsePrice, flatMapPromise(rejectErrorDocument, fetchJson(transport, `/price/${symbol}`)));

/** Level 1 quote for a symbol. */
export async function fetchLevel1(transport: Transport, symbol: string): Promise<Result<Level1>> {
  const body = await fetchJson(transport, `/level1/${symbol}`);
  return flatMap(parseLevel1, flatMap(rejectErrorDocument, body));
}

/** Prices for several symbols; the first failure fails the batch. */
export const fetchAllPrices = (transport: Transport, symbols: readonly string[]): Promise<Result<Price[]>> =>
  sequenceAsync(symbols.map((symbol) => fetchPrice(transport, symbol)));

/** Prices for several symbols, keeping whatever succeeded alongside the errors. */
export const fetchAvailablePrices = (
  transport: Transport,
  symbols: readonly string[],
): Promise<{ successes: Price[]; failures: QiError[] }> =>
  collectAsync(symbols.map((symbol) => fetchPrice(transport, symbol)));

/** Price rounded to two decimals, for display. */
export const fetchDisplayPrice = (transport: Transport, symbol: string): Promise<Result<string>> =>
  mapPromise((p: Price) => `${p.symbol} ${p.price.toFixed(2)}`, fetchPrice(transport, symbol));
