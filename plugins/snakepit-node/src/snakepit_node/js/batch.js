'use strict';
/**
 * Batch calls (`pool.map` on the host): a `call` frame whose `batch` field is the number
 * of items and whose `args` is their list. Every item runs through the same command,
 * one after another, in order; the answer is one `results` frame: `values[i]` is item
 * i's result (null where it threw), and `errs` lists `[i, kind, etype, msg, tb,
 * retryable]` for each item that threw (left out when none did); `ran` is the seconds
 * the items took (the host sizes later chunks by it).
 *
 * Between items the batch yields to the event loop now and then (about every
 * LOOK_EVERY_MS of work), so a cancel frame or the deadline can stop it: the rest of
 * the items never run and the whole call is answered cancelled (or expired).
 */

const { KIND_HANDLER, RESULTS } = require('./wire');
const { isThenable, streamOf } = require('./builtins');
const { CallCancelled } = require('./context');

const LOOK_EVERY_MS = 2;

/** Whether a `call` frame's batch fields are well formed (or absent). */
function validBatch(message) {
  const { batch } = message;
  if (batch === undefined || batch === null) return true;
  return Number.isInteger(batch) && batch > 0 && !Number.isInteger(message.window)
    && Array.isArray(message.args) && message.args.length === batch;
}

/** The `errs` entry for item `index`, which threw `err`. */
function errorEntry(index, err) {
  if (err instanceof Error || (err !== null && typeof err === 'object' && 'message' in err)) {
    return [index, KIND_HANDLER, String(err.name || 'Error'), String(err.message),
      typeof err.stack === 'string' ? err.stack : '', err.retryable === true];
  }
  return [index, KIND_HANDLER, err === null ? 'null' : typeof err, String(err), '', false];
}

async function collect(items) {
  const values = [];
  for (;;) {
    const step = await items.next();
    if (step.done) return values;
    values.push(isThenable(step.value) ? await step.value : step.value);
  }
}

/**
 * Run every item of the batch call `ctx` through `entry`; returns the `results` frame.
 * Throws the context's cancel error once it is cancelled (or expired) between items.
 */
async function runBatch(entry, ctx) {
  const items = ctx.args;
  const values = new Array(items.length);
  const errors = [];
  const began = process.hrtime.bigint();
  let looked = Date.now();
  for (let index = 0; index < items.length; index += 1) {
    try {
      let value = entry.fn.call(entry.self, items[index], ctx);
      if (isThenable(value)) value = await value;
      const stream = streamOf(value);
      values[index] = stream === null ? value : await collect(stream);
    } catch (err) {
      if (err instanceof CallCancelled || ctx.cancelled) throw err; // the whole call stops
      values[index] = null;
      errors.push(errorEntry(index, err));
    }
    if (index + 1 < items.length && Date.now() - looked >= LOOK_EVERY_MS) {
      await new Promise((resolve) => { setImmediate(resolve); }); // let frames in
      looked = Date.now();
      ctx.throwIfCancelled();
    }
  }
  const frame = { t: RESULTS, id: ctx.id, values,
    ran: Number(process.hrtime.bigint() - began) / 1e9 };
  if (errors.length > 0) frame.errs = errors;
  return frame;
}

module.exports = { runBatch, validBatch, LOOK_EVERY_MS };
