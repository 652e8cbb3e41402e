/**
 * Tests for Result construction, queries, combinators and extraction.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Err,
  Ok,
  andThen,
  collect,
  failure,
  filter,
  flatMap,
  fromEither,
  fromMaybe,
  fromTryCatch,
  getError,
  getValue,
  inspect,
  inspectErr,
  isFailure,
  isSuccess,
  map,
  mapError,
  match,
  orElse,
  success,
  tryCatch,
  unwrap,
  unwrapOr,
  validationError,
  type Result,
} from "@qi/base";

const half = (n: number): Result<number> =>
  n % 2 === 0 ? success(n / 2) : failure(validationError("odd", { n }));

describe("construction", () => {
  test("success and failure carry their payloads", () => {
    assert.deepEqual(success(1), { tag: "success", value: 1 });
    assert.equal(failure(validationError("x")).tag, "failure");
    assert.deepEqual(Ok("a"), success("a"));
    assert.equal(isFailure(Err(validationError("y"))), true);
  });

  test("fromTryCatch captures a throw from JSON.parse", () => {
    const bad = fromTryCatch(() => JSON.parse("{"));
    assert.ok(isFailure(bad));
    assert.equal(bad.error.code, "EXCEPTION");
    assert.equal(bad.error.category, "SYSTEM");
    const custom = tryCatch(
      () => JSON.parse("{"),
      () => validationError("bad json"),
    );
    assert.equal(getError(custom)?.category, "VALIDATION");
  });

  test("fromMaybe and fromEither", () => {
    assert.equal(getValue(fromMaybe(0, validationError("missing"))), 0);
    assert.equal(isFailure(fromMaybe(null, validationError("missing"))), true);
    assert.deepEqual(fromEither({ tag: "right", value: 3 }), success(3));
    assert.deepEqual(fromEither({ tag: "left", value: "nope" }), failure("nope"));
  });
});

describe("combinators", () => {
  test("map obeys identity and composition", () => {
    const r = success(5);
    assert.deepEqual(
      map((x: number) => x, r),
      r,
    );
    const f = (x: number) => x + 1;
    const g = (x: number) => x * 3;
    assert.deepEqual(
      map((x: number) => f(g(x)), r),
      map(f, map(g, r)),
    );
  });

  test("flatMap chains and short-circuits", () => {
    assert.deepEqual(flatMap(half, flatMap(half, success(12))), success(3));
    const stopped = flatMap(half, flatMap(half, success(6)));
    assert.equal(getError(stopped)?.context.n, 3);
    assert.deepEqual(andThen(half, success(8)), flatMap(half, success(8)));
  });

  test("mapError, orElse and filter", () => {
    const relabelled = mapError((e) => ({ ...e, code: "HALF_FAILED" }), half(1));
    assert.equal(getError(relabelled)?.code, "HALF_FAILED");
    assert.deepEqual(
      orElse(() => success(0), half(1)),
      success(0),
    );
    const big = filter((n: number) => n > 10, validationError("too small"), success(4));
    assert.equal(getError(big)?.message, "too small");
  });

  test("collect flattens nested results", () => {
    assert.deepEqual(collect(success(success(2))), success(2));
    assert.equal(isFailure(collect(success(half(3)))), true);
  });

  test("inspect and inspectErr only see their own variant", () => {
    const seen: string[] = [];
    const one: Result<number> = success(1);
    inspect((v: number) => seen.push(`ok:${v}`), one);
    inspectErr((e) => seen.push(`err:${e.code}`), one);
    inspectErr((e) => seen.push(`err:${e.code}`), half(1));
    assert.deepEqual(seen, ["ok:1", "err:VALIDATION_ERROR"]);
  });
});

describe("extraction", () => {
  test("unwrapOr, match and unwrap", () => {
    assert.equal(unwrapOr(-1, half(3)), -1);
    assert.equal(
      match(
        (v: number) => `v=${v}`,
        (e) => e.message,
        half(4),
      ),
      "v=2",
    );
    assert.equal(unwrap(success("x")), "x");
    assert.throws(() => unwrap(half(1)));
    assert.ok(isSuccess(half(2)));
  });
});
