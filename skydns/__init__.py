"""skydns: a Twisted DNS server for SkyDNS records kept in memory from etcd."""

__version__ = "0.1.0"
