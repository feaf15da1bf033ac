package datapath

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// BenchmarkTraceAggregation measures the from-endpoint program per packet
// (BPF_PROG_TEST_RUN, Repeat 100000, kernel-timed) for an established TCP
// connection to a remote peer at each monitor aggregation level, tracing
// off as the baseline. At none every packet writes two trace records
// (from-endpoint, to-stack), at lowest one, at medium and maximum none (no
// new flags, the 5 s interval does not pass within one run of 100000
// packets, except at most once). The ring buffer holds every record of a
// run and is drained between runs (untimed), so no record is lost and the
// cost is the full write. It also reports records per packet.
func BenchmarkTraceAggregation(b *testing.B) {
	d, _ := newTestDatapath(b, Config{EventsBufferSize: 32 << 20})
	a := addDetached(b, d, 1, idA, addrA.String(), "")
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), identity.IPCacheEntry{Identity: idRemote}); err != nil {
		b.Fatal(err)
	}
	mustUpdate(b, a.Policy(), map[PolicyKey]PolicyEntry{
		{Identity: idRemote, Direction: Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}: allow,
	})
	if v, _, err := a.TestRun(FromEndpoint, mustBytes(b, tcpPkt(addrA, remote, 40000, 80, TCPSyn))); err != nil || v.Reason != 0 {
		b.Fatalf("open the connection: %+v %v", v, err)
	}
	established := mustBytes(b, tcpPkt(addrA, remote, 40000, 80, TCPAck))
	r, err := d.NewEventReader()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	drain := func() int {
		n := 0
		for {
			r.SetDeadline(time.Now().Add(time.Millisecond))
			if _, err := r.ReadRaw(); errors.Is(err, os.ErrDeadlineExceeded) {
				return n
			} else if err != nil {
				b.Fatal(err)
			}
			n++
		}
	}
	for _, level := range []monitor.AggregationLevel{
		monitor.AggregationOff, monitor.AggregationNone, monitor.AggregationLowest,
		monitor.AggregationMedium, monitor.AggregationMaximum,
	} {
		b.Run(level.String(), func(b *testing.B) {
			if err := d.SetMonitorAggregation(level); err != nil {
				b.Fatal(err)
			}
			drain()
			lost0, _ := d.EventsLost()
			var total time.Duration
			records := 0
			for i := 0; i < b.N; i++ {
				ret, dur, err := a.progs.from.Benchmark(established, testRunRepeat, nil)
				if err != nil || ret != tcActOK {
					b.Fatalf("ret %d, %v", ret, err)
				}
				total += dur
				records += drain()
			}
			if lost, _ := d.EventsLost(); lost != lost0 {
				b.Fatalf("%d records lost: the ring buffer is too small for a run", lost-lost0)
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
			b.ReportMetric(float64(records)/float64(b.N*testRunRepeat), "records/pkt")
		})
	}
}

// BenchmarkTCPThroughputTracing runs iperf3 between two endpoints (pod to
// pod through the from-endpoint program and bpf_redirect_peer, as
// BenchmarkTCPThroughput) with tracing off and at medium, none and lowest,
// a reader draining the ring buffer all along. It reports Gbit/s, records
// read per second of traffic, and records the datapath lost (ring full).
func BenchmarkTCPThroughputTracing(b *testing.B) {
	testutils.RequirePrivileged(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed (apt-get install iperf3)")
	}
	d, _ := newTestDatapath(b, Config{EventsBufferSize: 8 << 20})
	client, server := testutils.NewNetNS(b), testutils.NewNetNS(b)
	a, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, NetNS: nsPath(client)})
	if err != nil {
		b.Fatal(err)
	}
	s, err := d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, NetNS: nsPath(server)})
	if err != nil {
		b.Fatal(err)
	}
	mustUpdate(b, a.Policy(), map[PolicyKey]PolicyEntry{{Identity: idB, Direction: Egress}: allow})
	mustUpdate(b, s.Policy(), map[PolicyKey]PolicyEntry{
		{Identity: idA, Direction: Ingress, Protocol: protoTCP, Port: 5201, PortPrefixLen: 16}: allow,
	})
	r, err := d.NewEventReader()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var records, bytes int64
	done := make(chan struct{})
	countCh := make(chan [2]int64)
	go func() {
		defer close(done)
		for {
			select {
			case countCh <- [2]int64{records, bytes}:
				records, bytes = 0, 0
				continue
			default:
			}
			r.SetDeadline(time.Now().Add(10 * time.Millisecond))
			rec, err := r.ReadRaw()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if err != nil {
				return
			}
			records++
			bytes += int64(len(rec))
		}
	}()
	defer func() { r.Close(); <-done }()
	for _, level := range []monitor.AggregationLevel{monitor.AggregationOff, monitor.AggregationMedium,
		monitor.AggregationLowest, monitor.AggregationNone} {
		b.Run(level.String(), func(b *testing.B) {
			if err := d.SetMonitorAggregation(level); err != nil {
				b.Fatal(err)
			}
			<-countCh
			lost0, _ := d.EventsLost()
			start := time.Now()
			testutils.Iperf3(b, client, server, addrB, "3")
			secs := time.Since(start).Seconds()
			c := <-countCh
			lost, _ := d.EventsLost()
			b.ReportMetric(float64(c[0])/secs, "records/s")
			b.ReportMetric(float64(lost-lost0)/secs, "lost/s")
		})
	}
}
