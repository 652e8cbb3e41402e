/**
 * market-data demo
 *
 * Validated market data values, an analytics pipeline over raw ticks, and a
 * service that fetches from a simulated feed with logging and caching.
 */

import { errorToString, flatMap, map, match, matchPromise, type QiError, type Result } from "@qi/base";
import { ConfigBuilder, createLogger, type Logger } from "@qi/core";
import { midPrice, spread, summarizeTicks } from "./analytics";
import { createLevel1, createMarketDepth, createOHLCV, createPrice, Level1Builder } from "./factories";
import { createSimulatedTransport, fetchAllPrices, fetchDisplayPrice } from "./feed";
import { MarketDataService } from "./service";
import type { SymbolSummary } from "./types";

/** Report a Result on one line, whatever its type. */
export const report = <T>(label: string, result: Result<T, QiError>): string =>
  match(
    (value: T) => `ok   ${label}: ${JSON.stringify(value)}`,
    (error: QiError) => `fail ${label}: ${errorToString(error)}`,
    result,
  );

/** The factories accept good data and reject each kind of bad data. */
export function showFactories(logger: Logger): void {
  const lines = [
    report("price", createPrice("aapl", 189.5)),
    report("negative price", createPrice("AAPL", -1)),
    report("level1", createLevel1("MSFT", 410.1, 410.2, 300, 200)),
    report("crossed level1", createLevel1("MSFT", 411, 410, 300, 200)),
    report("bar", createOHLCV(100, 105, 99, 104, 12_000)),
    report("bar with low above close", createOHLCV(100, 105, 104.5, 104, 12_000)),
    report(
      "depth",
      createMarketDepth(
        "AAPL",
        [
          [189.4, 5],
          [189.3, 9],
        ],
        [
          [189.6, 4],
          [189.7, 8],
        ],
      ),
    ),
    report(
      "unsorted depth",
      createMarketDepth(
        "AAPL",
        [
          [189.3, 5],
          [189.4, 9],
        ],
        [[189.6, 4]],
      ),
    ),
    report("builder", new Level1Builder("TSLA").withBid(250.1, 10).withAsk(250.3, 12).build()),
    report("half-built", new Level1Builder("TSLA").withBid(250.1, 10).build()),
  ];
  for (const line of lines) logger.info(line);
}

/** Spread and mid of a freshly built quote, as one composed Result. */
export const quoteStats = (
  symbol: string,
  bid: number,
  ask: number,
): Result<{ spread: number; mid: number }> =>
  map(
    (q) => ({ spread: Number(spread(q).toFixed(4)), mid: Number(midPrice(q).toFixed(4)) }),
    createLevel1(symbol, bid, ask, 1, 1),
  );

/** Summaries for a good tick stream and for one with a corrupt tick; returns the good one. */
export function showPipeline(logger: Logger): Result<SymbolSummary> {
  const t0 = Date.now() - 60_000;
  const ticks = [101.2, 101.9, 100.8, 102.4, 102.1].map((price, i) => ({
    symbol: "NVDA",
    price,
    timestamp: new Date(t0 + i * 1000).toISOString(),
  }));
  const good = summarizeTicks("NVDA", ticks);
  const corrupt = summarizeTicks("NVDA", [
    ...ticks.slice(0, 2),
    { symbol: "NVDA", price: "n/a", timestamp: 0 },
  ]);
  logger.info(report("summary", good));
  logger.info(report("corrupt summary", corrupt));
  return good;
}

/** Fetch from the simulated feed through the service. */
export async function showService(logger: Logger): Promise<void> {
  const transport = createSimulatedTransport({
    AAPL: { last: 189.52, bid: 189.5, ask: 189.54 },
    MSFT: { last: 410.15, bid: 410.1, ask: 410.2 },
    PENNY: { last: 0.05, bid: 0.04, ask: 0.06 },
  });
  const config = ConfigBuilder.fromObject({
    feed: { logLevel: "debug", symbols: ["AAPL", "MSFT", "GLITCH", "ZZZZ"] },
  }).build();

  const service = flatMap((c) => MarketDataService.create(c, transport), config);
  await match(
    async (svc: MarketDataService) => {
      await svc.getPrice("AAPL");
      await svc.getPrice("AAPL");
      logger.info(report("tradable MSFT", await svc.getTradableQuote("MSFT")));
      logger.info(report("tradable PENNY", await svc.getTradableQuote("PENNY")));
      const snap = await svc.snapshot();
      logger.info("snapshot", { symbols: snap.map((p) => p.symbol) });
      logger.info(report("cached MSFT", await svc.cachedPrice("MSFT")));
    },
    async (error: QiError) => logger.error("service setup failed", error),
    service,
  );

  logger.info(report("all-or-nothing batch", await fetchAllPrices(transport, ["AAPL", "GLITCH"])));
  await matchPromise(
    async (text: string) => logger.info(text),
    async (error: QiError) => logger.warn("display price unavailable", { code: error.code }),
    fetchDisplayPrice(transport, "MSFT"),
  );
}

/** Entry point. */
export async function main(): Promise<void> {
  const logger = createLogger({ level: "info", name: "market-data-demo", pretty: true });
  await match(
    async (log: Logger) => {
      showFactories(log);
      log.info(report("quote stats", quoteStats("AAPL", 189.5, 189.54)));
      showPipeline(log);
      await showService(log);
    },
    async (error: QiError) => console.error(errorToString(error)),
    logger,
  );
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) {
  void main();
}
