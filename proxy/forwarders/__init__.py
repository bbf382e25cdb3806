"""A proxy's forwarders, one per aggregator: the bounded queue and failure handling they
share (base), packed datagrams (udp) and one persistent connection (tcp)."""
