package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
	"github.com/nodeplane/nodeplane/ipam"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestPrivilegedAgentObservability checks that the flows of real traffic
// reach the Hubble API and the Prometheus metrics the agent serves.
func TestPrivilegedAgentObservability(t *testing.T) {
	n := newTestNode(t)
	n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 5432))
	hubbleAddr, metricsAddr := freeAddr(t), freeAddr(t)
	n.startAgentWith(t, n.config(t), ServeConfig{Socket: n.socket, HubbleListen: hubbleAddr, MetricsListen: metricsAddr})
	c := agentapi.NewClient(n.socket)
	web := addPod(t, c, "c-web", "web")
	db := addPod(t, c, "c-db", "db")
	testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":5432")
	if !web.connects(t, netip.AddrPortFrom(db.addr, 5432)) || web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
		t.Fatal("policy not as written")
	}

	conn, err := grpc.NewClient(hubbleAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var sawDrop, sawForward bool
	for !sawDrop || !sawForward {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("hubble flows: %v (drop seen %v, forward seen %v)", err, sawDrop, sawForward)
		}
		f := resp.GetFlow()
		if f == nil || f.GetSource().GetPodName() != "web" || f.GetDestination().GetPodName() != "db" {
			continue
		}
		switch f.GetVerdict().String() {
		case "DROPPED":
			sawDrop = sawDrop || f.GetDropReasonDesc().String() == "POLICY_DENIED"
		case "FORWARDED":
			sawForward = true
		}
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `hubble_drop_total{`) && strings.Contains(string(body), `POLICY_DENIED`) &&
			strings.Contains(string(body), "hubble_flows_processed_total{") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack the drop:\n%s", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPrivilegedAgentEtcdIdentities runs two agents (two nodes) on one
// etcd: pods with the same labels get the same identity on both, and a
// restarted agent gets its pods' identities back.
func TestPrivilegedAgentEtcdIdentities(t *testing.T) {
	srv := etcdtest.Start(t)
	var ids [2]uint32
	var nodes [2]*testNode
	for i := range nodes {
		n := newTestNode(t)
		nodes[i] = n
		cfg := n.config(t)
		cfg.Node, cfg.Etcd = fmt.Sprintf("node-%d", i), []string{srv.Endpoint()}
		_, stop := n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
		p := addPod(t, agentapi.NewClient(n.socket), "c-web", "web")
		ids[i] = p.resp.Identity
		if i == 1 {
			stop(false)
			n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
			eps, err := agentapi.NewClient(n.socket).List(context.Background())
			if err != nil || len(eps) != 1 || eps[0].Identity != ids[1] {
				t.Errorf("after restart: %+v, %v; want identity %d", eps, err, ids[1])
			}
		}
	}
	if ids[0] != ids[1] || !identity.ID(ids[0]).IsCluster() {
		t.Errorf("identities %v: want one cluster-scoped identity for the same labels", ids)
	}
}

// TestPrivilegedAgentConcurrentAdds sends 50 ADDs at once: 50 endpoints
// with 50 distinct addresses.
func TestPrivilegedAgentConcurrentAdds(t *testing.T) {
	n := newTestNode(t)
	n.startAgent(t)
	c := agentapi.NewClient(n.socket)
	const count = 50
	nss := make([]*testutils.NetNS, count)
	for i := range nss {
		nss[i] = testutils.NewNetNS(t)
	}
	addrs := make([]netip.Addr, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			resp, err := c.Add(context.Background(), agentapi.AddRequest{
				Attachment: agentapi.Attachment{ContainerID: fmt.Sprintf("c-%d", i), IfName: "eth0"},
				NetNS:      nsPath(nss[i]), Namespace: "prod", Pod: fmt.Sprintf("p-%d", i), Labels: map[string]string{"app": "many"}})
			if err == nil {
				addrs[i] = resp.IPs[0].Address.Addr()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Fatalf("add %d: %v", i, errs[i])
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("pods %d and %d both got %v", j, i, a)
		}
		seen[a] = i
	}
	if eps, err := c.List(context.Background()); err != nil || len(eps) != count {
		t.Fatalf("list: %d endpoints, %v", len(eps), err)
	}
}

// TestPrivilegedAgentExhausted fills a small pool: the next ADD fails
// with CodeExhausted and leaves nothing behind, and a DEL makes room.
func TestPrivilegedAgentExhausted(t *testing.T) {
	n := newTestNode(t)
	cfg := n.config(t)
	cfg.PoolV4 = netip.MustParsePrefix("10.202.0.0/30")
	a, _ := n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
	c, ctx := agentapi.NewClient(n.socket), context.Background()
	var added []*testPod
	for i := 0; ; i++ {
		ns := testutils.NewNetNS(t)
		req := agentapi.AddRequest{Attachment: agentapi.Attachment{ContainerID: fmt.Sprintf("c-%d", i), IfName: "eth0"},
			NetNS: nsPath(ns), Namespace: "prod", Labels: map[string]string{"app": "x"}}
		_, err := c.Add(ctx, req)
		if err == nil {
			added = append(added, &testPod{ns: ns, req: req})
			if i > 8 {
				t.Fatal("a /30 pool never ran out")
			}
			continue
		}
		if agentapi.CodeOf(err) != agentapi.CodeExhausted {
			t.Fatalf("add to a full pool: %v (code %d), want code %d", err, agentapi.CodeOf(err), agentapi.CodeExhausted)
		}
		if eps, _ := c.List(ctx); len(eps) != len(added) || len(a.dp.Endpoints()) != len(added) {
			t.Fatalf("a failed add left state: %d listed, %d in the datapath, want %d", len(eps), len(a.dp.Endpoints()), len(added))
		}
		if err := c.Del(ctx, agentapi.DelRequest{Attachment: added[0].req.Attachment}); err != nil {
			t.Fatal(err)
		}
		// A failure after the address and identity were taken (the
		// namespace does not exist) gives both back.
		bad := req
		bad.NetNS, bad.Labels = "/proc/self/fd/999999", map[string]string{"app": "bad"}
		if _, err := c.Add(ctx, bad); agentapi.CodeOf(err) != agentapi.CodeDataplane {
			t.Fatalf("add into a missing namespace: %v", err)
		}
		badLabels, _ := podLabels(identity.PodLabelsConfig{Namespace: "prod", Labels: bad.Labels})
		if _, held := a.alloc.LookupByLabels(badLabels); held || a.pool.Used(ipam.IPv4) != uint64(len(added)-1) {
			t.Fatalf("failed add kept its identity (%v) or address (%d used)", held, a.pool.Used(ipam.IPv4))
		}
		if _, err := c.Add(ctx, req); err != nil {
			t.Fatalf("add after a del made room: %v", err)
		}
		return
	}
}
