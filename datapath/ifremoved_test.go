package datapath

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedInterfaceRemovedUnderDatapath deletes pod A's host-side
// interface behind a running Datapath's back, as a container runtime that
// tears down a pod first does: B keeps serving under its policy, A's
// Delete succeeds and removes A's state (addresses, policy map, pins),
// and a new endpoint with A's ID and addresses can be added and works.
func TestPrivilegedInterfaceRemovedUnderDatapath(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			w := newRestartWorld(t, mode)
			d := openPinned(t, w.config())
			a, _, err := installPods(d, nsPath(w.podA), nsPath(w.podB))
			if err != nil {
				t.Fatal(err)
			}
			w.expect(t, allowedPort, true)

			nl := w.node.Netlink(t)
			l, err := nl.LinkByName(a.HostIfName())
			if err != nil {
				t.Fatal(err)
			}
			if err := nl.LinkDel(l); err != nil {
				t.Fatal(err)
			}
			if _, err := dial(w.podA, "tcp", netip.AddrPortFrom(addrB, allowedPort).String(), 300*time.Millisecond); err == nil {
				t.Fatal("A reached B without its interface")
			}

			if err := a.Delete(); err != nil {
				t.Fatalf("Delete of an endpoint whose interface is gone: %v", err)
			}
			var info endpointInfo
			if err := d.maps.endpoints.Lookup(endpointKeyFor(addrA), &info); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("A's address after Delete: %+v, %v", info, err)
			}
			var inner *ebpf.Map
			if err := d.maps.policy.Lookup(uint32(1), &inner); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("A's policy map after Delete: %v", err)
			}

			a2, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(w.podA)})
			if err != nil {
				t.Fatalf("re-adding A: %v", err)
			}
			if err := a2.Policy().Update(mapstate.Key{Identity: idB, Direction: mapstate.Egress}, allow); err != nil {
				t.Fatal(err)
			}
			w.expect(t, allowedPort, true)
			w.expect(t, deniedPort, false)
		})
	}
}
