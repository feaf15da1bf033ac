package flow_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// sliceSource yields its records, then os.ErrClosed.
type sliceSource struct {
	recs [][]byte
	i    int
	// kernelLost is what KernelLost returns; it grows as records are read.
	kernelLost atomic.Uint64
	lostAt     map[int]uint64
}

func (s *sliceSource) ReadRaw() ([]byte, error) {
	if n, ok := s.lostAt[s.i]; ok {
		s.kernelLost.Store(n)
	}
	if s.i >= len(s.recs) {
		return nil, fmt.Errorf("source: %w", os.ErrClosed)
	}
	s.i++
	return s.recs[s.i-1], nil
}

// capturedRecords returns every record under testdata/records.
func capturedRecords(t testing.TB) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "records", "*.rec"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no records: %v", err)
	}
	var all [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := readRecords(b)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
	}
	return all
}

type countingSink struct {
	mu    sync.Mutex
	flows int
	lost  map[flow.LostSource]uint64
}

func (s *countingSink) ObserveFlow(*flow.Flow) { s.mu.Lock(); s.flows++; s.mu.Unlock() }
func (s *countingSink) ObserveLost(src flow.LostSource, n uint64) {
	s.mu.Lock()
	if s.lost == nil {
		s.lost = make(map[flow.LostSource]uint64)
	}
	s.lost[src] += n
	s.mu.Unlock()
}

// TestObserverBadRecords feeds good records with corrupt ones between
// them: each corrupt one is counted by reason and reported to readers as a
// lost event, and Run goes on with the next record.
func TestObserverBadRecords(t *testing.T) {
	good := capturedRecords(t)
	trunc := good[0][:20]
	badVersion := append([]byte(nil), good[0]...)
	badVersion[1] = 1
	badType := append([]byte(nil), good[0]...)
	badType[0] = 9
	badField := append([]byte(nil), good[0]...)
	badField[16+37] = 5 // tuple IP version
	var recs [][]byte
	bad := [][]byte{trunc, badVersion, badType, nil, badField}
	for i, g := range good {
		recs = append(recs, g)
		if i < len(bad) {
			recs = append(recs, bad[i])
		}
	}
	src := &sliceSource{recs: recs, lostAt: map[int]uint64{0: 5, 3: 12}}
	sink := &countingSink{}
	o, err := flow.New(flow.Config{Source: src, NodeName: "node-1", Sink: sink, Capacity: 1000,
		KernelLost: func() (uint64, error) { return src.kernelLost.Load(), nil }, LostPollInterval: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := o.Status()
	wantErrs := map[string]uint64{"truncated": 2, "unknown version": 1, "unknown type": 1, "field out of range": 1}
	if fmt.Sprint(st.DecodeErrors) != fmt.Sprint(wantErrs) {
		t.Errorf("decode errors %v, want %v", st.DecodeErrors, wantErrs)
	}
	if st.SeenFlows != uint64(len(good)) || st.Lost[flow.LostEventsQueue] != 5 || st.Lost[flow.LostRingBuffer] != 12 {
		t.Errorf("status %+v", st)
	}
	if sink.flows != len(good) || sink.lost[flow.LostEventsQueue] != 5 || sink.lost[flow.LostRingBuffer] != 12 {
		t.Errorf("sink saw %d flows, lost %v", sink.flows, sink.lost)
	}
	// A reader sees every flow and every loss, in order.
	var flows int
	lost := map[flow.LostSource]uint64{}
	err = o.GetFlows(context.Background(), flow.Request{}, func(r *flow.Response) error {
		if r.NodeName != "node-1" {
			t.Errorf("node %q", r.NodeName)
		}
		if r.Lost != nil {
			lost[r.Lost.Source] += r.Lost.NumEventsLost
		} else {
			flows++
		}
		return nil
	})
	if err != nil || flows != len(good) || lost[flow.LostEventsQueue] != 5 || lost[flow.LostRingBuffer] != 12 {
		t.Fatalf("read %d flows, lost %v, err %v", flows, lost, err)
	}
}

func TestObserverSourceError(t *testing.T) {
	o, err := flow.New(flow.Config{Source: errSource{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err == nil || errors.Is(err, os.ErrClosed) {
		t.Fatalf("Run: %v, want the source's error", err)
	}
	if _, err := flow.New(flow.Config{}); err == nil {
		t.Fatal("New without a source succeeded")
	}
}

type errSource struct{}

func (errSource) ReadRaw() ([]byte, error) { return nil, errors.New("broken") }

// TestCatalogHistory checks that flows are enriched with what held when
// their packet passed: an endpoint deleted (or an address reused, or
// labels changed) after the packet still names the old values, until the
// retention has passed.
func TestCatalogHistory(t *testing.T) {
	now := t0
	c := flow.NewCatalog(flow.CatalogConfig{Retention: time.Minute, Now: func() time.Time { return now }})
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c.SetEndpoint(addrA, flow.EndpointInfo{ID: 1, Namespace: "web", PodName: "a"})
	c.SetIdentity(idA, []string{"k8s:app=web"})
	now = at(10 * time.Second)
	c.DeleteEndpoint(addrA)
	c.SetIdentity(idA, []string{"k8s:app=web2"})
	now = at(20 * time.Second)
	c.SetEndpoint(addrA, flow.EndpointInfo{ID: 3, Namespace: "web", PodName: "c"}) // address reused

	for _, tc := range []struct {
		t      time.Time
		pod    string
		ok     bool
		labels string
	}{
		{at(5 * time.Second), "a", true, "[k8s:app=web]"},
		{at(15 * time.Second), "", false, "[k8s:app=web2]"}, // deleted, not reused yet
		{at(25 * time.Second), "c", true, "[k8s:app=web2]"},
		{at(-time.Second), "a", true, "[k8s:app=web]"}, // before we heard of it: the first value
	} {
		info, ok := c.Endpoint(addrA, tc.t)
		labels, _ := c.Labels(idA, tc.t)
		if ok != tc.ok || info.PodName != tc.pod || fmt.Sprint(labels) != tc.labels {
			t.Errorf("at %v: %+v %v labels %v; want pod %q %v, labels %v", tc.t.Sub(t0), info, ok, labels, tc.pod, tc.ok, tc.labels)
		}
	}
	// The decoder enriches with the values at the flow's time.
	f := flow.Flow{Time: at(5 * time.Second), IP: flow.IP{Source: addrA, Destination: addrB}, Source: flow.Endpoint{Identity: idA}}
	dec := flow.NewDecoder(flow.DecoderConfig{Catalog: c, Boot: at(5 * time.Second)})
	rec := capturedRecords(t)[0]
	if err := dec.Decode(rec, &f); err != nil {
		t.Fatal(err)
	}
	// After the retention the old versions are pruned (on the next change).
	now = at(2 * time.Minute)
	c.SetInterface(9, "x")
	if _, ok := c.Endpoint(addrA, at(5*time.Second)); !ok {
		// The current version (from 20s) is returned for times before it
		// once the older ones are gone.
		t.Error("no endpoint after pruning")
	}
	if info, _ := c.Endpoint(addrA, at(5*time.Second)); info.PodName != "c" {
		t.Errorf("after pruning, the pruned version is still returned: %+v", info)
	}
}

// TestDecodeEnriched decodes a captured drop with the test catalog: both
// sides carry pod, namespace and labels, and the destination service.
func TestDecodeEnriched(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "records", "local-denied.rec"))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := readRecords(b)
	if err != nil {
		t.Fatal(err)
	}
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Catalog: testCatalog(), Boot: time.Unix(0, 0)})
	var f flow.Flow
	if err := dec.Decode(recs[2], &f); err != nil {
		t.Fatal(err)
	}
	if f.Verdict != flow.Dropped || f.Source.PodName != "a-7d9f" || f.Source.Namespace != "web" ||
		fmt.Sprint(f.Source.Labels) != "[k8s:app=web k8s:io.kubernetes.pod.namespace=web]" ||
		f.Destination.PodName != "b-0" || fmt.Sprint(f.Destination.Labels) != "[k8s:app=db k8s:io.kubernetes.pod.namespace=db k8s:tier=backend]" ||
		f.Interface.Name != "lo" || f.TrafficDirection != flow.Ingress || f.DropReason != monitor.DropPolicyDenied {
		t.Fatalf("%s", f.AppendJSON(nil))
	}
	// The service lookup needs the destination port 8080; this drop went
	// to 9999.
	if f.DestinationService.Name != "" {
		t.Fatalf("service %+v for port 9999", f.DestinationService)
	}
}

// idleSource blocks until its deadline like a ring buffer without records.
type idleSource struct {
	mu       sync.Mutex
	deadline time.Time
	closed   chan struct{}
}

func (s *idleSource) SetDeadline(t time.Time) { s.mu.Lock(); s.deadline = t; s.mu.Unlock() }

func (s *idleSource) ReadRaw() ([]byte, error) {
	s.mu.Lock()
	d := s.deadline
	s.mu.Unlock()
	wait := time.Hour
	if !d.IsZero() {
		wait = time.Until(d)
	}
	select {
	case <-time.After(wait):
		return nil, os.ErrDeadlineExceeded
	case <-s.closed:
		return nil, os.ErrClosed
	}
}

// TestObserverIdlePolls checks that losses are reported while no record
// arrives (a burst overflowed the ring buffer, then silence), and that
// cancelling ctx stops Run without closing the source.
func TestObserverIdlePolls(t *testing.T) {
	src := &idleSource{closed: make(chan struct{})}
	var kernelLost atomic.Uint64
	o, err := flow.New(flow.Config{Source: src, KernelLost: func() (uint64, error) { return kernelLost.Load(), nil },
		LostPollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	kernelLost.Store(42)
	deadline := time.Now().Add(2 * time.Second)
	for o.Status().Lost[flow.LostRingBuffer] != 42 {
		if time.Now().After(deadline) {
			t.Fatalf("lost %v, want 42 reported while idle", o.Status().Lost)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not stop on ctx")
	}
}
