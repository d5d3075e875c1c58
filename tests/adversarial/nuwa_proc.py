"""One Nuwa replica as its own OS process, for fault tests that pause or kill a real process.

    python -m tests.adversarial.nuwa_proc

reads one JSON line on stdin, ``{"id", "voters", "dir", "secret" (hex), "port"}``; starts a
``ReplicaServer`` on 127.0.0.1 and prints ``{"port", "pid"}``; reads a second line,
``{"peers": {id: [host, port]}}``, and connects to them. From then on it writes its status
(role, term, leader, commit, applied) to ``<dir>/status.json`` every ``STATUS_EVERY_S``, and
stops when stdin closes. The secret travels on stdin, never on the command line.

Fault injection (tests only): while ``<dir>/deaf`` exists, the replica drops every message
its peers send (it still sends its own) -- a one-way partition, checked per message, so a
replica resumed from SIGSTOP with the file in place hears nothing of a newer term.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from nuwa.io.server import ReplicaServer, ServerConfig

STATUS_EVERY_S = 0.02


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cfg = json.loads(await reader.readline())
    server = ReplicaServer(cfg["id"], cfg["voters"], cfg["dir"], ServerConfig(),
                           peer_secret=bytes.fromhex(cfg["secret"]))
    deaf = os.path.join(cfg["dir"], "deaf")
    hear = server.transport.on_peer_message
    server.transport.on_peer_message = lambda peer, payload: (
        None if os.path.exists(deaf) else hear(peer, payload))
    port = await server.start("127.0.0.1", cfg.get("port", 0))
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    peers = json.loads(await reader.readline())["peers"]
    server.set_peers({int(k): tuple(v) for k, v in peers.items()})
    path = os.path.join(cfg["dir"], "status.json")

    async def report() -> None:
        while True:
            st = server.node.status()
            doc = {"role": st["role"].name, "term": st["term"], "leader": st["leader"],
                   "commit": st["commit"], "applied": server.applied, "stopped": server.stopped}
            with open(path + ".tmp", "w") as f:
                json.dump(doc, f)
            os.replace(path + ".tmp", path)
            await asyncio.sleep(STATUS_EVERY_S)

    task = loop.create_task(report())
    await reader.read()  # until stdin closes
    task.cancel()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
