"""Why a name resolves as it does: the query semantics run once more with every step
written down (``GET /explain?name=...&type=...`` on the ops port, ``skydns explain``).

The answer comes from the same code as a real query: ``ExplainingAuthority`` is the
``Authority`` with its lookups overridden to note, for each one, the etcd keys it read,
the rule that applied (the name's own key, a subdomain, a wildcard, an underscore label,
a group, a duplicate, a CNAME chase, an upstream lookup) and whether each record made it
into the answer. Nothing of this runs for ordinary queries.

Values are shown as the store holds them: the SkyDNS fields it serves, without the fields
it ignores (kube2sky's ``owner``, for instance).
"""

from __future__ import annotations

import json
import sys

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet import defer

from .authority import (WILDCARDS, Authority, NameNotFound, Result, attribute_name,
                        labels_of, name_text)
from .record import labels_to_name
from .resolver import REVERSE_ZONES

T = dns.rdatatype
FIELDS = ("host", "port", "priority", "weight", "text", "mail", "ttl", "targetstrip",
          "group")


class ExplainError(ValueError):
    """A request /explain cannot answer (a bad name or type); the message says why."""


def record_value(record) -> dict:
    """A record's SkyDNS fields that are set, in the order of the format's documentation."""
    value = {field: getattr(record, field) for field in FIELDS if getattr(record, field)}
    return value or {"host": ""}


class ExplainingAuthority(Authority):
    """The query semantics with their steps noted in ``steps`` (a list of dicts)."""

    def __init__(self, authority: Authority, steps: list):
        super().__init__(authority.store, authority.config, authority.upstream,
                         authority.clock)
        self.steps = steps

    def lookup(self, labels, result, srv_data, grouped):
        try:
            chosen = super().lookup(labels, result, srv_data, grouped)
        except NameNotFound:
            self.steps.append(self.lookup_step(labels, srv_data, None))
            raise
        self.steps.append(self.lookup_step(labels, srv_data, chosen))
        return chosen

    def lookup_step(self, labels, srv_data, chosen) -> dict:
        """What one lookup of the records at and below ``labels`` read, and why each
        record was kept or left out."""
        wildcard = any(label in WILDCARDS for label in labels)
        step = {"rule": "wildcard" if wildcard else "subdomain", "name": labels_to_name(labels),
                "key": self.store.key_of(labels)}
        if chosen is None:
            step["found"] = False
            step["why"] = "no key at or below this name"
            return step
        step["found"] = True
        used = {record.key for record in chosen}
        ungrouped = {record.key: record for record in
                     super().lookup(labels, Result(), srv_data, grouped=False)}
        kept_identity = {record.identity(): record.key for record in ungrouped.values()}
        chosen_group = next((record.group for record in chosen if record.group), "")
        out = []
        for found_labels, node in self.store.match(labels, WILDCARDS):
            for rel, record in self.store.subtree(node, found_labels):
                entry = {"key": record.key, "value": record_value(record)}
                if record.lease:
                    entry["lease_seconds_left"] = self.store.remaining_lease(record.lease)
                where = ("at the name" if not rel else
                         f"below the name ({labels_to_name(found_labels + rel)})")
                if wildcard:
                    where += f", matched by the wildcard as {labels_to_name(found_labels)}"
                if record.key in used:
                    entry.update(used=True, why=where)
                elif not srv_data and attribute_name(rel):
                    entry.update(used=False, why=where + "; below an underscore label, so "
                                 "SRV data only (an RFC 8552 attribute leaf)")
                elif record.key in ungrouped:
                    entry.update(used=False, why=where + f"; in group {record.group!r}, and "
                                 f"the shallowest grouped record's group is {chosen_group!r}")
                else:
                    twin = kept_identity.get(record.identity(), "another key")
                    entry.update(used=False, why=where + "; a duplicate (same host, port, "
                                 f"priority, weight and text) of {twin}")
                out.append(entry)
        step["records"] = out
        return step

    def address_records(self, owner, lookup, labels, qtype, result, previous):
        if previous:
            self.steps.append({"rule": "cname chase", "from": previous[-1], "name": owner,
                               "why": f"{previous[-1]} has host {owner}, a name in the "
                                      "domain: its addresses are looked up here"})
        return (yield from super().address_records(owner, lookup, labels, qtype, result,
                                                   previous))

    def target_addresses(self, target, result):
        self.steps.append({"rule": "target addresses", "name": target,
                           "why": "the addresses of an SRV or MX target go in the "
                                  "additional section"})
        return (yield from super().target_addresses(target, result))

    def lookup_upstream(self, name, qtype, result):
        step = {"rule": "upstream", "name": name, "type": T.to_text(qtype),
                "why": "a host outside the domain: asked upstream, not cached with the "
                       "answer"}
        self.steps.append(step)
        found = yield from super().lookup_upstream(name, qtype, result)
        step["answer"] = ([f"{o} {ttl} {T.to_text(t)} {d if isinstance(d, str) else ''}"
                           .rstrip() for o, t, ttl, d in found] if found is not None
                          else "the lookup failed")
        return found

    def cname_records(self, qname, labels, result):
        self.exact_step(qname, labels, "a CNAME query reads the name's own key only")
        return super().cname_records(qname, labels, result)

    def ptr_record(self, qname, labels, result):
        self.exact_step(qname, labels, "a reverse name reads its own key only; its host is "
                                       "the PTR target")
        return super().ptr_record(qname, labels, result)

    def exact_step(self, qname, labels, why):
        """A lookup of one key, whose record answers only with a name host."""
        node = self.store.node(labels)
        step = {"rule": "exact key", "name": qname, "key": self.store.key_of(labels),
                "why": why, "found": node is not None}
        record = self.store.record_at(node, labels) if node else None
        if record is not None:
            used = record.target is not None
            step["records"] = [{"key": record.key, "value": record_value(record),
                                "used": used,
                                "why": "a name host" if used else "not a name host"}]
        self.steps.append(step)


def parse_request(name: str, type_text: str):
    """(dnspython Name, rdtype) of an /explain request, or ExplainError."""
    if not name:
        raise ExplainError("name is required: /explain?name=NAME&type=TYPE")
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ExplainError(f"name {name!r} is not a domain name: {exc}") from None
    try:
        qtype = T.from_text((type_text or "A").upper())
    except dns.exception.DNSException:
        raise ExplainError(f"type {type_text!r} is not a DNS record type") from None
    return qname, qtype


def sections(response) -> dict:
    return {section: [line for rrset in getattr(response, section)
                      for line in rrset.to_text().splitlines()]
            for section in ("answer", "authority", "additional")}


@defer.inlineCallbacks
def explain(resolver, qname: dns.name.Name, qtype: int):
    """A Deferred firing with the explanation (a JSON-ready dict) of (qname, qtype), as
    the resolver would decide it for a query in class IN."""
    config, store = resolver.config, resolver.store
    out = {"name": qname.to_text().lower(), "type": T.to_text(qtype)}
    steps = out["steps"] = []
    request = dns.message.make_query(qname, qtype)
    if qtype == T.ANY:
        out.update(rcode="REFUSED", decision="ANY queries are refused, as SkyDNS does")
        return out
    stub = resolver.stub_for(qname) if config.stubzones else None
    if stub is not None:
        out.update(decision=f"forwarded to the stub zone {stub[0]}'s servers "
                            f"{', '.join(f'{h}:{p}' for h, p in stub[1])} (records under "
                            f"stub.dns.{config.domain_text})")
        return out
    reverse = qtype == T.PTR and any(qname.is_subdomain(z) for z in REVERSE_ZONES)
    if not qname.is_subdomain(config.domain_name) and not reverse:
        out.update(decision=f"outside {config.domain_text}: forwarded to "
                            f"{', '.join(config.nameservers) or 'no upstream (SERVFAIL)'}")
        return out
    if not store.loaded:
        out.update(rcode="SERVFAIL", decision="the records are not loaded from etcd yet: "
                                              "SERVFAIL, never a false NXDOMAIN")
        return out
    authority = ExplainingAuthority(resolver.authority, steps)
    text, labels = name_text(qname), labels_of(qname)
    if reverse:
        result = authority.ptr_record(text, labels, Result())
        if result is None:
            out.update(decision="reverse name without a PTR record here: forwarded to "
                                f"{', '.join(config.nameservers) or 'no upstream'}")
            return out
        out["decision"] = "a reverse name with a PTR record under /skydns/arpa"
    else:
        out["decision"] = f"in {config.domain_text}: answered from the records in etcd"
        if attribute_name(labels) and qtype not in (T.SRV, T.TXT):
            steps.append({"rule": "underscore", "name": text,
                          "why": "a name with an underscore label answers only SRV and "
                                 "TXT: any other type is NODATA"})
        if config.local and text == config.local_dns_text:
            steps.append({"rule": "local", "name": text,
                          "why": f"-local: answered as {config.local}"})
        result = yield authority.query(text, labels, qtype)
        if result.rcode == dns.rcode.NXDOMAIN:
            steps.append({"rule": "nxdomain", "name": text,
                          "why": "no key exists at or below the name"})
        elif not result.answer:
            steps.append({"rule": "nodata", "name": text,
                          "why": f"the name exists but has no {T.to_text(qtype)} data"})
    response = resolver.from_result(request, result).message
    out["rcode"] = dns.rcode.to_text(response.rcode())
    out.update(sections(response))
    out["cacheable"] = result.cacheable
    return out


def to_json(explanation: dict) -> bytes:
    return (json.dumps(explanation, indent=2) + "\n").encode()


def readable(explanation: dict) -> str:
    """The explanation as text for a terminal (``skydns explain``)."""
    lines = [f"{explanation['name']} {explanation['type']}: "
             f"{explanation.get('rcode', 'forwarded')}",
             f"  {explanation.get('decision', '')}"]
    for step in explanation.get("steps", []):
        head = f"* {step['rule']}: {step.get('name', '')}"
        if "key" in step:
            head += f"  (key {step['key']})"
        lines.append(head)
        if step.get("why"):
            lines.append(f"    {step['why']}")
        for record in step.get("records", []):
            mark = "+" if record.get("used") else "-"
            lines.append(f"    {mark} {record['key']} {json.dumps(record['value'])}")
            if record.get("why"):
                lines.append(f"        {record['why']}")
        if "answer" in step:
            lines.append(f"    upstream: {step['answer']}")
    for section in ("answer", "authority", "additional"):
        if explanation.get(section):
            lines.append(f"{section}:")
            lines.extend(f"  {line}" for line in explanation[section])
    return "\n".join(lines) + "\n"


def command(argv) -> int:
    """``skydns explain [-server URL] [-json] NAME [TYPE]``: ask a running skydns's
    /explain and print the answer readably (exit 1 when it cannot be asked)."""
    import argparse
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    port = os.environ.get("SKYDNS_HEALTHZ_PORT") or "8080"
    parser = argparse.ArgumentParser(prog="skydns explain", description=(
        "Why a name resolves as it does: the etcd keys and values a running skydns "
        "answers it from, and the rule applied to each."))
    parser.add_argument("-server", default=f"http://127.0.0.1:{port}",
                        help="the skydns ops endpoint (-healthz-port; default %(default)s)")
    parser.add_argument("-json", action="store_true", help="print the JSON as it came")
    parser.add_argument("name")
    parser.add_argument("type", nargs="?", default="A")
    args = parser.parse_args(argv)
    query = urllib.parse.urlencode({"name": args.name, "type": args.type})
    url = f"{args.server.rstrip('/')}/explain?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read().decode()
    except urllib.error.HTTPError as exc:
        print(f"skydns explain: {exc.code}: {exc.read().decode().strip()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"skydns explain: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(body if args.json else readable(json.loads(body)))
    return 0
