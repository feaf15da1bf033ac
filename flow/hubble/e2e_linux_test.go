package hubble

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/flow/metrics"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// e2ePod is a workload: a network namespace attached as an endpoint.
type e2ePod struct {
	namespace, name string
	id              identity.ID
	labels          []string
	addr            netip.Addr
	ns              *testutils.NetNS
	ep              *datapath.Endpoint
}

// e2eWorld is the node of TestPrivilegedHubbleCLI: a datapath with two
// pods, a flow.Observer reading its records, its metrics served over HTTP,
// and the Hubble server on loopback.
type e2eWorld struct {
	web, db     *e2ePod
	obs         *flow.Observer
	hubbleAddr  string
	metricsAddr string
}

const (
	allowedPort = 8080 // db accepts TCP 8080 from web
	deniedPort  = 5432 // and nothing else
	deniedUDP   = 5353
)

func newE2EWorld(t *testing.T) *e2eWorld {
	testutils.RequirePrivileged(t)
	node := testutils.NewNetNS(t)
	d, err := datapath.New(datapath.Config{
		NodeNetNS:           fmt.Sprintf("/proc/self/fd/%d", node.FD()),
		ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096,
	})
	testutils.SkipIfNotSupported(t, err)
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close datapath: %v", err)
		}
	})

	catalog := flow.NewCatalog(flow.CatalogConfig{})
	w := &e2eWorld{}
	for i, p := range []**e2ePod{&w.web, &w.db} {
		app := []string{"web", "db"}[i]
		pod := &e2ePod{
			namespace: "prod", name: app + "-0", id: identity.ID(1001 + i),
			labels: []string{"k8s:app=" + app, "k8s:io.cilium.k8s.policy.cluster=default",
				"k8s:io.kubernetes.pod.namespace=prod"},
			addr: netip.AddrFrom4([4]byte{10, 0, 1, byte(1 + i)}),
			ns:   testutils.NewNetNS(t),
		}
		pod.ep, err = d.AddEndpoint(datapath.EndpointConfig{
			ID: datapath.EndpointID(i + 1), Identity: pod.id, IPv4: pod.addr,
			NetNS: fmt.Sprintf("/proc/self/fd/%d", pod.ns.FD()),
		})
		if err != nil {
			t.Fatal(err)
		}
		catalog.SetIdentity(uint32(pod.id), pod.labels)
		catalog.SetEndpoint(pod.addr, flow.EndpointInfo{ID: uint32(i + 1), Namespace: pod.namespace, PodName: pod.name})
		catalog.SetInterface(uint32(pod.ep.HostIfindex()), pod.ep.HostIfName())
		*p = pod
	}
	applyPolicy(t, w.web, w.db)
	testutils.ServeEcho(t, w.db.ns, "tcp", netip.AddrPortFrom(w.db.addr, allowedPort).String())
	testutils.ServeEcho(t, w.db.ns, "tcp", netip.AddrPortFrom(w.db.addr, deniedPort).String())

	events, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	w.obs, err = flow.New(flow.Config{
		Source: events, KernelLost: d.EventsLost, NodeName: "node-a", Catalog: catalog, Sink: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- w.obs.Run(context.Background()) }()
	t.Cleanup(func() {
		events.Close() // ends Run
		if err := <-runDone; err != nil {
			t.Errorf("observer: %v", err)
		}
	})

	w.metricsAddr = serveHTTP(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	s, err := New(Config{Flows: w.obs})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	w.hubbleAddr = l.Addr().String()
	return w
}

// applyPolicy writes the policy: web may send anything to db (egress);
// db accepts only TCP 8080 from web (ingress). Nothing else is allowed.
func applyPolicy(t *testing.T, web, db *e2ePod) {
	t.Helper()
	const tcp = 6
	for _, p := range []struct {
		ep  *datapath.Endpoint
		pol mapstate.State
	}{
		{web.ep, mapstate.State{
			{Identity: db.id, Direction: mapstate.Egress}: {},
		}},
		{db.ep, mapstate.State{
			{Identity: web.id, Direction: mapstate.Ingress, Protocol: tcp, Port: allowedPort, PortPrefixLen: 16}: {},
		}},
	} {
		if err := p.ep.Policy().Apply(p.pol, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// scrape returns the value of the counter name with labels from the
// metrics endpoint, 0 when the series does not exist yet.
func scrape(t *testing.T, addr, name string, labels map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// The text format: name{l1="v1",...} value
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		match := true
		for k, v := range labels {
			if !strings.Contains(series, k+`="`+v+`"`) {
				match = false
			}
		}
		if match {
			f, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// sendUDP sends one datagram from pod to dst.
func sendUDP(t *testing.T, from *e2ePod, dst netip.AddrPort) {
	t.Helper()
	err := from.ns.Do(func() error {
		c, err := net.Dial("udp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("ping"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// dialTCP connects from pod to dst and exchanges a message with the echo
// server there.
func dialTCP(t *testing.T, from *e2ePod, dst netip.AddrPort, timeout time.Duration) error {
	t.Helper()
	var c net.Conn
	err := from.ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	return nil
}

// waitFlows waits until the observer holds a flow that match accepts.
func (w *e2eWorld) waitFlows(t *testing.T, what string, match func(*flow.Flow) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		found := false
		err := w.obs.GetFlows(context.Background(), flow.Request{}, func(r *flow.Response) error {
			if r.Flow != nil && match(r.Flow) {
				found = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if found {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the observer never saw %s", what)
}

// TestPrivilegedHubbleCLI is issue 13's end-to-end test: two pods under a
// policy exchange allowed and denied traffic through the real datapath;
// the real `hubble` CLI, talking to this package's server, prints the
// allowed and dropped flows with both sides' labels, the drop reason and
// the policy match, and its filter flags select them; `hubble status`
// works; the metrics endpoint's drop counter increases.
func TestPrivilegedHubbleCLI(t *testing.T) {
	testutils.HubbleCLI(t) // fail early (or skip) without the CLI
	w := newE2EWorld(t)
	server := "--server=" + w.hubbleAddr
	dropLabels := map[string]string{"reason": "POLICY_DENIED", "protocol": "TCP"}
	dropsBefore := scrape(t, w.metricsAddr, "hubble_drop_total", dropLabels)

	allowed := netip.AddrPortFrom(w.db.addr, allowedPort)
	denied := netip.AddrPortFrom(w.db.addr, deniedPort)
	if err := dialTCP(t, w.web, allowed, 2*time.Second); err != nil {
		t.Fatalf("web -> db:%d, which the policy allows: %v", allowedPort, err)
	}
	if err := dialTCP(t, w.web, denied, 300*time.Millisecond); err == nil {
		t.Fatalf("web -> db:%d, which the policy denies, connected", deniedPort)
	}
	sendUDP(t, w.web, netip.AddrPortFrom(w.db.addr, deniedUDP))

	dport := func(f *flow.Flow, p uint16) bool { return f.L4.DestinationPort == p }
	w.waitFlows(t, "the denied TCP connection's drop", func(f *flow.Flow) bool {
		return f.Verdict == flow.Dropped && dport(f, deniedPort)
	})
	w.waitFlows(t, "the denied UDP datagram's drop", func(f *flow.Flow) bool {
		return f.Verdict == flow.Dropped && dport(f, deniedUDP)
	})
	w.waitFlows(t, "the allowed connection", func(f *flow.Flow) bool {
		return f.Verdict == flow.Forwarded && dport(f, allowedPort)
	})

	all := parseFlows(t, hubbleCLI(t, "observe", server, "-o", "json", "--last", "1000"))
	if len(all) == 0 {
		t.Fatal("hubble observe printed no flows")
	}
	for _, f := range all {
		t.Logf("%s %s %s:%d -> %s:%d %s %s match=%d %s iface=%v point=%v", f.GetVerdict(), f.GetEventType(),
			f.GetIP().GetSource(), srcPort(f), f.GetIP().GetDestination(), dstPort(f),
			f.GetDropReasonDesc(), f.GetTrafficDirection(), f.GetPolicyMatchType(), f.GetSummary(),
			f.GetInterface(), f.GetTraceObservationPoint())
	}

	webToDB := func(f *flowpb.Flow) bool {
		return f.GetIP().GetSource() == w.web.addr.String() && f.GetIP().GetDestination() == w.db.addr.String()
	}
	checkEnds := func(t *testing.T, f *flowpb.Flow) {
		t.Helper()
		for _, c := range []struct {
			ep  *flowpb.Endpoint
			pod *e2ePod
		}{{f.GetSource(), w.web}, {f.GetDestination(), w.db}} {
			if c.ep.GetPodName() != c.pod.name || c.ep.GetNamespace() != c.pod.namespace ||
				c.ep.GetIdentity() != uint32(c.pod.id) || !slices.Equal(c.ep.GetLabels(), c.pod.labels) {
				t.Errorf("endpoint %v, want pod %s/%s identity %d labels %v", c.ep, c.pod.namespace, c.pod.name, c.pod.id, c.pod.labels)
			}
		}
	}

	t.Run("dropped flow: both sides' labels, drop reason, direction", func(t *testing.T) {
		i := slices.IndexFunc(all, func(f *flowpb.Flow) bool {
			return webToDB(f) && f.GetEventType().GetType() == 1 && dstPort(f) == deniedPort
		})
		if i < 0 {
			t.Fatal("no drop flow for web -> db:5432")
		}
		f := all[i]
		t.Logf("as hubble observe -o json printed it: %s", protojson.Format(f))
		checkEnds(t, f)
		if f.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED || f.GetDropReason() != 133 {
			t.Errorf("drop reason %v (%d), want POLICY_DENIED (133)", f.GetDropReasonDesc(), f.GetDropReason())
		}
		// db's ingress policy denied it.
		if f.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS {
			t.Errorf("traffic direction %v, want INGRESS", f.GetTrafficDirection())
		}
		if f.GetL4().GetTCP().GetFlags().GetSYN() != true || f.GetSummary() != "TCP Flags: SYN" {
			t.Errorf("l4 %v summary %q, want a SYN", f.GetL4(), f.GetSummary())
		}
		if f.GetEventType().GetType() != 1 || f.GetEventType().GetSubType() != 133 || f.GetNodeName() != "node-a" {
			t.Errorf("event type %v node %q", f.GetEventType(), f.GetNodeName())
		}
		// web's program dropped it on web's host-side interface, deciding
		// for db's ingress policy.
		if f.GetInterface().GetName() != w.web.ep.HostIfName() {
			t.Errorf("drop seen on %v, want %s", f.GetInterface(), w.web.ep.HostIfName())
		}
	})

	t.Run("denied policy verdict: match none, ingress", func(t *testing.T) {
		i := slices.IndexFunc(all, func(f *flowpb.Flow) bool {
			return webToDB(f) && f.GetEventType().GetType() == 5 && dstPort(f) == deniedPort &&
				f.GetTrafficDirection() == flowpb.TrafficDirection_INGRESS
		})
		if i < 0 {
			t.Fatal("no ingress policy-verdict flow for web -> db:5432")
		}
		f := all[i]
		checkEnds(t, f)
		if f.GetSummary() != "TCP Flags: SYN" {
			t.Errorf("summary %q, want the SYN's flags", f.GetSummary())
		}
		if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetPolicyMatchType() != 0 ||
			f.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS {
			t.Errorf("verdict %v match %d direction %v, want DROPPED, none, INGRESS",
				f.GetVerdict(), f.GetPolicyMatchType(), f.GetTrafficDirection())
		}
	})

	t.Run("allowed policy verdicts: egress L3-only, ingress L3-L4", func(t *testing.T) {
		matches := map[flowpb.TrafficDirection]uint32{}
		for _, f := range all {
			if webToDB(f) && f.GetEventType().GetType() == 5 && dstPort(f) == allowedPort {
				checkEnds(t, f)
				if f.GetVerdict() != flowpb.Verdict_FORWARDED {
					t.Errorf("allowed connection's policy verdict %v", f.GetVerdict())
				}
				matches[f.GetTrafficDirection()] = f.GetPolicyMatchType()
			}
		}
		// web's egress entry names db's identity only (L3-only, 1); db's
		// ingress entry names web, TCP and port 8080 (L3-L4, 2).
		want := map[flowpb.TrafficDirection]uint32{flowpb.TrafficDirection_EGRESS: 1, flowpb.TrafficDirection_INGRESS: 2}
		if !mapsEqual(matches, want) {
			t.Errorf("policy matches by direction %v, want %v", matches, want)
		}
	})

	t.Run("forwarded flows of the allowed connection, both directions", func(t *testing.T) {
		var fwd, reply bool
		for _, f := range all {
			if f.GetVerdict() != flowpb.Verdict_FORWARDED || f.GetEventType().GetType() != 4 {
				continue
			}
			if webToDB(f) && dstPort(f) == allowedPort {
				checkEnds(t, f)
				// Delivered into db's namespace through db's host-side
				// interface.
				if f.GetTraceObservationPoint() != flowpb.TraceObservationPoint_TO_ENDPOINT ||
					f.GetInterface().GetName() != w.db.ep.HostIfName() ||
					f.GetInterface().GetIndex() != uint32(w.db.ep.HostIfindex()) {
					t.Errorf("trace flow to db seen at %v on %v, want TO_ENDPOINT on %s",
						f.GetTraceObservationPoint(), f.GetInterface(), w.db.ep.HostIfName())
				}
				fwd = true
			}
			if f.GetIP().GetSource() == w.db.addr.String() && srcPort(f) == allowedPort && f.GetIsReply().GetValue() {
				reply = true
			}
		}
		if !fwd || !reply {
			t.Errorf("trace flows: request %v, reply %v; want both", fwd, reply)
		}
	})

	t.Run("--verdict DROPPED", func(t *testing.T) {
		got := parseFlows(t, hubbleCLI(t, "observe", server, "-o", "json", "--all", "--verdict", "DROPPED"))
		checkAll(t, got, "DROPPED", func(f *flowpb.Flow) bool { return f.GetVerdict() == flowpb.Verdict_DROPPED })
		wantSome(t, got, "the TCP drop", func(f *flowpb.Flow) bool { return dstPort(f) == deniedPort })
		wantNone(t, got, "the allowed port", func(f *flowpb.Flow) bool { return dstPort(f) == allowedPort })
	})

	t.Run("--from-label", func(t *testing.T) {
		got := parseFlows(t, hubbleCLI(t, "observe", server, "-o", "json", "--all", "--from-label", "k8s:app=db"))
		checkAll(t, got, "from db", func(f *flowpb.Flow) bool { return slices.Contains(f.GetSource().GetLabels(), "k8s:app=db") })
		wantSome(t, got, "db's replies", func(f *flowpb.Flow) bool { return srcPort(f) == allowedPort })
	})

	t.Run("--to-pod", func(t *testing.T) {
		got := parseFlows(t, hubbleCLI(t, "observe", server, "-o", "json", "--all", "--to-pod", "prod/db-0"))
		checkAll(t, got, "to db-0", func(f *flowpb.Flow) bool { return f.GetDestination().GetPodName() == "db-0" })
		wantSome(t, got, "the denied connection", func(f *flowpb.Flow) bool { return dstPort(f) == deniedPort })
		wantSome(t, got, "the allowed connection", func(f *flowpb.Flow) bool { return dstPort(f) == allowedPort })
	})

	t.Run("--protocol udp", func(t *testing.T) {
		out := hubbleCLI(t, "observe", server, "-o", "json", "--all", "--protocol", "udp")
		t.Logf("hubble observe -o json --protocol udp:\n%s", out)
		got := parseFlows(t, out)
		checkAll(t, got, "UDP", func(f *flowpb.Flow) bool { return f.GetL4().GetUDP() != nil })
		wantSome(t, got, "the denied datagram", func(f *flowpb.Flow) bool {
			return dstPort(f) == deniedUDP && f.GetVerdict() == flowpb.Verdict_DROPPED
		})
	})

	t.Run("compact output", func(t *testing.T) {
		out := hubbleCLI(t, "observe", server, "--all", "--verdict", "DROPPED", "--protocol", "tcp")
		t.Logf("hubble observe --verdict DROPPED --protocol tcp:\n%s", out)
		for _, want := range []string{"prod/web-0", "prod/db-0:5432", "Policy denied DROPPED", "TCP Flags: SYN"} {
			if !strings.Contains(out, want) {
				t.Errorf("compact output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		out := hubbleCLI(t, "status", server)
		t.Logf("hubble status:\n%s", out)
		st := w.obs.Status()
		for _, want := range []string{"Healthcheck (via " + w.hubbleAddr + "): Ok", fmt.Sprintf("Current/Max Flows: %d/", st.NumFlows)} {
			if !strings.Contains(out, want) {
				t.Errorf("hubble status lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("metrics: the drop counter increases", func(t *testing.T) {
		mid := scrape(t, w.metricsAddr, "hubble_drop_total", dropLabels)
		if mid <= dropsBefore {
			t.Fatalf("hubble_drop_total%v = %v after the denied connection, %v before", dropLabels, mid, dropsBefore)
		}
		// Another denied connection: the counter goes up again.
		sport := dialFrom(t, w.web, denied)
		w.waitFlows(t, "the second denied connection", func(f *flow.Flow) bool {
			return f.Verdict == flow.Dropped && f.L4.SourcePort == sport
		})
		after := scrape(t, w.metricsAddr, "hubble_drop_total", dropLabels)
		if after <= mid {
			t.Errorf("hubble_drop_total%v = %v after a second denied connection, %v before", dropLabels, after, mid)
		}
		t.Logf("hubble_drop_total%v: %v before any traffic, %v, then %v", dropLabels, dropsBefore, mid, after)
	})
}

// dialFrom starts a connection from pod to dst that is expected to be
// dropped, and returns its source port.
func dialFrom(t *testing.T, from *e2ePod, dst netip.AddrPort) uint16 {
	t.Helper()
	var c net.Conn
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	ctx := context.Background()
	var local netip.AddrPort
	err := from.ns.Do(func() error {
		// Bind first so that the port is known even though the connection
		// will not complete.
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: from.addr.AsSlice()})
		if err != nil {
			return err
		}
		local = l.Addr().(*net.TCPAddr).AddrPort()
		l.Close()
		d.LocalAddr = net.TCPAddrFromAddrPort(local)
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err == nil {
		c.Close()
		t.Fatalf("connection to %v, which the policy denies, succeeded", dst)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial %v: %v, want a timeout (dropped SYN)", dst, err)
	}
	return local.Port()
}

func srcPort(f *flowpb.Flow) uint32 {
	if tcp := f.GetL4().GetTCP(); tcp != nil {
		return tcp.GetSourcePort()
	}
	return f.GetL4().GetUDP().GetSourcePort()
}

func dstPort(f *flowpb.Flow) uint32 {
	if tcp := f.GetL4().GetTCP(); tcp != nil {
		return tcp.GetDestinationPort()
	}
	return f.GetL4().GetUDP().GetDestinationPort()
}

func checkAll(t *testing.T, fs []*flowpb.Flow, what string, ok func(*flowpb.Flow) bool) {
	t.Helper()
	if len(fs) == 0 {
		t.Fatalf("hubble printed no flows")
	}
	for _, f := range fs {
		if !ok(f) {
			t.Errorf("printed a flow that is not %s: %v", what, f)
		}
	}
}

func wantSome(t *testing.T, fs []*flowpb.Flow, what string, ok func(*flowpb.Flow) bool) {
	t.Helper()
	if !slices.ContainsFunc(fs, ok) {
		t.Errorf("hubble printed no flow of %s", what)
	}
}

func wantNone(t *testing.T, fs []*flowpb.Flow, what string, bad func(*flowpb.Flow) bool) {
	t.Helper()
	if i := slices.IndexFunc(fs, bad); i >= 0 {
		t.Errorf("hubble printed a flow of %s: %v", what, fs[i])
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
