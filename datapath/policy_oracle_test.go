package datapath

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedPolicyMatchesLookupPolicy checks that the kernel decides
// exactly as LookupPolicy: random policy maps, random packets through the
// real programs with BPF_PROG_TEST_RUN, egress (from the endpoint to
// ipcache peers) and ingress (from ipcache peers to the endpoint). The maps
// change between rounds with Apply, so the deltas are exercised too.
func TestPrivilegedPolicyMatchesLookupPolicy(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	ep := addDetached(t, d, 1, idA, addrA.String(), "")

	// Peers: 192.0.2.i has identity peers[i]; one address is not in the
	// ipcache (world).
	peers := []identity.ID{1000, 1001, 1002, 70000, identity.ReservedHost}
	addrOf := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}) }
	for i, id := range peers {
		if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(addrOf(i), 32), ipcache.Entry{Identity: id}); err != nil {
			t.Fatal(err)
		}
	}
	peers = append(peers, identity.ReservedWorld) // addrOf(len(peers)) is not in the ipcache

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	protos := []nodeplane.Protocol{0, protoTCP, protoUDP, protoICMP}
	ports := []uint16{0, 22, 53, 80, 443, 8080, 8083, 8084, 65535}
	randKey := func() mapstate.Key {
		k := mapstate.Key{Direction: mapstate.Direction(rng.IntN(2))}
		if rng.IntN(3) > 0 {
			k.Identity = peers[rng.IntN(len(peers))]
		}
		if k.Protocol = protos[rng.IntN(len(protos))]; k.Protocol != 0 {
			k.PortPrefixLen = uint8(rng.IntN(17))
			if rng.IntN(3) == 0 {
				k.PortPrefixLen = 16
			}
			k.Port = ports[rng.IntN(len(ports))] & portMask(k.PortPrefixLen)
			if k.Protocol == protoICMP {
				k.Port = uint16(rng.IntN(16)) & portMask(k.PortPrefixLen)
			}
		}
		return k
	}
	randEntry := func() mapstate.Entry {
		e := mapstate.Entry{Deny: rng.IntN(5) == 0, ProxyPortPriority: uint8(rng.IntN(3))}
		if !e.Deny && rng.IntN(3) == 0 {
			e.ProxyPort = uint16(15000 + rng.IntN(10))
		}
		return e
	}

	current := map[mapstate.Key]mapstate.Entry{}
	sport := uint16(1024)
	const rounds, packets = 400, 80
	checked := 0
	for round := 0; round < rounds; round++ {
		// A new random map, reached from the previous one by a delta.
		next := map[mapstate.Key]mapstate.Entry{}
		for n := rng.IntN(40); n > 0; n-- {
			next[randKey()] = randEntry()
		}
		var deletes []mapstate.Key
		for k := range current {
			if _, ok := next[k]; !ok {
				deletes = append(deletes, k)
			}
		}
		if err := ep.Policy().Apply(next, deletes); err != nil {
			t.Fatal(err)
		}
		current = next
		if got, err := ep.Policy().Dump(); err != nil || !equalPolicy(got, current) {
			t.Fatalf("round %d: map holds %v (%v), want %v", round, got, err, current)
		}

		for i := 0; i < packets; i++ {
			peerIdx := rng.IntN(len(peers))
			peer, peerAddr := peers[peerIdx], addrOf(peerIdx)
			dir := mapstate.Direction(rng.IntN(2))
			pkt := TestPacket{Proto: protos[1+rng.IntN(len(protos)-1)]}
			var port uint16
			sport++
			switch pkt.Proto {
			case protoICMP:
				pkt.ICMPType = uint8(rng.IntN(16))
				pkt.ICMPID = sport
				port = uint16(pkt.ICMPType)
			default:
				port = ports[rng.IntN(len(ports))]
				if rng.IntN(4) == 0 {
					port = uint16(rng.IntN(65536))
				}
				pkt.SrcPort, pkt.DstPort = sport, port
				if pkt.Proto == protoTCP {
					pkt.TCPFlags = TCPSyn
				}
			}
			hook := FromEndpoint
			pkt.Src, pkt.Dst = addrA, peerAddr
			if dir == mapstate.Ingress {
				hook = ToEndpoint
				pkt.Src, pkt.Dst = peerAddr, addrA
				pkt.SrcPort, pkt.DstPort = pkt.DstPort, pkt.SrcPort
				if pkt.Proto != protoICMP {
					pkt.SrcPort, pkt.DstPort = sport, port
				}
			}

			want := mapstate.Lookup(current, peer, dir, pkt.Proto, port)
			v, _, err := ep.TestRun(hook, mustBytes(t, pkt))
			if err != nil {
				t.Fatal(err)
			}
			if v.Conntrack != ConntrackNew {
				t.Fatalf("%v: conntrack %s, want new (test bug: reused tuple)", pkt, v.Conntrack)
			}
			wantMatch, wantL4 := matchOf(want)
			switch {
			case want.Allowed && want.ProxyPort != 0:
				// Redirected to a proxy, of which the test has none
				// (bpf/proxy.h): a proxy port is never an allow.
				reason := monitor.DropProxyLookupFailed
				if pkt.Proto != protoTCP && pkt.Proto != protoUDP {
					reason = monitor.DropProxyUnknownProto
				}
				if v.Action != ActionDrop || v.Reason != reason || v.ProxyPort != want.ProxyPort {
					t.Fatalf("round %d: %s %s proto %d port %d peer %d: kernel %+v, want drop %v with port %d",
						round, hook, dir, pkt.Proto, port, peer, v, reason, want.ProxyPort)
				}
			case want.Allowed && (v.Action != ActionPass || v.ProxyPort != want.ProxyPort),
				!want.Allowed && (v.Action != ActionDrop || v.Reason != want.Reason),
				v.Match != wantMatch || v.L4PrefixLen != wantL4:
				t.Fatalf("round %d: %s %s proto %d port %d peer %d:\nkernel %+v\nLookupPolicy %+v\nmap %v",
					round, hook, dir, pkt.Proto, port, peer, v, want, current)
			}
			if v.Action == ActionPass {
				forgetConnection(t, d, pkt)
			}
			checked++
		}
	}
	t.Logf("%d packets, %d maps: kernel and LookupPolicy agree", checked, rounds)
}

// matchOf is the match type and L4 prefix length the kernel reports for a
// decision of LookupPolicy.
func matchOf(d mapstate.Decision) (PolicyMatch, uint8) {
	if !d.Matched {
		return MatchNone, 0
	}
	l4 := d.Key.L4PrefixLen()
	if d.Key.Identity == identity.Unknown {
		switch {
		case l4 == 0:
			return MatchAll, l4
		case l4 <= 8:
			return MatchProtoOnly, l4
		}
		return MatchL4Only, l4
	}
	switch {
	case l4 > 8:
		return MatchL3L4, l4
	case l4 > 0:
		return MatchL3Proto, l4
	}
	return MatchL3Only, l4
}

// forgetConnection deletes the conntrack entry an allowed packet created,
// so that a later packet with the same tuple meets policy again.
func forgetConnection(t *testing.T, d *Datapath, p TestPacket) {
	t.Helper()
	tup := Tuple{Src: p.Src, Dst: p.Dst, Proto: p.Proto, SrcPort: p.SrcPort, DstPort: p.DstPort}
	if p.Proto == protoICMP {
		tup.SrcPort, tup.DstPort = 0, 0
		switch p.ICMPType {
		case 8:
			tup.SrcPort = p.ICMPID
		case 0:
			tup.DstPort = p.ICMPID
		}
	}
	k, err := tup.raw()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.maps.conntrack.Delete(k); err != nil {
		t.Fatalf("forget %v: %v", tup, err)
	}
}

func equalPolicy(a, b map[mapstate.Key]mapstate.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
