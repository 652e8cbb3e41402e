/**
 * @qi/base sample - Result<T, E>
 *
 * A Result is a tagged union: either a success carrying a value or a failure
 * carrying an error. All combinators are standalone functions and take the
 * Result as their LAST argument, so they read naturally when nested.
 */

import { create } from "./error";
import type { QiError } from "./error";

/** The success variant. */
export type Success<T> = { readonly tag: "success"; readonly value: T };

/** The failure variant. */
export type Failure<E> = { readonly tag: "failure"; readonly error: E };

/** A value of type T, or an error of type E (QiError unless stated). */
export type Result<T, E = QiError> = Success<T> | Failure<E>;

const describe = (thrown: unknown): string => (thrown instanceof Error ? thrown.message : String(thrown));

// ---------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------

/** Wrap a value in a successful Result. */
export const success = <T>(value: T): Result<T, never> => ({ tag: "success", value });

/** Wrap an error in a failed Result. */
export const failure = <E>(error: E): Result<never, E> => ({ tag: "failure", error });

/**
 * Run a synchronous function that may throw (JSON.parse, new URL, a
 * third-party SDK) and capture the outcome as a Result. Without an
 * `errorHandler` the thrown value becomes a SYSTEM error coded EXCEPTION.
 */
export const fromTryCatch = <T>(
  operation: () => T,
  errorHandler?: (error: unknown) => QiError,
): Result<T, QiError> => {
  try {
    return success(operation());
  } catch (thrown) {
    return failure(
      errorHandler
        ? errorHandler(thrown)
        : create("EXCEPTION", describe(thrown), "SYSTEM", { originalError: thrown }),
    );
  }
};

/**
 * Await a promise-returning function and capture rejection as a failed
 * Result. Without an `errorHandler` the error is coded ASYNC_EXCEPTION.
 */
export const fromAsyncTryCatch = async <T>(
  operation: () => Promise<T>,
  errorHandler?: (error: unknown) => QiError,
): Promise<Result<T, QiError>> => {
  try {
    return success(await operation());
  } catch (thrown) {
    return failure(
      errorHandler
        ? errorHandler(thrown)
        : create("ASYNC_EXCEPTION", describe(thrown), "SYSTEM", { originalError: thrown }),
    );
  }
};

/** Lift a possibly-missing value: null/undefined become `failure(errorIfNull)`. */
export const fromMaybe = <T>(value: T | null | undefined, errorIfNull: QiError): Result<T, QiError> =>
  value === null || value === undefined ? failure(errorIfNull) : success(value);

/** Convert an Either-shaped value: right is success, left is failure. */
export const fromEither = <L, R>(
  either: { tag: "left"; value: L } | { tag: "right"; value: R },
): Result<R, L> => (either.tag === "right" ? success(either.value) : failure(either.value));

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

/** Type guard for the success variant. */
export const isSuccess = <T, E>(result: Result<T, E>): result is Success<T> => result.tag === "success";

/** Type guard for the failure variant. */
export const isFailure = <T, E>(result: Result<T, E>): result is Failure<E> => result.tag === "failure";

/** The success value, or null for a failure. */
export const getValue = <T, E>(result: Result<T, E>): T | null =>
  result.tag === "success" ? result.value : null;

/** The error, or null for a success. */
export const getError = <T, E>(result: Result<T, E>): E | null =>
  result.tag === "failure" ? result.error : null;

// ---------------------------------------------------------------------------
// Transformations (data-last)
// ---------------------------------------------------------------------------

/** Apply `fn` to a success value; failures pass through unchanged. */
export const map = <T, U, E>(fn: (value: T) => U, result: Result<T, E>): Result<U, E> =>
  result.tag === "success" ? success(fn(result.value)) : result;

/** Apply `fn` to a failure's error; successes pass through unchanged. */
export const mapError = <T, E, F>(fn: (error: E) => F, result: Result<T, E>): Result<T, F> =>
  result.tag === "failure" ? failure(fn(result.error)) : result;

/** Chain a step that can itself fail. The first failure short-circuits. */
export const flatMap = <T, U, E>(fn: (value: T) => Result<U, E>, result: Result<T, E>): Result<U, E> =>
  result.tag === "success" ? fn(result.value) : result;

/** Same as {@link flatMap}; reads well in "do this, and then that" pipelines. */
export const andThen = <T, U, E>(fn: (value: T) => Result<U, E>, result: Result<T, E>): Result<U, E> =>
  flatMap(fn, result);

/** Run a side effect on a success value and return the Result as-is. */
export const inspect = <T, E>(fn: (value: T) => void, result: Result<T, E>): Result<T, E> => {
  if (result.tag === "success") fn(result.value);
  return result;
};

/** Run a side effect on a failure's error and return the Result as-is. */
export const inspectErr = <T, E>(fn: (error: E) => void, result: Result<T, E>): Result<T, E> => {
  if (result.tag === "failure") fn(result.error);
  return result;
};

/** Flatten one level of nesting: Result<Result<T>> becomes Result<T>. */
export const collect = <T, E>(result: Result<Result<T, E>, E>): Result<T, E> =>
  result.tag === "success" ? result.value : result;

/** Keep a success only when `predicate` holds; otherwise fail with `errorIfFalse`. */
export const filter = <T, E>(
  predicate: (value: T) => boolean,
  errorIfFalse: E,
  result: Result<T, E>,
): Result<T, E> => {
  if (result.tag === "failure") return result;
  return predicate(result.value) ? result : failure(errorIfFalse);
};

/** Recover from a failure by producing another Result from its error. */
export const orElse = <T, E, F>(
  alternative: (error: E) => Result<T, F>,
  result: Result<T, E>,
): Result<T, F> => (result.tag === "failure" ? alternative(result.error) : result);

// ---------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------

/**
 * Take the success value out, throwing on failure. Only for tests and
 * program entry points where a failure is truly unrecoverable.
 */
export const unwrap = <T, E>(result: Result<T, E>): T => {
  if (result.tag === "success") return result.value;
  throw new Error(`unwrap() on a failed Result: ${JSON.stringify(result.error)}`);
};

/** Take the success value out, or fall back to `defaultValue`. */
export const unwrapOr = <T, E>(defaultValue: T, result: Result<T, E>): T =>
  result.tag === "success" ? result.value : defaultValue;

/** Fold a Result into one value by handling both variants. */
export const match = <T, E, R>(
  onSuccess: (value: T) => R,
  onError: (error: E) => R,
  result: Result<T, E>,
): R => (result.tag === "success" ? onSuccess(result.value) : onError(result.error));
