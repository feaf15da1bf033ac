package datapath

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// BenchmarkEDT measures the from-endpoint program per packet
// (BPF_PROG_TEST_RUN, Repeat 100000) on an established connection to a
// remote peer, the path EDT shapes:
//
//   - no-rate: the endpoint has no rate; EDT costs one hash-map miss;
//   - rate-idle: a rate so high that every packet finds its slot in the
//     past and leaves unstamped (lookup, clock, division, t_last write);
//   - rate-stamped: a rate at which every packet is scheduled 1 µs after
//     the one before, so each pays bpf_skb_set_tstamp as well. The
//     schedule restarts before every Repeat batch, so it never reaches the
//     horizon.
func BenchmarkEDT(b *testing.B) {
	d, _ := newTestDatapath(b, Config{})
	a := addDetached(b, d, 1, idA, addrA.String(), "")
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: idRemote}); err != nil {
		b.Fatal(err)
	}
	mustUpdate(b, a.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}: allow,
	})
	pkt := mustBytes(b, tcpPkt(addrA, remote, 40000, 80, TCPAck))
	if v, _, err := a.TestRun(FromEndpoint, pkt); err != nil || v.Action != ActionPass {
		b.Fatalf("opening the connection: %+v %v", v, err)
	}
	// len*8 bits per µs: each packet is due 1 µs after the one before.
	stampedRate := uint64(len(pkt)) * 8 * 1_000_000

	for _, bc := range []struct {
		name string
		rate uint64
	}{
		{"no-rate", 0},
		{"rate-idle", 1 << 50},
		{"rate-stamped", stampedRate},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				var err error
				if bc.rate == 0 {
					err = a.ClearEgressRate()
				} else {
					err = a.SetEgressRate(EgressLimit{BitsPerSecond: bc.rate})
				}
				if err != nil {
					b.Fatal(err)
				}
				var before time.Duration
				if err := monotonicNowErr(&before); err != nil {
					b.Fatal(err)
				}
				ret, dur, err := a.progs.from.Benchmark(pkt, testRunRepeat, nil)
				if err != nil || ret != tcActOK {
					b.Fatalf("program returned %d, %v", ret, err)
				}
				total += dur
				if bc.rate == stampedRate {
					// Every packet but the first was stamped 1 µs
					// after the one before: the schedule ran that far
					// ahead of where it started.
					st, _, err := a.EgressState()
					if err != nil {
						b.Fatal(err)
					}
					if ahead := st.LastDeparture - before; ahead < (testRunRepeat-1)*time.Microsecond || ahead > (testRunRepeat-1)*time.Microsecond+dur*testRunRepeat+time.Second {
						b.Fatalf("schedule %v ahead of the start after %d packets, want %v", ahead, testRunRepeat, (testRunRepeat-1)*time.Microsecond)
					}
				}
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
		})
	}
}

func monotonicNowErr(d *time.Duration) error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return err
	}
	*d = time.Duration(ts.Nano())
	return nil
}
