/**
 * @qi/base sample - public entry point
 *
 * Result<T, E> and QiError plus the combinators that operate on them.
 */

// Result types and operations
export type { Result, Success, Failure } from "./result";
export {
  success,
  failure,
  fromTryCatch,
  fromAsyncTryCatch,
  fromMaybe,
  fromEither,
  isSuccess,
  isFailure,
  getValue,
  getError,
  map,
  mapError,
  flatMap,
  andThen,
  inspect,
  inspectErr,
  collect,
  filter,
  orElse,
  unwrap,
  unwrapOr,
  match,
} from "./result";

// Short aliases
export { success as Ok, failure as Err, fromTryCatch as tryCatch } from "./result";

// QiError types and operations
export type { QiError, ErrorCategory, ErrorOptions, RetryStrategy } from "./error";
export {
  ErrorCategories,
  isErrorCategory,
  create,
  createError,
  fromException,
  fromString,
  errorToString,
  getCategory,
  toStructuredData,
  withContext,
  getRetryStrategy,
  validationError,
  networkError,
  systemError,
  businessError,
  authenticationError,
  authorizationError,
  configurationError,
  timeoutError,
  resourceError,
  concurrencyError,
  loggerError,
} from "./error";

// Promise / Result composition
export {
  flatMapAsync,
  mapAsync,
  matchAsync,
  flatMapPromise,
  mapPromise,
  matchPromise,
  sequenceAsync,
  collectAsync,
  isPromiseResult,
} from "./async";
