package policy

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

func TestMain(m *testing.M) { testmain.Run(m) }

// Pod label sets used across the tests: the labels Cilium gives pods.
const (
	clusterLbl = "k8s:io.cilium.k8s.policy.cluster=default"
	webProd    = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod," + clusterLbl
	dbProd     = "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod," + clusterLbl
	apiProd    = "k8s:app=api,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.namespace.labels.team=a," + clusterLbl
	webDev     = "k8s:app=web,k8s:io.kubernetes.pod.namespace=dev,k8s:io.cilium.k8s.namespace.labels.team=b," + clusterLbl
	dbDev      = "k8s:app=db,k8s:io.kubernetes.pod.namespace=dev,k8s:io.cilium.k8s.namespace.labels.team=b," + clusterLbl
)

// world is a test universe: a repository and an allocator for the
// identities of the flows traced against it.
type world struct {
	tb    testing.TB
	repo  *Repository
	alloc *identity.InProcessAllocator
}

func newWorld(tb testing.TB, cfg Config, docs ...string) *world {
	tb.Helper()
	repo, err := newRepository(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { alloc.Close() })
	w := &world{tb: tb, repo: repo, alloc: alloc}
	for _, d := range docs {
		w.add(d)
	}
	return w
}

func (w *world) add(doc string) {
	w.tb.Helper()
	ps, err := Parse([]byte(doc), "test")
	if err != nil {
		w.tb.Fatalf("parse: %v", err)
	}
	for _, p := range ps {
		if _, err := w.repo.replace(p); err != nil {
			w.tb.Fatalf("add %s: %v", p.ID(), err)
		}
	}
}

// ident returns the identity of a label list ("k8s:app=web,...") or, with a
// "cidr " prefix, of an address or prefix outside the cluster.
func (w *world) ident(spec string) identity.Identity {
	w.tb.Helper()
	var ls identity.Labels
	var err error
	if rest, ok := strings.CutPrefix(spec, "cidr "); ok {
		pfx, perr := netip.ParsePrefix(rest)
		if perr != nil {
			a := netip.MustParseAddr(rest)
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		ls, err = identity.CIDRLabels(pfx, w.repo.cfg.Stack)
	} else {
		ls, err = identity.ParseLabelList(spec)
	}
	if err != nil {
		w.tb.Fatal(err)
	}
	id, _, err := w.alloc.Allocate(context.Background(), ls)
	if err != nil {
		w.tb.Fatal(err)
	}
	ident := identity.Identity{ID: id, Labels: ls}
	w.repo.updateIdentities([]identity.Identity{ident}, nil)
	return ident
}

// sides traces a flow and returns the verdict of the source's egress and
// of the destination's ingress, each "allow" or "deny", computed whether
// or not the side is a local endpoint (as Cilium's own flow lookup does).
func (w *world) sides(from, to, port string) (egress, ingress string) {
	w.tb.Helper()
	src, dst := w.ident(from), w.ident(to)
	pn, proto := parseTestPort(w.tb, port)
	verdict := func(dir mapstate.Direction, ep, peer identity.Identity) string {
		endpoint := Endpoint{Identity: ep.ID, Labels: ep.Labels}
		pol := w.repo.Compile(endpoint)
		d := pol.Lookup(peer.ID, dir, proto, pn)
		ev := w.repo.Evaluate(endpoint, peer, dir, proto, pn)
		if d.Allowed != ev.Allowed || !d.Allowed && d.Reason != ev.Reason {
			w.tb.Fatalf("%s of %v: map %+v, rules %+v", dir, ep, d, ev)
		}
		if d.Allowed {
			return "allow"
		}
		return "deny"
	}
	return verdict(mapstate.Egress, src, dst), verdict(mapstate.Ingress, dst, src)
}

func parseTestPort(tb testing.TB, s string) (uint16, nodeplane.Protocol) {
	tb.Helper()
	ps, protoStr, _ := strings.Cut(s, "/")
	proto := nodeplane.ProtoTCP
	if protoStr != "" {
		var err error
		if proto, err = nodeplane.ParseProtocol(protoStr); err != nil {
			tb.Fatal(err)
		}
	}
	var n uint16
	for _, c := range ps {
		n = n*10 + uint16(c-'0')
	}
	return n, proto
}
