package nodeplane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/policy"
)

// Two pods on this node, web and db in namespace prod, and a policy that
// lets web reach db on port 5432 only: ipam gives each pod an address,
// identity its security identity, datapath its veth, programs and policy
// map, the ipcache maps its address to its identity, and the policy engine
// compiles the rules into the maps. Then web connects to db on 5432 (the
// policy allows it) and on 8080 (dropped, and the datapath says why).
//
// It needs root, creates the pods' network namespaces and adds their
// interfaces to this node's namespace; TestPrivilegedComposition runs the
// same code in a namespace of its own.
func Example() {
	if err := twoPods(context.Background(), "", os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// A policy that selects db; none selects web.
const dbPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`

// node is what a node agent holds: one of each.
type node struct {
	pool   *ipam.Pool
	alloc  *identity.InProcessAllocator
	dp     *datapath.Datapath
	ipc    *ipcache.IPCache
	engine *policy.Engine
}

// pod is a workload the node runs.
type pod struct {
	name string
	addr netip.Addr
	ns   *datapath.NetNS
	ep   *datapath.Endpoint
}

// addPod takes a pod from labels to enforced policy. Each value is given
// once: the engine takes the identity and the policy map from the
// endpoint, and the labels from the identities the allocator's watch
// brought it.
func (n *node) addPod(ctx context.Context, id datapath.EndpointID, namespace, app string) (*pod, error) {
	labels, err := identity.ParseLabelList(fmt.Sprintf(
		"k8s:app=%s,k8s:io.kubernetes.pod.namespace=%s,k8s:io.cilium.k8s.policy.cluster=default", app, namespace))
	if err != nil {
		return nil, err
	}
	p := &pod{name: namespace + "/" + app}
	if p.addr, err = n.pool.AllocateNext(ipam.IPv4, p.name); err != nil {
		return nil, err
	}
	ident, _, err := n.alloc.Allocate(ctx, labels)
	if err != nil {
		return nil, err
	}
	// A CNI plugin gets the namespace from the runtime; here we make it.
	if p.ns, err = datapath.NewNetNS(); err != nil {
		return nil, err
	}
	p.ep, err = n.dp.AddEndpoint(datapath.EndpointConfig{ID: id, Identity: ident, IPv4: p.addr, NetNS: p.ns.Path()})
	if err != nil {
		return nil, errors.Join(err, p.ns.Close())
	}
	if err := n.ipc.Upsert(netip.PrefixFrom(p.addr, 32), ipcache.Entry{Identity: ident}); err != nil {
		return p, err
	}
	// Every endpoint goes to the engine, whether a policy selects it or
	// not: the datapath denies all traffic of an endpoint whose policy map
	// is empty. The engine must know the identity first.
	if err := n.engine.WaitForIdentities(ctx, ident); err != nil {
		return p, err
	}
	return p, n.engine.AddEndpoint(p.ep)
}

// twoPods builds the node in the network namespace nodeNetNS ("" for this
// process's) and reports web's two connections to out.
func twoPods(ctx context.Context, nodeNetNS string, out io.Writer) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var n node
	if n.pool, err = ipam.New(ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}}); err != nil {
		return err
	}
	if n.alloc, err = identity.NewInProcessAllocator(identity.InProcessConfig{}); err != nil {
		return err
	}
	defer n.alloc.Close()
	if n.dp, err = datapath.New(datapath.Config{NodeNetNS: nodeNetNS}); err != nil {
		return err
	}
	defer n.dp.Close()
	n.ipc = ipcache.New()
	if err := n.ipc.AddWriter(n.dp.IPCache()); err != nil {
		return err
	}
	if n.engine, err = policy.NewEngine(policy.EngineConfig{CIDRAllocator: n.alloc, IPCache: n.ipc}); err != nil {
		return err
	}
	defer n.engine.Close()
	watch := make(chan error, 1)
	go func() { watch <- n.engine.WatchIdentities(ctx, n.alloc) }()
	defer func() {
		cancel()
		if werr := <-watch; !errors.Is(werr, context.Canceled) {
			err = errors.Join(err, werr)
		}
	}()

	var pods [2]*pod
	for i, app := range []string{"web", "db"} {
		p, err := n.addPod(ctx, datapath.EndpointID(i+1), "prod", app)
		if p != nil && p.ns != nil {
			defer p.ns.Close()
		}
		if err != nil {
			return fmt.Errorf("pod %s: %w", app, err)
		}
		pods[i] = p
	}
	web, db := pods[0], pods[1]
	policies, err := policy.Parse([]byte(dbPolicy), "db-policy.yaml")
	if err != nil {
		return err
	}
	if _, err := n.engine.AddPolicy(policies[0]); err != nil {
		return err
	}

	events, err := n.dp.NewEventReader()
	if err != nil {
		return err
	}
	defer events.Close()
	for _, port := range []uint16{5432, 8080} {
		if err := db.serve(port); err != nil {
			return err
		}
		dst := netip.AddrPortFrom(db.addr, port)
		if err := web.connect(dst, 2*time.Second); err != nil {
			why, rerr := dropReason(events, &n, dst)
			if rerr != nil {
				return errors.Join(err, rerr)
			}
			fmt.Fprintf(out, "%s -> %s %v: dropped (%s)\n", web.name, db.name, dst, why)
			continue
		}
		fmt.Fprintf(out, "%s -> %s %v: allowed\n", web.name, db.name, dst)
	}
	return nil
}

// serve listens on port inside the pod's namespace and echoes what each
// connection sends until the namespace's last reference goes.
func (p *pod) serve(port uint16) error {
	var l net.Listener
	err := p.ns.Do(func() (err error) {
		l, err = net.Listen("tcp", netip.AddrPortFrom(p.addr, port).String())
		return err
	})
	if err != nil {
		return err
	}
	go func() {
		defer l.Close()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return nil
}

// connect opens a TCP connection from inside the pod's namespace and
// echoes one message through it.
func (p *pod) connect(dst netip.AddrPort, timeout time.Duration) error {
	var c net.Conn
	if err := p.ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("hello")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, msg)
	return err
}

// dropReason finds the datapath's drop event of a connection to dst and
// names the reason and the two ends' labels.
func dropReason(events *datapath.EventReader, n *node, dst netip.AddrPort) (string, error) {
	events.SetDeadline(time.Now().Add(5 * time.Second))
	for {
		ev, err := events.Read()
		if err != nil {
			return "", fmt.Errorf("no drop event for %v: %w", dst, err)
		}
		drop, ok := ev.(*datapath.DropEvent)
		if !ok || !drop.HasTuple || drop.Tuple.Dst != dst.Addr() || drop.Tuple.DstPort != dst.Port() {
			continue
		}
		src, _ := n.alloc.Lookup(drop.SrcIdentity)
		to, _ := n.alloc.Lookup(drop.DstIdentity)
		return fmt.Sprintf("%v: %v -> %v", drop.Reason, src, to), nil
	}
}
