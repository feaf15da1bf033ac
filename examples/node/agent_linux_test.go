package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedAgentAPI drives Add, Check, List, Del and GC through the
// agent's socket, with real namespaces and traffic between two endpoints
// under a policy: web reaches db on 5432, and 8080 is dropped.
func TestPrivilegedAgentAPI(t *testing.T) {
	n := newTestNode(t)
	n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 5432))
	cfg := n.config(t)
	cfg.PoolV6 = netip.MustParsePrefix("fd00:201::/112") // dual stack
	a, _ := n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
	c, ctx := agentapi.NewClient(n.socket), context.Background()

	web := addPod(t, c, "c-web", "web")
	db := addPod(t, c, "c-db", "db")
	if len(db.resp.IPs) != 2 || !db.resp.IPs[1].Address.Addr().Is6() || !cfg.PoolV6.Contains(db.resp.IPs[1].Address.Addr()) {
		t.Fatalf("dual-stack addresses: %+v", db.resp.IPs)
	}
	if web.addr == db.addr || !netip.MustParsePrefix("10.201.0.0/24").Contains(web.addr) {
		t.Fatalf("addresses %v and %v", web.addr, db.addr)
	}
	if web.resp.Identity == db.resp.Identity || web.resp.Interfaces[1].Sandbox != web.req.NetNS {
		t.Fatalf("responses %+v, %+v", web.resp, db.resp)
	}
	for _, port := range []string{"5432", "8080"} {
		testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":"+port)
	}
	if !web.connects(t, netip.AddrPortFrom(db.addr, 5432)) {
		t.Error("web -> db:5432 failed; the policy allows it")
	}
	if web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
		t.Error("web -> db:8080 connected; the policy denies it")
	}
	db6 := db.resp.IPs[1].Address.Addr()
	for _, port := range []string{"5432", "8080"} {
		testutils.ServeEcho(t, db.ns, "tcp6", fmt.Sprintf("[%s]:%s", db6, port))
	}
	if !web.connects(t, netip.AddrPortFrom(db6, 5432)) {
		t.Error("web -> db:5432 over IPv6 failed; the policy allows it")
	}
	if web.connects(t, netip.AddrPortFrom(db6, 8080)) {
		t.Error("web -> db:8080 over IPv6 connected; the policy denies it")
	}

	for _, p := range []*testPod{web, db} {
		if err := c.Check(ctx, agentapi.CheckRequest{Attachment: p.req.Attachment, NetNS: p.req.NetNS}); err != nil {
			t.Errorf("check %s: %v", p.req.Pod, err)
		}
		// The runtime's result, in any order, is the endpoint's; another
		// pod's is not.
		var addrs []netip.Prefix
		for _, ip := range slices.Backward(p.resp.IPs) {
			addrs = append(addrs, ip.Address)
		}
		if err := c.Check(ctx, agentapi.CheckRequest{Attachment: p.req.Attachment, NetNS: p.req.NetNS, Addrs: addrs}); err != nil {
			t.Errorf("check %s with its addresses %v: %v", p.req.Pod, addrs, err)
		}
	}
	if err := c.Check(ctx, agentapi.CheckRequest{Attachment: web.req.Attachment, NetNS: web.req.NetNS, Addrs: []netip.Prefix{db.resp.IPs[0].Address}}); agentapi.CodeOf(err) != agentapi.CodeDataplane {
		t.Errorf("check web with db's address: %v, want code %d", err, agentapi.CodeDataplane)
	}
	again, err := c.Add(ctx, web.req)
	if err != nil || !reflect.DeepEqual(again, web.resp) {
		t.Errorf("repeated add = %+v, %v; want %+v", again, err, web.resp)
	}
	eps, err := c.List(ctx)
	if err != nil || len(eps) != 2 || eps[0].ContainerID != "c-web" || eps[1].ContainerID != "c-db" ||
		eps[1].Addrs[0].Addr() != db.addr || eps[1].Identity != db.resp.Identity {
		t.Fatalf("list = %+v, %v", eps, err)
	}

	// A pod whose namespace vanished before DEL.
	gone, err := datapath.NewNetNS()
	if err != nil {
		t.Fatal(err)
	}
	goneReq := agentapi.AddRequest{Attachment: agentapi.Attachment{ContainerID: "c-gone", IfName: "eth0"}, NetNS: gone.Path(),
		Namespace: "prod", Pod: "gone", Labels: map[string]string{"app": "gone"}}
	goneResp, err := c.Add(ctx, goneReq)
	if err != nil {
		t.Fatal(err)
	}
	gone.Close()
	for range 2 {
		if err := c.Del(ctx, agentapi.DelRequest{Attachment: goneReq.Attachment}); err != nil {
			t.Fatalf("del with a vanished netns: %v", err)
		}
	}
	if owner, held := a.pool.Owner(goneResp.IPs[0].Address.Addr()); held {
		t.Errorf("address %v still held by %s after DEL", goneResp.IPs[0].Address, owner)
	}

	if err := c.Del(ctx, agentapi.DelRequest{Attachment: web.req.Attachment, NetNS: web.req.NetNS}); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(ctx, agentapi.CheckRequest{Attachment: web.req.Attachment, NetNS: web.req.NetNS}); agentapi.CodeOf(err) != agentapi.CodeUnknownContainer {
		t.Errorf("check after del: %v", err)
	}
	if _, ok := a.dp.Endpoint(datapath.EndpointID(web.resp.EndpointID)); ok {
		t.Error("web's endpoint is still in the datapath")
	}
	gc, err := c.GC(ctx, agentapi.GCRequest{Valid: []agentapi.Attachment{{ContainerID: "c-other", IfName: "eth0"}}})
	if err != nil || len(gc.Removed) != 1 || gc.Removed[0].ContainerID != "c-db" {
		t.Fatalf("gc = %+v, %v", gc, err)
	}
	st, err := c.Status(ctx)
	if err != nil || !st.Ready || st.Endpoints != 0 || len(a.dp.Endpoints()) != 0 || len(a.pool.Snapshot().Allocations) != 0 {
		t.Fatalf("after gc: status %+v, %v; datapath %d endpoints; pool %+v", st, err, len(a.dp.Endpoints()), a.pool.Snapshot())
	}
}

// TestPrivilegedAgentRestart stops the agent (SIGTERM, then SIGKILL) while
// a TCP stream runs between two endpoints and starts it again on the same
// state: the stream goes on, the denied port stays denied, and the
// endpoints, identities, addresses and policy maps are as before.
func TestPrivilegedAgentRestart(t *testing.T) {
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Kill} {
		t.Run(sig.String(), func(t *testing.T) {
			n := newTestNode(t)
			n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 5432))
			agent := n.startAgentProcess(t)
			c, ctx := agentapi.NewClient(n.socket), context.Background()
			web := addPod(t, c, "c-web", "web")
			db := addPod(t, c, "c-db", "db")
			testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":5432")
			testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":8080")

			stream, err := web.dial(netip.AddrPortFrom(db.addr, 5432), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			streamErr := make(chan error, 1)
			stop := make(chan struct{})
			var echoed int64
			go func() { streamErr <- pump(stream, stop, &echoed) }()

			before, err := c.List(ctx)
			if err != nil {
				t.Fatal(err)
			}

			agent.stop(t, sig)
			// With no agent at all, the endpoints keep their policy.
			if web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
				t.Error("web -> db:8080 connected while the agent was down")
			}
			mapsBefore := n.policyMaps(t)
			mid := echoedNow(&echoed)
			agent = n.startAgentProcess(t)
			after, err := c.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(before, after) {
				t.Errorf("endpoints after restart:\n%+v\nbefore:\n%+v", after, before)
			}
			if web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
				t.Error("web -> db:8080 connected after the restart")
			}
			if !web.connects(t, netip.AddrPortFrom(db.addr, 5432)) {
				t.Error("web -> db:5432 failed after the restart")
			}
			time.Sleep(300 * time.Millisecond)
			close(stop)
			if err := <-streamErr; err != nil {
				t.Fatalf("stream across the restart: %v", err)
			}
			if last := echoedNow(&echoed); last <= mid {
				t.Errorf("stream made no progress after the restart (%d bytes before, %d after)", mid, last)
			}
			agent.stop(t, syscall.SIGTERM)
			if mapsAfter := n.policyMaps(t); !reflect.DeepEqual(mapsBefore, mapsAfter) {
				t.Errorf("policy maps after restart:\n%v\nbefore:\n%v", mapsAfter, mapsBefore)
			}

			// The adopted endpoints are the next agent's to check and delete.
			agent = n.startAgentProcess(t)
			for _, p := range []*testPod{web, db} {
				if err := c.Check(ctx, agentapi.CheckRequest{Attachment: p.req.Attachment, NetNS: p.req.NetNS}); err != nil {
					t.Errorf("check %s after restart: %v", p.req.Pod, err)
				}
				if err := c.Del(ctx, agentapi.DelRequest{Attachment: p.req.Attachment}); err != nil {
					t.Errorf("del %s after restart: %v", p.req.Pod, err)
				}
			}
			agent.stop(t, syscall.SIGTERM)
		})
	}
}

// pump writes and reads back a message every 10ms until stop.
func pump(c io.ReadWriter, stop chan struct{}, echoed *int64) error {
	msg, buf := []byte("0123456789abcdef"), make([]byte, 16)
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(10 * time.Millisecond):
		}
		if cc, ok := c.(interface{ SetDeadline(time.Time) error }); ok {
			_ = cc.SetDeadline(time.Now().Add(5 * time.Second))
		}
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		addEchoed(echoed, int64(len(buf)))
	}
}

// policyMaps dumps every pinned endpoint's policy map while no agent
// runs, through a Datapath of its own on the pins (which adopts the
// endpoints and, closed, leaves them as they were).
func (n *testNode) policyMaps(t *testing.T) map[datapath.EndpointID]mapstate.State {
	t.Helper()
	dp, err := datapath.New(datapath.Config{BPFFSDir: filepath.Join(n.bpffs, "datapath"), NodeNetNS: nsPath(n.nodeNS)})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	out := make(map[datapath.EndpointID]mapstate.State)
	for _, ep := range dp.Endpoints() {
		if out[ep.ID()], err = ep.Policy().Dump(); err != nil {
			t.Fatal(err)
		}
	}
	if len(out) == 0 {
		t.Fatal("no pinned endpoints")
	}
	return out
}

var echoedMu sync.Mutex

func addEchoed(p *int64, n int64) { echoedMu.Lock(); *p += n; echoedMu.Unlock() }

func echoedNow(p *int64) int64 { echoedMu.Lock(); defer echoedMu.Unlock(); return *p }

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestPrivilegedAgentInvalidManifest writes invalid manifests into the
// watched directory: each is reported with its file and field, and the
// policy in force stays as it was until the directory is valid again.
func TestPrivilegedAgentInvalidManifest(t *testing.T) {
	n := newTestNode(t)
	n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 5432))
	a, _ := n.startAgent(t)
	c, ctx := agentapi.NewClient(n.socket), context.Background()
	web := addPod(t, c, "c-web", "web")
	db := addPod(t, c, "c-db", "db")
	testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":5432")
	testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":8080")
	enforced := func(when string) {
		t.Helper()
		if !web.connects(t, netip.AddrPortFrom(db.addr, 5432)) {
			t.Errorf("%s: web -> db:5432 failed", when)
		}
		if web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
			t.Errorf("%s: web -> db:8080 connected", when)
		}
	}
	enforced("before")

	for _, tc := range []struct {
		file, content string
		want          []string
	}{
		// The policy now allows 8080 too, but its second document is
		// invalid: nothing of the file may apply.
		{"db.yaml", fmt.Sprintf(dbPolicy, 8080) + "---\n" + strings.Replace(fmt.Sprintf(dbPolicy, 99999), "name: db", "name: db2", 1),
			[]string{"db.yaml", "document 2", "spec.ingress[0].toPorts[0].ports[0].port"}},
		{"svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: prod}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 0}]\n",
			[]string{"svc.yaml", "document 1", "Service prod/api", "spec.ports[0].port"}},
	} {
		n.writeManifest(t, tc.file, tc.content)
		err := a.Reload()
		if err == nil || !containsAll(err.Error(), tc.want...) {
			t.Errorf("%s: reload error %v, want one naming %q", tc.file, err, tc.want)
		}
		if st, err := c.Status(ctx); err != nil || !strings.Contains(st.Reason, "previous policy in force") {
			t.Errorf("status = %+v, %v", st, err)
		}
		enforced("after invalid " + tc.file)
		if tc.file == "svc.yaml" {
			if err := os.Remove(filepath.Join(n.manifests, tc.file)); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Valid again: the new policy (5432 and now 8080) applies.
	n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 5432)+"---\n"+strings.Replace(fmt.Sprintf(dbPolicy, 8080), "name: db", "name: db2", 1))
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Status(ctx); st.Reason != "" {
		t.Errorf("status after a valid reload: %+v", st)
	}
	if !web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
		t.Error("web -> db:8080 failed after the policy allowing it was applied")
	}
}

// TestPrivilegedAgentRestartNewPolicy changes the manifests while no
// agent runs: the next agent's policy maps are exactly the new compiled
// policy (nothing of the old one left in the adopted maps), and traffic
// follows it.
func TestPrivilegedAgentRestartNewPolicy(t *testing.T) {
	n := newTestNode(t)
	n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 5432))
	_, stop := n.startAgent(t)
	c := agentapi.NewClient(n.socket)
	web := addPod(t, c, "c-web", "web")
	db := addPod(t, c, "c-db", "db")
	testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":5432")
	testutils.ServeEcho(t, db.ns, "tcp4", db.addr.String()+":8080")
	stop(false)

	n.writeManifest(t, "db.yaml", fmt.Sprintf(dbPolicy, 8080))
	a, _ := n.startAgent(t)
	for _, e := range a.eps {
		compiled, ok := a.engine.EndpointPolicy(e.ep)
		if !ok {
			t.Fatalf("endpoint %d not in the engine", e.rec.EndpointID)
		}
		inMap, err := e.ep.Policy().Dump()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(inMap, compiled.State()) {
			t.Errorf("endpoint %d (%s): map\n%v\nwant the compiled policy\n%v", e.rec.EndpointID, e.rec.Pod, inMap, compiled.State())
		}
	}
	if web.connects(t, netip.AddrPortFrom(db.addr, 5432)) {
		t.Error("web -> db:5432 connected; the new policy denies it")
	}
	if !web.connects(t, netip.AddrPortFrom(db.addr, 8080)) {
		t.Error("web -> db:8080 failed; the new policy allows it")
	}
}
