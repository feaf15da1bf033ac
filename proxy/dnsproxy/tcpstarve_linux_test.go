package dnsproxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestPrivilegedTCPClientsDoNotStarveUDP: with room for two queries in
// flight, three TCP clients that connect and then send only part of a
// query hold their connections, but no query place: a UDP query is still
// answered, and so is a full query on a fourth TCP connection. One more
// connection than MaxTCPConnections is closed at once.
func TestPrivilegedTCPClientsDoNotStarveUDP(t *testing.T) {
	w := newDNSWorld(t, e2ePolicy+"---\n"+e2ePolicyRestricted, func(c *Config) {
		c.MaxInFlight, c.MaxTCPConnections, c.IdleTimeout = 2, 4, 10*time.Second
	})
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	dial := func() net.Conn {
		t.Helper()
		var c net.Conn
		if err := w.podWeb.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", "10.0.0.2:53", 2*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		return c
	}
	for range 3 {
		// One byte of the two-byte length: a query that never comes.
		if _, err := dial().Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the proxy accept and start reading them
	if r, err := w.resolve("udp.example.test.", "udp", "10.0.0.2:53"); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("UDP query with three slow TCP clients open: %v %v", r, err)
	}
	if r, err := w.resolve("tcp.example.test.", "tcp", "10.0.0.2:53"); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("TCP query with three slow TCP clients open: %v %v", r, err)
	}
	// A fourth held connection fills MaxTCPConnections (once the proxy has
	// seen the query's connection close); a fifth is closed.
	time.Sleep(300 * time.Millisecond)
	dial()
	time.Sleep(100 * time.Millisecond)
	fifth := dial()
	fifth.SetReadDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	if _, err := fifth.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection beyond MaxTCPConnections: read %v, want EOF", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("connection beyond MaxTCPConnections closed after %v", el)
	}
}
