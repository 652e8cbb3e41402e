/**
 * error-handling demo
 *
 * An account service whose operations fail with categorized QiErrors, and a
 * caller that reacts to each category differently.
 */

import {
  flatMap,
  fromTryCatch,
  inspectErr,
  map,
  mapError,
  match,
  networkError,
  failure,
  success,
  timeoutError,
  validationError,
  withContext,
  type QiError,
  type Result,
} from "@qi/base";
import {
  adviceFor,
  duplicateAccount,
  forbidden,
  httpStatusFor,
  insufficientFunds,
  invalidEmail,
  missingField,
  summarize,
  weakPassword,
} from "./errors";
import { retryWithPolicy, scriptedCall, withTimeout } from "./retry";

/** Registration request as received from a form. */
export interface RegistrationInput {
  readonly email?: string;
  readonly password?: string;
  readonly homepage?: string;
}

/** A registered account. */
export interface Account {
  readonly id: string;
  readonly email: string;
  readonly homepage?: string;
  readonly balance: number;
}

const EMAIL_PATTERN = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
const takenEmails = new Set(["taken@example.com"]);

/** Require a non-empty field. */
export const requireField = (name: string, value: string | undefined): Result<string> =>
  value !== undefined && value.trim() !== "" ? success(value.trim()) : failure(missingField(name));

/** Check the email format. */
export const validateEmail = (email: string): Result<string> =>
  EMAIL_PATTERN.test(email) ? success(email.toLowerCase()) : failure(invalidEmail(email));

/** Check every password rule and report all that fail at once. */
export function validatePassword(password: string): Result<string> {
  const failed = [
    password.length < 10 ? "at least 10 characters" : undefined,
    /[0-9]/.test(password) ? undefined : "a digit",
    /[A-Z]/.test(password) ? undefined : "an upper-case letter",
  ].filter((rule): rule is string => rule !== undefined);
  return failed.length === 0 ? success(password) : failure(weakPassword(failed));
}

/** Parse an optional homepage URL; `new URL` throws, so it is wrapped. */
export const parseHomepage = (raw: string | undefined): Result<string | undefined> =>
  raw === undefined
    ? success(undefined)
    : fromTryCatch(
        () => new URL(raw).toString(),
        () => validationError(`Homepage is not a valid URL: ${raw}`, { field: "homepage" }),
      );

/** Reject emails that are already registered. */
export const ensureUnique = (email: string): Result<string> =>
  takenEmails.has(email) ? failure(duplicateAccount(email)) : success(email);

/** Validate the form and create an account. */
export function register(input: RegistrationInput): Result<Account> {
  const email = flatMap(ensureUnique, flatMap(validateEmail, requireField("email", input.email)));
  return flatMap(
    (checkedEmail: string) =>
      flatMap(
        () =>
          map(
            (homepage: string | undefined): Account => ({
              id: `acc_${checkedEmail.split("@")[0] ?? "user"}`,
              email: checkedEmail,
              balance: 0,
              ...(homepage !== undefined && { homepage }),
            }),
            parseHomepage(input.homepage),
          ),
        flatMap(validatePassword, requireField("password", input.password)),
      ),
    email,
  );
}

/** Withdraw from an account; needs the "withdraw" permission and enough funds. */
export const withdraw = (
  account: Account,
  amount: number,
  permissions: ReadonlySet<string>,
): Result<Account> => {
  if (!permissions.has("withdraw")) return failure(forbidden(account.id, "withdraw"));
  if (amount <= 0) return failure(validationError("Amount must be positive", { amount }));
  if (amount > account.balance) return failure(insufficientFunds(account.balance, amount));
  return success({ ...account, balance: account.balance - amount });
};

/** What an HTTP handler would send back. */
export interface HttpResponse {
  readonly status: number;
  readonly body: unknown;
}

/** Respond to a Result the way an HTTP handler would. */
export const respond = <T>(result: Result<T>): HttpResponse =>
  match(
    (value: T): HttpResponse => ({ status: 200, body: value }),
    (error: QiError): HttpResponse => ({
      status: httpStatusFor(error),
      body: { code: error.code, message: error.message, advice: adviceFor(error) },
    }),
    result,
  );

/** Register, then tag any failure with the request id for tracing. */
export const handleRegistration = (requestId: string, input: RegistrationInput): Result<Account> =>
  inspectErr(
    (error: QiError) => console.warn(summarize(error)),
    mapError((error: QiError) => withContext({ requestId }, error), register(input)),
  );

/** Run the scenarios. */
export async function main(): Promise<void> {
  const forms: RegistrationInput[] = [
    { email: "ada@example.com", password: "Analytical1843", homepage: "https://example.com/ada" },
    { email: "not-an-email", password: "Analytical1843" },
    { email: "taken@example.com", password: "Analytical1843" },
    { email: "bob@example.com", password: "short" },
    { email: "eve@example.com", password: "Analytical1843", homepage: "::nope::" },
    { password: "Analytical1843" },
  ];
  forms.forEach((form, i) => console.log(respond(handleRegistration(`req-${i}`, form))));

  const funded: Account = { id: "acc_ada", email: "ada@example.com", balance: 50 };
  console.log(respond(withdraw(funded, 80, new Set(["withdraw"]))));
  console.log(respond(withdraw(funded, 10, new Set())));

  const flaky = scriptedCall([networkError("connection reset"), timeoutError("slow upstream")], {
    quote: 42,
  });
  const retried = await retryWithPolicy(flaky);
  console.log("after retries:", respond(retried));

  const rejected = await retryWithPolicy(scriptedCall([validationError("bad symbol")], 0));
  console.log("validation is not retried:", rejected.tag === "failure" ? rejected.error.context : "-");

  const slow = new Promise<Result<number>>((resolve) => setTimeout(() => resolve(success(1)), 50));
  console.log("timeout:", respond(await withTimeout(slow, 10, "slow-call")));
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) {
  void main();
}
