"""A stand-in for nvidia-smi: prints the devices listed in $FAKE_GPUS (a JSON file).

Answers only the query snakepit-gpu makes; an empty list means "no GPU", a missing file
means the driver is broken (exit 9), as nvidia-smi does. With $FAKE_GPUS_GATE (a Unix
socket path) it first reports there and waits for the test's word, so a test can hold a
query in flight.
"""

import json
import os
import socket
import sys

if os.environ.get("FAKE_GPUS_GATE"):
    gate = socket.socket(socket.AF_UNIX)
    gate.settimeout(30)
    gate.connect(os.environ["FAKE_GPUS_GATE"])
    gate.sendall(b"query\n")
    gate.recv(16)
try:
    with open(os.environ["FAKE_GPUS"]) as file:
        devices = json.load(file)
except (KeyError, OSError):
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    sys.exit(9)
if not devices:
    print("No devices were found")
    sys.exit(6)
for d in devices:
    print(f"{d['index']}, {d['uuid']}, {d['name']}, {d['used']}, {d['total']}, {d['util']}")
