"use strict";
// The membrane between the two realms of a test run (sandbox.py, verdict "isolated").
//
// The completion runs in one process ("c", host.cjs) and the task's test in another ("j",
// judge.cjs), each in its own bubblewrap sandbox. They share two pipes and nothing else: no file,
// no memory, no process namespace. The test calls the completion's exports through this membrane;
// everything that crosses is serialised here and rebuilt on the other side from that side's own
// built-ins, so the completion can patch its own realm as it likes: the assertions, the promise
// machinery and the exit path of the judge are never within its reach, and the test's expected
// values never leave the judge's process.
//
// What crosses, and how:
// - primitives by value (undefined, NaN, -0, +-Infinity and bigints included);
// - plain objects and arrays (Object.prototype / null / Array.prototype, data properties only) as
//   copies, with their integrity (frozen, sealed, non-extensible); each side keeps a table of the
//   objects it shared, and before every message it sends the ones that changed since they last
//   crossed, so a mutation of an argument (or of a returned object by a later call) is seen on
//   the other side as it would be in one realm, and an object that goes back comes back as itself;
// - functions as handles: calling one is a synchronous request to the side that owns it (with
//   `this` and the arguments crossing the same way);
// - native promises as handles that settle when the owner's promise settles;
// - Errors as copies (name, message, stack, own data properties);
// - anything else (class instances, objects with accessors, Maps, Sets, ...) as a live Proxy whose
//   every operation is a request to the owner.
// The @qi packages themselves live in the judge's realm and are served to the completion through
// the membrane (a request "M"): every @qi call the completion makes is a call the judge performs
// and counts, so which @qi functions ran is observed outside the completion's realm.
//
// Framing: one JSON message per line. A side waiting for a reply sleeps in read() on a blocking
// second open of its pipe (options.waitFd), answering the other side's nested requests meanwhile
// (a callback into the test while the test waits for the completion); a side waiting on its event
// loop is woken by the pipe itself (listen()). Without waitFd it polls, 50 us between empty reads.

const fs = require("fs");
const net = require("net");  // (loaded before the guard refuses it to the code of a test run)
const { types } = require("util");

const WELL_KNOWN = ["iterator", "asyncIterator", "toPrimitive", "toStringTag", "hasInstance"];
const ERRORS = { Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError };
// The realm's own built-ins (constructors, prototypes, their methods, globalThis, process) never
// cross: each is named by its path and the other side uses its own of that name (or undefined).
// Otherwise a live object's `__proto__` or `constructor` would hand the completion the judge's
// Object.prototype to pollute, or its Function to evaluate code with.
const INTRINSIC_ROOTS = ["Object", "Function", "Array", "Promise", "Reflect", "JSON", "Math", "Symbol", "String",
  "Number", "Boolean", "BigInt", "Date", "RegExp", "Map", "Set", "WeakMap", "WeakSet", "WeakRef", "Proxy",
  "ArrayBuffer", "SharedArrayBuffer", "DataView", "Atomics", "Uint8Array", "Int8Array", "Uint16Array", "Int16Array",
  "Uint32Array", "Int32Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array", "Intl",
  "Error", "TypeError", "RangeError", "SyntaxError", "ReferenceError", "EvalError", "URIError", "AggregateError",
  "eval", "globalThis", "process", "console", "Buffer", "queueMicrotask", "setTimeout", "setInterval",
  "setImmediate", "clearTimeout", "clearInterval", "structuredClone", "require", "module"];

function intrinsics() {
  const byPath = new Map();
  const byValue = new Map();
  const add = (path, value) => {
    if (value === null || (typeof value !== "object" && typeof value !== "function") || byValue.has(value)) return;
    byValue.set(value, path);
    byPath.set(path, value);
  };
  const members = (path, value) => {
    if (value === null || (typeof value !== "object" && typeof value !== "function")) return;
    for (const key of Reflect.ownKeys(value)) {
      const d = Reflect.getOwnPropertyDescriptor(value, key);
      const name = path + "." + (typeof key === "symbol" ? "@" + String(key.description) : key);
      if (d && "value" in d) add(name, d.value);
      if (d && d.get) add(name + "#get", d.get);
      if (d && d.set) add(name + "#set", d.set);
    }
  };
  for (const root of INTRINSIC_ROOTS) {
    let value;
    try { value = root === "require" || root === "module" ? undefined : globalThis[root]; } catch { value = undefined; }
    add(root, value);
    members(root, value);
    if (typeof value === "function" && value.prototype) { add(root + ".prototype", value.prototype); members(root + ".prototype", value.prototype); }
  }
  // Prototypes reached only through instances.
  const hidden = {
    "%IteratorPrototype%": Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())),
    "%ArrayIteratorPrototype%": Object.getPrototypeOf([][Symbol.iterator]()),
    "%MapIteratorPrototype%": Object.getPrototypeOf(new Map()[Symbol.iterator]()),
    "%SetIteratorPrototype%": Object.getPrototypeOf(new Set()[Symbol.iterator]()),
    "%StringIteratorPrototype%": Object.getPrototypeOf(""[Symbol.iterator]()),
    "%AsyncFunction%": Object.getPrototypeOf(async function () {}).constructor,
    "%AsyncFunction.prototype%": Object.getPrototypeOf(async function () {}),
    "%GeneratorFunction%": Object.getPrototypeOf(function* () {}).constructor,
    "%Generator.prototype%": Object.getPrototypeOf(function* () {}).prototype,
    "%AsyncGeneratorFunction%": Object.getPrototypeOf(async function* () {}).constructor,
  };
  for (const [path, value] of Object.entries(hidden)) { add(path, value); members(path, value); }
  return { byPath, byValue };
}

// What evaluates code or reaches the whole realm: a value the other side names so arrives as
// undefined, lest a test that calls a function the completion gave it run the judge's own eval.
const UNSHARED = new Set(["eval", "Function", "%AsyncFunction%", "%GeneratorFunction%", "%AsyncGeneratorFunction%",
  "globalThis", "process", "require", "module"]);

// A constructor's prototype: shared live and never changed from the other side.
const isPrototype = (o) => {
  const d = Reflect.getOwnPropertyDescriptor(o, "constructor");
  return d !== undefined && "value" in d && typeof d.value === "function" && d.value.prototype === o;
};

const INTEGRITY = (o) => (Object.isFrozen(o) ? 3 : Object.isSealed(o) ? 2 : Object.isExtensible(o) ? 0 : 1);

function createMembrane(side, readFd, writeFd, options = {}) {
  const apply = Reflect.apply;
  const { stringify, parse } = JSON;
  const sleepCell = new Int32Array(new SharedArrayBuffer(4));
  const decoder = new (require("string_decoder").StringDecoder)("utf8");
  const chunk = Buffer.alloc(1 << 16);
  const onClosed = options.onClosed || (() => {});

  // Objects this side owns and has shared: id -> object, object -> id.
  const owned = new Map();
  const ownedId = new Map();
  // The other side's objects as they are here (copies, proxies, handles): id -> local, local -> id.
  const mirrors = new Map();
  const mirrorId = new WeakMap();
  // Copied objects (either side's) and their last shallow form: a change is sent with the next message.
  const tracked = new Map();
  // Promises of the other side that are still pending here: id -> {resolve, reject}.
  const remotePending = new Map();
  const replies = new Map();
  let nextId = 1;
  let nextRequest = 1;
  let buffered = "";
  let closed = false;
  const known = new Set();  // ids of owned objects whose full form the other side has
  const builtins = intrinsics();

  // ---- the pipe ------------------------------------------------------------------------------
  function write(text) {
    const data = Buffer.from(text + "\n", "utf8");
    let offset = 0;
    while (offset < data.length) {
      try {
        offset += fs.writeSync(writeFd, data, offset, data.length - offset);
      } catch (e) {
        if (e.code === "EAGAIN") { Atomics.wait(sleepCell, 0, 0, 0.05); continue; }
        if (e.code === "EPIPE") { closed = true; throw new Error("qi-eval: the other realm of the test run has ended"); }
        throw e;
      }
    }
  }

  // The messages that arrived; `block`: sleep in the kernel until one has (on options.waitFd, a
  // blocking description of the same pipe), for a side that has nothing to do until it does.
  const waitFd = options.waitFd;
  function readAvailable(block = false) {
    const messages = [];
    if (block && waitFd !== undefined && !buffered.includes("\n")) {
      const n = fs.readSync(waitFd, chunk, 0, chunk.length, null);
      if (n === 0) closed = true;
      else buffered += decoder.write(chunk.subarray(0, n));
    }
    for (;;) {
      if (block && waitFd !== undefined) break;  // (read above; what else came is read next time)
      let n;
      try {
        n = fs.readSync(readFd, chunk, 0, chunk.length, null);
      } catch (e) {
        if (e.code === "EAGAIN") break;
        throw e;
      }
      if (n === 0) { closed = true; break; }
      buffered += decoder.write(chunk.subarray(0, n));
    }
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line) messages.push(parse(line));
    }
    return messages;
  }

  function send(message) {
    if (closed) throw new Error("qi-eval: the other realm of the test run has ended");
    const updates = changes();
    if (updates.length) message.u = updates;
    write(stringify(message));
  }

  // ---- encoding ------------------------------------------------------------------------------
  function register(value) {
    const id = nextId++;
    owned.set(id, value);
    ownedId.set(value, id);
    return id;
  }

  function copyable(value) {
    const proto = Object.getPrototypeOf(value);
    const isArray = Array.isArray(value);
    if (isArray ? proto !== Array.prototype : proto !== Object.prototype && proto !== null) return false;
    if (types.isProxy(value) || isPrototype(value)) return false;
    const descriptors = Object.getOwnPropertyDescriptors(value);
    for (const key of Reflect.ownKeys(descriptors)) {
      if (typeof key === "symbol") return false;
      if (!("value" in descriptors[key])) return false;  // an accessor: only the owner can run it
    }
    return true;
  }

  function entries(value, enc) {
    const out = [];
    for (const key of Object.keys(value)) out.push([key, enc(value[key])]);
    return out;
  }

  // The shallow form of a tracked object: its keys and, for each value, the primitive or the id.
  function shallow(value) {
    const token = (v) => (v !== null && (typeof v === "object" || typeof v === "function")
      ? (mirrorId.has(v) ? "R" + mirrorId.get(v) : "m" + (ownedId.get(v) ?? register(v))) : encode(v));
    const keys = Object.keys(value);
    return stringify([INTEGRITY(value), Array.isArray(value) ? value.length : -1, keys.map((k) => [k, token(value[k])])]);
  }

  function content(value) {
    return Array.isArray(value)
      ? [INTEGRITY(value), value.length, entries(value, encode)]
      : [INTEGRITY(value), Object.getPrototypeOf(value) === null ? 1 : 0, entries(value, encode)];
  }

  function encode(value) {
    switch (typeof value) {
      case "undefined": return ["u"];
      case "boolean": case "string": return value;
      case "number": return Number.isFinite(value) && !Object.is(value, -0) ? value : ["n", Object.is(value, -0) ? "-0" : String(value)];
      case "bigint": return ["b", value.toString()];
      case "symbol": {
        const name = WELL_KNOWN.find((k) => Symbol[k] === value);
        return name ? ["Y", name] : ["y", value.description ?? ""];
      }
      default: break;
    }
    if (value === null) return null;
    if (builtins.byValue.has(value)) return ["I", builtins.byValue.get(value)];
    if (mirrorId.has(value)) return ["R", mirrorId.get(value)];  // the receiver's own object
    let id = ownedId.get(value);
    if (id !== undefined && known.has(id)) return ["m", id];
    if (id === undefined) id = register(value);
    known.add(id);
    if (typeof value === "function") return ["f", id, String(value.name || ""), value.length | 0];
    if (types.isPromise(value)) {
      apply(Promise.prototype.then, value, [
        (v) => { if (!closed) send({ t: "s", p: id, ok: true, v: encode(v) }); },
        (e) => { if (!closed) send({ t: "s", p: id, ok: false, v: encode(e) }); },
      ]);
      return ["p", id];
    }
    if (types.isNativeError(value) || value instanceof Error) {
      return ["e", id, String(value.name), String(value.message), String(value.stack || ""),
        entries(Object.fromEntries(Object.entries(value).filter(([k]) => k !== "message" && k !== "stack" && k !== "name")), encode)];
    }
    if (types.isDate(value)) return ["d", id, value.getTime()];
    if (types.isRegExp(value)) return ["x", id, value.source, value.flags];
    if (copyable(value)) {
      tracked.set(value, "");
      const form = [Array.isArray(value) ? "a" : "o", id, ...content(value)];
      tracked.set(value, shallow(value));
      return form;
    }
    return ["l", id, Array.isArray(value) ? 1 : 0];
  }

  // Tracked objects that changed since they last crossed, in full.
  function changes() {
    const out = [];
    for (const [value, last] of tracked) {
      const now = shallow(value);
      if (now === last) continue;
      tracked.set(value, now);
      const who = mirrorId.has(value) ? ["R", mirrorId.get(value)] : ["m", ownedId.get(value)];
      out.push([...who, content(value)]);
      tracked.set(value, shallow(value));
    }
    return out;
  }

  // ---- decoding ------------------------------------------------------------------------------
  function fail(what) {
    throw new Error("qi-eval: malformed message from the other realm (" + what + ")");
  }

  function define(target, key, value) {
    Object.defineProperty(target, key, { value, writable: true, enumerable: true, configurable: true });
  }

  function fill(target, form) {
    const [integrity, extra, items] = form;
    if (!Array.isArray(items)) fail("content");
    if (!Object.isExtensible(target)) return;
    if (Array.isArray(target)) {
      target.length = 0;
      for (const [k, v] of items) define(target, String(k), decode(v));
      target.length = Number(extra) >>> 0;
    } else {
      for (const key of Object.keys(target)) delete target[key];
      for (const [k, v] of items) define(target, String(k), decode(v));
    }
    if (integrity === 3) Object.freeze(target);
    else if (integrity === 2) Object.seal(target);
    else if (integrity === 1) Object.preventExtensions(target);
  }

  function mirror(id, local) {
    mirrors.set(id, local);
    mirrorId.set(local, id);
    return local;
  }

  function decode(form) {
    if (form === null || typeof form === "boolean" || typeof form === "string") return form;
    if (typeof form === "number") return form;
    if (!Array.isArray(form)) fail("value");
    const [tag, id] = form;
    switch (tag) {
      case "u": return undefined;
      case "n": return form[1] === "-0" ? -0 : Number(form[1]);
      case "b": return BigInt(form[1]);
      case "y": return Symbol(String(form[1]));
      case "Y": if (!WELL_KNOWN.includes(form[1])) fail("symbol"); return Symbol[form[1]];
      case "I": return UNSHARED.has(form[1]) ? undefined : builtins.byPath.get(String(form[1]));
      case "R": if (!owned.has(id)) fail("unknown own object " + id); return owned.get(id);
      case "m": if (!mirrors.has(id)) fail("unknown object " + id); return mirrors.get(id);
      default: break;
    }
    if (mirrors.has(id)) {  // sent again in full: the same local object, brought up to date
      const local = mirrors.get(id);
      if ((tag === "o" || tag === "a") && tracked.has(local)) { fill(local, form.slice(2)); tracked.set(local, shallow(local)); }
      return local;
    }
    switch (tag) {
      case "f": {
        const handle = function (...args) { return call(id, new.target ? undefined : this, args, Boolean(new.target)); };
        Object.defineProperty(handle, "name", { value: String(form[2]) });
        Object.defineProperty(handle, "length", { value: Number(form[3]) | 0 });
        return mirror(id, handle);
      }
      case "p": {
        let resolve, reject;
        const promise = new Promise((ok, no) => { resolve = ok; reject = no; });
        // Whoever awaits it may be on the other side (the promise went back there as itself): its
        // rejection is not this realm's unhandled rejection.
        apply(Promise.prototype.then, promise, [undefined, () => {}]);
        remotePending.set(id, { resolve, reject });
        if (options.onPending) options.onPending(remotePending.size);
        return mirror(id, promise);
      }
      case "e": {
        const Ctor = Object.prototype.hasOwnProperty.call(ERRORS, form[2]) ? ERRORS[form[2]] : Error;
        const error = new Ctor(String(form[3]));
        if (error.name !== form[2]) Object.defineProperty(error, "name", { value: String(form[2]), writable: true, configurable: true });
        Object.defineProperty(error, "stack", { value: String(form[4]), writable: true, configurable: true });
        mirror(id, error);
        for (const [k, v] of form[5]) define(error, String(k), decode(v));
        return error;
      }
      case "d": return mirror(id, new Date(Number(form[2])));
      case "x": return mirror(id, new RegExp(String(form[2]), String(form[3])));
      case "o": case "a": {
        const local = tag === "a" ? [] : form[3] === 1 ? Object.create(null) : {};
        mirror(id, local);
        tracked.set(local, "");
        fill(local, form.slice(2));
        tracked.set(local, shallow(local));
        return local;
      }
      case "l": return mirror(id, live(id, form[2] === 1));
      default: fail("tag " + String(tag));
    }
  }

  function applyUpdates(updates) {
    if (updates === undefined) return;
    if (!Array.isArray(updates)) fail("updates");
    for (const [who, id, form] of updates) {
      const local = who === "R" ? owned.get(id) : who === "m" ? mirrors.get(id) : fail("update owner");
      if (local === undefined || !tracked.has(local)) fail("update of an object that was not shared");
      fill(local, form);
      tracked.set(local, shallow(local));
    }
  }

  // ---- the other side's live objects -----------------------------------------------------------
  function live(id, isArray) {
    const op = (name, key, value) => request({ t: "o", h: id, op: name, k: key === undefined ? null : encode(key), v: encode(value) });
    return new Proxy({}, {
      get: (_, key) => op("get", key),
      set: (_, key, value) => op("set", key, value),
      has: (_, key) => op("has", key),
      deleteProperty: (_, key) => op("delete", key),
      ownKeys: () => op("keys").filter((k) => typeof k === "string"),
      getOwnPropertyDescriptor: (_, key) => {
        const d = op("describe", key);
        return d === undefined ? undefined : { value: d.value, writable: true, enumerable: d.enumerable, configurable: true };
      },
      defineProperty: (_, key, d) => op("set", key, d.value),
      getPrototypeOf: () => (isArray ? Array.prototype : Object.prototype),
    });
  }

  // ---- requests and their answers ------------------------------------------------------------
  function call(id, self, args, construct) {
    return request({ t: "c", h: id, self: encode(self), args: args.map(encode), new: construct });
  }

  function request(message) {
    const id = nextRequest++;
    message.id = id;
    send(message);
    let idle = 0;
    for (;;) {
      if (replies.has(id)) {
        const reply = replies.get(id);
        replies.delete(id);
        if (reply.ok) return reply.value;
        throw reply.value;
      }
      const messages = readAvailable(true);
      for (const m of messages) handle(m);
      if (replies.has(id)) continue;
      if (closed) throw new Error("qi-eval: the other realm of the test run ended before it answered");
      if (!messages.length && waitFd === undefined) Atomics.wait(sleepCell, 0, 0, ++idle < 200 ? 0.05 : 1);
      else idle = 0;
    }
  }

  // The body of a message is decoded before its updates: the updates may name objects the body
  // brought in full.
  function perform(message) {
    if (message.t === "c") {
      const fn = owned.get(message.h);
      if (typeof fn !== "function") fail("call of a non-function");
      const args = message.args.map(decode);
      const self = decode(message.self);
      applyUpdates(message.u);
      if (options.onCall) options.onCall(fn);
      return message.new ? Reflect.construct(fn, args) : apply(fn, self, args);
    }
    const target = owned.get(message.h);
    if (target === undefined) fail("operation on an unknown object");
    const key = message.k === null ? undefined : decode(message.k);
    const value = decode(message.v);
    applyUpdates(message.u);
    if ((message.op === "set" || message.op === "delete") && (isPrototype(target) || typeof target === "function")) {
      throw new TypeError("qi-eval: a prototype is not changed from the other realm");
    }
    switch (message.op) {
      case "get": return Reflect.get(target, key);
      case "set": return Reflect.set(target, key, value);
      case "has": return Reflect.has(target, key);
      case "delete": return Reflect.deleteProperty(target, key);
      case "keys": return Reflect.ownKeys(target).filter((k) => typeof k === "string");
      case "describe": {
        const d = Reflect.getOwnPropertyDescriptor(target, key);
        if (d === undefined) return undefined;
        return { value: "value" in d ? d.value : Reflect.get(target, key), enumerable: Boolean(d.enumerable) };
      }
      default: fail("operation " + String(message.op));
    }
  }

  function handle(message) {
    if (message === null || typeof message !== "object") fail("message");
    if (message.t === "r") {
      const value = decode(message.v);
      applyUpdates(message.u);
      replies.set(message.id, { ok: Boolean(message.ok), value });
      return;
    }
    if (message.t === "s") {
      const value = decode(message.v);
      applyUpdates(message.u);
      const pending = remotePending.get(message.p);
      if (pending === undefined) fail("settling an unknown promise");
      remotePending.delete(message.p);
      if (message.ok) pending.resolve(value); else pending.reject(value);
      if (options.onPending) options.onPending(remotePending.size);
      return;
    }
    if (message.t === "M") {  // the completion asks for a @qi package: the judge serves its own
      let ok = true;
      let value;
      try {
        if (options.onModule === undefined) fail("module request");
        value = options.onModule(String(message.name));
      } catch (e) { ok = false; value = e; }
      send({ t: "r", id: message.id, ok, v: encode(value) });
      return;
    }
    if (message.t === "c" || message.t === "o") {
      let ok = true;
      let value;
      try { value = perform(message); } catch (e) { ok = false; value = e; }
      send({ t: "r", id: message.id, ok, v: encode(value) });
      return;
    }
    if (message.t === "h") {
      if (options.onHello === undefined) fail("hello");
      const value = message.ok ? message.v.map(([k, v]) => [String(k), decode(v)]) : decode(message.v);
      applyUpdates(message.u);
      options.onHello({ ok: Boolean(message.ok), value });
      return;
    }
    fail("type " + String(message.t));
  }

  // Answer whatever arrived (called by listen() while this side waits on its event loop).
  function pump() {
    const messages = readAvailable();
    for (const m of messages) handle(m);
    if (closed) {
      for (const { reject } of remotePending.values()) reject(new Error("qi-eval: the other realm of the test run has ended"));
      remotePending.clear();
      onClosed();
    }
    return messages.length;
  }

  // While this side waits on its event loop, the pipe wakes it (libuv's poll of a net.Socket on
  // the read end) and pump() answers what arrived. A socket's chunk is appended to what the
  // synchronous reads above buffered, in the order read: libuv reads only while no JavaScript
  // runs, and a chunk is handed over at once (flowing mode, nothing left in the stream's buffer).
  // It replaced a 1 ms timer whose pump lingered 0.5 ms for the next message: with the blocking
  // waits and sandbox.py's pidfd, a test pair run alone went from 152 to ~110 ms; the CPU a pair
  // uses did not move (benchmarks/sandbox_overhead.py: the second node process is most of it).
  // The caller holds the returned socket: unref() it while nothing is awaited from the other side.
  function listen() {
    const socket = new net.Socket({ fd: readFd, readable: true, writable: false });
    const end = () => { closed = true; pump(); };
    socket.on("data", (data) => { buffered += decoder.write(data); pump(); });
    socket.on("end", end);
    socket.on("error", end);
    return socket;
  }

  // Block until a message of type `t` arrives (the hello), answering the rest meanwhile.
  function waitFor(t, timeoutMs) {
    let found;
    const previous = options.onHello;
    options.onHello = (m) => { found = m; };
    const deadline = Date.now() + timeoutMs;
    let idle = 0;
    while (found === undefined) {
      const messages = readAvailable(true);
      for (const m of messages) handle(m);
      if (found !== undefined) break;
      if (closed) return null;
      if (Date.now() > deadline) return null;
      if (!messages.length && waitFd === undefined) Atomics.wait(sleepCell, 0, 0, ++idle < 200 ? 0.05 : 1);
    }
    options.onHello = previous;
    return found;
  }

  const requestModule = (name) => request({ t: "M", name });

  return { encode, decode, send, pump, listen, waitFor, requestModule, entries: (o) => entries(o, encode), pending: () => remotePending.size,
    isClosed: () => closed };
}

module.exports = { createMembrane };
