"""The kernel fast paths: the router's and the peer's common cases as eBPF programs (restricted C).

    router.bpf.c   the router's two tc programs: peers -> router on the uplink's
                   ingress, router -> peers on the TUN device's egress
    peer.bpf.c     the peer's: router -> peer on the uplink, peer -> router on the TUN device
    common.bpf.h   what both share (counters, checksums, address fields, the two moves)
    build.py       compiles one with clang into a cache, once per source and compiler
    libbpf.py      the few libbpf calls needed, through ctypes
    loader.py      RouterFastPath, PeerFastPath: load, configure the maps, attach (tcx links), counters
    control.py     --fast-path auto/on/off for the daemons; PeerFollower keeps the peer's current

The Python daemons stay the control plane and the slow path: every packet the
programs are not certain about goes on to the socket or the TUN read as before.
"""
