package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/proxy"
)

// TestPrivilegedBindFailure: a proxy whose port is taken does not start
// (New fails with the bind error and leaves nothing behind); a second
// proxy on a free port starts and closes cleanly.
func TestPrivilegedBindFailure(t *testing.T) {
	testutils.RequirePrivileged(t)
	ns := testutils.NewNetNS(t)
	cfg := proxy.Config{NodeNetNS: fmt.Sprintf("/proc/self/fd/%d", ns.FD())}
	var taken net.PacketConn
	if err := ns.Do(func() (err error) { taken, err = net.ListenPacket("udp", "[::]:10053"); return err }); err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	p, err := New(Config{Policy: &fakePolicy{}, Port: 10053, Proxy: cfg})
	if err == nil {
		p.Close()
		t.Fatal("proxy started on a taken port")
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Fatalf("error %v does not carry the bind error", err)
	}
	p, err = New(Config{Policy: &fakePolicy{}, Port: 10054, Proxy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
