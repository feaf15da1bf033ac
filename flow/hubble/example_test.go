package hubble_test

import (
	"context"
	"net"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/flow/hubble"
)

// A node's Hubble API: the datapath's records, decoded and enriched by a
// flow.Observer, served to `hubble observe --server 127.0.0.1:4245`.
func Example() {
	d, err := datapath.New(datapath.Config{})
	if err != nil {
		panic(err)
	}
	defer d.Close()
	events, err := d.NewEventReader()
	if err != nil {
		panic(err)
	}
	defer events.Close() // also ends obs.Run

	catalog := flow.NewCatalog(flow.CatalogConfig{}) // kept up to date by the agent
	obs, err := flow.New(flow.Config{
		Source: events, KernelLost: d.EventsLost, NodeName: "node-a", Catalog: catalog,
	})
	if err != nil {
		panic(err)
	}
	go obs.Run(context.Background())

	srv, err := hubble.New(hubble.Config{Flows: obs})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:4245")
	if err != nil {
		panic(err)
	}
	if err := srv.Serve(l); err != nil {
		panic(err)
	}
}
