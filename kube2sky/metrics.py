"""kube2sky's Prometheus metrics: who leads and what the writer did, read from the
running objects when /metrics is scraped (a prometheus_client collector, as skydns's)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry


class AppCollector:
    """Metric families of a kube2sky ``main.App``; its parts may not exist yet."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        app = self.app
        election, writer, controller = app.election, app.writer, app.controller
        if election is not None:
            leader = GaugeMetricFamily("kube2sky_leader", "1 while this replica leads "
                                       "(writes etcd)", labels=["identity"])
            leader.add_metric([election.identity], int(election.is_leader))
            yield leader
            yield CounterMetricFamily("kube2sky_leader_transitions", "times this replica "
                                      "was elected", value=election.transitions)
        yield GaugeMetricFamily("kube2sky_ready", "1 while /readiness is 200",
                                value=int(app.readiness()[0]))
        if app.reflectors:
            lists = CounterMetricFamily("kube2sky_lists", "full lists of a kind: the first, "
                                        "and one after each expired or broken watch",
                                        labels=["kind"])
            for reflector in app.reflectors:
                lists.add_metric([reflector.kind], reflector.relists)
            yield lists
        if writer is not None:
            for name, helptext, value in (
                    ("kube2sky_etcd_keys_written", "keys put into etcd", writer.written),
                    ("kube2sky_etcd_keys_deleted", "keys deleted from etcd", writer.deleted),
                    ("kube2sky_etcd_writes_fenced", "transactions etcd refused because "
                     "another replica led", writer.fenced),
                    ("kube2sky_changes_discarded", "changes not written because this "
                     "replica did not lead", writer.discarded)):
                yield CounterMetricFamily(name, helptext, value=value)
            yield GaugeMetricFamily("kube2sky_etcd_keys_pending", "changes not written yet",
                                    value=writer.pending())
        if controller is not None:
            yield GaugeMetricFamily("kube2sky_desired_keys", "keys the API's objects make",
                                    value=len(controller.state.index))
            yield GaugeMetricFamily("kube2sky_queue_length", "list pages, watch events and "
                                    "calls waiting for the sync thread",
                                    value=controller.queue.qsize())
            yield CounterMetricFamily("kube2sky_watch_events_coalesced", "watch events that "
                                      "replaced a waiting event of the same object (the sync "
                                      "thread was behind)", value=controller.queue.coalesced)


def exposition(app) -> str:
    """The Prometheus text of ``app``'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppCollector(app))
    return generate_latest(registry).decode()
