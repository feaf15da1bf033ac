package hubble

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"

	"github.com/nodeplane/nodeplane/flow"
)

// replay is a flow.Source that yields records the BPF programs wrote
// (flow's testdata), first one, then — once released — n more, then ends.
type replay struct {
	recs    [][]byte
	release chan struct{}
	n, i    int
}

func (r *replay) ReadRaw() ([]byte, error) {
	if r.i == 1 {
		<-r.release
	}
	if r.i > r.n {
		return nil, os.ErrClosed
	}
	rec := r.recs[r.i%len(r.recs)]
	r.i++
	return rec, nil
}

func readRecords(t *testing.T, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "records", name))
	if err != nil {
		t.Fatal(err)
	}
	var recs [][]byte
	for len(b) >= 2 {
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n {
			t.Fatalf("%s: truncated", name)
		}
		recs, b = append(recs, b[2:2+n]), b[2+n:]
	}
	return recs
}

// TestSlowClientDoesNotBlockObserver follows a real flow.Observer with a
// gRPC client that stops reading, while the Observer's reader decodes
// 100,000 records the datapath wrote. The reader must get through all of
// them while the client stalls; afterwards the client must learn of every
// flow it missed through HUBBLE_RING_BUFFER lost events, which the
// Observer counts too.
func TestSlowClientDoesNotBlockObserver(t *testing.T) {
	const n = 100_000
	src := &replay{recs: readRecords(t, "local-denied.rec"), release: make(chan struct{}), n: n}
	obs, err := flow.New(flow.Config{Source: src, Capacity: 256, NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := startServer(t, obs)
	runDone := make(chan error, 1)
	go func() { runDone <- obs.Run(context.Background()) }()
	for obs.Status().SeenFlows < 1 {
		time.Sleep(time.Millisecond)
	}

	// The last stored flow (the first record's), then follow: the
	// follower starts right after it, whenever its call reaches the server.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.GetFlow() == nil {
		t.Fatalf("first response %v, %v", r, err)
	}

	// The client stalls: nobody calls Recv while the reader runs.
	start := time.Now()
	close(src.release)
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the observer's reader is stuck behind a client that does not read (seen %d of %d)",
			obs.Status().SeenFlows, n+1)
	}
	t.Logf("reader decoded %d records in %v while the client stalled", n, time.Since(start))
	if seen := obs.Status().SeenFlows; seen != n+1 {
		t.Fatalf("observer saw %d flows, want %d", seen, n+1)
	}

	var delivered, lost uint64
	for {
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if l := r.GetLostEvents(); l != nil {
			if l.GetSource() != flowpb.LostEventSource_HUBBLE_RING_BUFFER {
				t.Errorf("lost event source %v", l.GetSource())
			}
			lost += l.GetNumEventsLost()
		} else {
			delivered++
		}
		if delivered+lost == n {
			break
		}
		if delivered+lost > n {
			t.Fatalf("delivered %d + lost %d > %d", delivered, lost, n)
		}
	}
	if lost == 0 {
		t.Errorf("a stalled client lost none of %d flows through a ring of 256", n)
	}
	if got := obs.Status().Lost[flow.LostHubbleRing]; got != lost {
		t.Errorf("observer counts %d flows lost to slow readers, the client was told %d", got, lost)
	}
	t.Logf("delivered %d, reported lost %d", delivered, lost)
}
