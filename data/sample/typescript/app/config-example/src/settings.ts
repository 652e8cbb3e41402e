/**
 * Typed application settings and the plain-function validator that turns a
 * raw configuration tree into them.
 */

import { failure, flatMap, map, success, validationError, type QiError, type Result } from "@qi/base";
import type { ConfigData } from "@qi/core";

/** Deployment environments the app knows about. */
export type Environment = "development" | "staging" | "production";

/** Fully validated settings. */
export interface AppSettings {
  readonly app: { readonly name: string; readonly environment: Environment };
  readonly server: { readonly host: string; readonly port: number };
  readonly logging: { readonly level: "debug" | "info" | "warn" | "error"; readonly pretty: boolean };
  readonly cache: { readonly maxSize: number; readonly ttlSeconds: number };
}

/** Defaults every source is merged over. */
export const defaultSettings: ConfigData = {
  app: { name: "config-example", environment: "development" },
  server: { host: "127.0.0.1", port: 3000 },
  logging: { level: "info", pretty: true },
  cache: { maxSize: 500, ttlSeconds: 60 },
};

const section = (data: ConfigData, name: string): Result<ConfigData> => {
  const value = data[name];
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? success(value as ConfigData)
    : failure(validationError(`Missing section "${name}"`, { path: name }));
};

/** Read a non-empty string field. */
export const stringField = (data: ConfigData, path: string, key: string): Result<string> => {
  const value = data[key];
  return typeof value === "string" && value.length > 0
    ? success(value)
    : failure(validationError(`${path}.${key} must be a non-empty string`, { path: `${path}.${key}` }));
};

/** Read an integer field within [min, max]. */
export const intField = (
  data: ConfigData,
  path: string,
  key: string,
  min: number,
  max: number,
): Result<number> => {
  const value = data[key];
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max
    ? success(value)
    : failure(
        validationError(`${path}.${key} must be an integer in [${min}, ${max}]`, {
          path: `${path}.${key}`,
          value,
        }),
      );
};

/** Read a field that must be one of `allowed`. */
export const oneOf = <T extends string>(
  data: ConfigData,
  path: string,
  key: string,
  allowed: readonly T[],
): Result<T> => {
  const value = data[key];
  const match = allowed.find((option) => option === value);
  return match !== undefined
    ? success(match)
    : failure(
        validationError(`${path}.${key} must be one of ${allowed.join(", ")}`, {
          path: `${path}.${key}`,
          value,
        }),
      );
};

const appSection = (data: ConfigData): Result<AppSettings["app"]> =>
  flatMap(
    (app: ConfigData) =>
      flatMap(
        (name: string) =>
          map(
            (environment: Environment) => ({ name, environment }),
            oneOf(app, "app", "environment", ["development", "staging", "production"] as const),
          ),
        stringField(app, "app", "name"),
      ),
    section(data, "app"),
  );

const serverSection = (data: ConfigData): Result<AppSettings["server"]> =>
  flatMap(
    (server: ConfigData) =>
      flatMap(
        (host: string) =>
          map((port: number) => ({ host, port }), intField(server, "server", "port", 1, 65535)),
        stringField(server, "server", "host"),
      ),
    section(data, "server"),
  );

const loggingSection = (data: ConfigData): Result<AppSettings["logging"]> =>
  flatMap(
    (logging: ConfigData) =>
      map(
        (level: AppSettings["logging"]["level"]) => ({ level, pretty: logging.pretty === true }),
        oneOf(logging, "logging", "level", ["debug", "info", "warn", "error"] as const),
      ),
    section(data, "logging"),
  );

const cacheSection = (data: ConfigData): Result<AppSettings["cache"]> =>
  flatMap(
    (cache: ConfigData) =>
      flatMap(
        (maxSize: number) =>
          map(
            (ttlSeconds: number) => ({ maxSize, ttlSeconds }),
            intField(cache, "cache", "ttlSeconds", 1, 86_400),
          ),
        intField(cache, "cache", "maxSize", 1, 1_000_000),
      ),
    section(data, "cache"),
  );

/**
 * Validate the whole tree. Sections are checked in order and the first
 * problem is reported. Production additionally refuses pretty logging.
 */
export function validateSettings(data: ConfigData): Result<AppSettings, QiError> {
  return flatMap(
    (app: AppSettings["app"]) =>
      flatMap(
        (server: AppSettings["server"]) =>
          flatMap(
            (logging: AppSettings["logging"]) =>
              flatMap((cache: AppSettings["cache"]): Result<AppSettings> => {
                if (app.environment === "production" && logging.pretty) {
                  return failure(
                    validationError("Pretty logging is not allowed in production", {
                      path: "logging.pretty",
                    }),
                  );
                }
                return success({ app, server, logging, cache });
              }, cacheSection(data)),
            loggingSection(data),
          ),
        serverSection(data),
      ),
    appSection(data),
  );
}
