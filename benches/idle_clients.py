#!/usr/bin/env python3
"""Open N keep-alive client connections to 127.0.0.1:PORT, send one sticky
GET on each, read the whole answer, and keep every connection open until
stdin closes (or HOLD seconds pass). Prints "ready N ok M failed" once all
answers are in, so the caller can read the balancer's RSS while N idle
clients sit on it. Bounded: connects in batches with a timeout each.

Usage: idle_clients.py PORT N [HOLD_SECONDS]
"""
import asyncio
import resource
import sys

PORT = int(sys.argv[1])
N = int(sys.argv[2])
HOLD = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
STEP_TIMEOUT = 10.0
BATCH = 500


async def one(i, conns):
    route = "tomcat1" if i % 2 else "tomcat2"
    req = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Cookie: JSESSIONID={i:032x}.{route}\r\n\r\n"
    ).encode()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT), STEP_TIMEOUT)
        w.write(req)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await asyncio.wait_for(r.readexactly(length), STEP_TIMEOUT)
        ok = head.startswith(b"HTTP/1.1 200")
        conns.append(w)
        return ok
    except Exception:
        return False


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = []
    ok = 0
    for start in range(0, N, BATCH):
        results = await asyncio.gather(*(one(i, conns) for i in range(start, min(N, start + BATCH))))
        ok += sum(results)
    print(f"ready {len(conns)} ok {ok} failed {N - ok}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), HOLD)
    except asyncio.TimeoutError:
        pass
    for w in conns:
        w.close()


asyncio.run(main())
