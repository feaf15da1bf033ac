// Package etcdtest runs a real, single-member etcd server inside a test
// process, on loopback, for the packages whose state lives in etcd. It is a
// package of its own so that only those tests link the etcd server.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is an embedded etcd server. It can be stopped and started again on
// the same data directory and ports, to simulate an outage.
type Server struct {
	tb         testing.TB
	dir        string
	clientPort int
	peerPort   int
	etcd       *embed.Etcd
}

// Start starts a server in a fresh data directory; tb.Cleanup stops it.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{tb: tb, dir: tb.TempDir(), clientPort: freePort(tb), peerPort: freePort(tb)}
	s.Restart()
	tb.Cleanup(s.Stop)
	return s
}

// Endpoint is the server's client address, host:port.
func (s *Server) Endpoint() string { return fmt.Sprintf("127.0.0.1:%d", s.clientPort) }

// Restart starts the server again after Stop, with its data and ports.
func (s *Server) Restart() {
	s.tb.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = s.dir
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	clientURL := url.URL{Scheme: "http", Host: s.Endpoint()}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", s.peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	var err error
	for attempt := 0; attempt < 50; attempt++ {
		// The ports of a server that just stopped may take a moment to free.
		if s.etcd, err = embed.StartEtcd(cfg); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.tb.Fatalf("start etcd: %v", err)
	}
	select {
	case <-s.etcd.Server.ReadyNotify():
	case err := <-s.etcd.Err():
		s.etcd.Close()
		s.tb.Fatalf("etcd: %v", err)
	case <-time.After(60 * time.Second):
		s.etcd.Close()
		s.tb.Fatal("etcd did not become ready in 60s")
	}
}

// Stop stops the server; clients see an outage until Restart.
func (s *Server) Stop() {
	if s.etcd != nil {
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
		s.etcd = nil
	}
}

// Client returns a new client of the server, closed by tb.Cleanup. Each
// simulated node should have its own.
func (s *Server) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint()},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
