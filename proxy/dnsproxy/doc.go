// Package dnsproxy is the node's transparent DNS proxy: what enforces
// Cilium's DNS rules (toPorts[].rules.dns) and feeds toFQDNs policy.
//
// A policy engine with the DNS machinery (policy.EngineConfig.FQDN) writes
// a redirect to the proxy's port (policy.Config.ProxyPorts.DNS) into
// the policy-map entries of ports with DNS rules; the datapath then hands
// every such query, UDP or TCP, to the proxy's transparent sockets
// (package proxy) with its original destination. For each query the proxy
//
//   - decodes it with github.com/miekg/dns; a message that does not decode
//     is answered FORMERR when its header is readable and dropped when not;
//   - asks the policy (policy.Engine.EvaluateDNS) whether the client may
//     ask this server for this name; a name no DNS rule allows is answered
//     REFUSED, Cilium's default --tofqdns-dns-reject-response-code (or
//     NXDOMAIN, Config.RejectRcode), and never reaches the server;
//   - forwards an allowed query to the original destination, over the
//     transport it came on, and passes the answer back (SERVFAIL when the
//     server does not answer in time);
//   - reports the answer's addresses with their TTL to the policy
//     (policy.Engine.ObserveDNS) before the client gets the answer, so the
//     connection the client opens next is already allowed by toFQDNs. As
//     in Cilium, the addresses belong to the queried name, through any
//     CNAME chain, for the chain's lowest TTL; an answer with records off
//     the chain is passed on but teaches nothing;
//   - records the query and the response as L7 DNS flows (flow.L7Record).
//
// Every failure has a defined outcome and none stops the proxy: a bad
// datagram is answered or dropped, a TCP client that sends garbage or
// stalls is disconnected (Config.IdleTimeout), an upstream that fails is
// SERVFAIL, and a flood beyond Config.MaxInFlight queries at once is
// dropped. TCP connections are bounded apart (Config.MaxTCPConnections)
// and take a place among the in-flight queries only while one of their
// queries is handled, so idle or slow TCP clients cannot starve UDP. [New]
// fails if the port cannot be bound, and the proxy is then not running at
// all: the redirected queries get no answer (fail closed).
//
// The proxy never logs on its own; Config.Logger gets its diagnostics.
package dnsproxy
