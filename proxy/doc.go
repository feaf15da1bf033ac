// Package proxy is what every in-process L7 proxy of a node shares: the
// routing that delivers redirected packets to it, its transparent sockets,
// the original destination of what they receive, the mark of its upstream
// connections, and proxy port allocation. The HTTP proxy (proxy/httpproxy)
// and the DNS proxy (proxy/dnsproxy) are built on it; their L7 records go
// to the flow pipeline as flow.L7Record.
//
// # Redirection
//
// A policy-map entry with a proxy port (mapstate.Entry.ProxyPort) makes the
// endpoint's datapath program (datapath/bpf/proxy.h) send the connection to
// the proxy instead of its destination, without rewriting it: the first
// packet of a TCP connection and every UDP datagram are assigned to the
// proxy's socket with bpf_sk_assign at the host-side veth's tc ingress, and
// every packet is marked [MarkToProxy], which the routing of [SetupRouting]
// ("fwmark 0x200/0xf00 lookup 2004", "local default dev lo table 2004")
// delivers to the local stack. The proxy's socket is transparent
// (IP_TRANSPARENT), so it accepts a connection to an address that is not
// the node's, and the accepted socket's own address is the original
// destination (getsockname, [OriginalDestination]); for UDP the kernel
// reports it with each datagram (IP_RECVORIGDSTADDR, [UDPConn.ReadFrom]).
// Replies leave the proxy with the original destination as their source,
// and the endpoint's conntrack entry, created when the connection was
// redirected, admits them as replies.
//
// This is Cilium's bpf-tproxy design. The other design the project
// considered, cgroup socket hooks rewriting connect() to the proxy with
// the original destination in a socket-cookie map, fits endpoints that are
// cgroups; nodeplane's endpoints are network namespaces behind veth pairs
// whose programs already decide policy per packet at tc, where the
// redirect decision is made anyway, and tc with bpf_sk_assign needs no
// second attach point, no cookie map and works for UDP (a connected-socket
// rewrite does not cover sendmsg to many destinations without a further
// hook). The proxy's sockets must be in the node's namespace, where the
// host-side veths are (bpf_sk_assign refuses a socket of another
// namespace): [Config.NodeNetNS].
//
// # Upstream identity
//
// The proxy connects to the original destination itself ([Dialer]), from
// the node's address. Its socket mark ([UpstreamMark]) carries the source's
// identity, in Cilium's encoding, so the destination endpoint's program
// decides its ingress policy for the source's identity, not for
// reserved:host: the proxy never widens what the destination admits. When
// the destination is a local endpoint, its ingress policy was already
// decided (L3/L4 by the datapath, L7 by the proxy) when the connection was
// redirected; the mark says so and the destination's program does not
// decide it again. An ingress proxy port that only the destination's own
// program sees (a source on another node, or the node itself) cannot be
// redirected there and is dropped, fail closed (SOCKET_LOOKUP_FAILED).
//
// # Lifetime
//
// [Routing], listeners and [UDPConn] are closed by their owners with
// Close. Nothing here logs or keeps package state.
package proxy
