package flow

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Catalog is what the decoder enriches flows with: endpoint metadata,
// labels by identity, names of remote addresses (the ipcache's metadata)
// and services by frontend. The agent keeps it up to date from its
// identity, ipcache, endpoint and lb state. Every change is stamped with
// the time it was made, and a replaced or deleted value is kept for
// Retention, so a flow is enriched with the values that held when its
// packet passed: an endpoint deleted right after its last packet still
// names its pod in that packet's flow.
//
// A Catalog is safe for concurrent use. Slices passed in (labels) are
// kept and shared with flows: do not modify them afterwards.
type Catalog struct {
	retention time.Duration
	now       func() time.Time

	mu         sync.RWMutex
	endpoints  map[netip.Addr]*history[EndpointInfo]
	identities map[uint32]*history[[]string]
	services   map[Frontend]*history[Service]
	ifaces     map[uint32]*history[string]
	lastPrune  time.Time
}

// EndpointInfo is what the catalog knows about an address: a local
// endpoint (ID set) or a remote pod (from the ipcache's metadata).
type EndpointInfo struct {
	ID        uint32
	Namespace string
	PodName   string
}

// Frontend is a service address: destination address, port and IANA
// protocol.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

// CatalogConfig configures a Catalog.
type CatalogConfig struct {
	// Retention is how long a replaced or deleted value stays available
	// to flows of packets from before the change (default 1 minute): it
	// must exceed the delay between a packet and its record's decoding.
	Retention time.Duration
	// Now is the clock (default time.Now); tests set it.
	Now func() time.Time
}

// NewCatalog returns an empty catalog.
func NewCatalog(cfg CatalogConfig) *Catalog {
	if cfg.Retention <= 0 {
		cfg.Retention = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Catalog{
		retention: cfg.Retention, now: cfg.Now,
		endpoints:  make(map[netip.Addr]*history[EndpointInfo]),
		identities: make(map[uint32]*history[[]string]),
		services:   make(map[Frontend]*history[Service]),
		ifaces:     make(map[uint32]*history[string]),
	}
}

// history is a key's values over time, oldest first; the last one's until
// is zero while it holds.
type history[T any] struct {
	versions []version[T]
}

type version[T any] struct {
	from, until time.Time
	v           T
}

func (h *history[T]) set(now time.Time, v T) {
	h.end(now)
	h.versions = append(h.versions, version[T]{from: now, v: v})
}

func (h *history[T]) end(now time.Time) {
	if n := len(h.versions); n > 0 && h.versions[n-1].until.IsZero() {
		h.versions[n-1].until = now
	}
}

// at returns the value that held at t. A time before the first version
// gets the first version (the state was set up before the catalog heard
// of it); a time after a deletion gets nothing.
func (h *history[T]) at(t time.Time) (T, bool) {
	for i := len(h.versions) - 1; i >= 0; i-- {
		v := &h.versions[i]
		if !v.from.After(t) || i == 0 {
			if !v.until.IsZero() && !t.Before(v.until) {
				break
			}
			return v.v, true
		}
	}
	var zero T
	return zero, false
}

// prune drops versions that ended before cutoff and reports whether the
// history is empty.
func (h *history[T]) prune(cutoff time.Time) bool {
	h.versions = slices.DeleteFunc(h.versions, func(v version[T]) bool {
		return !v.until.IsZero() && v.until.Before(cutoff)
	})
	return len(h.versions) == 0
}

func upsert[K comparable, T any](c *Catalog, m map[K]*history[T], k K, v T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	h := m[k]
	if h == nil {
		h = &history[T]{}
		m[k] = h
	}
	h.set(now, v)
	c.pruneLocked(now)
}

func remove[K comparable, T any](c *Catalog, m map[K]*history[T], k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if h := m[k]; h != nil {
		h.end(now)
	}
	c.pruneLocked(now)
}

func lookup[K comparable, T any](c *Catalog, m map[K]*history[T], k K, t time.Time) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if h := m[k]; h != nil {
		return h.at(t)
	}
	var zero T
	return zero, false
}

func pruneMap[K comparable, T any](m map[K]*history[T], cutoff time.Time) {
	for k, h := range m {
		if h.prune(cutoff) {
			delete(m, k)
		}
	}
}

func (c *Catalog) pruneLocked(now time.Time) {
	if now.Sub(c.lastPrune) < c.retention/4 {
		return
	}
	c.lastPrune = now
	cutoff := now.Add(-c.retention)
	pruneMap(c.endpoints, cutoff)
	pruneMap(c.identities, cutoff)
	pruneMap(c.services, cutoff)
	pruneMap(c.ifaces, cutoff)
}

// SetEndpoint records what addr is: a local endpoint or a remote pod.
func (c *Catalog) SetEndpoint(addr netip.Addr, info EndpointInfo) {
	upsert(c, c.endpoints, addr.Unmap(), info)
}

// DeleteEndpoint records that addr is no longer the endpoint's.
func (c *Catalog) DeleteEndpoint(addr netip.Addr) { remove(c, c.endpoints, addr.Unmap()) }

// SetIdentity records an identity's labels ("source:key=value").
func (c *Catalog) SetIdentity(id uint32, labels []string) {
	labels = slices.Clone(labels)
	slices.Sort(labels)
	upsert(c, c.identities, id, labels)
}

// DeleteIdentity records that id was released.
func (c *Catalog) DeleteIdentity(id uint32) { remove(c, c.identities, id) }

// SetService records the service a frontend belongs to.
func (c *Catalog) SetService(fe Frontend, svc Service) {
	fe.Addr = fe.Addr.Unmap()
	upsert(c, c.services, fe, svc)
}

// DeleteService records that fe no longer belongs to a service.
func (c *Catalog) DeleteService(fe Frontend) {
	fe.Addr = fe.Addr.Unmap()
	remove(c, c.services, fe)
}

// SetInterface records an interface's name.
func (c *Catalog) SetInterface(ifindex uint32, name string) {
	upsert(c, c.ifaces, ifindex, name)
}

// DeleteInterface records that an interface is gone.
func (c *Catalog) DeleteInterface(ifindex uint32) { remove(c, c.ifaces, ifindex) }

// Endpoint returns what addr was at t.
func (c *Catalog) Endpoint(addr netip.Addr, t time.Time) (EndpointInfo, bool) {
	return lookup(c, c.endpoints, addr, t)
}

// Labels returns the labels identity id had at t.
func (c *Catalog) Labels(id uint32, t time.Time) ([]string, bool) {
	return lookup(c, c.identities, id, t)
}

// Service returns the service fe belonged to at t.
func (c *Catalog) Service(fe Frontend, t time.Time) (Service, bool) {
	return lookup(c, c.services, fe, t)
}

// InterfaceName returns the name interface ifindex had at t.
func (c *Catalog) InterfaceName(ifindex uint32, t time.Time) (string, bool) {
	return lookup(c, c.ifaces, ifindex, t)
}

// enrich fills f's names and labels as of f.Time.
func (c *Catalog) enrich(f *Flow) {
	if c == nil {
		return
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, e := range []struct {
		ep   *Endpoint
		addr netip.Addr
	}{{&f.Source, f.IP.Source}, {&f.Destination, f.IP.Destination}} {
		if h := c.endpoints[e.addr]; h != nil {
			if info, ok := h.at(f.Time); ok {
				if info.ID != 0 {
					e.ep.ID = info.ID
				}
				e.ep.Namespace, e.ep.PodName = info.Namespace, info.PodName
			}
		}
		if h := c.identities[e.ep.Identity]; h != nil {
			e.ep.Labels, _ = h.at(f.Time)
		}
	}
	if hasPorts(f) {
		fe := Frontend{Addr: f.IP.Destination, Port: f.L4.DestinationPort, Proto: f.L4.Protocol}
		if h := c.services[fe]; h != nil {
			f.DestinationService, _ = h.at(f.Time)
		}
	}
	if h := c.ifaces[f.Interface.Index]; h != nil {
		f.Interface.Name, _ = h.at(f.Time)
	}
}
