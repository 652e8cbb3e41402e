/**
 * basic-result demo
 *
 * Small arithmetic and parsing functions that return Result, and the
 * combinators that chain them: map, flatMap, filter, orElse, match.
 */

import {
  Err,
  Ok,
  failure,
  filter,
  flatMap,
  fromMaybe,
  fromTryCatch,
  getError,
  inspect,
  map,
  match,
  orElse,
  success,
  unwrapOr,
  validationError,
  type QiError,
  type Result,
} from "@qi/base";

/** Divide two numbers; dividing by zero is a VALIDATION failure. */
export function divide(a: number, b: number): Result<number> {
  if (b === 0) {
    return failure(validationError("Division by zero", { dividend: a }));
  }
  return success(a / b);
}

/** Square root that refuses negative input. */
export const safeSqrt = (x: number): Result<number> =>
  x < 0 ? Err(validationError("Cannot take the square root of a negative number", { x })) : Ok(Math.sqrt(x));

/** Parse a decimal string into a finite number. */
export function parseNumber(input: string): Result<number> {
  const trimmed = input.trim();
  const value = Number(trimmed);
  if (trimmed === "" || !Number.isFinite(value)) {
    return failure(validationError(`Not a number: "${input}"`, { input }));
  }
  return success(value);
}

/** Parse an integer in [min, max]. */
export const parseIntInRange = (input: string, min: number, max: number): Result<number> =>
  filter(
    (n: number) => Number.isInteger(n) && n >= min && n <= max,
    validationError(`Expected an integer between ${min} and ${max}`, { input, min, max }),
    parseNumber(input),
  );

/** Parse "a/b" and divide: two parses, then a division, each of which may fail. */
export function evaluateFraction(expression: string): Result<number> {
  const parts = expression.split("/");
  if (parts.length !== 2) {
    return failure(validationError("Expected the form a/b", { expression }));
  }
  const [left = "", right = ""] = parts;
  return flatMap(
    (numerator: number) =>
      flatMap((denominator: number) => divide(numerator, denominator), parseNumber(right)),
    parseNumber(left),
  );
}

/** sqrt(a / b) rounded to `digits` places. */
export const rootOfRatio = (a: number, b: number, digits = 3): Result<number> =>
  map((root: number) => Number(root.toFixed(digits)), flatMap(safeSqrt, divide(a, b)));

/** A JSON document parsed with fromTryCatch, since JSON.parse throws on bad input. */
export const parseJson = (text: string): Result<unknown> =>
  fromTryCatch(
    () => JSON.parse(text) as unknown,
    (thrown) =>
      validationError("Malformed JSON", {
        reason: thrown instanceof Error ? thrown.message : String(thrown),
      }),
  );

const lookupTable: Readonly<Record<string, number>> = { one: 1, two: 2, three: 3 };

/** Look up a number word, falling back to parsing digits. */
export const wordToNumber = (word: string): Result<number> =>
  orElse(
    () => parseNumber(word),
    fromMaybe(lookupTable[word.toLowerCase()], validationError(`Unknown number word: ${word}`)),
  );

/** Average of a list; an empty list has no average. */
export const average = (values: readonly number[]): Result<number> =>
  values.length === 0
    ? failure(validationError("Cannot average an empty list"))
    : success(values.reduce((sum, v) => sum + v, 0) / values.length);

/** Parse every input; the first bad entry fails the whole batch. */
export const parseAll = (inputs: readonly string[]): Result<number[]> =>
  inputs.reduce<Result<number[]>>(
    (acc, input) => flatMap((list: number[]) => map((n: number) => [...list, n], parseNumber(input)), acc),
    success([]),
  );

/** Turn a Result into a one-line report. */
export const describe = (label: string, result: Result<number>): string =>
  match(
    (value: number) => `${label} = ${value}`,
    (error: QiError) => `${label} failed: ${error.message}`,
    result,
  );

/** Run every scenario and print the outcome. */
export function main(): void {
  const scenarios: Array<[string, Result<number>]> = [
    ["10 / 4", divide(10, 4)],
    ["1 / 0", divide(1, 0)],
    ["sqrt(-9)", safeSqrt(-9)],
    ["fraction 21/7", evaluateFraction("21/7")],
    ["fraction x/7", evaluateFraction("x/7")],
    ["sqrt(50/2)", rootOfRatio(50, 2)],
    ["word 'three'", wordToNumber("three")],
    ["average of inputs", flatMap(average, parseAll(["4", "8", "15"]))],
    ["port 70000", parseIntInRange("70000", 1, 65535)],
  ];

  for (const [label, result] of scenarios) {
    console.log(describe(label, result));
  }

  const doubled = inspect((v: number) => console.log(`before doubling: ${v}`), divide(9, 3));
  console.log(
    "doubled or zero:",
    unwrapOr(
      0,
      map((v: number) => v * 2, doubled),
    ),
  );
  console.log("error code of 1/0:", getError(divide(1, 0))?.code ?? "none");

  const config = parseJson('{"retries": 3}');
  console.log(
    match(
      (doc) => `parsed ${JSON.stringify(doc)}`,
      (e) => e.message,
      config,
    ),
  );
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) {
  main();
}
