"""The control socket: operators look inside a running pool tree from another process.

A pool tree (one :func:`~snakepit.open_pool` block, or one :func:`~snakepit.open_pools`
block for all its pools) serves a Unix domain socket in its state directory. The server
side lives in :mod:`snakepit.control.server`, inside the tree's own nursery; the client
side, used by ``snakepit ls``/``stats``/``top``/``recycle``/``drain``, is
:mod:`snakepit.control.client`. Both speak the project's frames (4-byte length, msgpack).
"""
