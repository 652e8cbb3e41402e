/**
 * @qi/core sample - public entry point
 *
 * Configuration, logging and caching built on Result<T> from @qi/base.
 * Result and QiError themselves are imported from @qi/base, not from here.
 */

// Configuration
export { Config, ConfigBuilder, configError, fromObject, fromEnv, empty, validateConfig } from "./config";
export type { ConfigData, ConfigSource, ConfigError, ConfigErrorContext, ConfigValidator } from "./config";

// Logging
export {
  Logger,
  createLogger,
  createFromEnv,
  loggerError,
  isLogLevel,
  formatError,
  formatEntry,
  consoleSink,
  createMemorySink,
  logResult,
} from "./logger";
export type { LogLevel, LogEntry, LogSink, LoggerConfig, LoggerContext, LoggerError } from "./logger";

// Caching
export { MemoryCache, createCache, createMemoryCache, cacheAside, cacheError } from "./cache";
export type { ICache, CacheBackend, CacheConfig, CacheEntry, CacheStats, CacheError } from "./cache";
