package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Default node mask sizes, those of Cilium's cluster-pool IPAM mode.
const (
	DefaultNodeMaskSizeIPv4 = 24
	DefaultNodeMaskSizeIPv6 = 112
)

// maxNodeLen is the longest node name: a DNS subdomain, as Kubernetes
// node names are.
const maxNodeLen = 253

// ClusterConfig configures a cluster pool: the cluster CIDRs and the size
// of the node CIDRs carved from them.
type ClusterConfig struct {
	// CIDRs are the cluster CIDRs: IPv4, IPv6 or both. At least one is
	// required; they must not overlap and must have their host bits clear.
	CIDRs []netip.Prefix
	// NodeMaskSizeIPv4 is the prefix length of IPv4 node CIDRs. Zero means
	// DefaultNodeMaskSizeIPv4. It may not be shorter than any IPv4 cluster
	// CIDR.
	NodeMaskSizeIPv4 int
	// NodeMaskSizeIPv6 is the prefix length of IPv6 node CIDRs. Zero means
	// DefaultNodeMaskSizeIPv6. It may not be shorter than any IPv6 cluster
	// CIDR.
	NodeMaskSizeIPv6 int
}

// normalize validates c and fills in the defaults.
func (c ClusterConfig) normalize() (ClusterConfig, error) {
	if len(c.CIDRs) == 0 {
		return c, fmt.Errorf("no cluster CIDRs: %w", ErrInvalid)
	}
	c.CIDRs = slices.Clone(c.CIDRs)
	if c.NodeMaskSizeIPv4 == 0 {
		c.NodeMaskSizeIPv4 = DefaultNodeMaskSizeIPv4
	}
	if c.NodeMaskSizeIPv6 == 0 {
		c.NodeMaskSizeIPv6 = DefaultNodeMaskSizeIPv6
	}
	if c.NodeMaskSizeIPv4 < 0 || c.NodeMaskSizeIPv4 > 32 {
		return c, fmt.Errorf("IPv4 node mask size %d, want 1 to 32: %w", c.NodeMaskSizeIPv4, ErrMaskSize)
	}
	if c.NodeMaskSizeIPv6 < 0 || c.NodeMaskSizeIPv6 > 128 {
		return c, fmt.Errorf("IPv6 node mask size %d, want 1 to 128: %w", c.NodeMaskSizeIPv6, ErrMaskSize)
	}
	for _, p := range c.CIDRs {
		if err := checkPrefix(p); err != nil {
			return c, fmt.Errorf("cluster CIDR: %w", err)
		}
		if m := c.maskSize(familyOf(p.Addr())); m < p.Bits() {
			return c, fmt.Errorf("node CIDRs of /%d do not fit in cluster CIDR %s: %w", m, p, ErrMaskSize)
		}
	}
	if err := checkOverlap(c.CIDRs); err != nil {
		return c, fmt.Errorf("cluster CIDRs: %w", err)
	}
	return c, nil
}

func (c ClusterConfig) maskSize(f Family) int {
	if f == IPv4 {
		return c.NodeMaskSizeIPv4
	}
	return c.NodeMaskSizeIPv6
}

// ClusterAllocator hands out node CIDRs from cluster CIDRs. A node gets one
// CIDR of each family the cluster has, and more when its host pool is
// exhausted. [ClusterPool] is the in-process implementation;
// [github.com/nodeplane/nodeplane/ipam/etcdpool] shares the cluster CIDRs
// among many processes through etcd.
//
// Node names are opaque strings of up to 253 bytes without '/', spaces or
// control characters; Kubernetes node names qualify.
type ClusterAllocator interface {
	// AllocateNode gives node one CIDR of each family it has none of, all
	// or none, and returns all its CIDRs. Calling it again returns the
	// same CIDRs, so a restarting node agent simply calls it on startup.
	AllocateNode(ctx context.Context, node string) ([]netip.Prefix, error)
	// Expand gives node a further CIDR of family f, for when the node's
	// pool of that family is exhausted.
	Expand(ctx context.Context, node string, f Family) (netip.Prefix, error)
	// Occupy records that node holds cidr, which must be a node CIDR of
	// the cluster: to rebuild the allocator from the CIDRs nodes already
	// use. Occupying a CIDR the node already holds is not an error.
	Occupy(ctx context.Context, node string, cidr netip.Prefix) error
	// ReleaseCIDR returns one of node's CIDRs to the cluster.
	ReleaseCIDR(ctx context.Context, node string, cidr netip.Prefix) error
	// ReleaseNode returns all of node's CIDRs to the cluster, for a node
	// that left it, and lists them in address order. A node with none is
	// not an error. If it fails, some of the CIDRs may be released already;
	// calling it again releases the rest.
	ReleaseNode(ctx context.Context, node string) ([]netip.Prefix, error)
	// NodeCIDRs returns node's CIDRs, IPv4 first, ascending.
	NodeCIDRs(ctx context.Context, node string) ([]netip.Prefix, error)
	// Nodes returns every node that holds a CIDR with its CIDRs, to find
	// nodes that no longer exist.
	Nodes(ctx context.Context) (map[string][]netip.Prefix, error)
}

// CheckNodeName returns an error matching [ErrInvalid] if node is not a
// valid node name for a [ClusterAllocator].
func CheckNodeName(node string) error {
	switch {
	case node == "":
		return fmt.Errorf("empty node name: %w", ErrInvalid)
	case len(node) > maxNodeLen:
		return fmt.Errorf("node name of %d bytes, more than %d: %w", len(node), maxNodeLen, ErrInvalid)
	case !utf8.ValidString(node):
		return fmt.Errorf("node name %q is not valid UTF-8: %w", node, ErrInvalid)
	case strings.ContainsFunc(node, func(r rune) bool { return r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("node name %q contains '/', a space or a control character: %w", node, ErrInvalid)
	}
	return nil
}

// ClusterPool is the in-process [ClusterAllocator]: one process (an
// operator, or a test) owns the cluster CIDRs. It keeps its state in memory;
// after a restart, [ClusterPool.Occupy] rebuilds it from the CIDRs the nodes
// hold. Node CIDRs are handed out with a rotating cursor, like addresses in a
// [Pool], so a released node CIDR is reused last. It is safe for concurrent
// use; the context arguments are only checked for cancellation.
type ClusterPool struct {
	mu     sync.Mutex
	cfg    ClusterConfig
	fams   [2]blockSet
	owners map[netip.Prefix]string
	nodes  map[string][]netip.Prefix
}

var _ ClusterAllocator = (*ClusterPool)(nil)

// NewClusterPool returns an in-process cluster pool for cfg.
func NewClusterPool(cfg ClusterConfig) (*ClusterPool, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, fmt.Errorf("new cluster pool: %w", err)
	}
	c := &ClusterPool{
		cfg:    cfg,
		owners: make(map[netip.Prefix]string),
		nodes:  make(map[string][]netip.Prefix),
	}
	for _, p := range cfg.CIDRs {
		f := familyOf(p.Addr())
		s := &c.fams[f.index()]
		s.blocks = append(s.blocks, newBlock(p, uint(f.bits()-cfg.maskSize(f))))
	}
	return c, nil
}

// Config returns the pool's configuration with the defaults filled in.
func (c *ClusterPool) Config() ClusterConfig {
	cfg := c.cfg
	cfg.CIDRs = slices.Clone(cfg.CIDRs)
	return cfg
}

// Families returns the families the cluster has CIDRs of, IPv4 first.
func (c *ClusterPool) Families() []Family {
	var fs []Family
	for _, f := range []Family{IPv4, IPv6} {
		if len(c.fams[f.index()].blocks) > 0 {
			fs = append(fs, f)
		}
	}
	return fs
}

// AllocateNode implements [ClusterAllocator].
func (c *ClusterPool) AllocateNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkCall(ctx, node); err != nil {
		return nil, fmt.Errorf("allocate node CIDRs: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var undo []func()
	for _, f := range c.Families() {
		if slices.ContainsFunc(c.nodes[node], func(p netip.Prefix) bool { return familyOf(p.Addr()) == f }) {
			continue
		}
		_, u, err := c.expandLocked(node, f)
		if err != nil {
			for _, u := range slices.Backward(undo) {
				u()
			}
			return nil, fmt.Errorf("allocate node CIDRs for %q: %w", node, err)
		}
		undo = append(undo, u)
	}
	return c.nodeCIDRsLocked(node), nil
}

// Expand implements [ClusterAllocator].
func (c *ClusterPool) Expand(ctx context.Context, node string, f Family) (netip.Prefix, error) {
	if err := checkCall(ctx, node); err != nil {
		return netip.Prefix{}, fmt.Errorf("expand node CIDRs: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, _, err := c.expandLocked(node, f)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("expand %s CIDRs of %q: %w", f, node, err)
	}
	return p, nil
}

func (c *ClusterPool) expandLocked(node string, f Family) (netip.Prefix, func(), error) {
	if !f.valid() {
		return netip.Prefix{}, nil, fmt.Errorf("%s: %w", f, ErrInvalid)
	}
	s := &c.fams[f.index()]
	if len(s.blocks) == 0 {
		return netip.Prefix{}, nil, fmt.Errorf("cluster has no %s CIDR: %w", f, ErrInvalid)
	}
	bi, off, ok := s.next()
	if !ok {
		return netip.Prefix{}, nil, &ExhaustedError{Family: f, Prefixes: s.prefixes()}
	}
	b := s.blocks[bi]
	cur, curOff := s.cur, s.curOff
	b.taken.set(off)
	s.advance(bi, off)
	p := netip.PrefixFrom(b.addr(off), c.cfg.maskSize(f))
	c.addOwner(p, node)
	return p, func() {
		c.removeOwner(p)
		b.taken.clear(off)
		s.cur, s.curOff = cur, curOff
	}, nil
}

// checkNodeCIDR validates that cidr is a node CIDR of the cluster and
// returns its block.
func (c *ClusterPool) checkNodeCIDR(cidr netip.Prefix) (*block, error) {
	if err := checkPrefix(cidr); err != nil {
		return nil, err
	}
	f := familyOf(cidr.Addr())
	if m := c.cfg.maskSize(f); cidr.Bits() != m {
		return nil, fmt.Errorf("%s is not a node CIDR (%s node CIDRs are /%d): %w", cidr, f, m, ErrInvalid)
	}
	b, _ := c.fams[f.index()].find(cidr.Addr())
	if b == nil {
		return nil, fmt.Errorf("%s: %w", cidr, ErrOutOfRange)
	}
	return b, nil
}

// Occupy implements [ClusterAllocator].
func (c *ClusterPool) Occupy(ctx context.Context, node string, cidr netip.Prefix) error {
	if err := checkCall(ctx, node); err != nil {
		return fmt.Errorf("occupy node CIDR: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.checkNodeCIDR(cidr)
	if err != nil {
		return fmt.Errorf("occupy node CIDR for %q: %w", node, err)
	}
	if o, ok := c.owners[cidr]; ok {
		if o == node {
			return nil
		}
		return fmt.Errorf("occupy node CIDR for %q: %w", node, &AllocatedError{CIDR: cidr, Owner: o})
	}
	b.taken.set(b.offset(cidr.Addr()))
	c.addOwner(cidr, node)
	return nil
}

// ReleaseCIDR implements [ClusterAllocator].
func (c *ClusterPool) ReleaseCIDR(ctx context.Context, node string, cidr netip.Prefix) error {
	if err := checkCall(ctx, node); err != nil {
		return fmt.Errorf("release node CIDR: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.checkNodeCIDR(cidr)
	if err != nil {
		return fmt.Errorf("release node CIDR of %q: %w", node, err)
	}
	switch o, ok := c.owners[cidr]; {
	case !ok:
		return fmt.Errorf("release node CIDR %s of %q: %w", cidr, node, ErrNotAllocated)
	case o != node:
		return fmt.Errorf("release node CIDR %s of %q: it belongs to %q: %w", cidr, node, o, ErrNotAllocated)
	}
	b.taken.clear(b.offset(cidr.Addr()))
	c.removeOwner(cidr)
	return nil
}

// ReleaseNode implements [ClusterAllocator].
func (c *ClusterPool) ReleaseNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkCall(ctx, node); err != nil {
		return nil, fmt.Errorf("release node: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cidrs := c.nodeCIDRsLocked(node)
	for _, p := range cidrs {
		b, _ := c.fams[familyOf(p.Addr()).index()].find(p.Addr())
		b.taken.clear(b.offset(p.Addr()))
		c.removeOwner(p)
	}
	return cidrs, nil
}

// NodeCIDRs implements [ClusterAllocator].
func (c *ClusterPool) NodeCIDRs(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := checkCall(ctx, node); err != nil {
		return nil, fmt.Errorf("node CIDRs: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodeCIDRsLocked(node), nil
}

// Nodes implements [ClusterAllocator].
func (c *ClusterPool) Nodes(ctx context.Context) (map[string][]netip.Prefix, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string][]netip.Prefix, len(c.nodes))
	for n := range c.nodes {
		m[n] = c.nodeCIDRsLocked(n)
	}
	return m, nil
}

func (c *ClusterPool) nodeCIDRsLocked(node string) []netip.Prefix {
	cidrs := slices.Clone(c.nodes[node])
	slices.SortFunc(cidrs, comparePrefix)
	return cidrs
}

func (c *ClusterPool) addOwner(p netip.Prefix, node string) {
	c.owners[p] = node
	c.nodes[node] = append(c.nodes[node], p)
}

func (c *ClusterPool) removeOwner(p netip.Prefix) {
	node := c.owners[p]
	delete(c.owners, p)
	cidrs := slices.DeleteFunc(c.nodes[node], func(q netip.Prefix) bool { return q == p })
	if len(cidrs) == 0 {
		delete(c.nodes, node)
	} else {
		c.nodes[node] = cidrs
	}
}

// comparePrefix orders prefixes by address (IPv4 first), then length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func checkCall(ctx context.Context, node string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return CheckNodeName(node)
}
