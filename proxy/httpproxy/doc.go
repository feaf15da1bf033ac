// Package httpproxy is the node's HTTP proxy: the in-process stand-in for
// the Envoy that Cilium configures for toPorts.rules.http. The datapath
// redirects connections whose policy entry carries the proxy's port to it
// (package proxy); it decides every request against the HTTP rules of both
// ends' policies and forwards what they allow over one upstream connection
// per client connection, kept alive as long as the client's.
//
// # Decisions
//
// A connection's rules come from [Policy]: the source endpoint's egress
// HTTP rules for the destination and port, and, when the destination is a
// local endpoint, its ingress rules for the source ([EnginePolicy] reads
// them from the policy package's compiled endpoint policies). A request
// must be allowed by each side's rules; within a side the rules are ORed,
// and a rule that allows the port without HTTP rules allows every request
// (Cilium's semantics, policy.HTTPPolicy). A rule's path matches the
// request's path and query (Envoy's :path) after the normalization that
// Cilium's --http-normalize-path (on by default) configures in Envoy
// (policy.NormalizeHTTPPath): "." and ".." segments resolved, escapes of
// unreserved characters decoded, slashes merged; the upstream receives
// that normalized path, so no path is judged as one thing and served as
// another. A path with escaped slashes (%2F, %5C) is answered 307 to its
// unescaped form, one Envoy cannot normalize 400, and a target that is
// no path 404, as Envoy answers them. The rules are looked up again
// for every request, so a policy change applies to the next request of a
// kept-alive connection. A denied request gets 403 with
// the body "Access denied\r\n", as Cilium's Envoy answers, and the
// connection stays open for the next request.
//
// # Records
//
// Every request and every response is an L7 flow (flow.L7Record): the
// request with verdict FORWARDED or DROPPED (denied), the response with
// its status code and latency, as Cilium's access log feeds Hubble.
//
// # Bad input
//
// Malformed requests get 400 and the connection is closed (net/http's
// server); headers larger than Config.MaxHeaderBytes get 431; a client
// that does not finish its headers within Config.ReadHeaderTimeout
// (slowloris) or stays idle longer than Config.IdleTimeout is
// disconnected; an upstream that cannot be reached, or does not answer
// within Config.UpstreamTimeout, gets the client 503. Once a request is
// under way, every read and write of its body and its response, on
// either side, must make progress within Config.StreamIdleTimeout: a
// client that trickles its body or stops reading, or an upstream that
// stalls mid-response, is disconnected, and a response cut short reaches
// the client cut short (its connection aborted), never as if complete.
// At most Config.MaxConnections client connections are served at once;
// one more is closed as soon as it is accepted. None of these affects
// other connections, and none can be turned off: each bounds the
// goroutines a peer can hold. A port that cannot be bound makes [New]
// fail, with nothing left behind.
//
// Responses stream: the headers and each piece of the body are passed on
// as the upstream sends them, as Envoy does.
//
// The proxy speaks HTTP/1.x. It forwards no hop-by-hop headers (RFC 9110
// 7.6.1), Upgrade among them, so a WebSocket or h2c upgrade request
// reaches the server as a plain request and the connection stays HTTP
// that the rules can judge. It is not a TLS proxy.
package httpproxy
