"""``/explain`` and ``skydns explain``: why a name resolves as it does.

In-process first: the semantics tables' records in a RecordStore, every table row
explained, and the explanation's answer must be the answer a real query gets (the
explanation runs the same code with its steps noted, so it can never describe another
answer). Then one row per rule: which keys were read and which records were kept or left
out, and why. Last, a real skydns on a real etcd: the endpoint over HTTP, its errors, and
the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

import test_semantics as sem
from test_encoder import answer, handler_for
from skydns import explain as ex

D = "skydns.local."
P = "/skydns/local/skydns"


def explained(server, qname, qtype="A"):
    resolver = handler_for(server).resolver
    out = []
    ex.explain(resolver, dns.name.from_text(qname), dns.rdatatype.from_text(qtype)) \
        .addBoth(out.append)
    assert out and isinstance(out[0], dict), out
    json.dumps(out[0])  # the endpoint sends it as JSON
    return out[0]


def records_of(explanation, rule=None):
    """{key: (used, why)} of every record the steps read (of one rule, if given)."""
    return {r["key"]: (r["used"], r.get("why", "")) for step in explanation["steps"]
            if rule is None or step["rule"] == rule for r in step.get("records", [])}


def answer_lines(server, qname, qtype):
    """The answer section of a real query through the same resolver, as text lines."""
    resolver = handler_for(server).resolver
    result = answer(resolver.authority, qname, dns.rdatatype.from_text(qtype))
    request = dns.message.make_query(qname, qtype)
    message = resolver.from_result(request, result).message
    return dns.rcode.to_text(message.rcode()), ex.sections(message)


DOMAIN_OF = {"sky": D, "cluster": "cluster.local."}
TABLE = [c for c in sem.CASES if c.server in DOMAIN_OF and c.qtype != "ANY"
         and c.qname.lower().endswith(DOMAIN_OF[c.server])]


@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.id())
def test_the_explanation_carries_the_answer_a_query_gets(case):
    """Every semantics row: the same rcode and the same records (sorted: a row that is
    not cached is rotated at random)."""
    got = explained(case.server, case.qname, case.qtype)
    rcode, sections = answer_lines(case.server, case.qname, case.qtype)
    assert got["rcode"] == rcode == case.rcode
    for section in ("answer", "authority", "additional"):
        assert sorted(got[section]) == sorted(sections[section]), section


def test_a_subdomain_query_reads_every_key_below_the_name():
    got = explained("sky", f"co.{D}")
    assert records_of(got, "subdomain") == {
        f"{P}/co": (True, "at the name"),
        f"{P}/co/sub": (True, f"below the name (sub.co.{D})"),
        f"{P}/co/sub/deeper/x": (True, f"below the name (x.deeper.sub.co.{D})"),
    }
    assert got["steps"][0]["key"] == f"{P}/co"
    assert got["steps"][0]["records"][0]["value"] == {"host": "10.0.3.1"}


def test_underscore_records_are_left_out_of_address_answers():
    got = explained("sky", f"und.{D}")
    used = records_of(got)
    assert used[f"{P}/und/plain"][0] is True
    kept, why = used[f"{P}/und/_tcp/_x/r"]
    assert kept is False and "underscore" in why
    # ...and kept in an SRV answer of the same name
    assert records_of(explained("sky", f"und.{D}", "SRV"))[f"{P}/und/_tcp/_x/r"][0] is True


def test_an_underscore_name_answers_only_srv_and_txt():
    got = explained("sky", f"_x._tcp.und.{D}", "A")
    assert got["rcode"] == "NOERROR" and not got["answer"]
    assert [s["rule"] for s in got["steps"]][0] == "underscore"
    assert got["steps"][-1]["rule"] == "nodata"


def test_groups_say_which_group_won():
    got = explained("sky", f"grp.{D}")
    used = records_of(got)
    assert used[f"{P}/grp/a"][0] and used[f"{P}/grp/sub/b"][0] and used[f"{P}/grp/sub/d"][0]
    kept, why = used[f"{P}/grp/sub/deep/c"]
    assert kept is False and "'g2'" in why and "'g1'" in why


def test_duplicates_name_the_record_they_duplicate():
    got = explained("sky", f"dupip.{D}")
    used = records_of(got)
    kept, why = used[f"{P}/dupip/c"]
    assert used[f"{P}/dupip/b"][0] is True
    assert kept is False and "duplicate" in why and f"{P}/dupip/b" in why


def test_a_wildcard_says_what_it_matched():
    got = explained("sky", f"web.*.wild.{D}")
    step = got["steps"][0]
    assert step["rule"] == "wildcard"
    used = records_of(got)
    assert set(used) == {f"{P}/wild/east/web/1", f"{P}/wild/west/web/1"}
    assert all(kept for kept, _ in used.values())
    assert f"matched by the wildcard as web.east.wild.{D}" in used[f"{P}/wild/east/web/1"][1]


def test_a_cname_chase_is_a_step_of_its_own():
    got = explained("sky", f"alias1.cn.{D}")
    chases = [(s["from"], s["name"]) for s in got["steps"] if s["rule"] == "cname chase"]
    assert chases == [(f"alias1.cn.{D}", f"alias2.cn.{D}"), (f"alias2.cn.{D}", f"alias3.cn.{D}")]
    assert records_of(got)[f"{P}/cn/alias3"][0] is True


def test_an_external_host_is_looked_up_upstream():
    got = explained("sky", f"ext.{D}")
    step = next(s for s in got["steps"] if s["rule"] == "upstream")
    assert step["name"] == "www.example.com." and step["type"] == "A"
    assert got["cacheable"] is False
    assert any("192.0.2.10" in line for line in got["answer"])


def test_srv_targets_have_their_addresses_looked_up():
    got = explained("sky", f"_http._tcp.web.{D}", "SRV")
    targets = [s["name"] for s in got["steps"] if s["rule"] == "target addresses"]
    assert targets == [f"webhost.{D}", f"cnweb.{D}"]
    assert any("10.0.12.1" in line for line in got["additional"])


def test_nxdomain_and_nodata_say_so():
    missing = explained("sky", f"nope.{D}")
    assert missing["rcode"] == "NXDOMAIN"
    assert missing["steps"][0]["found"] is False
    assert missing["steps"][-1]["rule"] == "nxdomain"
    nodata = explained("sky", f"txt.{D}", "AAAA")
    assert nodata["rcode"] == "NOERROR" and nodata["steps"][-1]["rule"] == "nodata"


def test_cname_and_ptr_read_the_exact_key_only():
    got = explained("sky", f"ext.{D}", "CNAME")
    assert got["steps"][0]["rule"] == "exact key"
    assert records_of(got) == {f"{P}/ext": (True, "a name host")}
    ptr = explained("sky", "1.0.0.10.in-addr.arpa.", "PTR")
    assert ptr["steps"][0]["key"] == "/skydns/arpa/in-addr/10/0/0/1"
    assert ptr["answer"] == ["1.0.0.10.in-addr.arpa. 3600 IN PTR web.default.svc.cluster.local."]


def test_names_that_are_not_answered_here_say_where_they_go():
    assert "forwarded" in explained("sky", "www.example.com.")["decision"]
    assert "forwarded" in explained("sky", "9.9.0.10.in-addr.arpa.", "PTR")["decision"]
    assert explained("sky", f"a.b.{D}", "ANY")["rcode"] == "REFUSED"


def test_a_kube2sky_record_shows_its_served_fields():
    got = explained("cluster", "web.default.svc.cluster.local.")
    base = "/skydns/local/cluster/svc/default/web"
    assert records_of(got) == {
        f"{base}/{sem.L_WEB}": (True, "below the name (%s.web.default.svc.cluster.local.)"
                                % sem.L_WEB),
        f"{base}/_tcp/_http/{sem.L_WEB}": (False, "below the name (%s._http._tcp.web."
                                           "default.svc.cluster.local.); below an underscore "
                                           "label, so SRV data only (an RFC 8552 attribute "
                                           "leaf)" % sem.L_WEB)}
    # the fields served, not kube2sky's owner field
    value, = [r["value"] for r in got["steps"][0]["records"] if r["used"]]
    assert value == {"host": "10.0.0.100", "priority": 10, "weight": 10, "ttl": 30}


@pytest.mark.parametrize("name,qtype,reason", [
    ("", "A", "name is required"),
    ("a..b.", "A", "is not a domain name"),
    ("a.b.", "NOPE", "is not a DNS record type"),
])
def test_bad_requests_are_refused_with_the_reason(name, qtype, reason):
    with pytest.raises(ex.ExplainError, match=reason):
        ex.parse_request(name, qtype)


# -- a real skydns -----------------------------------------------------------------------------


@pytest.fixture
def served(etcd_client, start_skydns):
    etcd_client.put(f"{P}/web/a", json.dumps({"host": "10.9.0.1"}))
    etcd_client.put(f"{P}/web/b", json.dumps({"host": "10.9.0.2", "group": "blue"}))
    etcd_client.put(f"{P}/web/c/d", json.dumps({"host": "10.9.0.3", "group": "green"}))
    return start_skydns("-domain=skydns.local.")


def get(server, query):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/explain?"
                                    f"{urllib.parse.urlencode(query)}", timeout=5) as reply:
            return reply.status, reply.headers["content-type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def test_the_endpoint_explains_a_served_name(served):
    status, kind, body = get(served, {"name": f"web.{D}", "type": "A"})
    assert status == 200 and kind == "application/json"
    got = json.loads(body)
    assert got["rcode"] == "NOERROR"
    used = records_of(got)
    assert used[f"{P}/web/a"][0] and used[f"{P}/web/b"][0]
    assert used[f"{P}/web/c/d"][0] is False and "'green'" in used[f"{P}/web/c/d"][1]
    # the same records a DNS query gets
    reply = served.query(f"web.{D}", "A")
    assert sorted(r.address for rrset in reply.answer for r in rrset) == \
        sorted(line.split()[-1] for line in got["answer"]) == ["10.9.0.1", "10.9.0.2"]


def test_the_endpoint_refuses_bad_requests(served):
    status, _, body = get(served, {"name": f"web.{D}", "type": "BOGUS"})
    assert status == 400 and "not a DNS record type" in body
    status, _, body = get(served, {})
    assert status == 400 and "name is required" in body


def test_the_command_prints_it_readably(served):
    url = f"http://127.0.0.1:{served.http_port}"
    run = subprocess.run([sys.executable, "-m", "skydns", "explain", f"-server={url}",
                          f"web.{D}"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"web.{D} A: NOERROR")
    assert f"+ {P}/web/a " in run.stdout and f"- {P}/web/c/d " in run.stdout
    assert "group 'green'" in run.stdout
    as_json = subprocess.run([sys.executable, "-m", "skydns", "explain", f"-server={url}",
                              "-json", f"web.{D}", "TXT"], capture_output=True, text=True,
                             timeout=30)
    assert json.loads(as_json.stdout)["type"] == "TXT"
    bad = subprocess.run([sys.executable, "-m", "skydns", "explain", f"-server={url}",
                          f"web.{D}", "BOGUS"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "400" in bad.stderr and "BOGUS" in bad.stderr
