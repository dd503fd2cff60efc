"""The wire: length-prefixed frames, codecs, and the message vocabulary.

``framing``, ``codecs`` and ``wire`` use only the standard library (and msgpack when it
is installed) because the worker-side bridge imports them in worker environments that
have nothing else. ``messages`` holds the host's typed view (attrs + cattrs).
"""
