"""The message vocabulary shared by host and bridge (standard library only).

Every frame's payload decodes to a map whose ``"t"`` key names the message type. The
host maps these onto attrs classes (:mod:`snakepit.protocol.messages`); the bridge, which
must run where attrs is not installed, builds the maps directly from these constants.

Host to worker::

    hello    {version, codecs, max_frame_size, worker_id, heartbeat?, shm?, timing?}
                                                      (always JSON)
    call     {id, cmd, args, sid?, dl?, window?, nest?, batch?}
    cancel   {id}
    credit   {id, n}
    withdraw {id}                                     (take back a call not started)
    ping     {id}                                     (health check; answered at once)
    drop     {sid}                                    (forget a session's state)
    shutdown {}
    host_result {id, value}                           (a host tool returned)
    host_error  {id, etype, msg}                      (a host tool raised, or is unknown)

Worker to host::

    welcome  {version, pid, codec, concurrency, capabilities, python, handler}  (JSON)
    result   {id, value, st?}
    error    {id, kind, etype, msg, tb}
    chunk    {id, value}
    end      {id}
    progress {id, done, total?, msg?}
    withdrawn {id}                    (the call was still queued: it will never run)
    results  {id, values, errs?, ran?} (the answer to a batch call)
    pong     {id}
    beat     {}                       (every ``heartbeat`` seconds, even during a call)
    host_call {id, call, name, args}  (run host tool ``name`` for call ``call``)
    emit     {call, event, measurements, metadata}    (a telemetry event from a handler)

``shm`` in hello is a size in bytes: a worker that announces the ``shm`` capability may
then send, and will receive, buffers at least that large as msgpack extension values
(type 0x53) naming a shared-memory segment (:mod:`snakepit.protocol.shm`).

``timing`` true in hello asks the worker to add ``st`` to each ``result``: how many
seconds the handler ran. The host sizes its pipelines by it (a worker that does not
send it is measured from the host's side instead, less precisely on a busy machine).

``dl`` is the call's deadline as Unix time in seconds (host and worker share the clock
on one machine). ``window`` marks a streaming call and is the initial number of chunks
the worker may send before it waits for ``credit``.

A worker starts calls in the order they arrive, at most ``concurrency`` at once, each
only after it has answered an earlier one; it never starts a call whose ``dl`` has
passed (it answers ``expired``), and it answers a ``cancel`` for a call it has not
started at once (``cancelled`` or ``expired``). The host relies on these rules to tell
a call that waited in a busy worker's pipe from one that ran.

A worker that announces the ``withdraw`` capability answers ``withdraw`` for a call it
has received and not started with ``withdrawn`` (the call is dropped from its queue and
never runs), and otherwise ignores it: the call's own answer comes as usual, or already
came. The worker alone decides, so a call never runs twice and is never lost; the host
treats a withdrawn call as never started and may send it to another worker.

Host tools (capability ``host_tools``): a handler running call ``call`` asks the host to
run tool ``name`` with ``host_call``; ``id`` is the worker's own numbering of its host
calls. The host answers ``host_result`` or ``host_error`` with that ``id``, and never
answers a host call of a call that has ended (the worker stops waiting when the call is
cancelled or its deadline passes). While the handler waits, the worker keeps reading
the wire: a ``cancel`` of ``call`` stops the wait, and a ``call`` carrying
``nest: <call>`` was made by the tool itself -- the worker runs it at once, on the
waiting call's capacity (like a call stack), whatever else waits in its queue, and
answers it as usual; then it goes on waiting. Nested calls are outside the ordering
rule above: the host counts them as started when it sends them. The tool name
``snakepit.tools`` is reserved: its result lists the tools the call can reach
(``[{name, description}]``). ``emit`` needs no answer; the host validates and
rate-limits it (see ``docs/host-tools.md``).

A worker that announces the ``batch`` capability takes batch calls (``pool.map``): a
``call`` whose ``batch`` field is the number of items ``n`` and whose ``args`` is a list
of ``n`` items, each the arguments of one run of ``cmd``. The worker runs them one after
another through the same handler, in order, as one call of the life cycle above (it
starts, is cancelled, withdrawn, expires or is lost as a whole), and answers it with one
``results`` frame: ``values`` has ``n`` entries, item ``i``'s return value at index
``i``; an item that raised has ``nil`` there and an entry ``[i, kind, etype, msg, tb,
retryable]`` in ``errs`` (``kind`` as in ``error``; ``errs`` left out when none failed);
``ran``, optional, is the seconds the worker spent on the items (it sizes later chunks).
Between items the worker looks at the wire now and then: once the call is cancelled or
its deadline passes it stops and answers the whole call with an ``error`` frame
(``cancelled`` or ``expired``). An ``error`` frame for a batch call (an unknown command,
a result too large to send) stands for every one of its items. Large buffers among the
items and values travel through shared memory as anywhere else.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

#: Default largest frame payload accepted by either side, in bytes.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024

TAG = "t"

HELLO = "hello"
CALL = "call"
CANCEL = "cancel"
WITHDRAW = "withdraw"
CREDIT = "credit"
PING = "ping"
DROP = "drop"
SHUTDOWN = "shutdown"

WELCOME = "welcome"
RESULT = "result"
ERROR = "error"
CHUNK = "chunk"
END = "end"
PROGRESS = "progress"
PONG = "pong"
WITHDRAWN = "withdrawn"
RESULTS = "results"
BEAT = "beat"
HOST_CALL = "host_call"
HOST_RESULT = "host_result"
HOST_ERROR = "host_error"
EMIT = "emit"

#: The reserved tool name whose result lists the tools a call can reach.
LIST_TOOLS = "snakepit.tools"

# Values of ``error.kind``: what went wrong, so the host can pick the error class.
KIND_HANDLER = "handler"  # the handler raised
KIND_UNKNOWN_COMMAND = "unknown_command"
KIND_CANCELLED = "cancelled"  # stopped on the host's cancel frame
KIND_EXPIRED = "expired"  # arrived after its deadline; never run
KIND_PAYLOAD = "payload"  # the result could not be encoded or was too large
KIND_PROTOCOL = "protocol"  # the worker could not understand a frame

#: Capabilities a bridge of this version announces in its welcome (plus ``shm`` when
#: the host offered shared memory and this machine has it).
#: ``withdraw``: answers ``withdraw`` as above (so the host may move queued calls).
#: ``refuse``: a cancel frame written before a call starts keeps it from ever starting
#: (the worker answers it at once as never started), so the host need not watch a
#: ``cancel_grace`` for a call it cancelled while it still waited in the worker.
#: ``host_tools``: sends ``host_call`` and ``emit``, runs ``nest`` calls while it waits.
#: ``batch``: takes batch calls and answers them with ``results`` (see above).
CAPABILITIES = ("streams", "cancel", "progress", "deadline", "sessions", "ping", "heartbeat",
                "refuse", "withdraw", "host_tools", "batch")
BATCH = "batch"
SHM = "shm"

#: Environment variable carrying the pool's ``allowed_targets`` to enhanced workers.
ALLOWED_TARGETS_ENV = "SNAKEPIT_ALLOWED_TARGETS"
