package testutils

import (
	"testing"

	"github.com/vishvananda/netlink"
)

// Veth is one veth pair whose ends live in two namespaces.
type Veth struct {
	// Name and Index identify the end in NS.
	Name  string
	Index int
	NS    *NetNS
	// PeerName and PeerIndex identify the end in PeerNS.
	PeerName  string
	PeerIndex int
	PeerNS    *NetNS
}

// NewVeth creates a veth pair with one end, name, in ns and the other,
// peerName, in peerNS, and sets both up. Both ends are deleted by
// tb.Cleanup (and with their namespace at the latest).
func NewVeth(tb testing.TB, ns *NetNS, name string, peerNS *NetNS, peerName string) *Veth {
	tb.Helper()
	h := ns.Netlink(tb)
	link := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		PeerName:  peerName,
		// Create the peer straight in its namespace, so that no interface
		// ever appears in another namespace, not even for a moment.
		PeerNamespace: netlink.NsFd(peerNS.FD()),
	}
	if err := h.LinkAdd(link); err != nil {
		tb.Fatalf("add veth %s/%s: %v", name, peerName, err)
	}
	tb.Cleanup(func() {
		if l, err := h.LinkByName(name); err == nil {
			_ = h.LinkDel(l)
		}
	})

	local, err := h.LinkByName(name)
	if err != nil {
		tb.Fatalf("veth %s: %v", name, err)
	}
	if err := h.LinkSetUp(local); err != nil {
		tb.Fatalf("set %s up: %v", name, err)
	}
	ph := peerNS.Netlink(tb)
	peer, err := ph.LinkByName(peerName)
	if err != nil {
		tb.Fatalf("veth peer %s: %v", peerName, err)
	}
	if err := ph.LinkSetUp(peer); err != nil {
		tb.Fatalf("set %s up: %v", peerName, err)
	}
	return &Veth{
		Name: name, Index: local.Attrs().Index, NS: ns,
		PeerName: peerName, PeerIndex: peer.Attrs().Index, PeerNS: peerNS,
	}
}
