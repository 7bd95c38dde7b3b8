"""The kernel fast path: the router's common cases as eBPF programs (restricted C).

    sixbed4.bpf.c  the two tc programs: peers -> router on the uplink's ingress,
                   router -> peers on the TUN device's egress
    build.py       compiles it with clang into a cache, once per source and compiler
    libbpf.py      the few libbpf calls needed, through ctypes
    loader.py      FastPath: load, configure the maps, attach (tcx links), counters
    control.py     --fast-path auto/on/off for the router daemon

The Python router stays the control plane and the slow path: every packet the
programs are not certain about goes on to the socket or the TUN read as before.
"""
