package overlay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
)

// Mode is how traffic to other nodes' pods leaves this node.
type Mode uint8

const (
	// ModeTunnel encapsulates it (VXLAN): ipcache entries of remote pod CIDRs
	// carry the node's underlay address as tunnel endpoint.
	ModeTunnel Mode = iota
	// ModeNative routes it unencapsulated through the node's routing table:
	// the entries carry no tunnel endpoint.
	ModeNative
)

func (m Mode) String() string {
	switch m {
	case ModeTunnel:
		return "tunnel"
	case ModeNative:
		return "native"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// SyncerConfig configures a [Syncer].
type SyncerConfig struct {
	// Registry is the node registry to follow. Required.
	Registry Registry
	// IPCache receives the entries. Required.
	IPCache *ipcache.IPCache
	// LocalNode is this node's name; its own entry is not synced (its pods
	// are local endpoints). Required.
	LocalNode string
	// Mode says whether entries carry tunnel endpoints; zero is ModeTunnel.
	Mode Mode
}

// Syncer keeps an ipcache in step with a node registry, the way Cilium's
// node manager does: for every other node,
//
//   - each pod CIDR maps to reserved:world with the node's underlay
//     address as tunnel endpoint (in [ModeTunnel]). The CIDR entry says
//     only where the prefix lives; the pods' own identities come from
//     their /32 and /128 entries (the identity allocator's business), and
//     on the wire from the tunnel's VNI;
//   - each underlay address maps to reserved:remote-node, so that traffic
//     from the node itself is seen as remote-node;
//   - each host address (the node's own address in its pod CIDRs) maps to
//     reserved:remote-node too, with the tunnel endpoint in [ModeTunnel]:
//     what the node sends from it arrives through the tunnel as
//     remote-node, and what pods send to it goes back the same way.
//
// Changes are incremental: a node joining adds its entries, a node leaving
// removes them, a node changing touches only what changed.
type Syncer struct {
	cfg   SyncerConfig
	owned map[string]map[netip.Prefix]ipcache.Entry
}

// NewSyncer validates cfg.
func NewSyncer(cfg SyncerConfig) (*Syncer, error) {
	switch {
	case cfg.Registry == nil:
		return nil, fmt.Errorf("new syncer: Registry is nil: %w", ErrInvalidConfig)
	case cfg.IPCache == nil:
		return nil, fmt.Errorf("new syncer: IPCache is nil: %w", ErrInvalidConfig)
	case cfg.LocalNode == "":
		return nil, fmt.Errorf("new syncer: LocalNode is empty: %w", ErrInvalidConfig)
	case cfg.Mode > ModeNative:
		return nil, fmt.Errorf("new syncer: %v: %w", cfg.Mode, ErrInvalidConfig)
	}
	return &Syncer{cfg: cfg, owned: make(map[string]map[netip.Prefix]ipcache.Entry)}, nil
}

// Entries returns the ipcache entries the syncer derives from a node.
func (s *Syncer) Entries(n Node) map[netip.Prefix]ipcache.Entry {
	out := make(map[netip.Prefix]ipcache.Entry, len(n.PodCIDRs)+len(n.Addresses))
	for _, p := range n.PodCIDRs {
		e := ipcache.Entry{Identity: identity.ReservedWorld}
		if s.cfg.Mode == ModeTunnel {
			e.TunnelEndpoint = n.Address(p.Addr().Is4())
		}
		out[p] = e
	}
	for _, a := range n.Addresses {
		out[netip.PrefixFrom(a, a.BitLen())] = ipcache.Entry{Identity: identity.ReservedRemoteNode}
	}
	for _, a := range n.HostAddresses {
		e := ipcache.Entry{Identity: identity.ReservedRemoteNode}
		if s.cfg.Mode == ModeTunnel {
			e.TunnelEndpoint = n.Address(a.Is4())
		}
		out[netip.PrefixFrom(a, a.BitLen())] = e
	}
	return out
}

// Run follows the registry until ctx is done (returning nil) or the
// watch fails. On return the entries it wrote stay in the ipcache; a new
// Run picks them up. A watcher that falls behind is restarted from a
// fresh snapshot. Run must not be called concurrently with itself.
func (s *Syncer) Run(ctx context.Context) error {
	return follow(ctx, s.cfg.Registry, s)
}

func (s *Syncer) known() []string {
	names := make([]string, 0, len(s.owned))
	for name := range s.owned {
		names = append(names, name)
	}
	return names
}

func (s *Syncer) apply(n Node) error {
	if n.Name == s.cfg.LocalNode {
		return nil
	}
	want := s.Entries(n)
	have := s.owned[n.Name]
	for p := range have {
		if _, ok := want[p]; !ok {
			if err := s.cfg.IPCache.Delete(p); err != nil && !errors.Is(err, ipcache.ErrPrefixNotFound) {
				return fmt.Errorf("overlay syncer: node %q: %w", n.Name, err)
			}
			delete(have, p)
		}
	}
	if have == nil {
		have = make(map[netip.Prefix]ipcache.Entry, len(want))
		s.owned[n.Name] = have
	}
	for p, e := range want {
		if old, ok := have[p]; ok && old == e {
			continue
		}
		if err := s.cfg.IPCache.Upsert(p, e); err != nil {
			return fmt.Errorf("overlay syncer: node %q: %w", n.Name, err)
		}
		have[p] = e
	}
	return nil
}

func (s *Syncer) remove(name string) error {
	for p := range s.owned[name] {
		if err := s.cfg.IPCache.Delete(p); err != nil && !errors.Is(err, ipcache.ErrPrefixNotFound) {
			return fmt.Errorf("overlay syncer: node %q left: %w", name, err)
		}
		delete(s.owned[name], p)
	}
	delete(s.owned, name)
	return nil
}
