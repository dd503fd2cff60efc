'use strict';
/**
 * The snakepit wire, as worker.js speaks it: the protocol constants (the same values as
 * src/snakepit/protocol/wire.py, checked by the plugin's tests), the errors a frame can
 * raise, length-prefixed framing, and the msgpack and JSON codecs.
 *
 * Every frame is a 4-byte big-endian payload length, then the payload; the payload is
 * a map whose `t` key names the message.
 */

const msgpack = require('@msgpack/msgpack');

const PROTOCOL_VERSION = 1;
/** Default largest frame payload accepted by either side, in bytes. */
const DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024;
/** Capabilities announced in the welcome (all of them also Python's). */
const CAPABILITIES = ['streams', 'cancel', 'progress', 'deadline', 'sessions', 'ping', 'heartbeat',
  'withdraw', 'host_tools', 'batch'];

// Message tags (the `t` key): host to worker, then worker to host.
const TAG = 't';
const HELLO = 'hello';
const CALL = 'call';
const CANCEL = 'cancel';
const WITHDRAW = 'withdraw';
const CREDIT = 'credit';
const PING = 'ping';
const DROP = 'drop';
const SHUTDOWN = 'shutdown';
const WELCOME = 'welcome';
const RESULT = 'result';
const ERROR = 'error';
const CHUNK = 'chunk';
const END = 'end';
const PROGRESS = 'progress';
const PONG = 'pong';
const WITHDRAWN = 'withdrawn';
const RESULTS = 'results';
const BEAT = 'beat';
// Host tools and worker events (docs/adapters.md): worker to host `host_call` and `emit`,
// host to worker `host_result` and `host_error`; a `call` may carry `nest`.
const HOST_CALL = 'host_call';
const HOST_RESULT = 'host_result';
const HOST_ERROR = 'host_error';
const EMIT = 'emit';
/** The reserved tool whose result lists the tools a call can reach. */
const LIST_TOOLS = 'snakepit.tools';

// Values of `error.kind`.
const KIND_HANDLER = 'handler';
const KIND_UNKNOWN_COMMAND = 'unknown_command';
const KIND_CANCELLED = 'cancelled';
const KIND_EXPIRED = 'expired';
const KIND_PAYLOAD = 'payload';
const KIND_PROTOCOL = 'protocol';

/** The longest delay setTimeout accepts. */
const MAX_TIMER_MS = 2 ** 31 - 1;

// -- errors ----------------------------------------------------------------------------------
class ProtocolError extends Error {
  constructor(message) { super(message); this.name = 'ProtocolError'; }
}

class PayloadError extends Error {
  constructor(message) { super(message); this.name = 'PayloadError'; }
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

// -- stdout is the wire: keep its real write for frames, send everything else to stderr -----
const stdout = process.stdout;
const rawWrite = stdout.write;

/** Write one encoded frame to the wire. */
function writeFrame(buffer) {
  rawWrite.call(stdout, buffer);
}

/** Called once at start: from now on only frames reach fd 1. */
function takeWire() {
  stdout.write = (chunk, encoding, callback) => process.stderr.write(chunk, encoding, callback);
  // the global console writes these to stdout: point them at stderr explicitly too
  for (const name of ['log', 'info', 'debug']) console[name] = (...args) => console.error(...args);
}

module.exports = {
  PROTOCOL_VERSION, DEFAULT_MAX_FRAME_SIZE, CAPABILITIES,
  TAG, HELLO, CALL, CANCEL, WITHDRAW, CREDIT, PING, DROP, SHUTDOWN,
  WELCOME, RESULT, ERROR, CHUNK, END, PROGRESS, PONG, WITHDRAWN, RESULTS, BEAT,
  HOST_CALL, HOST_RESULT, HOST_ERROR, EMIT, LIST_TOOLS,
  KIND_HANDLER, KIND_UNKNOWN_COMMAND, KIND_CANCELLED, KIND_EXPIRED, KIND_PAYLOAD, KIND_PROTOCOL,
  MAX_TIMER_MS,
  ProtocolError, PayloadError, pyRepr, FrameDecoder, frame, MSGPACK, JSON_CODEC, CODECS,
  stdout, takeWire, writeFrame,
};
