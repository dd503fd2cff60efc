'use strict';
/**
 * The server: reads frames from the host, answers the handshake, routes control frames,
 * queues calls and starts them in arrival order (at most `concurrency` at once), and
 * writes their answers through `writeFrame` (wire.js: stdout is the wire).
 */

const {
  BEAT, CALL, CANCEL, CAPABILITIES, CHUNK, CODECS, CREDIT, DEFAULT_MAX_FRAME_SIZE, DROP, END,
  ERROR, FrameDecoder, HELLO, HOST_ERROR, HOST_RESULT, JSON_CODEC, KIND_CANCELLED, KIND_EXPIRED,
  KIND_HANDLER, KIND_PAYLOAD, KIND_PROTOCOL, KIND_UNKNOWN_COMMAND, MAX_TIMER_MS, PING, PONG,
  PROTOCOL_VERSION, PayloadError, ProtocolError, RESULT, SHUTDOWN, WELCOME, WITHDRAW,
  WITHDRAWN, frame, pyRepr, stdout, writeFrame,
} = require('./wire');
const { CallCancelled, CallContext, HostToolError } = require('./context');
const { builtins, commandsOf, isThenable, streamOf } = require('./builtins');
const { HostCalls } = require('./hostcalls');
const { runBatch, validBatch } = require('./batch');

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
    this.host = new HostCalls(this);
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
    writeFrame(buffer);
  }

  /** Encode and send one message (throws PayloadError when it cannot travel). */
  send(message) {
    this.write(frame(this.codec.encode(message), this.maxFrameSize));
  }

  sendError(id, kind, etype, msg, tb) {
    const out = { t: ERROR, id, kind, etype: etype || '', msg: msg || '' };
    if (tb) out.tb = tb;
    try {
      this.send(out);
    } catch (err) {
      if (!(err instanceof PayloadError)) throw err;
      // a message or traceback too large for a frame: send the start of the message
      this.send({ t: ERROR, id, kind, etype: out.etype, msg: `${out.msg.slice(0, 4096)}...` });
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
    if (hello.t !== HELLO) throw new ProtocolError(`expected hello, got ${pyRepr(hello.t)}`);
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
      t: WELCOME,
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
      const beat = frame(this.codec.encode({ t: BEAT }), this.maxFrameSize);
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
      case CALL: {
        if (!Number.isInteger(message.id) || typeof message.cmd !== 'string'
            || !validBatch(message)) {
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
        if (message.nest !== undefined && message.nest !== null) {
          this.host.runNested(ctx, message.nest);
          return;
        }
        this.active.set(ctx.id, ctx);
        this.backlog.push(ctx);
        this.pump();
        return;
      }
      case HOST_RESULT:
      case HOST_ERROR: {
        if (!Number.isInteger(message.id)) {
          throw new ProtocolError(`malformed ${pyRepr(message.t)} frame, id must be an integer`);
        }
        this.hostAnswered(message.id, message.t === HOST_ERROR
          ? new HostToolError(String(message.etype || 'Exception'), String(message.msg || ''))
          : undefined, message.value === undefined ? null : message.value);
        return;
      }
      case CANCEL: {
        const ctx = this.active.get(message.id);
        if (ctx === undefined) return;
        if (this.unqueue(ctx)) { // not started: answer now, never start it
          this.sendError(ctx.id, KIND_CANCELLED, 'CallCancelled',
            `call ${ctx.id} (${ctx.command}) was cancelled before it started`);
          this.exitIfIdle();
        } else {
          ctx._cancel();
        }
        return;
      }
      case WITHDRAW: {
        if (!Number.isInteger(message.id)) {
          throw new ProtocolError(`malformed 'withdraw' frame, id must be an integer: ${
            String(JSON.stringify(message)).slice(0, 200)}`);
        }
        this.withdraw(message.id);
        return;
      }
      case CREDIT: {
        const ctx = this.active.get(message.id);
        if (ctx !== undefined) ctx._grant(Number.isInteger(message.n) ? message.n : 0);
        return;
      }
      case PING:
        this.send({ t: PONG, id: message.id });
        return;
      case DROP:
        if (typeof message.sid === 'string') this.sessions.delete(message.sid);
        return;
      case SHUTDOWN:
        this.stopping = true;
        this.exitIfIdle();
        return;
      default:
        throw new ProtocolError(`unexpected message type ${pyRepr(message.t)}`);
    }
  }

  /**
   * Take `ctx` out of the backlog if it still waits there (it will then never run);
   * false if it has started. Calls start only from `pump`, synchronously, so a call is
   * either still in the backlog or started: never both, never neither.
   */
  unqueue(ctx) {
    const at = this.backlog.indexOf(ctx);
    if (at < 0) return false;
    this.backlog.splice(at, 1);
    this.active.delete(ctx.id);
    ctx._dispose();
    return true;
  }

  /**
   * The host takes back call `id`. Still waiting in the backlog: it leaves it, is
   * answered `withdrawn` and never runs. Started, finished or unknown: nothing is said
   * (its own answer comes, or came).
   */
  withdraw(id) {
    const ctx = this.active.get(id);
    if (ctx === undefined || !this.unqueue(ctx)) return;
    this.send({ t: WITHDRAWN, id });
    this.exitIfIdle();
  }

  // -- host calls (hostcalls.js) -------------------------------------------------------------
  /** Send a host call for `ctx`; the promise settles on its answer or the call's cancel. */
  callHost(ctx, name, args) { return this.host.call(ctx, name, args); }

  /** Settle host call `id` (`error` set: reject with it); unknown ids are dropped. */
  hostAnswered(id, error, value) { this.host.answered(id, error, value); }

  pump() {
    while (this.running < this.concurrency && this.backlog.length > 0 && !this.exiting) {
      const ctx = this.backlog.shift();
      if (ctx.expired) { // it waited past its deadline: never start it
        this.active.delete(ctx.id);
        ctx._dispose();
        this.sendError(ctx.id, KIND_EXPIRED, '',
          "the call's deadline passed before the worker started it");
        continue;
      }
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
        if (ctx.batch) {
          this.answer(ctx, await runBatch(entry, ctx));
          return;
        }
        let result = entry.fn.call(entry.self, ctx.args, ctx);
        if (isThenable(result)) result = await result;
        const items = streamOf(result);
        if (ctx.window === null) {
          const value = items === null ? result : await this.collect(ctx, items);
          this.answer(ctx, { t: RESULT, id: ctx.id, value });
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
        this.send({ t: CHUNK, id: ctx.id, value }); // PayloadError ends the stream
      }
      this.send({ t: END, id: ctx.id });
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
    if (stdout.writableLength > 0) {
      stdout.once('drain', () => process.exit(code));
      setTimeout(() => process.exit(code), 2000).unref();
    } else {
      process.exit(code);
    }
  }
}

module.exports = { Server };
