package hubble

import (
	"context"
	"io"
	"testing"

	observerpb "github.com/cilium/cilium/api/v1/observer"

	"github.com/nodeplane/nodeplane/flow"
)

// The cost of serving flows: converting one to the protobuf, and streaming
// a full ring (Hubble's default 4095 flows) to a gRPC client on loopback,
// beside reading the same ring with no conversion and no gRPC.

func BenchmarkProto(b *testing.B) {
	f := testFlows()[2]
	b.ReportAllocs()
	for b.Loop() {
		_ = Proto(&f)
	}
}

const benchRing = 4095

func fullRing() *ringObserver {
	fs := testFlows()
	obs := newRing(benchRing, nil)
	for i := range benchRing {
		obs.ring.Write(&fs[i%len(fs)])
	}
	return obs
}

// BenchmarkRingGetFlows is the baseline: the ring read by a no-op callback.
func BenchmarkRingGetFlows(b *testing.B) {
	obs := fullRing()
	for b.Loop() {
		n := 0
		err := obs.GetFlows(context.Background(), flow.Request{}, func(r *flow.Response) error { n++; return nil })
		if err != nil || n != benchRing {
			b.Fatal(n, err)
		}
	}
	b.ReportMetric(float64(benchRing*b.N)/b.Elapsed().Seconds(), "flows/s")
}

// BenchmarkGetFlows streams the whole ring to a client over loopback TCP.
func BenchmarkGetFlows(b *testing.B) {
	c, _, _ := startServer(b, fullRing())
	for b.Loop() {
		st, err := c.GetFlows(context.Background(), &observerpb.GetFlowsRequest{})
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			_, err := st.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != benchRing {
			b.Fatalf("%d flows", n)
		}
	}
	b.ReportMetric(float64(benchRing*b.N)/b.Elapsed().Seconds(), "flows/s")
}
