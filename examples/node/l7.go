package main

import (
	"errors"
	"net/netip"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/proxy"
	"github.com/nodeplane/nodeplane/proxy/httpproxy"
)

// startHTTPProxy runs the node's HTTP proxy when Config.HTTPProxyPort asks
// for one: the routing that delivers redirected connections to it, and the
// proxy, which decides requests by the engine's compiled policies and
// reports them to the flow observer. Without it the engine refuses HTTP
// rules ("not supported yet").
func (a *Agent) startHTTPProxy() error {
	if a.cfg.HTTPProxyPort == 0 {
		return nil
	}
	pc := proxy.Config{NodeNetNS: a.cfg.NodeNetNS}
	r, err := proxy.SetupRouting(pc)
	if err != nil {
		return err
	}
	a.routing = r
	a.httpProxy, err = httpproxy.New(httpproxy.Config{
		Proxy: pc, Port: a.cfg.HTTPProxyPort, Recorder: a.obs, Logger: a.log,
		Policy: httpproxy.EnginePolicy{Endpoints: agentEndpoints{a}},
	})
	return err
}

// closeHTTPProxy stops the proxy and removes its routing.
func (a *Agent) closeHTTPProxy() error {
	var errs []error
	if a.httpProxy != nil {
		errs = append(errs, a.httpProxy.Close())
		a.httpProxy = nil
	}
	if a.routing != nil {
		errs = append(errs, a.routing.Close())
		a.routing = nil
	}
	return errors.Join(errs...)
}

// agentEndpoints tells the HTTP proxy about addresses: the agent's
// endpoints with their compiled policies, the ipcache for the rest, and
// reserved:world (as the datapath) for what the ipcache does not know.
type agentEndpoints struct{ a *Agent }

func (e agentEndpoints) Lookup(addr netip.Addr) (identity.ID, *policy.EndpointPolicy, bool) {
	a := e.a
	var found *managedEndpoint
	a.mu.Lock()
	for _, ep := range a.eps {
		if ep.ep != nil && (ep.ep.IPv4() == addr || ep.ep.IPv6() == addr) {
			found = ep.ep
			break
		}
	}
	a.mu.Unlock()
	if found != nil {
		pol, ok := a.engine.EndpointPolicy(found)
		return found.Identity(), pol, ok
	}
	if _, entry, ok := a.ipc.Lookup(addr); ok {
		return entry.Identity, nil, true
	}
	return identity.ReservedWorld, nil, true
}
