"""Kuafu's I/O: connections, the service server, the per-node proxy and event loops."""
