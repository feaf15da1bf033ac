package main

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/bandwidth"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
)

// limits returns the bandwidth limits the record holds.
func (r record) limits() bandwidth.Limits {
	return bandwidth.Limits{Egress: bandwidth.Rate(r.EgressRate), Ingress: bandwidth.Rate(r.IngressRate)}
}

// requestLimits checks an Add's bandwidth limits before anything is
// allocated: a rate out of range is an invalid configuration, and a node
// whose bandwidth manager could not start refuses any limit rather than
// accept one it cannot enforce.
func (a *Agent) requestLimits(req agentapi.AddRequest) (bandwidth.Limits, error) {
	l := bandwidth.Limits{Egress: bandwidth.Rate(req.EgressRate), Ingress: bandwidth.Rate(req.IngressRate)}
	if l.Unlimited() {
		return l, nil
	}
	if err := l.Validate(); err != nil {
		return l, &agentapi.Error{Code: agentapi.CodeInvalidConfig, Msg: "invalid bandwidth limit",
			Details: fmt.Sprintf("runtimeConfig.bandwidth egressRate %d, ingressRate %d: %v (rates are in bits per second)",
				req.EgressRate, req.IngressRate, err)}
	}
	if a.bw == nil {
		return l, &agentapi.Error{Code: agentapi.CodeUnsupportedField, Msg: "bandwidth limits cannot be enforced on this node",
			Details: fmt.Sprintf("runtimeConfig.bandwidth egressRate %d, ingressRate %d bit/s refused: the agent's bandwidth manager did not start: %v",
				req.EgressRate, req.IngressRate, a.bwErr)}
	}
	return l, nil
}

// verifyLimits checks that the kernel enforces an endpoint's recorded
// limits: the EDT state in the datapath, or the token buckets on its
// interfaces.
func (a *Agent) verifyLimits(e *endpoint, dpEP *datapath.Endpoint) error {
	l := e.rec.limits()
	if l.Unlimited() {
		return nil
	}
	if a.bw == nil {
		return fmt.Errorf("the endpoint has bandwidth limits but the agent's bandwidth manager did not start: %w", a.bwErr)
	}
	var errs []error
	if l.Egress != 0 {
		if a.bw.Mechanism() == bandwidth.MechanismEDT {
			st, ok, err := dpEP.EgressState()
			switch {
			case err != nil:
				errs = append(errs, err)
			case !ok || st.BitsPerSecond != uint64(l.Egress):
				errs = append(errs, fmt.Errorf("egress limit %v: EDT state %+v, present %v", l.Egress, st.EgressLimit, ok))
			}
		} else {
			errs = append(errs, inNetNS(e.rec.NetNS, func() error { return hasTBF(e.rec.IfName, l.Egress) }))
		}
	}
	if l.Ingress != 0 {
		errs = append(errs, inNetNS(a.cfg.NodeNetNS, func() error { return hasTBF(e.rec.HostIfName, l.Ingress) }))
	}
	return errors.Join(errs...)
}

// hasTBF checks that interface name's root qdisc is a token bucket of rate.
func hasTBF(name string, rate bandwidth.Rate) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return fmt.Errorf("interface %s: qdiscs: %w", name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent != netlink.HANDLE_ROOT {
			continue
		}
		if tbf, ok := q.(*netlink.Tbf); ok && tbf.Rate == rate.BytesPerSecond() {
			return nil
		}
		return fmt.Errorf("interface %s: root qdisc %s, want tbf of %v", name, q.Type(), rate)
	}
	return fmt.Errorf("interface %s: no root qdisc, want tbf of %v", name, rate)
}

// restoreLimits checks that a restored endpoint's limits are still in
// force and puts back what the kernel lost. They normally outlive the
// agent (the EDT state is in a pinned map, the token buckets in the pods'
// namespaces and on the host-side interfaces), so this is usually a check.
// A limit the agent cannot put back is logged and reported by Check, and
// does not keep the node's other endpoints from being restored.
func (a *Agent) restoreLimits(e *endpoint) {
	l := e.rec.limits()
	if a.bw == nil {
		if !l.Unlimited() {
			a.log.Error("endpoint has bandwidth limits the agent cannot enforce: its bandwidth manager did not start",
				"endpoint", e.rec.EndpointID, "egressRate", l.Egress, "ingressRate", l.Ingress, "err", a.bwErr)
		}
		return
	}
	if a.bw.Mechanism() != bandwidth.MechanismEDT {
		// An earlier agent's EDT state would still drop beyond its
		// horizon: this agent limits by token buckets.
		if _, ok, err := e.ep.EgressState(); err == nil && ok {
			if err := e.ep.ClearEgressRate(); err != nil {
				a.log.Error("clear an earlier agent's EDT state", "endpoint", e.rec.EndpointID, "err", err)
			}
		}
	}
	if l.Unlimited() {
		return
	}
	lost := a.verifyLimits(e, e.ep.Endpoint)
	if lost == nil {
		a.log.Debug("bandwidth limits kept", "endpoint", e.rec.EndpointID, "egressRate", l.Egress, "ingressRate", l.Ingress)
		return
	}
	a.log.Warn("bandwidth limits lost while no agent ran; putting them back", "endpoint", e.rec.EndpointID, "lost", lost)
	if err := a.reapplyLimits(e); err != nil {
		a.log.Error("restore bandwidth limits", "endpoint", e.rec.EndpointID, "egressRate", l.Egress, "ingressRate", l.Ingress, "err", err)
		return
	}
	a.log.Info("bandwidth limits restored", "endpoint", e.rec.EndpointID, "egressRate", l.Egress, "ingressRate", l.Ingress, "mechanism", a.bw.Mechanism())
}

// reapplyLimits sets an adopted endpoint's limits again, idempotently.
// The datapath's record of an adopted endpoint lacks the pod's side (its
// namespace path and interface name, empty in the adopted handle), which
// the fallback's egress token bucket lives on, so the agent names it from
// its own record.
func (a *Agent) reapplyLimits(e *endpoint) error {
	l := e.rec.limits()
	if a.bw.Mechanism() == bandwidth.MechanismEDT || l.Egress == 0 {
		return a.bw.Set(e.ep.Endpoint, l)
	}
	return errors.Join(
		a.bw.Set(e.ep.Endpoint, bandwidth.Limits{Ingress: l.Ingress}),
		a.bw.SetPodEgress(e.rec.NetNS, e.rec.IfName, l.Egress))
}
