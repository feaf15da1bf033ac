package datapath_test

import (
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// Run a crafted packet through an endpoint's program with
// BPF_PROG_TEST_RUN: no interface, no namespace, just the kernel's verdict.
func ExampleEndpoint_TestRun() {
	dp, err := datapath.New(datapath.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()

	// Cluster-scoped identities of cluster 1 (identity.ClusterScopedID).
	const webID, dbID identity.ID = 1<<16 | 1000, 1<<16 | 2000
	web, err := dp.AddEndpoint(datapath.EndpointConfig{
		ID: 1, Identity: webID, IPv4: netip.MustParseAddr("10.0.0.1"), Detached: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	// 192.0.2.0/24 is the database, identity dbID; web may reach it on 5432.
	if err := dp.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: dbID}); err != nil {
		log.Fatal(err)
	}
	if err := web.Policy().Update(mapstate.Key{Identity: dbID, Direction: mapstate.Egress, Protocol: nodeplane.ProtoTCP, Port: 5432, PortPrefixLen: 16},
		mapstate.Entry{}); err != nil {
		log.Fatal(err)
	}

	for _, port := range []uint16{5432, 22} {
		pkt, err := datapath.TestPacket{
			Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("192.0.2.7"),
			Proto: nodeplane.ProtoTCP, SrcPort: 40000, DstPort: port, TCPFlags: datapath.TCPSyn,
		}.Bytes()
		if err != nil {
			log.Fatal(err)
		}
		v, _, err := web.TestRun(datapath.FromEndpoint, pkt)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("port %d: %s %v (identity %d -> %d)\n", port, v.Action, v.Reason, v.SrcIdentity, v.DstIdentity)
	}
}

// Plumb two workloads and read the datapath's drop events. Without
// BPFFSDir the endpoints go when the Datapath closes.
func ExampleDatapath_AddEndpoint() {
	dp, err := datapath.New(datapath.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()

	// Cluster-scoped identities of cluster 1 (identity.ClusterScopedID).
	const webID, dbID identity.ID = 1<<16 | 1000, 1<<16 | 2000
	for _, w := range []struct {
		id    datapath.EndpointID
		ident identity.ID
		addr  string
		netns string
	}{
		{1, webID, "10.0.0.1", "/var/run/netns/web"},
		{2, dbID, "10.0.0.2", "/var/run/netns/db"},
	} {
		if _, err := dp.AddEndpoint(datapath.EndpointConfig{
			ID: w.id, Identity: w.ident, IPv4: netip.MustParseAddr(w.addr), NetNS: w.netns,
		}); err != nil {
			log.Fatal(err)
		}
	}
	web, _ := dp.Endpoint(1)
	db, _ := dp.Endpoint(2)
	// web -> db on 5432, both ways of the policy.
	if err := web.Policy().Update(mapstate.Key{Identity: dbID, Direction: mapstate.Egress, Protocol: nodeplane.ProtoTCP, Port: 5432, PortPrefixLen: 16}, mapstate.Entry{}); err != nil {
		log.Fatal(err)
	}
	if err := db.Policy().Update(mapstate.Key{Identity: webID, Direction: mapstate.Ingress, Protocol: nodeplane.ProtoTCP, Port: 5432, PortPrefixLen: 16}, mapstate.Entry{}); err != nil {
		log.Fatal(err)
	}

	events, err := dp.NewEventReader()
	if err != nil {
		log.Fatal(err)
	}
	defer events.Close()
	events.SetDeadline(time.Now().Add(10 * time.Second))
	for {
		ev, err := events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		if err != nil {
			log.Fatal(err)
		}
		if drop, ok := ev.(*datapath.DropEvent); ok {
			fmt.Printf("%v: %v, identity %d -> %d\n", drop.Tuple, drop.Reason, drop.SrcIdentity, drop.DstIdentity)
		}
	}
}

// A node agent that survives its own restarts: its endpoints stay
// installed, and enforced, while it is down, and the next run adopts them
// with its own programs. It adds only the pods it does not find, and
// releases the addresses of those that went away meanwhile.
func ExampleNew_restart() {
	dp, err := datapath.New(datapath.Config{BPFFSDir: "/sys/fs/bpf/nodeplane"})
	if err != nil {
		log.Fatal(err)
	}
	// Close leaves every endpoint installed for the next run.
	defer dp.Close()

	restored := dp.Restored()
	for _, gone := range restored.Removed {
		fmt.Printf("endpoint %d (%v) removed: %s\n", gone.ID, gone.IPv4, gone.Reason)
		// Release gone.IPv4 and gone.IPv6 to the address pool here.
	}
	for _, fixed := range restored.Repaired {
		// A repaired policy map is empty, denying: write it again.
		fmt.Printf("endpoint %d repaired: %s\n", fixed.ID, fixed.Reason)
	}

	// Cluster-scoped identities of cluster 1 (identity.ClusterScopedID).
	const webID, dbID identity.ID = 1<<16 | 1000, 1<<16 | 2000
	pods := []datapath.EndpointConfig{
		{ID: 1, Identity: webID, IPv4: netip.MustParseAddr("10.0.0.1"), NetNS: "/var/run/netns/web"},
		{ID: 2, Identity: dbID, IPv4: netip.MustParseAddr("10.0.0.2"), NetNS: "/var/run/netns/db"},
	}
	for _, pod := range pods {
		ep, ok := dp.Endpoint(pod.ID)
		if !ok {
			if ep, err = dp.AddEndpoint(pod); err != nil {
				log.Fatal(err)
			}
		}
		// Adopted or new, the endpoint's policy is the agent's to (re)write.
		if err := ep.Policy().Update(mapstate.Key{Direction: mapstate.Egress}, mapstate.Entry{}); err != nil {
			log.Fatal(err)
		}
	}
}
