package etcdalloc

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

// etcdServer is a real etcd server run inside the test process on loopback.
// It can be stopped and started again on the same data directory and ports.
type etcdServer struct {
	t          testing.TB
	dir        string
	clientPort int
	peerPort   int
	e          *embed.Etcd
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd starts a single-member etcd in a fresh directory.
func startEtcd(t testing.TB) *etcdServer {
	t.Helper()
	s := &etcdServer{t: t, dir: t.TempDir(), clientPort: freePort(t), peerPort: freePort(t)}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *etcdServer) endpoint() string { return fmt.Sprintf("127.0.0.1:%d", s.clientPort) }

func (s *etcdServer) start() {
	s.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = s.dir
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	clientURL := url.URL{Scheme: "http", Host: s.endpoint()}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", s.peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	var err error
	for attempt := 0; attempt < 50; attempt++ {
		// The ports of a server just stopped may take a moment to free.
		if s.e, err = embed.StartEtcd(cfg); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("start etcd: %v", err)
	}
	select {
	case <-s.e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		s.e.Close()
		s.t.Fatal("etcd did not become ready")
	}
}

func (s *etcdServer) stop() {
	if s.e != nil {
		s.e.Close()
		<-s.e.Server.StopNotify()
		s.e = nil
	}
}

func (s *etcdServer) client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
