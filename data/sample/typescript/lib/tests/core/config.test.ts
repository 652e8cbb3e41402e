/**
 * Tests for Config, ConfigBuilder and validateConfig.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { failure, getError, getValue, isFailure, success, validationError, type Result } from "@qi/base";
import {
  ConfigBuilder,
  configError,
  empty,
  fromEnv,
  fromObject,
  validateConfig,
  type ConfigData,
} from "@qi/core";
import { loadSettings, parseOverrides } from "../../../app/config-example/src/index";
import { validateSettings } from "../../../app/config-example/src/settings";

test("get, getOr and has walk dotted paths", () => {
  const config = fromObject({ db: { host: "localhost", port: 5432 } });
  assert.equal(getValue(config.get<string>("db.host")), "localhost");
  assert.equal(getError(config.get("db.user"))?.context.path, "db.user");
  assert.equal(config.getOr("db.user", "postgres"), "postgres");
  assert.equal(config.has("db.port"), true);
  assert.equal(isFailure(config.getString("db.port")), true);
  assert.equal(empty().has("anything"), false);
});

test("fromEnv nests on double underscores and camel-cases words", () => {
  const config = fromEnv("SVC", { SVC_DB__MAX_POOL: "8", SVC_DEBUG: "true", OTHER: "x" });
  assert.equal(getValue(config.getNumber("db.maxPool")), 8);
  assert.equal(config.getOr("debug", false), true);
  assert.equal(config.has("other"), false);
});

test("merge lets later sources win", () => {
  const merged = ConfigBuilder.fromObject({ a: { x: 1, y: 2 } })
    .mergeObject({ a: { y: 3 } })
    .set("b", true)
    .build();
  assert.deepEqual(getValue(merged)?.getAll(), { a: { x: 1, y: 3 }, b: true });
  assert.deepEqual(getValue(merged)?.getSources(), ["object", "object"]);
});

test("validateConfig relabels validator errors as CONFIGURATION", () => {
  const positivePort = (data: ConfigData): Result<number> =>
    typeof data.port === "number" && data.port > 0
      ? success(data.port)
      : failure(validationError("bad port"));
  assert.equal(getValue(validateConfig(fromObject({ port: 80 }), positivePort)), 80);
  const bad = validateConfig(fromObject({ port: -1 }), positivePort);
  assert.equal(getError(bad)?.category, "CONFIGURATION");
  assert.equal(configError("m").code, "CONFIG_ERROR");
});

test("config-example layers env and argv over defaults", () => {
  assert.deepEqual(parseOverrides(["--server.port=9000", "ignored"]), { server: { port: 9000 } });
  const settings = loadSettings({ APP_SERVER__PORT: "8081" }, []);
  assert.equal(getValue(settings)?.server.port, 8081);
  const broken = loadSettings({}, ["--cache.maxSize=0"]);
  assert.match(getError(broken)?.message ?? "", /cache\.maxSize/);
  assert.equal(isFailure(validateSettings({})), true);
});
