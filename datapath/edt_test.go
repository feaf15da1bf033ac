package datapath

import (
	"errors"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// monotonicNow is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonicNow(t *testing.T) time.Duration {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// udpFrame is a UDP packet to the remote DNS server of width frame bytes,
// Ethernet header included.
func udpFrame(t *testing.T, src netip.Addr, frame int) []byte {
	t.Helper()
	const headers = 14 + 20 + 8
	b := mustBytes(t, TestPacket{Src: src, Dst: remote, Proto: protoUDP, SrcPort: 5353, DstPort: 53,
		Payload: make([]byte, frame-headers)})
	if len(b) != frame {
		t.Fatalf("frame of %d bytes, want %d", len(b), frame)
	}
	return b
}

// wantSpacing is the oracle: a frame of n bytes at bits/s takes n*8/bits
// seconds on the wire.
func wantSpacing(n int, bitsPerSecond uint64) float64 {
	return float64(n) * 8 / float64(bitsPerSecond) * 1e9
}

// TestPrivilegedEDTDepartureSpacing sends frames of known sizes from an
// endpoint limited to 100 kbit/s and checks that each departure lies
// len/rate after the one before, within 1%, and in the future of the
// monotonic clock.
func TestPrivilegedEDTDepartureSpacing(t *testing.T) {
	w := newTestRunWorld(t)
	// Slow enough that the schedule stays ahead of the clock however slow
	// the test runs (emulated kernels take milliseconds per run): a frame
	// of 64 bytes takes 5 ms, the whole sequence 0.75 s, within the
	// horizon.
	const rate = 100_000
	if err := w.a.SetEgressRate(EgressLimit{BitsPerSecond: rate}); err != nil {
		t.Fatal(err)
	}
	st, ok, err := w.a.EgressState()
	if err != nil || !ok || st.BitsPerSecond != rate || st.Horizon != 2*time.Second || st.LastDeparture != 0 {
		t.Fatalf("EgressState = %+v, %v, %v", st, ok, err)
	}

	// The first frame finds the endpoint idle: it leaves now, unstamped,
	// and the schedule starts at its departure.
	v, _, err := w.a.TestRun(FromEndpoint, udpFrame(t, addrA, 100))
	if err != nil || v.Action != ActionPass || v.Departure != 0 {
		t.Fatalf("first frame: %+v, %v", v, err)
	}
	st, _, _ = w.a.EgressState()
	prev := st.LastDeparture
	if now := monotonicNow(t); prev <= 0 || prev > now {
		t.Fatalf("schedule starts at %v, now is %v", prev, now)
	}

	for i, n := range []int{1500, 64, 1000, 1500, 576, 3000, 200, 1500} {
		before := monotonicNow(t)
		v, _, err := w.a.TestRun(FromEndpoint, udpFrame(t, addrA, n))
		if err != nil || v.Action != ActionPass {
			t.Fatalf("frame %d: %+v, %v", i, v, err)
		}
		if v.Departure <= before {
			t.Fatalf("frame %d (%d bytes): departure %v not after now %v", i, n, v.Departure, before)
		}
		got := float64(v.Departure - prev)
		want := wantSpacing(n, rate)
		if math.Abs(got-want)/want > 0.01 {
			t.Errorf("frame %d (%d bytes): spaced %.0f ns after the previous, want %.0f ns (len/rate)", i, n, got, want)
		}
		prev = v.Departure
	}
	st, _, _ = w.a.EgressState()
	if st.LastDeparture != prev {
		t.Errorf("map's last departure %v, want the last frame's %v", st.LastDeparture, prev)
	}
}

// TestPrivilegedEDTHorizonDrop sends a burst far beyond what 5 s of
// horizon hold at 8 kbit/s: the frames that fit leave stamped, the rest
// drop with DROP_EDT_HORIZON, are counted, and do not move the schedule.
// Each frame takes a second, so the burst is instant however slow the
// test runs.
func TestPrivilegedEDTHorizonDrop(t *testing.T) {
	w := newTestRunWorld(t)
	const (
		rate    = 8_000
		horizon = 5 * time.Second
		frame   = 1000 // 1 s at 8 kbit/s
	)
	if err := w.a.SetEgressRate(EgressLimit{BitsPerSecond: rate, Horizon: horizon}); err != nil {
		t.Fatal(err)
	}
	pkt := udpFrame(t, addrA, frame)
	var passed, dropped int
	var last time.Duration
	for i := 0; i < 20; i++ {
		now := monotonicNow(t)
		v, _, err := w.a.TestRun(FromEndpoint, pkt)
		if err != nil {
			t.Fatal(err)
		}
		switch v.Action {
		case ActionPass:
			if dropped > 0 {
				t.Fatalf("frame %d passed after a drop, within the same burst", i)
			}
			if v.Departure != 0 {
				if v.Departure-now >= horizon {
					t.Fatalf("frame %d departs %v ahead, beyond the horizon", i, v.Departure-now)
				}
				last = v.Departure
			}
			passed++
		case ActionDrop:
			if v.Reason != monitor.DropEDTHorizon {
				t.Fatalf("frame %d dropped with %v, want %v", i, v.Reason, monitor.DropEDTHorizon)
			}
			dropped++
		default:
			t.Fatalf("frame %d: %+v", i, v)
		}
	}
	// The first frame leaves at once; the next four are due 1-4 s ahead,
	// the fifth 5 s ahead, at the horizon: dropped, unless the clock
	// moved on while the burst ran.
	if passed < 5 || passed > 6 || dropped != 20-passed {
		t.Fatalf("passed %d, dropped %d of 20; want 5-7 to fit the horizon", passed, dropped)
	}
	st, _, _ := w.a.EgressState()
	if st.LastDeparture != last {
		t.Errorf("drops moved the schedule: last departure %v, last stamped frame %v", st.LastDeparture, last)
	}
	c, err := w.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c[CounterKey{Hook: FromEndpoint, Reason: monitor.DropEDTHorizon}].Packets; got != uint64(dropped) {
		t.Errorf("counted %d horizon drops, want %d", got, dropped)
	}
	if monitor.DropEDTHorizon.String() != "REACHED_EDT_RATE_LIMITING_DROP_HORIZON" {
		t.Errorf("reason named %s", monitor.DropEDTHorizon)
	}
}

// TestPrivilegedEDTEndpointsIndependent interleaves three endpoints: A at
// 200 kbit/s, B at 100 kbit/s and C unlimited. Each limited endpoint's
// departures follow its own rate, C's frames are never stamped, and
// clearing A's rate stops its stamps.
func TestPrivilegedEDTEndpointsIndependent(t *testing.T) {
	w := newTestRunWorld(t)
	c := addDetached(t, w.d, 3, 4000, "10.0.0.3", "")
	for _, ep := range []*Endpoint{w.b, c} {
		mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{
			{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoUDP, Port: 53, PortPrefixLen: 16}: allow,
		})
	}
	rates := map[*Endpoint]uint64{w.a: 200_000, w.b: 100_000}
	for ep, r := range rates {
		if err := ep.SetEgressRate(EgressLimit{BitsPerSecond: r}); err != nil {
			t.Fatal(err)
		}
	}
	const frame = 1000
	addrOf := map[*Endpoint]netip.Addr{w.a: addrA, w.b: addrB, c: netip.MustParseAddr("10.0.0.3")}
	prev := map[*Endpoint]time.Duration{}
	for round := 0; round < 5; round++ {
		for _, ep := range []*Endpoint{w.a, c, w.b} {
			v, _, err := ep.TestRun(FromEndpoint, udpFrame(t, addrOf[ep], frame))
			if err != nil || v.Action != ActionPass {
				t.Fatalf("%v round %d: %+v, %v", ep, round, v, err)
			}
			r, limited := rates[ep]
			switch {
			case !limited:
				if v.Departure != 0 {
					t.Fatalf("unlimited %v got departure %v", ep, v.Departure)
				}
			case round == 0:
				// The first frame leaves at once; the schedule starts.
				st, _, _ := ep.EgressState()
				prev[ep] = st.LastDeparture
			default:
				got, want := float64(v.Departure-prev[ep]), wantSpacing(frame, r)
				if math.Abs(got-want)/want > 0.01 {
					t.Errorf("%v round %d: spaced %.0f ns, want %.0f", ep, round, got, want)
				}
				prev[ep] = v.Departure
			}
		}
	}

	if err := w.a.ClearEgressRate(); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := w.a.EgressState(); ok || err != nil {
		t.Fatalf("cleared endpoint still has state: %v, %v", ok, err)
	}
	if v, _, err := w.a.TestRun(FromEndpoint, udpFrame(t, addrA, frame)); err != nil || v.Departure != 0 {
		t.Fatalf("after ClearEgressRate: %+v, %v", v, err)
	}
	if err := w.a.ClearEgressRate(); err != nil {
		t.Fatalf("clearing twice: %v", err)
	}
}

func TestPrivilegedEDTInput(t *testing.T) {
	w := newTestRunWorld(t)
	for _, l := range []EgressLimit{{BitsPerSecond: 7}, {BitsPerSecond: 1e6, Horizon: -1}} {
		if err := w.a.SetEgressRate(l); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("SetEgressRate(%+v) = %v, want ErrInvalidConfig", l, err)
		}
	}
	if err := w.a.SetEgressRate(EgressLimit{BitsPerSecond: 1e6, Priority: 3, HasPriority: true}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := w.a.EgressState(); !st.HasPriority || st.Priority != 3 {
		t.Fatalf("priority not kept: %+v", st)
	}
	// The program gives the endpoint's packets that skb->priority; B,
	// without a limit, keeps the packet's own.
	mustUpdate(t, w.b.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoUDP, Port: 53, PortPrefixLen: 16}: allow,
	})
	for _, tc := range []struct {
		ep   *Endpoint
		src  netip.Addr
		want uint32
	}{{w.a, addrA, 3}, {w.b, addrB, 0}} {
		var out skbContext
		ret, err := tc.ep.progs.from.Run(&ebpf.RunOptions{
			Data: udpFrame(t, tc.src, 100), Context: skbContext{}, ContextOut: &out,
		})
		if err != nil || ret != tcActOK || out.Priority != tc.want {
			t.Errorf("%v: returned %d, priority %d, %v; want priority %d", tc.ep, ret, out.Priority, err, tc.want)
		}
	}
	// A deleted endpoint's entry goes with it, and its handle is closed.
	if err := w.a.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := w.a.SetEgressRate(EgressLimit{BitsPerSecond: 1e6}); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("SetEgressRate on a deleted endpoint: %v", err)
	}
	var info edtInfo
	if err := w.d.maps.edt.Lookup(uint32(1), &info); err == nil {
		t.Fatalf("deleted endpoint's EDT entry remains: %+v", info)
	}
}
