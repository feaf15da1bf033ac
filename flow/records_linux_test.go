package flow_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// captureWorld is a datapath with two detached endpoints and the capture
// cases' policies.
type captureWorld struct {
	d      *datapath.Datapath
	a, b   *datapath.Endpoint
	events *datapath.EventReader
}

func newCaptureWorld(t testing.TB, level monitor.AggregationLevel) *captureWorld {
	t.Helper()
	testutils.RequirePrivileged(t)
	node := testutils.NewNetNS(t)
	d, err := datapath.New(datapath.Config{
		NodeNetNS: fmt.Sprintf("/proc/self/fd/%d", node.FD()), MonitorAggregation: level,
		ConntrackMaxEntries: 1 << 16, IPCacheMaxEntries: 1024, EventsBufferSize: 4 << 20,
	})
	testutils.SkipIfNotSupported(t, err)
	t.Cleanup(func() { d.Close() })
	w := &captureWorld{d: d}
	add := func(id datapath.EndpointID, ident uint32, v4, v6 netip.Addr) *datapath.Endpoint {
		ep, err := d.AddEndpoint(datapath.EndpointConfig{ID: id, Identity: identity.ID(ident), IPv4: v4, IPv6: v6, Detached: true})
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	w.a = add(1, idA, addrA, addrA6)
	w.b = add(2, idB, addrB, addrB6)
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), identity.IPCacheEntry{Identity: identity.ID(idRemote)}); err != nil {
		t.Fatal(err)
	}
	apply := func(ep *datapath.Endpoint, m map[datapath.PolicyKey]datapath.PolicyEntry) {
		if err := ep.Policy().Apply(m, nil); err != nil {
			t.Fatal(err)
		}
	}
	apply(w.a, map[datapath.PolicyKey]datapath.PolicyEntry{
		{Identity: identity.ID(idB), Direction: datapath.Egress}:                                                  {},
		{Identity: identity.ID(idRemote), Direction: datapath.Egress, Protocol: tcp, Port: 80, PortPrefixLen: 16}: {},
	})
	apply(w.b, map[datapath.PolicyKey]datapath.PolicyEntry{
		{Identity: identity.ID(idA), Direction: datapath.Ingress, Protocol: tcp, Port: 8080, PortPrefixLen: 16}: {},
	})
	if w.events, err = d.NewEventReader(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.events.Close() })
	return w
}

func (w *captureWorld) send(p packet) error {
	tp := datapath.TestPacket{Src: p.src, Dst: p.dst, Proto: p.proto, SrcPort: p.sport, DstPort: p.dport,
		TCPFlags: p.tcpFlags, ICMPType: p.icmpType, ICMPID: 7}
	b, err := tp.Bytes()
	if err != nil {
		return err
	}
	if p.truncateIPv4Header {
		b[14] = 0x44 // IHL 4: shorter than an IPv4 header can be
	}
	ep, hook := w.a, datapath.ToEndpoint
	if p.ep == 2 {
		ep = w.b
	}
	if p.from {
		hook = datapath.FromEndpoint
	}
	_, _, err = ep.TestRun(hook, b)
	return err
}

// drain returns copies of the records waiting in the ring buffer.
func (w *captureWorld) drain(t testing.TB) [][]byte {
	t.Helper()
	var recs [][]byte
	for {
		w.events.SetDeadline(time.Now().Add(20 * time.Millisecond))
		rec, err := w.events.ReadRaw()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return recs
		}
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, append([]byte(nil), rec...))
	}
}

// TestPrivilegedCaptureRecords runs the record cases through the BPF
// programs and checks the flows their records decode to; with -update it
// stores the records under testdata/records.
func TestPrivilegedCaptureRecords(t *testing.T) {
	w := newCaptureWorld(t, monitor.AggregationNone)
	for _, c := range recordCases {
		t.Run(c.name, func(t *testing.T) {
			w.drain(t)
			for _, p := range c.send {
				if err := w.send(p); err != nil {
					t.Fatal(err)
				}
			}
			recs := w.drain(t)
			checkRecords(t, c, recs)
			if *update {
				var b []byte
				for _, r := range recs {
					b = binary.LittleEndian.AppendUint16(b, uint16(len(r)))
					b = append(b, r...)
				}
				if err := os.MkdirAll(filepath.Join("testdata", "records"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join("testdata", "records", c.name+".rec"), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
