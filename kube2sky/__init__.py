"""kube2sky: Kubernetes Services, Endpoints/EndpointSlices and Pods -> SkyDNS records in etcd."""
