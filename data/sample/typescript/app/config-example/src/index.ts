/**
 * config-example demo
 *
 * Layer defaults, environment variables and command-line overrides into one
 * Config, validate it into typed settings, then use those settings to create
 * the logger and the cache.
 */

import { flatMap, map, mapError, match, withContext, type QiError, type Result } from "@qi/base";
import {
  ConfigBuilder,
  createCache,
  createLogger,
  fromEnv,
  fromObject,
  validateConfig,
  type Config,
  type ConfigError,
  type ICache,
  type Logger,
} from "@qi/core";
import { defaultSettings, validateSettings, type AppSettings } from "./settings";

/** Parse `--key.path=value` arguments into an override object. */
export function parseOverrides(argv: readonly string[]): Record<string, unknown> {
  return argv
    .filter((arg) => arg.startsWith("--") && arg.includes("="))
    .reduce<Record<string, unknown>>((acc, arg) => {
      const [path = "", raw = ""] = arg.slice(2).split("=", 2);
      const value =
        raw === "true" ? true : raw === "false" ? false : Number.isNaN(Number(raw)) ? raw : Number(raw);
      return setDeep(acc, path.split("."), value);
    }, {});
}

const setDeep = (
  target: Record<string, unknown>,
  keys: string[],
  value: unknown,
): Record<string, unknown> => {
  const [head, ...rest] = keys;
  if (head === undefined) return target;
  if (rest.length === 0) return { ...target, [head]: value };
  const child = target[head];
  const nested = typeof child === "object" && child !== null ? (child as Record<string, unknown>) : {};
  return { ...target, [head]: setDeep(nested, rest, value) };
};

/**
 * Build the layered configuration: defaults < env (APP_*) < argv, and
 * validate it during build().
 */
export const loadConfig = (
  env: Record<string, string | undefined>,
  argv: readonly string[],
): Result<Config, ConfigError> =>
  ConfigBuilder.fromObject(defaultSettings)
    .merge(ConfigBuilder.fromEnv("APP", env))
    .mergeObject(parseOverrides(argv))
    .validateWith(validateSettings)
    .build();

/** Load and validate in one step, returning typed settings. */
export const loadSettings = (
  env: Record<string, string | undefined>,
  argv: readonly string[],
): Result<AppSettings, ConfigError> =>
  flatMap((config: Config) => validateConfig(config, validateSettings), loadConfig(env, argv));

/** Everything the app needs at runtime. */
export interface Services {
  readonly settings: AppSettings;
  readonly logger: Logger;
  readonly cache: ICache;
}

/** Create logger and cache from validated settings. */
export const createServices = (settings: AppSettings): Result<Services, QiError> =>
  flatMap<Logger, Services, QiError>(
    (logger: Logger) =>
      map<ICache, Services, QiError>(
        (cache: ICache) => ({ settings, logger: logger.child({ env: settings.app.environment }), cache }),
        createCache({
          backend: "memory",
          maxSize: settings.cache.maxSize,
          defaultTtl: settings.cache.ttlSeconds,
        }),
      ),
    createLogger({ level: settings.logging.level, name: settings.app.name, pretty: settings.logging.pretty }),
  );

/** Full startup: configuration, validation, services. Errors carry the stage they came from. */
export const bootstrap = (
  env: Record<string, string | undefined>,
  argv: readonly string[],
): Result<Services, QiError> =>
  flatMap(
    createServices,
    mapError(
      (error: ConfigError): QiError => withContext({ stage: "configuration" }, error),
      loadSettings(env, argv),
    ),
  );

/** Show the individual Config accessors. */
export function showAccessors(): void {
  const config = fromObject({ server: { port: 8080, host: "0.0.0.0" }, features: { beta: false } });
  console.log("port:", config.getNumber("server.port"));
  console.log("missing:", config.get("server.tls.cert"));
  console.log("beta or true:", config.getOr("features.beta", true));
  console.log("has features.beta:", config.has("features.beta"));
  const fromVars = fromEnv("DEMO", { DEMO_SERVER__PORT: "9090", DEMO_FEATURES__BETA: "true" });
  console.log("merged:", config.merge(fromVars).getAll());
}

/** Entry point. */
export function main(): void {
  showAccessors();
  const scenarios: Array<[string, Record<string, string | undefined>, string[]]> = [
    ["defaults", {}, []],
    ["env override", { APP_SERVER__PORT: "8081", APP_LOGGING__LEVEL: "debug" }, []],
    ["bad port", {}, ["--server.port=99999"]],
    ["prod with pretty logs", { APP_APP__ENVIRONMENT: "production" }, []],
  ];
  for (const [label, env, argv] of scenarios) {
    match(
      ({ settings, logger }: Services) =>
        logger.info(`startup ok (${label})`, { port: settings.server.port }),
      (error: QiError) => console.error(`startup failed (${label}): ${error.message}`, error.context),
      bootstrap(env, argv),
    );
  }
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) {
  main();
}
