package datapath

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// drainTraces returns the trace records waiting in the ring buffer,
// ignoring other records.
func drainTraces(t *testing.T, r *EventReader) []*TraceEvent {
	t.Helper()
	var out []*TraceEvent
	for {
		r.SetDeadline(time.Now().Add(20 * time.Millisecond))
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if tr, ok := ev.(*TraceEvent); ok {
			out = append(out, tr)
		}
	}
}

func points(trs []*TraceEvent) []monitor.ObservationPoint {
	var ps []monitor.ObservationPoint
	for _, tr := range trs {
		ps = append(ps, tr.Point)
	}
	return ps
}

// TestPrivilegedTraceAggregation runs one TCP connection from A to B (a
// local redirect) and one from A to a remote address (to the stack)
// through the programs at every aggregation level and checks which trace
// records come out, against Cilium's rules written out by hand: none traces
// every packet at from-endpoint and at its exit point; lowest and low drop
// the from-endpoint points; medium and maximum report only new
// connections and packets with a SYN, FIN or RST not seen before in their
// direction (the interval of 5 s does not pass during the test); off
// reports nothing.
func TestPrivilegedTraceAggregation(t *testing.T) {
	w := newTestRunWorld(t)
	r, err := w.d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	const (
		from  = monitor.FromEndpoint
		to    = monitor.ToEndpoint
		stack = monitor.ToStack
	)
	// The connection's packets: hook, endpoint, packet, and whether the
	// medium level reports it.
	type step struct {
		hook   Hook
		ep     *Endpoint
		pkt    TestPacket
		medium bool
	}
	local := func(sport uint16) []step {
		return []step{
			{FromEndpoint, w.a, tcpPkt(addrA, addrB, sport, 8080, TCPSyn), true},         // new
			{FromEndpoint, w.b, tcpPkt(addrB, addrA, 8080, sport, TCPSyn|TCPAck), true},  // reply: SYN first seen that way
			{FromEndpoint, w.a, tcpPkt(addrA, addrB, sport, 8080, TCPAck), false},        // nothing new
			{FromEndpoint, w.a, tcpPkt(addrA, addrB, sport, 8080, TCPAck), false},        // nothing new
			{FromEndpoint, w.b, tcpPkt(addrB, addrA, 8080, sport, TCPAck), false},        // nothing new
			{FromEndpoint, w.a, tcpPkt(addrA, addrB, sport, 8080, TCPFin|TCPAck), true},  // FIN first seen
			{FromEndpoint, w.a, tcpPkt(addrA, addrB, sport, 8080, TCPFin|TCPAck), false}, // FIN again
			{FromEndpoint, w.b, tcpPkt(addrB, addrA, 8080, sport, TCPRst), true},         // RST first seen
		}
	}
	remoteConn := func(sport uint16) []step {
		return []step{
			{FromEndpoint, w.a, tcpPkt(addrA, remote, sport, 80, TCPSyn), true},
			{ToEndpoint, w.a, tcpPkt(remote, addrA, 80, sport, TCPSyn|TCPAck), true},
			{FromEndpoint, w.a, tcpPkt(addrA, remote, sport, 80, TCPAck), false},
			{ToEndpoint, w.a, tcpPkt(remote, addrA, 80, sport, TCPAck), false},
		}
	}
	// exit is the point a forwarded packet leaves at.
	exit := func(s step) monitor.ObservationPoint {
		switch {
		case s.hook == ToEndpoint:
			return to
		case s.pkt.Dst == addrA || s.pkt.Dst == addrB:
			return to
		}
		return stack
	}

	sport := uint16(41000)
	for _, level := range []monitor.AggregationLevel{
		monitor.AggregationNone, monitor.AggregationLowest, monitor.AggregationLow,
		monitor.AggregationMedium, monitor.AggregationMaximum, monitor.AggregationOff,
	} {
		t.Run(level.String(), func(t *testing.T) {
			if err := w.d.SetMonitorAggregation(level); err != nil {
				t.Fatal(err)
			}
			drainTraces(t, r)
			for _, steps := range [][]step{local(sport), remoteConn(sport + 1)} {
				sport += 2
				for i, s := range steps {
					v, _, err := s.ep.TestRun(s.hook, mustBytes(t, s.pkt))
					if err != nil || v.Reason != 0 {
						t.Fatalf("step %d: %+v, %v", i, v, err)
					}
					var want []monitor.ObservationPoint
					n, _ := level.CiliumLevel()
					switch {
					case level == monitor.AggregationOff:
					case n >= 3 && !s.medium:
					case s.hook == FromEndpoint && n == 0:
						want = []monitor.ObservationPoint{from, exit(s)}
					default:
						want = []monitor.ObservationPoint{exit(s)}
					}
					got := drainTraces(t, r)
					if !slices.Equal(points(got), want) {
						t.Fatalf("step %d (%v %v flags %#x): traces at %v, want %v", i, s.hook, s.pkt.Dst, s.pkt.TCPFlags, points(got), want)
					}
					for _, tr := range got {
						reply := s.pkt.Src == addrB || s.pkt.Src == remote // the responders
						if tr.Tuple.Src != s.pkt.Src || tr.Tuple.DstPort != s.pkt.DstPort || uint8(tr.TCPFlags) != s.pkt.TCPFlags ||
							tr.Reason.IsReply() != reply || !tr.Reason.Known() {
							t.Errorf("step %d: trace %+v", i, tr)
						}
						if tr.Point == to && s.pkt.Dst == addrB && (tr.DstEndpoint != 2 || tr.Endpoint != 1) {
							t.Errorf("step %d: local delivery trace names endpoints %d -> %d, want 1 -> 2", i, tr.Endpoint, tr.DstEndpoint)
						}
					}
				}
			}
		})
	}
}

// TestPrivilegedTraceInterval checks the periodic samples of aggregation
// medium: with an interval of 1 s, an established connection's packets
// without new flags are reported again once a second has passed since the
// last report in their direction, and not before.
func TestPrivilegedTraceInterval(t *testing.T) {
	d, _ := newTestDatapath(t, Config{MonitorAggregation: monitor.AggregationMedium, MonitorAggregationInterval: time.Second})
	a := addDetached(t, d, 1, idA, addrA.String(), "")
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: idRemote}); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, a.Policy(), mapstate.State{
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}: allow,
	})
	r, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	send := func(flags uint8) int {
		t.Helper()
		if v, _, err := a.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 40000, 80, flags))); err != nil || v.Reason != 0 {
			t.Fatalf("%+v %v", v, err)
		}
		return len(drainTraces(t, r))
	}
	if n := send(TCPSyn); n != 1 {
		t.Fatalf("SYN: %d traces, want 1", n)
	}
	// The stamps are whole seconds (CLOCK_MONOTONIC_COARSE), so a second
	// boundary inside the first 0.7 s may already count as the interval:
	// at most one sample there.
	start := time.Now()
	quiet := 0
	for time.Since(start) < 700*time.Millisecond {
		quiet += send(TCPAck)
	}
	time.Sleep(2100 * time.Millisecond)
	if n := send(TCPAck); n != 1 {
		t.Fatalf("after 2.1 s: %d traces, want the periodic sample", n)
	}
	// Within the next 0.3 s at most one second boundary passes, so at most
	// one more sample may come (the stamps are whole seconds); a program
	// that reported every packet would give one per send.
	after, sends := 0, 0
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; sends++ {
		after += send(TCPAck)
	}
	if after > 1 || sends < 3 {
		t.Fatalf("right after the sample: %d traces from %d packets, want at most 1", after, sends)
	}
	if quiet > 1 {
		t.Fatalf("%d traces within the first 0.7 s, want at most 1", quiet)
	}
}
