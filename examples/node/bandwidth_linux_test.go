package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/bandwidth"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

const testLimit = 50 * bandwidth.Mbit

// addPodLimited is addPod with bandwidth limits in the request.
func addPodLimited(t *testing.T, c *agentapi.Client, container, app string, egress, ingress bandwidth.Rate) *testPod {
	t.Helper()
	p := &testPod{ns: testutils.NewNetNS(t)}
	p.req = agentapi.AddRequest{Attachment: agentapi.Attachment{ContainerID: container, IfName: "eth0"},
		NetNS: nsPath(p.ns), Namespace: "prod", Pod: app, Labels: map[string]string{"app": app},
		EgressRate: uint64(egress), IngressRate: uint64(ingress)}
	resp, err := c.Add(context.Background(), p.req)
	if err != nil {
		t.Fatalf("add %s: %v", app, err)
	}
	p.resp, p.addr = resp, resp.IPs[0].Address.Addr()
	return p
}

// payloadWithin is the bandwidth package's tolerance for an iperf3 rate
// (TCP payload) under a limit: within 5% of what the limit allows. The
// token-bucket fallback counts frames on the wire, 1514 bytes for 1448 of
// payload at MTU 1500, so payload is 4.4% below the limit; EDT counts
// skb->len, one set of headers per GSO packet, so payload is about the
// limit. The band runs from 5% below the first to 5% above the second.
func payloadWithin(got float64, limit bandwidth.Rate) bool {
	return got >= 0.95*float64(limit)*1448/1514 && got <= 1.05*float64(limit)
}

func iperfRate(t *testing.T, from, to *testPod) float64 {
	t.Helper()
	return testutils.Iperf3Rate(t, from.ns, to.ns, to.addr, "3")
}

// TestPrivilegedAgentBandwidth drives the agent binary over its socket: a
// pod added with a 50 Mbit/s egress rate sends at that rate (iperf3,
// within the bandwidth package's tolerance) while an unlimited pod keeps
// its full rate; Check verifies the limit and notices it missing; a bad
// rate is refused without leaking; the limit survives SIGTERM and SIGKILL
// of the agent and is put back by the next agent when the kernel lost it;
// DEL removes it.
func TestPrivilegedAgentBandwidth(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 is needed (apt-get install iperf3)")
	}
	n := newTestNode(t)
	agent := n.startAgentProcess(t)
	c, ctx := agentapi.NewClient(n.socket), context.Background()

	srv := addPod(t, c, "c-srv", "srv")
	free := addPod(t, c, "c-free", "free")
	lim := addPodLimited(t, c, "c-lim", "lim", testLimit, 0)

	measure := func(when string) {
		t.Helper()
		got := iperfRate(t, lim, srv)
		t.Logf("%s: limited pod sends %.2f Mbit/s of payload (limit %v; %.2f expected for the frame overhead)",
			when, got/1e6, testLimit, float64(testLimit)*1448/1514/1e6)
		if !payloadWithin(got, testLimit) {
			t.Errorf("%s: a pod limited to 50 Mbit/s sent %.2f Mbit/s of payload, want 45.43-52.5", when, got/1e6)
		}
	}
	baseline := iperfRate(t, free, srv)
	t.Logf("unlimited pod: %.1f Mbit/s", baseline/1e6)
	if baseline < 4*float64(testLimit) {
		t.Fatalf("baseline %.1f Mbit/s is too slow to tell a 50 Mbit/s limit apart", baseline/1e6)
	}
	measure("after add")
	if other := iperfRate(t, free, srv); other < baseline/3 {
		t.Errorf("the unlimited pod fell from %.1f to %.1f Mbit/s", baseline/1e6, other/1e6)
	}
	for _, p := range []*testPod{srv, free, lim} {
		if err := c.Check(ctx, agentapi.CheckRequest{Attachment: p.req.Attachment, NetNS: p.req.NetNS}); err != nil {
			t.Errorf("check %s: %v", p.req.Pod, err)
		}
	}
	eps, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(eps, func(e agentapi.Endpoint) bool { return e.ContainerID == "c-lim" }); i < 0 || eps[i].EgressRate != uint64(testLimit) {
		t.Errorf("list does not show the limit: %+v", eps)
	}

	// A repeated ADD must ask for the same limits.
	again := lim.req
	again.EgressRate = uint64(2 * testLimit)
	if _, err := c.Add(ctx, again); agentapi.CodeOf(err) != agentapi.CodeInvalidConfig {
		t.Errorf("repeated add with another rate: %v, want an invalid-config error", err)
	}
	if _, err := c.Add(ctx, lim.req); err != nil {
		t.Errorf("repeated add: %v", err)
	}

	// An ingress limit is a token bucket on the host-side interface (the
	// CNI bandwidth plugin's; traffic from local pods is redirected past
	// it, so it is not measured here): Check verifies it.
	in := addPodLimited(t, c, "c-in", "in", 0, 20*bandwidth.Mbit)
	if err := n.nodeNS.Do(func() error { return hasTBF(in.resp.Interfaces[0].Name, 20*bandwidth.Mbit) }); err != nil {
		t.Errorf("ingress limit: %v", err)
	}
	if err := c.Check(ctx, agentapi.CheckRequest{Attachment: in.req.Attachment, NetNS: in.req.NetNS}); err != nil {
		t.Errorf("check the ingress-limited pod: %v", err)
	}
	if err := c.Del(ctx, agentapi.DelRequest{Attachment: in.req.Attachment}); err != nil {
		t.Fatal(err)
	}

	// Bad rates: refused with CodeInvalidConfig, nothing allocated.
	for _, r := range []struct{ egress, ingress uint64 }{{10, 0}, {0, 999}, {uint64(bandwidth.MaxRate) + 1, 0}} {
		p := testutils.NewNetNS(t)
		_, err := c.Add(ctx, agentapi.AddRequest{Attachment: agentapi.Attachment{ContainerID: "c-bad", IfName: "eth0"},
			NetNS: nsPath(p), Namespace: "prod", Pod: "bad", Labels: map[string]string{"app": "bad"},
			EgressRate: r.egress, IngressRate: r.ingress})
		t.Logf("egress %d, ingress %d: %v", r.egress, r.ingress, err)
		if agentapi.CodeOf(err) != agentapi.CodeInvalidConfig || !strings.Contains(err.Error(), "invalid bandwidth") {
			t.Errorf("egress %d, ingress %d bit/s: %v, want an invalid-config error", r.egress, r.ingress, err)
		}
	}
	if after, err := c.List(ctx); err != nil || !reflect.DeepEqual(after, eps) {
		t.Errorf("endpoints after refused adds: %+v, %v", after, err)
	}

	// The limit outlives the agent: after SIGTERM and SIGKILL the token
	// bucket is still in the pod's namespace, and the next agent keeps it.
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Kill} {
		agent.stop(t, sig)
		if err := lim.ns.Do(func() error { return hasTBF("eth0", testLimit) }); err != nil {
			t.Errorf("after %v, with no agent: %v", sig, err)
		}
		agent = n.startAgentProcess(t)
		if after, err := c.List(ctx); err != nil || !reflect.DeepEqual(after, eps) {
			t.Errorf("endpoints after %v and restart: %+v, %v; before %+v", sig, after, err, eps)
		}
		if err := c.Check(ctx, agentapi.CheckRequest{Attachment: lim.req.Attachment, NetNS: lim.req.NetNS}); err != nil {
			t.Errorf("check after %v and restart: %v", sig, err)
		}
	}
	measure("after restarts")

	// A limit the kernel lost: Check says so, and a restart puts back the
	// same token bucket the bandwidth package made.
	made := podTBF(t, lim)
	if err := lim.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT}, QdiscType: "tbf"})
	}); err != nil {
		t.Fatal(err)
	}
	err = c.Check(ctx, agentapi.CheckRequest{Attachment: lim.req.Attachment, NetNS: lim.req.NetNS})
	t.Logf("check with the token bucket removed: %v", err)
	if agentapi.CodeOf(err) != agentapi.CodeDataplane || !strings.Contains(err.Error(), "bandwidth") {
		t.Errorf("check with the token bucket removed: %v, want a dataplane error about bandwidth", err)
	}
	agent.stop(t, syscall.SIGTERM)
	agent = n.startAgentProcess(t)
	if err := c.Check(ctx, agentapi.CheckRequest{Attachment: lim.req.Attachment, NetNS: lim.req.NetNS}); err != nil {
		t.Errorf("check after the restart re-applied the limit: %v", err)
	}
	if again := podTBF(t, lim); again != made {
		t.Errorf("the restart put back %+v; the bandwidth package made %+v", again, made)
	}
	measure("after the restart re-applied the limit")

	// DEL removes the limit with the endpoint; the same pod added again
	// without a rate sends at full speed.
	if err := c.Del(ctx, agentapi.DelRequest{Attachment: lim.req.Attachment, NetNS: lim.req.NetNS}); err != nil {
		t.Fatal(err)
	}
	req := lim.req
	req.EgressRate = 0
	if _, err := c.Add(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got := iperfRate(t, lim, srv); got < 4*float64(testLimit) || got < baseline/3 {
		t.Errorf("after DEL and an add without a rate the pod sends %.1f Mbit/s, not its full rate (%.1f)", got/1e6, baseline/1e6)
	} else {
		t.Logf("after DEL and an add without a rate: %.1f Mbit/s", got/1e6)
	}
	for _, p := range []*testPod{srv, free, lim} {
		if err := c.Del(ctx, agentapi.DelRequest{Attachment: p.req.Attachment}); err != nil {
			t.Error(err)
		}
	}
	agent.stop(t, syscall.SIGTERM)
}

// TestPrivilegedAgentBandwidthUnavailable: an agent whose bandwidth
// manager cannot start (EDT required with an egress device that does not
// exist) refuses a pod asking for a limit, with a clear error, and still
// adds pods that ask for none.
func TestPrivilegedAgentBandwidthUnavailable(t *testing.T) {
	n := newTestNode(t)
	cfg := n.config(t)
	cfg.BandwidthMechanism = bandwidth.MechanismEDT
	cfg.BandwidthDevices = []string{"np-missing0"}
	a, _ := n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
	if a.bw != nil || a.bwErr == nil {
		t.Fatalf("bandwidth manager %v, %v; want none", a.bw, a.bwErr)
	}
	c, ctx := agentapi.NewClient(n.socket), context.Background()
	p := testutils.NewNetNS(t)
	_, err := c.Add(ctx, agentapi.AddRequest{Attachment: agentapi.Attachment{ContainerID: "c-lim", IfName: "eth0"},
		NetNS: nsPath(p), Namespace: "prod", Pod: "lim", Labels: map[string]string{"app": "lim"}, EgressRate: uint64(testLimit)})
	t.Logf("add with a limit: %v", err)
	if agentapi.CodeOf(err) != agentapi.CodeUnsupportedField || !strings.Contains(err.Error(), "cannot be enforced") {
		t.Errorf("add with a limit the agent cannot enforce: %v, want an unsupported-field error", err)
	}
	if len(a.pool.Snapshot().Allocations) != 0 || len(a.dp.Endpoints()) != 0 {
		t.Errorf("the refused add left %d addresses, %d endpoints", len(a.pool.Snapshot().Allocations), len(a.dp.Endpoints()))
	}
	free := addPod(t, c, "c-free", "free")
	if err := c.Check(ctx, agentapi.CheckRequest{Attachment: free.req.Attachment, NetNS: free.req.NetNS}); err != nil {
		t.Errorf("check a pod without limits: %v", err)
	}
}

// tbfParams are what a token bucket enforces.
type tbfParams struct {
	Rate, Peakrate       uint64
	Limit, Buffer, Minbu uint32
}

// podTBF returns the parameters of the root token bucket on the pod's eth0.
func podTBF(t *testing.T, p *testPod) (got tbfParams) {
	t.Helper()
	if err := p.ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if tbf, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
				got = tbfParams{tbf.Rate, tbf.Peakrate, tbf.Limit, tbf.Buffer, tbf.Minburst}
				return nil
			}
		}
		return errors.New("no root tbf on eth0")
	}); err != nil {
		t.Fatal(err)
	}
	return got
}
