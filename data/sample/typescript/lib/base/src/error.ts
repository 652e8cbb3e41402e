/**
 * @qi/base sample - QiError
 *
 * A QiError is plain data: a machine-readable code, a human-readable message,
 * a category that drives retry decisions, and free-form context for debugging.
 */

/**
 * The closed set of error categories. Each one maps to a retry strategy
 * (see {@link getRetryStrategy}).
 */
export type ErrorCategory =
  | "VALIDATION"
  | "NETWORK"
  | "SYSTEM"
  | "BUSINESS"
  | "AUTHENTICATION"
  | "AUTHORIZATION"
  | "CONFIGURATION"
  | "TIMEOUT"
  | "RESOURCE"
  | "CONCURRENCY"
  | "LOGGER";

/** Structured error value carried by a failed Result. */
export interface QiError {
  readonly code: string;
  readonly message: string;
  readonly category: ErrorCategory;
  readonly context: Record<string, unknown>;
}

/** Options object accepted by {@link createError}. */
export interface ErrorOptions {
  readonly code: string;
  readonly message: string;
  readonly category: ErrorCategory;
  readonly context?: Record<string, unknown>;
}

/** How a caller should react when an operation fails with a given category. */
export interface RetryStrategy {
  readonly strategy: "never" | "exponential_backoff" | "linear_backoff";
  readonly description: string;
}

/** Every category, in declaration order. */
export const ErrorCategories: ReadonlyArray<ErrorCategory> = [
  "VALIDATION",
  "NETWORK",
  "SYSTEM",
  "BUSINESS",
  "AUTHENTICATION",
  "AUTHORIZATION",
  "CONFIGURATION",
  "TIMEOUT",
  "RESOURCE",
  "CONCURRENCY",
  "LOGGER",
];

/** Type guard: is this string one of the known categories? */
export const isErrorCategory = (value: string): value is ErrorCategory =>
  (ErrorCategories as ReadonlyArray<string>).includes(value);

/**
 * Build a QiError from its four parts. The context defaults to an empty object.
 */
export const create = (
  code: string,
  message: string,
  category: ErrorCategory,
  context: Record<string, unknown> = {},
): QiError => ({ code, message, category, context });

/** Build a QiError from a named-options object. */
export const createError = (options: ErrorOptions): QiError =>
  create(options.code, options.message, options.category, options.context ?? {});

/**
 * Turn anything caught from third-party code into a QiError, keeping the
 * original message and, for Error instances, the name and stack.
 */
export const fromException = (exception: unknown, category: ErrorCategory = "SYSTEM"): QiError =>
  exception instanceof Error
    ? create("EXCEPTION", exception.message, category, {
        name: exception.name,
        stack: exception.stack,
      })
    : create("UNKNOWN_EXCEPTION", String(exception), category, { originalValue: exception });

/** Wrap a bare message in a QiError with the generic code "ERROR". */
export const fromString = (message: string, category: ErrorCategory = "SYSTEM"): QiError =>
  create("ERROR", message, category);

/** Render an error as `[CODE] message` for logs and CLI output. */
export const errorToString = (error: QiError): string => `[${error.code}] ${error.message}`;

/** Read the category of an error. */
export const getCategory = (error: QiError): ErrorCategory => error.category;

/** Copy an error into a JSON-friendly record. */
export const toStructuredData = (error: QiError): Record<string, unknown> => ({
  code: error.code,
  message: error.message,
  category: error.category,
  context: { ...error.context },
});

/**
 * Return a new error whose context is the old context plus `context`
 * (new keys win). The input error is left untouched. Data-last.
 */
export const withContext = (context: Record<string, unknown>, error: QiError): QiError => ({
  ...error,
  context: { ...error.context, ...context },
});

const retryTable: Readonly<Record<ErrorCategory, RetryStrategy>> = {
  VALIDATION: { strategy: "never", description: "Bad input; fix the caller" },
  NETWORK: { strategy: "exponential_backoff", description: "Transient transport failure" },
  SYSTEM: { strategy: "linear_backoff", description: "Infrastructure or runtime fault" },
  BUSINESS: { strategy: "never", description: "A domain rule rejected the request" },
  AUTHENTICATION: { strategy: "never", description: "Identity could not be established" },
  AUTHORIZATION: { strategy: "never", description: "Identity lacks the permission" },
  CONFIGURATION: { strategy: "never", description: "Setup is wrong; fix the settings" },
  TIMEOUT: { strategy: "exponential_backoff", description: "The operation ran out of time" },
  RESOURCE: { strategy: "linear_backoff", description: "A pool, quota or cache is exhausted" },
  CONCURRENCY: { strategy: "linear_backoff", description: "A conflicting update won the race" },
  LOGGER: { strategy: "never", description: "The logging pipeline failed" },
};

/** Look up how errors of a category should be retried. */
export const getRetryStrategy = (category: ErrorCategory): RetryStrategy => retryTable[category];

/** Signature shared by the category helpers below. */
type CategoryHelper = (message: string, context?: Record<string, unknown>) => QiError;

const helperFor =
  (code: string, category: ErrorCategory): CategoryHelper =>
  (message, context = {}) =>
    create(code, message, category, context);

/** VALIDATION error with code VALIDATION_ERROR: bad input, never retried. */
export const validationError: CategoryHelper = helperFor("VALIDATION_ERROR", "VALIDATION");

/** NETWORK error with code NETWORK_ERROR: transient transport failure. */
export const networkError: CategoryHelper = helperFor("NETWORK_ERROR", "NETWORK");

/** SYSTEM error with code SYSTEM_ERROR: runtime or infrastructure fault. */
export const systemError: CategoryHelper = helperFor("SYSTEM_ERROR", "SYSTEM");

/** BUSINESS error with code BUSINESS_ERROR: a domain rule said no. */
export const businessError: CategoryHelper = helperFor("BUSINESS_ERROR", "BUSINESS");

/** AUTHENTICATION error with code AUTH_ERROR: identity not established. */
export const authenticationError: CategoryHelper = helperFor("AUTH_ERROR", "AUTHENTICATION");

/** AUTHORIZATION error with code AUTHZ_ERROR: permission missing. */
export const authorizationError: CategoryHelper = helperFor("AUTHZ_ERROR", "AUTHORIZATION");

/** CONFIGURATION error with code CONFIG_ERROR: settings are wrong. */
export const configurationError: CategoryHelper = helperFor("CONFIG_ERROR", "CONFIGURATION");

/** TIMEOUT error with code TIMEOUT_ERROR: ran out of time. */
export const timeoutError: CategoryHelper = helperFor("TIMEOUT_ERROR", "TIMEOUT");

/** RESOURCE error with code RESOURCE_ERROR: a pool, quota or cache is exhausted or missing. */
export const resourceError: CategoryHelper = helperFor("RESOURCE_ERROR", "RESOURCE");

/** CONCURRENCY error with code CONCURRENCY_ERROR: a conflicting update won. */
export const concurrencyError: CategoryHelper = helperFor("CONCURRENCY_ERROR", "CONCURRENCY");

/** LOGGER error with code LOGGER_ERROR: the logging pipeline failed. */
export const loggerError: CategoryHelper = helperFor("LOGGER_ERROR", "LOGGER");
