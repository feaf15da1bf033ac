package policy

import (
	"maps"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// EndpointPolicy is the compiled policy of one endpoint: the content of
// its policy map, and what it needs to follow identity changes
// incrementally. It is safe for concurrent use.
//
// The map holds, per direction, an entry for every (peer identity,
// protocol, port prefix) some rule item allows or denies, identity 0
// standing for every peer. Deny wins over allow: a deny for a key
// overrides an allow for the same key, and allows that a deny of the same
// identity covers are left out, so that the datapath's two lookups
// (mapstate.Lookup) decide exactly as the rules do. A direction that
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
	state mapstate.State
	// byPeer indexes state by peer identity, for incremental updates.
	byPeer map[identity.ID]map[mapstate.Key]struct{}
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
		state:       mapstate.State{},
		byPeer:      map[identity.ID]map[mapstate.Key]struct{}{},
	}
	p.endpoint.NamedPorts = slices.Clone(ep.NamedPorts)
	if dirs[mapstate.Ingress].Enforced {
		p.filters = append(p.filters, buildFilters(in, mapstate.Ingress)...)
	}
	if dirs[mapstate.Egress].Enforced {
		p.filters = append(p.filters, buildFilters(eg, mapstate.Egress)...)
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
func (p *EndpointPolicy) peerKeys(peer identity.ID) mapstate.State {
	m := mapstate.State{}
	add := func(k mapstate.Key, e mapstate.Entry) {
		if old, ok := m[k]; ok && (old.Deny || !e.Deny && old.ProxyPortPriority > e.ProxyPortPriority) {
			// A deny stays; of two allows the redirect wins (the proxy
			// then lets through what the plain allow allows, HTTP).
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
		e := mapstate.Entry{Deny: f.deny}
		if !f.deny && !f.all && f.l4.redirHTTP {
			e.ProxyPort, e.ProxyPortPriority = p.repo.cfg.ProxyPorts.HTTP, ProxyPriorityHTTP
		}
		if !f.deny && !f.all && f.l4.dns != nil {
			// DNS rules: the DNS proxy decides each query.
			e.ProxyPort, e.ProxyPortPriority = p.repo.cfg.ProxyPorts.DNS, ProxyPriorityDNS
		}
		for _, k := range f.keys(peer, &p.endpoint, p.repo.cfg.NamedPorts) {
			add(k, e)
		}
	}
	if peer == identity.Unknown {
		for _, d := range []mapstate.Direction{mapstate.Ingress, mapstate.Egress} {
			if !p.dirs[d].Enforced || !p.dirs[d].DefaultDeny {
				add(mapstate.Key{Direction: d}, mapstate.Entry{})
			}
		}
	}
	normalize(m)
	return m
}

// setPeerKeys replaces the entries of one peer identity and returns the
// delta. The caller holds p.mu or owns p exclusively.
func (p *EndpointPolicy) setPeerKeys(peer identity.ID, keys mapstate.State) mapstate.Delta {
	d := mapstate.Delta{Upserts: mapstate.State{}}
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
		set := make(map[mapstate.Key]struct{}, len(keys))
		for k := range keys {
			set[k] = struct{}{}
		}
		p.byPeer[peer] = set
	}
	mapstate.SortKeys(d.Deletes)
	return d
}

// updateIdentities recomputes the entries of the given peer identities
// after the repository's selector cache learnt of them (added) or forgot
// them (removed), and returns the change to the policy map. Only those
// identities' entries are touched: a new pod costs one match per filter,
// not a recompilation.
func (p *EndpointPolicy) updateIdentities(ids []identity.ID) mapstate.Delta {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := mapstate.Delta{Upserts: mapstate.State{}}
	for _, id := range ids {
		if id == identity.Unknown {
			continue
		}
		d := p.setPeerKeys(id, p.peerKeys(id))
		maps.Copy(total.Upserts, d.Upserts)
		total.Deletes = append(total.Deletes, d.Deletes...)
	}
	mapstate.SortKeys(total.Deletes)
	return total
}

// State returns a copy of the policy map content.
func (p *EndpointPolicy) State() mapstate.State {
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
func (p *EndpointPolicy) Direction(d mapstate.Direction) DirectionPolicy { return p.dirs[d] }

// Lookup decides a packet against the compiled map the way the datapath
// does (mapstate.Lookup).
func (p *EndpointPolicy) Lookup(peer identity.ID, dir mapstate.Direction, proto nodeplane.Protocol, port uint16) mapstate.Decision {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return mapstate.Lookup(p.state, peer, dir, proto, port)
}

// rebuildIndexLocked recomputes byPeer from state; p.mu is held.
func (p *EndpointPolicy) rebuildIndexLocked() {
	p.byPeer = map[identity.ID]map[mapstate.Key]struct{}{}
	for k := range p.state {
		set := p.byPeer[k.Identity]
		if set == nil {
			set = map[mapstate.Key]struct{}{}
			p.byPeer[k.Identity] = set
		}
		set[k] = struct{}{}
	}
}
