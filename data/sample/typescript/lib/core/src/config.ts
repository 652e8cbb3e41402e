/**
 * @qi/core sample - configuration
 *
 * An immutable Config over a nested object, built from objects and
 * environment variables, merged left-to-right, and validated by a plain
 * function that returns a Result. Every lookup that can miss returns Result.
 */

import { failure, flatMap, map, mapError, success, unwrapOr } from "@qi/base";
import type { QiError, Result } from "@qi/base";

/** Raw configuration tree. */
export type ConfigData = Record<string, unknown>;

/** Where a piece of configuration came from. */
export type ConfigSource = "object" | "env";

/** Context carried by configuration errors. */
export type ConfigErrorContext = {
  readonly path?: string;
  readonly [key: string]: unknown;
};

/** A QiError narrowed to the CONFIGURATION category. */
export type ConfigError = QiError & {
  readonly category: "CONFIGURATION";
  readonly context: ConfigErrorContext;
};

/** Validator run against the whole tree; returns the typed settings or an error. */
export type ConfigValidator<T> = (data: ConfigData) => Result<T, QiError>;

/** Create a CONFIGURATION error coded CONFIG_ERROR. */
export const configError = (message: string, context: ConfigErrorContext = {}): ConfigError => ({
  code: "CONFIG_ERROR",
  message,
  category: "CONFIGURATION",
  context,
});

const isRecord = (value: unknown): value is ConfigData =>
  typeof value === "object" && value !== null && !Array.isArray(value);

const deepMerge = (base: ConfigData, overlay: ConfigData): ConfigData => {
  const merged: ConfigData = { ...base };
  for (const [key, value] of Object.entries(overlay)) {
    const current = merged[key];
    merged[key] = isRecord(current) && isRecord(value) ? deepMerge(current, value) : value;
  }
  return merged;
};

const lookup = (data: ConfigData, path: string): Result<unknown, ConfigError> =>
  path
    .split(".")
    .reduce<Result<unknown, ConfigError>>(
      (acc, segment) =>
        flatMap(
          (node) =>
            isRecord(node) && segment in node
              ? success(node[segment])
              : failure(configError(`Configuration path not found: ${path}`, { path })),
          acc,
        ),
      success(data),
    );

const setPath = (data: ConfigData, path: string, value: unknown): ConfigData => {
  const [head, ...rest] = path.split(".");
  if (head === undefined || head === "") return data;
  if (rest.length === 0) return { ...data, [head]: value };
  const child = data[head];
  return { ...data, [head]: setPath(isRecord(child) ? child : {}, rest.join("."), value) };
};

const coerceEnvValue = (raw: string): unknown => {
  if (raw === "true" || raw === "false") return raw === "true";
  if (raw.trim() !== "" && !Number.isNaN(Number(raw))) return Number(raw);
  return raw;
};

const envKeyToPath = (key: string): string =>
  key
    .split("__")
    .map((part) => part.toLowerCase().replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase()))
    .join(".");

/** Immutable, read-only view over a configuration tree. */
export class Config {
  constructor(
    private readonly data: ConfigData,
    private readonly sources: readonly ConfigSource[] = ["object"],
  ) {}

  /** Value at a dotted path such as "server.port". Fails when the path is missing. */
  get<T = unknown>(path: string): Result<T, ConfigError> {
    return map((value) => value as T, lookup(this.data, path));
  }

  /** Value at `path`, or `defaultValue` when it is missing. */
  getOr<T>(path: string, defaultValue: T): T {
    return unwrapOr(defaultValue, this.get<T>(path));
  }

  /** String at `path`; fails when missing or not a string. */
  getString(path: string): Result<string, ConfigError> {
    return this.typed(path, "string", (v): v is string => typeof v === "string");
  }

  /** Finite number at `path`; fails when missing or not a number. */
  getNumber(path: string): Result<number, ConfigError> {
    return this.typed(path, "number", (v): v is number => typeof v === "number" && Number.isFinite(v));
  }

  /** Whether a value exists at `path`. */
  has(path: string): boolean {
    return lookup(this.data, path).tag === "success";
  }

  /** A deep copy of the whole tree. */
  getAll(): ConfigData {
    return structuredClone(this.data);
  }

  /** The sources that contributed to this Config, oldest first. */
  getSources(): readonly ConfigSource[] {
    return this.sources;
  }

  /** A new Config where values from `other` win over values from this one. */
  merge(other: Config): Config {
    return new Config(deepMerge(this.data, other.data), [...this.sources, ...other.sources]);
  }

  /** Pretty-printed JSON, handy for debugging. */
  toJson(): string {
    return JSON.stringify(this.data, null, 2);
  }

  private typed<T>(path: string, expected: string, guard: (v: unknown) => v is T): Result<T, ConfigError> {
    return flatMap(
      (value: unknown) =>
        guard(value)
          ? success(value)
          : failure(configError(`Expected ${expected} at ${path}`, { path, expected, actual: typeof value })),
      lookup(this.data, path),
    );
  }
}

/** Fluent builder: collect sources, optionally attach a validator, then build(). */
export class ConfigBuilder {
  private constructor(
    private readonly data: ConfigData,
    private readonly sources: readonly ConfigSource[],
    private readonly validator?: ConfigValidator<unknown>,
  ) {}

  /** Start from a plain object. */
  static fromObject(data: ConfigData): ConfigBuilder {
    return new ConfigBuilder(structuredClone(data), ["object"]);
  }

  /**
   * Start from environment variables that begin with `prefix`. APP_DB__MAX_POOL=5
   * with prefix "APP" becomes `db.maxPool = 5`: "__" nests, "_" camel-cases.
   */
  static fromEnv(prefix = "", env: Record<string, string | undefined> = process.env): ConfigBuilder {
    const head = prefix === "" ? "" : `${prefix}_`;
    const data = Object.entries(env)
      .filter((entry): entry is [string, string] => entry[0].startsWith(head) && entry[1] !== undefined)
      .reduce<ConfigData>(
        (acc, [key, raw]) => setPath(acc, envKeyToPath(key.slice(head.length)), coerceEnvValue(raw)),
        {},
      );
    return new ConfigBuilder(data, ["env"]);
  }

  /** Overlay another builder; its values win. */
  merge(other: ConfigBuilder): ConfigBuilder {
    const sources = [...this.sources, ...other.sources];
    return new ConfigBuilder(deepMerge(this.data, other.data), sources, this.validator);
  }

  /** Overlay a plain object; its values win. */
  mergeObject(data: ConfigData): ConfigBuilder {
    return this.merge(ConfigBuilder.fromObject(data));
  }

  /** Set a single dotted path. */
  set(path: string, value: unknown): ConfigBuilder {
    return new ConfigBuilder(setPath(this.data, path, value), this.sources, this.validator);
  }

  /** Attach a validator that build() will run. */
  validateWith<T>(validator: ConfigValidator<T>): ConfigBuilder {
    return new ConfigBuilder(this.data, this.sources, validator);
  }

  /** Produce the Config, or the validator's error as a ConfigError. */
  build(): Result<Config, ConfigError> {
    const config = new Config(this.data, this.sources);
    if (this.validator === undefined) return success(config);
    return map(() => config, validateConfig(config, this.validator));
  }
}

/** Wrap a plain object in a Config (no validation). */
export const fromObject = (data: ConfigData): Config => new Config(structuredClone(data), ["object"]);

/** A Config with no values. */
export const empty = (): Config => new Config({}, []);

/** Read a Config from environment variables; see {@link ConfigBuilder.fromEnv}. */
export const fromEnv = (prefix = "", env: Record<string, string | undefined> = process.env): Config =>
  unwrapOr(empty(), ConfigBuilder.fromEnv(prefix, env).build());

/**
 * Run `validator` over the whole tree. Whatever error it reports is
 * re-labelled as a ConfigError, keeping its message and context.
 */
export const validateConfig = <T>(config: Config, validator: ConfigValidator<T>): Result<T, ConfigError> =>
  mapError(
    (error: QiError) => configError(error.message, { ...error.context, cause: error.code }),
    validator(config.getAll()),
  );
