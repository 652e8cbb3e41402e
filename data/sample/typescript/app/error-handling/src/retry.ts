/**
 * Retrying async operations according to the category of the error they
 * return. VALIDATION/BUSINESS failures stop at once; NETWORK and TIMEOUT back
 * off exponentially; RESOURCE/SYSTEM/CONCURRENCY back off linearly.
 */

import {
  failure,
  getRetryStrategy,
  success,
  timeoutError,
  withContext,
  type QiError,
  type Result,
} from "@qi/base";

/** Tuning for {@link retryWithPolicy}. */
export interface RetryPolicy {
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

/** Defaults suited to a demo: three quick attempts. */
export const defaultRetryPolicy: RetryPolicy = { maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 200 };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Delay before attempt `attempt` (1-based) for this error, or undefined if it must not be retried. */
export function retryDelay(error: QiError, attempt: number, policy: RetryPolicy): number | undefined {
  const { strategy } = getRetryStrategy(error.category);
  if (strategy === "never" || attempt >= policy.maxAttempts) return undefined;
  const raw =
    strategy === "exponential_backoff"
      ? policy.baseDelayMs * 2 ** (attempt - 1)
      : policy.baseDelayMs * attempt;
  return Math.min(raw, policy.maxDelayMs);
}

/**
 * Call `operation` until it succeeds, its error is not retryable, or the
 * attempts run out. The final error records how many attempts were made.
 */
export async function retryWithPolicy<T>(
  operation: (attempt: number) => Promise<Result<T>>,
  policy: RetryPolicy = defaultRetryPolicy,
): Promise<Result<T>> {
  for (let attempt = 1; ; attempt++) {
    const result = await operation(attempt);
    if (result.tag === "success") return result;
    const delay = retryDelay(result.error, attempt, policy);
    if (delay === undefined) {
      return failure(withContext({ attempts: attempt }, result.error));
    }
    await sleep(delay);
  }
}

/**
 * Race `operation` against a timer. When the timer wins the result is a
 * TIMEOUT failure; the late result of `operation` is ignored.
 */
export const withTimeout = <T>(
  operation: Promise<Result<T>>,
  ms: number,
  label: string,
): Promise<Result<T>> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<Result<T>>((resolve) => {
    timer = setTimeout(
      () => resolve(failure(timeoutError(`${label} timed out after ${ms}ms`, { ms, label }))),
      ms,
    );
  });
  return Promise.race([operation, expired]).then((result) => {
    clearTimeout(timer);
    return result;
  });
};

/**
 * A fake remote call that fails with the scripted errors in order, then
 * succeeds with `value`. Lets the demo show retries deterministically.
 */
export const scriptedCall =
  <T>(script: readonly QiError[], value: T) =>
  async (attempt: number): Promise<Result<T>> => {
    const scripted = script[attempt - 1];
    return scripted === undefined ? success(value) : failure(scripted);
  };
