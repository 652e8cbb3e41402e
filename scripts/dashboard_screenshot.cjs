// The README's picture of the MLflow dashboard: the experiments' parent runs side by side in the
// runs view, with the swept values and the headline figures as columns.
//
//   node --experimental-websocket scripts/dashboard_screenshot.cjs [mlflow.db] [out.png]
//
// Starts `mlflow server` on the store (127.0.0.1 only), opens the experiment in headless Chromium
// (Debian's `chromium`) and drives it over the DevTools protocol: the runs view keeps its column
// choice in the browser's localStorage (MLflow's "ExperimentPage" state), so the script lets the
// page write its state once, adds the columns below to it, reloads and takes the picture. Nothing
// is drawn by hand: what the picture shows is what MLflow renders from the store.
"use strict";
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const db = path.resolve(process.argv[2] || path.join(root, "mlflow.db"));
const out = path.resolve(process.argv[3] || path.join(root, "docs", "dashboard.png"));
const EXPERIMENT = "qi-expert";
const MLFLOW_PORT = 5078;
const DEVTOOLS_PORT = 9333;
const [WIDTH, HEIGHT] = [1900, 330];
// The columns: the swept value (a tag of the parent run) and the headline figures (MLflow orders
// the metric columns by name; the grid draws only the columns that fit, so keep them few).
const TAGS = ["lora_r"];
const METRICS = ["base.reference_loss", "tuned.reference_loss", "tuned.syntax_valid_rate", "tuned.compile_rate",
  "tuned_plus_retrieval.compliance_rate", "val_loss_final"];
const [TAG_WIDTH, METRIC_WIDTH] = [100, 210];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, probe, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch {}
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(500);
  }
}

function devtools(wsUrl) {
  const ws = new WebSocket(wsUrl);
  let next = 0;
  const pending = new Map();
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.id !== undefined && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      msg.error ? reject(new Error(msg.error.message)) : resolve(msg.result);
    }
  };
  const opened = new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const send = (method, params = {}) => new Promise((resolve, reject) => {
    const id = ++next;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ id, method, params }));
  });
  return { opened, send, close: () => ws.close() };
}

async function evaluate(page, expression) {
  const r = await page.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
  return r.result.value;
}

async function main() {
  if (!fs.existsSync(db)) throw new Error(`no MLflow store at ${db}`);
  const mlflowBin = path.join(root, ".venv", "bin", "mlflow");
  const server = spawn(mlflowBin, ["server", "--backend-store-uri", `sqlite:///${db}`, "--host", "127.0.0.1",
    "--port", String(MLFLOW_PORT), "--workers", "1"], { stdio: "ignore" });
  const profile = fs.mkdtempSync("/tmp/qi-dashboard-");
  const browser = spawn("chromium", ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
    `--remote-debugging-port=${DEVTOOLS_PORT}`, `--user-data-dir=${profile}`, `--window-size=${WIDTH},${HEIGHT}`,
    "about:blank"], { stdio: "ignore" });
  try {
    const base = `http://127.0.0.1:${MLFLOW_PORT}`;
    await until("mlflow server", async () => (await fetch(`${base}/health`)).ok, 180);
    const found = await (await fetch(`${base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=${EXPERIMENT}`)).json();
    const id = found.experiment.experiment_id;
    const targets = await until("chromium", async () => (await fetch(`http://127.0.0.1:${DEVTOOLS_PORT}/json`)).json(), 60);
    const page = devtools(targets.find((t) => t.type === "page").webSocketDebuggerUrl);
    await page.opened;
    await page.send("Emulation.setDeviceMetricsOverride", { width: WIDTH, height: HEIGHT, deviceScaleFactor: 1, mobile: false });
    const filter = encodeURIComponent("tags.stage = 'experiment'");
    const url = `${base}/#/experiments/${id}/runs?searchFilter=${filter}`;
    await page.send("Page.navigate", { url });
    const keyOf = await until("the runs view's saved state", () => evaluate(page,
      `Object.keys(localStorage).find(k => k.startsWith("MLflowLocalStorage-1.1-ExperimentPage") && localStorage.getItem(k).includes("selectedColumns")) || ""`), 60);
    const state = JSON.parse(await evaluate(page, `localStorage.getItem(${JSON.stringify(keyOf)})`));
    const columns = [...TAGS.map((t) => `tags.\`${t}\``), ...METRICS.map((m) => `metrics.\`${m}\``)];
    state.selectedColumns = columns;  // Dataset, Source and Models stay empty on a parent run
    // MLflow applies a saved width only to the columns of its saved order.
    state.columnOrder = columns;
    state.columnWidths = Object.fromEntries(columns.map((c) => [c, c.startsWith("tags.") ? TAG_WIDTH : METRIC_WIDTH]));
    await evaluate(page, `localStorage.setItem(${JSON.stringify(keyOf)}, ${JSON.stringify(JSON.stringify(state))})`);
    await page.send("Page.reload", {});
    // The figures arrive after the page: wait until a row shows the first one's value.
    const cell = JSON.stringify(`[col-id="metrics.\`${METRICS[0]}\`"]`);
    await until("the metric columns", () => evaluate(page, `document.querySelectorAll(${cell}).length > 1`), 60);
    // The left navigation takes room the columns need: collapse it.
    await evaluate(page, `(() => { const b = [...document.querySelectorAll("button")].find(b => /collapse|sidebar/i.test(b.getAttribute("aria-label") || "")); if (b) b.click(); return true; })()`);
    await sleep(3000);  // the grid sizes its columns after the data arrives
    // MLflow's assistant panel takes a third of the width: close it if it is open.
    await evaluate(page, `(() => { const b = [...document.querySelectorAll("button")].find(b => b.getAttribute("aria-label") === "Close"); if (b) b.click(); return true; })()`);
    await sleep(1000);
    const shot = await page.send("Page.captureScreenshot", { format: "png" });
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, Buffer.from(shot.data, "base64"));
    page.close();
    console.log(`${out}: ${url}`);
  } finally {
    const exited = new Promise((r) => browser.on("exit", r));
    browser.kill();
    server.kill();
    await exited;
    fs.rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
  }
}

main().catch((e) => { console.error(`dashboard_screenshot: ${e.message}`); process.exit(1); });
