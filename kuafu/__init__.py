"""Kuafu: message RPC addressed by tcp:// and nuwa:// URIs (issue 5, in progress).

Built so far: the pure cores -- the frame format (``kuafu.frame``) and the flow-control
windows (``kuafu.flow``). Proxies, clients, servers and the CLI come next."""
