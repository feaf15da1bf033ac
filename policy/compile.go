package policy

import (
	"maps"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
)

// MapState is the content of an endpoint's policy map.
type MapState map[datapath.PolicyKey]datapath.PolicyEntry

// Delta is a change to a policy map: keys to insert or overwrite, and keys
// to delete. Applying a delta to the state it was computed from yields the
// new state; keys it does not name are untouched.
type Delta struct {
	Upserts MapState
	Deletes []datapath.PolicyKey
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool { return len(d.Upserts) == 0 && len(d.Deletes) == 0 }

// Apply applies the delta to m in place.
func (d Delta) Apply(m MapState) {
	for _, k := range d.Deletes {
		delete(m, k)
	}
	for k, v := range d.Upserts {
		m[k] = v
	}
}

// Diff returns the delta that turns old into new.
func Diff(old, new MapState) Delta {
	d := Delta{Upserts: MapState{}}
	for k, v := range new {
		if ov, ok := old[k]; !ok || ov != v {
			d.Upserts[k] = v
		}
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			d.Deletes = append(d.Deletes, k)
		}
	}
	sortKeys(d.Deletes)
	return d
}

func sortKeys(keys []datapath.PolicyKey) {
	slices.SortFunc(keys, compareKeys)
}

func compareKeys(a, b datapath.PolicyKey) int {
	switch {
	case a.Identity != b.Identity:
		return cmpInt(a.Identity, b.Identity)
	case a.Direction != b.Direction:
		return cmpInt(a.Direction, b.Direction)
	case a.Protocol != b.Protocol:
		return cmpInt(a.Protocol, b.Protocol)
	case a.Port != b.Port:
		return cmpInt(a.Port, b.Port)
	}
	return cmpInt(a.PortPrefixLen, b.PortPrefixLen)
}

func cmpInt[T ~uint8 | ~uint16 | ~uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Keys returns the state's keys in a stable order.
func (m MapState) Keys() []datapath.PolicyKey {
	keys := slices.Collect(maps.Keys(m))
	sortKeys(keys)
	return keys
}

// EndpointPolicy is the compiled policy of one endpoint: the content of
// its policy map, and what it needs to follow identity changes
// incrementally. It is safe for concurrent use.
//
// The map holds, per direction, an entry for every (peer identity,
// protocol, port prefix) some rule item allows or denies, identity 0
// standing for every peer. Deny wins over allow: a deny for a key
// overrides an allow for the same key, and allows that a deny of the same
// identity covers are left out, so that the datapath's two lookups
// (datapath.LookupPolicy) decide exactly as the rules do. A direction that
// is not enforced, or not default-deny, gets an allow-all entry for
// identity 0.
type EndpointPolicy struct {
	repo     *Repository
	endpoint Endpoint
	revision uint64
	dirs     [2]DirectionPolicy
	filters  []filter
	// ruleEntries are the entries that select the endpoint, per direction.
	ruleEntries [2][]*entry

	mu    sync.RWMutex
	state MapState
	// byPeer indexes state by peer identity, for incremental updates.
	byPeer map[identity.ID]map[datapath.PolicyKey]struct{}
}

// Compile computes an endpoint's policy from the current rules and
// identities.
func (r *Repository) Compile(ep Endpoint) *EndpointPolicy {
	entries, rev := r.snapshot()
	in, eg, dirs := r.selectRules(entries, ep.Identity, ep.Labels)
	p := &EndpointPolicy{
		repo:        r,
		endpoint:    ep,
		revision:    rev,
		dirs:        dirs,
		ruleEntries: [2][]*entry{in, eg},
		state:       MapState{},
		byPeer:      map[identity.ID]map[datapath.PolicyKey]struct{}{},
	}
	p.endpoint.NamedPorts = slices.Clone(ep.NamedPorts)
	if dirs[Ingress].Enforced {
		p.filters = append(p.filters, buildFilters(in, Ingress)...)
	}
	if dirs[Egress].Enforced {
		p.filters = append(p.filters, buildFilters(eg, Egress)...)
	}

	// Group filters by the identities their selectors select, then compute
	// each identity's keys once.
	peers := map[identity.ID]struct{}{identity.Unknown: {}}
	for i := range p.filters {
		if s := p.filters[i].sel; s != nil {
			for _, id := range r.rv.cache.selections(s) {
				peers[id] = struct{}{}
			}
		}
	}
	for _, id := range sortedIDs(peers) {
		p.setPeerKeys(id, p.peerKeys(id))
	}
	return p
}

// peerKeys computes the map entries for one peer identity (0: every peer).
func (p *EndpointPolicy) peerKeys(peer identity.ID) MapState {
	m := MapState{}
	add := func(k datapath.PolicyKey, e datapath.PolicyEntry) {
		if old, ok := m[k]; ok && old.Deny {
			return
		}
		m[k] = e
	}
	cache := p.repo.rv.cache
	for i := range p.filters {
		f := &p.filters[i]
		if peer == identity.Unknown {
			if f.sel != nil {
				continue
			}
		} else if f.sel == nil || !cache.selects(f.sel, peer) {
			continue
		}
		for _, k := range f.keys(peer, &p.endpoint, p.repo.cfg.NamedPorts) {
			add(k, datapath.PolicyEntry{Deny: f.deny})
		}
	}
	if peer == identity.Unknown {
		for _, d := range []Direction{Ingress, Egress} {
			if !p.dirs[d].Enforced || !p.dirs[d].DefaultDeny {
				add(datapath.PolicyKey{Direction: d}, datapath.PolicyEntry{})
			}
		}
	}
	normalize(m)
	return m
}

// setPeerKeys replaces the entries of one peer identity and returns the
// delta. The caller holds p.mu or owns p exclusively.
func (p *EndpointPolicy) setPeerKeys(peer identity.ID, keys MapState) Delta {
	d := Delta{Upserts: MapState{}}
	old := p.byPeer[peer]
	for k := range old {
		if _, ok := keys[k]; !ok {
			delete(p.state, k)
			d.Deletes = append(d.Deletes, k)
		}
	}
	for k, v := range keys {
		if ov, ok := p.state[k]; !ok || ov != v {
			p.state[k] = v
			d.Upserts[k] = v
		}
	}
	if len(keys) == 0 {
		delete(p.byPeer, peer)
	} else {
		set := make(map[datapath.PolicyKey]struct{}, len(keys))
		for k := range keys {
			set[k] = struct{}{}
		}
		p.byPeer[peer] = set
	}
	sortKeys(d.Deletes)
	return d
}

// UpdateIdentities recomputes the entries of the given peer identities
// after the repository's selector cache learnt of them (added) or forgot
// them (removed), and returns the change to the policy map. Only those
// identities' entries are touched: a new pod costs one match per filter,
// not a recompilation.
func (p *EndpointPolicy) UpdateIdentities(ids []identity.ID) Delta {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := Delta{Upserts: MapState{}}
	for _, id := range ids {
		if id == identity.Unknown {
			continue
		}
		d := p.setPeerKeys(id, p.peerKeys(id))
		maps.Copy(total.Upserts, d.Upserts)
		total.Deletes = append(total.Deletes, d.Deletes...)
	}
	sortKeys(total.Deletes)
	return total
}

// State returns a copy of the policy map content.
func (p *EndpointPolicy) State() MapState {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return maps.Clone(p.state)
}

// Len returns the number of map entries.
func (p *EndpointPolicy) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.state)
}

// Revision is the repository revision the policy was compiled at.
func (p *EndpointPolicy) Revision() uint64 { return p.revision }

// Endpoint returns the endpoint the policy was compiled for.
func (p *EndpointPolicy) Endpoint() Endpoint { return p.endpoint }

// Direction summarises the policy in one direction.
func (p *EndpointPolicy) Direction(d Direction) DirectionPolicy { return p.dirs[d] }

// Lookup decides a packet against the compiled map the way the datapath
// does (datapath.LookupPolicy).
func (p *EndpointPolicy) Lookup(peer identity.ID, dir Direction, proto Protocol, port uint16) datapath.PolicyDecision {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return datapath.LookupPolicy(p.state, peer, dir, uint8(proto), port)
}

// rebuildIndexLocked recomputes byPeer from state; p.mu is held.
func (p *EndpointPolicy) rebuildIndexLocked() {
	p.byPeer = map[identity.ID]map[datapath.PolicyKey]struct{}{}
	for k := range p.state {
		set := p.byPeer[k.Identity]
		if set == nil {
			set = map[datapath.PolicyKey]struct{}{}
			p.byPeer[k.Identity] = set
		}
		set[k] = struct{}{}
	}
}
