package dnsproxy

import (
	"net"
	"net/netip"
	"sync"
)

// maxIdlePerUpstream bounds the idle sockets kept per server and mark.
const maxIdlePerUpstream = 16

// upstreams keeps idle UDP sockets to servers, per server and socket mark
// (the client's identity), so that a query does not dial a socket each
// time. A socket serves one query at a time; one whose exchange failed is
// closed, never reused, so that a late answer to an earlier query cannot
// be read as the answer to a later one (and the forwarded query carries a
// fresh random ID besides).
type upstreams struct {
	mu     sync.Mutex
	closed bool
	idle   map[upstreamKey][]net.Conn
}

type upstreamKey struct {
	server netip.AddrPort
	mark   uint32
}

// get returns an idle socket for k, or nil.
func (u *upstreams) get(k upstreamKey) net.Conn {
	u.mu.Lock()
	defer u.mu.Unlock()
	cs := u.idle[k]
	if len(cs) == 0 {
		return nil
	}
	c := cs[len(cs)-1]
	u.idle[k] = cs[:len(cs)-1]
	return c
}

// put keeps a socket whose exchange succeeded for reuse, or closes it.
func (u *upstreams) put(k upstreamKey, c net.Conn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || len(u.idle[k]) >= maxIdlePerUpstream {
		c.Close()
		return
	}
	if u.idle == nil {
		u.idle = map[upstreamKey][]net.Conn{}
	}
	u.idle[k] = append(u.idle[k], c)
}

// close closes every idle socket; later puts close theirs.
func (u *upstreams) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for _, cs := range u.idle {
		for _, c := range cs {
			c.Close()
		}
	}
	u.idle = nil
}
