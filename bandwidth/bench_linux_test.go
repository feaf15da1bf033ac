package bandwidth

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

const rrPort = 7

// installHTB limits dev in ns with HTB as the comparison: one class at
// rate (ceil the same) that all traffic falls into, with the class's
// default leaf queue.
func installHTB(b *testing.B, ns *testutils.NetNS, dev string, rate Rate) {
	b.Helper()
	h := ns.Netlink(b)
	l, err := h.LinkByName(dev)
	if err != nil {
		b.Fatal(err)
	}
	idx := l.Attrs().Index
	q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT})
	q.Defcls = 10
	if err := h.QdiscReplace(q); err != nil {
		b.Fatal(err)
	}
	c := netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(1, 0), Handle: netlink.MakeHandle(1, 10)},
		netlink.HtbClassAttrs{Rate: uint64(rate), Ceil: uint64(rate), Buffer: 64 << 10, Cbuffer: 64 << 10}) // bits/s: netlink divides by 8
	if err := h.ClassReplace(c); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRRUnderLoad limits endpoint A's egress to 50 Mbit/s and, while
// one iperf3 TCP stream from A saturates the limit, measures the
// request/response latency of a second connection of A (1 byte each way,
// to an echo server on the remote): p50 and p99 in µs, and the bulk
// stream's rate. Mechanisms: the TBF fallback (what Manager uses without
// sch_fq), HTB with one class, and EDT where the kernel has sch_fq, with
// the bulk stream on the default congestion control and on BBR.
func BenchmarkRRUnderLoad(b *testing.B) {
	testutils.RequirePrivileged(b)
	const limit = 50 * Mbit
	mechs := []string{"none", "tbf", "htb"}
	if HaveEDT() == nil {
		// edt-bbr: the bulk stream uses BBR, which paces itself, as
		// Cilium recommends with EDT (it needs HaveDeliveryTime).
		mechs = append(mechs, "edt", "edt-bbr")
	}
	for _, mech := range mechs {
		b.Run(mech, func(b *testing.B) {
			w := newTrafficWorld(b)
			if err := w.a.Policy().Apply(mapstate.State{
				{Identity: idRemote, Direction: mapstate.Egress, Protocol: 6, Port: rrPort, PortPrefixLen: 16}: {},
			}, nil); err != nil {
				b.Fatal(err)
			}
			switch mech {
			case "tbf", "edt", "edt-bbr":
				cfg := Config{NodeNetNS: nsPath(w.node), Mechanism: MechanismTBF}
				if mech != "tbf" {
					// EDT's fq goes on the uplink; the fallback takes no devices.
					cfg.Mechanism, cfg.Devices = MechanismEDT, []string{"up0"}
				}
				m, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Set(w.a, Limits{Egress: limit}); err != nil {
					b.Fatal(err)
				}
			case "htb":
				installHTB(b, w.podA, w.a.IfName(), limit)
			}
			testutils.ServeEcho(b, w.remote, "tcp4", "192.0.2.2:7")

			srv := exec.Command("iperf3", "-s", "-B", remoteAddr.String())
			if err := w.remote.Start(srv); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
			time.Sleep(300 * time.Millisecond)

			var rtts []time.Duration
			var rates []float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var out bytes.Buffer
				args := []string{"-c", remoteAddr.String(), "-t", "10", "-J"}
				if mech == "edt-bbr" {
					args = append(args, "-C", "bbr")
				}
				cli := exec.Command("iperf3", args...)
				cli.Stdout = &out
				if err := w.podA.Start(cli); err != nil {
					b.Fatal(err)
				}
				time.Sleep(1500 * time.Millisecond) // past slow start
				rtts = append(rtts, rr(b, w.podA, 150)...)
				if err := cli.Wait(); err != nil {
					b.Fatalf("iperf3: %v\n%s", err, out.Bytes())
				}
				var res struct {
					End struct {
						SumReceived struct {
							BitsPerSecond float64 `json:"bits_per_second"`
						} `json:"sum_received"`
					} `json:"end"`
				}
				if err := json.Unmarshal(out.Bytes(), &res); err != nil {
					b.Fatal(err)
				}
				rates = append(rates, res.End.SumReceived.BitsPerSecond)
			}
			b.StopTimer()
			slices.Sort(rtts)
			b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
			var sum float64
			for _, r := range rates {
				sum += r
			}
			b.ReportMetric(sum/float64(len(rates))/1e6, "bulk-Mbit/s")
		})
	}
}

// rr runs n 1-byte request/response exchanges from pod to the remote echo
// server over one connection and returns their round-trip times.
func rr(b *testing.B, pod *testutils.NetNS, n int) []time.Duration {
	b.Helper()
	var c net.Conn
	if err := pod.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", "192.0.2.2:7", 5*time.Second)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := []byte{1}
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(start))
		time.Sleep(2 * time.Millisecond)
	}
	return out
}
