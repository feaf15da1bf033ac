package flow_test

import (
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane/flow"
)

// testCatalog knows the capture world: A and B are pods web/a and db/b,
// the remote address a pod of another node; identities have labels.
func testCatalog() *flow.Catalog {
	c := flow.NewCatalog(flow.CatalogConfig{Now: func() time.Time { return time.Unix(0, 0) }})
	c.SetEndpoint(addrA, flow.EndpointInfo{ID: 1, Namespace: "web", PodName: "a-7d9f"})
	c.SetEndpoint(addrA6, flow.EndpointInfo{ID: 1, Namespace: "web", PodName: "a-7d9f"})
	c.SetEndpoint(addrB, flow.EndpointInfo{ID: 2, Namespace: "db", PodName: "b-0"})
	c.SetEndpoint(addrB6, flow.EndpointInfo{ID: 2, Namespace: "db", PodName: "b-0"})
	c.SetEndpoint(remote, flow.EndpointInfo{Namespace: "web", PodName: "remote-1"})
	c.SetIdentity(idA, []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=web"})
	c.SetIdentity(idB, []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=db", "k8s:tier=backend"})
	c.SetIdentity(idRemote, []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=web"})
	c.SetService(flow.Frontend{Addr: netip.MustParseAddr("10.0.0.2"), Port: 8080, Proto: flow.ProtoTCP},
		flow.Service{Name: "db", Namespace: "db"})
	c.SetInterface(1, "lo")
	return c
}
