package flow_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/flow/metrics"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedEndToEnd: two endpoints in their own namespaces, web/a
// (app=web) and db/b (app=db, tier=backend), under a policy that lets a
// reach b on TCP 8080 only. a connects to 8080 (allowed) and 8081
// (denied), b is deleted right after, and an Observer reading the real
// ring buffer must show both sides' pods and labels, the drop reason, the
// policy match and the direction, with Hubble's filters selecting them;
// the drop counter must count the drops.
func TestPrivilegedEndToEnd(t *testing.T) {
	testutils.RequirePrivileged(t)
	node := testutils.NewNetNS(t)
	podA, podB := testutils.NewNetNS(t), testutils.NewNetNS(t)
	d, err := datapath.New(datapath.Config{NodeNetNS: fmt.Sprintf("/proc/self/fd/%d", node.FD()),
		ConntrackMaxEntries: 4096, IPCacheMaxEntries: 1024, MonitorAggregation: monitor.AggregationMedium})
	testutils.SkipIfNotSupported(t, err)
	t.Cleanup(func() { d.Close() })
	a, err := d.AddEndpoint(datapath.EndpointConfig{ID: 1, Identity: identity.ID(idA), IPv4: addrA, NetNS: fmt.Sprintf("/proc/self/fd/%d", podA.FD())})
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.AddEndpoint(datapath.EndpointConfig{ID: 2, Identity: identity.ID(idB), IPv4: addrB, NetNS: fmt.Sprintf("/proc/self/fd/%d", podB.FD())})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Policy().Apply(map[datapath.PolicyKey]datapath.PolicyEntry{{Identity: identity.ID(idB), Direction: datapath.Egress}: {}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Policy().Apply(map[datapath.PolicyKey]datapath.PolicyEntry{
		{Identity: identity.ID(idA), Direction: datapath.Ingress, Protocol: tcp, Port: 8080, PortPrefixLen: 16}: {}}, nil); err != nil {
		t.Fatal(err)
	}

	// What the agent would tell the catalog.
	cat := flow.NewCatalog(flow.CatalogConfig{})
	cat.SetEndpoint(addrA, flow.EndpointInfo{ID: 1, Namespace: "web", PodName: "a-7d9f"})
	cat.SetEndpoint(addrB, flow.EndpointInfo{ID: 2, Namespace: "db", PodName: "b-0"})
	cat.SetIdentity(idA, []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=web"})
	cat.SetIdentity(idB, []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=db", "k8s:tier=backend"})
	for _, ep := range []*datapath.Endpoint{a, b} {
		cat.SetInterface(uint32(ep.HostIfindex()), ep.HostIfName())
	}

	events, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	o, err := flow.New(flow.Config{Source: events, KernelLost: d.EventsLost, NodeName: "node-1", Catalog: cat, Sink: m})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = o.Run(context.Background()) }()
	t.Cleanup(func() { events.Close(); wg.Wait() })

	testutils.ServeEcho(t, podB, "tcp", netip.AddrPortFrom(addrB, 8080).String())
	testutils.ServeEcho(t, podB, "tcp", netip.AddrPortFrom(addrB, 8081).String())
	dial := func(port uint16) (net.Conn, error) {
		var c net.Conn
		err := podA.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addrB, port).String(), 500*time.Millisecond)
			return err
		})
		return c, err
	}
	c, err := dial(8080)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("hello"))
	buf := make([]byte, 5)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := dial(8081); err == nil {
		t.Fatal("denied port connected")
	}

	// b goes away right after; its flows must still name it.
	if err := b.Delete(); err != nil {
		t.Fatal(err)
	}
	cat.DeleteEndpoint(addrB)
	cat.DeleteIdentity(idB)

	// get waits until the observer holds flows that req selects.
	get := func(t *testing.T, req flow.Request, min int) []flow.Flow {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var out []flow.Flow
			err := o.GetFlows(context.Background(), req, func(r *flow.Response) error {
				if r.Flow != nil {
					out = append(out, *r.Flow)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(out) >= min || time.Now().After(deadline) {
				return out
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	dump := func(fs []flow.Flow) string {
		var sb strings.Builder
		for i := range fs {
			sb.Write(fs[i].AppendJSON(nil))
			sb.WriteByte('\n')
		}
		return sb.String()
	}
	webLabels := "[k8s:app=web k8s:io.kubernetes.pod.namespace=web]"
	dbLabels := "[k8s:app=db k8s:io.kubernetes.pod.namespace=db k8s:tier=backend]"
	checkEnds := func(t *testing.T, f *flow.Flow, srcIsA bool) {
		t.Helper()
		s, dd := &f.Source, &f.Destination
		if !srcIsA {
			s, dd = dd, s
		}
		if s.PodName != "a-7d9f" || s.Namespace != "web" || fmt.Sprint(s.Labels) != webLabels || s.Identity != idA ||
			dd.PodName != "b-0" || dd.Namespace != "db" || fmt.Sprint(dd.Labels) != dbLabels || dd.Identity != idB {
			t.Errorf("ends of %s", f.AppendJSON(nil))
		}
	}

	t.Run("dropped", func(t *testing.T) {
		fs := get(t, flow.Request{Allow: []flow.Filter{{Verdict: []flow.Verdict{flow.Dropped}, EventType: []flow.EventTypeFilter{{Type: 1}}}}}, 1)
		if len(fs) == 0 {
			t.Fatal("no drop flow")
		}
		for i := range fs {
			f := &fs[i]
			checkEnds(t, f, true)
			if f.DropReason != monitor.DropPolicyDenied || f.TrafficDirection != flow.Ingress || f.L4.DestinationPort != 8081 ||
				f.Destination.ID != 2 || f.Source.ID != 1 || f.NodeName != "node-1" || f.Interface.Name != a.HostIfName() {
				t.Errorf("drop flow %s", f.AppendJSON(nil))
			}
		}
	})
	t.Run("policy verdicts", func(t *testing.T) {
		fs := get(t, flow.Request{Allow: []flow.Filter{{EventType: []flow.EventTypeFilter{{Type: 5}}, DestinationPort: []string{"8080", "8081"}}}}, 4)
		var got []string
		for i := range fs {
			f := &fs[i]
			checkEnds(t, f, true)
			got = append(got, fmt.Sprintf("%d %s %s %s", f.L4.DestinationPort, f.TrafficDirection, f.Verdict, f.PolicyMatchType))
		}
		slices.Sort(got)
		want := []string{"8080 EGRESS FORWARDED L3-only", "8080 INGRESS FORWARDED L3-L4",
			"8081 EGRESS FORWARDED L3-only", "8081 INGRESS DROPPED none"}
		// A SYN retransmitted to the denied port repeats its two verdicts.
		got = slices.Compact(got)
		if !slices.Equal(got, want) {
			t.Errorf("verdicts %v, want %v\n%s", got, want, dump(fs))
		}
	})
	t.Run("traces both ways", func(t *testing.T) {
		fs := get(t, flow.Request{Allow: []flow.Filter{{EventType: []flow.EventTypeFilter{{Type: 4}}, Protocol: []string{"tcp"}}}}, 2)
		var req, reply bool
		for i := range fs {
			f := &fs[i]
			if f.Verdict != flow.Forwarded || f.TraceObservationPoint != flow.ToEndpoint || !f.IsReplyKnown {
				t.Errorf("trace %s", f.AppendJSON(nil))
			}
			checkEnds(t, f, !f.IsReply)
			switch {
			case !f.IsReply && f.TrafficDirection == flow.Ingress && f.L4.DestinationPort == 8080:
				req = true
			case f.IsReply && f.TrafficDirection == flow.Egress && f.L4.SourcePort == 8080:
				reply = true
			}
		}
		if !req || !reply {
			t.Errorf("want a request traced to b (INGRESS) and a reply traced to a (EGRESS)\n%s", dump(fs))
		}
	})
	t.Run("hubble CLI filters", func(t *testing.T) {
		// --from-label app=web --to-pod db/b --protocol tcp --verdict DROPPED
		fs := get(t, flow.Request{Allow: []flow.Filter{{SourceLabel: []string{"app=web"}, DestinationPod: []string{"db/b"},
			Protocol: []string{"tcp"}, Verdict: []flow.Verdict{flow.Dropped}}}}, 2)
		if len(fs) < 2 {
			t.Fatalf("%d flows", len(fs))
		}
		for i := range fs {
			if fs[i].Verdict != flow.Dropped || fs[i].L4.DestinationPort != 8081 {
				t.Errorf("filtered flow %s", fs[i].AppendJSON(nil))
			}
		}
		if fs := get(t, flow.Request{Allow: []flow.Filter{{SourcePod: []string{"db/"}, Verdict: []flow.Verdict{flow.Dropped}}}}, 0); len(fs) != 0 {
			t.Errorf("no drops from db expected:\n%s", dump(fs))
		}
	})
	t.Run("metrics", func(t *testing.T) {
		want := `
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"} %d
`
		drops := len(get(t, flow.Request{Allow: []flow.Filter{{EventType: []flow.EventTypeFilter{{Type: 1}}}}}, 1))
		if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(want, drops)), "hubble_drop_total"); err != nil || drops == 0 {
			t.Errorf("%d drops: %v", drops, err)
		}
		if n := testutil.ToFloat64(prometheusCounter(t, reg, "cilium_drop_count_total")); n != float64(drops) {
			t.Errorf("cilium_drop_count_total = %v, want %d", n, drops)
		}
		if st := o.Status(); st.SeenFlows == 0 || len(st.DecodeErrors) != 0 || st.Lost[flow.LostRingBuffer] != 0 {
			t.Errorf("status %+v", st)
		}
	})
}

// prometheusCounter returns the sum of a counter family as a collector
// testutil can read.
func prometheusCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name + "_sum"})
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				c.Add(m.GetCounter().GetValue())
			}
		}
	}
	return c
}
