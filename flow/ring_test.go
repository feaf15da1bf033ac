package flow_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
)

var t0 = time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)

// ringWith returns a ring of capacity cap holding flows 0..n-1, flow i at
// t0+i seconds with source port i.
func ringWith(capacity, n int) *flow.Ring {
	r := flow.NewRing(capacity)
	for i := range n {
		writeFlow(r, i)
	}
	return r
}

func writeFlow(r *flow.Ring, i int) {
	f := flow.Flow{Time: t0.Add(time.Duration(i) * time.Second), Verdict: flow.Forwarded,
		L4: flow.L4{Protocol: nodeplane.ProtoTCP, SourcePort: uint16(i)}}
	if i%2 == 1 {
		f.Verdict = flow.Dropped
	}
	r.Write(&f)
}

// collect runs GetFlows and returns the source ports of the flows and the
// lost counts, in order.
func collect(t *testing.T, r *flow.Ring, req flow.Request) (ports []int, lost []uint64) {
	t.Helper()
	err := r.GetFlows(context.Background(), req, "n", func(resp *flow.Response) error {
		if resp.Lost != nil {
			lost = append(lost, resp.Lost.NumEventsLost)
		} else {
			ports = append(ports, int(resp.Flow.L4.SourcePort))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ports, lost
}

func seq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func TestRingPast(t *testing.T) {
	r := ringWith(8, 12) // holds 4..11
	dropped := []flow.Filter{{Verdict: []flow.Verdict{flow.Dropped}}}
	for _, tc := range []struct {
		name string
		req  flow.Request
		want []int
	}{
		{"all", flow.Request{}, seq(4, 11)},
		{"last 3", flow.Request{Number: 3}, seq(9, 11)},
		{"first 3", flow.Request{Number: 3, First: true}, seq(4, 6)},
		{"last 2 dropped", flow.Request{Number: 2, Allow: dropped}, []int{9, 11}},
		{"first 2 dropped", flow.Request{Number: 2, First: true, Allow: dropped}, []int{5, 7}},
		{"since", flow.Request{Since: t0.Add(9 * time.Second)}, seq(9, 11)},
		{"until", flow.Request{Until: t0.Add(6 * time.Second)}, seq(4, 6)},
		{"since and until", flow.Request{Since: t0.Add(6 * time.Second), Until: t0.Add(8 * time.Second)}, seq(6, 8)},
		{"last 2 until", flow.Request{Number: 2, Until: t0.Add(8 * time.Second)}, []int{7, 8}},
		{"first 2 since", flow.Request{Number: 2, First: true, Since: t0.Add(9 * time.Second)}, []int{9, 10}},
		{"deny", flow.Request{Deny: dropped}, []int{4, 6, 8, 10}},
		{"more than stored", flow.Request{Number: 100}, seq(4, 11)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, lost := collect(t, r, tc.req)
			if !slices.Equal(got, tc.want) || len(lost) != 0 {
				t.Fatalf("got %v (lost %v), want %v", got, lost, tc.want)
			}
		})
	}
	if r.Len() != 8 || r.Cap() != 8 || r.Written() != 12 || r.Flows() != 8 {
		t.Fatalf("len %d cap %d written %d flows %d", r.Len(), r.Cap(), r.Written(), r.Flows())
	}
	r.WriteLost(flow.LostEvent{NumEventsLost: 1})
	r.WriteLost(flow.LostEvent{NumEventsLost: 1})
	if r.Len() != 8 || r.Flows() != 6 {
		t.Fatalf("after two lost reports: len %d flows %d, want 8 and 6", r.Len(), r.Flows())
	}
	writeFlow(r, 12)
	if r.Flows() != 6 {
		t.Fatalf("flows %d after overwriting a flow with a flow", r.Flows())
	}
	for range 8 {
		writeFlow(r, 13)
	}
	if r.Flows() != 8 {
		t.Fatalf("flows %d after overwriting the lost reports", r.Flows())
	}
	if _, err := flow.Compile([]flow.Filter{{Protocol: []string{"x"}}}, nil); err == nil {
		t.Fatal("bad filter compiled")
	}
	if err := r.GetFlows(context.Background(), flow.Request{Allow: []flow.Filter{{Protocol: []string{"x"}}}}, "", nil); !errors.Is(err, flow.ErrInvalidFilter) {
		t.Fatalf("GetFlows with a bad filter: %v", err)
	}
}

// TestRingFollow checks that a follower gets the past flows it asked for
// and then new ones as they come, and that Until ends a follow.
func TestRingFollow(t *testing.T) {
	r := ringWith(16, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan int, 100)
	done := make(chan error, 1)
	go func() {
		done <- r.GetFlows(ctx, flow.Request{Number: 1, Follow: true}, "n", func(resp *flow.Response) error {
			got <- int(resp.Flow.L4.SourcePort)
			return nil
		})
	}()
	if p := <-got; p != 2 {
		t.Fatalf("first flow %d, want the last past one, 2", p)
	}
	for i := 3; i < 6; i++ {
		writeFlow(r, i)
		select {
		case p := <-got:
			if p != i {
				t.Fatalf("followed %d, want %d", p, i)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("flow %d not followed", i)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("GetFlows ended with %v", err)
	}

	// Follow without Number: only new flows. Until ends it.
	var ports []int
	done2 := make(chan error, 1)
	go func() {
		done2 <- r.GetFlows(context.Background(), flow.Request{Follow: true, Until: t0.Add(7 * time.Second)}, "n",
			func(resp *flow.Response) error { ports = append(ports, int(resp.Flow.L4.SourcePort)); return nil })
	}()
	time.Sleep(50 * time.Millisecond) // let it reach the end of the past
	for i := 6; i < 10; i++ {
		writeFlow(r, i)
	}
	select {
	case err := <-done2:
		if err != nil || !slices.Equal(ports, []int{6, 7}) {
			t.Fatalf("followed %v until t0+7s, err %v; want [6 7]", ports, err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Until did not end the follow")
	}
}

// TestRingOverrun stalls a follower in its callback while the writer laps
// it: the writer must not block, and the follower must be told exactly how
// many entries it lost, then go on with the oldest one still stored.
func TestRingOverrun(t *testing.T) {
	const capacity = 8
	r := ringWith(capacity, 0)
	stuck := make(chan struct{})
	release := make(chan struct{})
	caughtUp := make(chan struct{})
	var ports []int
	var lost []uint64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	// Flow 0 is stored before the follower starts, so the follower's
	// first flow is 0 whatever the scheduler does (Number 1 returns the
	// newest stored flow, then Follow goes on with new ones).
	writeFlow(r, 0)
	go func() {
		done <- r.GetFlows(ctx, flow.Request{Number: 1, Follow: true}, "n", func(resp *flow.Response) error {
			if resp.Lost != nil {
				lost = append(lost, resp.Lost.NumEventsLost)
				return nil
			}
			p := int(resp.Flow.L4.SourcePort)
			ports = append(ports, p)
			switch p {
			case 0:
				close(stuck)
				<-release // a slow consumer
			case 30:
				close(caughtUp)
			}
			return nil
		})
	}()
	select {
	case <-stuck: // the follower is now stuck on flow 0
	case <-time.After(5 * time.Second):
		t.Fatal("follower did not get flow 0")
	}
	start := time.Now()
	for i := 1; i <= 30; i++ {
		writeFlow(r, i)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("writer took %v past a stuck reader", d)
	}
	close(release)
	select {
	case <-caughtUp:
	case <-time.After(5 * time.Second):
		t.Fatal("follower did not catch up")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	// Stored after the burst: 23..30. Lost: 1..22.
	if !slices.Equal(lost, []uint64{22}) || !slices.Equal(ports, append([]int{0}, seq(23, 30)...)) {
		t.Fatalf("got %v, lost %v; want [0 23..30], lost [22]", ports, lost)
	}
}
