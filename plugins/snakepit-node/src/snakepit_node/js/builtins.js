'use strict';
/**
 * The built-in commands (ping, echo, info, compute, as in the Python bridge), how a
 * handler module's commands are found, and how a command's return value is read (a
 * promise, a stream, or a plain value).
 */

const { pyRepr } = require('./wire');

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

module.exports = { builtins, commandsOf, isThenable, streamOf };
