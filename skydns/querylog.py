"""-log-queries: one line per answered query, in the common log format of CoreDNS's
``log`` plugin, so the tools that read CoreDNS's logs read these::

    {remote}:{port} - {id} "{type} {class} {name} {proto} {size} {do} {bufsize}" {rcode} {flags} {rsize} {duration}

e.g. ``10.244.1.7:41234 - 3712 "A IN web.demo.svc.cluster.local. udp 60 false 1232"
NOERROR qr,aa,rd,ra 92 0.000031s``. At most ``rate`` lines a second: a flood must not
turn into a flood of log lines (and the CPU to write them); the lines left out are
counted and said once a second. The query and reply are parsed only for lines that are
written (at most ``rate`` a second), and nothing is done at all when the log is off:
every caller holds None instead of a QueryLog.
"""

from __future__ import annotations

import logging
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

log = logging.getLogger("skydns.query")

_FLAGS = (("qr", dns.flags.QR), ("aa", dns.flags.AA), ("tc", dns.flags.TC),
          ("rd", dns.flags.RD), ("ra", dns.flags.RA), ("ad", dns.flags.AD),
          ("cd", dns.flags.CD))


def line(addr, proto: str, query: bytes, reply: bytes, seconds: float) -> str:
    """One query's line (fields it cannot read from the bytes are ``-``)."""
    host, port = addr[0], addr[1]
    remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        request = dns.message.from_wire(query, ignore_trailing=True)
        question = request.question[0]
        asked = (f"{dns.rdatatype.to_text(question.rdtype)} "
                 f"{dns.rdataclass.to_text(question.rdclass)} {question.name}")
        do = "true" if request.ednsflags & dns.flags.DO else "false"
        bufsize = request.payload if request.edns >= 0 else 512
        qid = request.id
    except Exception:
        asked, do, bufsize = "- - -", "-", "-"
        qid = int.from_bytes(query[:2], "big") if len(query) >= 2 else "-"
    if len(reply) >= 4:
        flags = reply[2] << 8 | reply[3]
        rcode = dns.rcode.to_text(flags & 0x0F)
        rflags = ",".join(name for name, bit in _FLAGS if flags & bit) or "-"
    else:
        rcode, rflags = "-", "-"
    return (f'{remote} - {qid} "{asked} {proto} {len(query)} {do} {bufsize}" {rcode} '
            f"{rflags} {len(reply)} {seconds:.6f}s")


class QueryLog:
    def __init__(self, rate: int, clock=time.monotonic):
        self.rate = rate
        self.clock = clock
        self.window = 0.0      # the second the counts are for
        self.written = 0
        self.left_out = 0

    def record(self, addr, proto: str, query: bytes, reply: bytes, seconds: float):
        now = self.clock()
        if now - self.window >= 1.0:
            if self.left_out:
                log.info("%d queries not logged in the last second (-log-queries=%d)",
                         self.left_out, self.rate)
            self.window, self.written, self.left_out = now, 0, 0
        if self.written >= self.rate:
            self.left_out += 1
            return
        self.written += 1
        log.info("%s", line(addr, proto, query, reply, seconds))
