/**
 * @qi/core sample - structured logger
 *
 * A dependency-free logger: each call produces a LogEntry (level, message,
 * timestamp, merged context, optional error) that is handed to a sink.
 * The default sink writes one line per entry to the console.
 */

import { failure, match, success } from "@qi/base";
import type { QiError, Result } from "@qi/base";

/** Supported severities, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Key/value pairs attached to every entry written by a logger. */
export type LoggerContext = Record<string, unknown>;

/** One structured log record. */
export interface LogEntry {
  readonly level: LogLevel;
  readonly message: string;
  readonly timestamp: Date;
  readonly logger?: string;
  readonly context: LoggerContext;
  readonly error?: Record<string, unknown>;
}

/** Destination for log entries. */
export type LogSink = (entry: LogEntry) => void;

/** Settings accepted by {@link createLogger}. */
export interface LoggerConfig {
  readonly level: LogLevel;
  readonly name?: string;
  readonly pretty?: boolean;
  readonly sink?: LogSink;
}

/** A QiError narrowed to the LOGGER category. */
export type LoggerError = QiError & {
  readonly category: "LOGGER";
  readonly context: { readonly operation?: string; readonly level?: string; readonly logger?: string };
};

/** Create a LOGGER error coded LOGGER_ERROR. */
export const loggerError = (message: string, context: LoggerError["context"] = {}): LoggerError => ({
  code: "LOGGER_ERROR",
  message,
  category: "LOGGER",
  context,
});

const LEVEL_RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Type guard for level names coming from config files or env vars. */
export const isLogLevel = (value: unknown): value is LogLevel =>
  typeof value === "string" && Object.hasOwn(LEVEL_RANK, value);

/** Serialize an Error or a QiError into plain data for a log entry. */
export const formatError = (error: Error | QiError): Record<string, unknown> =>
  error instanceof Error
    ? { name: error.name, message: error.message, stack: error.stack }
    : { code: error.code, message: error.message, category: error.category, context: error.context };

/** Render an entry as a single human-readable line. */
export const formatEntry = (entry: LogEntry): string => {
  const name = entry.logger ? ` (${entry.logger})` : "";
  const ctx = Object.keys(entry.context).length > 0 ? ` ${JSON.stringify(entry.context)}` : "";
  const err = entry.error ? ` error=${JSON.stringify(entry.error)}` : "";
  return `${entry.timestamp.toISOString()} ${entry.level.toUpperCase()}${name}: ${entry.message}${ctx}${err}`;
};

/** Default sink: JSON lines, or formatted lines when `pretty` is set. */
export const consoleSink =
  (pretty = false): LogSink =>
  (entry) => {
    const line = pretty ? formatEntry(entry) : JSON.stringify(entry);
    if (entry.level === "error") console.error(line);
    else if (entry.level === "warn") console.warn(line);
    else console.log(line);
  };

/** A sink that keeps entries in memory; useful in tests. */
export const createMemorySink = (): { readonly entries: LogEntry[]; readonly sink: LogSink } => {
  const entries: LogEntry[] = [];
  return { entries, sink: (entry) => entries.push(entry) };
};

/** Structured logger with level filtering and inherited context. */
export class Logger {
  private readonly sink: LogSink;

  constructor(
    private readonly config: LoggerConfig,
    private readonly context: LoggerContext = {},
  ) {
    this.sink = config.sink ?? consoleSink(config.pretty ?? false);
  }

  /** A logger that writes to the same sink with extra context on every entry. */
  child(context: LoggerContext): Logger {
    return new Logger(this.config, { ...this.context, ...context });
  }

  /** Log at debug level. */
  debug(message: string, context?: LoggerContext): void {
    this.write("debug", message, context);
  }

  /** Log at info level. */
  info(message: string, context?: LoggerContext): void {
    this.write("info", message, context);
  }

  /** Log at warn level. */
  warn(message: string, context?: LoggerContext): void {
    this.write("warn", message, context);
  }

  /** Log at error level, optionally with the Error or QiError that caused it. */
  error(message: string, error?: Error | QiError, context?: LoggerContext): void {
    this.write("error", message, context, error);
  }

  /** Whether entries at `level` would be written. */
  isLevelEnabled(level: LogLevel): boolean {
    return LEVEL_RANK[level] >= LEVEL_RANK[this.config.level];
  }

  /** The minimum level this logger writes. */
  getLevel(): LogLevel {
    return this.config.level;
  }

  /** The configuration this logger was built with. */
  getConfig(): LoggerConfig {
    return { ...this.config };
  }

  private write(level: LogLevel, message: string, context?: LoggerContext, error?: Error | QiError): void {
    if (!this.isLevelEnabled(level)) return;
    this.sink({
      level,
      message,
      timestamp: new Date(),
      ...(this.config.name !== undefined && { logger: this.config.name }),
      context: { ...this.context, ...context },
      ...(error !== undefined && { error: formatError(error) }),
    });
  }
}

/** Validate `config` and build a Logger. Unknown levels or blank names fail. */
export const createLogger = (config: LoggerConfig): Result<Logger, LoggerError> => {
  if (!isLogLevel(config.level)) {
    return failure(loggerError(`Invalid log level: ${String(config.level)}`, { operation: "create" }));
  }
  if (config.name !== undefined && config.name.trim() === "") {
    const context = { operation: "create", level: config.level };
    return failure(loggerError("Logger name must not be blank", context));
  }
  return success(new Logger(config));
};

/** Build a logger from LOG_LEVEL / LOG_NAME / LOG_PRETTY environment variables. */
export const createFromEnv = (
  env: Record<string, string | undefined> = process.env,
): Result<Logger, LoggerError> => {
  const level = env.LOG_LEVEL ?? "info";
  return isLogLevel(level)
    ? createLogger({ level, name: env.LOG_NAME ?? "app", pretty: env.LOG_PRETTY === "true" })
    : failure(loggerError(`LOG_LEVEL is not a log level: ${level}`, { operation: "createFromEnv", level }));
};

/**
 * Log the outcome of a Result (info on success, error on failure) and
 * return it unchanged, so it can sit in the middle of a pipeline.
 */
export const logResult = <T>(
  logger: Logger,
  operation: string,
  result: Result<T, QiError>,
): Result<T, QiError> =>
  match(
    (value: T) => {
      logger.info(`${operation} succeeded`, { operation, value });
      return result;
    },
    (error: QiError) => {
      logger.error(`${operation} failed`, error, { operation, category: error.category });
      return result;
    },
    result,
  );
