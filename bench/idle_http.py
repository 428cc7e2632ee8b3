#!/usr/bin/env python3
"""Server RSS per idle keep-alive HTTP connection (loopback only).

Opens N connections to an Engram server, sends one GET /healthz on each, reads
the answers, keeps the connections open and idle, and reports the growth of the
server's RSS (from /proc) divided by N. The server runs on this machine.

    bench/idle_http.py PORT SERVER_PID [CONNECTIONS=1000]
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    before = rss_kib(pid)
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        conns.append(s)
    for s in conns:
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("the server closed a connection")
            answer += chunk
    time.sleep(0.5)  # let the server settle before reading its RSS
    after = rss_kib(pid)
    print(f"{n} idle keep-alive HTTP connections: server RSS {before} -> {after} KiB: "
          f"{(after - before) / n:.1f} KiB each")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
