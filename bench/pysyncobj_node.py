"""One pysyncobj node for the Nuwa benchmark: a replicated dict plus a tiny TCP protocol.

pysyncobj is a library with no client protocol, so each node gets this wrapper: one JSON
line per request (``{"op": "put"|"get"|"status", "k", "v"}``), one JSON line per answer.
A put waits until the command is applied (``sync=True``). A get reads the node's local copy,
because pysyncobj has no linearizable read. Operations journal to disk (mmap, flushed per
record).

    python -m bench.pysyncobj_node SELF_PORT CLIENT_PORT PEER_PORT... DATA_DIR
"""

from __future__ import annotations

import json
import os
import socketserver
import sys

from pysyncobj import SyncObj, SyncObjConf, replicated

PUT_TIMEOUT_S = 5.0


class KV(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], data_dir: str):
        # Batching off: pysyncobj documents it as what improves single-request speed.
        conf = SyncObjConf(journalFile=os.path.join(data_dir, "journal"), appendEntriesUseBatch=False,
                           fullDumpFile=os.path.join(data_dir, "dump"))
        super().__init__(self_addr, partners, conf)
        self.data: dict[str, str] = {}

    @replicated
    def put(self, k: str, v: str) -> None:
        self.data[k] = v


def main() -> None:
    self_port, client_port = int(sys.argv[1]), int(sys.argv[2])
    peers, data_dir = sys.argv[3:-1], sys.argv[-1]
    os.makedirs(data_dir, exist_ok=True)
    kv = KV(f"127.0.0.1:{self_port}", [f"127.0.0.1:{p}" for p in peers], data_dir)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                req = json.loads(line)
                try:
                    if req["op"] == "put":
                        kv.put(req["k"], req["v"], sync=True, timeout=PUT_TIMEOUT_S)
                        out = {"ok": True}
                    elif req["op"] == "get":
                        out = {"ok": kv.data.get(req["k"])}
                    else:
                        st = kv.getStatus()
                        out = {"ok": {"leader": str(st.get("leader")), "self": str(st.get("self"))}}
                except Exception as e:
                    out = {"error": f"{type(e).__name__}: {e}"}
                self.wfile.write((json.dumps(out) + "\n").encode())
                self.wfile.flush()

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", client_port), Handler) as srv:
        srv.daemon_threads = True
        srv.serve_forever()


if __name__ == "__main__":
    main()
