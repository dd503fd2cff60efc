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
 *
 * This file is the entry point (arguments, loading the handler, signals, parent watch);
 * the runtime lives beside it: wire.js (constants, framing, codecs), context.js (the
 * call context), builtins.js (built-in commands, finding a handler's commands) and
 * server.js (handshake, routing, the call queue, answers).
 */

const path = require('node:path');
const { pathToFileURL } = require('node:url');
const { CallCancelled, CallContext } = require('./context');
const { Server } = require('./server');
const {
  FrameDecoder, JSON_CODEC, MSGPACK, frame, pyRepr, stdout: wire, takeWire,
} = require('./wire');

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
