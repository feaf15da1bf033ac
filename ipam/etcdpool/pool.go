package etcdpool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane/ipam"
)

// DefaultPrefix is the key prefix used when Config.Prefix is empty.
const DefaultPrefix = "/nodeplane/ipam/cluster/"

// maxAttempts bounds the transactions one call makes. Every lost race means
// another call won, so progress is guaranteed; the bound only turns a bug
// into an error instead of a spin.
const maxAttempts = 100

// releaseBatch is how many CIDRs one release transaction deletes: two
// operations each, well under etcd's default limit of 128 per transaction.
const releaseBatch = 32

// ErrConfigMismatch means etcd already holds a cluster pool with a
// different configuration under the same prefix.
var ErrConfigMismatch = errors.New("cluster pool configuration differs from the one in etcd")

// Config configures a [Pool].
type Config struct {
	// Client is the etcd client. Required; the pool does not close it.
	Client *clientv3.Client
	// Cluster is the cluster pool configuration, as for
	// [ipam.NewClusterPool]. Every process sharing Prefix must use the same.
	Cluster ipam.ClusterConfig
	// Prefix is the etcd key prefix the pool lives under. Empty means
	// DefaultPrefix; a missing trailing '/' is added.
	Prefix string
}

// Pool is an [ipam.ClusterAllocator] backed by etcd. It is safe for
// concurrent use; calls within one process are serialised, calls of
// different processes are arbitrated by etcd transactions.
type Pool struct {
	client *clientv3.Client
	prefix string

	mu     sync.Mutex // serialises attempts: mirror and cursor
	mirror *ipam.ClusterPool

	conflicts atomic.Uint64 // transactions lost to another writer, for tests
}

var _ ipam.ClusterAllocator = (*Pool)(nil)

// storedConfig is the configuration as kept in etcd.
type storedConfig struct {
	CIDRs            []netip.Prefix `json:"cidrs"`
	NodeMaskSizeIPv4 int            `json:"nodeMaskSizeIPv4"`
	NodeMaskSizeIPv6 int            `json:"nodeMaskSizeIPv6"`
}

// New returns a pool that shares the cluster CIDRs of cfg through
// cfg.Client. The first pool under a prefix stores the configuration; later
// ones must match it.
func New(ctx context.Context, cfg Config) (*Pool, error) {
	client := cfg.Client
	if client == nil {
		return nil, fmt.Errorf("new etcd cluster pool: Config.Client is nil: %w", ipam.ErrInvalid)
	}
	mirror, err := ipam.NewClusterPool(cfg.Cluster)
	if err != nil {
		return nil, fmt.Errorf("new etcd cluster pool: %w", err)
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	p := &Pool{client: client, prefix: prefix, mirror: mirror}

	norm := mirror.Config()
	want, err := json.Marshal(storedConfig{norm.CIDRs, norm.NodeMaskSizeIPv4, norm.NodeMaskSizeIPv6})
	if err != nil {
		return nil, err
	}
	key := prefix + "config"
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(want))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("new etcd cluster pool: store configuration: %w", err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 || string(kvs[0].Value) != string(want) {
			var have []byte
			if len(kvs) == 1 {
				have = kvs[0].Value
			}
			return nil, fmt.Errorf("new etcd cluster pool under %q: etcd has %s, this process %s: %w", prefix, have, want, ErrConfigMismatch)
		}
	}
	return p, nil
}

func (p *Pool) cidrKey(c netip.Prefix) string { return p.prefix + "cidrs/" + c.String() }

func (p *Pool) nodePrefix(node string) string { return p.prefix + "nodes/" + node + "/" }

func (p *Pool) nodeFamilyPrefix(node string, f ipam.Family) string {
	return p.nodePrefix(node) + strings.ToLower(f.String()) + "/"
}

func (p *Pool) nodeKey(node string, c netip.Prefix) string {
	return p.nodeFamilyPrefix(node, family(c)) + c.String()
}

func family(c netip.Prefix) ipam.Family {
	if c.Addr().Is4() {
		return ipam.IPv4
	}
	return ipam.IPv6
}

// read returns the node CIDRs etcd holds, by CIDR.
func (p *Pool) read(ctx context.Context) (map[netip.Prefix]string, error) {
	resp, err := p.client.Get(ctx, p.prefix+"cidrs/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read node CIDRs: %w", err)
	}
	owners := make(map[netip.Prefix]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		c, err := netip.ParsePrefix(strings.TrimPrefix(string(kv.Key), p.prefix+"cidrs/"))
		if err != nil {
			return nil, fmt.Errorf("etcd key %q is not a node CIDR: %w", kv.Key, ipam.ErrCorrupt)
		}
		if err := ipam.CheckNodeName(string(kv.Value)); err != nil {
			return nil, fmt.Errorf("etcd key %q: %w", kv.Key, err)
		}
		owners[c] = string(kv.Value)
	}
	return owners, nil
}

// sync makes the mirror hold exactly what etcd holds.
func (p *Pool) sync(ctx context.Context) error {
	owners, err := p.read(ctx)
	if err != nil {
		return err
	}
	have, err := p.mirror.Nodes(ctx)
	if err != nil {
		return err
	}
	for node, cidrs := range have {
		for _, c := range cidrs {
			if owners[c] != node {
				if err := p.mirror.ReleaseCIDR(ctx, node, c); err != nil {
					return err
				}
			}
		}
	}
	for c, node := range owners {
		if err := p.mirror.Occupy(ctx, node, c); err != nil {
			return fmt.Errorf("etcd key %q: %w", p.cidrKey(c), err)
		}
	}
	return nil
}

// retry runs attempt until it reports done, syncing the mirror before each
// try.
func (p *Pool) retry(ctx context.Context, attempt func() (done bool, err error)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range maxAttempts {
		if err := p.sync(ctx); err != nil {
			return err
		}
		done, err := attempt()
		if err != nil || done {
			return err
		}
		p.conflicts.Add(1)
	}
	return fmt.Errorf("gave up after %d conflicting etcd transactions", maxAttempts)
}

// claim creates the keys of fresh CIDRs for node in one transaction. With
// firstOfFamily, it also requires the node to hold no CIDR of those
// families yet, so that concurrent AllocateNode calls for one node give it
// one CIDR per family, not two.
func (p *Pool) claim(ctx context.Context, node string, fresh []netip.Prefix, firstOfFamily bool) (bool, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, c := range fresh {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(p.cidrKey(c)), "=", 0))
		if firstOfFamily {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(p.nodeFamilyPrefix(node, family(c))), "=", 0).WithPrefix())
		}
		ops = append(ops, clientv3.OpPut(p.cidrKey(c), node), clientv3.OpPut(p.nodeKey(node, c), ""))
	}
	resp, err := p.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// AllocateNode implements [ipam.ClusterAllocator].
func (p *Pool) AllocateNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := ipam.CheckNodeName(node); err != nil {
		return nil, fmt.Errorf("allocate node CIDRs: %w", err)
	}
	var result []netip.Prefix
	err := p.retry(ctx, func() (bool, error) {
		have, err := p.mirror.NodeCIDRs(ctx, node)
		if err != nil {
			return false, err
		}
		var fresh []netip.Prefix
		for _, f := range p.mirror.Families() {
			if slices.ContainsFunc(have, func(c netip.Prefix) bool { return family(c) == f }) {
				continue
			}
			c, err := p.mirror.Expand(ctx, node, f)
			if err != nil {
				return false, err // the next sync drops what the mirror took
			}
			fresh = append(fresh, c)
		}
		if len(fresh) > 0 {
			ok, err := p.claim(ctx, node, fresh, true)
			if !ok || err != nil {
				return false, err
			}
		}
		result = append(have, fresh...)
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("allocate node CIDRs for %q: %w", node, err)
	}
	slices.SortFunc(result, comparePrefix)
	return result, nil
}

// Expand implements [ipam.ClusterAllocator].
func (p *Pool) Expand(ctx context.Context, node string, f ipam.Family) (netip.Prefix, error) {
	if err := ipam.CheckNodeName(node); err != nil {
		return netip.Prefix{}, fmt.Errorf("expand node CIDRs: %w", err)
	}
	var result netip.Prefix
	err := p.retry(ctx, func() (bool, error) {
		c, err := p.mirror.Expand(ctx, node, f)
		if err != nil {
			return false, err
		}
		ok, err := p.claim(ctx, node, []netip.Prefix{c}, false)
		result = c
		return ok, err
	})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("expand %s CIDRs of %q: %w", f, node, err)
	}
	return result, nil
}

// Occupy implements [ipam.ClusterAllocator].
func (p *Pool) Occupy(ctx context.Context, node string, cidr netip.Prefix) error {
	if err := ipam.CheckNodeName(node); err != nil {
		return fmt.Errorf("occupy node CIDR: %w", err)
	}
	err := p.retry(ctx, func() (bool, error) {
		if held, err := p.mirror.NodeCIDRs(ctx, node); err != nil || slices.Contains(held, cidr) {
			return true, err
		}
		// Validates cidr and names its owner, if any.
		if err := p.mirror.Occupy(ctx, node, cidr); err != nil {
			return false, err
		}
		return p.claim(ctx, node, []netip.Prefix{cidr}, false)
	})
	if err != nil {
		return fmt.Errorf("occupy node CIDR for %q: %w", node, err)
	}
	return nil
}

// ReleaseCIDR implements [ipam.ClusterAllocator].
func (p *Pool) ReleaseCIDR(ctx context.Context, node string, cidr netip.Prefix) error {
	if err := ipam.CheckNodeName(node); err != nil {
		return fmt.Errorf("release node CIDR: %w", err)
	}
	err := p.retry(ctx, func() (bool, error) {
		// Validates and checks ownership against the fresh mirror.
		if err := p.mirror.ReleaseCIDR(ctx, node, cidr); err != nil {
			return false, err
		}
		return p.release(ctx, node, []netip.Prefix{cidr})
	})
	if err != nil {
		return fmt.Errorf("release node CIDR of %q: %w", node, err)
	}
	return nil
}

// ReleaseNode implements [ipam.ClusterAllocator].
func (p *Pool) ReleaseNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := ipam.CheckNodeName(node); err != nil {
		return nil, fmt.Errorf("release node: %w", err)
	}
	var result []netip.Prefix
	err := p.retry(ctx, func() (bool, error) {
		cidrs, err := p.mirror.ReleaseNode(ctx, node)
		if err != nil || len(cidrs) == 0 {
			return true, err
		}
		// etcd bounds the operations of one transaction (--max-txn-ops,
		// 128 by default), so a node with many CIDRs is released in
		// batches. A batch that loses a race is retried after a sync, which
		// leaves the mirror with only the CIDRs still to release.
		for batch := range slices.Chunk(cidrs, releaseBatch) {
			ok, err := p.release(ctx, node, batch)
			if !ok || err != nil {
				return false, err
			}
			result = append(result, batch...)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("release node %q: %w", node, err)
	}
	slices.SortFunc(result, comparePrefix)
	return result, nil
}

// release deletes node's CIDRs in one transaction, provided each still
// names node.
func (p *Pool) release(ctx context.Context, node string, cidrs []netip.Prefix) (bool, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, c := range cidrs {
		cmps = append(cmps, clientv3.Compare(clientv3.Value(p.cidrKey(c)), "=", node))
		ops = append(ops, clientv3.OpDelete(p.cidrKey(c)), clientv3.OpDelete(p.nodeKey(node, c)))
	}
	resp, err := p.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// NodeCIDRs implements [ipam.ClusterAllocator].
func (p *Pool) NodeCIDRs(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := ipam.CheckNodeName(node); err != nil {
		return nil, fmt.Errorf("node CIDRs: %w", err)
	}
	// The node's index keys list its CIDRs without reading everyone's.
	resp, err := p.client.Get(ctx, p.nodePrefix(node), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("node CIDRs of %q: %w", node, err)
	}
	var cidrs []netip.Prefix
	for _, kv := range resp.Kvs {
		_, cidr, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), p.nodePrefix(node)), "/")
		c, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("etcd key %q is not a node CIDR: %w", kv.Key, ipam.ErrCorrupt)
		}
		cidrs = append(cidrs, c)
	}
	slices.SortFunc(cidrs, comparePrefix)
	return cidrs, nil
}

// Nodes implements [ipam.ClusterAllocator].
func (p *Pool) Nodes(ctx context.Context) (map[string][]netip.Prefix, error) {
	owners, err := p.read(ctx)
	if err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	nodes := make(map[string][]netip.Prefix)
	for c, n := range owners {
		nodes[n] = append(nodes[n], c)
	}
	for _, cidrs := range nodes {
		slices.SortFunc(cidrs, comparePrefix)
	}
	return nodes, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
