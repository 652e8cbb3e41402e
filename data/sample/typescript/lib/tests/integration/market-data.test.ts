/**
 * Tests for the market-data demo: validation rules, factories, analytics
 * and the simulated feed.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { getError, getValue, isFailure, isSuccess, unwrap } from "@qi/base";
import { fromObject } from "@qi/core";
import {
  aggregateOHLCV,
  depthImbalance,
  priceChange,
  spreadBps,
  summarizeTicks,
  vwap,
} from "../../../app/market-data/src/analytics";
import {
  Level1Builder,
  createLevel1,
  createMarketDepth,
  createOHLCV,
  createPrice,
  parsePrice,
} from "../../../app/market-data/src/factories";
import { createSimulatedTransport, fetchAllPrices, fetchPrice } from "../../../app/market-data/src/feed";
import { MarketDataService, loadFeedSettings } from "../../../app/market-data/src/service";
import {
  validateLevel1,
  validateMarketDepth,
  validateOHLCV,
  validatePrice,
  validateSymbol,
} from "../../../app/market-data/src/validation";

const at = new Date("2024-03-01T14:30:00Z");

describe("validation", () => {
  test("symbols and prices", () => {
    assert.ok(isSuccess(validateSymbol("BRK.B")));
    assert.ok(isFailure(validateSymbol("lower")));
    assert.equal(
      getError(validatePrice({ symbol: "AAPL", price: 0, timestamp: at }))?.context.field,
      "price",
    );
    assert.equal(
      getError(createPrice("AAPL", 10, new Date(Date.now() + 3_600_000)))?.context.field,
      "timestamp",
    );
  });

  test("level1 rejects a crossed book", () => {
    const quote = { symbol: "MSFT", bid: 10.2, ask: 10.1, bidSize: 1, askSize: 1, timestamp: at };
    assert.match(getError(validateLevel1(quote))?.message ?? "", /Crossed/);
    assert.ok(isSuccess(validateLevel1({ ...quote, bid: 10.1 })));
  });

  test("OHLCV high/low/volume rules", () => {
    const bar = { open: 10, high: 12, low: 9, close: 11, volume: 100, timestamp: at };
    assert.ok(isSuccess(validateOHLCV(bar)));
    assert.ok(isFailure(validateOHLCV({ ...bar, high: 10.5 })));
    assert.ok(isFailure(validateOHLCV({ ...bar, low: 10.5 })));
    assert.ok(isFailure(createOHLCV(10, 12, 9, 11, -1, at)));
  });

  test("depth must be sorted and uncrossed", () => {
    assert.ok(
      isSuccess(
        createMarketDepth(
          "X",
          [
            [10, 1],
            [9, 1],
          ],
          [
            [11, 1],
            [12, 1],
          ],
        ),
      ),
    );
    assert.ok(
      isFailure(
        createMarketDepth(
          "X",
          [
            [9, 1],
            [10, 1],
          ],
          [[11, 1]],
        ),
      ),
    );
    assert.ok(
      isFailure(
        validateMarketDepth({ symbol: "X", bids: [{ price: 11, size: 1 }], asks: [{ price: 11, size: 1 }] }),
      ),
    );
  });
});

describe("factories and analytics", () => {
  test("parsePrice accepts numeric strings and rejects junk", () => {
    assert.equal(
      getValue(parsePrice({ symbol: "aapl", price: "101.5", timestamp: at.toISOString() }))?.symbol,
      "AAPL",
    );
    assert.ok(isFailure(parsePrice("not an object")));
    assert.ok(isFailure(new Level1Builder("X").withAsk(1, 1).build(at)));
  });

  test("spread, change, vwap, aggregation and imbalance", () => {
    const quote = unwrap(createLevel1("AAPL", 99.95, 100.05, 10, 10, at));
    assert.equal(Math.round(unwrap(spreadBps(quote))), 10);
    const p1 = unwrap(createPrice("AAPL", 100, at));
    const p2 = unwrap(createPrice("AAPL", 110, new Date(at.getTime() + 1000)));
    assert.equal(getValue(priceChange(p1, p2)), 10);
    assert.equal(getError(priceChange(p1, unwrap(createPrice("MSFT", 1, at))))?.category, "BUSINESS");
    assert.deepEqual(getValue(aggregateOHLCV([p1, p2]))?.high, 110);
    assert.ok(isFailure(aggregateOHLCV([])));
    assert.ok(isFailure(vwap([])));
    const depth = unwrap(createMarketDepth("AAPL", [[99, 30]], [[101, 10]]));
    assert.equal(getValue(depthImbalance(depth)), 0.5);
  });

  test("summarizeTicks tags the failing tick", () => {
    const ticks = [
      { symbol: "NVDA", price: 100, timestamp: at.toISOString() },
      { symbol: "NVDA", price: "bad", timestamp: at.toISOString() },
    ];
    assert.equal(getError(summarizeTicks("NVDA", ticks))?.context.tickIndex, 1);
    assert.equal(getValue(summarizeTicks("NVDA", ticks.slice(0, 1)))?.ticks, 1);
  });
});

describe("feed and service", () => {
  const transport = createSimulatedTransport({ AAPL: { last: 190, bid: 189.9, ask: 190.1 } }, 0);

  test("fetchPrice covers success, parse failure and unknown symbol", async () => {
    assert.equal(getValue(await fetchPrice(transport, "AAPL"))?.price, 190);
    assert.equal(getError(await fetchPrice(transport, "GLITCH"))?.category, "NETWORK");
    assert.equal(getError(await fetchPrice(transport, "NOPE"))?.category, "RESOURCE");
    assert.ok(isFailure(await fetchAllPrices(transport, ["AAPL", "NOPE"])));
  });

  test("service settings and cached prices", async () => {
    assert.ok(isFailure(loadFeedSettings(fromObject({ feed: { cacheSize: -1 } }))));
    const service = unwrap(MarketDataService.create(fromObject({ feed: { logLevel: "error" } }), transport));
    assert.ok(isFailure(await service.cachedPrice("AAPL")));
    await service.getPrice("AAPL");
    assert.equal(getValue(await service.cachedPrice("AAPL"))?.price, 190);
  });
});
