#!/usr/bin/env node
'use strict';
/**
 * snakepit Node.js worker runtime.
 *
 * Speaks the snakepit wire protocol (src/snakepit/protocol/wire.py in the snakepit
 * repository) over stdin/stdout, exactly as the Python bridge does:
 *
 *   - every frame is a 4-byte big-endian payload length, then the payload;
 *   - the host's first frame is a JSON `hello`; this worker answers with a JSON
 *     `welcome` naming the first offered codec it speaks (msgpack or json);
 *   - after that every frame uses the chosen codec: `call`, `cancel`, `credit`,
 *     `withdraw`, `ping`, `drop`, `shutdown` in; `result`, `error`, `chunk`, `end`,
 *     `progress`, `withdrawn`, `pong`, `beat` out.
 *
 * Usage: node worker.js [--handler /path/to/handler.js] [--concurrency N]
 *
 * The handler module (CommonJS or ESM) exports an object whose function properties are
 * commands, each called as `fn(args, ctx)`; see README.md of snakepit-node.
 *
 * stdout is the wire: console.log and process.stdout.write are redirected to stderr so
 * that a stray print cannot corrupt it.
 */

const path = require('node:path');
const { pathToFileURL } = require('node:url');
const msgpack = require('@msgpack/msgpack');

const PROTOCOL_VERSION = 1;
const DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024;
const CAPABILITIES = ['streams', 'cancel', 'progress', 'deadline', 'sessions', 'ping', 'heartbeat',
  'withdraw'];
const KIND_HANDLER = 'handler';
const KIND_UNKNOWN_COMMAND = 'unknown_command';
const KIND_CANCELLED = 'cancelled';
const KIND_EXPIRED = 'expired';
const KIND_PAYLOAD = 'payload';
const KIND_PROTOCOL = 'protocol';
const MAX_TIMER_MS = 2 ** 31 - 1;

// -- the wire: keep the real stdout for frames, send everything else to stderr ------------
const wire = process.stdout;
const rawWrite = wire.write;

/** Called once at start: from now on only frames reach fd 1. */
function takeWire() {
  wire.write = (chunk, encoding, callback) => process.stderr.write(chunk, encoding, callback);
  // the global console writes these to stdout: point them at stderr explicitly too
  for (const name of ['log', 'info', 'debug']) console[name] = (...args) => console.error(...args);
}

// -- errors ----------------------------------------------------------------------------------
class ProtocolError extends Error {
  constructor(message) { super(message); this.name = 'ProtocolError'; }
}

class PayloadError extends Error {
  constructor(message) { super(message); this.name = 'PayloadError'; }
}

/** Thrown by `ctx.throwIfCancelled()`; a call that ends with it reports kind "cancelled". */
class CallCancelled extends Error {
  constructor(message) { super(message); this.name = 'CallCancelled'; }
}

/** Python's repr of a string, for messages that match the Python bridge's. */
function pyRepr(value) {
  if (typeof value !== 'string') return String(value);
  return value.includes("'") && !value.includes('"')
    ? `"${value}"` : `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

// -- framing ---------------------------------------------------------------------------------
/**
 * Incremental frame decoder: feed chunks as they arrive, get complete payloads back. The
 * header is checked against the frame limit before any of the payload is buffered.
 */
class FrameDecoder {
  constructor(maxFrameSize) {
    this.maxFrameSize = maxFrameSize;
    this.chunks = [];
    this.total = 0;
    this.size = -1;
  }

  feed(data) {
    if (data.length) {
      this.chunks.push(data);
      this.total += data.length;
    }
    const frames = [];
    for (;;) {
      if (this.size < 0) {
        if (this.total < 4) break;
        const size = this._peekHeader();
        if (size > this.maxFrameSize) {
          throw new ProtocolError(`peer announced a frame of ${size} bytes, over `
            + `max_frame_size ${this.maxFrameSize}`);
        }
        this.size = size;
      }
      if (this.total < 4 + this.size) break;
      frames.push(this._take(4 + this.size).subarray(4));
      this.size = -1;
    }
    return frames;
  }

  _peekHeader() {
    const first = this.chunks[0];
    if (first.length >= 4) return first.readUInt32BE(0);
    return Buffer.concat(this.chunks, 4).readUInt32BE(0);
  }

  _take(n) {
    this.total -= n;
    const first = this.chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const want = n - filled;
      if (chunk.length <= want) {
        chunk.copy(out, filled);
        filled += chunk.length;
        this.chunks.shift();
      } else {
        chunk.copy(out, filled, 0, want);
        this.chunks[0] = chunk.subarray(want);
        filled += want;
      }
    }
    return out;
  }
}

/** Header + payload in one buffer (one write, one syscall). */
function frame(payload, maxFrameSize) {
  const size = payload.length;
  if (size > maxFrameSize || size > 0xffffffff) {
    throw new PayloadError(`frame of ${size} bytes exceeds max_frame_size ${maxFrameSize}`);
  }
  const out = Buffer.allocUnsafe(4 + size);
  out.writeUInt32BE(size, 0);
  out.set(payload, 4);
  return out;
}

// -- codecs ----------------------------------------------------------------------------------
// msgpack: Uint8Array/Buffer travel as `bin` and arrive as Uint8Array. Integers beyond
// +-2**53 decode as (lossy) numbers; a bigint cannot be encoded (useBigInt64: false).
const mpEncoder = new msgpack.Encoder({ useBigInt64: false });
// Map keys become object keys: strings and numbers as they are, anything else (bytes, nil,
// booleans) as a string, rather than failing the whole frame.
const mpDecoder = new msgpack.Decoder({
  useBigInt64: false,
  mapKeyConverter: (key) => {
    if (typeof key === 'string' || typeof key === 'number') return key;
    if (ArrayBuffer.isView(key)) return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('utf8');
    return String(key);
  },
});

const MSGPACK = {
  name: 'msgpack',
  encode(value) {
    try {
      return mpEncoder.encodeSharedRef(value); // copied into the frame at once
    } catch (err) {
      throw new PayloadError(`cannot encode value with msgpack: ${err.message}`);
    }
  },
  decode(payload) {
    return mpDecoder.decode(payload);
  },
};

// JSON: Python's json module writes (and reads) NaN, Infinity and -Infinity; JSON.parse
// does not, so they are carried through a sentinel string in both directions.
const NONFINITE = '\u0000snakepit-nonfinite:';
const NONFINITE_ESCAPED = JSON.stringify(NONFINITE).slice(1, -1);
const NONFINITE_OUT = new RegExp(`"${NONFINITE_ESCAPED.replace(/\\/g, '\\\\')}(NaN|-?Infinity)"`, 'g');
const NONFINITE_IN = /"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)/g;
let sawNonFinite = false;

function jsonReplacer(key, value) {
  const original = this[key];
  if (ArrayBuffer.isView(original) || original instanceof ArrayBuffer) {
    throw new PayloadError('bytes cannot travel as JSON (use the msgpack codec)');
  }
  if (typeof value === 'number' && !Number.isFinite(value)) {
    sawNonFinite = true;
    return NONFINITE + String(value);
  }
  if (typeof value === 'bigint') {
    throw new PayloadError('a bigint cannot travel as JSON');
  }
  return value;
}

function jsonReviver(key, value) {
  if (typeof value === 'string' && value.startsWith(NONFINITE)) {
    return Number(value.slice(NONFINITE.length));
  }
  return value;
}

const JSON_CODEC = {
  name: 'json',
  encode(value) {
    let text;
    sawNonFinite = false;
    try {
      text = JSON.stringify(value, jsonReplacer);
    } catch (err) {
      throw new PayloadError(`cannot encode value with json: ${err.message}`);
    }
    if (sawNonFinite) text = text.replace(NONFINITE_OUT, '$1');
    return Buffer.from(text === undefined ? 'null' : text, 'utf8');
  },
  decode(payload) {
    const text = Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString('utf8');
    try {
      return JSON.parse(text);
    } catch (err) {
      if (!/NaN|Infinity/.test(text)) throw err;
      const quoted = text.replace(NONFINITE_IN, (match, bare) => (
        bare === undefined ? match : JSON.stringify(NONFINITE + bare)));
      return JSON.parse(quoted, jsonReviver);
    }
  },
};

const CODECS = { msgpack: MSGPACK, json: JSON_CODEC };

// -- the call context ------------------------------------------------------------------------
/** What a command knows about the call it runs (its second argument). */
class CallContext {
  constructor(server, message) {
    this.id = message.id;
    this.command = message.cmd;
    this.args = message.args === undefined ? null : message.args;
    this.sessionId = typeof message.sid === 'string' ? message.sid : null;
    this.deadline = typeof message.dl === 'number' ? message.dl : null;
    this.window = Number.isInteger(message.window) ? message.window : null;
    this._server = server;
    this._cancelled = false;
    this._done = false;
    this._credit = this.window || 0;
    this._wake = null;
    this._controller = null;
    this._timer = null;
    if (this.deadline !== null) {
      const ms = this.deadline * 1000 - Date.now();
      if (ms > 0 && ms < MAX_TIMER_MS) {
        this._timer = setTimeout(() => this._interrupt('its deadline passed'), ms);
        this._timer.unref();
      }
    }
  }

  get sessionState() { return this._server.sessions; }

  /** Seconds until the deadline (negative once passed), or null without one. */
  timeLeft() {
    return this.deadline === null ? null : this.deadline - Date.now() / 1000;
  }

  /** Whether the deadline has passed. */
  get expired() {
    return this.deadline !== null && Date.now() / 1000 >= this.deadline;
  }

  /** Whether the host asked to stop this call (cancel frame) or its deadline passed. */
  get cancelled() {
    return this._cancelled || this.expired;
  }

  /** An AbortSignal that fires on cancel or at the deadline (for fetch, timers, ...). */
  get signal() {
    if (this._controller === null) {
      this._controller = new AbortController();
      if (this.cancelled) this._controller.abort(this._cancelError());
    }
    return this._controller.signal;
  }

  /** Throw CallCancelled if the call should stop; use it in loops. */
  throwIfCancelled() {
    if (this.cancelled) throw this._cancelError();
  }

  /**
   * Wait up to `seconds` (default: until the deadline) or until the call is cancelled;
   * resolves to whether it was cancelled. Use it instead of a bare timer.
   */
  waitCancelled(seconds) {
    if (this.cancelled) return Promise.resolve(true);
    let ms = seconds === undefined || seconds === null ? null : seconds * 1000;
    const left = this.timeLeft();
    if (left !== null) ms = ms === null ? left * 1000 : Math.min(ms, left * 1000);
    return new Promise((resolve) => {
      let timer = null;
      const finish = () => {
        if (timer !== null) clearTimeout(timer);
        this.signal.removeEventListener('abort', finish);
        resolve(this.cancelled);
      };
      this.signal.addEventListener('abort', finish, { once: true });
      if (ms !== null) timer = setTimeout(finish, Math.max(0, Math.min(ms, MAX_TIMER_MS)));
    });
  }

  /** State this worker keeps for the call's session until the host drops it. */
  get session() {
    if (this.sessionId === null) {
      throw new Error(`call ${pyRepr(this.command)} has no session; use execute_in_session`);
    }
    let state = this._server.sessions.get(this.sessionId);
    if (state === undefined) {
      state = {};
      this._server.sessions.set(this.sessionId, state);
    }
    return state;
  }

  /** Report progress: `done` of `total` units, with an optional message. */
  progress(done, total, message) {
    if (this._done) return;
    const out = { t: 'progress', id: this.id, done: Number(done) };
    if (total !== undefined && total !== null) out.total = Number(total);
    if (message !== undefined && message !== null) out.msg = String(message);
    this._server.send(out);
  }

  _cancelError() {
    return new CallCancelled(`call ${this.id} (${this.command}) was cancelled`);
  }

  _interrupt() {
    if (this._controller !== null && !this._controller.signal.aborted) {
      this._controller.abort(this._cancelError());
    }
    this._notify();
  }

  _cancel() {
    this._cancelled = true;
    this._interrupt();
  }

  _grant(n) {
    this._credit += n;
    this._notify();
  }

  _notify() {
    if (this._wake !== null) {
      const wake = this._wake;
      this._wake = null;
      wake();
    }
  }

  /** Wait for one unit of stream credit; false if cancelled (or expired) meanwhile. */
  async _takeCredit() {
    while (this._credit <= 0) {
      if (this.cancelled) return false;
      await new Promise((resolve) => { this._wake = resolve; });
    }
    if (this.cancelled) return false;
    this._credit -= 1;
    return true;
  }

  _dispose() {
    this._done = true;
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
    this._wake = null;
  }
}

// -- built-in commands -------------------------------------------------------------------------
function zeroDivision(message) {
  const err = new Error(message);
  err.name = 'ZeroDivisionError';
  return err;
}

const COMPUTE_OPS = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => {
    if (b === 0) throw zeroDivision('division by zero');
    return a / b;
  },
  floordiv: (a, b) => {
    if (b === 0) throw zeroDivision('integer division or modulo by zero');
    return Math.floor(a / b);
  },
  mod: (a, b) => {
    if (b === 0) throw zeroDivision('integer modulo by zero');
    const r = a % b;
    return r !== 0 && (r < 0) !== (b < 0) ? r + b : r; // the sign of the divisor, as Python
  },
  pow: (a, b) => a ** b,
};

function builtins(server) {
  return {
    ping() {
      return { pong: true, pid: process.pid };
    },
    echo(args) {
      return args;
    },
    info() {
      return {
        pid: process.pid,
        node: process.version,
        runtime: 'node',
        handler: server.handlerName,
        uptime: (performance.now() - server.startedAt) / 1000,
        calls_served: server.callsServed,
        concurrency: server.concurrency,
        commands: [...server.commands.keys()].sort(),
        sessions: [...server.sessions.keys()].sort(),
      };
    },
    compute(args) {
      const op = args === null || typeof args !== 'object' ? undefined : args.op;
      if (op === 'sum') {
        return (args.values || []).reduce((total, value) => total + value, 0);
      }
      const fn = Object.prototype.hasOwnProperty.call(COMPUTE_OPS, op) ? COMPUTE_OPS[op] : null;
      if (fn === null) {
        const err = new Error(`unknown op ${pyRepr(op === undefined ? 'None' : op)}; expected sum `
          + `or one of [${Object.keys(COMPUTE_OPS).sort().map(pyRepr).join(', ')}]`);
        err.name = 'ValueError';
        throw err;
      }
      return fn(args.a, args.b);
    },
  };
}

/**
 * The commands a handler module offers: its exported functions (CommonJS
 * `module.exports`, an ESM default export object, and ESM named exports), plus the
 * methods of a class instance it exports. Names starting with "_" are private.
 */
function commandsOf(namespace) {
  const found = new Map();
  const sources = [];
  const main = namespace.default;
  if (main !== null && typeof main === 'object') sources.push(main);
  sources.push(namespace);
  for (const source of sources) {
    // own properties, then (for a class instance) the methods of its classes
    for (let object = source; object !== null && object !== Object.prototype;
      object = object === namespace ? null : Object.getPrototypeOf(object)) {
      for (const name of Object.getOwnPropertyNames(object)) {
        if (name === 'default' || name === 'constructor' || name.startsWith('_')
          || found.has(name)) continue;
        const descriptor = Object.getOwnPropertyDescriptor(object, name);
        if (descriptor && typeof descriptor.value === 'function') {
          found.set(name, { fn: descriptor.value, self: source });
        }
      }
    }
  }
  return found;
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function')
    && typeof value.then === 'function';
}

/** A generator, an async generator, an iterator or an async iterable (a Node stream). */
function streamOf(value) {
  if (value === null || typeof value !== 'object') return null;
  if (typeof value[Symbol.asyncIterator] === 'function') return value[Symbol.asyncIterator]();
  if (typeof value[Symbol.iterator] === 'function' && typeof value.next === 'function') {
    return value[Symbol.iterator]();
  }
  return null;
}

// -- the server ------------------------------------------------------------------------------
class Server {
  constructor({ handlerModule, handlerName, concurrency }) {
    this.handlerName = handlerName;
    this.concurrency = concurrency;
    this.codec = JSON_CODEC;
    this.maxFrameSize = DEFAULT_MAX_FRAME_SIZE;
    this.decoder = new FrameDecoder(DEFAULT_MAX_FRAME_SIZE);
    this.handshaken = false;
    this.stopping = false;
    this.exiting = false;
    this.active = new Map();
    this.backlog = [];
    this.running = 0;
    this.sessions = new Map();
    this.callsServed = 0;
    this.startedAt = performance.now();
    this.heartbeat = null;
    this.commands = new Map();
    for (const [name, fn] of Object.entries(builtins(this))) this.commands.set(name, { fn, self: null });
    if (handlerModule !== null) {
      for (const [name, entry] of commandsOf(handlerModule)) this.commands.set(name, entry);
    }
  }

  // -- wire ------------------------------------------------------------------------------
  write(buffer) {
    rawWrite.call(wire, buffer);
  }

  /** Encode and send one message (throws PayloadError when it cannot travel). */
  send(message) {
    this.write(frame(this.codec.encode(message), this.maxFrameSize));
  }

  sendError(id, kind, etype, msg, tb) {
    const out = { t: 'error', id, kind, etype: etype || '', msg: msg || '' };
    if (tb) out.tb = tb;
    try {
      this.send(out);
    } catch (err) {
      if (!(err instanceof PayloadError)) throw err;
      // a message or traceback too large for a frame: send the start of the message
      this.send({ t: 'error', id, kind, etype: out.etype, msg: `${out.msg.slice(0, 4096)}...` });
    }
  }

  sendException(id, kind, err) {
    if (err instanceof Error || (err !== null && typeof err === 'object' && 'message' in err)) {
      this.sendError(id, kind, String(err.name || 'Error'), String(err.message),
        typeof err.stack === 'string' ? err.stack : '');
    } else {
      this.sendError(id, kind, err === null ? 'null' : typeof err, String(err), '');
    }
  }

  /** A call's final answer: an answer that cannot travel becomes a payload error. */
  answer(ctx, message) {
    try {
      this.send(message);
    } catch (err) {
      if (!(err instanceof PayloadError)) throw err;
      this.sendError(ctx.id, KIND_PAYLOAD, 'PayloadError', `result cannot be sent: ${err.message}`);
    }
  }

  /** The host sent something this worker cannot understand: report it and exit 2. */
  protocolFailure(message) {
    process.stderr.write(`snakepit-node: protocol error from host: ${message}\n`);
    try {
      this.sendError(null, KIND_PROTOCOL, '', message);
    } catch (err) {
      // nothing more to say
    }
    this.exit(2);
  }

  onData(data) {
    if (this.exiting) return;
    try {
      for (const payload of this.decoder.feed(data)) {
        if (this.exiting) return;
        if (!this.handshaken) {
          this.handshake(payload);
          continue;
        }
        let message;
        try {
          message = this.codec.decode(payload);
        } catch (err) {
          throw new ProtocolError(`undecodable ${this.codec.name} payload: ${err.message}`);
        }
        this.route(message);
      }
    } catch (err) {
      if (err instanceof ProtocolError) this.protocolFailure(err.message);
      else throw err;
    }
  }

  // -- handshake ---------------------------------------------------------------------------
  handshake(payload) {
    let hello;
    try {
      hello = JSON_CODEC.decode(payload);
    } catch (err) {
      throw new ProtocolError(`undecodable json payload: ${err.message}`);
    }
    if (hello === null || typeof hello !== 'object' || Array.isArray(hello)) {
      throw new ProtocolError('expected a map');
    }
    if (hello.t !== 'hello') throw new ProtocolError(`expected hello, got ${pyRepr(hello.t)}`);
    const offered = Array.isArray(hello.codecs) && hello.codecs.length ? hello.codecs : ['json'];
    const usable = offered.filter((name) => Object.prototype.hasOwnProperty.call(CODECS, name));
    if (usable.length === 0) {
      throw new ProtocolError(`host offers codecs ${JSON.stringify(offered)}, this worker has `
        + `${JSON.stringify(Object.keys(CODECS))}`);
    }
    if (Number.isInteger(hello.max_frame_size) && hello.max_frame_size > 0) {
      this.maxFrameSize = hello.max_frame_size;
      this.decoder.maxFrameSize = hello.max_frame_size;
    }
    const welcome = {
      t: 'welcome',
      version: PROTOCOL_VERSION,
      pid: process.pid,
      codec: usable[0],
      concurrency: this.concurrency,
      capabilities: CAPABILITIES,
      python: '',
      handler: this.handlerName,
    };
    this.write(frame(JSON_CODEC.encode(welcome), this.maxFrameSize));
    this.codec = CODECS[usable[0]];
    this.handshaken = true;
    if (typeof hello.heartbeat === 'number' && hello.heartbeat > 0) {
      const beat = frame(this.codec.encode({ t: 'beat' }), this.maxFrameSize);
      this.heartbeat = setInterval(() => this.write(beat),
        Math.max(1, Math.min(hello.heartbeat * 1000, MAX_TIMER_MS)));
      this.heartbeat.unref();
    }
  }

  // -- routing -----------------------------------------------------------------------------
  route(message) {
    if (message === null || typeof message !== 'object' || Array.isArray(message)
      || ArrayBuffer.isView(message)) {
      throw new ProtocolError(`expected a map, got ${Array.isArray(message) ? 'list' : typeof message}`);
    }
    switch (message.t) {
      case 'call': {
        if (!Number.isInteger(message.id) || typeof message.cmd !== 'string') {
          throw new ProtocolError(`malformed call frame: ${String(JSON.stringify(message, (k, v) => (
            typeof v === 'bigint' || ArrayBuffer.isView(v) ? '...' : v))).slice(0, 200)}`);
        }
        const ctx = new CallContext(this, message);
        if (ctx.expired) {
          ctx._dispose();
          this.sendError(ctx.id, KIND_EXPIRED, '',
            "the call's deadline passed before the worker received it");
          return;
        }
        this.active.set(ctx.id, ctx);
        this.backlog.push(ctx);
        this.pump();
        return;
      }
      case 'cancel': {
        const ctx = this.active.get(message.id);
        if (ctx !== undefined) ctx._cancel();
        return;
      }
      case 'withdraw': {
        if (!Number.isInteger(message.id)) {
          throw new ProtocolError(`malformed 'withdraw' frame, id must be an integer: ${
            String(JSON.stringify(message)).slice(0, 200)}`);
        }
        this.withdraw(message.id);
        return;
      }
      case 'credit': {
        const ctx = this.active.get(message.id);
        if (ctx !== undefined) ctx._grant(Number.isInteger(message.n) ? message.n : 0);
        return;
      }
      case 'ping':
        this.send({ t: 'pong', id: message.id });
        return;
      case 'drop':
        if (typeof message.sid === 'string') this.sessions.delete(message.sid);
        return;
      case 'shutdown':
        this.stopping = true;
        this.exitIfIdle();
        return;
      default:
        throw new ProtocolError(`unexpected message type ${pyRepr(message.t)}`);
    }
  }

  /**
   * The host takes back call `id`. Still waiting in the backlog: it leaves it, is
   * answered `withdrawn` and never runs. Started, finished or unknown: nothing is said
   * (its own answer comes, or came). Calls start only from `pump`, synchronously, so
   * a call is either still in the backlog here or started: never both, never neither.
   */
  withdraw(id) {
    const ctx = this.active.get(id);
    if (ctx === undefined) return;
    const at = this.backlog.indexOf(ctx);
    if (at < 0) return; // started
    this.backlog.splice(at, 1);
    this.active.delete(id);
    ctx._dispose();
    this.send({ t: 'withdrawn', id });
    this.exitIfIdle();
  }

  pump() {
    while (this.running < this.concurrency && this.backlog.length > 0 && !this.exiting) {
      const ctx = this.backlog.shift();
      this.running += 1;
      this.runCall(ctx).catch((err) => {
        process.stderr.write(`snakepit-node: internal error: ${err && err.stack}\n`);
        this.exit(1);
      });
    }
  }

  // -- running calls -----------------------------------------------------------------------
  async runCall(ctx) {
    try {
      const entry = this.commands.get(ctx.command);
      if (entry === undefined) {
        this.sendError(ctx.id, KIND_UNKNOWN_COMMAND, 'UnknownCommand',
          `unknown command ${pyRepr(ctx.command)}`);
        return;
      }
      try {
        ctx.throwIfCancelled();
        let result = entry.fn.call(entry.self, ctx.args, ctx);
        if (isThenable(result)) result = await result;
        const items = streamOf(result);
        if (ctx.window === null) {
          const value = items === null ? result : await this.collect(ctx, items);
          this.answer(ctx, { t: 'result', id: ctx.id, value });
        } else {
          await this.stream(ctx, items === null ? [result][Symbol.iterator]() : items);
        }
      } catch (err) {
        if (this.exiting) return;
        if (err instanceof CallCancelled || ctx.cancelled) {
          this.sendException(ctx.id, KIND_CANCELLED, err instanceof CallCancelled ? err
            : ctx._cancelError());
        } else if (err instanceof PayloadError) {
          this.sendError(ctx.id, KIND_PAYLOAD, 'PayloadError', `result cannot be sent: ${err.message}`);
        } else {
          this.sendException(ctx.id, KIND_HANDLER, err);
        }
      }
    } finally {
      ctx._dispose();
      this.active.delete(ctx.id);
      this.callsServed += 1;
      this.running -= 1;
      this.pump();
      this.exitIfIdle();
    }
  }

  /** A plain call of a streaming command: its items, collected into a list. */
  async collect(ctx, items) {
    const values = [];
    try {
      for (;;) {
        ctx.throwIfCancelled();
        const step = await items.next();
        if (step.done) return values;
        values.push(isThenable(step.value) ? await step.value : step.value);
      }
    } finally {
      if (typeof items.return === 'function') {
        try { await items.return(); } catch (err) { /* already ending */ }
      }
    }
  }

  /** Send items as chunks, producing each only against credit, then the end. */
  async stream(ctx, items) {
    let exhausted = false;
    try {
      for (;;) {
        if (!(await ctx._takeCredit())) throw ctx._cancelError();
        const step = await items.next();
        if (step.done) {
          exhausted = true;
          break;
        }
        const value = isThenable(step.value) ? await step.value : step.value;
        this.send({ t: 'chunk', id: ctx.id, value }); // PayloadError ends the stream
      }
      this.send({ t: 'end', id: ctx.id });
    } finally {
      if (!exhausted && typeof items.return === 'function') {
        try {
          await items.return(); // runs the generator's finally blocks now
        } catch (err) {
          // already ending with another error
        }
      }
    }
  }

  // -- ending ------------------------------------------------------------------------------
  exitIfIdle() {
    if (this.stopping && this.running === 0 && this.backlog.length === 0) this.exit(0);
  }

  exit(code) {
    if (this.exiting) return;
    this.exiting = true;
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    if (wire.writableLength > 0) {
      wire.once('drain', () => process.exit(code));
      setTimeout(() => process.exit(code), 2000).unref();
    } else {
      process.exit(code);
    }
  }
}

// -- start ---------------------------------------------------------------------------------
function parseArgs(argv) {
  const options = { handler: null, concurrency: null };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? arg.split(/=(.*)/s) : [arg, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--handler') options.handler = value();
    else if (flag === '--concurrency') options.concurrency = Number(value());
    else if (flag === '--help' || flag === '-h') {
      process.stderr.write('usage: node worker.js [--handler MODULE.js] [--concurrency N]\n');
      process.exit(0);
    } else {
      process.stderr.write(`snakepit-node: unknown argument ${pyRepr(arg)}\n`);
      process.exit(64);
    }
  }
  if (options.concurrency !== null
    && !(Number.isInteger(options.concurrency) && options.concurrency >= 1)) {
    process.stderr.write('snakepit-node: --concurrency must be an integer >= 1\n');
    process.exit(64);
  }
  return options;
}

async function main() {
  takeWire(); // before the handler module runs: its top-level logging must not hit the wire
  const options = parseArgs(process.argv.slice(2));
  let handlerModule = null;
  let handlerName = 'snakepit-node:builtins';
  if (options.handler) {
    const file = path.resolve(options.handler);
    handlerName = `node:${file}`;
    try {
      handlerModule = await import(pathToFileURL(file).href);
    } catch (err) {
      process.stderr.write(`snakepit-node: cannot load handler ${pyRepr(options.handler)}\n`
        + `${err && err.stack ? err.stack : String(err)}\n`);
      process.exit(1);
    }
  }
  let concurrency = options.concurrency;
  if (concurrency === null && handlerModule !== null) {
    const declared = [handlerModule.concurrency,
      handlerModule.default && handlerModule.default.concurrency].find((v) => v !== undefined);
    if (Number.isInteger(declared) && declared >= 1) concurrency = declared;
  }
  const server = new Server({ handlerModule, handlerName, concurrency: concurrency || 1 });

  const leave = () => server.exit(0);
  process.on('SIGTERM', leave);
  process.on('SIGINT', leave);
  process.on('SIGHUP', leave);
  wire.on('error', () => process.exit(0)); // EPIPE: the host is gone
  process.on('unhandledRejection', (reason) => {
    process.stderr.write(`snakepit-node: unhandled promise rejection: ${
      reason && reason.stack ? reason.stack : String(reason)}\n`);
  });
  // the host's death closes our stdin; a changed parent says the same (like PDEATHSIG)
  const parent = process.ppid;
  setInterval(() => { if (process.ppid !== parent) server.exit(0); }, 1000).unref();

  process.stdin.on('data', (data) => server.onData(data));
  process.stdin.on('end', leave);
  process.stdin.on('error', leave);
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`snakepit-node: ${err && err.stack ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}

module.exports = { CallCancelled, CallContext, FrameDecoder, MSGPACK, JSON_CODEC, frame };
