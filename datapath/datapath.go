package datapath

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
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

	mu        sync.Mutex
	endpoints map[EndpointID]*Endpoint
	closed    bool
}

// New loads the datapath's maps (creating them, or reusing the pins in
// cfg.BPFFSDir) and opens the node namespace. Programs are loaded per
// endpoint, by [Datapath.AddEndpoint].
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
	if d.maps, err = createSharedMaps(spec, cfg); err != nil {
		return nil, err
	}
	if d.node, err = openNodeNamespace(cfg.NodeNetNS); err != nil {
		return nil, err
	}
	d.ipcache = &IPCache{m: d.maps.ipcache}
	d.conntrack = &Conntrack{m: d.maps.conntrack}
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
// [identity.IPCacheWriter].
func (d *Datapath) IPCache() *IPCache { return d.ipcache }

// Conntrack returns the conntrack map.
func (d *Datapath) Conntrack() *Conntrack { return d.conntrack }

// Endpoint returns the endpoint with the given ID, if this Datapath added
// it.
func (d *Datapath) Endpoint(id EndpointID) (*Endpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.endpoints[id]
	return ep, ok
}

// Close deletes every endpoint of the Datapath and releases the maps.
// Endpoints never outlive their Datapath: an interface left without its
// programs would pass traffic without policy, so the datapath fails closed.
// Unlike [Endpoint.Delete], Close keeps the endpoints' conntrack entries:
// with pinned maps, the ipcache, conntrack and counters carry over to the
// next Datapath on the same directory, and connections of endpoints it
// adds again with the same addresses continue without a new policy
// decision. Close is idempotent.
func (d *Datapath) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	eps := d.endpoints
	d.endpoints = nil
	d.mu.Unlock()

	var errs []error
	for _, ep := range eps {
		errs = append(errs, ep.delete(false))
	}
	errs = append(errs, d.release())
	return errors.Join(errs...)
}

// release frees what New acquired.
func (d *Datapath) release() error {
	var errs []error
	if d.maps != nil {
		errs = append(errs, d.maps.close())
	}
	if d.node != nil {
		errs = append(errs, d.node.close())
	}
	return errors.Join(errs...)
}

// AddEndpoint adds an endpoint: it loads the endpoint's programs, creates
// its (empty) policy map, and unless cfg.Detached creates and configures
// its veth pair and attaches the programs to the host side.
//
// An empty policy map denies every new connection in both directions:
// callers add the entries that allow traffic (an entry with identity 0 and
// protocol 0 allows everything in its direction).
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
		return nil, fmt.Errorf("add endpoint %d: %w", cfg.ID, ErrClosed)
	}
	if _, ok := d.endpoints[cfg.ID]; ok {
		return nil, fmt.Errorf("add endpoint %d: %w", cfg.ID, ErrEndpointExists)
	}

	ep := &Endpoint{dp: d, cfg: cfg}
	defer func() {
		if err != nil {
			_ = ep.delete(false)
		}
	}()
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
	}
	if err := ep.writeEndpointEntries(); err != nil {
		return nil, err
	}
	if !cfg.Detached {
		if ep.attachments, err = d.node.attach(d.attach, ep.host.index, ep.progs); err != nil {
			return nil, err
		}
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
