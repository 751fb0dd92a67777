import time
def test_smoke(etcd_client, start_skydns, upstream):
    t=time.time()
    s = start_skydns(upstream=upstream.address)
    print("start", time.time()-t)
    etcd_client.put("/skydns/local/skydns/a", '{"host":"10.0.0.1"}')
    time.sleep(0.3)
    print(s.query("a.skydns.local."))
    print(s.query("www.example.com."))
    print(s.healthz())
    print(s.output())
