package dnsproxy

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodeplane/nodeplane"
)

// FuzzHandle feeds arbitrary messages to the proxy's message handling: it
// must not panic, and whatever it answers must be a DNS response with the
// query's ID. Upstream is a dead address, so allowed queries end in
// SERVFAIL quickly.
func FuzzHandle(f *testing.F) {
	f.Add(query("a.example.test.", dns.TypeA))
	f.Add(query("evil.test.", dns.TypeAAAA))
	f.Add([]byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff})
	f.Add([]byte{})
	p := newProxy(Config{Policy: &fakePolicy{}, Port: 10053, Timeout: 20 * time.Millisecond})
	dead := client // nothing listens there from the test's namespace
	f.Fuzz(func(t *testing.T, raw []byte) {
		reply := p.handle(context.Background(), raw, client, dead, nodeplane.ProtoUDP)
		if reply == nil {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(reply); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		if !m.Response || len(raw) < 2 || m.Id != uint16(raw[0])<<8|uint16(raw[1]) {
			t.Fatalf("answer %v to %x", m, raw)
		}
	})
}
