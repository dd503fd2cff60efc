'use strict';
/**
 * The call context: what a command knows about the call it runs (its second argument,
 * `ctx`), and how the server cancels it, grants it stream credit and ends it.
 */

const { MAX_TIMER_MS, PROGRESS, pyRepr } = require('./wire');

/** Thrown by `ctx.throwIfCancelled()`; a call that ends with it reports kind "cancelled". */
class CallCancelled extends Error {
  constructor(message) { super(message); this.name = 'CallCancelled'; }
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

module.exports = { CallCancelled, CallContext };
