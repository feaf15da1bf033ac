package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/rest"

	"github.com/nodeplane/nodeplane/bandwidth"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/etcdalloc"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/statefile"
	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/policy/mapstate"
	"github.com/nodeplane/nodeplane/proxy"
	"github.com/nodeplane/nodeplane/proxy/dnsproxy"
	"github.com/nodeplane/nodeplane/proxy/httpproxy"
)

// Config configures an Agent. Paths must be absolute or relative to the
// working directory; the directories are created if missing (BPFFSDir must
// be on a bpffs mount).
type Config struct {
	// Node names this node (default: the host name).
	Node string
	// StateDir holds the agent's state files: endpoints, addresses,
	// identities.
	StateDir string
	// BPFFSDir is a directory on a bpffs mount where the datapath and the
	// socket load balancer pin their state, so endpoints outlive the agent.
	BPFFSDir string
	// NodeNetNS is the network namespace of the host-side interfaces;
	// empty means the agent's own (tests and the demo use a private one).
	NodeNetNS string
	// PoolV4 and PoolV6 are the host-scope address pools; at least one.
	PoolV4, PoolV6 netip.Prefix
	// Etcd lists etcd endpoints for a cluster-wide identity allocator;
	// empty means the in-process allocator, persisted in StateDir.
	Etcd []string
	// Cgroup is the cgroup2 directory whose sockets the load balancer
	// translates; empty disables services.
	Cgroup string
	// Manifests is a directory of Kubernetes manifests (policies,
	// Service, EndpointSlice) the agent follows; empty means none.
	Manifests string
	// ManifestPoll is how often Manifests is read for changes (default 2s).
	ManifestPoll time.Duration
	// BandwidthDevices are the node's egress devices, on which the
	// bandwidth manager installs fq for EDT. With none (the default) and
	// BandwidthMechanism auto, the agent uses the token-bucket fallback:
	// EDT limits nothing without fq on the device the traffic leaves by.
	BandwidthDevices []string
	// BandwidthMechanism is how pods' egress rates are enforced; auto
	// picks EDT where the kernel has sch_fq and devices are given, else
	// the token-bucket fallback.
	BandwidthMechanism bandwidth.Mechanism
	// HTTPProxyPort runs the node's HTTP proxy on this port, so that
	// policies with HTTP rules are enforced (0, the default: no proxy, and
	// such policies are refused as not supported).
	HTTPProxyPort uint16
	// DNSProxyPort runs the node's DNS proxy on this port, so that
	// policies with DNS rules and toFQDNs are enforced (0, the default: no
	// proxy, and such policies are refused as not supported).
	DNSProxyPort uint16
	// ToFQDNsMinTTL is the shortest time an address learnt from DNS stays
	// selectable, Cilium's --tofqdns-min-ttl (0, the default: the
	// answer's TTL).
	ToFQDNsMinTTL time.Duration
	// Kube, when set, makes a Kubernetes API server the source of pods'
	// labels, namespaces, policies and services (instead of Manifests,
	// which must then be empty). The Node object named Node must exist;
	// its spec.podCIDRs, if any, replace PoolV4 and PoolV6.
	Kube   *rest.Config
	Logger *slog.Logger
}

// Agent is the node agent: one of each SDK object, composed as
// doc/architecture.md describes, plus the endpoints it made through the
// local API. Its methods implement agentapi.Backend.
type Agent struct {
	cfg Config
	log *slog.Logger

	lock    *statefile.Lock
	state   *statefile.File
	pool    *ipam.Pool
	alloc   identity.Allocator
	inproc  *identity.InProcessAllocator // nil with etcd
	etcd    *clientv3.Client
	dp      *datapath.Datapath
	ipc     *ipcache.IPCache
	engine  *policy.Engine
	lb      *lb.LB // nil without Cgroup
	catalog *flow.Catalog
	events  *datapath.EventReader
	obs     *flow.Observer
	reg     *prometheus.Registry
	// bw enforces pods' bandwidth limits; nil when it could not be
	// created (bwErr says why), and then an Add asking for a limit fails.
	bw    *bandwidth.Manager
	bwErr error
	// routing and httpProxy are the HTTP proxy's (nil without one).
	routing   *proxy.Routing
	httpProxy *httpproxy.Proxy
	dnsProxy  *dnsproxy.Proxy // nil without DNSProxyPort
	// kube follows the API server; nil without Config.Kube.
	kube *kubeSource

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex // serialises endpoint changes and the state file
	eps       map[attachmentKey]*endpoint
	manifests manifestSet // the set in force
	manErr    error       // the last reload's error, nil when it applied
	// seenDigest is the digest of the manifests last read, valid or not.
	seenDigest [sha256.Size]byte
}

type attachmentKey struct{ container, ifName string }

// endpoint is one endpoint the agent made: its record (what the state file
// keeps) and the datapath handle.
type endpoint struct {
	rec record
	ep  *managedEndpoint
}

// managedEndpoint is what the policy engine manages: a datapath endpoint
// whose first ApplyPolicy also removes the entries an earlier agent left in
// an adopted endpoint's pinned map that the new policy no longer has, so
// the map after a restart is exactly the compiled policy.
type managedEndpoint struct {
	*datapath.Endpoint
	reconcile bool
}

// ApplyPolicy implements policy.LocalEndpoint.
func (m *managedEndpoint) ApplyPolicy(upserts mapstate.State, deletes []mapstate.Key) error {
	if m.reconcile {
		cur, err := m.Policy().Dump()
		if err != nil {
			return err
		}
		for k := range cur {
			if _, keep := upserts[k]; !keep {
				deletes = append(deletes, k)
			}
		}
	}
	if err := m.Endpoint.ApplyPolicy(upserts, deletes); err != nil {
		return err
	}
	m.reconcile = false
	return nil
}

// New builds the agent and restores what an earlier agent on the same
// StateDir and BPFFSDir left: endpoints keep running throughout, their
// identities are allocated again from the same labels, and their policy
// maps are rewritten to the current policy without a moment of allow-all.
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if cfg.StateDir == "" || cfg.BPFFSDir == "" {
		return nil, errors.New("a state directory and a bpffs directory are required")
	}
	if cfg.Kube != nil && cfg.Manifests != "" {
		return nil, errors.New("a manifest directory and a Kubernetes API server cannot both be the source of policy")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
	}
	if cfg.ManifestPoll <= 0 {
		cfg.ManifestPoll = 2 * time.Second
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, eps: make(map[attachmentKey]*endpoint)}
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			err = errors.Join(err, a.Close())
		}
	}()
	if cfg.Kube != nil {
		if a.kube, err = newKubeSource(a, cfg.Kube); err != nil {
			return nil, err
		}
		cidrs, err := a.kube.nodePodCIDRs(ctx)
		if err != nil {
			return nil, err
		}
		if len(cidrs) > 0 {
			cfg.PoolV4, cfg.PoolV6 = netip.Prefix{}, netip.Prefix{}
			for _, c := range cidrs {
				if c.Addr().Is4() && !cfg.PoolV4.IsValid() {
					cfg.PoolV4 = c
				} else if c.Addr().Is6() && !cfg.PoolV6.IsValid() {
					cfg.PoolV6 = c
				}
			}
			a.cfg = cfg
			a.log.Info("pod CIDRs from the Node object", "node", cfg.Node, "podCIDRs", cidrs)
		} else {
			a.log.Warn("the Node object has no spec.podCIDRs; using the configured pools", "node", cfg.Node, "v4", cfg.PoolV4, "v6", cfg.PoolV6)
		}
	}
	if !cfg.PoolV4.IsValid() && !cfg.PoolV6.IsValid() {
		return nil, errors.New("an IPv4 or an IPv6 pool is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	if a.lock, err = statefile.TryLockDir(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("state directory %s: %w (is another agent running?)", cfg.StateDir, err)
	}
	if a.state, err = statefile.New(filepath.Join(cfg.StateDir, "endpoints.state"), stateFormat); err != nil {
		return nil, err
	}
	recs, err := loadRecords(a.state)
	if err != nil {
		return nil, err
	}

	// Addresses: the pool restores its own state file.
	ipamState, err := ipam.NewStateFile(filepath.Join(cfg.StateDir, "ipam.state"))
	if err != nil {
		return nil, err
	}
	var prefixes []netip.Prefix
	for _, p := range []netip.Prefix{cfg.PoolV4, cfg.PoolV6} {
		if p.IsValid() {
			prefixes = append(prefixes, p.Masked())
		}
	}
	if a.pool, err = ipam.New(ipam.Config{Prefixes: prefixes, State: ipamState}); err != nil {
		return nil, fmt.Errorf("address pool: %w", err)
	}

	// Identities: etcd when given, else in process with a state file.
	if len(cfg.Etcd) > 0 {
		a.etcd, err = clientv3.New(clientv3.Config{Endpoints: cfg.Etcd, DialTimeout: 5 * time.Second})
		if err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
		if a.alloc, err = etcdalloc.New(ctx, etcdalloc.Config{Client: a.etcd, NodeName: cfg.Node}); err != nil {
			return nil, fmt.Errorf("etcd identity allocator: %w", err)
		}
	} else {
		a.inproc, err = identity.NewInProcessAllocator(identity.InProcessConfig{
			StatePath: filepath.Join(cfg.StateDir, "identity.state")})
		if err != nil {
			return nil, fmt.Errorf("identity allocator: %w", err)
		}
		a.alloc = a.inproc
	}

	// The datapath adopts the endpoints pinned in BPFFSDir.
	dpDir := filepath.Join(cfg.BPFFSDir, "datapath")
	if err := os.MkdirAll(dpDir, 0o700); err != nil {
		return nil, err
	}
	if a.dp, err = datapath.New(datapath.Config{BPFFSDir: dpDir, NodeNetNS: cfg.NodeNetNS}); err != nil {
		return nil, fmt.Errorf("datapath: %w", err)
	}
	rep := a.dp.Restored()
	for _, n := range rep.Removed {
		a.log.Info("datapath removed a pinned endpoint", "endpoint", n.ID, "reason", n.Reason)
	}
	for _, n := range rep.Repaired {
		a.log.Warn("datapath repaired a pinned endpoint", "endpoint", n.ID, "reason", n.Reason)
	}
	a.startBandwidth()
	a.ipc = ipcache.New()
	if err := a.ipc.AddWriter(a.dp.IPCache()); err != nil {
		return nil, err
	}
	ecfg := policy.EngineConfig{CIDRAllocator: a.alloc, IPCache: a.ipc,
		Policy: policy.Config{ProxyPorts: policy.ProxyPorts{HTTP: cfg.HTTPProxyPort, DNS: cfg.DNSProxyPort}}}
	if cfg.DNSProxyPort != 0 {
		ecfg.FQDN = &fqdn.Config{MinTTL: cfg.ToFQDNsMinTTL}
	}
	if a.engine, err = policy.NewEngine(ecfg); err != nil {
		return nil, err
	}
	a.goroutine("identity watch", func(ctx context.Context) error { return a.engine.WatchIdentities(ctx, a.alloc) })

	if cfg.Cgroup != "" {
		lbDir := filepath.Join(cfg.BPFFSDir, "lb")
		if err := os.MkdirAll(lbDir, 0o700); err != nil {
			return nil, err
		}
		if a.lb, err = lb.New(lb.Config{Cgroup: cfg.Cgroup, PinPath: lbDir}); err != nil {
			return nil, fmt.Errorf("socket load balancer on %s: %w", cfg.Cgroup, err)
		}
	}

	// Flows: the observer reads the datapath's events, the catalog names
	// the identities and endpoints in them.
	a.catalog = flow.NewCatalog(flow.CatalogConfig{})
	a.goroutine("flow catalog", func(ctx context.Context) error { return a.catalog.SyncIdentities(ctx, a.alloc) })
	if a.events, err = a.dp.NewEventReader(); err != nil {
		return nil, err
	}
	if err := a.startFlows(); err != nil {
		return nil, err
	}
	if err := a.startHTTPProxy(); err != nil {
		return nil, fmt.Errorf("HTTP proxy on port %d: %w", cfg.HTTPProxyPort, err)
	}
	if err := a.startDNSProxy(); err != nil {
		return nil, fmt.Errorf("DNS proxy on port %d: %w", cfg.DNSProxyPort, err)
	}

	// Policy before endpoints: a restored endpoint's map must go from the
	// old policy straight to the current one.
	if cfg.Manifests != "" {
		set, err := loadManifests(cfg.Manifests, cfg.Node)
		if err != nil {
			return nil, fmt.Errorf("manifests in %s: %w", cfg.Manifests, err)
		}
		if err := a.applyManifests(set); err != nil {
			return nil, err
		}
		a.seenDigest = set.digest
	}
	if a.kube != nil {
		if err := a.kube.start(ctx); err != nil {
			return nil, err
		}
	}
	if err := a.restore(ctx, recs); err != nil {
		return nil, err
	}
	if a.kube != nil {
		a.kube.afterRestore(ctx)
	}
	return a, nil
}

// startBandwidth creates the bandwidth manager and says which mechanism
// enforces egress rates. A manager that cannot be created does not stop
// the agent: pods without limits still work, and an Add asking for one
// fails (fail closed) instead of being accepted unenforced.
func (a *Agent) startBandwidth() {
	a.bw, a.bwErr = bandwidth.New(bandwidth.Config{Mechanism: a.cfg.BandwidthMechanism, NodeNetNS: a.cfg.NodeNetNS, Devices: a.cfg.BandwidthDevices})
	if a.bwErr != nil {
		a.bw = nil
		a.log.Error("bandwidth manager unavailable: pods asking for bandwidth limits will be refused",
			"mechanism", a.cfg.BandwidthMechanism, "devices", a.cfg.BandwidthDevices, "err", a.bwErr)
		return
	}
	switch {
	case a.bw.Mechanism() == bandwidth.MechanismEDT && len(a.cfg.BandwidthDevices) == 0:
		a.log.Warn("bandwidth: egress limits by EDT, but no -bandwidth-devices: departure times hold only where a device already has fq",
			"mechanism", a.bw.Mechanism())
	case a.bw.Mechanism() == bandwidth.MechanismEDT:
		a.log.Info("bandwidth: egress limits by EDT, fq installed on the egress devices",
			"mechanism", a.bw.Mechanism(), "devices", a.cfg.BandwidthDevices)
	default:
		var reason string
		switch {
		case a.cfg.BandwidthMechanism == bandwidth.MechanismTBF:
			reason = "chosen by configuration"
		case bandwidth.HaveEDT() != nil:
			reason = bandwidth.HaveEDT().Error()
		case bandwidth.HaveDeliveryTime() != nil:
			reason = bandwidth.HaveDeliveryTime().Error()
		default:
			reason = "the kernel has EDT, but no -bandwidth-devices were given to install fq on"
		}
		a.log.Info("bandwidth: egress limits by the token-bucket fallback (tbf per pod, not EDT)",
			"mechanism", a.bw.Mechanism(), "reason", reason)
	}
}

// goroutine runs fn until the agent closes, logging an unexpected end.
func (a *Agent) goroutine(name string, fn func(context.Context) error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := fn(a.ctx); err != nil && a.ctx.Err() == nil {
			a.log.Error(name+" stopped", "err", err)
		}
	}()
}

// restore takes over the endpoints of the records: each one the datapath
// adopted gets its identity, ipcache entry and policy again; records of
// endpoints that are gone release their addresses, and endpoints or
// addresses without a record (an Add that crashed half way) are removed.
func (a *Agent) restore(ctx context.Context, recs []record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	kept := make(map[datapath.EndpointID]bool)
	owners := make(map[string]bool)
	// Every identity first, so that no endpoint's policy is compiled
	// before the engine knows the peers it allows: the first write to an
	// adopted map removes what the compiled policy lacks.
	var (
		restored []*endpoint
		ids      []identity.ID
	)
	for _, rec := range recs {
		dpEP, ok := a.dp.Endpoint(datapath.EndpointID(rec.EndpointID))
		if !ok {
			a.log.Warn("endpoint is gone; releasing it", "container", rec.ContainerID, "endpoint", rec.EndpointID)
			continue
		}
		labels, err := rec.labels()
		if err != nil {
			return err
		}
		id, _, err := a.alloc.Allocate(ctx, labels)
		if err != nil {
			return fmt.Errorf("identity of endpoint %d: %w", rec.EndpointID, err)
		}
		if uint32(id) != rec.Identity {
			a.log.Warn("endpoint identity changed across restart", "endpoint", rec.EndpointID, "old", rec.Identity, "new", uint32(id))
			if err := dpEP.SetIdentity(id); err != nil {
				return err
			}
			rec.Identity = uint32(id)
		}
		restored = append(restored, &endpoint{rec: rec, ep: &managedEndpoint{Endpoint: dpEP, reconcile: true}})
		ids = append(ids, id)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.engine.WaitForIdentities(wctx, ids...); err != nil {
		return fmt.Errorf("restore endpoints: %w", err)
	}
	for _, e := range restored {
		if err := a.publish(ctx, e); err != nil {
			return fmt.Errorf("restore endpoint %d: %w", e.rec.EndpointID, err)
		}
		a.restoreLimits(e)
		a.eps[e.rec.key()] = e
		kept[e.ep.ID()] = true
		owners[e.rec.owner()] = true
	}
	for _, ep := range a.dp.Endpoints() {
		if !kept[ep.ID()] {
			a.log.Warn("deleting an endpoint no record names", "endpoint", ep.ID())
			if err := ep.Delete(); err != nil {
				return err
			}
		}
	}
	for _, owner := range a.pool.Snapshot().Owners() {
		if !owners[owner] {
			if _, err := a.pool.ReleaseOwner(owner); err != nil {
				return err
			}
		}
	}
	if a.inproc != nil {
		if _, err := a.inproc.ReleaseRestored(ctx); err != nil {
			return err
		}
	}
	// Kernel ipcache entries nobody publishes any more (endpoints that
	// went away while no agent ran).
	if dump, err := a.dp.IPCache().Dump(); err == nil {
		for pfx := range dump {
			if _, ok := a.ipc.Get(pfx); !ok {
				_ = a.dp.IPCache().DeletePrefix(pfx)
			}
		}
	}
	if len(recs) > 0 {
		a.log.Info("restored endpoints", "endpoints", len(a.eps), "records", len(recs))
	}
	return a.saveLocked()
}

// publish makes an endpoint known: address → identity in the ipcache,
// its policy from the engine, its names in the flow catalog.
func (a *Agent) publish(ctx context.Context, e *endpoint) error {
	id := identity.ID(e.rec.Identity)
	for _, p := range e.rec.Addrs {
		if err := a.ipc.Upsert(p, ipcache.Entry{Identity: id}); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.engine.WaitForIdentities(wctx, id); err != nil {
		return err
	}
	if err := a.engine.AddEndpoint(e.ep); err != nil {
		return err
	}
	for _, p := range e.rec.Addrs {
		a.catalog.SetEndpoint(p.Addr(), flow.EndpointInfo{ID: uint32(e.rec.EndpointID), Namespace: e.rec.Namespace, PodName: e.rec.podName()})
	}
	if e.ep.HostIfindex() != 0 {
		a.catalog.SetInterface(uint32(e.ep.HostIfindex()), e.ep.HostIfName())
	}
	return nil
}

// Close stops the agent and releases its descriptors. Endpoints, their
// policy and the services stay installed for the next agent.
func (a *Agent) Close() error {
	a.cancel()
	if a.kube != nil {
		a.kube.stop()
	}
	var errs []error
	errs = append(errs, a.closeDNSProxy(), a.closeHTTPProxy())
	if a.events != nil {
		errs = append(errs, a.events.Close())
	}
	a.wg.Wait()
	if a.lb != nil {
		errs = append(errs, a.lb.Close())
	}
	if a.engine != nil {
		errs = append(errs, a.engine.Close())
	}
	if a.dp != nil {
		errs = append(errs, a.dp.Close())
	}
	if a.alloc != nil {
		errs = append(errs, a.alloc.Close())
	}
	if a.etcd != nil {
		errs = append(errs, a.etcd.Close())
	}
	if a.lock != nil {
		errs = append(errs, a.lock.Close())
		a.lock = nil
	}
	return errors.Join(errs...)
}

// Uninstall deletes every endpoint, service and pin and closes the agent:
// the node is left as if it had never run (the demo's way out).
func (a *Agent) Uninstall(ctx context.Context) error {
	var errs []error
	a.mu.Lock()
	for k, e := range a.eps {
		errs = append(errs, a.releaseLocked(ctx, e))
		delete(a.eps, k)
	}
	errs = append(errs, a.saveLocked())
	a.mu.Unlock()
	if a.lb != nil {
		for _, fe := range a.lb.Services() {
			errs = append(errs, a.lb.Delete(fe))
		}
	}
	a.cancel()
	if a.events != nil {
		errs = append(errs, a.events.Close())
	}
	a.wg.Wait()
	if a.dp != nil {
		errs = append(errs, a.dp.Uninstall())
	}
	if a.bw != nil {
		// With EDT: the devices' root qdiscs as the Manager found them.
		errs = append(errs, a.bw.Close())
	}
	errs = append(errs, a.Close())
	return errors.Join(errs...)
}
