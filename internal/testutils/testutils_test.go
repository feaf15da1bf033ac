package testutils_test

import (
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m) }

func TestPrivilegedNetNSVeth(t *testing.T) {
	testutils.RequirePrivileged(t)
	a, b := testutils.NewNetNS(t), testutils.NewNetNS(t)
	veth := testutils.NewVeth(t, a, "a0", b, "b0")

	addr := func(ns *testutils.NetNS, idx int, p string) {
		link, err := ns.Netlink(t).LinkByIndex(idx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ns.Netlink(t).AddrAdd(link, &netlink.Addr{IPNet: netlinkPrefix(t, p)}); err != nil {
			t.Fatal(err)
		}
	}
	addr(a, veth.Index, "192.0.2.1/24")
	addr(b, veth.PeerIndex, "192.0.2.2/24")

	ln := testutils.ServeEcho(t, b, "tcp4", "192.0.2.2:0")

	var conn net.Conn
	if err := a.Do(func() (err error) {
		conn, err = net.Dial("tcp4", ln.Addr().String())
		return err
	}); err != nil {
		t.Fatalf("dial across veth: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q, %v", buf, err)
	}

	// The host namespace never sees the test's interfaces.
	if _, err := netlink.LinkByName("a0"); err == nil {
		t.Fatal("veth end a0 leaked into the host namespace")
	}
}

func TestPrivilegedBPFFSAndCgroup(t *testing.T) {
	testutils.RequirePrivileged(t)
	dir := testutils.NewBPFFS(t)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("%s has fs magic %#x, want bpffs", dir, st.Type)
	}

	cg := testutils.NewCgroup(t)
	if _, err := os.Stat(filepath.Join(cg.Path, "cgroup.procs")); err != nil {
		t.Fatalf("cgroup2 dir: %v", err)
	}
}

func netlinkPrefix(t *testing.T, s string) *net.IPNet {
	t.Helper()
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
