package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
)

// timeout bounds one call to the agent. Runtimes give a plugin about a
// minute; an agent that takes longer is as good as absent.
const timeout = 30 * time.Second

// plugin runs the CNI commands against the agent. stdout is where ADD's
// result goes (os.Stdout in the binary).
type plugin struct {
	stdout io.Writer
}

func (p *plugin) funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.add, Del: p.del, Check: p.check, GC: p.gc, Status: p.status}
}

// add asks the agent for an endpoint and prints the CNI result.
func (p *plugin) add(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	req, err := addRequest(conf, args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := agentapi.NewClient(conf.AgentSocket).Add(ctx, req)
	if err != nil {
		return cniError(err)
	}
	res, err := toResult(resp)
	if err != nil {
		return err
	}
	return printResult(p.stdout, res, conf.CNIVersion)
}

// addRequest builds the agent's request from the configuration and the
// runtime's arguments.
func addRequest(conf *NetConf, args *skel.CmdArgs) (agentapi.AddRequest, error) {
	k8s, err := parseArgs(args.Args)
	if err != nil {
		return agentapi.AddRequest{}, err
	}
	labels, err := conf.labels()
	if err != nil {
		return agentapi.AddRequest{}, err
	}
	req := agentapi.AddRequest{
		Attachment: agentapi.Attachment{ContainerID: args.ContainerID, IfName: args.IfName},
		NetNS:      args.Netns,
		Namespace:  string(k8s.K8S_POD_NAMESPACE),
		Pod:        string(k8s.K8S_POD_NAME),
		PodUID:     string(k8s.K8S_POD_UID),
		Labels:     labels,
	}
	if bw := conf.RuntimeConfig.Bandwidth; bw != nil {
		req.EgressRate, req.IngressRate = bw.EgressRate, bw.IngressRate
	}
	return req, nil
}

// del removes the attachment's endpoint. The agent succeeds for an
// attachment it does not know and for a namespace that is gone, so DEL is
// idempotent; only an agent that cannot be asked makes it fail (and the
// runtime retries).
func (p *plugin) del(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err = agentapi.NewClient(conf.AgentSocket).Del(ctx, agentapi.DelRequest{
		Attachment: agentapi.Attachment{ContainerID: args.ContainerID, IfName: args.IfName},
		NetNS:      args.Netns,
	})
	return cniError(err)
}

// check asks the agent whether the endpoint is as it was made, and
// compares the agent's addresses with the result the runtime kept.
func (p *plugin) check(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "the runtime passed no result of the ADD it checks")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot convert prevResult", err.Error())
	}
	// The agent compares the result's addresses with its endpoint's.
	var addrs []netip.Prefix
	for _, ip := range prev.IPs {
		p, ok := prefixOf(ip.Address)
		if !ok {
			return types.NewError(types.ErrDecodingFailure, "invalid address in prevResult", ip.Address.String())
		}
		addrs = append(addrs, p)
	}
	if len(addrs) == 0 {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult has no addresses", "the ADD this plugin answers always gives at least one")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	att := agentapi.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	return cniError(agentapi.NewClient(conf.AgentSocket).Check(ctx, agentapi.CheckRequest{Attachment: att, NetNS: args.Netns, Addrs: addrs}))
}

// gc removes the endpoints of every attachment the runtime did not list.
func (p *plugin) gc(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	req := agentapi.GCRequest{Valid: []agentapi.Attachment{}}
	for _, a := range conf.ValidAttachments {
		req.Valid = append(req.Valid, agentapi.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err = agentapi.NewClient(conf.AgentSocket).GC(ctx, req)
	return cniError(err)
}

// status reports whether ADD can succeed: the agent answers and is ready.
// Anything else is code 50, "the plugin is not available" (spec 1.1), so
// that the runtime does not send ADDs that must fail.
func (p *plugin) status(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := agentapi.NewClient(conf.AgentSocket).Status(ctx)
	if err != nil {
		e := toCNIError(err)
		return types.NewError(types.ErrPluginNotAvailable, "nodeplane agent not available: "+e.Msg, e.Details)
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "nodeplane agent not ready", st.Reason)
	}
	return nil
}

// cniError turns an agent error into a CNI error object. The agent's code
// passes through (CodeExhausted stays 100), except an agent that does not
// answer: that is the spec's code 11, "try again later", which runtimes
// understand without knowing this plugin; the message still says what is
// missing and where.
func cniError(err error) error {
	if err == nil {
		return nil // not a nil *types.Error: that would be a non-nil error
	}
	return toCNIError(err)
}

func toCNIError(err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	ae, ok := errors.AsType[*agentapi.Error](err)
	if !ok {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	if ae.Code == agentapi.CodeAgentUnavailable {
		return types.NewError(types.ErrTryAgainLater, ae.Msg, ae.Details)
	}
	return types.NewError(ae.Code, ae.Msg, ae.Details)
}

// toResult converts the agent's answer into a CNI 1.1 result. It refuses an
// incomplete answer rather than hand the runtime a result that names no
// interface in the sandbox or an address on no interface.
func toResult(resp agentapi.AddResponse) (*current.Result, error) {
	incomplete := func(format string, args ...any) error {
		return types.NewError(types.ErrInternal, "the nodeplane agent returned an incomplete result", fmt.Sprintf(format, args...))
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	sandboxes := 0
	for _, ifc := range resp.Interfaces {
		if ifc.Name == "" {
			return nil, incomplete("an interface without a name")
		}
		if ifc.Sandbox != "" {
			sandboxes++
		}
		res.Interfaces = append(res.Interfaces, &current.Interface{Name: ifc.Name, Mac: ifc.MAC, Mtu: resp.MTU, Sandbox: ifc.Sandbox})
	}
	if sandboxes == 0 {
		return nil, incomplete("no interface inside the container's namespace")
	}
	if len(resp.IPs) == 0 {
		return nil, incomplete("no address")
	}
	for _, ip := range resp.IPs {
		if !ip.Address.IsValid() {
			return nil, incomplete("an invalid address")
		}
		if ip.Interface < 0 || ip.Interface >= len(resp.Interfaces) || resp.Interfaces[ip.Interface].Sandbox == "" {
			return nil, incomplete("address %v is on interface %d, not one inside the container", ip.Address, ip.Interface)
		}
		c := &current.IPConfig{Interface: current.Int(ip.Interface), Address: ipNet(ip.Address)}
		if ip.Gateway.IsValid() {
			c.Gateway = ip.Gateway.AsSlice()
		}
		res.IPs = append(res.IPs, c)
	}
	for _, r := range resp.Routes {
		if !r.Dst.IsValid() {
			return nil, incomplete("a route without a destination")
		}
		rt := &types.Route{Dst: ipNet(r.Dst)}
		if r.GW.IsValid() {
			rt.GW = r.GW.AsSlice()
		}
		res.Routes = append(res.Routes, rt)
	}
	return res, nil
}

// printResult writes res in the configuration's CNI version.
func printResult(w io.Writer, res *current.Result, cniVersion string) error {
	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "cannot express the result in cniVersion "+cniVersion, err.Error())
	}
	if err := out.PrintTo(w); err != nil {
		return types.NewError(types.ErrIOFailure, "cannot write the result", err.Error())
	}
	return nil
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
