"""`6bed4 host-setup` (plan/apply/undo) and the proxy ND responder: the IO around core.hostplan and core.proxynd."""
