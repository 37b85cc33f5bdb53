"""Swift logs only to syslog: a unix datagram socket of our own, appended to a file of the cloud's logs."""

import os
import socket
import sys

path, out = sys.argv[1], sys.argv[2]
if os.path.exists(path):
    os.unlink(path)
sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sink.bind(path)
with open(out, "ab", buffering=0) as log:
    while True:
        data = sink.recv(65536)
        log.write(data.split(b">", 1)[-1].rstrip(b"\0\n") + b"\n")
