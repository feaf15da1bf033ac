package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/statefile"
)

// Datapath owns the shared maps of the node's endpoint datapath and the
// endpoints added to it. Its methods are safe for concurrent use.
type Datapath struct {
	cfg    Config
	spec   *ebpf.CollectionSpec
	maps   *sharedMaps
	node   *nodeNamespace
	attach AttachMode // resolved: AttachTCX or AttachTC

	ipcache   *IPCache
	conntrack *Conntrack

	// pinLock is cfg.BPFFSDir, open and flock'ed while the Datapath owns
	// the endpoints pinned there; nil without pinning.
	pinLock  *statefile.Lock
	restored RestoreReport

	mu        sync.Mutex
	endpoints map[EndpointID]*Endpoint
	closed    bool
	// overlayOn and masqOn say that an Overlay or a Masquerade holds the
	// datapath's one overlay or NAT configuration; a second is refused,
	// since closing either would switch off the other's.
	overlayOn, masqOn bool
	// overlay and masq are the attached Overlay and Masquerade, released
	// (left working) by Close in pinned mode.
	overlay *Overlay
	masq    *Masquerade
}

// claim takes one of the datapath's single attachments (overlayOn,
// masqOn) for what, or says why it cannot.
func (d *Datapath) claim(flag *bool, what string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return fmt.Errorf("attach %s: %w", what, nodeplane.ErrClosed)
	case *flag:
		return fmt.Errorf("attach %s: %w: one is attached already; close it first", what, ErrInvalidConfig)
	}
	*flag = true
	return nil
}

// unclaim gives back an attachment claim took.
func (d *Datapath) unclaim(flag *bool) {
	d.mu.Lock()
	*flag = false
	d.mu.Unlock()
}

// New loads the datapath's maps (creating them, or reusing the pins in
// cfg.BPFFSDir) and opens the node namespace. Programs are loaded per
// endpoint, by [Datapath.AddEndpoint].
//
// With cfg.BPFFSDir, New first takes the directory for itself (a second
// Datapath on it fails with [ErrBPFFSDirInUse] until the first is closed
// or its process is gone) and then restores the endpoints an earlier
// Datapath left there: those whose interface is still there are adopted,
// with this build's programs swapped in without detaching the old ones
// (see [Datapath.Restored]); the state of the others is deleted. If New
// fails after it started adopting, the endpoints stay installed, each with
// its old or its new programs, and a later New can try again.
func New(cfg Config) (_ *Datapath, err error) {
	cfg, err = cfg.withDefaults(os.Getpagesize())
	if err != nil {
		return nil, err
	}
	spec, err := loadSpec(cfg)
	if err != nil {
		return nil, err
	}

	d := &Datapath{cfg: cfg, spec: spec, endpoints: make(map[EndpointID]*Endpoint)}
	defer func() {
		if err != nil {
			d.release()
		}
	}()

	if d.attach, err = resolveAttachMode(cfg.Attach); err != nil {
		return nil, err
	}
	if cfg.BPFFSDir != "" {
		if d.pinLock, err = lockBPFFSDir(cfg.BPFFSDir); err != nil {
			return nil, err
		}
	}
	if d.maps, err = createSharedMaps(spec, cfg); err != nil {
		return nil, err
	}
	if d.node, err = openNodeNamespace(cfg.NodeNetNS); err != nil {
		return nil, err
	}
	if err := d.SetMonitorAggregation(cfg.MonitorAggregation); err != nil {
		return nil, err
	}
	d.ipcache = &IPCache{m: d.maps.ipcache}
	d.conntrack = &Conntrack{m: d.maps.conntrack}
	if cfg.BPFFSDir != "" {
		if err := d.restore(); err != nil {
			for _, ep := range d.endpoints {
				_ = ep.release()
			}
			return nil, fmt.Errorf("restore endpoints from %s: %w", cfg.BPFFSDir, err)
		}
	}
	return d, nil
}

func resolveAttachMode(m AttachMode) (AttachMode, error) {
	switch m {
	case AttachTC:
		return AttachTC, nil
	case AttachTCX:
		if err := HaveTCX(); err != nil {
			return 0, err
		}
		return AttachTCX, nil
	}
	switch err := HaveTCX(); {
	case err == nil:
		return AttachTCX, nil
	case errors.Is(err, nodeplane.ErrNotSupported):
		return AttachTC, nil
	default:
		return 0, err
	}
}

// AttachMode returns how the datapath attaches programs: AttachTCX or
// AttachTC.
func (d *Datapath) AttachMode() AttachMode { return d.attach }

// IPCache returns the ipcache map, which implements
// [ipcache.Writer].
func (d *Datapath) IPCache() *IPCache { return d.ipcache }

// Conntrack returns the conntrack map.
func (d *Datapath) Conntrack() *Conntrack { return d.conntrack }

// Endpoint returns the endpoint with the given ID, if this Datapath added
// or adopted it.
func (d *Datapath) Endpoint(id EndpointID) (*Endpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.endpoints[id]
	return ep, ok
}

// Endpoints returns the Datapath's endpoints, added or adopted, in ID
// order.
func (d *Datapath) Endpoints() []*Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps := make([]*Endpoint, 0, len(d.endpoints))
	for _, ep := range d.endpoints {
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b *Endpoint) int { return cmp.Compare(a.cfg.ID, b.cfg.ID) })
	return eps
}

// Restored returns what New found in [Config].BPFFSDir: the endpoints it
// adopted, repaired or removed. It is empty without pinning.
func (d *Datapath) Restored() RestoreReport { return d.restored.clone() }

// Pinning reports whether the Datapath pins its state in a bpffs
// directory, so that its endpoints outlive it.
func (d *Datapath) Pinning() bool { return d.cfg.BPFFSDir != "" }

// Close releases the Datapath's file descriptors. Close is idempotent.
//
// With [Config].BPFFSDir, Close leaves everything installed: endpoints,
// map entries, pins and attachments stay in the kernel, traffic keeps
// flowing under the same policy, and the next Datapath on the directory
// adopts the endpoints. The handles of this Datapath's endpoints become
// unusable ([nodeplane.ErrClosed]). A crash leaves the same state behind, except
// that an AddEndpoint or Delete it interrupted is undone or finished by
// the next New. [Datapath.Uninstall] removes it all instead.
//
// Without BPFFSDir, Close deletes every endpoint, interfaces included:
// the endpoints never outlive their Datapath, because an interface left
// without its programs would pass traffic without policy. Unlike
// [Endpoint.Delete], Close keeps their conntrack entries.
func (d *Datapath) Close() error {
	eps, ok := d.takeEndpoints()
	if !ok {
		return nil
	}
	var errs []error
	for _, ep := range eps {
		if d.Pinning() {
			errs = append(errs, ep.release())
		} else {
			errs = append(errs, ep.delete(false))
		}
	}
	d.mu.Lock()
	o, m := d.overlay, d.masq
	d.mu.Unlock()
	if d.Pinning() {
		// Pinned: they keep working until the next process adopts them.
		if o != nil {
			errs = append(errs, o.release())
		}
		if m != nil {
			errs = append(errs, m.keep())
		}
	}
	errs = append(errs, d.release())
	return errors.Join(errs...)
}

// Uninstall deletes every endpoint of the Datapath (as [Endpoint.Delete]
// does), removes the pins it made in [Config].BPFFSDir, and closes it: the
// node is left as if no Datapath had run, but for the directory itself.
// Maps that other processes still hold open live on until they close
// them. After Close, Uninstall returns an error wrapping [nodeplane.ErrClosed].
func (d *Datapath) Uninstall() error {
	eps, ok := d.takeEndpoints()
	if !ok {
		return fmt.Errorf("uninstall: %w", nodeplane.ErrClosed)
	}
	var errs []error
	for _, ep := range eps {
		errs = append(errs, ep.delete(true))
	}
	d.mu.Lock()
	o, m := d.overlay, d.masq
	d.mu.Unlock()
	if o != nil {
		errs = append(errs, o.Close())
	}
	if m != nil {
		errs = append(errs, m.Close())
	}
	if dir := d.cfg.BPFFSDir; dir != "" {
		// Links an earlier process pinned and nobody adopted: removing
		// the last pin detaches them.
		for _, sub := range []string{endpointPinDirName, overlayPinDir, masqueradePinDir} {
			if err := os.RemoveAll(filepath.Join(dir, sub)); err != nil {
				errs = append(errs, fmt.Errorf("uninstall: remove %s pins: %w", sub, err))
			}
		}
		for name := range d.maps.all() {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("uninstall: unpin %s: %w", name, err))
			}
		}
	}
	errs = append(errs, d.release())
	return errors.Join(errs...)
}

// takeEndpoints closes the Datapath to new work and hands its endpoints
// to the caller; false if it was closed already.
func (d *Datapath) takeEndpoints() ([]*Endpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, false
	}
	d.closed = true
	eps := make([]*Endpoint, 0, len(d.endpoints))
	for _, ep := range d.endpoints {
		eps = append(eps, ep)
	}
	d.endpoints = nil
	return eps, true
}

// release frees what New acquired.
func (d *Datapath) release() error {
	d.mu.Lock()
	m := d.masq
	d.mu.Unlock()
	if m != nil {
		m.stopGC() // it would collect a closed map
	}
	var errs []error
	if d.maps != nil {
		errs = append(errs, d.maps.close())
	}
	if d.node != nil {
		errs = append(errs, d.node.close())
	}
	if d.pinLock != nil {
		// Closing the last descriptor of the directory drops the lock.
		errs = append(errs, d.pinLock.Close())
		d.pinLock = nil
	}
	return errors.Join(errs...)
}

// endpointPinDirName is the directory in Config.BPFFSDir that holds one
// directory of pins per endpoint, named by its ID.
const endpointPinDirName = "endpoints"

// endpointPinDir is where the endpoint's links are pinned; "" without
// pinning.
func (d *Datapath) endpointPinDir(id EndpointID) string {
	if d.cfg.BPFFSDir == "" {
		return ""
	}
	return filepath.Join(d.cfg.BPFFSDir, endpointPinDirName, strconv.Itoa(int(id)))
}

// AddEndpoint adds an endpoint: it loads the endpoint's programs, creates
// its (empty) policy map, and unless cfg.Detached creates and configures
// its veth pair and attaches the programs to the host side.
//
// An empty policy map denies every new connection in both directions.
// Give every endpoint to the policy engine (policy.Engine.AddEndpoint),
// whether a policy selects it or not: the engine writes its entries, the
// allow-all ones for an endpoint no policy selects. (An entry with identity
// 0 and protocol 0 allows everything in its direction.)
//
// Inside the endpoint's namespace the interface gets the address(es) as
// /32 and /128, and default routes via link-local gateways 169.254.1.1
// and fe80::1 with permanent neighbour entries that resolve to the
// host-side MAC, so neither ARP nor neighbour discovery is needed. In the
// node namespace each address gets a /32 or /128 route through the
// host-side interface and a permanent neighbour entry.
//
// On error nothing of the endpoint remains.
func (d *Datapath) AddEndpoint(cfg EndpointConfig) (_ *Endpoint, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("add endpoint %d: %w", cfg.ID, nodeplane.ErrClosed)
	}
	if _, ok := d.endpoints[cfg.ID]; ok {
		return nil, fmt.Errorf("add endpoint %d: %w", cfg.ID, ErrEndpointExists)
	}

	ep := &Endpoint{dp: d, cfg: cfg}
	if !cfg.Detached {
		ep.attach = d.attach
	}
	defer func() {
		if err != nil {
			_ = ep.delete(false)
		}
	}()
	// The record goes first and claims the ID; should the process die
	// before the endpoint is ready, the next Datapath on the pins finds it
	// in the creating state and removes what it names.
	ep.rec = newEndpointRecord(cfg, ep.attach)
	if err := d.maps.records.Update(uint32(cfg.ID), ep.rec, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return nil, fmt.Errorf("endpoint %d: the pinned state has one with this ID: %w", cfg.ID, ErrEndpointExists)
		}
		return nil, fmt.Errorf("endpoint %d: write record: %w", cfg.ID, err)
	}
	ep.recorded = true
	// An EDT entry left by a crashed predecessor with this ID is not ours
	// to inherit: a new endpoint starts unlimited.
	if err := ep.clearEgressRate(); err != nil {
		return nil, err
	}
	if ep.progs, err = loadEndpointPrograms(d.spec, d.maps, cfg); err != nil {
		return nil, err
	}
	if ep.policy, err = newPolicyMap(d.spec.Maps[datapathMapNpPolicy].InnerMap, cfg.ID); err != nil {
		return nil, err
	}
	// Another Datapath on the same pins may own the ID.
	if err := d.maps.policy.Update(uint32(cfg.ID), ep.policy.m, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return nil, fmt.Errorf("endpoint %d: the pinned policy maps have one for this ID: %w", cfg.ID, ErrEndpointExists)
		}
		return nil, fmt.Errorf("endpoint %d: install policy map: %w", cfg.ID, err)
	}
	ep.policyInstalled = true

	if !cfg.Detached {
		if ep.host, err = d.node.plumb(cfg); err != nil {
			return nil, err
		}
		if err := ep.updateRecord(func(r *endpointRecord) { r.setHost(ep.host) }); err != nil {
			return nil, err
		}
	}
	if err := ep.writeEndpointEntries(); err != nil {
		return nil, err
	}
	if !cfg.Detached {
		if ep.attachments, err = d.node.attach(ep.attach, ep.host.index, ep.progs, d.endpointPinDir(cfg.ID)); err != nil {
			return nil, err
		}
	}
	if err := ep.updateRecord(func(r *endpointRecord) { r.State = recordReady }); err != nil {
		return nil, err
	}
	d.endpoints[cfg.ID] = ep
	return ep, nil
}

func (d *Datapath) forget(ep *Endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.endpoints[ep.cfg.ID] == ep {
		delete(d.endpoints, ep.cfg.ID)
	}
}
