'use strict';
/**
 * An example snakepit-node handler: every exported function is a command, called as
 * `fn(args, ctx)`. Use it with
 *
 *     PoolConfig(adapter="node", options={"module": snakepit_node.EXAMPLE_HANDLER})
 */

const { setTimeout: sleep } = require('node:timers/promises');

module.exports = {
  /** A plain value. */
  greet(args) {
    const name = args && args.name ? args.name : 'world';
    console.log(`greeting ${name}`); // goes to stderr: stdout is the wire
    return `Hello, ${name}!`;
  },

  /** A stream: each yielded value is one chunk (`pool.stream("count", {"n": 3})`). */
  * count(args) {
    const n = args && Number.isInteger(args.n) ? args.n : 10;
    for (let i = 0; i < n; i += 1) yield i;
  },

  /** An async stream that reports progress and stops when cancelled. */
  async* ticks(args, ctx) {
    const n = args && Number.isInteger(args.n) ? args.n : 3;
    for (let i = 0; i < n && !ctx.cancelled; i += 1) {
      ctx.progress(i + 1, n, `tick ${i + 1}`);
      yield { tick: i, at: Date.now() };
    }
  },

  /** A handler error: the caller gets snakepit.RemoteError("Error", message). */
  fail(args) {
    throw new Error(args && args.message ? args.message : 'this command always fails');
  },

  /** Waits, cooperatively: a cancel or the call's deadline wakes it at once. */
  async slow(args, ctx) {
    const seconds = args && typeof args.seconds === 'number' ? args.seconds : 1;
    try {
      await sleep(seconds * 1000, undefined, { signal: ctx.signal });
    } catch (err) {
      ctx.throwIfCancelled(); // cancelled or past its deadline: report it so
      throw err;
    }
    return { slept: seconds };
  },

  /** Per-session state: counts the calls of the session made on this worker. */
  tally(args, ctx) {
    ctx.session.count = (ctx.session.count || 0) + 1;
    return ctx.session.count;
  },

  /** Bytes arrive as Uint8Array and may be returned as Buffer/Uint8Array (msgpack bin). */
  reverse_bytes(args) {
    return Buffer.from(args.data).reverse();
  },
};
