'use strict';
/**
 * Calls from a worker to the host (`ctx.callHost`), and the calls a host tool makes back
 * into the worker that waits for it: those run at once, nested, on the waiting call's
 * capacity (like a call stack), so a pool whose every worker waits in a tool cannot
 * deadlock.
 */

const { HOST_CALL, KIND_CANCELLED } = require('./wire');

class HostCalls {
  constructor(server) {
    this.server = server;
    this.pending = new Map(); // host call id -> { ctx, resolve, reject }
    this.nextId = 1;
  }

  /** Send a host call for `ctx`; the promise settles on its answer or the call's cancel. */
  call(ctx, name, args) {
    const id = this.nextId;
    this.nextId += 1;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { ctx, resolve, reject });
      ctx._hostCalls.add(id);
      try {
        this.server.send({ t: HOST_CALL, id, call: ctx.id, name, args });
      } catch (err) {
        this.answered(id, err);
      }
    });
  }

  /** Settle host call `id` (`error` set: reject with it); unknown ids are dropped. */
  answered(id, error, value) {
    const entry = this.pending.get(id);
    if (entry === undefined) return;
    this.pending.delete(id);
    entry.ctx._hostCalls.delete(id);
    if (error !== undefined) entry.reject(error);
    else entry.resolve(value);
  }

  /**
   * A call made by a host tool that call `outer` waits for: it runs at once, on the
   * waiting call's capacity (whatever the concurrency), or is refused when `outer` has
   * ended.
   */
  runNested(ctx, outer) {
    const waiting = this.server.active.get(outer);
    if (!Number.isInteger(outer) || waiting === undefined || this.server.backlog.includes(waiting)) {
      ctx._dispose();
      this.server.sendError(ctx.id, KIND_CANCELLED, 'CallCancelled',
        `call ${ctx.id} (${ctx.command}) was cancelled before it started: the call it `
        + 'was nested in has ended');
      return;
    }
    this.server.active.set(ctx.id, ctx);
    this.server.running += 1;
    this.server.runCall(ctx).catch((err) => {
      process.stderr.write(`snakepit-node: internal error: ${err && err.stack}\n`);
      this.server.exit(1);
    });
  }
}

module.exports = { HostCalls };
