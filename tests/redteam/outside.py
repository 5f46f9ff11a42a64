"""The outside hosts of the red-team tests, in a network namespace of their own (see world.py).

Every address the pod talks to lives here, on the far end of one veth pair: the pool, the C2 host,
the object store the policy allows, another pod of the job, the cluster DNS. Nothing here has a
route anywhere else, so nothing the attacks send can leave the machine.

Listeners:
- TCP sinks (accept, read until EOF, close): what a pool, a C2 host, an ssh server that never
  answers, and the object store look like from the pod;
- TCP half-closers (accept, shutdown(SHUT_WR), read on): the pod's end goes to CLOSE_WAIT while the
  pod keeps sending;
- UDP sinks.
It writes `outside.ready` in its work directory once everything is bound.

Usage: outside.py WORKDIR
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

POD_IP = "10.244.1.10"
PEER_POD = "10.244.1.11"
POOL = "192.0.2.77"
C2 = "192.0.2.10"
FORGED = "192.0.2.66"
OBJECT_STORE = "203.0.113.40"
OBJECT_STORE_CLOSING = "203.0.113.41"
DNS = "10.96.0.10"
ADDRESSES = (PEER_POD, POOL, C2, FORGED, OBJECT_STORE, OBJECT_STORE_CLOSING, DNS)

SINKS = ((POOL, 3333), (C2, 8443), (FORGED, 22), (PEER_POD, 22), (OBJECT_STORE, 443))
HALF_CLOSERS = ((POOL, 3334), (OBJECT_STORE_CLOSING, 443))
UDP_SINKS = ((C2, 5599), (DNS, 53), (POOL, 3333))


def drain(conn: socket.socket, half_close: bool) -> None:
    with conn:
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass


def serve(listener: socket.socket, half_close: bool) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drain, args=(conn, half_close), daemon=True).start()


def sink_udp(sock: socket.socket) -> None:
    while True:
        sock.recvfrom(65536)


def main() -> None:
    work = Path(sys.argv[1])
    threads = []
    for addresses, half in ((SINKS, False), (HALF_CLOSERS, True)):
        for address in addresses:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
            s.listen(64)
            threads.append(threading.Thread(target=serve, args=(s, half), daemon=True))
    for address in UDP_SINKS:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(address)
        threads.append(threading.Thread(target=sink_udp, args=(u,), daemon=True))
    for t in threads:
        t.start()
    (work / "outside.ready").write_text("ready\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
