"""Several routers behind one anycast address, announced by a BGP daemon (BIRD).

Nothing here speaks BGP.  The router puts what it announces (the /32 of -l and
the served /64) as routes through its TUN device into a kernel table of their
own while it serves (`health`); BIRD learns that table and announces it.  The
kernel deletes the routes with the device, so a crashed router is withdrawn
without anyone's help.  `birdconf` writes BIRD's configuration for a router host
from the router's own options, `agreement` names the options every router
must share, `bird` runs BIRD for the lab, `cli` is `6bed4 anycast`.
"""
