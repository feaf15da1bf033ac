package datapath

import (
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// Masquerading, BPF vs iptables MASQUERADE (the baseline), on the same
// node and world (newMasqWorld):
//
//	NODEPLANE_REQUIRE_PRIV=1 go test ./datapath -run '^$' -bench 'Masquerade' -count 6
//
// Connect: one op is a TCP connect from a pod to the world server and a
// close; run it with -benchtime 2000x at most: BPF NAT entries are not yet
// collected when connections close, and one server address and port has
// 4536 NAT ports. Throughput: one iperf3 stream, 3 s per op.

func masqueradeMode(b *testing.B, mode string) (pod, world *testutils.NetNS) {
	d, node, world, wan, pods := newMasqWorld(b, Config{})
	switch mode {
	case "bpf":
		m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
	case "iptables":
		cmd := exec.Command("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "!", "-d", "10.0.0.0/8", "-j", "MASQUERADE")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := node.Run(cmd); err != nil {
			b.Fatalf("iptables: %v: %s", err, out.String())
		}
	}
	return pods[0], world
}

var masqueradeModes = []string{"iptables", "bpf"}

func BenchmarkMasqueradeConnect(b *testing.B) {
	for _, mode := range masqueradeModes {
		b.Run(mode, func(b *testing.B) {
			pod, world := masqueradeMode(b, mode)
			testutils.ServeEcho(b, world, "tcp4", "203.0.113.2:9000")
			b.ResetTimer()
			for range b.N {
				var c net.Conn
				err := pod.Do(func() (err error) {
					c, err = net.DialTimeout("tcp4", "203.0.113.2:9000", 3*time.Second)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

func BenchmarkMasqueradeThroughput(b *testing.B) {
	for _, mode := range masqueradeModes {
		b.Run(mode, func(b *testing.B) {
			pod, world := masqueradeMode(b, mode)
			testutils.Iperf3(b, pod, world, masqWorldAddr, "3")
		})
	}
}
