#!/usr/bin/env python3
"""Helpers of cost.sh (loopback only).

    cost.py requests PORT KIND N     sends N requests of KIND on one keep-alive
                                     connection; KIND: append, get, last100
    cost.py count CALLGRIND_FILE     prints the run's instructions and its calls
                                     to the allocator (malloc, calloc, realloc,
                                     aligned allocations; operator new calls malloc)
"""
import http.client
import json
import re
import sys

ALLOCATORS = {"malloc", "calloc", "realloc", "aligned_alloc", "posix_memalign", "memalign"}
BODY = json.dumps({"context_id": "bench/cost", "agent_id": "bench", "type": 1,
                   "text": "x" * 300})  # the 300-byte append of peers.sh


def requests(port, kind, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(method, path, body=None):
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body, headers)
        r = conn.getresponse()
        data = r.read()
        if r.status >= 300:
            sys.exit(f"{method} {path}: {r.status} {data[:200]!r}")
        return data

    # What get and last100 read: 200 units, appended before the counted requests
    # in both the short and the long run, so they cancel out.
    ids = [json.loads(call("POST", "/workunit", BODY))["work_unit"]["id"]
           for _ in range(200 if kind in ("get", "last100") else 0)]
    for i in range(n):
        if kind == "append":
            call("POST", "/workunit", BODY)
        elif kind == "get":
            call("GET", "/workunit/" + ids[i % len(ids)])
        elif kind == "last100":
            call("GET", "/workunits/bench%2Fcost?limit=100&reverse=true")
        else:
            sys.exit(f"unknown kind {kind}")


def count(path):
    # callgrind's format names each function once as "(id) name" and by "(id)"
    # after that, on fn= and cfn= lines; a calls= line follows its cfn= line.
    names, instructions, allocations, callee = {}, 0, 0, None

    def name(token):
        m = re.match(r"\((\d+)\)(?: (.*))?", token)
        if not m:
            return token
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "")

    with open(path) as f:
        for line in f:
            if line.startswith("cfn="):
                callee = name(line[4:].strip())
            elif line.startswith("fn="):
                name(line[3:].strip())
                callee = None
            elif line.startswith("calls=") and callee is not None:
                if callee in ALLOCATORS:
                    allocations += int(line[6:].split()[0])
                callee = None
            elif line.startswith(("summary:", "totals:")):
                instructions = int(line.split()[1])
    if instructions == 0:
        sys.exit(f"{path}: no instruction total (not a callgrind output?)")
    print(instructions, allocations)


if __name__ == "__main__":
    if sys.argv[1] == "requests":
        requests(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "count":
        count(sys.argv[2])
    else:
        sys.exit(__doc__)
