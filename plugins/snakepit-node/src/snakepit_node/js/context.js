'use strict';
/**
 * The call context: what a command knows about the call it runs (its second argument,
 * `ctx`), and how the server cancels it, grants it stream credit and ends it.
 */

const { EMIT, LIST_TOOLS, MAX_TIMER_MS, PROGRESS, pyRepr } = require('./wire');

/** Thrown by `ctx.throwIfCancelled()`; a call that ends with it reports kind "cancelled". */
class CallCancelled extends Error {
  constructor(message) { super(message); this.name = 'CallCancelled'; }
}

/** Rejects `ctx.callHost` when the host tool failed (or no such tool is reachable). */
class HostToolError extends Error {
  constructor(hostType, hostMessage) {
    super(`${hostType}: ${hostMessage}`);
    this.name = 'HostToolError';
    this.hostType = hostType;
    this.hostMessage = hostMessage;
  }
}

// The bounds of ctx.emit: the same as src/snakepit/protocol/events.py (the host checks too).
const EVENT_NAME = /^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}$/;
const RESERVED_EVENTS = new Set(['started', 'ready', 'exited', 'restarted', 'unhealthy', 'info',
  'stats', 'stderr', 'setup_failed']);
const MAX_EVENT_KEYS = 32;
const MAX_EVENT_KEY = 64;
const MAX_EVENT_TEXT = 1024;

/** Why an event may not be sent, or null (as Python's check_event). */
function checkEvent(event, measurements, metadata) {
  if (typeof event !== 'string' || event.length > 64 || !EVENT_NAME.test(event)) {
    return `event name ${pyRepr(String(event))} must be dot-separated lower-case words `
      + '(letters, digits, _), at most 64 characters';
  }
  if (RESERVED_EVENTS.has(event)) {
    return `event name ${pyRepr(event)} is reserved for the host's own worker.${event} event`;
  }
  const checks = [['measurements', measurements, (v) => typeof v === 'number' && !Number.isNaN(v)],
    ['metadata', metadata, (v) => v === null || typeof v === 'boolean'
      || (typeof v === 'number' && !Number.isNaN(v))
      || (typeof v === 'string' && v.length <= MAX_EVENT_TEXT)]];
  for (const [label, values, ok] of checks) {
    if (values === undefined || values === null) continue;
    if (typeof values !== 'object' || Array.isArray(values)) return `${label} must be an object`;
    const entries = Object.entries(values);
    if (entries.length > MAX_EVENT_KEYS) {
      return `${label} has ${entries.length} keys, at most ${MAX_EVENT_KEYS} are allowed`;
    }
    for (const [key, value] of entries) {
      if (key.length === 0 || key.length > MAX_EVENT_KEY) {
        return `${label} keys must be strings of 1 to ${MAX_EVENT_KEY} characters`;
      }
      if (!ok(value)) return `${label}[${pyRepr(key)}] has an unsupported value`;
    }
  }
  return null;
}


/** What a command knows about the call it runs (its second argument). */
class CallContext {
  constructor(server, message) {
    this.id = message.id;
    this.command = message.cmd;
    this.args = message.args === undefined ? null : message.args;
    this.sessionId = typeof message.sid === 'string' ? message.sid : null;
    this.deadline = typeof message.dl === 'number' ? message.dl : null;
    this.window = Number.isInteger(message.window) ? message.window : null;
    /** Items in a batch call (`pool.map`; `args` is their list), else 0. */
    this.batch = Number.isInteger(message.batch) ? message.batch : 0;
    this._server = server;
    this._cancelled = false;
    this._done = false;
    this._credit = this.window || 0;
    this._wake = null;
    this._controller = null;
    this._timer = null;
    this._hostCalls = new Set(); // ids of this call's host calls still unanswered
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
    const out = { t: PROGRESS, id: this.id, done: Number(done) };
    if (total !== undefined && total !== null) out.total = Number(total);
    if (message !== undefined && message !== null) out.msg = String(message);
    this._server.send(out);
  }

  /**
   * Run the host tool `name` with `args`; resolves to its result, rejects with
   * HostToolError (the tool failed, or is unknown) or CallCancelled (the call was
   * cancelled or passed its deadline: the host cancels the tool). Calls the tool makes
   * to the pool may run here meanwhile (nested), whatever the concurrency.
   */
  callHost(name, args) {
    if (typeof name !== 'string' || name.length === 0) {
      return Promise.reject(new TypeError("a host tool's name must be a non-empty string"));
    }
    if (this.cancelled) return Promise.reject(this._cancelError());
    return this._server.callHost(this, name, args === undefined ? null : args);
  }

  /** The host tools this call can reach: `[{name, description}]`. */
  hostTools() {
    return this.callHost(LIST_TOOLS, null);
  }

  /**
   * Emit the host telemetry event `worker.<event>` (the host adds pool, worker and
   * call). Throws RangeError for a bad name or a value past the documented bounds.
   */
  emit(event, measurements, metadata) {
    const problem = checkEvent(event, measurements, metadata);
    if (problem !== null) throw new RangeError(problem);
    this._server.send({ t: EMIT, call: this.id, event, measurements: measurements || {},
      metadata: metadata || {} });
  }

  _cancelError() {
    return new CallCancelled(`call ${this.id} (${this.command}) was cancelled`);
  }

  _interrupt() {
    if (this._controller !== null && !this._controller.signal.aborted) {
      this._controller.abort(this._cancelError());
    }
    for (const id of this._hostCalls) this._server.hostAnswered(id, this._cancelError());
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

module.exports = { CallCancelled, CallContext, HostToolError, checkEvent };
