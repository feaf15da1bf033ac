package nodeplane_test

import (
	"testing"

	"github.com/nodeplane/nodeplane"
)

func TestParseProtocol(t *testing.T) {
	for in, want := range map[string]nodeplane.Protocol{
		"":       nodeplane.ProtoAny,
		"any":    nodeplane.ProtoAny,
		"TCP":    nodeplane.ProtoTCP,
		"udp":    nodeplane.ProtoUDP,
		"Sctp":   nodeplane.ProtoSCTP,
		"ICMPv6": nodeplane.ProtoICMPv6,
		"vrrp":   nodeplane.ProtoVRRP,
		"47":     nodeplane.ProtoGRE,
		"200":    200,
	} {
		got, err := nodeplane.ParseProtocol(in)
		if err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"http", "256", "-1", "tcp6"} {
		if p, err := nodeplane.ParseProtocol(in); err == nil {
			t.Errorf("ParseProtocol(%q) = %v, want an error", in, p)
		}
	}
	// Every name String gives parses back to the same number.
	for p := range 256 {
		proto := nodeplane.Protocol(p)
		if back, err := nodeplane.ParseProtocol(proto.String()); err != nil || back != proto {
			t.Errorf("ParseProtocol(%v.String()) = %v, %v", uint8(p), back, err)
		}
	}
}

func TestStackModeZero(t *testing.T) {
	var m nodeplane.StackMode
	if m != nodeplane.DualStack || m.String() != "dual-stack" || nodeplane.SingleStack.String() != "single-stack" {
		t.Fatalf("zero StackMode is %v", m)
	}
}
