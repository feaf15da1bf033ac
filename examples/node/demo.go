package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/flow"
)

// The demo's service address and ports. 10.96.0.0/12 is Kubernetes'
// default service range; the address is only ever translated at the
// socket layer of this process's cgroup, and pod traffic stays inside
// the demo's own namespaces.
var demoServiceIP = netip.MustParseAddr("10.96.200.10")

const (
	demoAPIPort = 8080
	demoDBPort  = 5432
)

// The policies: api takes web's connections on 8080 (a
// CiliumNetworkPolicy); db takes api's on 5432 and nobody else's (a
// Kubernetes NetworkPolicy), so web → db is dropped.
const demoPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-from-web, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-api, namespace: demo}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432, protocol: TCP}]
`

// demoService is the Service in front of api and its EndpointSlice.
const demoService = `apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  clusterIP: %[1]s
  ports: [{name: http, port: %[3]d, targetPort: %[3]d, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: demo
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
endpoints:
- addresses: [%[2]s]
  conditions: {ready: true}
ports: [{name: http, port: %[3]d, protocol: TCP}]
`

type demoConfig struct {
	Follow                      bool
	HubbleListen, MetricsListen string
}

// demoPod is one of the demo's pods: its own network namespace, and the
// endpoint the agent made for it through the local API.
type demoPod struct {
	app, name string
	ns        *datapath.NetNS
	addr      netip.Addr
	container string
}

// runDemo runs the demo: everything it creates lives in a temporary
// directory (state, manifests, the API socket), a bpffs mounted there, and
// network namespaces of its own (the pods' and the node side's), and is
// removed before it returns, whatever happened.
func runDemo(ctx context.Context, cfg demoConfig, out io.Writer, log *slog.Logger) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (it loads BPF programs and creates network namespaces)")
	}
	tmp, err := os.MkdirTemp("", "nodeplane-demo-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(tmp)) }()
	bpffs := filepath.Join(tmp, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a bpffs on %s: %w", bpffs, err)
	}
	defer func() { err = errors.Join(err, unix.Unmount(bpffs, unix.MNT_DETACH)) }()
	manifests := filepath.Join(tmp, "manifests")
	if err := os.Mkdir(manifests, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(manifests, "policies.yaml"), []byte(demoPolicies), 0o600); err != nil {
		return err
	}
	// The node side of the demo's veths lives in a namespace of its own,
	// so the host's interfaces and routes are never touched.
	nodeNS, err := datapath.NewNetNS()
	if err != nil {
		return err
	}
	defer nodeNS.Close()
	// The service is translated for this process's sockets, at its
	// cgroup. Without cgroup2 the demo runs without the service.
	cgroup, err := ownCgroup()
	if err != nil {
		log.Warn("no cgroup2 hierarchy: the demo runs without its service", "err", err)
		cgroup = ""
	}

	agent, err := newDemoAgent(ctx, log, Config{Node: "demo-node", StateDir: filepath.Join(tmp, "state"), BPFFSDir: bpffs,
		NodeNetNS: nodeNS.Path(), PoolV4: netip.MustParsePrefix("10.200.0.0/24"), Cgroup: cgroup,
		Manifests: manifests, ManifestPoll: time.Second, Logger: log})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, agent.Uninstall(context.Background())) }()
	serveCtx, stopServe := context.WithCancel(ctx)
	serveDone := make(chan error, 1)
	socket := filepath.Join(tmp, "agent.sock")
	go func() {
		serveDone <- agent.Serve(serveCtx, ServeConfig{Socket: socket, HubbleListen: cfg.HubbleListen, MetricsListen: cfg.MetricsListen})
	}()
	defer func() {
		stopServe()
		err = errors.Join(err, <-serveDone)
	}()

	// Flows from now on, printed as they come.
	start := time.Now()
	var (
		printer sync.WaitGroup
		counts  demoCounts
	)
	flowCtx, stopFlows := context.WithCancel(ctx)
	printer.Add(1)
	go func() {
		defer printer.Done()
		_ = agent.Flows().GetFlows(flowCtx, flow.Request{Follow: true, Since: start}, func(r *flow.Response) error {
			if r.Flow != nil {
				counts.add(out, r.Flow)
			}
			return nil
		})
	}()
	defer func() { stopFlows(); printer.Wait() }()

	client := agentapi.NewClient(socket)
	if err := waitForAgent(ctx, client); err != nil {
		return err
	}
	fmt.Fprintf(out, "nodeplane demo: pods web, api and db in namespace demo; service api at %v:%d; policy: web -> api:%d allowed, web -> db:%d denied\n\n",
		demoServiceIP, demoAPIPort, demoAPIPort, demoDBPort)
	pods := map[string]*demoPod{}
	for _, app := range []string{"web", "api", "db"} {
		p, err := addDemoPod(ctx, client, app)
		if p != nil {
			defer p.ns.Close()
		}
		if err != nil {
			return fmt.Errorf("pod %s: %w", app, err)
		}
		pods[app] = p
	}
	srvCtx, stopServers := context.WithCancel(context.Background())
	defer stopServers()
	for app, port := range map[string]uint16{"api": demoAPIPort, "db": demoDBPort} {
		if err := pods[app].serve(srvCtx, port); err != nil {
			return err
		}
	}
	svc := fmt.Sprintf(demoService, demoServiceIP, pods["api"].addr, demoAPIPort)
	if err := os.WriteFile(filepath.Join(manifests, "service-api.yaml"), []byte(svc), 0o600); err != nil {
		return err
	}
	if err := agent.Reload(); err != nil {
		return err
	}

	web := pods["web"]
	type check struct {
		what  string
		from  *demoPod
		dst   netip.AddrPort
		allow bool
	}
	checks := []check{
		{"web -> api", web, netip.AddrPortFrom(pods["api"].addr, demoAPIPort), true},
		{"web -> db", web, netip.AddrPortFrom(pods["db"].addr, demoDBPort), false},
		{"api -> db", pods["api"], netip.AddrPortFrom(pods["db"].addr, demoDBPort), true},
	}
	if agent.lb != nil {
		checks = append([]check{{"web -> service api", web, netip.AddrPortFrom(demoServiceIP, demoAPIPort), true}}, checks...)
	}
	var results []string
	var wrong []string
	for round := 0; ; round++ {
		for _, c := range checks {
			if round > 0 && ctx.Err() != nil {
				break // Ctrl-C while following
			}
			reply, cerr := c.from.connect(c.dst, 2*time.Second)
			res := fmt.Sprintf("%-19s %-21v ", c.what, c.dst)
			if cerr == nil {
				res += fmt.Sprintf("connected (%q)", reply)
			} else {
				res += "failed: " + shortErr(cerr)
			}
			if (cerr == nil) != c.allow && (round == 0 || ctx.Err() == nil) {
				wrong = append(wrong, res)
			}
			if round == 0 {
				results = append(results, res)
			}
		}
		if !cfg.Follow || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
		if ctx.Err() != nil {
			break
		}
	}
	// The last records reach the observer within a poll interval.
	time.Sleep(1500 * time.Millisecond)
	stopFlows()
	printer.Wait()

	fmt.Fprintln(out, "\nconnections:")
	for _, r := range results {
		fmt.Fprintln(out, "  "+r)
	}
	fwd, drop, allowed, denied := counts.get()
	fmt.Fprintf(out, "\nsummary: %d packets forwarded, %d dropped; policy decisions: %d allowed, %d denied; policy enforced as written: %v\n",
		fwd, drop, allowed, denied, len(wrong) == 0)
	fmt.Fprintln(out, "cleaning up: endpoints, service, namespaces, bpffs and state removed")
	if len(wrong) > 0 {
		return fmt.Errorf("unexpected results: %s", strings.Join(wrong, "; "))
	}
	if drop == 0 || fwd == 0 {
		return fmt.Errorf("expected forwarded and dropped flows, saw %d and %d", fwd, drop)
	}
	return nil
}

func waitForAgent(ctx context.Context, c *agentapi.Client) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Status(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// addDemoPod makes a pod's namespace and asks the agent for its endpoint,
// as a CNI plugin would.
func addDemoPod(ctx context.Context, c *agentapi.Client, app string) (*demoPod, error) {
	ns, err := datapath.NewNetNS()
	if err != nil {
		return nil, err
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	p := &demoPod{app: app, name: app + "-" + suffix, ns: ns, container: "demo-" + app + "-" + suffix}
	resp, err := c.Add(ctx, agentapi.AddRequest{
		Attachment: agentapi.Attachment{ContainerID: p.container, IfName: "eth0"},
		NetNS:      ns.Path(), Namespace: "demo", Pod: p.name, Labels: map[string]string{"app": app},
	})
	if err != nil {
		return p, err
	}
	p.addr = resp.IPs[0].Address.Addr()
	return p, nil
}

// serve answers every connection on port with a greeting, until ctx ends.
func (p *demoPod) serve(ctx context.Context, port uint16) error {
	var l net.Listener
	if err := p.ns.Do(func() (err error) {
		l, err = net.Listen("tcp", netip.AddrPortFrom(p.addr, port).String())
		return err
	}); err != nil {
		return err
	}
	go func() { <-ctx.Done(); l.Close() }()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = fmt.Fprintf(c, "hello from %s\n", p.name)
			}()
		}
	}()
	return nil
}

// connect connects from inside the pod and reads the greeting.
func (p *demoPod) connect(dst netip.AddrPort, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := p.ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b := make([]byte, 64)
	n, err := c.Read(b)
	if err != nil && n == 0 {
		return "", err
	}
	return strings.TrimSpace(string(b[:n])), nil
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out (dropped)"
	}
	return err.Error()
}

// demoCounts counts and prints flows.
type demoCounts struct {
	mu              sync.Mutex
	fwd, drop       int // forwarded and dropped packets
	allowed, denied int // policy decisions about new connections
}

func (d *demoCounts) get() (fwd, drop, allowed, denied int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fwd, d.drop, d.allowed, d.denied
}

// add counts a flow between the demo's pods and prints the ones people
// want to see: every policy decision about a new connection and every
// drop. Flows that involve no pod (the pods' IPv6 link-local chatter,
// which the IPv4-only demo endpoints drop) are left out.
func (d *demoCounts) add(out io.Writer, f *flow.Flow) {
	if f.Source.PodName == "" && f.Destination.PodName == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case f.EventType.Type == int32(monitor.MessageTypePolicyVerdict) && f.Verdict == flow.Dropped:
		d.denied++
	case f.EventType.Type == int32(monitor.MessageTypePolicyVerdict):
		d.allowed++
	case f.Verdict == flow.Forwarded:
		d.fwd++
	case f.Verdict == flow.Dropped:
		d.drop++
	}
	if f.EventType.Type != int32(monitor.MessageTypePolicyVerdict) && f.Verdict != flow.Dropped {
		return
	}
	fmt.Fprintln(out, formatFlow(f))
}

// formatFlow is a one-line flow for people:
//
//	12:00:01.123 demo/web-1a2b3c (k8s:app=web,…) -> demo/db-4d5e6f (k8s:app=db,…) :5432 TCP SYN DROPPED (POLICY_DENIED)
func formatFlow(f *flow.Flow) string {
	var b strings.Builder
	b.WriteString(f.Time.Format("15:04:05.000"))
	b.WriteString(" ")
	b.WriteString(endpointText(f.Source, f.IP.Source))
	b.WriteString(" -> ")
	b.WriteString(endpointText(f.Destination, f.IP.Destination))
	fmt.Fprintf(&b, " :%d %v", f.L4.DestinationPort, f.L4.Protocol)
	if f.L4.TCPFlags != 0 {
		b.WriteString(" " + strings.ReplaceAll(f.L4.TCPFlags.String(), ", ", "|"))
	}
	switch {
	case f.EventType.Type == int32(monitor.MessageTypePolicyVerdict):
		// Hubble prints a policy decision as ALLOWED or DENIED.
		verdict := "ALLOWED"
		if f.Verdict == flow.Dropped {
			verdict = "DENIED"
		}
		fmt.Fprintf(&b, " policy-verdict:%v %s", f.TrafficDirection, verdict)
	case f.Verdict == flow.Dropped:
		fmt.Fprintf(&b, " DROPPED (%v)", f.DropReason)
	default:
		b.WriteString(" " + fmt.Sprint(f.Verdict))
	}
	return b.String()
}

// endpointText names one end of a flow: namespace/pod and its labels, or
// the address and identity when it is not a pod.
func endpointText(e flow.Endpoint, addr netip.Addr) string {
	var labels []string
	for _, l := range e.Labels {
		if strings.Contains(l, "io.cilium.k8s.namespace.labels") {
			continue
		}
		labels = append(labels, l)
	}
	name := addr.String()
	if e.PodName != "" {
		name = e.Namespace + "/" + e.PodName
	}
	return fmt.Sprintf("%s (%s)", name, strings.Join(labels, ","))
}

// newDemoAgent starts the demo's agent; where the kernel cannot load the
// socket load balancer, it starts one without it (and the demo runs
// without its service).
func newDemoAgent(ctx context.Context, log *slog.Logger, cfg Config) (*Agent, error) {
	a, err := New(ctx, cfg)
	if err == nil || cfg.Cgroup == "" || !errors.Is(err, nodeplane.ErrNotSupported) {
		return a, err
	}
	log.Warn("no socket load balancer on this kernel: the demo runs without its service", "err", err)
	cfg.Cgroup = ""
	return New(ctx, cfg)
}
