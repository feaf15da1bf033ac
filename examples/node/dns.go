package main

import (
	"context"
	"time"

	"github.com/nodeplane/nodeplane/proxy"
	"github.com/nodeplane/nodeplane/proxy/dnsproxy"
)

// startDNSProxy runs the node's DNS proxy when Config.DNSProxyPort asks
// for one: the redirect routing (shared with the HTTP proxy), the proxy,
// which decides queries by the pods' DNS rules, feeds the answers to the
// engine for toFQDNs and reports them to the flow observer, and the loop
// that takes addresses away when their answers' TTL runs out. Without it
// the engine refuses DNS rules and toFQDNs ("not supported yet").
func (a *Agent) startDNSProxy() error {
	if a.cfg.DNSProxyPort == 0 {
		return nil
	}
	pc := proxy.Config{NodeNetNS: a.cfg.NodeNetNS}
	if a.routing == nil {
		r, err := proxy.SetupRouting(pc)
		if err != nil {
			return err
		}
		a.routing = r
	}
	var err error
	a.dnsProxy, err = dnsproxy.New(dnsproxy.Config{
		Policy: a.engine, Port: a.cfg.DNSProxyPort, Proxy: pc, Recorder: a.obs, Logger: a.log,
	})
	if err != nil {
		return err
	}
	a.goroutine("DNS expiry", func(ctx context.Context) error {
		// A failed pass is retried by the next one; say so, and go on.
		return a.engine.RunDNSExpiry(ctx, time.Second, func(err error) { a.log.Warn("DNS expiry", "err", err) })
	})
	return nil
}

// closeDNSProxy stops the DNS proxy (before the routing goes, with the
// HTTP proxy's).
func (a *Agent) closeDNSProxy() error {
	if a.dnsProxy == nil {
		return nil
	}
	err := a.dnsProxy.Close()
	a.dnsProxy = nil
	return err
}
