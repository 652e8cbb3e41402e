/**
 * Domain errors for the error-handling demo: an account service with
 * validation, permission and business rules.
 */

import {
  authorizationError,
  businessError,
  create,
  createError,
  errorToString,
  getRetryStrategy,
  validationError,
  withContext,
  type ErrorCategory,
  type QiError,
} from "@qi/base";

/** Error codes this service can report. */
export type AccountErrorCode =
  | "INVALID_EMAIL"
  | "WEAK_PASSWORD"
  | "DUPLICATE_ACCOUNT"
  | "ACCOUNT_LOCKED"
  | "INSUFFICIENT_FUNDS"
  | "FORBIDDEN";

/** Create an account error with an explicit code and category. */
export const accountError = (
  code: AccountErrorCode,
  message: string,
  category: ErrorCategory,
  context: Record<string, unknown> = {},
): QiError => create(code, message, category, { service: "accounts", ...context });

/** The email did not look like an address. */
export const invalidEmail = (email: string): QiError =>
  accountError("INVALID_EMAIL", `Invalid email address: ${email}`, "VALIDATION", { field: "email" });

/** Password rules were not met; `rules` lists the failed ones. */
export const weakPassword = (rules: readonly string[]): QiError =>
  createError({
    code: "WEAK_PASSWORD",
    message: `Password fails ${rules.length} rule(s)`,
    category: "VALIDATION",
    context: { field: "password", rules },
  });

/** An account with this email already exists. */
export const duplicateAccount = (email: string): QiError =>
  accountError("DUPLICATE_ACCOUNT", "An account with this email already exists", "BUSINESS", { email });

/** A withdrawal larger than the balance. */
export const insufficientFunds = (balance: number, requested: number): QiError =>
  withContext(
    { code: "INSUFFICIENT_FUNDS", shortfall: requested - balance },
    businessError("Insufficient funds"),
  );

/** The caller lacks `permission`. */
export const forbidden = (userId: string, permission: string): QiError =>
  authorizationError(`User ${userId} lacks ${permission}`, { userId, permission });

/** A missing required field. */
export const missingField = (field: string): QiError => validationError(`${field} is required`, { field });

/** What the caller should do about an error, derived from its category. */
export type Advice = "fix-input" | "retry-later" | "retry-now" | "escalate";

/** Map an error to advice using the category's retry strategy. */
export const adviceFor = (error: QiError): Advice => {
  const { strategy } = getRetryStrategy(error.category);
  switch (strategy) {
    case "exponential_backoff":
      return "retry-later";
    case "linear_backoff":
      return "retry-now";
    case "never":
      return error.category === "VALIDATION" ? "fix-input" : "escalate";
  }
};

/** HTTP status a gateway would return for a given error. */
export function httpStatusFor(error: QiError): number {
  const table: Partial<Record<ErrorCategory, number>> = {
    VALIDATION: 400,
    AUTHENTICATION: 401,
    AUTHORIZATION: 403,
    BUSINESS: 422,
    TIMEOUT: 504,
    NETWORK: 502,
    CONCURRENCY: 409,
  };
  return table[error.category] ?? 500;
}

/** A one-line summary for logs: code, message, advice. */
export const summarize = (error: QiError): string => `${errorToString(error)} -> ${adviceFor(error)}`;
