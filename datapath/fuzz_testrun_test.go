package datapath

import (
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// kernelMinTestRun is the shortest packet BPF_PROG_TEST_RUN runs through
// a tc program: an Ethernet header, and the IP header its EtherType names
// (measured on 6.18: shorter ones fail with EINVAL before the program
// runs).
func kernelMinTestRun(pkt []byte) int {
	if len(pkt) < 14 {
		return 14
	}
	switch uint16(pkt[12])<<8 | uint16(pkt[13]) {
	case 0x0800:
		return 14 + 20
	case 0x86dd:
		return 14 + 40
	}
	return 14
}

// kernelMaxTestRun is the longest packet BPF_PROG_TEST_RUN runs through a
// tc program: the skb's data must fit one page with its headroom
// (NET_SKB_PAD) and its skb_shared_info (bpf_test_init refuses larger ones
// with EINVAL). Both depend on the kernel's configuration; 512 bytes is
// more than they take on x86-64 (64 + 320), so a packet up to this length
// must run.
func kernelMaxTestRun() int { return os.Getpagesize() - 512 }

// FuzzPrivilegedTestRun runs arbitrary packets through both programs of
// two endpoints with BPF_PROG_TEST_RUN. Whatever the bytes, the kernel
// must run the program (given the headers it needs, kernelMinTestRun), the program must leave a
// verdict, the tc action must agree with it, and a drop must carry a drop
// reason the datapath defines. It needs root, and fails rather than skips
// without it under NODEPLANE_REQUIRE_PRIV=1.
func FuzzPrivilegedTestRun(f *testing.F) {
	d, _ := newTestDatapath(f, Config{})
	a := addDetached(f, d, 1, idA, addrA.String(), addrA6.String())
	b := addDetached(f, d, 2, idB, addrB.String(), addrB6.String())
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: idRemote}); err != nil {
		f.Fatal(err)
	}
	mustUpdate(f, a.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idB, Direction: mapstate.Egress}:                                                        allow,
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 443, PortPrefixLen: 16}: denyThis,
	})
	mustUpdate(f, b.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: 8080, PortPrefixLen: 16}: allow,
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoICMP, Port: 8, PortPrefixLen: 16}:   allow,
	})
	for _, p := range []TestPacket{
		tcpPkt(addrA, addrB, 40000, 8080, TCPSyn),
		tcpPkt(addrB, addrA, 8080, 40000, TCPSyn|TCPAck),
		tcpPkt(addrA, remote, 40001, 443, TCPSyn),
		tcpPkt(addrA6, addrB6, 40000, 8080, TCPSyn),
		{Src: addrA, Dst: addrB, Proto: protoUDP, SrcPort: 53, DstPort: 53},
		{Src: addrA, Dst: addrB, Proto: protoICMP, ICMPType: 8},
		{Src: addrA6, Dst: addrB6, Proto: protoICMPv6, ICMPType: 128},
	} {
		pkt := mustBytes(f, p)
		f.Add(pkt)
		f.Add(pkt[:len(pkt)-4])
		f.Add(pkt[:20])
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, ep := range []*Endpoint{a, b} {
			for _, hook := range []Hook{FromEndpoint, ToEndpoint} {
				v, _, err := ep.TestRun(hook, pkt)
				if len(pkt) > kernelMaxTestRun() {
					continue // the kernel may refuse it, which says nothing of the program
				}
				if len(pkt) < kernelMinTestRun(pkt) {
					if err == nil {
						t.Fatalf("endpoint %d %v: a %d-byte packet ran", ep.ID(), hook, len(pkt))
					}
					continue
				}
				if err != nil {
					// verdictFrom checks that the program left a verdict and
					// that the tc action agrees with its drop reason.
					t.Fatalf("endpoint %d %v: %v", ep.ID(), hook, err)
				}
				if v.Action == ActionDrop {
					if _, err := strconv.Atoi(v.Reason.String()); err == nil || v.Reason == monitor.DropReason(0) {
						t.Fatalf("endpoint %d %v: dropped with undefined reason %d", ep.ID(), hook, v.Reason)
					}
				}
			}
		}
	})
}
