package datapath

import (
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// Masquerading, BPF vs iptables MASQUERADE (the baseline), on the same
// node and world (newMasqWorld):
//
//	NODEPLANE_REQUIRE_PRIV=1 go test ./datapath -run '^$' -bench 'Masquerade' -count 6
//
// Connect: one op is a TCP connect from a pod to the world server and a
// close; run it with -benchtime 2000x at most: a closed connection's NAT
// entries are collected CloseLifetime (10 s) after its FIN, so within one
// run every connection holds one of the 4536 NAT ports of the server's
// address and port. Throughput: one iperf3 stream, 3 s per op.

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

// BenchmarkNATProgram is the cost of the masquerading programs per packet
// of an established flow, with BPF_PROG_TEST_RUN repeating one packet
// b.N times in the kernel, beside a program that only returns TC_ACT_OK
// (the ceiling, baseline):
//
//	NODEPLANE_REQUIRE_PRIV=1 go test ./datapath -run '^$' -bench 'NATProgram' -count 6
func BenchmarkNATProgram(b *testing.B) {
	d, _, _, wan, _ := newMasqWorld(b, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Address6: masqNodeAddr6, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { empty.Close() })

	out := TestPacket{Src: netip.MustParseAddr("10.1.0.10"), Dst: masqWorldAddr, Proto: 6, SrcPort: 40000, DstPort: 80, TCPFlags: TCPAck}
	pkt := mustBytes(b, out)
	// The flow's first packet takes its port.
	opts := ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt))}
	if _, err := m.egress().Run(&opts); err != nil {
		b.Fatal(err)
	}
	port := natPort(opts.DataOut, out)
	reply := mustBytes(b, TestPacket{Src: masqWorldAddr, Dst: masqNodeAddr, Proto: 6, SrcPort: 80, DstPort: port, TCPFlags: TCPAck})

	for _, tc := range []struct {
		name string
		prog *ebpf.Program
		pkt  []byte
	}{
		{"empty", empty, pkt},
		{"egress", m.egress(), pkt},
		{"ingress", m.ingress(), reply},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ret, per, err := tc.prog.Benchmark(tc.pkt, b.N, b.ResetTimer)
			if err != nil || ret != 0 {
				b.Fatalf("verdict %d, %v", ret, err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
		})
	}
}
