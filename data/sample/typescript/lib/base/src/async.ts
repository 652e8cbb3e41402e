/**
 * @qi/base sample - async helpers
 *
 * Combinators for code that mixes Promises and Results. The `*Async` family
 * takes a plain Result and an async function; the `*Promise` family takes a
 * Promise<Result> so a pipeline can be written without intermediate awaits.
 */

import { create } from "./error";
import type { QiError } from "./error";
import { fromAsyncTryCatch, success } from "./result";
import type { Result } from "./result";

const wrapRejection =
  (code: string, label: string) =>
  (thrown: unknown): QiError =>
    create(code, `${label}: ${thrown instanceof Error ? thrown.message : String(thrown)}`, "SYSTEM", {
      originalError: thrown,
    });

/** Chain an async step that returns Promise<Result> after a plain Result. */
export const flatMapAsync = async <T, U, E>(
  fn: (value: T) => Promise<Result<U, E>>,
  result: Result<T, E>,
): Promise<Result<U, E>> => (result.tag === "success" ? fn(result.value) : result);

/**
 * Map a success value through an async function. A rejection from `fn`
 * becomes a SYSTEM error coded ASYNC_MAP_ERROR.
 */
export const mapAsync = async <T, U, E>(
  fn: (value: T) => Promise<U>,
  result: Result<T, E>,
): Promise<Result<U, E | QiError>> => {
  if (result.tag === "failure") return result;
  const input = result.value;
  return fromAsyncTryCatch(() => fn(input), wrapRejection("ASYNC_MAP_ERROR", "Async map failed"));
};

/** Fold a Result with async handlers for both variants. */
export const matchAsync = async <T, E, R>(
  onSuccess: (value: T) => Promise<R>,
  onError: (error: E) => Promise<R>,
  result: Result<T, E>,
): Promise<R> => (result.tag === "success" ? onSuccess(result.value) : onError(result.error));

/** Chain a step (sync or async) onto a Promise<Result>. */
export const flatMapPromise = async <T, U, E>(
  fn: (value: T) => Result<U, E> | Promise<Result<U, E>>,
  promiseResult: Promise<Result<T, E>>,
): Promise<Result<U, E>> => {
  const result = await promiseResult;
  return result.tag === "success" ? fn(result.value) : result;
};

/**
 * Map over a Promise<Result> with a sync or async function. A rejection or
 * throw from `fn` becomes a SYSTEM error coded ASYNC_MAP_PROMISE_ERROR.
 */
export const mapPromise = async <T, U, E>(
  fn: (value: T) => U | Promise<U>,
  promiseResult: Promise<Result<T, E>>,
): Promise<Result<U, E | QiError>> => {
  const result = await promiseResult;
  if (result.tag === "failure") return result;
  const input = result.value;
  return fromAsyncTryCatch(
    async () => fn(input),
    wrapRejection("ASYNC_MAP_PROMISE_ERROR", "Async promise map failed"),
  );
};

/** Await a Promise<Result> and fold it with async handlers. */
export const matchPromise = async <T, E, R>(
  onSuccess: (value: T) => Promise<R>,
  onError: (error: E) => Promise<R>,
  promiseResult: Promise<Result<T, E>>,
): Promise<R> => matchAsync(onSuccess, onError, await promiseResult);

/**
 * Await each Promise<Result> in order and gather the values. Stops at the
 * first failure and returns it.
 */
export const sequenceAsync = async <T, E>(promises: Promise<Result<T, E>>[]): Promise<Result<T[], E>> => {
  const values: T[] = [];
  for (const pending of promises) {
    const result = await pending;
    if (result.tag === "failure") return result;
    values.push(result.value);
  }
  return success(values);
};

/**
 * Await all Promise<Result>s and split them into successes and failures,
 * each list keeping the input order.
 */
export const collectAsync = async <T, E>(
  promises: Promise<Result<T, E>>[],
): Promise<{ successes: T[]; failures: E[] }> => {
  const settled = await Promise.all(promises);
  return settled.reduce<{ successes: T[]; failures: E[] }>(
    (acc, result) => {
      if (result.tag === "success") acc.successes.push(result.value);
      else acc.failures.push(result.error);
      return acc;
    },
    { successes: [], failures: [] },
  );
};

/** Rough runtime check that a value is a Promise (and so may hold a Result). */
export const isPromiseResult = <T, E>(value: unknown): value is Promise<Result<T, E>> =>
  value instanceof Promise;
