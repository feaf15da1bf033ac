package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// The conformance test runs the classic network-policy cases on real
// traffic: pods are network namespaces attached to the datapath as
// endpoints, in two "namespaces" with labels; an Engine compiles the
// policies into their policy maps; TCP connections between them, and to
// addresses outside the cluster, must succeed or fail as each phase's
// truth table says, while policies are added and removed under traffic.
// Each outcome is also checked in the kernel's own records, read from the
// datapath's event ring buffer: a denied connection must show its drop
// event with the policy drop reason and both identities, an allowed one
// the policy-verdict events of each policy that decided it, with the match
// type the truth table names.

type pod struct {
	name   string
	labels string
	addr   netip.Addr
	ns     *testutils.NetNS
	id     identity.ID
	ep     datapath.EndpointID
}

var conformancePorts = []uint16{80, 5432, 8080, 9050, 9200}

// External destinations live on the node's loopback: the allowed range,
// its except range and an address no rule names.
var (
	extAllowed  = netip.MustParseAddr("192.0.2.10")
	extExcepted = netip.MustParseAddr("192.0.2.200")
	extOther    = netip.MustParseAddr("198.51.100.10")
)

type conformanceWorld struct {
	t      *testing.T
	d      *datapath.Datapath
	engine *Engine
	pods   map[string]*pod
	node   *testutils.NetNS
	events *eventLog
	// nextPort is the source port of the next connection check makes, so
	// that its events can be told from the background traffic's.
	nextPort uint16
}

func newConformanceWorld(t *testing.T) *conformanceWorld {
	d, node := newTestDatapath(t, datapath.Config{})
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alloc.Close() })
	// The ipcache feeds the datapath's: CIDR rules' prefixes reach the
	// kernel through it.
	ipc := ipcache.New()
	if err := ipc.AddWriter(d.IPCache()); err != nil {
		t.Fatal(err)
	}
	engine, err := NewEngine(EngineConfig{CIDRAllocator: alloc, IPCache: ipc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	go func() { watchDone <- engine.WatchIdentities(ctx, alloc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-watchDone; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("identity watch: %v", err)
		}
	})

	w := &conformanceWorld{t: t, d: d, engine: engine, pods: map[string]*pod{}, node: node, nextPort: 20000}
	w.events = newEventLog(t, d)
	team := map[string]string{"prod": "a", "dev": "b"}
	for i, p := range []struct{ ns, app, addr string }{
		{"prod", "web", "10.0.1.1"},
		{"prod", "db", "10.0.1.2"},
		{"dev", "web", "10.0.2.1"},
		{"dev", "tools", "10.0.2.2"},
	} {
		pd := &pod{
			name: p.ns + "/" + p.app,
			labels: fmt.Sprintf("k8s:app=%s,k8s:io.kubernetes.pod.namespace=%s,k8s:io.cilium.k8s.namespace.labels.team=%s,%s",
				p.app, p.ns, team[p.ns], clusterLbl),
			addr: netip.MustParseAddr(p.addr),
			ns:   testutils.NewNetNS(t),
			ep:   datapath.EndpointID(i + 1),
		}
		ls := mustLabels(t, pd.labels)
		if pd.id, _, err = alloc.Allocate(ctx, ls); err != nil {
			t.Fatal(err)
		}
		epID := pd.ep
		dep, err := d.AddEndpoint(datapath.EndpointConfig{ID: epID, Identity: pd.id, IPv4: pd.addr,
			NetNS: fmt.Sprintf("/proc/self/fd/%d", pd.ns.FD())})
		if err != nil {
			t.Fatal(err)
		}
		// The watch brings the identity to the engine in another goroutine.
		if err := engine.WaitForIdentities(ctx, pd.id); err != nil {
			t.Fatal(err)
		}
		if err := engine.AddEndpoint(dep); err != nil {
			t.Fatal(err)
		}
		for _, port := range conformancePorts {
			testutils.ServeEcho(t, pd.ns, "tcp", netip.AddrPortFrom(pd.addr, port).String())
		}
		w.pods[pd.name] = pd
	}

	// The external addresses, served by the node.
	nl := node.Netlink(t)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{extAllowed, extExcepted, extOther} {
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
		testutils.ServeEcho(t, node, "tcp", netip.AddrPortFrom(a, 443).String())
	}
	return w
}

// connect opens a TCP connection from inside ns, from src if it is valid,
// and echoes one message: nil if the connection works, an error otherwise.
func connect(ns *testutils.NetNS, src, dst netip.AddrPort, timeout time.Duration) error {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(src)
		}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c, timeout)
}

func echoOnce(c net.Conn, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("policy conformance")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// expectation is one line of a truth table: "prod/web -> prod/db:5432".
type expectation struct {
	from, to string // pod names, or an external address for to
	port     uint16
	allowed  bool
	// dropReason is the drop reason of a denied connection: 133 (Cilium's
	// DROP_POLICY, no rule allows it) or 181 (DROP_POLICY_DENY, a deny
	// rule).
	dropReason uint8
	// egressMatch and ingressMatch name the policy entry kind that allows
	// an allowed connection in the sender's and the receiver's policy
	// (PolicyMatch names: "all" where a direction is not enforced,
	// "L3-only", "L3-L4", ...); ingressMatch is empty for a destination
	// outside the cluster.
	egressMatch, ingressMatch string
}

// Cilium's drop reasons for policy, as the kernel reports them.
const (
	dropPolicyDenied = 133 // DROP_POLICY
	dropPolicyDeny   = 181 // DROP_POLICY_DENY
)

func (w *conformanceWorld) dst(e expectation) netip.AddrPort {
	if p, ok := w.pods[e.to]; ok {
		return netip.AddrPortFrom(p.addr, e.port)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(e.to), e.port)
}

// check makes every connection of a truth table and compares the outcome.
// Allowed connections get a generous timeout (the machine may be busy);
// denied ones must time out, which is how a dropped SYN looks.
func (w *conformanceWorld) check(phase string, table []expectation) {
	w.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(table))
	srcs := make([]netip.AddrPort, len(table))
	for i, e := range table {
		srcs[i] = netip.AddrPortFrom(w.pods[e.from].addr, w.nextPort)
		w.nextPort++
		wg.Add(1)
		go func() {
			defer wg.Done()
			timeout := 700 * time.Millisecond
			if e.allowed {
				timeout = 5 * time.Second
			}
			errs[i] = connect(w.pods[e.from].ns, srcs[i], w.dst(e), timeout)
		}()
	}
	wg.Wait()
	for i, e := range table {
		err := errs[i]
		switch {
		case e.allowed && err != nil:
			w.t.Errorf("%s: %s -> %s:%d should connect: %v", phase, e.from, e.to, e.port, err)
		case !e.allowed && err == nil:
			w.t.Errorf("%s: %s -> %s:%d connected, should be denied", phase, e.from, e.to, e.port)
		case !e.allowed && !isTimeout(err):
			w.t.Errorf("%s: %s -> %s:%d failed with %v, want a silent drop", phase, e.from, e.to, e.port, err)
		}
	}
	// The kernel's records agree: each connection's drop or verdicts.
	for i, e := range table {
		tup := datapath.Tuple{Src: srcs[i].Addr(), Dst: w.dst(e).Addr(), SrcPort: srcs[i].Port(), DstPort: e.port, Proto: 6}
		if err := w.checkEvents(e, tup); err != nil {
			w.t.Errorf("%s: %s -> %s:%d: %v", phase, e.from, e.to, e.port, err)
		}
	}
	// The policy's own verdicts agree with the truth table too.
	for _, e := range table {
		if _, ok := w.pods[e.to]; !ok {
			continue
		}
		from, to := w.pods[e.from], w.pods[e.to]
		res, err := w.engine.Repository().Trace(TraceRequest{
			From:     identity.Identity{ID: from.id, Labels: mustLabels(w.t, from.labels)},
			To:       identity.Identity{ID: to.id, Labels: mustLabels(w.t, to.labels)},
			Protocol: nodeplane.ProtoTCP, Port: e.port,
		})
		if err != nil {
			w.t.Fatal(err)
		}
		if res.Allowed != e.allowed {
			w.t.Errorf("%s: trace of %s -> %s:%d says allowed=%v", phase, e.from, e.to, e.port, res.Allowed)
		}
	}
}

func (w *conformanceWorld) apply(doc string) []PolicyID {
	w.t.Helper()
	ps, err := Parse([]byte(doc), "conformance")
	if err != nil {
		w.t.Fatal(err)
	}
	var ids []PolicyID
	for _, p := range ps {
		if _, err := w.engine.ReplacePolicy(p); err != nil {
			w.t.Fatal(err)
		}
		ids = append(ids, p.ID())
	}
	return ids
}

func (w *conformanceWorld) remove(ids ...PolicyID) {
	w.t.Helper()
	for _, id := range ids {
		if _, err := w.engine.DeletePolicy(id); err != nil {
			w.t.Fatal(err)
		}
	}
}

// table builds expectations from lines of the forms
//
//	from -> to:port allow EGRESS/INGRESS   (to a pod)
//	from -> to:port allow EGRESS           (to an external address)
//	from -> to:port deny                   (no rule allows it: 133)
//	from -> to:port deny-rule              (a deny rule: 181)
//
// where EGRESS and INGRESS are the match types of the entries that allow
// the connection in the sender's and the receiver's policy.
func table(t *testing.T, lines string) []expectation {
	t.Helper()
	var out []expectation
	for _, l := range strings.Split(lines, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if len(f) < 4 || f[1] != "->" {
			t.Fatalf("bad line %q", l)
		}
		i := strings.LastIndexByte(f[2], ':')
		var port uint16
		fmt.Sscan(f[2][i+1:], &port)
		e := expectation{from: f[0], to: f[2][:i], port: port}
		switch {
		case f[3] == "allow" && len(f) == 5:
			e.allowed = true
			e.egressMatch, e.ingressMatch, _ = strings.Cut(f[4], "/")
			if _, err := netip.ParseAddr(e.to); (err == nil) != (e.ingressMatch == "") {
				t.Fatalf("line %q: name both match types for a pod, only the egress one for an address", l)
			}
		case f[3] == "deny" && len(f) == 4:
			e.dropReason = dropPolicyDenied
		case f[3] == "deny-rule" && len(f) == 4:
			e.dropReason = dropPolicyDeny
		default:
			t.Fatalf("bad line %q", l)
		}
		out = append(out, e)
	}
	return out
}

func TestPrivilegedConformance(t *testing.T) {
	testutils.RequirePrivileged(t)
	w := newConformanceWorld(t)

	// Traffic runs all along: every 50 ms prod/web opens a connection to
	// prod/db, and dev/tools one to prod/db, recording the outcome.
	type sample struct {
		at      time.Time
		from    string
		allowed bool
	}
	var (
		mu      sync.Mutex
		samples []sample
		stop    = make(chan struct{})
		done    sync.WaitGroup
	)
	for _, from := range []string{"prod/web", "dev/tools"} {
		done.Add(1)
		go func() {
			defer done.Done()
			dst := netip.AddrPortFrom(w.pods["prod/db"].addr, 80)
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				start := time.Now()
				err := connect(w.pods[from].ns, netip.AddrPort{}, dst, time.Second)
				mu.Lock()
				samples = append(samples, sample{start, from, err == nil})
				mu.Unlock()
			}
		}()
	}
	// dwell lets the background traffic sample a phase.
	dwell := func() { time.Sleep(1500 * time.Millisecond) }
	dwell()

	// Phase 0: no policy, everything flows.
	w.check("no policy", table(t, `
		prod/web -> prod/db:5432 allow all/all
		dev/web -> prod/db:80 allow all/all
		dev/tools -> prod/web:8080 allow all/all
		prod/db -> 192.0.2.10:443 allow all
		dev/web -> 198.51.100.10:443 allow all`))

	// Phase 1: deny all ingress in prod.
	tDenyAll := time.Now()
	denyAll := w.apply(knp("prod", "default-deny", "podSelector: {}\npolicyTypes: [Ingress]"))
	dwell()
	w.check("deny-all ingress", table(t, `
		prod/web -> prod/db:5432 deny
		dev/web -> prod/db:80 deny
		dev/tools -> prod/web:8080 deny
		prod/db -> dev/web:80 allow all/all
		dev/web -> dev/tools:9050 allow all/all`))

	// Phase 2: allow within the namespace.
	tSameNS := time.Now()
	sameNS := w.apply(knp("prod", "same-namespace", "podSelector: {}\ningress:\n- from: [{podSelector: {}}]"))
	w.check("allow same namespace", table(t, `
		prod/web -> prod/db:5432 allow all/L3-only
		prod/db -> prod/web:8080 allow all/L3-only
		dev/web -> prod/db:5432 deny
		dev/tools -> prod/web:80 deny`))

	// Phase 3: team b's web pods may reach db on 5432 and 9000-9100
	// (namespaceSelector AND podSelector, ports and a range); every team b
	// pod may reach prod/web on 80 (namespace by label).
	fromTeamB := w.apply(knp("prod", "db-from-team-b-web", `
podSelector: {matchLabels: {app: db}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {team: b}}
    podSelector: {matchLabels: {app: web}}
  ports:
  - port: 5432
  - port: 9000
    endPort: 9100`) + "---\n" + knp("prod", "web-from-team-b", `
podSelector: {matchLabels: {app: web}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {team: b}}
  ports: [{port: 80}]`))
	w.check("namespace and pod selectors, ports", table(t, `
		dev/web -> prod/db:5432 allow all/L3-L4
		dev/web -> prod/db:9050 allow all/L3-L4
		dev/web -> prod/db:9200 deny
		dev/web -> prod/db:80 deny
		dev/tools -> prod/db:5432 deny
		dev/tools -> prod/web:80 allow all/L3-L4
		dev/tools -> prod/web:8080 deny
		prod/web -> prod/db:9200 allow all/L3-only`))

	// A connection established now must survive the deny below: policy
	// decides new connections; conntrack carries established ones.
	var established net.Conn
	if err := w.pods["dev/web"].ns.Do(func() (err error) {
		established, err = net.DialTimeout("tcp", netip.AddrPortFrom(w.pods["prod/db"].addr, 5432).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer established.Close()

	// Phase 4: dev/web's egress: the cluster, and 192.0.2.0/24 on 443
	// except 192.0.2.128/25.
	webEgress := w.apply(cnp("dev", "web-egress", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toEntities: [cluster]
- toCIDRSet:
  - cidr: 192.0.2.0/24
    except: [192.0.2.128/25]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]`))
	w.check("egress to CIDR with except", table(t, `
		dev/web -> 192.0.2.10:443 allow L3-L4
		dev/web -> 192.0.2.200:443 deny
		dev/web -> 198.51.100.10:443 deny
		dev/tools -> 198.51.100.10:443 allow all
		dev/web -> prod/db:5432 allow L3-only/L3-L4
		dev/web -> dev/tools:80 allow L3-only/all`))

	// Phase 5: deny overrides allow.
	deny := w.apply(cnp("prod", "no-5432-from-dev-web", `
endpointSelector: {matchLabels: {app: db}}
ingressDeny:
- fromEndpoints:
  - matchLabels: {io.kubernetes.pod.namespace: dev, app: web}
  toPorts: [{ports: [{port: "5432", protocol: TCP}]}]`))
	w.check("deny overrides allow", table(t, `
		dev/web -> prod/db:5432 deny-rule
		dev/web -> prod/db:9050 allow L3-only/L3-L4
		prod/web -> prod/db:5432 allow all/L3-only`))
	if err := echoOnce(established, 5*time.Second); err != nil {
		t.Errorf("established connection broken by a new deny: %v", err)
	}

	// Phase 6: policies removed while traffic runs.
	w.remove(deny...)
	w.check("deny removed", table(t, `dev/web -> prod/db:5432 allow L3-only/L3-L4`))
	tOpen := time.Now()
	w.remove(append(append(append(sameNS, fromTeamB...), webEgress...), denyAll...)...)
	dwell()
	w.check("all removed", table(t, `
		dev/web -> prod/db:80 allow all/all
		dev/tools -> prod/web:8080 allow all/all
		dev/web -> 198.51.100.10:443 allow all`))
	close(stop)
	done.Wait()

	// The background traffic saw each change: prod/web -> prod/db:80 was
	// allowed before phase 1, denied between the deny-all and the
	// same-namespace allow, allowed after; dev/tools -> prod/db:80 was
	// denied from phase 1 until everything was removed.
	settle := 400 * time.Millisecond
	phase := func(from string, start, end time.Time) (allowed, denied int) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range samples {
			if s.from != from || s.at.Before(start.Add(settle)) || !end.IsZero() && s.at.After(end.Add(-settle)) {
				continue
			}
			if s.allowed {
				allowed++
			} else {
				denied++
			}
		}
		return
	}
	for _, want := range []struct {
		from       string
		start, end time.Time
		allowed    bool
	}{
		{"prod/web", time.Time{}, tDenyAll, true},
		{"prod/web", tDenyAll, tSameNS, false},
		{"prod/web", tSameNS, tOpen, true},
		{"dev/tools", time.Time{}, tDenyAll, true},
		{"dev/tools", tDenyAll, tOpen, false},
		{"dev/tools", tOpen, time.Time{}, true},
	} {
		a, d := phase(want.from, want.start, want.end)
		t.Logf("background %s -> prod/db:80, allowed=%v phase: %d allowed, %d denied", want.from, want.allowed, a, d)
		if want.allowed && (d > 0 || a == 0) || !want.allowed && (a > 0 || d == 0) {
			t.Errorf("background %s -> prod/db:80 in [%v, %v]: %d allowed, %d denied, want all allowed=%v",
				want.from, want.start.Format("15:04:05.000"), want.end.Format("15:04:05.000"), a, d, want.allowed)
		}
	}
}
