package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/netnsutil"
	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/policy"
)

var _ agentapi.Backend = (*Agent)(nil)

// maxEndpointID is the highest endpoint ID the agent hands out (the
// datapath's default capacity).
const maxEndpointID = 4095

// Add creates an endpoint: an address from the pool, an identity from the
// pod's labels, the veth and programs in the pod's namespace, the ipcache
// entry and the policy. Whatever it took is given back when a step fails.
// Adding an attachment that exists with the same namespace returns it
// again, so a runtime's retried ADD is harmless.
func (a *Agent) Add(ctx context.Context, req agentapi.AddRequest) (_ agentapi.AddResponse, err error) {
	switch {
	case req.ContainerID == "" || req.IfName == "":
		return agentapi.AddResponse{}, agentapi.Errorf(agentapi.CodeInvalidEnv, "container ID and interface name are required")
	case req.NetNS == "":
		return agentapi.AddResponse{}, agentapi.Errorf(agentapi.CodeInvalidEnv, "network namespace path is required")
	}
	// With a Kubernetes API server, the pod's labels are the API server's
	// (as kubelet names the pod in CNI_ARGS), so its identity is right
	// from the first packet.
	pod := record{Endpoint: agentapi.Endpoint{Namespace: req.Namespace, Pod: req.Pod}, Labels: req.Labels, PodUID: req.PodUID}
	if a.kube != nil && req.Pod != "" {
		if err := a.kube.fillPod(ctx, &pod); err != nil {
			return agentapi.AddResponse{}, err
		}
	}
	labels, err := pod.labels()
	if err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeInvalidLabels, Msg: "invalid pod labels", Details: err.Error()}
	}
	limits, err := a.requestLimits(req)
	if err != nil {
		return agentapi.AddResponse{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.eps[attachmentKey{req.ContainerID, req.IfName}]; ok {
		if e.rec.NetNS != req.NetNS {
			return agentapi.AddResponse{}, agentapi.Errorf(agentapi.CodeInvalidConfig,
				"container %s interface %s already has an endpoint in %s", req.ContainerID, req.IfName, e.rec.NetNS)
		}
		if e.rec.limits() != limits {
			return agentapi.AddResponse{}, agentapi.Errorf(agentapi.CodeInvalidConfig,
				"container %s interface %s already has an endpoint with bandwidth limits egress %d, ingress %d bit/s",
				req.ContainerID, req.IfName, e.rec.EgressRate, e.rec.IngressRate)
		}
		return a.response(e), nil
	}
	var undo []func() error
	defer func() {
		if err != nil {
			for _, u := range slices.Backward(undo) {
				if uerr := u(); uerr != nil {
					a.log.Error("undo after failed add", "container", req.ContainerID, "err", uerr)
				}
			}
		}
	}()

	owner := ownerOf(req.Attachment)
	v4, v6, err := a.allocateAddrs(owner)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeExhausted, Msg: "address pool exhausted", Details: err.Error()}
		}
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeIOFailure, Msg: "allocate address", Details: err.Error()}
	}
	undo = append(undo, func() error { _, err := a.pool.ReleaseOwner(owner); return err })

	id, _, err := a.alloc.Allocate(ctx, labels)
	if err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeTryAgainLater, Msg: "allocate identity", Details: err.Error()}
	}
	undo = append(undo, func() error { _, err := a.alloc.Release(context.WithoutCancel(ctx), id); return err })

	epID, err := a.freeEndpointID()
	if err != nil {
		return agentapi.AddResponse{}, err
	}
	dpEP, err := a.dp.AddEndpoint(datapath.EndpointConfig{ID: epID, Identity: id, IPv4: v4, IPv6: v6, NetNS: req.NetNS, IfName: req.IfName})
	if err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "create endpoint", Details: err.Error()}
	}
	undo = append(undo, dpEP.Delete)
	if !limits.Unlimited() {
		if err := a.bw.Set(dpEP, limits); err != nil {
			return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "set bandwidth limits", Details: err.Error()}
		}
		undo = append(undo, func() error { return a.bw.Clear(dpEP) })
	}

	rec := record{Endpoint: agentapi.Endpoint{
		Attachment: req.Attachment, NetNS: req.NetNS, Namespace: req.Namespace, Pod: req.Pod,
		EndpointID: uint16(epID), Identity: uint32(id), HostIfName: dpEP.HostIfName(),
		EgressRate: uint64(limits.Egress), IngressRate: uint64(limits.Ingress),
	}, Labels: pod.Labels, NamespaceLabels: pod.NamespaceLabels, ServiceAccount: pod.ServiceAccount, PodUID: pod.PodUID}
	for _, addr := range []netip.Addr{v4, v6} {
		if addr.IsValid() {
			rec.Addrs = append(rec.Addrs, netip.PrefixFrom(addr, addr.BitLen()))
		}
	}
	e := &endpoint{rec: rec, ep: &managedEndpoint{Endpoint: dpEP}}
	undo = append(undo, func() error { return a.unpublish(e) })
	if err := a.publish(ctx, e); err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "publish endpoint", Details: err.Error()}
	}
	a.eps[rec.key()] = e
	undo = append(undo, func() error { delete(a.eps, rec.key()); return nil })
	if err := a.saveLocked(); err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeIOFailure, Msg: "save agent state", Details: err.Error()}
	}
	attrs := []any{"container", req.ContainerID, "pod", req.Namespace + "/" + req.Pod,
		"endpoint", epID, "identity", uint32(id), "addrs", rec.Addrs}
	if !limits.Unlimited() {
		attrs = append(attrs, "egressRate", limits.Egress, "ingressRate", limits.Ingress, "bandwidth", a.bw.Mechanism())
	}
	a.log.Info("endpoint added", attrs...)
	if a.kube != nil && rec.PodUID != "" {
		// A label change between the lookup above and now found no
		// endpoint to relabel: look again.
		a.kube.syncLocalLocked(ctx, e)
	}
	return a.response(e), nil
}

// allocateAddrs gives owner one address of each family the pool has.
func (a *Agent) allocateAddrs(owner string) (v4, v6 netip.Addr, err error) {
	switch {
	case a.cfg.PoolV4.IsValid() && a.cfg.PoolV6.IsValid():
		return a.pool.AllocateNextDual(owner)
	case a.cfg.PoolV4.IsValid():
		v4, err = a.pool.AllocateNext(ipam.IPv4, owner)
	default:
		v6, err = a.pool.AllocateNext(ipam.IPv6, owner)
	}
	return v4, v6, err
}

// freeEndpointID returns the lowest endpoint ID no endpoint uses.
func (a *Agent) freeEndpointID() (datapath.EndpointID, error) {
	for id := datapath.EndpointID(1); id <= maxEndpointID; id++ {
		if _, used := a.dp.Endpoint(id); !used {
			return id, nil
		}
	}
	return 0, agentapi.Errorf(agentapi.CodeTryAgainLater, "all %d endpoint IDs are in use", maxEndpointID)
}

func (a *Agent) response(e *endpoint) agentapi.AddResponse {
	resp := agentapi.AddResponse{
		EndpointID: e.rec.EndpointID, Identity: e.rec.Identity,
		Interfaces: []agentapi.Interface{
			{Name: e.ep.HostIfName(), MAC: e.ep.HostMAC().String()},
			{Name: e.rec.IfName, MAC: e.ep.MAC().String(), Sandbox: e.rec.NetNS},
		},
	}
	for _, p := range e.rec.Addrs {
		gw, dflt := netip.MustParseAddr("169.254.1.1"), netip.MustParsePrefix("0.0.0.0/0")
		if p.Addr().Is6() {
			gw, dflt = netip.MustParseAddr("fe80::1"), netip.MustParsePrefix("::/0")
		}
		resp.IPs = append(resp.IPs, agentapi.IPConfig{Address: p, Gateway: gw, Interface: 1})
		resp.Routes = append(resp.Routes, agentapi.Route{Dst: dflt, GW: gw})
	}
	return resp
}

// unpublish undoes publish: the endpoint leaves the engine, the ipcache
// and the catalog.
func (a *Agent) unpublish(e *endpoint) error {
	var errs []error
	if err := a.engine.RemoveEndpoint(e.ep); err != nil && !errors.Is(err, policy.ErrUnknownEndpoint) {
		errs = append(errs, err)
	}
	for _, p := range e.rec.Addrs {
		if _, ok := a.ipc.Get(p); ok {
			errs = append(errs, a.ipc.Delete(p))
		}
		a.catalog.DeleteEndpoint(p.Addr())
	}
	return errors.Join(errs...)
}

// releaseLocked deletes an endpoint and gives back what it held. Its
// bandwidth limits go with it: deleting the endpoint removes its EDT
// state and its veth pair, and with the pair the token buckets on both
// ends, so nothing is needed from the pod's namespace, which may be gone.
func (a *Agent) releaseLocked(ctx context.Context, e *endpoint) error {
	errs := []error{a.unpublish(e)}
	if err := e.ep.Delete(); err != nil {
		errs = append(errs, fmt.Errorf("delete endpoint %d: %w", e.rec.EndpointID, err))
	}
	if _, err := a.alloc.Release(ctx, identity.ID(e.rec.Identity)); err != nil && !errors.Is(err, identity.ErrNotAllocated) {
		errs = append(errs, err)
	}
	_, err := a.pool.ReleaseOwner(e.rec.owner())
	return errors.Join(append(errs, err)...)
}

// Del removes an endpoint. It needs nothing from the pod's namespace,
// which may be gone, and succeeds for an attachment it does not know.
func (a *Agent) Del(ctx context.Context, req agentapi.DelRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.eps[attachmentKey{req.ContainerID, req.IfName}]
	if !ok {
		// An ADD that failed half way, or a DEL twice: nothing but
		// perhaps an address to give back.
		if _, err := a.pool.ReleaseOwner(ownerOf(req.Attachment)); err != nil {
			return &agentapi.Error{Code: agentapi.CodeIOFailure, Msg: "release address", Details: err.Error()}
		}
		return nil
	}
	err := a.releaseLocked(context.WithoutCancel(ctx), e)
	delete(a.eps, e.rec.key())
	if serr := a.saveLocked(); serr != nil {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return &agentapi.Error{Code: agentapi.CodeIOFailure, Msg: "delete endpoint", Details: err.Error()}
	}
	a.log.Info("endpoint deleted", "container", req.ContainerID, "endpoint", e.rec.EndpointID)
	return nil
}

// Check verifies that an endpoint is as Add made it: the agent knows it,
// with the addresses the request names (if any), the datapath has it, its host interface exists in the node namespace,
// inside the pod's namespace its interface holds its addresses, and its
// bandwidth limits are in force.
func (a *Agent) Check(ctx context.Context, req agentapi.CheckRequest) error {
	a.mu.Lock()
	e, ok := a.eps[attachmentKey{req.ContainerID, req.IfName}]
	a.mu.Unlock()
	if !ok {
		return agentapi.Errorf(agentapi.CodeUnknownContainer, "no endpoint for container %s interface %s", req.ContainerID, req.IfName)
	}
	if req.NetNS != "" && req.NetNS != e.rec.NetNS {
		return agentapi.Errorf(agentapi.CodeInvalidConfig, "endpoint is in %s, not %s", e.rec.NetNS, req.NetNS)
	}
	if req.Addrs != nil {
		want := slices.SortedFunc(slices.Values(req.Addrs), netip.Prefix.Compare)
		have := slices.SortedFunc(slices.Values(e.rec.Addrs), netip.Prefix.Compare)
		if !slices.Equal(want, have) {
			return &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "endpoint addresses differ from the ADD result",
				Details: fmt.Sprintf("the runtime has %v, the agent's endpoint has %v", want, have)}
		}
	}
	dpEP, ok := a.dp.Endpoint(datapath.EndpointID(e.rec.EndpointID))
	if !ok {
		return agentapi.Errorf(agentapi.CodeDataplane, "endpoint %d is not in the datapath", e.rec.EndpointID)
	}
	if err := inNetNS(a.cfg.NodeNetNS, func() error { return hasAddrs(e.rec.HostIfName, nil) }); err != nil {
		return &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "host interface", Details: err.Error()}
	}
	if err := inNetNS(e.rec.NetNS, func() error { return hasAddrs(e.rec.IfName, e.rec.Addrs) }); err != nil {
		return &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "pod interface", Details: err.Error()}
	}
	if err := a.verifyLimits(e, dpEP); err != nil {
		return &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "bandwidth limits", Details: err.Error()}
	}
	return nil
}

// inNetNS runs fn in the namespace at path ("" for this process's).
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer ns.Close()
	return netnsutil.Do(ns, fn)
}

// hasAddrs checks that interface name exists and holds addrs.
func hasAddrs(name string, addrs []netip.Prefix) error {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	have, err := ifc.Addrs()
	if err != nil {
		return err
	}
	for _, want := range addrs {
		found := false
		for _, h := range have {
			if n, ok := h.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == want.Addr() {
					found = true
				}
			}
		}
		if !found {
			return fmt.Errorf("interface %s lacks %v", name, want)
		}
	}
	return nil
}

// List returns every endpoint, in endpoint ID order.
func (a *Agent) List(context.Context) ([]agentapi.Endpoint, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	eps := make([]agentapi.Endpoint, 0, len(a.eps))
	for _, e := range a.eps {
		eps = append(eps, e.rec.Endpoint)
	}
	slices.SortFunc(eps, func(x, y agentapi.Endpoint) int { return int(x.EndpointID) - int(y.EndpointID) })
	return eps, nil
}

// GC deletes the endpoints of attachments the runtime no longer lists.
func (a *Agent) GC(ctx context.Context, req agentapi.GCRequest) (agentapi.GCResponse, error) {
	valid := make(map[attachmentKey]bool)
	for _, v := range req.Valid {
		valid[attachmentKey{v.ContainerID, v.IfName}] = true
	}
	a.mu.Lock()
	var stale []agentapi.Attachment
	for _, k := range slices.SortedFunc(maps.Keys(a.eps), func(x, y attachmentKey) int {
		return int(a.eps[x].rec.EndpointID) - int(a.eps[y].rec.EndpointID)
	}) {
		if !valid[k] {
			stale = append(stale, a.eps[k].rec.Attachment)
		}
	}
	a.mu.Unlock()
	resp := agentapi.GCResponse{Removed: []agentapi.Attachment{}}
	for _, att := range stale {
		if err := a.Del(ctx, agentapi.DelRequest{Attachment: att}); err != nil {
			return resp, err
		}
		resp.Removed = append(resp.Removed, att)
	}
	return resp, nil
}

// Status reports readiness: ready unless the manifests last read were
// invalid (the previous policy is then still in force, and ADD works).
func (a *Agent) Status(context.Context) (agentapi.Status, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := agentapi.Status{Ready: true, Node: a.cfg.Node, Endpoints: len(a.eps)}
	if a.manErr != nil {
		st.Reason = "manifests not applied, previous policy in force: " + a.manErr.Error()
	}
	return st, nil
}
